"""The states of every machine and, in one table each, the moves between them (h11's `_state.py`).

A reader checks a table against the protocol list in README.md ("Protocol in a few lines") and in
`transport/protocol/__init__.py`; the machines consult the same tables on every move, so a move
missing from a table is a driver bug (LocalProtocolError / ProtocolError), never a silent transition.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Final, Generic, TypeVar

from transport.errors import ConfigError, LocalProtocolError

__all__ = [
    "CLIENT_BATCH_TRANSITIONS",
    "CLIENT_TRANSITIONS",
    "SERVER_BATCH_TRANSITIONS",
    "SERVER_TRANSITIONS",
    "SINGLE_CHUNK_CLIENT_TRANSITIONS",
    "SINGLE_CHUNK_SERVER_TRANSITIONS",
    "BatchState",
    "ClientState",
    "ServerState",
]


class ServerState(StrEnum):
    IDLE = "idle"  # waiting for on_request
    BEGIN_READ = "begin_read"  # BeginRead issued: waiting for on_begin_read
    FENCE = "fence"  # Fence issued: waiting for on_fenced
    SEND_STATUS = "send_status"  # SendStatus (STATUS OK and its payload) issued: waiting for on_sent
    AWAIT_COMMIT = "await_commit"  # waiting for on_commit
    COMMITTING = "committing"  # Finalise("commit") issued: waiting for on_finalised
    RELEASING = "releasing"  # refused while holding the slot: Finalise("release"), then the refusal
    RELEASING_ON_ERROR = "releasing_on_error"  # an I/O step failed holding the slot: release, then close
    FINALISE = "finalise"  # single-chunk: Finalise("single-chunk") after the send: on_finalised
    SEND_REPLY = "send_reply"  # COMMITTED / RESOLVED / a ring refusal issued: on_sent, then DONE
    SEND_REFUSAL = "send_refusal"  # a refusal that ends the endpoint issued: on_sent, then CLOSED
    DONE = "done"  # read over, the endpoint can serve the next request
    CLOSED = "closed"  # read over, close the endpoint


_S = ServerState
# `error` (a send/recv failed or timed out, or the handler is cancelled) may come in any state: a read
# holding its slot releases it first (RELEASING_ON_ERROR, unless it is releasing already), then closes.
_SERVER_ERRORS: Final = {(s, "error"): frozenset({_S.RELEASING_ON_ERROR, _S.CLOSED}) for s in _S}

# Commit protocol, server side: (state, event) -> the states that event may lead to. Anything else is
# a driver bug (LocalProtocolError). Events are the `on_*` methods without the prefix.
SERVER_TRANSITIONS: Final[dict[tuple[ServerState, str], frozenset[ServerState]]] = {
    # REQUEST -> CAS READY(gen) -> READING(token); RESOLVE -> fence; a bad request -> refusal, close
    (_S.IDLE, "request"): frozenset({_S.BEGIN_READ, _S.FENCE, _S.SEND_REFUSAL}),
    # OK -> STATUS + PAYLOAD; STALE / NOT_READY / BUSY -> that STATUS; over MAX_PAYLOAD -> release
    (_S.BEGIN_READ, "begin_read"): frozenset({_S.SEND_STATUS, _S.SEND_REPLY, _S.RELEASING}),
    (_S.SEND_STATUS, "sent"): frozenset({_S.AWAIT_COMMIT}),
    # this read's COMMIT -> CAS READING(token) -> FREE; anything else -> release, refusal, close
    (_S.AWAIT_COMMIT, "commit"): frozenset({_S.COMMITTING, _S.RELEASING}),
    (_S.COMMITTING, "finalised"): frozenset({_S.SEND_REPLY}),  # COMMITTED(OK) or COMMITTED(ERROR)
    (_S.RELEASING, "finalised"): frozenset({_S.SEND_REFUSAL}),
    (_S.RELEASING_ON_ERROR, "finalised"): frozenset({_S.CLOSED}),
    (_S.FENCE, "fenced"): frozenset({_S.SEND_REPLY}),  # RESOLVED(resolution)
    (_S.SEND_REPLY, "sent"): frozenset({_S.DONE}),
    (_S.SEND_REFUSAL, "sent"): frozenset({_S.CLOSED}),
    **_SERVER_ERRORS,
}

# Single-chunk, server side: LEGACY_REQUEST -> STATUS + PAYLOAD -> finalise on send completion; it
# never holds a slot across an await, so an error just closes.
SINGLE_CHUNK_SERVER_TRANSITIONS: Final[dict[tuple[ServerState, str], frozenset[ServerState]]] = {
    (_S.IDLE, "request"): frozenset({_S.BEGIN_READ, _S.SEND_REFUSAL}),
    (_S.BEGIN_READ, "begin_read"): frozenset({_S.SEND_STATUS, _S.SEND_REPLY, _S.SEND_REFUSAL}),
    (_S.SEND_STATUS, "sent"): frozenset({_S.FINALISE}),
    (_S.FINALISE, "finalised"): frozenset({_S.DONE}),
    (_S.SEND_REPLY, "sent"): frozenset({_S.DONE}),
    (_S.SEND_REFUSAL, "sent"): frozenset({_S.CLOSED}),
    **{(s, "error"): frozenset({_S.CLOSED}) for s in _S},
}


class ClientState(StrEnum):
    IDLE = "idle"  # request_frame() not called yet
    AWAIT_STATUS = "await_status"  # request sent: on_status
    AWAIT_PAYLOAD = "await_payload"  # OK status: receive `nbytes`, then on_payload
    AWAIT_COMMITTED = "await_committed"  # COMMIT sent: on_committed (or resolve_frame)
    AWAIT_RESOLVED = "await_resolved"  # RESOLVE sent: on_resolved
    DONE = "done"  # the payload is the caller's (committed, or single-chunk received)
    IN_DOUBT = "in_doubt"  # COMMIT sent, outcome unknown: resolve_frame() on another endpoint
    FAILED = "failed"  # definitely not committed; `error` says why (retry if error.retryable)


_C = ClientState
_BEFORE_COMMIT: Final = (_C.IDLE, _C.AWAIT_STATUS, _C.AWAIT_PAYLOAD)
_AFTER_COMMIT: Final = (_C.AWAIT_COMMITTED, _C.AWAIT_RESOLVED, _C.IN_DOUBT)

# Commit protocol, client side. `error` (an I/O step failed) leaves FAILED before COMMIT was sent,
# IN_DOUBT after; a refused or garbled reply moves the same way inside the event that received it.
CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], frozenset[ClientState]]] = {
    (_C.IDLE, "request"): frozenset({_C.AWAIT_STATUS}),  # REQUEST sent
    (_C.AWAIT_STATUS, "status"): frozenset({_C.AWAIT_PAYLOAD, _C.FAILED}),  # STATUS OK, or refused
    (_C.AWAIT_PAYLOAD, "inline_payload"): frozenset({_C.AWAIT_PAYLOAD, _C.FAILED}),
    (_C.AWAIT_PAYLOAD, "payload"): frozenset({_C.AWAIT_COMMITTED, _C.FAILED}),  # checksum ok: COMMIT
    (_C.AWAIT_COMMITTED, "commit"): frozenset({_C.AWAIT_COMMITTED}),  # the COMMIT again (commit_frame)
    (_C.AWAIT_COMMITTED, "committed"): frozenset({_C.DONE, _C.FAILED, _C.IN_DOUBT}),  # OK / refused / ?
    **{(s, "resolve"): frozenset({_C.AWAIT_RESOLVED}) for s in _AFTER_COMMIT},  # RESOLVE elsewhere
    (_C.AWAIT_RESOLVED, "resolved"): frozenset({_C.DONE, _C.FAILED, _C.IN_DOUBT}),  # by the Resolution
    **{(s, "error"): frozenset({_C.FAILED}) for s in _BEFORE_COMMIT},
    **{(s, "error"): frozenset({_C.IN_DOUBT}) for s in _AFTER_COMMIT},
}

# Single-chunk, client side: LEGACY_REQUEST -> STATUS -> PAYLOAD -> DONE, whatever the checksum says.
SINGLE_CHUNK_CLIENT_TRANSITIONS: Final[dict[tuple[ClientState, str], frozenset[ClientState]]] = {
    (_C.IDLE, "request"): frozenset({_C.AWAIT_STATUS}),
    (_C.AWAIT_STATUS, "status"): frozenset({_C.AWAIT_PAYLOAD, _C.FAILED}),
    (_C.AWAIT_PAYLOAD, "inline_payload"): frozenset({_C.AWAIT_PAYLOAD, _C.FAILED}),  # a corrupt flag
    (_C.AWAIT_PAYLOAD, "payload"): frozenset({_C.DONE, _C.FAILED}),
    **{(s, "error"): frozenset({_C.FAILED}) for s in _BEFORE_COMMIT},
}


class BatchState(StrEnum):
    IDLE = "idle"
    BEGIN = "begin"  # server: BeginBatch issued
    SEND_STATUS = "send_status"  # server: SendStatusBatch issued / client: waiting for it
    PAYLOADS = "payloads"  # server: SendPayloads issued / client: receiving them
    AWAIT_COMMIT = "await_commit"  # server: waiting for COMMIT_BATCH
    FINALISE = "finalise"  # server: FinaliseBatch (commit or release per slot) issued
    RELEASING_ON_ERROR = "releasing_on_error"  # server: an I/O step failed, FinaliseBatch releases all
    SEND_REPLY = "send_reply"  # server: COMMITTED_BATCH issued
    SEND_REFUSAL = "send_refusal"  # server: a refusal STATUS issued, then the endpoint closes
    AWAIT_COMMITTED = "await_committed"  # client: COMMIT_BATCH sent
    DONE = "done"
    CLOSED = "closed"


_B = BatchState
# Batched reads, server side (see transport/protocol/batch.py for the exchange): (state, event) -> the
# states that event may lead to; anything else is a driver bug (ProtocolError). `error` may come in any
# state (ANY_STATE_EVENTS): held slots are released (RELEASING_ON_ERROR), then the endpoint closes.
SERVER_BATCH_TRANSITIONS: Final[dict[tuple[BatchState, str], frozenset[BatchState]]] = {
    (_B.IDLE, "request"): frozenset({_B.BEGIN, _B.SEND_REFUSAL}),  # REQUEST_BATCH, or a refusal
    (_B.BEGIN, "begun"): frozenset({_B.SEND_STATUS}),  # per slot CAS READY(gen) -> READING(token)
    (_B.SEND_STATUS, "sent"): frozenset({_B.PAYLOADS, _B.AWAIT_COMMIT, _B.DONE}),  # DONE: none held
    (_B.PAYLOADS, "sent"): frozenset({_B.AWAIT_COMMIT}),
    (_B.AWAIT_COMMIT, "commit"): frozenset({_B.FINALISE}),  # per slot commit or release
    (_B.FINALISE, "finalised"): frozenset({_B.SEND_REPLY}),  # COMMITTED_BATCH
    (_B.RELEASING_ON_ERROR, "finalised"): frozenset({_B.CLOSED}),
    (_B.SEND_REPLY, "sent"): frozenset({_B.DONE}),
    (_B.SEND_REFUSAL, "sent"): frozenset({_B.CLOSED}),
}

# Batched reads, client side; `error` moves to DONE from any state, every slot judged on its own.
CLIENT_BATCH_TRANSITIONS: Final[dict[tuple[BatchState, str], frozenset[BatchState]]] = {
    (_B.IDLE, "send_request"): frozenset({_B.SEND_STATUS}),
    (_B.SEND_STATUS, "status"): frozenset({_B.PAYLOADS, _B.DONE}),  # DONE: every slot refused
    (_B.PAYLOADS, "payloads"): frozenset({_B.AWAIT_COMMITTED, _B.DONE}),
    (_B.AWAIT_COMMITTED, "committed"): frozenset({_B.DONE}),
}
ANY_STATE_EVENTS: Final = frozenset({"error"})


_State = TypeVar("_State", ServerState, ClientState)
_Machine = TypeVar("_Machine")


def pick_machine(machines: Mapping[str, _Machine], protocol: str) -> _Machine:
    """The machine of `machines` for `protocol`; ConfigError names the protocols there are."""
    machine = machines.get(protocol)
    if machine is None:
        raise ConfigError(f"protocol={protocol!r}: expected one of {', '.join(machines)}")
    return machine


class ReadMachine(Generic[_State]):
    """A single-read machine (server or client) whose every move is checked against its table."""

    state: _State
    slot: int
    generation: int
    TRANSITIONS: Mapping[tuple[_State, str], frozenset[_State]]

    @property
    def key(self) -> str:
        return f"{self.slot}:{self.generation}"

    def _who(self) -> str:
        """How errors name the machine ("server read", "client read 3:7")."""
        raise NotImplementedError

    def _expect(self, event: str) -> None:
        """The event must be one the table lists for the current state (else a driver bug)."""
        if (self.state, event) not in self.TRANSITIONS:
            raise LocalProtocolError(f"{self._who()}: event not valid in state {self.state.value}")

    def _move(self, event: str, to: _State) -> None:
        if to not in self.TRANSITIONS.get((self.state, event), ()):
            raise LocalProtocolError(
                f"{self._who()}: {event} -> {to.value} not valid in state {self.state.value}"
            )
        self.state = to
