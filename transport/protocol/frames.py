"""Frames: the wire codec (fixed-size control frames, batch messages) and the frame constructors.

Every control message is one `FRAME_SIZE` (128) byte frame, so a receiver always posts a 128-byte
buffer. UCX `recv` reports no length and accepts a shorter message silently, so the last 4 bytes are a
trailer magic: receive into a zeroed buffer (a fresh one per message) and `decode` reports a short
message as a missing trailer. Layout, little-endian::

    0  magic b"SWv1"   4  type u8   5  code u8   6  flags u16   8  slot u32   12 pad u32
    16 generation u64  24 token u64  32 nbytes u64  40 checksum u64  48 capability 16 bytes
    64 message (utf-8, <= 48 bytes, zero padded)  112 reserved (12)  124 trailer b"1vWS"

Pad and reserved bytes are written as zeros and ignored on receipt. `code` is a `Status` in STATUS
and COMMITTED frames, a `Resolution` in RESOLVED frames and 0 elsewhere. Client -> server frames carry
the read's capability; server -> client frames echo the (slot, generation, token) they answer, so a late
reply meant for an earlier read is recognised instead of trusted.

Inline payloads: a REQUEST whose `nbytes` is L > 0 says the client posted a receive of
`FRAME_SIZE + L + 4` bytes for the STATUS. A payload of n <= min(L, INLINE_MAX) bytes then travels in
that one message: the STATUS frame with `flags & FLAG_INLINE`, the n payload bytes, and the trailer
magic again (so a short message is caught even when the payload ends in zeros). One send instead of
two; a copy of a few KiB costs less than a send here. Larger payloads keep the no-copy PAYLOAD send.

Nothing here holds state or knows a read's progress: that is the machines' job (server, client, batch).
"""

from __future__ import annotations

import os as _os
import random as _random
import secrets as _secrets
import struct
from enum import IntEnum
from typing import Final, Literal, NamedTuple, TypeAlias

from transport.errors import ConfigError, LocalProtocolError, ProtocolError

__all__ = [
    "BATCH_ENTRY",
    "BATCH_MAX",
    "CAPABILITY_SIZE",
    "FLAG_INLINE",
    "FRAME_SIZE",
    "INLINE_BATCH_MAX",
    "INLINE_MAX",
    "MAGIC",
    "MAX_PAYLOAD",
    "MESSAGE_SIZE",
    "PROTOCOLS",
    "REQUEST_MAX",
    "TRAILER",
    "BatchEntry",
    "Frame",
    "FrameLike",
    "MsgType",
    "Protocol",
    "Resolution",
    "Status",
    "as_capability",
    "clip_message",
    "commit",
    "committed",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "inline_message",
    "new_token",
    "request",
    "resolve",
    "resolved",
    "single_chunk_request",
    "status",
]

FRAME_SIZE: Final = 128
MAGIC: Final = b"SWv1"
TRAILER: Final = b"1vWS"
CAPABILITY_SIZE: Final = 16
MESSAGE_SIZE: Final = 48
MAX_PAYLOAD: Final = 1 << 31
PROTOCOLS: Final = ("commit", "single-chunk")
# Payloads up to this size ride inside the STATUS message (see "Inline payloads" above); measured in
# docs/decisions.md ("Inline threshold"). A REQUEST's nbytes field is the largest inline payload the
# client has room for (0 = none); the server inlines when the payload fits both limits.
INLINE_MAX: Final = 16 << 10
FLAG_INLINE: Final = 1

Protocol: TypeAlias = Literal["commit", "single-chunk"]
FrameLike: TypeAlias = "Frame | bytes | bytearray | memoryview"

_FRAME = struct.Struct("<4sBBHI4xQQQQ16s48s12x4s")
assert _FRAME.size == FRAME_SIZE
NO_CAPABILITY: Final = bytes(CAPABILITY_SIZE)
_U32: Final = (1 << 32) - 1
U64: Final = (1 << 64) - 1


class MsgType(IntEnum):
    REQUEST = 1
    STATUS = 2
    COMMIT = 3
    COMMITTED = 4
    RESOLVE = 5
    RESOLVED = 6
    LEGACY_REQUEST = 7
    REQUEST_BATCH = 8
    STATUS_BATCH = 9
    COMMIT_BATCH = 10
    COMMITTED_BATCH = 11


