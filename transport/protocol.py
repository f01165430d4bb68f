"""Wire protocol: fixed-size frames <-> typed values, and sans-IO state machines for one read.

Nothing here touches a socket, UCX or asyncio (the model is h11 / wsproto): the server and client
modules do the I/O and feed the outcomes to `ServerRead` / `ClientRead`, which say what comes next.

Frames
------
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

Capabilities
------------
UCX listeners bind every interface, so every request proves access. The proof is a per-slot
capability, never the ring key: `RingKey(key, ring_id).capability(slot, generation)` =
HMAC-SHA256(ring key, tag | ring id | slot | generation) truncated to the frame's 16-byte field
(128 bits: forging one means guessing 128 bits per try, each try costing a connection). One descriptor
opens one slot at one generation; the key stays with the producer and the server. REQUEST, COMMIT and
RESOLVE carry the same capability and the server compares it in constant time. Single-chunk requests
name no generation (the replaced design's weakness, kept on purpose), so their capability covers a slot
at every generation: `legacy_capability(slot)`, domain-separated from the commit one by the tag.

Commit protocol (one read attempt, token = the attempt's fencing token)::

    client REQUEST(slot, gen, token, cap)     -> server ring CAS READY(gen) -> READING(token)
    server STATUS(OK, nbytes, checksum)       -> PAYLOAD (nbytes raw bytes; skipped when nbytes == 0)
    client verifies checksum, COMMIT(token)   -> server ring CAS READING(token) -> FREE, logs the commit
    server COMMITTED(OK)                      -> client hands the payload to its caller
    COMMITTED lost: client RESOLVE(slot, gen, token) on another endpoint -> RESOLVED(resolution)

Inline payloads: a REQUEST whose `nbytes` is L > 0 says the client posted a receive of
`FRAME_SIZE + L + 4` bytes for the STATUS. A payload of n <= min(L, INLINE_MAX) bytes then travels in
that one message: the STATUS frame with `flags & FLAG_INLINE`, the n payload bytes, and the trailer
magic again (so a short message is caught even when the payload ends in zeros). One send instead of
two; a copy of a few KiB costs less than a send here. Larger payloads keep the no-copy PAYLOAD send.

Single-chunk (the replaced design, kept so the harness can show what it loses): LEGACY_REQUEST(slot,
legacy capability) -> STATUS -> PAYLOAD; the server finalises on its own send completion; no token, no ack.

Driving the machines (every await bounded by the caller's timeouts)::

    # server: one CommitLog per server process; one ServerRead per request received on an endpoint
    srv = ServerRead(RingKey(ring.secret, ring.ring_id), commit_log, protocol, slots=ring.slots)
    action = srv.on_request(buf)              # buf: a fresh zeroed 128-byte buffer received into
    while not isinstance(action, (Done, Close)):
        try:
            match a := action:
                case BeginRead():             # begin_read_legacy(slot, lease) if action.legacy
                    code, info = ring.begin_read(a.slot, a.generation, a.token, lease)
                    action = srv.on_begin_read(code, info.generation, info.nbytes, info.checksum)
                case SendFrame():   await send(a.data);                      action = srv.on_sent()
                case SendPayload(): await send(ring.payload_view(a.slot, a.nbytes)); action = srv.on_sent()
                case AwaitCommit(): await recv(buf2 := zeroed 128 bytes);    action = srv.on_commit(buf2)
                case Finalise():    ok = ring.commit_read | release_read | finalise_legacy (by a.kind)
                                    action = srv.on_finalised(ok)            # no await in between
                case Fence():       ring.release_read(a.slot, a.generation, a.token)
                                    info = ring.info(a.slot)                 # no await in between
                                    action = srv.on_fenced(info.generation, info.state,
                                                           info.last_commit_token,
                                                           ring.committed_token(a.slot, a.generation))
        except Exception as exc:              # reset, timeout, cancel
            action = srv.on_error(repr(exc))  # Finalise("release") if a slot is held, else Close
    # Done: wait for the next request on this endpoint. Close: close it.
    # finally (cancelled): if srv.holds_slot: ring.release_read(srv.slot, srv.generation, srv.token)

    # client: one ClientRead, with a fresh new_token(), per attempt
    cr = ClientRead(d.slot, d.generation, new_token(), d.capability, d.nbytes, d.checksum, protocol)
    try:
        await send(encode(cr.request_frame()))
        await recv(buf); n = cr.on_status(buf)      # raises the mapped error -> FAILED
        if n: await recv(out[:n])
        commit = cr.on_payload(checksum(out[:n]))   # TruncatedError -> FAILED
        if commit is None: return out               # single-chunk: DONE
        await send(encode(commit)); await recv(buf); cr.on_committed(buf)
        return out                                  # DONE
    except TransportError raised by cr: pass        # the machine has moved already
    except Exception as exc: cr.on_error(exc)       # FAILED before COMMIT, IN_DOUBT after
    if cr.state is FAILED: raise cr.error           # not committed: retry if cr.error.retryable
    for each other endpoint, while time is left:    # IN_DOUBT
        try: await send(encode(cr.resolve_frame())); await recv(buf); cr.on_resolved(buf); return out
        except ...: as above
        if cr.state is FAILED: raise cr.error       # NOT_COMMITTED: read again
        if cr.resolution is Resolution.UNKNOWN: break
    raise cr.error                                  # InDoubtError: report it, never retry
"""

from __future__ import annotations

import hashlib
import hmac
import secrets as _secrets
import struct
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Final, Literal, NamedTuple, TypeAlias

from transport.errors import (
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    LocalProtocolError,
    NotReadyError,
    ProtocolError,
    ReadTimeoutError,
    ServerError,
    StaleSlotError,
    TransportError,
    TruncatedError,
    UnauthorizedError,
)

__all__ = [
    "CAPABILITY_SIZE",
    "FLAG_INLINE",
    "FRAME_SIZE",
    "INLINE_MAX",
    "MAGIC",
    "MAX_PAYLOAD",
    "MESSAGE_SIZE",
    "PROTOCOLS",
    "TRAILER",
    "AwaitCommit",
    "BeginRead",
    "ClientRead",
    "ClientState",
    "Close",
    "CommitLog",
    "Done",
    "Fence",
    "Finalise",
    "Frame",
    "MsgType",
    "Resolution",
    "RingKey",
    "SendFrame",
    "SendInline",
    "SendPayload",
    "ServerAction",
    "ServerRead",
    "ServerState",
    "Status",
    "capability_matches",
    "clip_message",
    "commit",
    "committed",
    "decode",
    "encode",
    "inline_message",
    "legacy_request",
    "new_token",
    "request",
    "resolve",
    "resolved",
    "status",
]

FRAME_SIZE: Final = 128
MAGIC: Final = b"SWv1"
TRAILER: Final = b"1vWS"
CAPABILITY_SIZE: Final = 16
MESSAGE_SIZE: Final = 48
MAX_PAYLOAD: Final = 1 << 31
PROTOCOLS: Final = ("commit", "single-chunk")
# Payloads up to this size ride inside the STATUS message (see "Inline payloads" below); measured in
# docs/decisions.md ("Inline threshold"). A REQUEST's nbytes field is the largest inline payload the
# client has room for (0 = none); the server inlines when the payload fits both limits.
INLINE_MAX: Final = 16 << 10
FLAG_INLINE: Final = 1

Protocol: TypeAlias = Literal["commit", "single-chunk"]
FrameLike: TypeAlias = "Frame | bytes | bytearray | memoryview"

_FRAME = struct.Struct("<4sBBHI4xQQQQ16s48s12x4s")
assert _FRAME.size == FRAME_SIZE
_NO_CAPABILITY: Final = bytes(CAPABILITY_SIZE)
_U32: Final = (1 << 32) - 1
_U64: Final = (1 << 64) - 1


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
    capability: bytes = _NO_CAPABILITY
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
        ("generation", _U64),
        ("token", _U64),
        ("nbytes", MAX_PAYLOAD),
        ("checksum", _U64),
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


