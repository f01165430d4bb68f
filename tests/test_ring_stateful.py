"""Model-based tests of the ring: random interleavings checked against a model after every step.

Reader operations are split between this process and a spawned helper that performs them on its own
attach of the same segment (requested over a Pipe), so every CAS and lock really crosses processes.
A separate stress test races two spawned consumers on the same slots with no model in between.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from transport.checksum import checksum
from transport.errors import RingFullError
from transport.ring import ReadCode, SharedRing, SlotState

SPAWN = mp.get_context("spawn")
WAIT = 20.0
SLOTS = 4
SLOT_BYTES = 48
FRESH, STALE_LEASE = 3600.0, 0.0  # a lease of 0 is expired at once, so reclaim is deterministic
SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ----------------------------------------------------------------------------- the remote reader


def _remote_reader(conn: Any) -> None:
    """Serve reader operations on this process's own attach of the ring until told to exit."""
    ring: SharedRing | None = None
    while True:
        msg = conn.recv()
        op, args = msg[0], msg[1:]
        try:
            if op == "exit":
                break
            if op == "attach":
                ring = SharedRing.attach(args[0])
                result: Any = os.getpid()
            elif op == "close":
                assert ring is not None
                ring.close()
                ring = None
                result = None
            elif op == "begin":
                assert ring is not None
                code, info = ring.begin_read(*args)
                data = None
                if code is ReadCode.OK:
                    with ring.payload_view(info.slot, info.nbytes) as view:
                        data = bytes(view)
                result = (int(code), info.state, info.generation, info.token, data)
            elif op in ("commit", "release"):
                assert ring is not None
                result = getattr(ring, f"{op}_read")(*args)
            else:
                raise ValueError(op)
            conn.send(("ok", result))
        except Exception as e:
            conn.send(("error", repr(e)))
    if ring is not None:
        ring.close()


class Remote:
    def __init__(self) -> None:
        self.conn, child = SPAWN.Pipe()
        self.proc = SPAWN.Process(target=_remote_reader, args=(child,), daemon=True)
        self.proc.start()

    def call(self, *msg: Any) -> Any:
        self.conn.send(msg)
        assert self.conn.poll(WAIT), f"remote reader did not answer {msg!r}"
        status, result = self.conn.recv()
        assert status == "ok", result
        return result

    def stop(self) -> None:
        try:
            if self.proc.is_alive():
                self.conn.send(("exit",))
                self.proc.join(WAIT)
        finally:
            if self.proc.is_alive():
                self.proc.kill()
            self.proc.join(WAIT)


@pytest.fixture(scope="module")
def remote() -> Iterator[Remote]:
    r = Remote()
    try:
        yield r
    finally:
        r.stop()


# ----------------------------------------------------------------------------- the model


@dataclass
class Slot:
    state: SlotState = SlotState.FREE
    generation: int = 0
    token: int = 0
    owner: str = ""  # "local" | "remote" while READING
    expired: bool = False
    seq: int = 0
    data: bytes = b""


def fresh_tokens() -> Iterator[int]:
    """Unique non-zero u64 tokens spread over the whole range (an odd multiplier is a bijection)."""
    return ((i * 0x9E3779B97F4A7C15) % (1 << 64) for i in itertools.count(1))