class Status(IntEnum):
    """STATUS / COMMITTED codes. OK..BUSY have the values of `transport.ring.ReadCode`."""

    OK = 0
    STALE = 1
    NOT_READY = 2
    BUSY = 3
    UNAUTHORIZED = 4
    BAD_REQUEST = 5
    ERROR = 6


class Resolution(IntEnum):
    COMMITTED = 0
    NOT_COMMITTED = 1
    UNKNOWN = 2


# type -> {code value: typed code}; one dict lookup both validates and types the code.
_CODES: Final[dict[int, dict[int, int]]] = {
    MsgType.REQUEST: {0: 0},
    MsgType.STATUS: {int(s): s for s in Status},
    MsgType.COMMIT: {0: 0},
    MsgType.COMMITTED: {int(s): s for s in Status},
    MsgType.RESOLVE: {0: 0},
    MsgType.RESOLVED: {int(r): r for r in Resolution},
    MsgType.LEGACY_REQUEST: {0: 0},
    MsgType.REQUEST_BATCH: {0: 0},
    MsgType.STATUS_BATCH: {0: 0},
    MsgType.COMMIT_BATCH: {0: 0},
    MsgType.COMMITTED_BATCH: {0: 0},
}
_TYPES: Final[dict[int, MsgType]] = {int(t): t for t in MsgType}


class Frame(NamedTuple):
    """One decoded control message. Build them with the helpers below (`request`, `status`, ...).

    A NamedTuple, not a frozen dataclass: a read builds eight of these, and a frozen dataclass costs
    0.6 us more each (measured); it is just as immutable. Copy with changes via `frame._replace()`.
    """

    type: MsgType
    code: int = 0
    slot: int = 0
    generation: int = 0
    token: int = 0
    nbytes: int = 0
    checksum: int = 0
    capability: bytes = NO_CAPABILITY
    message: str = ""
    flags: int = 0


# -- encode / decode ---------------------------------------------------------------------------------


def encode(frame: Frame) -> bytes:
    """`frame` as exactly FRAME_SIZE bytes; ProtocolError names the first field out of range."""
    codes = _CODES.get(frame.type)
    if codes is None:
        raise LocalProtocolError(f"encode: unknown message type {frame.type!r}")
    if frame.code not in codes:
        raise LocalProtocolError(f"encode: code {frame.code!r} not valid for {MsgType(frame.type).name}")
    if not isinstance(frame.capability, bytes) or len(frame.capability) != CAPABILITY_SIZE:
        raise LocalProtocolError(f"encode: capability must be {CAPABILITY_SIZE} bytes")
    message = _message_bytes(frame.message)
    if type(frame.nbytes) is int and frame.nbytes > MAX_PAYLOAD:
        raise LocalProtocolError(f"encode: nbytes {frame.nbytes} over MAX_PAYLOAD {MAX_PAYLOAD}")
    try:
        return _FRAME.pack(
            MAGIC,
            frame.type,
            frame.code,
            frame.flags,
            frame.slot,
            frame.generation,
            frame.token,
            frame.nbytes,
            frame.checksum,
            frame.capability,
            message,
            TRAILER,
        )
    except struct.error:
        raise LocalProtocolError(f"encode: {_bad_field(frame)}") from None


def _message_bytes(message: str) -> bytes:
    if not message:
        return b""
    try:
        raw = message.encode("utf-8")
    except (UnicodeEncodeError, AttributeError):
        raise LocalProtocolError("encode: message is not encodable as utf-8") from None
    if len(raw) > MESSAGE_SIZE:
        raise LocalProtocolError(f"encode: message is {len(raw)} bytes of utf-8, at most {MESSAGE_SIZE}")
    if b"\0" in raw:
        raise LocalProtocolError("encode: message contains a NUL character")
    return raw


