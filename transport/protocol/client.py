"""Client side of one single read: `ClientRead`, sans-IO, and the rules every client judges replies by.

`payload_verified` and `commit_accepted` are the one rule each that both the single-read and the
batch client apply (the batch machine calls them through this module, so patching them here, as
tests/mutants does, reaches both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from transport.errors import (
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    NotReadyError,
    ProtocolError,
    ReadTimeoutError,
    ServerError,
    StaleSlotError,
    TransportError,
    TruncatedError,
    UnauthorizedError,
)
from transport.protocol.frames import (
    FLAG_INLINE,
    FRAME_SIZE,
    INLINE_MAX,
    TRAILER,
    U64,
    Frame,
    FrameLike,
    MsgType,
    Protocol,
    Resolution,
    Status,
    as_capability,
    commit,
    decode,
    request,
    resolve,
    single_chunk_request,
)
from transport.protocol.states import (
    CLIENT_TRANSITIONS,
    SINGLE_CHUNK_CLIENT_TRANSITIONS,
    ClientState,
    ReadMachine,
    pick_machine,
)

__all__ = [
    "CLIENT_READS",
    "ClientRead",
    "SingleChunkClientRead",
    "as_transport_error",
    "client_machine",
    "commit_accepted",
    "payload_verified",
]

STATUS_ERRORS: Final[dict[int, type[TransportError]]] = {
    Status.STALE: StaleSlotError,
    Status.NOT_READY: NotReadyError,
    Status.BUSY: BusyError,
    Status.UNAUTHORIZED: UnauthorizedError,
    Status.BAD_REQUEST: ServerError,
    Status.ERROR: ServerError,
}


def as_transport_error(exc: BaseException, what: str) -> TransportError:
    """An I/O failure as the error a read reports: TimeoutError -> ReadTimeoutError, anything else
    not already a TransportError -> ConnectionLostError (caused by `exc`). Single and batch reads."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError):
        err: TransportError = ReadTimeoutError(f"{what}: {exc or 'timed out'}")
    else:
        err = ConnectionLostError(f"{what}: {type(exc).__name__}: {exc}")
    err.__cause__ = exc
    return err


def payload_verified(expected_checksum: int, checksum: int) -> bool:
    """Whether received bytes are the payload the descriptor names. One rule for the single-read
    and the batch client, so both hand over exactly the payloads this accepts."""
    return checksum == expected_checksum


def commit_accepted(code: int) -> bool:
    """Whether a commit answer means "committed": only OK does; any other code is a refusal (the
    read was fenced or its lease reclaimed), never a success. Shared by single and batch reads."""
    return code == Status.OK


