"""Server side of one single read (or one RESOLVE): `ServerRead`, sans-IO, and the actions it asks for."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, TypeAlias

from transport.errors import LocalProtocolError, ProtocolError
from transport.protocol.commitlog import RING_FREE, RING_READING, RING_READY, CommitLog
from transport.protocol.frames import (
    FLAG_INLINE,
    INLINE_MAX,
    MAX_PAYLOAD,
    NO_CAPABILITY,
    Frame,
    FrameLike,
    MsgType,
    Protocol,
    Resolution,
    Status,
    committed,
    decode,
    encode,
    resolved,
    status,
)
from transport.protocol.keys import RingKey
from transport.protocol.states import (
    SERVER_TRANSITIONS,
    SINGLE_CHUNK_SERVER_TRANSITIONS,
    ReadMachine,
    ServerState,
    pick_machine,
)

__all__ = [
    "SERVER_READS",
    "AwaitCommit",
    "BeginRead",
    "Close",
    "Done",
    "Fence",
    "Finalise",
    "FinaliseKind",
    "SendFrame",
    "SendStatus",
    "ServerAction",
    "ServerRead",
    "SingleChunkServerRead",
    "server_machine",
]

# Actions with fields are NamedTuples (a read builds five; immutable and cheap); the fieldless ones
# stay dataclasses, because an empty tuple would be falsy.


class BeginRead(NamedTuple):
    """Call `ring.begin_read(slot, generation, token, lease)` (`begin_read_single_chunk(slot, lease)` if
    `single_chunk`), then `on_begin_read(code, info.generation, info.nbytes, info.checksum)`."""

    slot: int
    generation: int
    token: int
    single_chunk: bool


class SendStatus(NamedTuple):
    """STATUS OK and its payload, one action so the driver has one path: if `inline`, send
    `inline_message(data, ring.payload_view(slot, nbytes))` (one message); else send `data`, then,
    if `nbytes`, `ring.payload_view(slot, nbytes)` (no copy). Then `on_sent()`."""

    frame: Frame
    data: bytes
    slot: int
    nbytes: int
    inline: bool


class SendFrame(NamedTuple):
    """Send `data` (the encoded `frame`: a refusal STATUS, COMMITTED or RESOLVED), then `on_sent()`."""

    frame: Frame
    data: bytes


@dataclass(frozen=True, slots=True)
class AwaitCommit:
    """Receive one frame (bounded by the step timeout), then `on_commit(buf)`; timeout -> `on_error`."""


FinaliseKind: TypeAlias = Literal["commit", "release", "single-chunk"]


class Finalise(NamedTuple):
    """`kind` "commit" -> `ring.commit_read`, "release" -> `ring.release_read` (both with slot,
    generation, token), "single-chunk" -> `ring.finalise_single_chunk(slot)`; then `on_finalised(result)`.
    No await between the ring call and `on_finalised` (the commit log must see commits atomically)."""

    kind: FinaliseKind
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


ServerAction: TypeAlias = BeginRead | SendStatus | SendFrame | AwaitCommit | Finalise | Fence | Done | Close

DONE: Final = Done()
_S = ServerState


class _ServerMachine(ReadMachine[ServerState]):
    """What both single-read server machines share: the request's fields, the table-checked moves,
    the replies. Subclasses name their protocol, the request types they serve and their table."""

    protocol: Protocol
    REQUESTS: tuple[MsgType, ...]

    def __init__(self, ring_key: RingKey, log: CommitLog, *, slots: int | None = None) -> None:
        self.log = log
        self.state = _S.IDLE
        self.request: Frame | None = None
        self.slot = 0
        self.generation = 0
        self.token = 0
        self.nbytes = 0
        self.checksum = 0
        self.holds_slot = False
        self.inline = False  # the payload rides inside the STATUS message
        self.committed = False  # the ring commit (or single-chunk finalise) succeeded
        self.refusal: Status | None = None  # the STATUS a refused read is answered with
        self.resolution: Resolution | None = None
        self.reason = ""  # why the endpoint is closed, or the last error/refusal
        self._ring_key = ring_key
        self._capability = NO_CAPABILITY  # the request's, which its COMMIT must carry too
        self._slots = slots

    def _who(self) -> str:
        return "server read"

    def on_request(self, msg: FrameLike) -> ServerAction:
        """The first frame received on the endpoint for this attempt (raw buffer or decoded Frame)."""
        self._expect("request")
        try:
            frame = decode(msg)
        except ProtocolError as exc:
            return self._reject(Status.BAD_REQUEST, str(exc))
        self.request = frame
        self.slot, self.generation, self.token = frame.slot, frame.generation, frame.token
        if frame.type not in self.REQUESTS:
            return self._reject(Status.BAD_REQUEST, f"{frame.type.name} not a {self.protocol} request")
        if not self._ring_key.admits(frame):
            return self._reject(Status.UNAUTHORIZED, "capability does not open this slot")
        self._capability = frame.capability
        if self._slots is not None and frame.slot >= self._slots:
            return self._reject(Status.BAD_REQUEST, f"slot {frame.slot} out of range")
        return self._admitted(frame)

    def _admitted(self, frame: Frame) -> ServerAction:
        raise NotImplementedError

    def _check_code(self, code: int) -> None:
        if code not in (Status.OK, Status.STALE, Status.NOT_READY, Status.BUSY):
            raise LocalProtocolError(f"server read: {code!r} is not a ring ReadCode")

    def _send_status(self, nbytes: int, checksum: int, room: int) -> SendStatus:
        """STATUS OK with the payload: inline when it fits the client's `room`."""
        self._move("begin_read", _S.SEND_STATUS)
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
        return SendStatus(ok, encode(ok), self.slot, nbytes, self.inline)

    def on_sent(self) -> ServerAction:
        """The frame (with its payload) the last action asked for has been sent."""
        self._expect("sent")
        if self.state is _S.SEND_REPLY:
            self._move("sent", _S.DONE)
            return DONE
        if self.state is _S.SEND_REFUSAL:
            return self._close("sent", self.reason)
        return self._after_status()

    def _after_status(self) -> ServerAction:
        raise NotImplementedError

    def _status(self, code: Status, message: str = "") -> Frame:
        return status(code, slot=self.slot, generation=self.generation, token=self.token, message=message)

    def _reply(self, event: str, frame: Frame) -> SendFrame:
        """Send a final frame (a ring refusal STATUS, COMMITTED, RESOLVED), then Done."""
        self._move(event, _S.SEND_REPLY)
        return SendFrame(frame, encode(frame))

    def _reject(self, code: Status, message: str, event: str = "request") -> SendFrame:
        """Refuse while holding nothing: the status, then close."""
        self.reason = message
        self.refusal = code
        self._move(event, _S.SEND_REFUSAL)
        frame = self._status(code, message)
        return SendFrame(frame, encode(frame))

    def _finalise(self, event: str, to: ServerState, kind: FinaliseKind) -> Finalise:
        self._move(event, to)
        return Finalise(kind, self.slot, self.generation, self.token)

    def _close(self, event: str, reason: str) -> Close:
        self._move(event, _S.CLOSED)
        self.reason = reason
        return Close(reason)


