"""Capabilities: the ring key issues and checks the per-slot proof every client frame carries.

UCX listeners bind every interface, so every request proves access. The proof is a per-slot
capability, never the ring key: `RingKey(key, ring_id).capability(slot, generation)` =
HMAC-SHA256(ring key, tag | ring id | slot | generation) truncated to the frame's 16-byte field
(128 bits: forging one means guessing 128 bits per try, each try costing a connection). One descriptor
opens one slot at one generation; the key stays with the producer and the server. REQUEST, COMMIT and
RESOLVE carry the same capability and the server compares it in constant time. Single-chunk requests
name no generation (the replaced design's weakness, kept on purpose), so their capability covers a slot
at every generation: `single_chunk_capability(slot)`, domain-separated from the commit one by the tag.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

from transport.errors import ConfigError
from transport.protocol.frames import CAPABILITY_SIZE, Frame, MsgType, as_capability

__all__ = [
    "RingKey",
    "capability_matches",
]

_CAP_MSG = struct.Struct("<B16sIQ")  # tag, ring id, slot, generation
_TAG_COMMIT: Final = 1
_TAG_SINGLE_CHUNK: Final = 2


class RingKey:
    """The ring key and ring id: issues and checks per-slot capabilities. Producer and server only.

    `capability(slot, generation)` opens exactly that read; `single_chunk_capability(slot)` opens one slot
    at any generation (single-chunk names no generation). `repr` never shows the key.
    """

    __slots__ = ("_keyed", "ring_id")

    def __init__(self, key: bytes, ring_id: bytes | str) -> None:
        raw_id = bytes.fromhex(ring_id) if isinstance(ring_id, str) else bytes(ring_id)
        if len(raw_id) != 16 or not isinstance(key, bytes) or len(key) < 16:
            raise ConfigError("ring key: need a key of >= 16 bytes and a 16-byte ring id")
        # Keyed once: copying a keyed HMAC costs half of keying it again per capability (measured).
        self._keyed = hmac.new(key, digestmod=hashlib.sha256)
        self.ring_id = raw_id

    def __repr__(self) -> str:
        return f"RingKey(ring_id={self.ring_id.hex()})"

    def capability(self, slot: int, generation: int) -> bytes:
        """HMAC-SHA256(key, commit tag | ring id | slot | generation)[:16]."""
        return self._mac(_TAG_COMMIT, slot, generation)

    def single_chunk_capability(self, slot: int) -> bytes:
        """HMAC-SHA256(key, single-chunk tag | ring id | slot | 0)[:16]: the slot at every generation."""
        return self._mac(_TAG_SINGLE_CHUNK, slot, 0)

    def _mac(self, tag: int, slot: int, generation: int) -> bytes:
        try:
            msg = _CAP_MSG.pack(tag, self.ring_id, slot, generation)
        except struct.error:
            raise ConfigError(
                f"capability for slot={slot!r} generation={generation!r}: out of range"
            ) from None
        mac = self._keyed.copy()
        mac.update(msg)
        return mac.digest()[:CAPABILITY_SIZE]

    def issue(self, slot: int, generation: int, protocol: str = "commit") -> bytes:
        """What a descriptor carries: `capability`, or `single_chunk_capability` under single-chunk."""
        if protocol == "single-chunk":
            return self.single_chunk_capability(slot)
        return self.capability(slot, generation)

    def admits(self, frame: Frame) -> bool:
        """Does the frame carry the capability for the (slot, generation) it names? Constant time."""
        if frame.type is MsgType.LEGACY_REQUEST:
            expected = self.single_chunk_capability(frame.slot)
        else:
            expected = self.capability(frame.slot, frame.generation)
        return hmac.compare_digest(frame.capability, expected)


def capability_matches(frame: Frame, capability: bytes | str) -> bool:
    """Constant-time comparison of the frame's capability with an expected one (bytes or hex)."""
    try:
        expected = as_capability(capability)
    except (ConfigError, ValueError, TypeError):
        return False
    return hmac.compare_digest(frame.capability, expected)
