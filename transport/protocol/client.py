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
from transport.protocol.frames import (
    FLAG_INLINE,
    FRAME_SIZE,
    INLINE_MAX,
    PROTOCOLS,
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
    legacy_request,
    request,
    resolve,
)
from transport.protocol.states import ClientState

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
        if protocol == "commit" and not 0 < token <= U64:
            raise ConfigError(f"token={token!r}: must be a non-zero u64 (see new_token)")
        self.slot = slot
        self.generation = generation
        self.token = token
        self.capability = as_capability(capability)
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
        err = as_transport_error(exc, self.key)
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
        return STATUS_ERRORS[code](f"{self.key}: {code.name}{detail}")

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
