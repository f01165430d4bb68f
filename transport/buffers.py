"""Receive buffers for large payloads, reused once nobody holds them.

A fresh buffer above glibc's mmap threshold (32 MiB at most) comes from new pages the kernel must zero
on first touch: ~3 ms of a 64 MiB get here, more than the checksum. Below it, malloc already recycles
freed memory. So a client keeps a few large buffers and hands one out again only when its reference
count shows that no payload, view or memoryview still holds it; a caller that keeps a payload simply
makes the pool allocate another buffer. UCX does not hold a reference while it receives (the progress
engine does, until UCX completes or cancels the request), so the client `forget`s the buffer of every
read that did not finish.
"""

from __future__ import annotations

import sys

import numpy as np

RECYCLE_MIN_BYTES = 32 << 20  # glibc's largest dynamic mmap threshold: smaller buffers are reused anyway
_FREE_REFCOUNT = 3  # the pool's list, the loop variable and getrefcount's own argument


class ReceiveBuffers:
    """`take(nbytes)`: a uint8 array of exactly `nbytes`; large ones are views of recycled buffers."""

    def __init__(self, retain_bytes: int = 256 << 20, min_bytes: int = RECYCLE_MIN_BYTES) -> None:
        if retain_bytes < 0 or min_bytes < 1:
            raise ValueError(f"retain_bytes={retain_bytes} must be >= 0 and min_bytes={min_bytes} >= 1")
        self.retain_bytes = retain_bytes
        self.min_bytes = min_bytes
        self._kept: list[np.ndarray] = []
        self.reused = 0  # how many takes were served by a recycled buffer

    @property
    def kept_bytes(self) -> int:
        return sum(buf.nbytes for buf in self._kept)

    def take(self, nbytes: int) -> np.ndarray:
        if nbytes < self.min_bytes or self.retain_bytes == 0:
            return np.empty(nbytes, dtype=np.uint8)
        for buf in self._kept:
            # At most twice the size asked for, so one huge buffer does not pin memory for small reads.
            if nbytes <= buf.nbytes <= 2 * nbytes and sys.getrefcount(buf) <= _FREE_REFCOUNT:
                self.reused += 1
                return buf[:nbytes]
        buf = np.empty(nbytes, dtype=np.uint8)
        self._make_room(nbytes)
        if self.kept_bytes + nbytes <= self.retain_bytes:
            self._kept.append(buf)
            return buf[:nbytes]
        return buf

    def _make_room(self, nbytes: int) -> None:
        """Drop free buffers, oldest first, until `nbytes` more fits under `retain_bytes`."""
        excess = self.kept_bytes + nbytes - self.retain_bytes
        kept: list[np.ndarray] = []
        for buf in self._kept:
            if excess > 0 and sys.getrefcount(buf) <= _FREE_REFCOUNT:
                excess -= buf.nbytes
            else:
                kept.append(buf)
        self._kept = kept

    def forget(self, payload: np.ndarray) -> None:
        """Never hand out `payload`'s buffer again: a failed read's receive may still be cancelling
        inside UCX, so its buffer is left to be freed by its last holder, as a plain one is."""
        base = payload.base if payload.base is not None else payload
        self._kept = [buf for buf in self._kept if buf is not base]

    def clear(self) -> None:
        self._kept.clear()
