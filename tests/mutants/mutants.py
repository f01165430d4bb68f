"""Mutants: each one removes exactly one guarantee, so the harness can be shown to notice.

Production code has no hooks for them. `tests/test_mutants.py` puts this directory first on
PYTHONPATH and sets `SLOTWIRE_MUTANT=<name>`; every process of the chaos run (runner, server,
producer, consumers) then imports `sitecustomize` at start-up, which calls `activate(name)` here, and
the named function is replaced before any transport code runs. One small patch per mutant; each
docstring says which guarantee it breaks and what the harness should see.

Every mutant proves itself (the harness's own standard: a proof proves it ran):
- `patch()` refuses a patch site whose signature differs from the replacement's (exit 2 at start-up),
  so a mutant can never silently turn into "every call raises TypeError" again.
- `ran()` is called on the mutated branch, the line where behaviour actually differs; the first call in
  a process drops a marker file `<name>.<pid>` into `$SLOTWIRE_MUTANT_RAN` (if set).
- `SLOTWIRE_MUTANT_BREAK=raise` makes `ran()` raise instead: the mutant crashes where it should have
  mutated. The self-check in tests/test_mutants.py must then fail (its control goes red), which is
  what shows the check cannot pass for the wrong reason.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from typing import Any

ENV = "SLOTWIRE_MUTANT"
RAN_DIR_ENV = "SLOTWIRE_MUTANT_RAN"
BREAK_ENV = "SLOTWIRE_MUTANT_BREAK"

_active: str | None = None
_marked = False


class MutantSiteError(RuntimeError):
    """The function a mutant patches is gone or has another signature: the mutant is stale."""


def ran() -> None:
    """The mutated code path just executed (called from inside each patch, where it differs)."""
    global _marked
    if os.environ.get(BREAK_ENV) == "raise":
        raise RuntimeError(f"mutant {_active}: broken on purpose ({BREAK_ENV}=raise)")
    if _marked:
        return
    _marked = True
    directory = os.environ.get(RAN_DIR_ENV)
    if directory:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{_active}.{os.getpid()}"), "w") as f:
            f.write(" ".join(sys.argv)[:200])


def patch(owner: Any, name: str, replacement: Callable[..., Any]) -> Callable[..., Any]:
    """Replace `owner.name` after checking the replacement takes exactly the original's parameters.

    Returns the original. A staticmethod/classmethod wrapper is not supported (none is patched).
    """
    original = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if original is None:
        raise MutantSiteError(f"{getattr(owner, '__name__', owner)}.{name} does not exist")
    want = list(inspect.signature(original).parameters)
    got = list(inspect.signature(replacement).parameters)
    if want != got:
        raise MutantSiteError(f"{getattr(owner, '__name__', owner)}.{name}{want} != mutant{got}")
    replacement.__qualname__ = getattr(original, "__qualname__", name)
    setattr(owner, name, replacement)
    return original  # type: ignore[no-any-return]


# -- ring -------------------------------------------------------------------------------------------


def no_generation_check() -> None:
    """The ring forgets generations: `begin_read` serves whatever READY payload is in the slot.

    Breaks: a descriptor whose generation no longer matches is STALE, never the newer payload
    (DESIGN.md §2, the ABA bug). The server's `served` events (served vs requested generation) show it.
    """
    from transport.ring import SharedRing

    def begin_read(self: SharedRing, slot: int, generation: int, token: int, lease: float) -> Any:
        if 0 <= slot < self.slots and int(self._gen[slot]) != generation:
            ran()
            generation = int(self._gen[slot])  # mutant: whatever generation the slot holds now
        return original(self, slot, generation, token, lease)

    original = patch(SharedRing, "begin_read", begin_read)


def orphan_finalise_no_token() -> None:
    """The ring's commit/release checks state and generation but not the fencing token.

    Breaks: only the holder of the current token may finalise a read. With the mutant an orphan's
    late commit takes the slot from the reader that holds it now: `fencing`.
    """
    from transport.ring import SharedRing, SlotState

    def _finalise(self: SharedRing, slot: int, generation: int, token: int, to: int, what: str) -> bool:
        held = 0 <= slot < self.slots and self._state[slot] == SlotState.READING
        if held and self._gen[slot] == generation and int(self._token[slot]) != token:
            ran()
            token = int(self._token[slot])  # mutant: any token will do, the holder's is used
        return original(self, slot, generation, token, to, what)

    original = patch(SharedRing, "_finalise", _finalise)


def history_ignores_generation() -> None:
    """The ring's per-slot commit history answers by index only: `committed_token` returns the token
    stored at `generation % COMMIT_HISTORY` without checking which generation stored it.

    Breaks: once a slot was rewritten more than COMMIT_HISTORY (16) times, a RESOLVE for an old
    generation reads a newer generation's committing token, answers NOT_COMMITTED for a read that did
    commit, and the client reads again, finds the slot consumed, and drops it: `lost`.
    transport-commit-history-overflow (dropped COMMITTED + a client stalled before its RESOLVE on a
    2-slot ring) is the scenario where the history wraps in the meantime.
    """
    from transport.ring import COMMIT_HISTORY, SharedRing

    def committed_token(self: SharedRing, slot: int, generation: int) -> int:
        i = generation % COMMIT_HISTORY
        stored = int(self._hist_gen[slot, i])
        if stored == generation:
            return original(self, slot, generation)
        if stored == 0:  # never written: 0 (unknown) either way
            return 0
        if stored > generation:  # the history wrapped past this generation: where the answer differs
            ran()
        return int(self._hist_token[slot, i])  # mutant: another generation's committing token

    original = patch(SharedRing, "committed_token", committed_token)


def ready_count_writes() -> None:
    """`ready_count()` returns the number of writes ever made instead of the READY slots.

    Breaks: `ready_count()` counts READY slots. Only the end-of-run ring audit shows it.
    """
    from transport.ring import SharedRing

    def ready_count(self: SharedRing) -> int:
        ran()
        return self.stats()["writes"]  # mutant: every write ever made, not the READY slots

    patch(SharedRing, "ready_count", ready_count)


def generation_reused() -> None:
    """A slot taken from FREE keeps its generation; only an overwrite bumps it.

    Breaks: every write bumps the generation, so a descriptor names one payload forever. With the
    mutant a rewritten slot republishes an old key: `republished` (and the ABA window behind it).
    """
    from transport.ring import _FREE, SharedRing

    def _take(self: SharedRing, i: int, expect: int, old: Any) -> int | None:
        got = original(self, i, expect, old)
        if got is not None and expect == _FREE and got > 1:
            ran()
            self._gen[i] = got - 1  # mutant: the slot is ours (WRITING), keep the old generation
            return got - 1
        return got

    original = patch(SharedRing, "_take", _take)


# -- protocol ---------------------------------------------------------------------------------------


def checksum_skipped() -> None:
    """The client trusts the payload: `payload_verified` no longer compares checksums.

    Breaks: a payload is handed over only if its length and checksum match the descriptor. A cut
    payload (truncate) is then committed and delivered: `corrupted`. The rule is shared by the
    single-read and the batch client, so the mutant acts on whichever path the consumers take.
    """
    from transport.protocol import client  # the module the single and the batch client look it up in

    def payload_verified(expected_checksum: int, checksum: int) -> bool:
        if not original(expected_checksum, checksum):
            ran()
        return True  # mutant: whatever arrived is fine

    original = patch(client, "payload_verified", payload_verified)


def _resolve_always(answer: str) -> None:
    from transport.protocol import Resolution, ServerRead

    def _resolution(
        self: ServerRead,
        ring_generation: int,
        ring_state: int,
        last_commit_token: int,
        committed_token: int = 0,
    ) -> Resolution:
        ran()
        return Resolution[answer]

    patch(ServerRead, "_resolution", _resolution)


def resolve_says_not_committed() -> None:
    """RESOLVE always answers NOT_COMMITTED, ignoring the ring's and the log's record.

    Breaks: an answer of NOT_COMMITTED is only given when no commit can have happened. The client
    then reads a slot it already committed again, finds it consumed and drops it: `lost`.
    """
    _resolve_always("NOT_COMMITTED")


def resolve_says_committed() -> None:
    """RESOLVE always answers COMMITTED: the server vouches for commits it never made.

    Breaks: RESOLVE answers from the ring/commit log. A read reset before its COMMIT reached the
    server is then delivered without a server commit: `uncommitted_delivery`.
    """
    _resolve_always("COMMITTED")


def refused_commit_taken_as_success() -> None:
    """The client takes any commit answer as success, also `commit refused`.

    Breaks: a refused commit (the read was fenced or its lease reclaimed) means the read did not
    commit. Taken as success, the payload is delivered although another reader got the slot:
    `uncommitted_delivery` (and `duplicated`). `commit_accepted` is the one rule both the single
    and the batch client judge COMMITTED answers by.
    """
    from transport.protocol import client  # the module the single and the batch client look it up in

    def commit_accepted(code: int) -> bool:
        if not original(code):
            ran()
        return True  # mutant: an answer arrived, so it committed

    original = patch(client, "commit_accepted", commit_accepted)


# -- server -----------------------------------------------------------------------------------------


def finalise_on_send() -> None:
    """The server commits a read as soon as its payload send completes, as `single-chunk` does.

    Breaks: the commit-acknowledged protocol (a completed UCX send does not mean the peer received
    it; only the client's COMMIT may free the slot). A payload cut short (truncate) frees the slot
    anyway and the client's retry finds it consumed: `lost`. The later COMMIT is answered
    COMMITTED, so reads that did arrive still complete normally (the control stays green).
    """
    from transport import protocol as proto
    from transport.server import SlotServer

    async def _perform(
        self: SlotServer, link: Any, srv: Any, action: Any, index: int, step: Any
    ) -> proto.ServerAction:
        early = getattr(srv, "_mutant_done", None)
        if isinstance(action, proto.Finalise) and action.kind == "commit" and early is not None:
            return srv.on_finalised(early)  # already committed when the send completed
        following = await original(self, link, srv, action, index, step)
        if isinstance(following, proto.AwaitCommit) and srv.protocol == "commit":
            ran()  # mutant: the payload send completed, so finalise now instead of awaiting the COMMIT
            srv._mutant_done = self._finalise("commit", srv.slot, srv.generation, srv.token, index)
        return following

    async def _perform_batch(
        self: SlotServer, link: Any, srv: Any, action: Any, index: int, step: Any
    ) -> Any:
        """The same bug in batched reads: each slot whose payload went out is committed at once."""
        done = getattr(srv, "_mutant_done", None) or {}
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
            ran()
            sent = {slot for slot, _ in action.items}
            srv._mutant_done = {
                e.slot: self._finalise("commit", e.slot, e.generation, srv.token, index)
                for e in srv.held.values()
                if e.slot in sent
            }
        return following

    original = patch(SlotServer, "_perform", _perform)
    original_batch = patch(SlotServer, "_perform_batch", _perform_batch)


def release_missing_on_error() -> None:
    """A failed read's release is reported done but never reaches the ring.

    Breaks: on any failure before the commit, the handler releases READING(token) -> READY. The
    slot stays READING until its lease (30 s) runs out: reads of it meet BUSY, the drain cannot
    finish and READING slots are left: `slot_leak` / `drain_incomplete`.
    """
    from transport.server import SlotServer

    def _finalise(self: SlotServer, kind: str, slot: int, generation: int, token: int, index: int) -> bool:
        if kind == "release":
            ran()
            return True  # mutant: "released"
        return original(self, kind, slot, generation, token, index)

    original = patch(SlotServer, "_finalise", _finalise)


# -- client -----------------------------------------------------------------------------------------


def truncation_not_quarantined() -> None:
    """The client counts a truncated message against the port but does not quarantine the port.

    Breaks: a port that just produced a truncation is quarantined. Exactly-once still holds, so the
    truncate's effect rule (detected *and* quarantined) is what shows it: `ineffective`.
    """
    from transport.client import SlotClient
    from transport.errors import TruncatedError

    def quarantine(self: SlotClient, port: int, reason: str) -> None:
        if reason == TruncatedError.__name__:
            ran()
            return  # mutant: a truncation leaves the port in rotation
        original(self, port, reason)

    original = patch(SlotClient, "quarantine", quarantine)


def quarantine_never_expires() -> None:
    """A quarantined port is never tried again while any other port is healthy.

    Breaks: quarantine is for a configured time; a port that recovered must carry reads again. The
    harness names a port that is never used after its quarantine ended: `port_abandoned`.
    """
    from transport.client import SlotClient

    def quarantine(self: SlotClient, port: int, reason: str) -> None:
        original(self, port, reason)
        if port in self._quarantined:
            ran()
            self._quarantined[port] = float("inf")  # mutant: the event still says `seconds`

    original = patch(SlotClient, "quarantine", quarantine)


def resolve_not_asked() -> None:
    """A lost COMMITTED is treated as a failed read and retried instead of RESOLVEd.

    Breaks: the client must ask RESOLVE when COMMITTED is lost (it may have committed). A blind
    retry finds the slot consumed and drops it: `lost`.
    """
    from transport.client import SlotClient
    from transport.errors import ConnectionLostError

    async def _resolve(self: SlotClient, desc: Any, cr: Any) -> None:
        ran()
        raise ConnectionLostError(f"{desc.key}: COMMITTED lost; retrying (mutant: no RESOLVE)")

    patch(SlotClient, "_resolve", _resolve)


# -- packer -----------------------------------------------------------------------------------------


def not_ready_retried() -> None:
    """The packer reports a consumed slot (NOT_READY) as a generic error, so it is tried again.

    Breaks: NOT_READY is final (another reader committed it). As a retryable failure the descriptor
    goes back to the channel forever: `drain_incomplete`.
    """
    from transport import packer
    from transport.errors import NotReadyError

    def failure_reason(exc: BaseException) -> str:
        if isinstance(exc, NotReadyError):
            ran()
            return "error"  # mutant
        return original(exc)

    original = patch(packer, "failure_reason", failure_reason)


def stale_is_exhausted() -> None:
    """The packer reports STALE as `exhausted`, as if more attempts could help.

    Breaks: STALE is final (the slot was recycled). Handed back for another try, a stale descriptor
    circulates forever: `drain_incomplete`.
    """
    from transport import packer
    from transport.errors import StaleSlotError

    def failure_reason(exc: BaseException) -> str:
        if isinstance(exc, StaleSlotError):
            ran()
            return "exhausted"  # mutant
        return original(exc)

    original = patch(packer, "failure_reason", failure_reason)


# -- faults (the harness's own fault layer) -----------------------------------------------------------


def reset_fault_inert() -> None:
    """The transport fault layer records a `reset` but no longer aborts the endpoint.

    Breaks: a fault counts when it changed an outcome (DESIGN.md §3). The reset still "fires" (its
    `fault` events are all there) but is off the data path: `ineffective` names it.
    """
    from chaos.faults.transport import Reset

    async def act(self: Reset, link: Any, step: Any, buf: Any) -> Any:
        ran()
        return buf  # mutant: its `fault` event is recorded, the endpoint is not aborted

    patch(Reset, "act", act)


# -- checker (caught by its unit tests: a lax checker is invisible on a correct transport) -----------


def checker_ignores_double_commit() -> None:
    """The checker counts a key's commits with a set, so a second commit disappears."""
    from chaos import checker

    def _classify(sc: Any, spec: Any) -> Any:
        for key, commits in sc.commits.items():
            if len(commits) > 1:
                ran()
                sc.commits[key] = commits[:1]  # mutant
        return original(sc, spec)

    original = patch(checker, "_classify", _classify)


def checker_excuses_every_kill() -> None:
    """The old rule: any consumer kill excuses every committed, undelivered key before it."""
    from chaos import checker

    def _held_by_the_dead(sc: Any) -> dict[str, float]:
        if sc.consumer_deaths:
            ran()
            died = max(sc.consumer_deaths.values())
            return {key: died for key in sc.commits}  # mutant
        return original(sc)

    original = patch(checker, "_held_by_the_dead", _held_by_the_dead)


MUTANTS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in (
        no_generation_check,
        orphan_finalise_no_token,
        ready_count_writes,
        history_ignores_generation,
        generation_reused,
        checksum_skipped,
        resolve_says_not_committed,
        resolve_says_committed,
        refused_commit_taken_as_success,
        finalise_on_send,
        release_missing_on_error,
        truncation_not_quarantined,
        quarantine_never_expires,
        resolve_not_asked,
        not_ready_retried,
        stale_is_exhausted,
        reset_fault_inert,
        checker_ignores_double_commit,
        checker_excuses_every_kill,
    )
}


def activate(name: str) -> None:
    """Apply mutant `name`; an unknown name or a stale patch site is an error, never a silent no-op."""
    global _active
    patch_fn = MUTANTS.get(name)
    if patch_fn is None:
        sys.stderr.write(f"{ENV}={name!r}: unknown mutant (known: {', '.join(MUTANTS)})\n")
        os._exit(2)  # exit code 2, invalid input: never run the harness un-mutated by mistake
    _active = name
    try:
        patch_fn()
    except MutantSiteError as exc:
        sys.stderr.write(f"{ENV}={name!r}: stale patch site: {exc}\n")
        os._exit(2)
