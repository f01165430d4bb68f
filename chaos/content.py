"""Deterministic payload content, so a consumer can prove it got exactly the bytes published.

Each payload is a 4 KiB block derived from (seed, seq), tiled to its size, with the seq stamped in
its first 8 bytes: a payload from another write (the ABA bug) or a torn copy never verifies.
The checksum check proves the bytes match what was written; this proves they are the right write.
"""

from __future__ import annotations

import numpy as np

BLOCK = 4096


def _block(seed: int, seq: int) -> np.ndarray:
    block = np.random.default_rng([seed & 0xFFFFFFFF, seq]).integers(0, 256, BLOCK, dtype=np.uint8)
    block[:8] = np.frombuffer(int(seq).to_bytes(8, "little"), dtype=np.uint8)
    return block


def make_payload(seed: int, seq: int, nbytes: int) -> np.ndarray:
    """The payload for publish number `seq` of a run."""
    block = _block(seed, seq)
    reps = -(-nbytes // BLOCK)
    return np.tile(block, reps)[:nbytes] if reps > 1 else block[:nbytes].copy()


def verify_payload(payload: np.ndarray, seed: int, seq: int, nbytes: int) -> bool:
    """True if `payload` is exactly publish number `seq` (compared block by block, no big copy)."""
    if payload.nbytes != nbytes:
        return False
    data = payload.reshape(-1).view(np.uint8)
    block = _block(seed, seq)
    full = nbytes // BLOCK
    if full and not np.array_equal(
        data[: full * BLOCK].reshape(full, BLOCK), np.broadcast_to(block, (full, BLOCK))
    ):
        return False
    tail = nbytes - full * BLOCK
    return bool(np.array_equal(data[full * BLOCK :], block[:tail]))
