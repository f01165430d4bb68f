"""The states of every machine and, in one table each, the moves between them (h11's `_state.py`).

A reader checks a table against the protocol list in README.md ("Protocol in a few lines") and in
`transport/protocol/__init__.py`; the machines consult the same tables on every move, so a move
missing from a table is a driver bug (LocalProtocolError / ProtocolError), never a silent transition.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


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


class ClientState(StrEnum):
    IDLE = "idle"  # request_frame() not called yet
    AWAIT_STATUS = "await_status"  # request sent: on_status
    AWAIT_PAYLOAD = "await_payload"  # OK status: receive `nbytes`, then on_payload
    AWAIT_COMMITTED = "await_committed"  # COMMIT sent: on_committed (or resolve_frame)
    AWAIT_RESOLVED = "await_resolved"  # RESOLVE sent: on_resolved
    DONE = "done"  # the payload is the caller's (committed, or single-chunk received)
    IN_DOUBT = "in_doubt"  # COMMIT sent, outcome unknown: resolve_frame() on another endpoint
    FAILED = "failed"  # definitely not committed; `error` says why (retry if error.retryable)


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
ANY_STATE_EVENTS: Final = frozenset({"error"})
