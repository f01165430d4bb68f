"""Payload checksum shared by producer (at write) and client (at receive)."""

from __future__ import annotations

import xxhash


def checksum(buf: object) -> int:
    """xxh3-64 of any buffer: ~30 GiB/s here, so verifying 64 MiB costs ~2 ms (crc32 took 9 ms)."""
    return xxhash.xxh3_64_intdigest(buf)  # type: ignore[arg-type]