def new_token() -> int:
    """A random non-zero 64-bit fencing token for one read attempt (0 means "no token")."""
    return _secrets.randbits(64) or 1


def _capability(capability: bytes | str) -> bytes:
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


_CAP_MSG = struct.Struct("<B16sIQ")  # tag, ring id, slot, generation
_TAG_COMMIT: Final = 1
_TAG_LEGACY: Final = 2


class RingKey:
    """The ring key and ring id: issues and checks per-slot capabilities. Producer and server only.

    `capability(slot, generation)` opens exactly that read; `legacy_capability(slot)` opens one slot
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

    def legacy_capability(self, slot: int) -> bytes:
        """HMAC-SHA256(key, legacy tag | ring id | slot | 0)[:16]: the slot at every generation."""
        return self._mac(_TAG_LEGACY, slot, 0)

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
        """What a descriptor carries: `capability`, or `legacy_capability` under single-chunk."""
        if protocol == "single-chunk":
            return self.legacy_capability(slot)
        return self.capability(slot, generation)

    def admits(self, frame: Frame) -> bool:
        """Does the frame carry the capability for the (slot, generation) it names? Constant time."""
        if frame.type is MsgType.LEGACY_REQUEST:
            expected = self.legacy_capability(frame.slot)
        else:
            expected = self.capability(frame.slot, frame.generation)
        return hmac.compare_digest(frame.capability, expected)


def clip_message(text: str) -> str:
    """`text` cut to MESSAGE_SIZE bytes of utf-8 on a character boundary, NULs removed."""
    raw = text.replace("\0", "").encode("utf-8", "replace")[:MESSAGE_SIZE]
    return raw.decode("utf-8", "ignore")


def request(slot: int, generation: int, token: int, capability: bytes | str, inline: int = 0) -> Frame:
    """A REQUEST; `inline` is the largest payload the client can take inside the STATUS (0: none)."""
    return Frame(MsgType.REQUEST, 0, slot, generation, token, inline, capability=_capability(capability))


def inline_message(status_frame: bytes, payload: object) -> bytearray:
    """STATUS frame + payload + trailer: the one message an inline read sends (the payload copied)."""
    view = memoryview(payload).cast("B")  # type: ignore[arg-type]
    n = view.nbytes
    msg = bytearray(FRAME_SIZE + n + len(TRAILER))
    msg[:FRAME_SIZE] = status_frame
    msg[FRAME_SIZE : FRAME_SIZE + n] = view
    msg[FRAME_SIZE + n :] = TRAILER
    return msg


def legacy_request(slot: int, capability: bytes | str) -> Frame:
    return Frame(MsgType.LEGACY_REQUEST, 0, slot, capability=_capability(capability))


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
    return Frame(MsgType.COMMIT, 0, slot, generation, token, capability=_capability(capability))


def committed(slot: int, generation: int, token: int, code: Status = Status.OK, message: str = "") -> Frame:
    """The answer to COMMIT: OK = committed; any other code = refused, the read did NOT commit."""
    return Frame(
        MsgType.COMMITTED, code, slot, generation, token, message=clip_message(message) if message else ""
    )


def resolve(slot: int, generation: int, token: int, capability: bytes | str) -> Frame:
    return Frame(MsgType.RESOLVE, 0, slot, generation, token, capability=_capability(capability))


def resolved(resolution: Resolution, slot: int, generation: int, token: int) -> Frame:
    return Frame(MsgType.RESOLVED, resolution, slot, generation, token)


def capability_matches(frame: Frame, capability: bytes | str) -> bool:
    """Constant-time comparison of the frame's capability with an expected one (bytes or hex)."""
    try:
        expected = _capability(capability)
    except (ConfigError, ValueError, TypeError):
        return False
    return hmac.compare_digest(frame.capability, expected)


# -- commit log -------------------------------------------------------------------------------------

# transport.ring.SlotState values, kept here so this module imports neither the ring nor numpy.
_RING_FREE: Final = 0
_RING_READY: Final = 2
_RING_READING: Final = 3


