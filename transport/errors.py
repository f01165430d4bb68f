"""One error hierarchy for everything a transport caller may see, and the one error policy.

Each class states, once, what the client stack does with it (the client, the packer and the harness's
roles all read these attributes; nothing else decides):
- `retryable`: whether another attempt (same or other port) can succeed; STALE and UNAUTHORIZED never
  can, so they are raised at once and never retried.
- `quarantines`: whether the link itself misbehaved, so the port leaves the rotation for a while (our
  own misuse of the protocol, `LocalProtocolError`, never blames a port).
- `reason`: what a batch reports for a slot that failed with it (`SlotFailure.reason`).
- `port`: the port the error came from, set by the client where the error is made (None if no port).

| error | retryable | quarantines | reason |
|---|---|---|---|
| ConnectionLostError, ReadTimeoutError, TruncatedError, ProtocolError | yes | yes | error |
| LocalProtocolError | no | no | error |
| BusyError, ServerError, LeaseExpiredError, RingFullError | yes | no | error |
| StaleSlotError | no | no | stale |
| UnauthorizedError | no | no | unauthorized |
| NotReadyError | no | no | consumed |
| InDoubtError | no | no | in_doubt |
| AttemptsExhaustedError | no | no | exhausted |
| ConfigError, DescriptorError, RingError, PayloadTooLargeError | no | no | error |
"""

from __future__ import annotations


class TransportError(Exception):
    """Root of every error raised by `transport`; its class attributes are the error policy above."""

    retryable: bool = True
    quarantines: bool = False
    reason: str = "error"
    port: int | None = None


class ConfigError(TransportError, ValueError):
    """Bad argument or geometry given by the caller."""

    retryable = False


class RingError(TransportError):
    """Shared-memory ring problem (bad segment, wrong magic/version, geometry mismatch)."""

    retryable = False


class RingFullError(RingError):
    """`block` policy: no FREE slot became available before the timeout."""

    retryable = True


class PayloadTooLargeError(RingError, ValueError):
    """The payload does not fit in one slot."""


class DescriptorError(ConfigError):
    """A descriptor field is out of range or malformed (checked when the descriptor is built).

    Raised before any read starts: never retried, never blamed on a port.
    """


class ProtocolError(TransportError):
    """A wire message could not be decoded (bad magic, wrong size, unknown type, bad field)."""

    quarantines = True


class LocalProtocolError(ProtocolError):
    """This process misused the protocol machines (an event in the wrong state, a frame that cannot
    be encoded). A bug on our side, not a link fault: never retried, never quarantines a port."""

    retryable = False
    quarantines = False


class StaleSlotError(TransportError):
    """The descriptor's generation no longer matches the slot: the payload is gone. Never retried."""

    retryable = False
    reason = "stale"


class UnauthorizedError(TransportError):
    """The request's capability does not open that (slot, generation). Never retried."""

    retryable = False
    reason = "unauthorized"


class NotReadyError(TransportError):
    """The slot holds no payload at this generation: it was already consumed (committed).

    A published descriptor's generation is only ever READY, READING or FREE-after-commit (a new
    write bumps the generation, which makes the descriptor STALE instead), so another attempt
    cannot succeed: not retried.
    """

    retryable = False
    reason = "consumed"


class BusyError(TransportError):
    """Another reader holds the slot right now; retry later."""


class ServerError(TransportError):
    """The server answered ERROR(message) or BAD_REQUEST."""


class ConnectionLostError(TransportError):
    """The endpoint was reset, closed or cancelled mid-read."""

    quarantines = True


class LeaseExpiredError(TransportError):
    """A same-host read (or borrow) held its slot past the lease: the slot was reclaimed and this read
    did not commit. Another attempt may succeed (or find the slot consumed by another reader)."""


class ReadTimeoutError(TransportError, TimeoutError):
    """One read step did not finish within the read timeout."""

    quarantines = True


class TruncatedError(TransportError):
    """A message arrived with the wrong size or a checksum mismatch."""

    quarantines = True


class InDoubtError(TransportError):
    """COMMIT was sent but neither COMMITTED nor a RESOLVE answer arrived: the read may or may not
    have been committed. Reported, never silently retried (a retry could duplicate)."""

    retryable = False
    reason = "in_doubt"


class AttemptsExhaustedError(TransportError):
    """Every attempt failed; `causes` holds the per-attempt errors."""

    retryable = False
    reason = "exhausted"

    def __init__(self, message: str, causes: list[BaseException] | None = None) -> None:
        super().__init__(message)
        self.causes = list(causes or [])