class ServerRead(_ServerMachine):
    """Server side of one commit-protocol read attempt (or one RESOLVE), from the request to Done/Close.

    Every `on_*` method returns the next `ServerAction`; the driver performs it and reports back.
    Calling an `on_*` method the current state does not expect raises ProtocolError (a driver bug);
    `SERVER_TRANSITIONS` (transport.protocol.states) lists every move. `on_error(reason)` is valid in
    any state: it returns Finalise("release") if the read still holds its slot (then `on_finalised` ->
    Close), else Close. Malformed requests get STATUS(BAD_REQUEST), a wrong capability
    STATUS(UNAUTHORIZED), then Close. `holds_slot` says whether a release is owed (for a driver's
    `finally` after cancellation).

    `log` is the server-wide CommitLog; `slots` (the ring's slot count) lets requests for slots out
    of range be answered BAD_REQUEST instead of reaching the ring.
    """

    protocol: Protocol = "commit"
    TRANSITIONS = SERVER_TRANSITIONS
    REQUESTS = (MsgType.REQUEST, MsgType.RESOLVE)

    def _admitted(self, frame: Frame) -> ServerAction:
        if frame.token == 0:
            return self._reject(Status.BAD_REQUEST, "token 0 is reserved")
        if frame.type is MsgType.RESOLVE:
            self._move("request", _S.FENCE)
            return Fence(frame.slot, frame.generation, frame.token)
        self._move("request", _S.BEGIN_READ)
        return BeginRead(frame.slot, frame.generation, frame.token, single_chunk=False)

    def on_begin_read(self, code: int, generation: int, nbytes: int, checksum: int) -> ServerAction:
        """The ring's answer: a ReadCode (same values as Status OK..BUSY) and the slot's info."""
        self._expect("begin_read")
        self._check_code(code)
        if code != Status.OK:
            return self._reply("begin_read", self._status(Status(code)))
        self.nbytes, self.checksum = nbytes, checksum
        if not 0 <= nbytes <= MAX_PAYLOAD:
            return self._refuse("begin_read", Status.ERROR, f"slot holds {nbytes} bytes, over MAX_PAYLOAD")
        self.holds_slot = True
        self.log.observe(self.slot, self.generation)
        room = 0 if self.request is None else min(self.request.nbytes, INLINE_MAX)
        return self._send_status(nbytes, checksum, room)

    def _after_status(self) -> ServerAction:
        self._move("sent", _S.AWAIT_COMMIT)
        return AwaitCommit()

    def on_commit(self, msg: FrameLike) -> ServerAction:
        """The frame received after the payload; anything but this read's COMMIT is refused."""
        self._expect("commit")
        try:
            frame = decode(msg)
        except ProtocolError as exc:
            return self._refuse("commit", Status.BAD_REQUEST, str(exc))
        if not hmac.compare_digest(frame.capability, self._capability):
            return self._refuse("commit", Status.UNAUTHORIZED, "COMMIT without the read's capability")
        if frame.type is not MsgType.COMMIT:
            return self._refuse("commit", Status.BAD_REQUEST, f"expected COMMIT, got {frame.type.name}")
        if (frame.slot, frame.generation, frame.token) != (self.slot, self.generation, self.token):
            return self._refuse("commit", Status.BAD_REQUEST, "COMMIT does not match the read's token")
        return self._finalise("commit", _S.COMMITTING, "commit")

    def on_finalised(self, ok: bool) -> ServerAction:
        """The ring's result for the Finalise action (False: this token no longer owned the slot)."""
        self._expect("finalised")
        self.holds_slot = False
        if self.state is _S.RELEASING_ON_ERROR:
            return self._close("finalised", self.reason)
        if self.state is _S.RELEASING:
            assert self.refusal is not None
            return self._reject(self.refusal, self.reason, "finalised")
        if ok:
            self.committed = True
            self.log.record(self.slot, self.generation, self.token)
            reply = committed(self.slot, self.generation, self.token)
        else:  # fenced by a RESOLVE or reclaimed after its lease: it did not commit
            self.reason = "late commit: the read no longer owns the slot"
            reply = committed(self.slot, self.generation, self.token, Status.ERROR, "commit refused")
        return self._reply("finalised", reply)

    def on_fenced(
        self, generation: int, state: int, last_commit_token: int = 0, committed_token: int = 0
    ) -> ServerAction:
        """The slot's ring info read right after the fencing release (generation, SlotState value,
        the token of the last commit of that generation or 0 if the ring does not know), and the
        ring's commit history for the requested generation (`ring.committed_token`, 0 = unknown)."""
        self._expect("fenced")
        self.resolution = self._resolution(generation, int(state), last_commit_token, committed_token)
        return self._reply("fenced", resolved(self.resolution, self.slot, self.generation, self.token))

    def on_error(self, reason: str) -> ServerAction:
        """A send/recv failed or timed out, or the handler is being cancelled."""
        self.reason = reason
        releasing = self.state in (_S.RELEASING, _S.RELEASING_ON_ERROR)
        if self.holds_slot and not releasing and self.state not in (_S.DONE, _S.CLOSED):
            return self._finalise("error", _S.RELEASING_ON_ERROR, "release")
        self.holds_slot = False  # a failing release: the lease reclaim returns the slot
        return self._close("error", reason)

    def _refuse(self, event: str, code: Status, message: str) -> Finalise:
        """Refuse while holding the slot: release it first, then send the status and close."""
        self.reason = message
        self.refusal = code
        return self._finalise(event, _S.RELEASING, "release")

    def _resolution(
        self, ring_generation: int, ring_state: int, last_commit_token: int, committed_token: int = 0
    ) -> Resolution:
        """Ring first (it survives a server restart), commit log second; see CommitLog for soundness.
        The token was fenced just before, so it cannot commit from now on. A generation's committing
        token never changes once written, so the ring's history answers for rewritten slots too."""
        slot, generation, token = self.slot, self.generation, self.token
        if committed_token:
            return Resolution.COMMITTED if committed_token == token else Resolution.NOT_COMMITTED
        if ring_state in (RING_READY, RING_READING):
            self.log.observe(slot, ring_generation)
        if generation > ring_generation:
            return Resolution.NOT_COMMITTED  # never written on this ring
        if generation == ring_generation:
            if ring_state != RING_FREE:
                return Resolution.NOT_COMMITTED  # a commit leaves the slot FREE until the next write
            if last_commit_token:
                return Resolution.COMMITTED if last_commit_token == token else Resolution.NOT_COMMITTED
        return self.log.lookup(slot, generation, token)