class CommitLog:
    """Bounded memory of which token committed which (slot, generation), for RESOLVE.

    Soundness rule: NOT_COMMITTED is only ever answered when no commit of that read can have happened
    and none can happen later; when in doubt the answer is UNKNOWN. `lookup` relies on two facts:

    * commits of one slot happen in generation order (a generation is committed, the slot is FREE, the
      next write bumps the generation), so FIFO eviction evicts a slot's generations oldest first;
    * `observe(slot, g)` is called when this process saw (slot, g) uncommitted (READY or READING):
      any later commit of g or of a newer generation goes through this process, hence this log.

    So an absent (slot, g) was never committed iff g is at or after the slot's oldest observed
    generation ("horizon": before it the server may have been another process) and newer than every
    evicted generation of that slot. The caller must also make sure the token can no longer commit
    (`ServerRead` fences it in the ring first); otherwise a COMMIT still in flight would falsify the
    answer. Memory: `capacity` entries plus two ints per slot seen. One log per server process (and one
    server process per ring at a time), shared by all its handlers; `record` must run right after the
    ring commit with no await in between.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"commit log capacity={capacity!r}: must be a positive integer")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._evicted: dict[int, int] = {}  # slot -> newest evicted generation
        self._horizon: dict[int, int] = {}  # slot -> oldest generation observed uncommitted

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, slot: int, generation: int, token: int) -> None:
        """`token` committed (slot, generation); evicts the oldest entry when full."""
        key = (slot, generation)
        self._entries[key] = token
        self._entries.move_to_end(key)
        self.observe(slot, generation)  # it was READING, hence uncommitted, just before
        while len(self._entries) > self.capacity:
            (old_slot, old_gen), _ = self._entries.popitem(last=False)
            if old_gen > self._evicted.get(old_slot, -1):
                self._evicted[old_slot] = old_gen

    def observe(self, slot: int, generation: int) -> None:
        """(slot, generation) was READY or READING (uncommitted) in this process just now."""
        if generation < self._horizon.get(slot, generation + 1):
            self._horizon[slot] = generation

    def lookup(self, slot: int, generation: int, token: int) -> Resolution:
        """COMMITTED if `token` committed it; NOT_COMMITTED if another token did, or if the log covers
        (slot, generation) and has no commit for it; UNKNOWN when the log cannot know."""
        committer = self._entries.get((slot, generation))
        if committer is not None:
            return Resolution.COMMITTED if committer == token else Resolution.NOT_COMMITTED
        if generation <= self._evicted.get(slot, -1):
            return Resolution.UNKNOWN
        if generation < self._horizon.get(slot, generation + 1):
            return Resolution.UNKNOWN
        return Resolution.NOT_COMMITTED


# -- server state machine ---------------------------------------------------------------------------


class ServerState(StrEnum):
    IDLE = "idle"  # waiting for on_request
    BEGIN_READ = "begin_read"  # BeginRead issued: waiting for on_begin_read
    FENCE = "fence"  # Fence issued: waiting for on_fenced
    SEND_STATUS = "send_status"  # SendFrame(STATUS) issued: waiting for on_sent
    SEND_PAYLOAD = "send_payload"  # SendPayload issued: waiting for on_sent
    AWAIT_COMMIT = "await_commit"  # waiting for on_commit
    FINALISE = "finalise"  # Finalise issued: waiting for on_finalised
    SEND_REPLY = "send_reply"  # COMMITTED / RESOLVED / error STATUS issued: waiting for on_sent
    DONE = "done"  # read over, the endpoint can serve the next request
    CLOSED = "closed"  # read over, close the endpoint


# Actions with fields are NamedTuples (a read builds five; immutable and cheap); the fieldless ones
# stay dataclasses, because an empty tuple would be falsy.


class BeginRead(NamedTuple):
    """Call `ring.begin_read(slot, generation, token, lease)` (`begin_read_legacy(slot, lease)` if
    `legacy`), then `on_begin_read(code, info.generation, info.nbytes, info.checksum)`."""

    slot: int
    generation: int
    token: int
    legacy: bool


class SendFrame(NamedTuple):
    """Send `data` (the encoded `frame`: STATUS, COMMITTED or RESOLVED), then `on_sent()`."""

    frame: Frame
    data: bytes


class SendInline(NamedTuple):
    """Send `inline_message(data, ring.payload_view(slot, nbytes))` (STATUS + payload in one message),
    then `on_sent()`."""

    frame: Frame
    data: bytes
    slot: int
    nbytes: int


class SendPayload(NamedTuple):
    """Send `ring.payload_view(slot, nbytes)` (no copy), then `on_sent()`."""

    slot: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class AwaitCommit:
    """Receive one frame (bounded by the step timeout), then `on_commit(buf)`; timeout -> `on_error`."""


class Finalise(NamedTuple):
    """`kind` "commit" -> `ring.commit_read`, "release" -> `ring.release_read` (both with slot,
    generation, token), "legacy" -> `ring.finalise_legacy(slot)`; then `on_finalised(result)`.
    No await between the ring call and `on_finalised` (the commit log must see commits atomically)."""

    kind: Literal["commit", "release", "legacy"]
    slot: int
    generation: int
    token: int


class Fence(NamedTuple):
    """RESOLVE: `ring.release_read(slot, generation, token)` (a read `token` still holds is released, so
    a COMMIT still in flight can no longer commit), `info = ring.info(slot)`, then
    `on_fenced(info.generation, info.state, info.last_commit_token)`, all without an await."""

    slot: int
    generation: int
    token: int


@dataclass(frozen=True, slots=True)
class Done:
    """The read is over and the endpoint is healthy: wait for the next request on it."""


@dataclass(frozen=True, slots=True)
class Close:
    """The read is over; close (or abort) the endpoint."""

    reason: str


ServerAction: TypeAlias = (
    BeginRead | SendFrame | SendInline | SendPayload | AwaitCommit | Finalise | Fence | Done | Close
)

_DONE: Final = Done()


class ServerRead:
    """Server side of one read attempt (or one RESOLVE), from the request frame to Done/Close.

    Every `on_*` method returns the next `ServerAction`; the driver performs it and reports back.
    Calling an `on_*` method the current state does not expect raises ProtocolError (a driver bug).
    `on_error(reason)` is valid in any state: it returns Finalise("release") if the read still holds
    its slot (then `on_finalised` -> Close), else Close. Malformed requests get STATUS(BAD_REQUEST),
    a wrong capability STATUS(UNAUTHORIZED), then Close. `holds_slot` says whether a release is owed (for a
    driver's `finally` after cancellation).

    `log` is the server-wide CommitLog; `slots` (the ring's slot count) lets requests for slots out
    of range be answered BAD_REQUEST instead of reaching the ring.
    """

    def __init__(
        self,
        ring_key: RingKey,
        log: CommitLog,
        protocol: Protocol = "commit",
        slots: int | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        self.protocol: Protocol = protocol
        self.log = log
        self.state = ServerState.IDLE
        self.request: Frame | None = None
        self.slot = 0
        self.generation = 0
        self.token = 0
        self.nbytes = 0
        self.checksum = 0
        self.holds_slot = False
        self.inline = False  # the payload rides inside the STATUS message
        self.committed = False  # the ring commit (or legacy finalise) succeeded
        self.resolution: Resolution | None = None
        self.reason = ""  # why the endpoint is closed, or the last error/refusal
        self._ring_key = ring_key
        self._capability = _NO_CAPABILITY  # the request's, which its COMMIT must carry too
        self._slots = slots
        self._then: ServerAction = _DONE  # what follows the frame being sent
        self._finalising: Literal["commit", "release", "legacy"] = "release"
        self._after_release: Frame | Close = Close("")

    @property
    def key(self) -> str:
        return f"{self.slot}:{self.generation}"

    def _expect(self, *states: ServerState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"server read: event not valid in state {self.state.value}")

    # -- events ---------------------------------------------------------------------------------

    def on_request(self, msg: FrameLike) -> ServerAction:
        """The first frame received on the endpoint for this attempt (raw buffer or decoded Frame)."""
        self._expect(ServerState.IDLE)
        try:
            frame = decode(msg)
        except ProtocolError as exc:
            return self._reject(Status.BAD_REQUEST, str(exc))
        self.request = frame
        self.slot, self.generation, self.token = frame.slot, frame.generation, frame.token
        allowed = (
            (MsgType.REQUEST, MsgType.RESOLVE) if self.protocol == "commit" else (MsgType.LEGACY_REQUEST,)
        )
        if frame.type not in allowed:
            return self._reject(Status.BAD_REQUEST, f"{frame.type.name} not a {self.protocol} request")
        if not self._ring_key.admits(frame):
            return self._reject(Status.UNAUTHORIZED, "capability does not open this slot")
        self._capability = frame.capability
        if self._slots is not None and frame.slot >= self._slots:
            return self._reject(Status.BAD_REQUEST, f"slot {frame.slot} out of range")
        if frame.type is MsgType.LEGACY_REQUEST:
            self.generation = self.token = 0
            self.state = ServerState.BEGIN_READ
            return BeginRead(frame.slot, 0, 0, legacy=True)
        if frame.token == 0:
            return self._reject(Status.BAD_REQUEST, "token 0 is reserved")
        if frame.type is MsgType.RESOLVE:
            self.state = ServerState.FENCE
            return Fence(frame.slot, frame.generation, frame.token)
        self.state = ServerState.BEGIN_READ
        return BeginRead(frame.slot, frame.generation, frame.token, legacy=False)

    def on_begin_read(self, code: int, generation: int, nbytes: int, checksum: int) -> ServerAction:
        """The ring's answer: a ReadCode (same values as Status OK..BUSY) and the slot's info."""
        self._expect(ServerState.BEGIN_READ)
        if code not in (Status.OK, Status.STALE, Status.NOT_READY, Status.BUSY):
            raise LocalProtocolError(f"server read: {code!r} is not a ring ReadCode")
        legacy = self.protocol == "single-chunk"
        if legacy:
            self.generation = generation
        if code != Status.OK:
            return self._reply(self._status(Status(code)), _DONE)
        self.nbytes, self.checksum = nbytes, checksum
        if not 0 <= nbytes <= MAX_PAYLOAD:
            message = f"slot holds {nbytes} bytes, over MAX_PAYLOAD"
            return self._reject(Status.ERROR, message) if legacy else self._refuse(Status.ERROR, message)
        if not legacy:
            self.holds_slot = True
            self.log.observe(self.slot, self.generation)
        self.state = ServerState.SEND_STATUS
        room = 0 if legacy or self.request is None else min(self.request.nbytes, INLINE_MAX)
        self.inline = 0 < nbytes <= room
        ok = Frame(
            MsgType.STATUS,
            Status.OK,
            self.slot,
            self.generation,
            self.token,
            nbytes,
            checksum,
            flags=FLAG_INLINE if self.inline else 0,
        )
        if self.inline:
            return SendInline(ok, encode(ok), self.slot, nbytes)
        return SendFrame(ok, encode(ok))

    def on_sent(self) -> ServerAction:
        """The frame or payload the last action asked for has been sent."""
        self._expect(ServerState.SEND_STATUS, ServerState.SEND_PAYLOAD, ServerState.SEND_REPLY)
        if self.state is ServerState.SEND_REPLY:
            return self._end(self._then)
        if self.state is ServerState.SEND_STATUS and self.nbytes > 0 and not self.inline:
            self.state = ServerState.SEND_PAYLOAD
            return SendPayload(self.slot, self.nbytes)
        if self.protocol == "single-chunk":
            return self._finalise("legacy")
        self.state = ServerState.AWAIT_COMMIT
        return AwaitCommit()

    def on_commit(self, msg: FrameLike) -> ServerAction:
        """The frame received after the payload; anything but this read's COMMIT is refused."""
        self._expect(ServerState.AWAIT_COMMIT)
        try:
            frame = decode(msg)
        except ProtocolError as exc:
            return self._refuse(Status.BAD_REQUEST, str(exc))
        if not hmac.compare_digest(frame.capability, self._capability):
            return self._refuse(Status.UNAUTHORIZED, "COMMIT without the read's capability")
        if frame.type is not MsgType.COMMIT:
            return self._refuse(Status.BAD_REQUEST, f"expected COMMIT, got {frame.type.name}")
        if (frame.slot, frame.generation, frame.token) != (self.slot, self.generation, self.token):
            return self._refuse(Status.BAD_REQUEST, "COMMIT does not match the read's token")
        return self._finalise("commit")

    def on_finalised(self, ok: bool) -> ServerAction:
        """The ring's result for the Finalise action (False: this token no longer owned the slot)."""
        self._expect(ServerState.FINALISE)
        kind = self._finalising
        if kind == "legacy":
            self.committed = bool(ok)
            return self._end(_DONE)
        self.holds_slot = False
        if kind == "release":
            return self._after_release_action()
        if ok:
            self.committed = True
            self.log.record(self.slot, self.generation, self.token)
            reply = committed(self.slot, self.generation, self.token)
        else:  # fenced by a RESOLVE or reclaimed after its lease: it did not commit
            self.reason = "late commit: the read no longer owns the slot"
            reply = committed(self.slot, self.generation, self.token, Status.ERROR, "commit refused")
        return self._reply(reply, _DONE)

    def on_fenced(
        self, generation: int, state: int, last_commit_token: int = 0, committed_token: int = 0
    ) -> ServerAction:
        """The slot's ring info read right after the fencing release (generation, SlotState value,
        the token of the last commit of that generation or 0 if the ring does not know), and the
        ring's commit history for the requested generation (`ring.committed_token`, 0 = unknown)."""
        self._expect(ServerState.FENCE)
        self.resolution = self._resolution(generation, int(state), last_commit_token, committed_token)
        return self._reply(resolved(self.resolution, self.slot, self.generation, self.token), _DONE)

    def on_error(self, reason: str) -> ServerAction:
        """A send/recv failed or timed out, or the handler is being cancelled."""
        self.reason = reason
        if self.state in (ServerState.DONE, ServerState.CLOSED):
            return self._end(Close(reason))
        if self.holds_slot and not (self.state is ServerState.FINALISE and self._finalising == "release"):
            self._after_release = Close(reason)
            return self._finalise("release")
        self.holds_slot = False  # a failing release: the lease reclaim returns the slot
        return self._end(Close(reason))

    # -- helpers ----------------------------------------------------------------------------------

    def _status(self, code: Status, message: str = "") -> Frame:
        return status(code, slot=self.slot, generation=self.generation, token=self.token, message=message)

    def _reply(self, frame: Frame, then: ServerAction) -> SendFrame:
        """Send a final frame (refusal STATUS, COMMITTED, RESOLVED), then `then` (Done or Close)."""
        self.state = ServerState.SEND_REPLY
        self._then = then
        return SendFrame(frame, encode(frame))

    def _reject(self, code: Status, message: str) -> SendFrame:
        """Refuse a request while holding nothing: status, then close."""
        self.reason = message
        return self._reply(self._status(code, message), Close(message))

    def _refuse(self, code: Status, message: str) -> Finalise:
        """Refuse while holding the slot: release it first, then send the status and close."""
        self.reason = message
        self._after_release = self._status(code, message)
        return self._finalise("release")

    def _after_release_action(self) -> ServerAction:
        after = self._after_release
        if isinstance(after, Frame):
            return self._reply(after, Close(self.reason))
        return self._end(after)

    def _finalise(self, kind: Literal["commit", "release", "legacy"]) -> Finalise:
        self.state = ServerState.FINALISE
        self._finalising = kind
        return Finalise(kind, self.slot, self.generation, self.token)

    def _end(self, action: ServerAction) -> ServerAction:
        if isinstance(action, Close):
            self.state = ServerState.CLOSED
            self.reason = action.reason
        else:
            self.state = ServerState.DONE
        return action

    def _resolution(
        self, ring_generation: int, ring_state: int, last_commit_token: int, committed_token: int = 0
    ) -> Resolution:
        """Ring first (it survives a server restart), commit log second; see CommitLog for soundness.
        The token was fenced just before, so it cannot commit from now on. A generation's committing
        token never changes once written, so the ring's history answers for rewritten slots too."""
        slot, generation, token = self.slot, self.generation, self.token
        if committed_token:
            return Resolution.COMMITTED if committed_token == token else Resolution.NOT_COMMITTED
        if ring_state in (_RING_READY, _RING_READING):
            self.log.observe(slot, ring_generation)
        if generation > ring_generation:
            return Resolution.NOT_COMMITTED  # never written on this ring
        if generation == ring_generation:
            if ring_state != _RING_FREE:
                return Resolution.NOT_COMMITTED  # a commit leaves the slot FREE until the next write
            if last_commit_token:
                return Resolution.COMMITTED if last_commit_token == token else Resolution.NOT_COMMITTED
        return self.log.lookup(slot, generation, token)


# -- client state machine ---------------------------------------------------------------------------


class ClientState(StrEnum):
    IDLE = "idle"  # request_frame() not called yet
    AWAIT_STATUS = "await_status"  # request sent: on_status
    AWAIT_PAYLOAD = "await_payload"  # OK status: receive `nbytes`, then on_payload
    AWAIT_COMMITTED = "await_committed"  # COMMIT sent: on_committed (or resolve_frame)
    AWAIT_RESOLVED = "await_resolved"  # RESOLVE sent: on_resolved
    DONE = "done"  # the payload is the caller's (committed, or single-chunk received)
    IN_DOUBT = "in_doubt"  # COMMIT sent, outcome unknown: resolve_frame() on another endpoint
    FAILED = "failed"  # definitely not committed; `error` says why (retry if error.retryable)


_STATUS_ERRORS: Final[dict[int, type[TransportError]]] = {
    Status.STALE: StaleSlotError,
    Status.NOT_READY: NotReadyError,
    Status.BUSY: BusyError,
    Status.UNAUTHORIZED: UnauthorizedError,
    Status.BAD_REQUEST: ServerError,
    Status.ERROR: ServerError,
}


def payload_verified(expected_checksum: int, checksum: int) -> bool:
    """Whether received bytes are the payload the descriptor names. One rule for the single-read
    and the batch client, so both hand over exactly the payloads this accepts."""
    return checksum == expected_checksum


def commit_accepted(code: int) -> bool:
    """Whether a commit answer means "committed": only OK does; any other code is a refusal (the
    read was fenced or its lease reclaimed), never a success. Shared by single and batch reads."""
    return code == Status.OK


class ClientRead:
    """Client side of one read attempt; build a new one (with a new token) for every attempt.

    The driver sends what the machine returns and feeds it what arrives (raw buffers or Frames).
    Whenever an `on_*` method raises a TransportError the machine has already moved to FAILED (the
    read did not commit: retry if `error.retryable`) or IN_DOUBT (COMMIT was sent and the outcome is
    unknown: send `resolve_frame()` on another endpoint; if that never gets an answer, report
    `error`, an InDoubtError, and never retry). `on_error(exc)` does the same for I/O failures and
    returns the error to raise. Events in the wrong state raise ProtocolError without a transition.

    Decisions: a STATUS OK whose nbytes/checksum disagree with the descriptor is a ProtocolError (the
    server and the descriptor contradict each other; nothing was truncated); a payload whose checksum
    (or received size) is wrong is a TruncatedError. Single-chunk reads are deliberately as weak as the
    design they reproduce: no echo check, no descriptor check; `checksum_ok` records whether the payload
    matched, and the read is DONE either way so the harness can count what that design delivers.
    """

    def __init__(
        self,
        slot: int,
        generation: int,
        token: int,
        capability: bytes | str,
        expected_nbytes: int,
        expected_checksum: int,
        protocol: Protocol = "commit",
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if protocol == "commit" and not 0 < token <= _U64:
            raise ConfigError(f"token={token!r}: must be a non-zero u64 (see new_token)")
        self.slot = slot
        self.generation = generation
        self.token = token
        self.capability = _capability(capability)
        self.expected_nbytes = expected_nbytes
        self.expected_checksum = expected_checksum
        self.protocol: Protocol = protocol
        self.state = ClientState.IDLE
        self.nbytes = 0  # bytes to receive after an OK status
        self.checksum_ok: bool | None = None
        self.inline = False  # the STATUS carried the payload (see inline_payload)
        self.resolution: Resolution | None = None
        self.error: TransportError | None = None

    @property
    def key(self) -> str:
        return f"{self.slot}:{self.generation}"

    def _expect(self, *states: ClientState) -> None:
        if self.state not in states:
            raise LocalProtocolError(f"client read {self.key}: event not valid in state {self.state.value}")

    # -- frames to send ------------------------------------------------------------------------------

    def request_frame(self, inline: int = 0) -> Frame:
        """IDLE -> AWAIT_STATUS: the REQUEST (or LEGACY_REQUEST) to send. `inline` > 0: the STATUS
        receive was posted with room for that many payload bytes (`inline_room`)."""
        self._expect(ClientState.IDLE)
        self.state = ClientState.AWAIT_STATUS
        if self.protocol == "single-chunk":
            return legacy_request(self.slot, self.capability)
        return request(self.slot, self.generation, self.token, self.capability, inline)

    def inline_room(self, limit: int = INLINE_MAX) -> int:
        """How many payload bytes to make room for in the STATUS receive (0: a plain 128-byte one)."""
        if self.protocol != "commit" or not 0 < self.expected_nbytes <= min(limit, INLINE_MAX):
            return 0
        return self.expected_nbytes

    def inline_payload(self, msg: memoryview | bytearray | bytes) -> memoryview:
        """The payload of an inline STATUS (after on_status returned its size and `inline` is set):
        the bytes after the frame, checked for the closing trailer (TruncatedError -> FAILED)."""
        self._expect(ClientState.AWAIT_PAYLOAD)
        view = memoryview(msg).cast("B")
        end = FRAME_SIZE + self.nbytes
        if not self.inline or view.nbytes < end + len(TRAILER) or view[end : end + len(TRAILER)] != TRAILER:
            raise self._fail(TruncatedError(f"{self.key}: inline STATUS lacks its closing trailer (short)"))
        return view[FRAME_SIZE:end]

    def commit_frame(self) -> Frame:
        """The COMMIT to send (also returned by on_payload)."""
        self._expect(ClientState.AWAIT_COMMITTED)
        return commit(self.slot, self.generation, self.token, self.capability)

    def resolve_frame(self) -> Frame:
        """-> AWAIT_RESOLVED: the RESOLVE to send on another endpoint after COMMITTED went missing."""
        self._expect(ClientState.AWAIT_COMMITTED, ClientState.IN_DOUBT, ClientState.AWAIT_RESOLVED)
        self.state = ClientState.AWAIT_RESOLVED
        return resolve(self.slot, self.generation, self.token, self.capability)

    # -- events ----------------------------------------------------------------------------------------

    def on_status(self, msg: FrameLike) -> int:
        """AWAIT_STATUS -> AWAIT_PAYLOAD; returns the payload size to receive next (if 0, receive
        nothing and call on_payload(checksum(b"")). A refusal raises the mapped error (FAILED)."""
        self._expect(ClientState.AWAIT_STATUS)
        frame = self._decode(msg, self._fail)
        if frame.type is not MsgType.STATUS:
            raise self._fail(ProtocolError(f"{self.key}: expected STATUS, got {frame.type.name}"))
        legacy = self.protocol == "single-chunk"
        if not legacy and not self._echoes(frame, allow_blank=frame.code != Status.OK):
            raise self._fail(ProtocolError(f"{self.key}: STATUS for another read (a late reply?)"))
        if frame.code != Status.OK:
            raise self._fail(self._status_error(frame))
        if not legacy and (frame.nbytes, frame.checksum) != (self.expected_nbytes, self.expected_checksum):
            raise self._fail(
                ProtocolError(
                    f"{self.key}: STATUS says {frame.nbytes} bytes / checksum {frame.checksum:#x}, "
                    f"the descriptor {self.expected_nbytes} / {self.expected_checksum:#x}"
                )
            )
        self.nbytes = frame.nbytes
        self.inline = bool(frame.flags & FLAG_INLINE)
        self.state = ClientState.AWAIT_PAYLOAD
        return frame.nbytes

    def on_payload(self, checksum: int, nbytes: int | None = None) -> Frame | None:
        """AWAIT_PAYLOAD -> AWAIT_COMMITTED, returning the COMMIT to send (single-chunk: DONE, None).
        `checksum` of the received bytes; `nbytes` if the transport reports a length."""
        self._expect(ClientState.AWAIT_PAYLOAD)
        if nbytes is not None and nbytes != self.nbytes:
            raise self._fail(TruncatedError(f"{self.key}: received {nbytes} of {self.nbytes} bytes"))
        self.checksum_ok = payload_verified(self.expected_checksum, checksum)
        if self.protocol == "single-chunk":
            self.state = ClientState.DONE
            return None
        if not self.checksum_ok:
            raise self._fail(
                TruncatedError(f"{self.key}: payload checksum {checksum:#x} != {self.expected_checksum:#x}")
            )
        self.state = ClientState.AWAIT_COMMITTED
        return self.commit_frame()

    def on_committed(self, msg: FrameLike) -> None:
        """AWAIT_COMMITTED -> DONE on COMMITTED(OK); FAILED (retryable ServerError) when the server
        refused the commit; IN_DOUBT (raises InDoubtError) on anything unrecognisable."""
        self._expect(ClientState.AWAIT_COMMITTED)
        frame = self._decode(msg, self._doubt)
        if frame.type in (MsgType.COMMITTED, MsgType.STATUS) and not commit_accepted(frame.code):
            if self._echoes(frame, allow_blank=True):
                code = Status(frame.code).name
                raise self._fail(
                    ServerError(f"{self.key}: commit refused ({code} {frame.message}): not committed")
                )
        elif frame.type is MsgType.COMMITTED and self._echoes(frame):
            self.state = ClientState.DONE
            return
        raise self._doubt(ProtocolError(f"{self.key}: unexpected reply to COMMIT: {frame.type.name}"))

    def on_resolved(self, msg: FrameLike) -> None:
        """AWAIT_RESOLVED -> DONE (COMMITTED), FAILED (NOT_COMMITTED: retryable, the read can be done
        again), IN_DOUBT (UNKNOWN, or an unusable answer: try another endpoint or give up)."""
        self._expect(ClientState.AWAIT_RESOLVED)
        frame = self._decode(msg, self._doubt)
        if frame.type is MsgType.RESOLVED and self._echoes(frame):
            self.resolution = Resolution(frame.code)
            if frame.code == Resolution.COMMITTED:
                self.state = ClientState.DONE
                return
            if frame.code == Resolution.NOT_COMMITTED:
                raise self._fail(
                    ConnectionLostError(f"{self.key}: COMMITTED was lost and the read did not commit; retry")
                )
            raise self._doubt(ProtocolError(f"{self.key}: the server cannot tell whether the read committed"))
        if frame.type is MsgType.STATUS and frame.code != Status.OK and self._echoes(frame, allow_blank=True):
            raise self._doubt(self._status_error(frame))
        raise self._doubt(ProtocolError(f"{self.key}: unexpected reply to RESOLVE: {frame.type.name}"))

    def on_error(self, exc: BaseException) -> TransportError:
        """An I/O step failed or timed out: FAILED before COMMIT was sent, IN_DOUBT after. Returns the
        error to raise (TimeoutError -> ReadTimeoutError, other non-transport errors ->
        ConnectionLostError; an InDoubtError once COMMIT was sent)."""
        self._expect(
            ClientState.IDLE,
            ClientState.AWAIT_STATUS,
            ClientState.AWAIT_PAYLOAD,
            ClientState.AWAIT_COMMITTED,
            ClientState.AWAIT_RESOLVED,
            ClientState.IN_DOUBT,
        )
        if isinstance(exc, TransportError):
            err = exc
        elif isinstance(exc, TimeoutError):
            err = ReadTimeoutError(f"{self.key}: {exc or 'timed out'}")
        else:
            err = ConnectionLostError(f"{self.key}: {type(exc).__name__}: {exc}")
        if err is not exc:
            err.__cause__ = exc
        if self.state in (ClientState.AWAIT_COMMITTED, ClientState.AWAIT_RESOLVED, ClientState.IN_DOUBT):
            return self._doubt(err)
        return self._fail(err)

    # -- helpers ---------------------------------------------------------------------------------------

    def _decode(self, msg: FrameLike, on_bad: Callable[[TransportError], TransportError]) -> Frame:
        """Decode a reply; a garbled one moves the machine as `on_bad` says (FAILED or IN_DOUBT)."""
        try:
            return decode(msg)
        except ProtocolError as exc:
            raise on_bad(exc) from None

    def _echoes(self, frame: Frame, allow_blank: bool = False) -> bool:
        """Does the reply name this read? A refusal may be blank (the server could not parse us)."""
        echo = (frame.slot, frame.generation, frame.token)
        return echo == (self.slot, self.generation, self.token) or (allow_blank and echo == (0, 0, 0))

    def _status_error(self, frame: Frame) -> TransportError:
        code = Status(frame.code)
        detail = f": {frame.message}" if frame.message else ""
        return _STATUS_ERRORS[code](f"{self.key}: {code.name}{detail}")

    def _fail(self, err: TransportError) -> TransportError:
        self.state = ClientState.FAILED
        self.error = err
        return err

    def _doubt(self, cause: TransportError) -> TransportError:
        self.state = ClientState.IN_DOUBT
        err = InDoubtError(f"{self.key}: COMMIT sent, outcome unknown: {cause}")
        err.__cause__ = cause
        self.error = err
        return err


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
    proof: bytes = _NO_CAPABILITY
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


def _entry_proof_ok(entry: BatchEntry, key: RingKey) -> bool:
    """The entry's per-slot capability for the (slot, generation) it names, compared in constant time."""
    try:
        expected = key.capability(entry.slot, entry.generation)
    except ConfigError:
        return False
    return hmac.compare_digest(entry.proof, expected)


class BatchState(StrEnum):
    IDLE = "idle"
    BEGIN = "begin"  # server: BeginBatch issued
    SEND_STATUS = "send_status"  # server: SendStatusBatch issued / client: waiting for it
    PAYLOADS = "payloads"  # server: SendPayloads issued / client: receiving them
    AWAIT_COMMIT = "await_commit"  # server: waiting for COMMIT_BATCH
    FINALISE = "finalise"  # server: FinaliseBatch issued
    SEND_REPLY = "send_reply"  # server: COMMITTED_BATCH (or a refusal) issued
    AWAIT_COMMITTED = "await_committed"  # client: COMMIT_BATCH sent
    DONE = "done"
    CLOSED = "closed"


# (state, event) -> the states that event may lead to; anything else is a driver bug (ProtocolError).
_B = BatchState
BATCH_TRANSITIONS: Final[dict[tuple[BatchState, str], frozenset[BatchState]]] = {
    (_B.IDLE, "request"): frozenset({_B.BEGIN, _B.SEND_REPLY}),
    (_B.BEGIN, "begun"): frozenset({_B.SEND_STATUS}),
    (_B.SEND_STATUS, "sent"): frozenset({_B.PAYLOADS, _B.AWAIT_COMMIT, _B.DONE}),
    (_B.PAYLOADS, "sent"): frozenset({_B.AWAIT_COMMIT}),
    (_B.AWAIT_COMMIT, "commit"): frozenset({_B.FINALISE}),
    (_B.FINALISE, "finalised"): frozenset({_B.SEND_REPLY, _B.CLOSED}),
    (_B.SEND_REPLY, "sent"): frozenset({_B.DONE, _B.CLOSED}),
    # client side
    (_B.IDLE, "send_request"): frozenset({_B.SEND_STATUS}),
    (_B.SEND_STATUS, "status"): frozenset({_B.PAYLOADS, _B.DONE}),
    (_B.PAYLOADS, "payloads"): frozenset({_B.AWAIT_COMMITTED, _B.DONE}),
    (_B.AWAIT_COMMITTED, "committed"): frozenset({_B.DONE}),
}
_ANY_STATE_EVENTS: Final = frozenset({"error"})


class _BatchMachine:
    state: BatchState = BatchState.IDLE

    def _move(self, event: str, to: BatchState) -> None:
        if event not in _ANY_STATE_EVENTS and to not in BATCH_TRANSITIONS.get((self.state, event), ()):
            raise ProtocolError(f"batch: {event} -> {to.value} not valid in state {self.state.value}")
        self.state = to


class BeginBatch(NamedTuple):
    """Per entry: `ring.begin_read(slot, generation, token, lease)` (None entries: skip, refused
    already); then `on_begun([(code, info.generation, info.nbytes, info.checksum) or None, ...])`."""

    entries: tuple[BatchEntry | None, ...]
    token: int


class SendStatusBatch(NamedTuple):
    """Send `message` after copying each `inline` (offset, slot, nbytes) payload into it
    (`fill_inline`), then `on_sent()`."""

    message: bytearray
    inline: tuple[tuple[int, int, int], ...]


class SendPayloads(NamedTuple):
    """Send `ring.payload_view(slot, nbytes)` for each item, in order, then `on_sent()`."""

    items: tuple[tuple[int, int], ...]


class AwaitCommitBatch(NamedTuple):
    """Receive `size` bytes (a fresh zeroed buffer), then `on_commit(buf)`."""

    size: int


class FinaliseBatch(NamedTuple):
    """Per item (kind, slot, generation, token): ring.commit_read / release_read; then
    `on_finalised([ok, ...])` with no await in between (the commit log must see commits atomically)."""

    items: tuple[tuple[Literal["commit", "release"], int, int, int], ...]


class SendBatchReply(NamedTuple):
    """Send `data` (COMMITTED_BATCH, or a refusal STATUS), then `on_sent()`."""

    data: bytes | bytearray


BatchAction: TypeAlias = (
    BeginBatch
    | SendStatusBatch
    | SendPayloads
    | AwaitCommitBatch
    | FinaliseBatch
    | SendBatchReply
    | Done
    | Close
)


def fill_inline(action: SendStatusBatch, view_of: Callable[[int, int], object]) -> bytearray:
    """The STATUS_BATCH message with its inline payloads copied in from `view_of(slot, nbytes)`."""
    msg = action.message
    for offset, slot, n in action.inline:
        msg[offset : offset + n] = memoryview(view_of(slot, n)).cast("B")  # type: ignore[arg-type]
    return msg


class ServerBatch(_BatchMachine):
    """Server side of one batched read. `held` maps entry index -> slot held (READING by `token`):
    the driver's `finally` releases whatever is still in it after cancellation."""

    def __init__(self, ring_key: RingKey, log: CommitLog, slots: int | None = None) -> None:
        self._ring_key = ring_key
        self.log = log
        self._slots = slots
        self.token = 0
        self.entries: list[BatchEntry] = []
        self.codes: list[int] = []
        self.held: dict[int, BatchEntry] = {}
        self.committed: list[BatchEntry] = []
        self.reason = ""
        self._items: tuple[tuple[Literal["commit", "release"], int, int, int], ...] = ()
        self._answered: list[bool] = []
        self._payloads: tuple[tuple[int, int], ...] = ()
        self._after: Done | Close = _DONE

    def on_request(self, msg: FrameLike) -> BatchAction:
        try:
            head, entries = decode_batch(msg, MsgType.REQUEST_BATCH)
        except ProtocolError as exc:
            return self._refuse(Status.BAD_REQUEST, str(exc))
        if head.token == 0:
            return self._refuse(Status.BAD_REQUEST, "token 0 is reserved")
        self.token, self.entries = head.token, entries
        self.codes = [-1] * len(entries)
        todo: list[BatchEntry | None] = []
        for i, e in enumerate(entries):
            if not _entry_proof_ok(e, self._ring_key):
                self.codes[i] = Status.UNAUTHORIZED
            elif self._slots is not None and e.slot >= self._slots:
                self.codes[i] = Status.BAD_REQUEST
            elif any(o.slot == e.slot for o in entries[:i]):
                self.codes[i] = Status.BAD_REQUEST  # the same slot twice in one batch
            todo.append(e if self.codes[i] < 0 else None)
        self._move("request", BatchState.BEGIN)
        return BeginBatch(tuple(todo), self.token)

    def on_begun(self, results: list[tuple[int, int, int, int] | None]) -> BatchAction:
        """Per entry: the ring's (ReadCode, generation, nbytes, checksum), None where skipped."""
        if self.state is not BatchState.BEGIN or len(results) != len(self.entries):
            raise ProtocolError(f"batch: on_begun not valid in state {self.state.value}")
        answers: list[BatchEntry] = []
        inline: list[tuple[int, int]] = []  # (entry index, nbytes)
        payloads: list[tuple[int, int]] = []
        room_left = INLINE_BATCH_MAX
        for i, (e, r) in enumerate(zip(self.entries, results, strict=True)):
            code, nbytes, csum, flags = self.codes[i], 0, 0, 0
            if r is not None:
                code, _, nbytes, csum = r
                if code == Status.OK:
                    self.held[i] = e
                    self.log.observe(e.slot, e.generation)
                    if 0 < nbytes <= min(e.extra, INLINE_MAX, room_left):
                        flags = FLAG_INLINE
                        room_left -= nbytes
                        inline.append((i, nbytes))
                    elif nbytes:
                        payloads.append((e.slot, nbytes))
            self.codes[i] = code
            answers.append(
                BatchEntry(e.slot, e.generation, code=code, flags=flags, nbytes=nbytes, checksum=csum)
            )
        tail = sum(n for _, n in inline)
        msg, offset = encode_batch(MsgType.STATUS_BATCH, self.token, answers, tail)
        places = []
        for i, n in inline:
            places.append((offset, self.entries[i].slot, n))
            offset += n
        self._payloads = tuple(payloads)
        self._move("begun", BatchState.SEND_STATUS)
        return SendStatusBatch(msg, tuple(places))

    def on_sent(self) -> BatchAction:
        if self.state is BatchState.SEND_STATUS:
            if not self.held:
                self._move("sent", BatchState.DONE)
                return _DONE
            if self._payloads:
                self._move("sent", BatchState.PAYLOADS)
                return SendPayloads(self._payloads)
            self._move("sent", BatchState.AWAIT_COMMIT)
            return AwaitCommitBatch(self._commit_size())
        if self.state is BatchState.PAYLOADS:
            self._move("sent", BatchState.AWAIT_COMMIT)
            return AwaitCommitBatch(self._commit_size())
        self._move("sent", BatchState.DONE if isinstance(self._after, Done) else BatchState.CLOSED)
        return self._after

    def _commit_size(self) -> int:
        return FRAME_SIZE + len(self.held) * BATCH_ENTRY + len(TRAILER)

    def on_commit(self, msg: FrameLike) -> BatchAction:
        """COMMIT_BATCH: per named held slot commit or release (each answered in COMMITTED_BATCH);
        held slots it does not name are released unanswered; a garbled one releases them all."""
        if self.state is not BatchState.AWAIT_COMMIT:
            raise ProtocolError(f"batch: on_commit not valid in state {self.state.value}")
        try:
            head, asks = decode_batch(msg, MsgType.COMMIT_BATCH)
            if head.token != self.token:
                raise ProtocolError("COMMIT_BATCH does not carry the batch's token")
        except ProtocolError as exc:
            return self.on_error(f"bad COMMIT_BATCH: {exc}")
        by_slot = {e.slot: e for e in self.held.values()}
        items: list[tuple[Literal["commit", "release"], int, int, int]] = []
        answered: list[bool] = []
        for a in asks:
            held = by_slot.get(a.slot)
            ours = held is not None and held.generation == a.generation and _entry_proof_ok(a, self._ring_key)
            if held is None or not ours:
                continue  # not a slot this batch holds: ignored, never answered
            del by_slot[a.slot]
            items.append(("commit" if a.extra == 1 else "release", a.slot, a.generation, self.token))
            answered.append(True)
        for e in by_slot.values():
            items.append(("release", e.slot, e.generation, self.token))
            answered.append(False)
        self._items, self._answered = tuple(items), answered
        self._after = _DONE
        self._move("commit", BatchState.FINALISE)
        return FinaliseBatch(self._items)

    def on_finalised(self, results: list[bool]) -> BatchAction:
        """The ring's result per FinaliseBatch item (False: the token no longer held that slot)."""
        if self.state is not BatchState.FINALISE or len(results) != len(self._items):
            raise ProtocolError(f"batch: on_finalised not valid in state {self.state.value}")
        self.held.clear()
        if isinstance(self._after, Close):  # releases after an error: nothing to answer
            self._move("finalised", BatchState.CLOSED)
            return self._after
        answers: list[BatchEntry] = []
        for (kind, slot, generation, _), ok, answered in zip(
            self._items, results, self._answered, strict=True
        ):
            committed_now = kind == "commit" and ok
            if committed_now:
                self.log.record(slot, generation, self.token)
                self.committed.append(BatchEntry(slot, generation))
            if answered:
                answers.append(
                    BatchEntry(slot, generation, code=Status.OK if committed_now else Status.ERROR)
                )
        self._move("finalised", BatchState.SEND_REPLY)
        msg, _ = encode_batch(MsgType.COMMITTED_BATCH, self.token, answers)
        return SendBatchReply(msg)

    def on_error(self, reason: str) -> BatchAction:
        """A send/recv failed or timed out: release every held slot, then close."""
        self.reason = reason
        self._after = Close(reason)
        if self.held and self.state is not BatchState.FINALISE:
            self._items = tuple(("release", e.slot, e.generation, self.token) for e in self.held.values())
            self._answered = [False] * len(self._items)
            self._move("error", BatchState.FINALISE)
            return FinaliseBatch(self._items)
        self.held.clear()
        self._move("error", BatchState.CLOSED)
        return self._after

    def _refuse(self, code: Status, message: str) -> BatchAction:
        self.reason = message
        self._after = Close(message)
        self._move("request", BatchState.SEND_REPLY)
        return SendBatchReply(encode(status(code, message=message)))


class BatchSlot(NamedTuple):
    """What a client batch needs of one descriptor."""

    slot: int
    generation: int
    nbytes: int
    checksum: int
    proof: bytes


class ClientBatch(_BatchMachine):
    """Client side of one batched read (one token for the batch, every slot judged on its own).

    Per slot `errors[i]` ends as None (committed: the payload is the caller's) or a TransportError:
    retryable when the slot did not commit, an InDoubtError when COMMIT_BATCH asked to commit it and
    no answer came (RESOLVE it with `resolve_read(i)` on another endpoint, never read it again).
    """

    def __init__(self, slots: list[BatchSlot], token: int, inline_max: int = INLINE_MAX) -> None:
        if not 0 < len(slots) <= BATCH_MAX:
            raise ConfigError(f"a batch holds 1..{BATCH_MAX} slots, got {len(slots)}")
        if len({s.slot for s in slots}) != len(slots):
            raise ConfigError("a batch cannot name the same slot twice")
        if not 0 < token <= _U64:
            raise ConfigError(f"token={token!r}: must be a non-zero u64 (see new_token)")
        self.slots = slots
        self.token = token
        self.errors: list[TransportError | None] = [None] * len(slots)
        self.ok: list[bool] = [False] * len(slots)  # status OK, payload to verify
        self.inline: list[tuple[int, int] | None] = [None] * len(slots)  # (offset, nbytes) in status
        self.pending: list[int] = []  # entry indexes whose payload comes as its own message, in order
        self.commit_sent: list[int] = []  # entry indexes COMMIT_BATCH asked to commit
        self.released: list[int] = []
        room, self.rooms = INLINE_BATCH_MAX, []
        for s in slots:
            r = s.nbytes if 0 < s.nbytes <= min(inline_max, INLINE_MAX, room) else 0
            room -= r
            self.rooms.append(r)

    def key(self, i: int) -> str:
        return f"{self.slots[i].slot}:{self.slots[i].generation}"

    def request_message(self) -> bytearray:
        entries = [
            BatchEntry(s.slot, s.generation, r, s.proof) for s, r in zip(self.slots, self.rooms, strict=True)
        ]
        msg, _ = encode_batch(MsgType.REQUEST_BATCH, self.token, entries)
        self._move("send_request", BatchState.SEND_STATUS)
        return msg

    def status_size(self) -> int:
        """Bytes to receive the STATUS_BATCH into (entries plus the inline room asked for)."""
        return FRAME_SIZE + len(self.slots) * BATCH_ENTRY + sum(self.rooms) + len(TRAILER)

    def on_status(self, msg: FrameLike) -> list[int]:
        """The STATUS_BATCH: per slot OK (payload inline or to receive) or refused (that slot fails
        alone). Returns the sizes of the payload messages to receive next, in order. A garbled
        message fails every slot (raises the error, nothing committed)."""
        if self.state is not BatchState.SEND_STATUS:
            raise ProtocolError(f"batch: on_status not valid in state {self.state.value}")
        view = memoryview(msg).cast("B")  # type: ignore[arg-type]
        try:
            head, answers = decode_batch(view, MsgType.STATUS_BATCH, None)
            if head.token != self.token or len(answers) != len(self.slots):
                raise ProtocolError("STATUS_BATCH for another batch (a late reply?)")
            tail = sum(a.nbytes for a in answers if a.flags & FLAG_INLINE)
            decode_batch(view, MsgType.STATUS_BATCH, tail)  # the closing trailer, after the inline bytes
        except ProtocolError as exc:
            self._fail_all(_as_frame_error(exc))
            raise self.errors[0] from None  # type: ignore[misc]
        offset = FRAME_SIZE + len(self.slots) * BATCH_ENTRY
        sizes = []
        for i, (s, a) in enumerate(zip(self.slots, answers, strict=True)):
            if (a.slot, a.generation) != (s.slot, s.generation):
                self._fail_one(i, ProtocolError(f"{self.key(i)}: STATUS_BATCH entry names another slot"))
                continue
            if a.code != Status.OK:
                self.errors[i] = _STATUS_ERRORS[Status(a.code)](f"{self.key(i)}: {Status(a.code).name}")
                continue
            self.ok[i] = True
            if (a.nbytes, a.checksum) != (s.nbytes, s.checksum):
                self._fail_one(
                    i, ProtocolError(f"{self.key(i)}: status says {a.nbytes} bytes, descriptor {s.nbytes}")
                )
            if a.flags & FLAG_INLINE:
                if a.nbytes > self.rooms[i]:
                    self._fail_one(i, ProtocolError(f"{self.key(i)}: inline payload larger than asked"))
                self.inline[i] = (offset, a.nbytes)
                offset += a.nbytes
            elif a.nbytes:
                self.pending.append(i)
                sizes.append(a.nbytes)
        if not any(self.ok):
            self._move("status", BatchState.DONE)
        else:
            self._move("status", BatchState.PAYLOADS)
        return sizes

    def on_payloads(self, checksums: dict[int, int]) -> bytearray | None:
        """Checksums of every OK slot's bytes (inline or received), by entry index -> the
        COMMIT_BATCH to send: commit where length and checksum hold, release the rest (each failing
        alone with TruncatedError). None if nothing is held (DONE)."""
        if self.state is not BatchState.PAYLOADS:
            raise ProtocolError(f"batch: on_payloads not valid in state {self.state.value}")
        asks = []
        for i, held in enumerate(self.ok):
            if not held:
                continue
            s = self.slots[i]
            got = checksums.get(i)
            good = self.errors[i] is None and got is not None and payload_verified(s.checksum, got)
            if self.errors[i] is None and not good:
                self.errors[i] = TruncatedError(
                    f"{self.key(i)}: payload checksum mismatch (short or corrupt)"
                )
            (self.commit_sent if good else self.released).append(i)
            asks.append(BatchEntry(s.slot, s.generation, 1 if good else 0, s.proof))
        msg, _ = encode_batch(MsgType.COMMIT_BATCH, self.token, asks)
        self._n_asked = len(asks)
        self._move("payloads", BatchState.AWAIT_COMMITTED)
        return msg

    def committed_size(self) -> int:
        return FRAME_SIZE + self._n_asked * BATCH_ENTRY + len(TRAILER)

    def on_committed(self, msg: FrameLike) -> None:
        """COMMITTED_BATCH: per slot OK = committed (DONE), ERROR = refused (not committed: retryable).
        Garbled or foreign: every slot asked to commit is IN_DOUBT."""
        if self.state is not BatchState.AWAIT_COMMITTED:
            raise ProtocolError(f"batch: on_committed not valid in state {self.state.value}")
        try:
            head, answers = decode_batch(msg, MsgType.COMMITTED_BATCH)
            if head.token != self.token or len(answers) != self._n_asked:
                raise ProtocolError("COMMITTED_BATCH for another batch (a late reply?)")
        except ProtocolError as exc:
            self.doubt(exc)
            return
        by_slot = {a.slot: a for a in answers}
        for i in self.commit_sent:
            a = by_slot.get(self.slots[i].slot)
            if a is None or a.generation != self.slots[i].generation:
                self._doubt_one(i, ProtocolError(f"{self.key(i)}: missing from COMMITTED_BATCH"))
            elif not commit_accepted(a.code):
                self.errors[i] = ServerError(f"{self.key(i)}: commit refused: not committed")
        self._move("committed", BatchState.DONE)

    def on_error(self, exc: BaseException) -> None:
        """An I/O step failed: slots not yet judged fail (retryable) before COMMIT_BATCH was sent;
        after it, every slot it asked to commit is IN_DOUBT."""
        err = _as_error(exc, f"batch of {len(self.slots)}")
        if self.state is BatchState.AWAIT_COMMITTED:
            self.doubt(err)
        else:
            self._fail_all(err)
        self._move("error", BatchState.DONE)

    def doubt(self, cause: TransportError) -> None:
        for i in self.commit_sent:
            if self.errors[i] is None:
                self._doubt_one(i, cause)

    def resolve_read(self, i: int) -> ClientRead:
        """A ClientRead for slot `i`, IN_DOUBT, to RESOLVE on another endpoint (see ClientRead)."""
        s = self.slots[i]
        cr = ClientRead(s.slot, s.generation, self.token, s.proof, s.nbytes, s.checksum)
        cr.state, cr.error = ClientState.IN_DOUBT, self.errors[i]
        return cr

    def _fail_one(self, i: int, err: TransportError) -> None:
        if self.errors[i] is None:
            self.errors[i] = err

    def _fail_all(self, err: TransportError) -> None:
        for i in range(len(self.slots)):
            if self.errors[i] is None:
                self.errors[i] = err

    def _doubt_one(self, i: int, cause: TransportError) -> None:
        err = InDoubtError(f"{self.key(i)}: COMMIT_BATCH sent, outcome unknown: {cause}")
        err.__cause__ = cause
        self.errors[i] = err


def _as_error(exc: BaseException, what: str) -> TransportError:
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError):
        err: TransportError = ReadTimeoutError(f"{what}: {exc or 'timed out'}")
    else:
        err = ConnectionLostError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def _as_frame_error(exc: ProtocolError) -> TransportError:
    """A garbled STATUS_BATCH: a short message (missing trailer) is a truncation, the rest protocol."""
    if "trailer" in str(exc) or "shorter" in str(exc):
        return TruncatedError(str(exc))
    return exc