def _bad_field(frame: Frame) -> str:
    """Slow path of `encode`: which integer field did struct refuse."""
    for name, limit in (
        ("type", 0xFF),
        ("code", 0xFF),
        ("flags", 0xFFFF),
        ("slot", _U32),
        ("generation", U64),
        ("token", U64),
        ("nbytes", MAX_PAYLOAD),
        ("checksum", U64),
    ):
        value = getattr(frame, name)
        if not isinstance(value, int) or not 0 <= value <= limit:
            return f"{name}={value!r} out of range 0..{limit}"
    return "bad field"  # pragma: no cover - every packed integer is checked above


def decode(buf: FrameLike) -> Frame:
    """Parse one received frame; raises ProtocolError (and nothing else) naming what is wrong."""
    if isinstance(buf, Frame):
        return buf
    try:
        magic, mtype, code, flags, slot, gen, token, nbytes, csum, cap, msg, trailer = _FRAME.unpack(buf)
    except struct.error:
        raise ProtocolError(f"wrong size: {_size(buf)} bytes, a frame is exactly {FRAME_SIZE}") from None
    except (TypeError, ValueError, BufferError):
        raise ProtocolError(f"not a contiguous bytes-like frame: {type(buf).__name__}") from None
    if magic != MAGIC:
        hint = " (empty buffer: nothing or a very short message arrived)" if not any(magic) else ""
        raise ProtocolError(f"bad magic {magic!r}, expected {MAGIC!r}{hint}")
    if trailer != TRAILER:
        raise ProtocolError("missing trailer magic: truncated (short) message")
    typed = _TYPES.get(mtype)
    if typed is None:
        raise ProtocolError(f"unknown message type {mtype}")
    typed_code = _CODES[typed].get(code)
    if typed_code is None:
        raise ProtocolError(f"code {code} not valid for {typed.name}")
    if nbytes > MAX_PAYLOAD:
        raise ProtocolError(f"nbytes {nbytes} over MAX_PAYLOAD {MAX_PAYLOAD}")
    text = ""
    if msg[0]:
        raw = msg.rstrip(b"\0")
        if b"\0" in raw:
            raise ProtocolError("message has a NUL byte before its end")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not valid utf-8") from None
    return Frame(typed, typed_code, slot, gen, token, nbytes, csum, cap, text, flags)


def _size(buf: object) -> str:
    try:
        return str(memoryview(buf).nbytes)  # type: ignore[arg-type]
    except Exception:
        return "?"


# -- constructors -------------------------------------------------------------------------------------


class _TokenSource:
    """Per-process generator of fencing tokens, seeded from the OS and reseeded in a forked child.

    A token must differ from every other read attempt's (that is what fences an orphan), not be a
    secret: every frame that uses one also carries the slot's capability. So a seeded PRNG serves,
    at 0.1 us a token against 0.9-2.3 us for `secrets.randbits` (one urandom syscall each, measured
    on the same-host read path, where it was the largest single cost after the two slot locks).
    """

    def __init__(self) -> None:
        self.reseed()
        _os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self.bits = _random.Random(_secrets.token_bytes(32)).getrandbits


_tokens = _TokenSource()


def new_token() -> int:
    """A random non-zero 64-bit fencing token for one read attempt (0 means "no token")."""
    return _tokens.bits(64) or 1


def as_capability(capability: bytes | str) -> bytes:
    """A capability as 16 bytes; descriptors carry it as hex."""
    if type(capability) is bytes and len(capability) == CAPABILITY_SIZE:
        return capability  # already the right form: every frame of a read passes through here
    try:
        raw = bytes.fromhex(capability) if isinstance(capability, str) else bytes(capability)
    except (ValueError, TypeError):
        raise ConfigError("capability must be 16 bytes (32 hex digits)") from None
    if len(raw) != CAPABILITY_SIZE:
        raise ConfigError(f"capability must be {CAPABILITY_SIZE} bytes, got {len(raw)}")
    return raw


def clip_message(text: str) -> str:
    """`text` cut to MESSAGE_SIZE bytes of utf-8 on a character boundary, NULs removed."""
    raw = text.replace("\0", "").encode("utf-8", "replace")[:MESSAGE_SIZE]
    return raw.decode("utf-8", "ignore")


