"""Linux futex wait/wake on a 32-bit word in shared memory (ctypes; no library exposes it).

A writer that finds its ring full sleeps on a word of the ring's header and whoever frees a slot wakes
it, instead of polling (which cost the producer of a live pipeline ~240 us of CPU per slot on two cores,
docs/decisions.md). Shared (not PRIVATE) futexes, because waiter and waker are different processes
mapping the same segment. Where the syscall number is unknown, `AVAILABLE` is False and callers poll.
"""

from __future__ import annotations

import ctypes
import errno
import platform

__all__ = ["AVAILABLE", "wait", "wake"]

_SYSCALL_NR = {"x86_64": 202, "aarch64": 98}.get(platform.machine())
_FUTEX_WAIT, _FUTEX_WAKE = 0, 1
_WAKE_ALL = 0x7FFFFFFF
AVAILABLE = _SYSCALL_NR is not None

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def wait(address: int, expected: int, timeout: float) -> bool:
    """Sleep while the u32 at `address` equals `expected`, at most `timeout` seconds.

    True when woken or when the word had already changed; False on timeout. A signal ends the wait
    early too (True): callers re-check their condition either way.
    """
    seconds = max(0.0, timeout)
    ts = _Timespec(int(seconds), int((seconds % 1.0) * 1e9))
    rc = _syscall(
        _SYSCALL_NR,
        ctypes.c_void_p(address),
        _FUTEX_WAIT,
        ctypes.c_uint32(expected),
        ctypes.byref(ts),
        None,
        0,
    )
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.ETIMEDOUT:
        return False
    if err in (errno.EAGAIN, errno.EINTR):
        return True
    raise OSError(err, f"futex wait: {errno.errorcode.get(err, err)}")


def wake(address: int) -> int:
    """Wake every waiter on the u32 at `address`; returns how many were woken."""
    rc = _syscall(_SYSCALL_NR, ctypes.c_void_p(address), _FUTEX_WAKE, _WAKE_ALL, None, None, 0)
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"futex wake: {errno.errorcode.get(err, err)}")
    return int(rc)