class _ClientMachine(ReadMachine[ClientState]):
    """What both single-read client machines share: the descriptor's fields, the table-checked moves,
    the STATUS checks, the failure paths. Subclasses name their protocol and their table."""

    protocol: Protocol

    def __init__(
        self,
        slot: int,
        generation: int,
        token: int,
        capability: bytes | str,
        expected_nbytes: int,
        expected_checksum: int,
    ) -> None:
        self._check_token(token)
        self.slot = slot
        self.generation = generation
        self.token = token
        self.capability = as_capability(capability)
        self.expected_nbytes = expected_nbytes
        self.expected_checksum = expected_checksum
        self.state = ClientState.IDLE
        self.nbytes = 0  # bytes to receive after an OK status
        self.checksum_ok: bool | None = None
        self.inline = False  # the STATUS carried the payload (see inline_payload)
        self.resolution: Resolution | None = None
        self.error: TransportError | None = None

    def _who(self) -> str:
        return f"client read {self.key}"

    def inline_room(self, limit: int = INLINE_MAX) -> int:
        """How many payload bytes to make room for in the STATUS receive (0: a plain 128-byte one)."""
        return 0

    def inline_payload(self, msg: memoryview | bytearray | bytes) -> memoryview:
        """The payload of an inline STATUS (after on_status returned its size and `inline` is set):
        the bytes after the frame, checked for the closing trailer (TruncatedError -> FAILED)."""
        self._expect("inline_payload")
        view = memoryview(msg).cast("B")
        end = FRAME_SIZE + self.nbytes
        if not self.inline or view.nbytes < end + len(TRAILER) or view[end : end + len(TRAILER)] != TRAILER:
            raise self._fail(
                "inline_payload",
                TruncatedError(f"{self.key}: inline STATUS lacks its closing trailer (short)"),
            )
        return view[FRAME_SIZE:end]

    def on_status(self, msg: FrameLike) -> int:
        """AWAIT_STATUS -> AWAIT_PAYLOAD; returns the payload size to receive next (if 0, receive
        nothing and call on_payload(checksum(b"")). A refusal raises the mapped error (FAILED)."""
        self._expect("status")
        frame = self._decode(msg, "status", self._fail)
        if frame.type is not MsgType.STATUS:
            raise self._fail("status", ProtocolError(f"{self.key}: expected STATUS, got {frame.type.name}"))
        self._check_status(frame)
        if frame.code != Status.OK:
            raise self._fail("status", self._status_error(frame))
        self._check_ok(frame)
        self.nbytes = frame.nbytes
        self.inline = bool(frame.flags & FLAG_INLINE)
        self._move("status", ClientState.AWAIT_PAYLOAD)
        return frame.nbytes

    def _check_token(self, token: int) -> None:
        """Raise ConfigError if this protocol cannot use `token`."""

    def _check_status(self, frame: Frame) -> None:
        """Before the code is read: raise (FAILED) if the STATUS cannot be this read's."""

    def _check_ok(self, frame: Frame) -> None:
        """A STATUS OK: raise (FAILED) if it contradicts the descriptor."""

    def _received(self, checksum: int, nbytes: int | None) -> None:
        """The payload arrived: check its length, record whether its checksum matches."""
        self._expect("payload")
        if nbytes is not None and nbytes != self.nbytes:
            raise self._fail(
                "payload", TruncatedError(f"{self.key}: received {nbytes} of {self.nbytes} bytes")
            )
        self.checksum_ok = payload_verified(self.expected_checksum, checksum)

    def on_error(self, exc: BaseException) -> TransportError:
        """An I/O step failed or timed out: FAILED before COMMIT was sent, IN_DOUBT after. Returns the
        error to raise (TimeoutError -> ReadTimeoutError, other non-transport errors ->
        ConnectionLostError; an InDoubtError once COMMIT was sent)."""
        self._expect("error")
        err = as_transport_error(exc, self.key)
        if ClientState.IN_DOUBT in self.TRANSITIONS[(self.state, "error")]:
            return self._doubt("error", err)
        return self._fail("error", err)

    def _decode(
        self, msg: FrameLike, event: str, on_bad: Callable[[str, TransportError], TransportError]
    ) -> Frame:
        """Decode a reply; a garbled one moves the machine as `on_bad` says (FAILED or IN_DOUBT)."""
        try:
            return decode(msg)
        except ProtocolError as exc:
            raise on_bad(event, exc) from None

    def _status_error(self, frame: Frame) -> TransportError:
        code = Status(frame.code)
        detail = f": {frame.message}" if frame.message else ""
        return STATUS_ERRORS[code](f"{self.key}: {code.name}{detail}")

    def _fail(self, event: str, err: TransportError) -> TransportError:
        self._move(event, ClientState.FAILED)
        self.error = err
        return err

    def _doubt(self, event: str, cause: TransportError) -> TransportError:
        self._move(event, ClientState.IN_DOUBT)
        err = InDoubtError(f"{self.key}: COMMIT sent, outcome unknown: {cause}")
        err.__cause__ = cause
        self.error = err
        return err