class RingMachine(RuleBasedStateMachine):
    policy = "block"
    remote: Remote

    def __init__(self) -> None:
        super().__init__()
        self.ring = SharedRing.create(SLOTS, SLOT_BYTES, self.policy)
        try:
            self.remote_pid = self.remote.call("attach", self.ring.name)
        except BaseException:
            self.ring.close()
            raise
        self.pids = {"local": os.getpid(), "remote": self.remote_pid}
        self.model = [Slot() for _ in range(SLOTS)]
        self.tokens = fresh_tokens()
        self.seq = 0
        self.published: list[tuple[int, int]] = []  # every (slot, generation) ever published
        self.dead_tokens: list[tuple[int, int, int]] = []  # (slot, generation, token) no longer owning
        self.reserved: list[tuple[int, int]] = []
        self.counts = {"writes": 0, "drops": 0, "late_finalise": 0, "reclaimed_reading": 0}
        self.last_generation = [0] * SLOTS

    def teardown(self) -> None:
        try:
            self.remote.call("close")
        finally:
            self.ring.close()

    # helpers

    def _slots_in(self, state: SlotState) -> list[int]:
        return [i for i, s in enumerate(self.model) if s.state is state]

    def _call(self, who: str, op: str, *args: Any) -> Any:
        if who == "remote":
            return self.remote.call(op, *args)
        return getattr(self.ring, f"{op}_read")(*args)

    def _retire_owner(self, i: int) -> None:
        s = self.model[i]
        self.dead_tokens.append((i, s.generation, s.token))
        s.token, s.owner, s.expired = 0, "", False

    # writer rules

    @rule(data=st.binary(max_size=SLOT_BYTES))
    def write(self, data: bytes) -> None:
        free, ready = self._slots_in(SlotState.FREE), self._slots_in(SlotState.READY)
        if not free and not (self.policy == "overwrite" and ready):
            with pytest.raises(RingFullError):
                self.ring.write(data, timeout=0)
            return
        w = self.ring.write(data, timeout=0)
        if free:
            assert w.slot in free and w.dropped is None
        else:
            oldest = min(ready, key=lambda i: self.model[i].seq)
            assert w.dropped is not None and w.slot == w.dropped.slot == oldest
            assert w.dropped.generation == self.model[oldest].generation
            self.counts["drops"] += 1
        s = self.model[w.slot]
        assert w.generation == s.generation + 1
        self.seq += 1
        self.counts["writes"] += 1
        s.state, s.generation, s.seq, s.data = SlotState.READY, w.generation, self.seq, data
        assert (w.nbytes, w.checksum) == (len(data), checksum(data))
        assert bytes(self.ring.payload_view(w.slot, w.nbytes)) == data
        self.published.append((w.slot, w.generation))

    @precondition(lambda self: self._slots_in(SlotState.FREE) and len(self.reserved) < 2)
    @rule()
    def reserve(self) -> None:
        """Leave a slot WRITING (by a live writer) for a while, so readers meet it mid-write."""
        slot, gen, dropped = self.ring._reserve(0)
        assert slot in self._slots_in(SlotState.FREE) and dropped is None
        s = self.model[slot]
        assert gen == s.generation + 1
        s.state, s.generation, s.data = SlotState.WRITING, gen, b""
        self.reserved.append((slot, gen))

    @precondition(lambda self: self.reserved)
    @rule(data=st.binary(max_size=SLOT_BYTES))
    def publish_reserved(self, data: bytes) -> None:
        slot, gen = self.reserved.pop(0)
        self.ring.payload_view(slot, len(data))[:] = data
        self.ring._publish(slot, gen, len(data), checksum(data))
        self.seq += 1
        self.counts["writes"] += 1
        s = self.model[slot]
        s.state, s.seq, s.data = SlotState.READY, self.seq, data
        self.published.append((slot, gen))

    # reader rules

    @rule(
        pick=st.integers(min_value=0),
        current=st.booleans(),
        bump=st.sampled_from([0, 0, 0, 1, -1]),
        who=st.sampled_from(["local", "remote"]),
        lease=st.sampled_from([FRESH, FRESH, STALE_LEASE]),
    )
    def begin_read(self, pick: int, current: bool, bump: int, who: str, lease: float) -> None:
        """A fresh token against any descriptor: current, consumed, recycled or invented."""
        if current or not self.published:
            slot = pick % SLOTS
            gen = self.model[slot].generation
        else:
            slot, gen = self.published[pick % len(self.published)]
        gen = max(0, gen + bump)
        token = next(self.tokens)
        s = self.model[slot]
        if who == "remote":
            code, state, generation, got_token, data = self.remote.call("begin", slot, gen, token, lease)
        else:
            code, info = self.ring.begin_read(slot, gen, token, lease)
            state, generation, got_token = info.state, info.generation, info.token
            data = bytes(self.ring.payload_view(slot, info.nbytes)) if code is ReadCode.OK else None
        if gen != s.generation:
            expected = ReadCode.STALE  # a stale generation never yields OK, whatever the state
        elif s.state is SlotState.READY:
            expected = ReadCode.OK
        elif s.state is SlotState.READING:
            expected = ReadCode.BUSY
        else:
            expected = ReadCode.NOT_READY
        assert code == expected, (slot, gen, s)
        if code == ReadCode.OK:
            assert data == s.data, "OK must hand out exactly the payload of that generation"
            s.state, s.token, s.owner, s.expired = SlotState.READING, token, who, lease == STALE_LEASE
        assert (state, generation) == (s.state, s.generation)
        assert got_token == s.token

    @precondition(lambda self: self._slots_in(SlotState.READING))
    @rule(pick=st.integers(min_value=0), commit=st.booleans())
    def owner_finalise(self, pick: int, commit: bool) -> None:
        reading = self._slots_in(SlotState.READING)
        i = reading[pick % len(reading)]
        s = self.model[i]
        assert self._call(s.owner, "commit" if commit else "release", i, s.generation, s.token) is True
        self._retire_owner(i)
        s.state = SlotState.FREE if commit else SlotState.READY

    @precondition(lambda self: self.dead_tokens)
    @rule(pick=st.integers(min_value=0), commit=st.booleans(), who=st.sampled_from(["local", "remote"]))
    def orphan_finalise(self, pick: int, commit: bool, who: str) -> None:
        """A late commit/release by a handler whose token no longer owns the slot changes nothing."""
        slot, gen, token = self.dead_tokens[pick % len(self.dead_tokens)]
        assert self._call(who, "commit" if commit else "release", slot, gen, token) is False
        self.counts["late_finalise"] += 1

    @precondition(lambda self: self._slots_in(SlotState.READING))
    @rule(pick=st.integers(min_value=0), commit=st.booleans(), who=st.sampled_from(["local", "remote"]))
    def intruder_finalise(self, pick: int, commit: bool, who: str) -> None:
        """Right slot and generation, a token that never owned it: still a no-op."""
        reading = self._slots_in(SlotState.READING)
        i = reading[pick % len(reading)]
        op = "commit" if commit else "release"
        assert self._call(who, op, i, self.model[i].generation, next(self.tokens)) is False
        self.counts["late_finalise"] += 1

    @precondition(lambda self: self._slots_in(SlotState.READING) or self.reserved)
    @rule()
    def reclaim(self) -> None:
        """Owners are alive, so only expired leases come back; live writers are never touched."""
        expected = [i for i, s in enumerate(self.model) if s.state is SlotState.READING and s.expired]
        report = self.ring.reclaim()
        assert list(report.reading) == expected and report.writing == ()
        for i in expected:
            self._retire_owner(i)
            self.model[i].state = SlotState.READY
        self.counts["reclaimed_reading"] += len(expected)

    # invariants

    @invariant()
    def ring_matches_model(self) -> None:
        snap = self.ring.snapshot()
        for i, (info, s) in enumerate(zip(snap, self.model, strict=True)):
            assert (info.state, info.generation) == (s.state, s.generation), (i, info, s)
            assert info.generation >= self.last_generation[i], "generations are monotone per slot"
            self.last_generation[i] = info.generation
            if s.state is SlotState.READING:
                assert (info.token, info.owner_pid) == (s.token, self.pids[s.owner])
            elif s.state is SlotState.WRITING:
                assert info.owner_pid == os.getpid()
            else:
                assert (info.token, info.owner_pid) == (0, 0)
            if s.state in (SlotState.READY, SlotState.READING):
                assert info.seq == s.seq
                assert (info.nbytes, info.checksum) == (len(s.data), checksum(s.data))
        ready = len(self._slots_in(SlotState.READY))
        assert self.ring.ready_count() == ready == sum(i.state is SlotState.READY for i in snap)
        stats = self.ring.stats()
        assert {k: stats[k] for k in self.counts} == self.counts
        assert stats["reclaimed_writing"] == 0


