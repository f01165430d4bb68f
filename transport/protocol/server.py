"""Server side of one single read (or one RESOLVE): `ServerRead`, sans-IO, and the actions it asks for."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Final, Literal, NamedTuple, TypeAlias

from transport.errors import ConfigError, LocalProtocolError, ProtocolError
from transport.protocol.commitlog import RING_FREE, RING_READING, RING_READY, CommitLog
from transport.protocol.frames import (
    FLAG_INLINE,
    INLINE_MAX,
    MAX_PAYLOAD,
    NO_CAPABILITY,
    PROTOCOLS,
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
from transport.protocol.states import ServerState

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

DONE: Final = Done()


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
        self._capability = NO_CAPABILITY  # the request's, which its COMMIT must carry too
        self._slots = slots
        self._then: ServerAction = DONE  # what follows the frame being sent
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
            return self._reply(self._status(Status(code)), DONE)
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
            return self._end(DONE)
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
        return self._reply(reply, DONE)

    def on_fenced(
        self, generation: int, state: int, last_commit_token: int = 0, committed_token: int = 0
    ) -> ServerAction:
        """The slot's ring info read right after the fencing release (generation, SlotState value,
        the token of the last commit of that generation or 0 if the ring does not know), and the
        ring's commit history for the requested generation (`ring.committed_token`, 0 = unknown)."""
        self._expect(ServerState.FENCE)
        self.resolution = self._resolution(generation, int(state), last_commit_token, committed_token)
        return self._reply(resolved(self.resolution, self.slot, self.generation, self.token), DONE)

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