class ClientRead(_ClientMachine):
    """Client side of one commit-protocol read attempt; build a new one (with a new token) for every
    attempt.

    The driver sends what the machine returns and feeds it what arrives (raw buffers or Frames).
    Whenever an `on_*` method raises a TransportError the machine has already moved to FAILED (the
    read did not commit: retry if `error.retryable`) or IN_DOUBT (COMMIT was sent and the outcome is
    unknown: send `resolve_frame()` on another endpoint; if that never gets an answer, report
    `error`, an InDoubtError, and never retry). `on_error(exc)` does the same for I/O failures and
    returns the error to raise. Events in the wrong state raise ProtocolError without a transition;
    `CLIENT_TRANSITIONS` (transport.protocol.states) lists every move.

    Decisions: a STATUS OK whose nbytes/checksum disagree with the descriptor is a ProtocolError (the
    server and the descriptor contradict each other; nothing was truncated); a payload whose checksum
    (or received size) is wrong is a TruncatedError.
    """

    protocol: Protocol = "commit"
    TRANSITIONS = CLIENT_TRANSITIONS

    def _check_token(self, token: int) -> None:
        if not 0 < token <= U64:
            raise ConfigError(f"token={token!r}: must be a non-zero u64 (see new_token)")

    # -- frames to send ------------------------------------------------------------------------------

    def request_frame(self, inline: int = 0) -> Frame:
        """IDLE -> AWAIT_STATUS: the REQUEST to send. `inline` > 0: the STATUS receive was posted with
        room for that many payload bytes (`inline_room`)."""
        self._expect("request")
        self._move("request", ClientState.AWAIT_STATUS)
        return request(self.slot, self.generation, self.token, self.capability, inline)

    def inline_room(self, limit: int = INLINE_MAX) -> int:
        """How many payload bytes to make room for in the STATUS receive (0: a plain 128-byte one)."""
        if not 0 < self.expected_nbytes <= min(limit, INLINE_MAX):
            return 0
        return self.expected_nbytes

    def commit_frame(self) -> Frame:
        """The COMMIT to send (also returned by on_payload)."""
        self._expect("commit")
        return commit(self.slot, self.generation, self.token, self.capability)

    def resolve_frame(self) -> Frame:
        """-> AWAIT_RESOLVED: the RESOLVE to send on another endpoint after COMMITTED went missing."""
        self._expect("resolve")
        self._move("resolve", ClientState.AWAIT_RESOLVED)
        return resolve(self.slot, self.generation, self.token, self.capability)

    # -- events ----------------------------------------------------------------------------------------

    def _check_status(self, frame: Frame) -> None:
        if not self._echoes(frame, allow_blank=frame.code != Status.OK):
            raise self._fail("status", ProtocolError(f"{self.key}: STATUS for another read (a late reply?)"))

    def _check_ok(self, frame: Frame) -> None:
        if (frame.nbytes, frame.checksum) != (self.expected_nbytes, self.expected_checksum):
            raise self._fail(
                "status",
                ProtocolError(
                    f"{self.key}: STATUS says {frame.nbytes} bytes / checksum {frame.checksum:#x}, "
                    f"the descriptor {self.expected_nbytes} / {self.expected_checksum:#x}"
                ),
            )

    def on_payload(self, checksum: int, nbytes: int | None = None) -> Frame:
        """AWAIT_PAYLOAD -> AWAIT_COMMITTED, returning the COMMIT to send. `checksum` of the received
        bytes; `nbytes` if the transport reports a length."""
        self._received(checksum, nbytes)
        if not self.checksum_ok:
            raise self._fail(
                "payload",
                TruncatedError(f"{self.key}: payload checksum {checksum:#x} != {self.expected_checksum:#x}"),
            )
        self._move("payload", ClientState.AWAIT_COMMITTED)
        return self.commit_frame()

    def on_committed(self, msg: FrameLike) -> None:
        """AWAIT_COMMITTED -> DONE on COMMITTED(OK); FAILED (retryable ServerError) when the server
        refused the commit; IN_DOUBT (raises InDoubtError) on anything unrecognisable."""
        self._expect("committed")
        frame = self._decode(msg, "committed", self._doubt)
        if frame.type in (MsgType.COMMITTED, MsgType.STATUS) and not commit_accepted(frame.code):
            if self._echoes(frame, allow_blank=True):
                code = Status(frame.code).name
                raise self._fail(
                    "committed",
                    ServerError(f"{self.key}: commit refused ({code} {frame.message}): not committed"),
                )
        elif frame.type is MsgType.COMMITTED and self._echoes(frame):
            self._move("committed", ClientState.DONE)
            return
        raise self._doubt(
            "committed", ProtocolError(f"{self.key}: unexpected reply to COMMIT: {frame.type.name}")
        )

    def on_resolved(self, msg: FrameLike) -> None:
        """AWAIT_RESOLVED -> DONE (COMMITTED), FAILED (NOT_COMMITTED: retryable, the read can be done
        again), IN_DOUBT (UNKNOWN, or an unusable answer: try another endpoint or give up)."""
        self._expect("resolved")
        frame = self._decode(msg, "resolved", self._doubt)
        if frame.type is MsgType.RESOLVED and self._echoes(frame):
            self.resolution = Resolution(frame.code)
            if frame.code == Resolution.COMMITTED:
                self._move("resolved", ClientState.DONE)
                return
            if frame.code == Resolution.NOT_COMMITTED:
                raise self._fail(
                    "resolved",
                    ConnectionLostError(f"{self.key}: COMMITTED was lost and the read did not commit; retry"),
                )
            raise self._doubt(
                "resolved", ProtocolError(f"{self.key}: the server cannot tell whether the read committed")
            )
        if frame.type is MsgType.STATUS and frame.code != Status.OK and self._echoes(frame, allow_blank=True):
            raise self._doubt("resolved", self._status_error(frame))
        raise self._doubt(
            "resolved", ProtocolError(f"{self.key}: unexpected reply to RESOLVE: {frame.type.name}")
        )

    def _echoes(self, frame: Frame, allow_blank: bool = False) -> bool:
        """Does the reply name this read? A refusal may be blank (the server could not parse us)."""
        echo = (frame.slot, frame.generation, frame.token)
        return echo == (self.slot, self.generation, self.token) or (allow_blank and echo == (0, 0, 0))