def request(slot: int, generation: int, token: int, capability: bytes | str, inline: int = 0) -> Frame:
    """A REQUEST; `inline` is the largest payload the client can take inside the STATUS (0: none)."""
    return Frame(MsgType.REQUEST, 0, slot, generation, token, inline, capability=as_capability(capability))


def inline_message(status_frame: bytes, payload: object) -> bytearray:
    """STATUS frame + payload + trailer: the one message an inline read sends (the payload copied)."""
    view = memoryview(payload).cast("B")  # type: ignore[arg-type]
    n = view.nbytes
    msg = bytearray(FRAME_SIZE + n + len(TRAILER))
    msg[:FRAME_SIZE] = status_frame
    msg[FRAME_SIZE : FRAME_SIZE + n] = view
    msg[FRAME_SIZE + n :] = TRAILER
    return msg


def single_chunk_request(slot: int, capability: bytes | str) -> Frame:
    return Frame(MsgType.LEGACY_REQUEST, 0, slot, capability=as_capability(capability))


def status(
    code: Status,
    *,
    slot: int = 0,
    generation: int = 0,
    token: int = 0,
    nbytes: int = 0,
    checksum: int = 0,
    message: str = "",
) -> Frame:
    """A STATUS reply; `message` is clipped to fit (an ERROR carries a short reason)."""
    return Frame(
        MsgType.STATUS,
        code,
        slot,
        generation,
        token,
        nbytes,
        checksum,
        message=clip_message(message) if message else "",
    )


def commit(slot: int, generation: int, token: int, capability: bytes | str) -> Frame:
    return Frame(MsgType.COMMIT, 0, slot, generation, token, capability=as_capability(capability))


def committed(slot: int, generation: int, token: int, code: Status = Status.OK, message: str = "") -> Frame:
    """The answer to COMMIT: OK = committed; any other code = refused, the read did NOT commit."""
    return Frame(
        MsgType.COMMITTED, code, slot, generation, token, message=clip_message(message) if message else ""
    )


def resolve(slot: int, generation: int, token: int, capability: bytes | str) -> Frame:
    return Frame(MsgType.RESOLVE, 0, slot, generation, token, capability=as_capability(capability))


def resolved(resolution: Resolution, slot: int, generation: int, token: int) -> Frame:
    return Frame(MsgType.RESOLVED, resolution, slot, generation, token)


# -- batched reads -----------------------------------------------------------------------------------
#
# One exchange reads k slots on one endpoint; every slot is still CASed, fenced, committed, released
# and RESOLVEd on its own, and one bad slot never fails its neighbours::
#
#     client REQUEST_BATCH(token; k x (slot, generation, inline room, proof))
#     server per slot: CAS READY(gen) -> READING(token)
#     server STATUS_BATCH(k x (slot, code, flags, generation, nbytes, checksum); inline payloads)
#     server PAYLOAD for each OK slot that is not inline, in entry order
#     client per slot: length + checksum -> COMMIT_BATCH(n x (slot, commit|release, generation, proof))
#     server per slot: CAS READING(token) -> FREE (commit) or -> READY (release), commit log
#     server COMMITTED_BATCH(n x (slot, OK | ERROR, generation))  -> client hands over the committed
#     COMMITTED_BATCH lost: each slot it would commit is IN_DOUBT, settled by a per-slot RESOLVE
#
# A batch message is a 128-byte header frame (type, token, `slot` = entry count; its own trailer at
# 124), then 32-byte entries, then inline payloads (STATUS_BATCH only), then the trailer magic again:
# a short message is caught at its end. `proof` is the slot's capability (HMAC of ring key, ring id,
# slot and generation; see RingKey), checked per entry: one forged entry fails alone. The server
# posts its request receive with room for
# the largest REQUEST_BATCH (`REQUEST_MAX` bytes); a plain REQUEST is shorter, which UCX accepts.

BATCH_MAX: Final = 128
BATCH_ENTRY: Final = 32
REQUEST_MAX: Final = FRAME_SIZE + BATCH_MAX * BATCH_ENTRY + len(TRAILER)
INLINE_BATCH_MAX: Final = 256 << 10  # total inline room a client asks for in one STATUS_BATCH
_ASK = struct.Struct("<IIQ16s")  # REQUEST / COMMIT entry: slot, room | commit flag, generation, proof
_ANSWER = struct.Struct("<IBBHQQQ")  # STATUS / COMMITTED entry: slot, code, flags, pad, gen, n, csum
assert _ASK.size == _ANSWER.size == BATCH_ENTRY


