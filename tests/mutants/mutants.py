"""Transport mutants: each one removes exactly one guarantee, so the harness can be shown to notice.

Production code has no hooks for them. `tests/test_mutants.py` puts this directory first on
PYTHONPATH and sets `SLOTWIRE_MUTANT=<name>`; every process of the chaos run (runner, server,
producer, consumers) then imports `sitecustomize` at start-up, which calls `activate(name)` here, and
the named transport function is replaced before any transport code runs. One small patch per mutant;
each docstring says which guarantee it breaks and what the harness should see.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

ENV = "SLOTWIRE_MUTANT"


def no_generation_check() -> None:
    """The ring forgets generations: `begin_read` serves whatever READY payload is in the slot.

    Breaks: a descriptor whose generation no longer matches is STALE, never the newer payload
    (DESIGN.md §2, the ABA bug of a ring without generations). The client's nbytes/checksum check
    still refuses the wrong payload, so the server's `served` events (served generation vs the
    requested one) are what shows it first.
    """
    from transport.ring import SharedRing

    original = SharedRing.begin_read

    def begin_read(self: SharedRing, slot: int, generation: int, token: int, lease: float) -> Any:
        if 0 <= slot < self.slots:
            generation = int(self._gen[slot])  # mutant: whatever generation the slot holds now
        return original(self, slot, generation, token, lease)

    SharedRing.begin_read = begin_read  # type: ignore[method-assign]


def finalise_on_send() -> None:
    """The server commits a read as soon as its payload send completes, as `single-chunk` does.

    Breaks: the commit-acknowledged protocol (a completed UCX send does not mean the peer received
    it; only the client's COMMIT may free the slot). A payload cut short (truncate) or never received
    frees the slot anyway and the client's retry finds it consumed: the harness should report `lost`.
    The later COMMIT is answered COMMITTED, so reads that did arrive still complete normally.
    """
    from transport import protocol as proto
    from transport.server import SlotServer

    original = SlotServer._perform
    original_batch = SlotServer._perform_batch

    async def _perform(self: SlotServer, link: Any, srv: Any, action: Any, index: int, *step: Any) -> Any:
        if isinstance(action, proto.Finalise) and action.kind == "commit" and hasattr(srv, "_mutant_done"):
            return srv.on_finalised(srv._mutant_done)  # already committed when the send completed
        following = await original(self, link, srv, action, index, *step)
        if isinstance(action, proto.SendPayload) and srv.protocol == "commit":
            # mutant: the payload send completed, so finalise now instead of awaiting the COMMIT
            srv._mutant_done = self._finalise("commit", srv.slot, srv.generation, srv.token, index)
        return following

    async def _perform_batch(
        self: SlotServer, link: Any, srv: Any, action: Any, index: int, step: Any
    ) -> Any:
        """The same bug in batched reads: each slot whose payload went out is committed at once."""
        done = getattr(srv, "_mutant_done", {})
        if isinstance(action, proto.FinaliseBatch) and done:
            oks = [
                done[slot]
                if kind == "commit" and slot in done
                else self._finalise(kind, slot, gen, tok, index)
                for kind, slot, gen, tok in action.items
            ]
            return srv.on_finalised(oks)
        following = await original_batch(self, link, srv, action, index, step)
        if isinstance(action, proto.SendPayloads):
            sent = {slot for slot, _ in action.items}
            srv._mutant_done = {
                e.slot: self._finalise("commit", e.slot, e.generation, srv.token, index)
                for e in srv.held.values()
                if e.slot in sent
            }
        return following

    SlotServer._perform = _perform  # type: ignore[method-assign]
    SlotServer._perform_batch = _perform_batch  # type: ignore[method-assign]


def orphan_finalise_no_token() -> None:
    """The ring's commit/release checks state and generation but not the fencing token.

    Breaks: only the holder of the current token may finalise a read; a late finalise from an
    orphan handler (one whose slot was reclaimed or fenced and then served to another reader) must
    be a counted no-op. With the mutant the orphan's commit takes the slot from the reader that
    holds it now: the server commits a read for a token that no longer holds the slot.
    (Patched as "finalise on behalf of the current holder", so the ring's own bookkeeping runs.)
    """
    from transport.ring import SharedRing, SlotState

    original = SharedRing._finalise

    def _finalise(self: SharedRing, slot: int, generation: int, token: int, to: int, what: str) -> bool:
        held = 0 <= slot < self.slots and self._state[slot] == SlotState.READING
        if held and self._gen[slot] == generation:
            token = int(self._token[slot])  # mutant: any token will do, the holder's is used
        return original(self, slot, generation, token, to, what)

    SharedRing._finalise = _finalise  # type: ignore[method-assign]


def truncation_not_quarantined() -> None:
    """The client counts a truncated message against the port but does not quarantine the port.

    Breaks: a port that just produced a connection reset, truncation, timeout, cancel or close is
    quarantined (DESIGN.md §2, client retry stack). Exactly-once still holds (the checksum check
    refuses the short payload), so the scenario's quarantine expectation is what shows it.
    """
    from transport.client import SlotClient
    from transport.errors import TruncatedError

    original = SlotClient.quarantine

    def quarantine(self: SlotClient, port: int, reason: str) -> None:
        if reason == TruncatedError.__name__:
            return  # mutant: a truncation leaves the port in rotation
        original(self, port, reason)

    SlotClient.quarantine = quarantine  # type: ignore[method-assign]


def ready_count_writes() -> None:
    """`ready_count()` returns the number of writes ever made instead of the READY slots.

    Breaks: `ready_count()` counts READY slots (DESIGN.md §2). Nothing in the read path calls it,
    so only the runner's end-of-run ring audit (ready_count vs the slot snapshot) shows it.
    """
    from transport.ring import SharedRing

    def ready_count(self: SharedRing) -> int:
        return self.stats()["writes"]  # mutant: every write ever made, not the READY slots

    SharedRing.ready_count = ready_count  # type: ignore[method-assign]


MUTANTS: dict[str, Callable[[], None]] = {
    "no_generation_check": no_generation_check,
    "finalise_on_send": finalise_on_send,
    "orphan_finalise_no_token": orphan_finalise_no_token,
    "truncation_not_quarantined": truncation_not_quarantined,
    "ready_count_writes": ready_count_writes,
}


def activate(name: str) -> None:
    """Apply mutant `name`; an unknown name is an error, never a silent no-op."""
    patch = MUTANTS.get(name)
    if patch is None:
        sys.stderr.write(f"{ENV}={name!r}: unknown mutant (known: {', '.join(MUTANTS)})\n")
        os._exit(2)  # exit code 2, invalid input: never run the harness un-mutated by mistake
    patch()