class SingleChunkClientRead(_ClientMachine):
    """Client side of one single-chunk read: LEGACY_REQUEST -> STATUS -> PAYLOAD -> DONE.

    Deliberately as weak as the design it reproduces: no token, no echo check, no descriptor check;
    `checksum_ok` records whether the payload matched, and the read is DONE either way so the harness
    can count what that design delivers. `SINGLE_CHUNK_CLIENT_TRANSITIONS` lists every move.
    """

    protocol: Protocol = "single-chunk"
    TRANSITIONS = SINGLE_CHUNK_CLIENT_TRANSITIONS

    def request_frame(self, inline: int = 0) -> Frame:
        """IDLE -> AWAIT_STATUS: the LEGACY_REQUEST to send (never room for an inline payload)."""
        self._expect("request")
        self._move("request", ClientState.AWAIT_STATUS)
        return single_chunk_request(self.slot, self.capability)

    def on_payload(self, checksum: int, nbytes: int | None = None) -> None:
        """AWAIT_PAYLOAD -> DONE: nothing to send back, whatever the checksum says."""
        self._received(checksum, nbytes)
        self._move("payload", ClientState.DONE)


CLIENT_READS: Final[dict[str, type[ClientRead | SingleChunkClientRead]]] = {
    "commit": ClientRead,
    "single-chunk": SingleChunkClientRead,
}


def client_machine(protocol: str) -> type[ClientRead | SingleChunkClientRead]:
    """The client machine class for `protocol` ("commit" or "single-chunk")."""
    return pick_machine(CLIENT_READS, protocol)