class BatchEntry(NamedTuple):
    """One slot of a batch message; `extra` is the inline room (REQUEST) or 1 commit / 0 release
    (COMMIT); `code`/`flags`/`nbytes`/`checksum` belong to STATUS and COMMITTED entries."""

    slot: int
    generation: int
    extra: int = 0
    proof: bytes = NO_CAPABILITY
    code: int = 0
    flags: int = 0
    nbytes: int = 0
    checksum: int = 0


_ASKING: Final = (MsgType.REQUEST_BATCH, MsgType.COMMIT_BATCH)


def encode_batch(
    mtype: MsgType, token: int, entries: list[BatchEntry], tail_room: int = 0
) -> tuple[bytearray, int]:
    """Header + entries, with `tail_room` bytes left for inline payloads before the closing trailer
    (the caller fills them, see `close_batch`); returns (message, offset of the tail)."""
    if not 0 < len(entries) <= BATCH_MAX:
        raise ProtocolError(f"encode: a batch holds 1..{BATCH_MAX} entries, got {len(entries)}")
    head = encode(Frame(mtype, 0, len(entries), 0, token))
    tail = FRAME_SIZE + len(entries) * BATCH_ENTRY
    msg = bytearray(tail + tail_room + len(TRAILER))
    msg[:FRAME_SIZE] = head
    asking = mtype in _ASKING
    try:
        for i, e in enumerate(entries):
            at = FRAME_SIZE + i * BATCH_ENTRY
            if asking:
                _ASK.pack_into(msg, at, e.slot, e.extra, e.generation, e.proof)
            else:
                _ANSWER.pack_into(msg, at, e.slot, e.code, e.flags, 0, e.generation, e.nbytes, e.checksum)
    except struct.error:
        raise ProtocolError(f"encode: batch entry out of range: {e!r}") from None
    msg[-len(TRAILER) :] = TRAILER
    return msg, tail


def decode_batch(buf: FrameLike, mtype: MsgType, tail_room: int | None = 0) -> tuple[Frame, list[BatchEntry]]:
    """Parse a batch message of type `mtype`; `tail_room` = inline bytes expected after the entries
    (None: do not check the closing trailer, the caller does once it knows the tail's size)."""
    view = memoryview(buf).cast("B") if not isinstance(buf, Frame) else None  # type: ignore[arg-type]
    if view is None or view.nbytes < FRAME_SIZE:
        raise ProtocolError("batch message shorter than its header frame")
    head = decode(view[:FRAME_SIZE])
    if head.type is not mtype:
        raise ProtocolError(f"expected {mtype.name}, got {head.type.name}")
    k = head.slot
    if not 0 < k <= BATCH_MAX:
        raise ProtocolError(f"batch of {k} entries, expected 1..{BATCH_MAX}")
    end = FRAME_SIZE + k * BATCH_ENTRY
    if tail_room is not None:
        close = end + tail_room
        if view.nbytes < close + len(TRAILER) or view[close : close + len(TRAILER)] != TRAILER:
            raise ProtocolError("batch message lacks its closing trailer: truncated (short) message")
    elif view.nbytes < end:
        raise ProtocolError("batch message shorter than its entries")
    asking = mtype in _ASKING
    entries = []
    for at in range(FRAME_SIZE, end, BATCH_ENTRY):
        if asking:
            slot, extra, gen, proof = _ASK.unpack_from(view, at)
            entries.append(BatchEntry(slot, gen, extra, proof))
        else:
            slot, code, flags, _, gen, n, csum = _ANSWER.unpack_from(view, at)
            if code not in _CODES[MsgType.STATUS] or n > MAX_PAYLOAD:
                raise ProtocolError(f"batch entry for slot {slot}: code {code} / nbytes {n} invalid")
            entries.append(BatchEntry(slot, gen, code=Status(code), flags=flags, nbytes=n, checksum=csum))
    return head, entries