class OverwriteMachine(RingMachine):
    policy = "overwrite"


@pytest.mark.parametrize("machine", [RingMachine, OverwriteMachine], ids=["block", "overwrite"])
def test_ring_state_machine(remote: Remote, machine: type[RingMachine]) -> None:
    machine.remote = remote
    run_state_machine_as_test(machine, settings=SETTINGS)


# ----------------------------------------------------------------------------- real concurrency


def _racing_consumer(name: str, descriptors: list[tuple[int, int, int]], token_base: int, conn: Any) -> None:
    """Grab every descriptor it can; report what it committed and any wrong payload it was handed."""
    committed: list[tuple[int, int]] = []
    bad: list[tuple[int, int]] = []
    token = token_base
    with SharedRing.attach(name) as ring:
        pending = list(descriptors)
        deadline = time.monotonic() + WAIT / 2
        while pending and time.monotonic() < deadline:
            retry = []
            for slot, gen, csum in pending:
                token += 2
                code, info = ring.begin_read(slot, gen, token, 30.0)
                if code is ReadCode.OK:
                    view = ring.payload_view(slot, info.nbytes)
                    if checksum(view) != csum or info.generation != gen:
                        bad.append((slot, gen))
                    view.release()
                    # Half the time give it back first, so the other consumer can race for it again.
                    if token % 4 == 1 and ring.release_read(slot, gen, token):
                        retry.append((slot, gen, csum))
                        continue
                    assert ring.commit_read(slot, gen, token)
                    committed.append((slot, gen))
                elif code is ReadCode.BUSY:
                    retry.append((slot, gen, csum))
                elif code is ReadCode.NOT_READY:
                    pass  # the other consumer committed it
                else:
                    raise AssertionError(f"unexpected {code!r} for {(slot, gen)}")
            pending = retry
    conn.send((committed, bad))


def test_two_processes_race_for_the_same_slots() -> None:
    """Each published (slot, generation) is committed exactly once across two racing processes."""
    procs: list[Any] = []
    ring = SharedRing.create(64, 256)
    try:
        descriptors = []
        for i in range(64):
            w = ring.write(os.urandom(1 + i % 200))
            descriptors.append((w.slot, w.generation, w.checksum))
        pipes = []
        for base in (1, 2):
            parent, child = SPAWN.Pipe()
            p = SPAWN.Process(
                target=_racing_consumer, args=(ring.name, descriptors, base, child), daemon=True
            )
            p.start()
            procs.append(p)
            pipes.append(parent)
        results = []
        for parent in pipes:
            assert parent.poll(WAIT), "a consumer did not finish"
            results.append(parent.recv())
        committed = [key for c, _ in results for key in c]
        assert not [b for _, b in results for b in b], "a consumer was handed a wrong payload"
        assert sorted(committed) == sorted((s, g) for s, g, _ in descriptors)
        assert ring.ready_count() == 0
        assert ring.stats()["late_finalise"] == 0
    finally:
        for p in procs:
            p.join(WAIT)
            if p.is_alive():
                p.kill()
                p.join(WAIT)
        ring.close()