class SingleChunkServerRead(_ServerMachine):
    """Server side of one single-chunk read (the replaced design, kept so the harness can show what it
    loses): LEGACY_REQUEST -> STATUS + PAYLOAD -> finalised on its own send completion; no token, no
    COMMIT, no RESOLVE. It holds no slot across an await (`holds_slot` stays False), so an error just
    closes. `SINGLE_CHUNK_SERVER_TRANSITIONS` lists every move."""

    protocol: Protocol = "single-chunk"
    TRANSITIONS = SINGLE_CHUNK_SERVER_TRANSITIONS
    REQUESTS = (MsgType.LEGACY_REQUEST,)

    def _admitted(self, frame: Frame) -> ServerAction:
        self.generation = self.token = 0
        self._move("request", _S.BEGIN_READ)
        return BeginRead(frame.slot, 0, 0, single_chunk=True)

    def on_begin_read(self, code: int, generation: int, nbytes: int, checksum: int) -> ServerAction:
        """The ring's answer; the generation is whatever the slot holds now (the request named none)."""
        self._expect("begin_read")
        self._check_code(code)
        self.generation = generation
        if code != Status.OK:
            return self._reply("begin_read", self._status(Status(code)))
        self.nbytes, self.checksum = nbytes, checksum
        if not 0 <= nbytes <= MAX_PAYLOAD:
            return self._reject(Status.ERROR, f"slot holds {nbytes} bytes, over MAX_PAYLOAD", "begin_read")
        return self._send_status(nbytes, checksum, room=0)

    def _after_status(self) -> ServerAction:
        return self._finalise("sent", _S.FINALISE, "single-chunk")

    def on_finalised(self, ok: bool) -> ServerAction:
        """The ring's result for finalise_single_chunk (False: another handler finalised it first)."""
        self._expect("finalised")
        self.committed = bool(ok)
        self._move("finalised", _S.DONE)
        return DONE

    def on_error(self, reason: str) -> ServerAction:
        """A send/recv failed or timed out, or the handler is being cancelled: close, nothing to release."""
        self.reason = reason
        return self._close("error", reason)


SERVER_READS: Final[dict[str, type[ServerRead | SingleChunkServerRead]]] = {
    "commit": ServerRead,
    "single-chunk": SingleChunkServerRead,
}


def server_machine(protocol: str) -> type[ServerRead | SingleChunkServerRead]:
    """The server machine class for `protocol` ("commit" or "single-chunk")."""
    return pick_machine(SERVER_READS, protocol)
