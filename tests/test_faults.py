"""Fault layers (transport, process, control) and the descriptor channel, each on its own.

Transport faults run against an in-memory fake Link (their logic depends on the Link protocol
only); process faults signal real spawned processes; the channel is tested in-process and across a
spawned consumer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from spawned import SpawnedProcess, TickThread, tick_until

from chaos.channel import ChannelServer, DescriptorQueue
from chaos.faults import (
    ControlFaults,
    FaultSpec,
    HealSwitch,
    InjectedFaultError,
    ProcessFaults,
    Trigger,
    derive_seed,
    make_link_wrapper,
)
from chaos.faults.base import read_start, write_start
from chaos.faults.transport import CLIENT_KINDS, SERVER_KINDS, ChaosLinkWrapper
from chaos.scenario.model import FAULT_KINDS, kinds_of, layer_of
from transport.link import Phase, SteppedLink

FRAME = 128
PAYLOAD = 1000
PORT = 40001


class Events:
    """An EventSink that keeps what was emitted."""

    def __init__(self) -> None:
        self.items: list[tuple[str, dict[str, Any]]] = []

    def emit(self, type: str, **fields: Any) -> None:
        self.items.append((type, fields))

    def of(self, type: str) -> list[dict[str, Any]]:
        return [fields for t, fields in self.items if t == type]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- decision logic ------------------------------------------------------------------------------


def decisions(spec: FaultSpec, seed: int, times: list[float], run_start: float = 0.0) -> list[bool]:
    trigger = Trigger(spec, seed, PORT, "server", run_start)
    return [trigger.decide(t) for t in times]


def test_same_seed_same_decisions_other_seed_other_decisions() -> None:
    spec = FaultSpec.parse(0, kind="reset", phase="payload", probability=0.5)
    times = [float(i) for i in range(300)]
    first = decisions(spec, 42, times)
    assert first == decisions(spec, 42, times)
    assert first != decisions(spec, 43, times)
    assert 100 < sum(first) < 200  # probability is honoured


def test_streams_are_independent_per_fault_port_and_role() -> None:
    spec = FaultSpec.parse(0, kind="reset", phase="payload", probability=0.5)
    seqs = [
        [Trigger(spec, 7, port, role, 0.0).decide(1.0) for _ in range(64)]
        for port, role in ((1, "server"), (2, "server"), (1, "server#2"))
    ]
    assert seqs[0] != seqs[1] and seqs[0] != seqs[2]


def test_derived_seed_does_not_depend_on_hash_randomisation() -> None:
    code = "from chaos.faults import derive_seed; print(derive_seed(42, 3, 40001, 'server'))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": str(h)},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
        for h in (1, 2)
    }
    assert outs == {str(derive_seed(42, 3, 40001, "server"))}


def test_probability_zero_and_one() -> None:
    times = [float(i) for i in range(50)]
    assert not any(decisions(FaultSpec.parse(0, kind="evict", probability=0.0), 1, times))
    assert all(decisions(FaultSpec.parse(0, kind="evict", probability=1.0), 1, times))


def test_window_bounds_decisions_relative_to_run_start() -> None:
    spec = FaultSpec.parse(0, kind="evict", window={"start": 5.0, "end": 8.0})
    got = decisions(spec, 1, [104.9, 105.0, 107.9, 108.0, 120.0], run_start=100.0)
    assert got == [False, True, True, False, False]


def test_one_shot_fires_once_at_or_after_at() -> None:
    spec = FaultSpec.parse(0, kind="kill", target="server", at=10.0)
    got = decisions(spec, 1, [9.0, 9.99, 10.5, 11.0, 50.0])
    assert got == [False, False, True, False, False]


def test_heal_switch_turns_everything_off() -> None:
    clock = Clock(0.0)
    switch = HealSwitch(heal_at=5.0, clock=clock)
    trigger = Trigger(FaultSpec.parse(0, kind="evict"), 1, PORT, "server", 0.0, switch)
    assert trigger.decide(4.9)
    assert not trigger.decide(5.0)  # healed by time
    manual = HealSwitch()
    trigger = Trigger(FaultSpec.parse(1, kind="evict"), 1, PORT, "server", 0.0, manual)
    assert trigger.decide(1.0)
    manual.heal()
    assert not trigger.active(1.0) and not trigger.decide(1.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "reset"}, "phase"),
        ({"kind": "reset", "phase": "bogus"}, "phase"),
        ({"kind": "reset", "phase": "committed"}, "phase"),  # the scenario refuses it, so does a spec
        ({"kind": "truncate", "phase": "commit"}, "phase"),
        ({"kind": "stall", "delay": 1.0, "probability": 1.5}, "probability"),
        ({"kind": "stall", "delay": 1.0, "window": {"start": 3.0, "end": 2.0}}, "after start"),
        ({"kind": "stall", "delay": 1.0, "window": {"start": 1.0, "end": 2.0}, "at": 1.0}, "either"),
        ({"kind": "kill"}, "target"),
        ({"kind": "stall", "delay": 1.0, "target": "server"}, "target"),
        ({"kind": "kill", "target": "server", "ports": [1]}, "ports"),
        ({"kind": "delay_descriptor"}, "delay"),
        ({"kind": "nonsense"}, "nonsense"),
    ],
)
def test_spec_validation_is_the_scenario_models(fields: dict[str, Any], message: str) -> None:
    """A spec is validated by the fault's scenario model and nothing else, so they cannot drift."""
    with pytest.raises(ValueError, match=message):
        FaultSpec.parse(0, **fields)


def test_spec_is_a_view_of_the_model() -> None:
    spec = FaultSpec.parse(2, kind="reset", phase="payload", window={"start": 1, "end": 3}, ports=[0, 2])
    assert (spec.index, spec.kind, spec.layer, spec.side, spec.phase) == (
        2,
        "reset",
        "transport",
        "server",
        "payload",
    )
    assert spec.window == (1.0, 3.0) and spec.ports == (0, 2) and spec.probability == 1.0
    assert spec.span(10.0) == (1.0, 3.0) and FaultSpec.parse(0, kind="evict", at=4).span(10.0) == (4.0, 10.0)


def test_spec_travels_without_its_model_and_is_made_only_from_one() -> None:
    """A server or consumer unpickles its wrapper's specs without loading pydantic."""
    spec = FaultSpec.parse(1, kind="stall", delay=0.5, side="client", phase="commit")
    copy = pickle.loads(pickle.dumps(spec))
    assert copy == spec and copy.fault is None and spec.fault is not None and copy.layer == "transport"
    assert set(dataclasses.asdict(spec)) == {  # the keys the bench's JSON has always had
        *("index", "kind", "ports", "probability", "window", "at_s", "phase"),
        *("delay_s", "duration_s", "target", "side"),
    }
    with pytest.raises(TypeError, match="scenario model"):
        FaultSpec(1, "stall", None, 1.0, None, None, None, 0.5, None, None, "server")


def test_layer_routing_reads_the_model() -> None:
    assert [layer_of(k) for k in ("stall", "toxic", "partition", "pause", "delay_descriptor")] == [
        "transport",
        "network",
        "network",
        "process",
        "control",
    ]
    assert kinds_of("process") == {"kill", "pause", "restart"}
    with pytest.raises(ValueError, match="unknown fault kind"):
        layer_of("nonsense")


def test_every_transport_kind_acts_on_each_side_it_may_fire_on() -> None:
    """Each kind the model accepts on a side has its class there (and no class for a kind it refuses)."""
    assert set(SERVER_KINDS) == kinds_of("transport")
    assert set(CLIENT_KINDS) == {k for k in kinds_of("transport") if FAULT_KINDS[k].client_side}


# -- transport faults against a fake Link --------------------------------------------------------


class FakeLink(SteppedLink):
    """In-memory server Link: records sends with their time, answers recvs from a script."""

    def __init__(self, port: int = PORT, role: str = "server") -> None:
        self.port = port
        self.role = role
        self.sent: list[tuple[Phase, int, float]] = []
        self.received: list[Phase] = []
        self.aborted = False
        self.gracefully_closed = False

    @property
    def closed(self) -> bool:
        return self.aborted or self.gracefully_closed

    async def send(self, buf: Any, phase: Phase) -> None:
        if self.closed:
            raise ConnectionResetError("send on a closed link")
        self.sent.append((phase, np.frombuffer(buf, dtype=np.uint8).nbytes, time.monotonic()))

    async def recv(self, buf: Any, phase: Phase) -> None:
        if self.closed:
            raise ConnectionResetError("recv on a closed link")
        self.received.append(phase)

    async def close(self) -> None:
        self.gracefully_closed = True

    def abort(self) -> None:
        self.aborted = True


async def serve_commit(link: Any, payload: int = PAYLOAD) -> None:
    """What the server does for one commit-protocol read."""
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(np.zeros(FRAME, np.uint8), Phase.STATUS)
    await link.send(np.zeros(payload, np.uint8), Phase.PAYLOAD)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.COMMIT)
    await link.send(np.zeros(FRAME, np.uint8), Phase.COMMITTED)


async def serve_single_chunk(link: Any) -> None:
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(bytes(FRAME), Phase.STATUS)
    await link.send(np.zeros(PAYLOAD, np.uint8), Phase.PAYLOAD)


async def serve_resolve(link: Any) -> None:
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(np.zeros(FRAME, np.uint8), Phase.COMMITTED)


def wrapped(*specs: FaultSpec, seed: int = 1, **kw: Any) -> tuple[ChaosLinkWrapper, FakeLink, Events]:
    events = Events()
    wrapper = make_link_wrapper(list(specs), seed, events, time.time() - 1.0, port_index={PORT: 2}, **kw)
    fake = FakeLink()
    return wrapper, fake, events


def sent_phases(fake: FakeLink) -> list[str]:
    return [str(p) for p, _, _ in fake.sent]


def test_client_links_and_empty_fault_lists_are_left_alone() -> None:
    wrapper, _, _ = wrapped(FaultSpec.parse(0, kind="evict"))
    client = FakeLink(role="client")
    assert wrapper(client) is client
    plain, fake, _ = wrapped(FaultSpec.parse(0, kind="kill", target="server"))
    assert plain(fake) is fake


@pytest.mark.parametrize(
    ("phase", "before"),
    [
        ("request", []),
        ("status", []),
        ("payload", ["status"]),
        ("commit", ["status", "payload"]),
    ],
)
async def test_reset_aborts_at_its_phase(phase: str, before: list[str]) -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(3, kind="reset", phase=phase))
    link = wrapper(fake)
    with pytest.raises(InjectedFaultError, match=f"reset at {phase}"):
        await serve_commit(link)
    assert fake.aborted and link.closed
    assert sent_phases(fake) == before
    assert events.of("fault") == [
        {"fault": 3, "kind": "reset", "port": 2, "phase": phase, "target": None, "side": "server"}
    ]
    assert wrapper.fired[(3, 2)] == 1


class PostingFakeLink(FakeLink):
    """A FakeLink that can post sends ahead, like a bare UcxLink."""

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None]:
        self.sent.append((phase, np.frombuffer(buf, dtype=np.uint8).nbytes, time.monotonic()))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_fault_free_attempts_post_through_and_faulty_ones_go_step_by_step() -> None:
    quiet = FaultSpec.parse(0, kind="reset", phase="status", probability=0.0)
    wrapper, _, events = wrapped(quiet)
    fake = PostingFakeLink()
    link = wrapper(fake)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    posted = link.post_send(np.zeros(FRAME, np.uint8), Phase.STATUS)
    assert posted is not None and posted.done()  # chaos at probability 0 costs no step-by-step send
    assert sent_phases(fake) == ["status"] and events.of("fault") == []

    wrapper, _, events = wrapped(FaultSpec.parse(0, kind="reset", phase="status"))
    fake = PostingFakeLink()
    link = wrapper(fake)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    assert link.post_send(np.zeros(FRAME, np.uint8), Phase.STATUS) is None  # a drawn fault: no shortcut
    with pytest.raises(InjectedFaultError):
        await link.send(np.zeros(FRAME, np.uint8), Phase.STATUS)
    assert fake.sent == [] and len(events.of("fault")) == 1


async def test_reset_at_commit_never_fires_in_single_chunk() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="reset", phase="commit"))
    await serve_single_chunk(wrapper(fake))
    assert not fake.aborted and events.of("fault") == []


@pytest.mark.parametrize("phase", ["status", "payload"])
async def test_truncate_sends_a_short_message(phase: str) -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(1, kind="truncate", phase=phase))
    await serve_commit(wrapper(fake))
    sizes = {str(p): n for p, n, _ in fake.sent}
    full = {"status": FRAME, "payload": PAYLOAD, "committed": FRAME}
    assert sizes == {**full, phase: full[phase] // 2}
    assert [e["phase"] for e in events.of("fault")] == [phase]


@pytest.mark.parametrize("phase", ["status", "payload"])
async def test_corrupt_flips_bytes_and_keeps_the_length(phase: str) -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(1, kind="corrupt", phase=phase))
    link = wrapper(fake)
    seen: dict[str, np.ndarray] = {}

    async def send(buf: Any, p: Phase) -> None:
        seen[str(p)] = np.frombuffer(buf, dtype=np.uint8).copy()

    fake.send = send  # type: ignore[method-assign]
    original = np.arange(FRAME, dtype=np.uint8)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(original, Phase.STATUS)
    await link.send(original, Phase.PAYLOAD)
    changed = seen[phase]
    other = seen["payload" if phase == "status" else "status"]
    assert changed.nbytes == FRAME and (changed != original).any() and (other == original).all()
    assert (original == np.arange(FRAME, dtype=np.uint8)).all()  # the sender's buffer is untouched
    assert [e["phase"] for e in events.of("fault")] == [phase]


async def test_reset_at_resolve_aborts_before_the_resolved_reply() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="reset", phase="resolve"))
    link = wrapper(fake)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    with pytest.raises(ConnectionResetError):
        await link.send(np.zeros(FRAME, np.uint8), Phase.RESOLVE)
    assert fake.aborted and fake.sent == [] and [e["phase"] for e in events.of("fault")] == ["resolve"]


async def test_truncate_default_phase_is_payload_and_bytes_buffers_work() -> None:
    wrapper, fake, _ = wrapped(FaultSpec.parse(1, kind="truncate"))
    link = wrapper(fake)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(bytes(FRAME), Phase.STATUS)
    await link.send(b"x", Phase.PAYLOAD)  # too short to halve: one byte too long
    assert [n for _, n, _ in fake.sent] == [FRAME, 2]


async def test_timeout_holds_the_status() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="timeout", delay=0.3))
    start = time.monotonic()
    await serve_commit(wrapper(fake))
    status_at = fake.sent[0][2] - start
    assert sent_phases(fake)[0] == "status" and status_at >= 0.29
    assert [(e["kind"], e["phase"]) for e in events.of("fault")] == [("timeout", "status")]


async def test_timeout_default_delay_is_past_the_read_timeout() -> None:
    wrapper, _, _ = wrapped(FaultSpec.parse(0, kind="timeout"), read_timeout=0.2)
    assert wrapper.delay_for(wrapper.faults[0]) > 0.2


async def test_stall_sends_status_then_holds_payload() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="stall", delay=0.3))
    start = time.monotonic()
    await serve_commit(wrapper(fake))
    (_, _, status_at), (_, _, payload_at) = fake.sent[0], fake.sent[1]
    assert status_at - start < 0.25 <= 0.29 <= payload_at - start
    assert [(e["kind"], e["phase"]) for e in events.of("fault")] == [("stall", "payload")]


async def test_heal_cuts_a_hold_short_and_disarms_drawn_faults() -> None:
    wrapper, fake, events = wrapped(
        FaultSpec.parse(0, kind="stall", delay=30.0), FaultSpec.parse(1, kind="drop_commit")
    )
    task = asyncio.create_task(serve_commit(wrapper(fake)))
    await asyncio.sleep(0.1)
    wrapper.heal()
    await asyncio.wait_for(task, 2.0)
    assert sent_phases(fake) == ["status", "payload", "committed"]  # drop_commit drawn, never fired
    assert [e["kind"] for e in events.of("fault")] == ["stall"]


async def test_evict_closes_after_a_served_commit_read() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(4, kind="evict"))
    link = wrapper(fake)
    await serve_commit(link)
    assert not fake.closed and events.of("fault") == []
    with pytest.raises(ConnectionResetError, match="evicted"):
        await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    assert fake.gracefully_closed and not fake.aborted
    assert events.of("fault") == [
        {"fault": 4, "kind": "evict", "port": 2, "phase": "request", "target": None, "side": "server"}
    ]


async def test_evict_after_single_chunk_payload() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="evict"))
    link = wrapper(fake)
    await serve_single_chunk(link)
    with pytest.raises(ConnectionResetError):
        await serve_single_chunk(link)
    assert fake.closed and len(events.of("fault")) == 1


async def test_evict_not_after_an_unserved_request() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="evict"))
    link = wrapper(fake)
    await serve_resolve(link)  # a RESOLVE (no COMMIT) is not a served read
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(np.zeros(FRAME, np.uint8), Phase.STATUS)  # NOT_READY: no payload
    await serve_resolve(link)
    assert not fake.closed and events.of("fault") == []


async def test_drop_commit_swallows_committed_and_aborts() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(5, kind="drop_commit"))
    with pytest.raises(ConnectionResetError, match="COMMITTED dropped"):
        await serve_commit(wrapper(fake))
    assert sent_phases(fake) == ["status", "payload"] and fake.received[-1] == Phase.COMMIT
    assert fake.aborted
    assert events.of("fault") == [
        {"fault": 5, "kind": "drop_commit", "port": 2, "phase": "committed", "target": None, "side": "server"}
    ]


async def test_drop_commit_leaves_resolve_answers_alone() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(5, kind="drop_commit"))
    await serve_resolve(wrapper(fake))
    assert sent_phases(fake) == ["committed"] and events.of("fault") == []


async def test_one_event_per_firing_over_many_requests_and_ports_filter() -> None:
    wrapper, fake, events = wrapped(FaultSpec.parse(0, kind="truncate", ports=[2]))  # PORT is index 2
    link = wrapper(fake)
    for _ in range(5):
        await serve_commit(link)
    assert len(events.of("fault")) == 5 and wrapper.fired[(0, 2)] == 5
    other = FakeLink(port=PORT + 1)
    await serve_commit(wrapper(other))
    assert len(events.of("fault")) == 5 and [n for _, n, _ in other.sent] == [FRAME, PAYLOAD, FRAME]


async def test_transport_decisions_reproduce_per_port() -> None:
    async def pattern(seed: int) -> list[int]:
        wrapper, fake, _ = wrapped(FaultSpec.parse(0, kind="truncate", probability=0.5), seed=seed)
        link = wrapper(fake)
        for _ in range(40):
            await serve_commit(link)
        return [n for p, n, _ in fake.sent if p == Phase.PAYLOAD]

    first = await pattern(9)
    assert first == await pattern(9)
    assert first != await pattern(10)
    assert 0 < first.count(PAYLOAD // 2) < 40


async def test_one_shot_transport_fault_fires_once_per_port() -> None:
    events = Events()
    wrapper = make_link_wrapper([FaultSpec.parse(0, kind="truncate", at=0.0)], 1, events, time.time())
    a, b = FakeLink(PORT), FakeLink(PORT + 1)
    for link in (wrapper(a), wrapper(b)):
        for _ in range(3):
            await serve_commit(link)
    assert [e["port"] for e in events.of("fault")] == [PORT, PORT + 1]  # no port_index: real port


# -- process faults against real processes -------------------------------------------------------


@pytest.fixture
def sleeper() -> Iterator[SpawnedProcess]:
    handle = SpawnedProcess(time.sleep, (120,), name="sleeper")
    try:
        yield handle
    finally:
        handle.stop(timeout=10)
        assert handle.process is not None and not handle.process.is_alive()


def status(pid: int | None) -> str:
    assert pid is not None
    try:
        return psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def process_faults(spec: FaultSpec, handle: SpawnedProcess, clock: Clock, **kw: Any) -> ProcessFaults:
    return ProcessFaults([spec], {"server": handle}, 1, Events(), clock.now, clock=clock, **kw)


def test_kill_sends_sigkill(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    pid = sleeper.pid
    with process_faults(FaultSpec.parse(2, kind="kill", target="server"), sleeper, clock) as faults:
        assert faults.tick() == [2]
        assert status(pid) in ("gone", psutil.STATUS_ZOMBIE)
        assert faults.tick() == []  # nothing left to kill
    events: Events = faults.events  # type: ignore[assignment]
    assert events.of("fault") == [
        {"fault": 2, "kind": "kill", "port": None, "phase": None, "target": "server"}
    ]
    assert events.of("proc_exit") == [{"target": "server", "pid": pid, "how": "killed"}]
    assert sleeper.process is not None
    sleeper.process.join(5)
    assert sleeper.process.exitcode == -9  # the runner still sees how it died


def test_pause_stops_then_continues_after_duration(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    spec = FaultSpec.parse(0, kind="pause", target="server", duration=2.0, at=0.0)
    with process_faults(spec, sleeper, clock) as faults:
        assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)
        assert faults.tick() == [0]
        assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_STOPPED)
        clock.now += 1.0
        faults.tick()
        assert status(sleeper.pid) == psutil.STATUS_STOPPED
        clock.now += 1.0
        faults.tick()
        assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)
        assert faults.paused == []


def test_pause_is_bounded_and_heal_continues(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    spec = FaultSpec.parse(0, kind="pause", target="server", duration=3600.0)
    with process_faults(spec, sleeper, clock, max_pause_s=5.0) as faults:
        faults.tick()
        assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_STOPPED)
        assert faults._paused[sleeper.proc] == clock.now + 5.0  # bounded  # type: ignore[index]
        faults.heal()
        assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)
        assert faults.tick() == []


def test_close_continues_a_paused_process(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    faults = process_faults(FaultSpec.parse(0, kind="pause", target="server", duration=60), sleeper, clock)
    faults.tick()
    assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_STOPPED)
    faults.close()
    assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)


def test_restart_kills_and_starts_again(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    old = sleeper.pid
    with process_faults(FaultSpec.parse(1, kind="restart", target="server"), sleeper, clock) as faults:
        assert faults.tick() == [1]
    assert sleeper.pid != old and sleeper.starts == 2
    assert status(old) == "gone"  # reaped by the handle's restart
    assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)
    events: Events = faults.events  # type: ignore[assignment]
    assert events.of("proc_exit") == [
        {"target": "server", "pid": old, "how": "restarted", "new_pid": sleeper.pid}
    ]


def test_window_and_at_gate_process_faults(sleeper: SpawnedProcess) -> None:
    clock = Clock()
    spec = FaultSpec.parse(0, kind="pause", target="server", window={"start": 5.0, "end": 6.0}, duration=0.01)
    with process_faults(spec, sleeper, clock) as faults:
        assert faults.tick(clock.now + 4.0) == []
        assert faults.tick(clock.now + 5.5) == [0]
        assert faults.tick(clock.now + 5.6) == [0]  # resumed (after 10 ms) and paused again
        assert faults.tick(clock.now + 6.0) == []


def test_unknown_target_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown targets"):
        ProcessFaults([FaultSpec.parse(0, kind="kill", target="consumer-3")], {}, 1, Events(), 0.0)


def test_timer_thread_fires_at_its_time(sleeper: SpawnedProcess) -> None:
    pid = sleeper.pid
    faults = ProcessFaults(
        [FaultSpec.parse(0, kind="kill", target="server", at=0.3)],
        {"server": sleeper},
        1,
        Events(),
        time.time(),
    )
    ticking = TickThread(faults, interval=0.05)
    try:
        assert wait_for(lambda: status(pid) in ("gone", psutil.STATUS_ZOMBIE), timeout=10)
    finally:
        ticking.close()
    assert faults.fired[0] == 1


async def test_async_runner_stops_and_continues(sleeper: SpawnedProcess) -> None:
    faults = ProcessFaults(
        [FaultSpec.parse(0, kind="pause", target="server", duration=60)],
        {"server": sleeper},
        1,
        Events(),
        time.time(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(tick_until(faults, interval=0.05, stop=stop))
    assert await asyncio.to_thread(wait_for, lambda: status(sleeper.pid) == psutil.STATUS_STOPPED)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert wait_for(lambda: status(sleeper.pid) == psutil.STATUS_SLEEPING)


# -- control faults and the channel --------------------------------------------------------------


def desc(slot: int, generation: int = 1) -> dict[str, Any]:
    return {"slot": slot, "generation": generation, "host": "127.0.0.1", "ports": [1], "nbytes": 8}


def test_control_decisions_are_seeded() -> None:
    specs = [
        FaultSpec.parse(0, kind="duplicate_descriptor", probability=0.3),
        FaultSpec.parse(1, kind="delay_descriptor", probability=0.3, delay=2.0),
    ]

    def run(seed: int) -> list[tuple[float, ...]]:
        control = ControlFaults(specs, seed, Events(), 0.0)
        return [control.decide(f"{i}:1", now=1.0).delays for i in range(100)]

    first = run(5)
    assert first == run(5) and first != run(6)
    assert {len(d) for d in first} == {1, 2} and any(d[0] == 2.0 for d in first)


def test_control_events_and_heal() -> None:
    events = Events()
    control = ControlFaults([FaultSpec.parse(7, kind="duplicate_descriptor")], 1, events, 0.0)
    assert control.decide("3:1", now=1.0).copies == 2
    assert events.of("fault") == [
        {
            "fault": 7,
            "kind": "duplicate_descriptor",
            "port": None,
            "phase": None,
            "target": None,
            "key": "3:1",
        }
    ]
    control.heal()
    assert control.decide("4:1", now=2.0).copies == 1 and len(events.of("fault")) == 1


def queue_with(*specs: FaultSpec, clock: Clock, **kw: Any) -> DescriptorQueue:
    control = ControlFaults(list(specs), 1, Events(), clock.now, clock=clock)
    return DescriptorQueue(control=control, clock=clock, **kw)


def test_duplicate_hands_one_descriptor_to_two_consumers() -> None:
    clock = Clock()
    queue = queue_with(FaultSpec.parse(0, kind="duplicate_descriptor"), clock=clock, twin_grace=5.0)
    queue.publish(desc(1))
    a = queue.claim("a", 10)
    assert [d.duplicate for d in a] == [False]
    assert queue.claim("a", 10) == []  # the twin waits for another consumer
    b = queue.claim("b", 10)
    assert [d.duplicate for d in b] == [True] and b[0].descriptor == a[0].descriptor
    assert queue.ack("a", ["1:1"]) == 1 and queue.ack("b", ["1:1"]) == 1 and queue.empty()


def test_a_lone_consumer_gets_the_twin_after_the_grace() -> None:
    clock = Clock()
    queue = queue_with(FaultSpec.parse(0, kind="duplicate_descriptor"), clock=clock, twin_grace=1.0)
    queue.publish(desc(1))
    assert len(queue.claim("a", 10)) == 1 and queue.claim("a", 10) == []
    clock.now += 1.0
    assert [d.duplicate for d in queue.claim("a", 10)] == [True]


def test_delay_holds_the_descriptor() -> None:
    clock = Clock()
    queue = queue_with(FaultSpec.parse(0, kind="delay_descriptor", delay=3.0), clock=clock)
    queue.publish(desc(1))
    assert queue.claim("a", 10) == []
    clock.now += 2.9
    assert queue.claim("a", 10) == []
    clock.now += 0.1
    assert [d.key for d in queue.claim("a", 10)] == ["1:1"]


def test_heal_releases_held_descriptors() -> None:
    clock = Clock()
    queue = queue_with(FaultSpec.parse(0, kind="delay_descriptor", delay=60.0), clock=clock)
    queue.publish(desc(1))
    queue.heal()
    assert len(queue.claim("a", 10)) == 1
    queue.publish(desc(2))
    assert len(queue.claim("a", 10)) == 1  # no new delays after heal


def test_dead_consumer_unacked_are_redelivered_acked_never() -> None:
    clock = Clock()
    queue = DescriptorQueue(clock=clock)
    for slot in range(4):
        queue.publish(desc(slot))
    got = queue.claim("a", 3)
    assert [d.key for d in got] == ["0:1", "1:1", "2:1"]
    assert queue.ack("a", ["1:1"]) == 1
    assert queue.consumer_died("a") == 2
    again = queue.claim("b", 10)
    assert [(d.key, d.delivery) for d in again] == [("0:1", 2), ("2:1", 2), ("3:1", 1)]
    queue.ack("b", [d.key for d in again])
    assert queue.consumer_died("b") == 0 and queue.claim("c", 10) == [] and queue.empty()
    assert queue.snapshot().redelivered == 2 and queue.snapshot().acked == 4


def test_visibility_timeout_redelivers_and_late_ack_by_last_owner_counts() -> None:
    clock = Clock()
    queue = DescriptorQueue(clock=clock, visibility_timeout=10.0)
    queue.publish(desc(1))
    queue.publish(desc(2))
    queue.claim("a", 2)
    clock.now += 10.0
    assert queue.ack("a", ["2:1"]) == 1  # expired, not yet re-claimed: the late ack still counts
    assert [(d.key, d.delivery) for d in queue.claim("b", 10)] == [("1:1", 2)]
    assert queue.ack("a", ["1:1"]) == 0  # now owned by b
    assert queue.ack("b", ["1:1"]) == 1 and queue.empty()


def test_ack_by_another_consumer_does_nothing() -> None:
    queue = DescriptorQueue()
    queue.publish(desc(1))
    queue.claim("a", 1)
    assert queue.ack("b", ["1:1"]) == 0
    assert queue.consumer_died("a") == 1


def _consume_one_and_die(client: Any) -> None:
    """Spawned consumer: claims two descriptors, acks only the first, dies without closing."""
    got = client.claim(2, timeout=10)
    client.ack([got[0].key])
    os._exit(0)


def test_channel_across_processes_redelivers_what_a_dead_consumer_held() -> None:
    server = ChannelServer(DescriptorQueue()).start()
    try:
        producer = server.connect("producer")
        for slot in range(3):
            producer.publish(desc(slot))
        child = SpawnedProcess(_consume_one_and_die, (server.connect("c1"),), name="c1")
        assert child.process is not None
        child.process.join(60)
        assert child.process.exitcode == 0
        assert server.consumer_died("c1") == 1
        survivor = server.connect("c2")
        got = survivor.claim(10, timeout=5)
        assert [(d.key, d.delivery) for d in got] == [("1:1", 2), ("2:1", 1)]
        assert survivor.ack([d.key for d in got]) == 2
        assert survivor.claim(10, timeout=0.2) == []  # the acked first descriptor never comes back
        stats = server.stats()
        assert (stats.published, stats.acked, stats.redelivered, stats.pending, stats.in_flight) == (
            3,
            3,
            1,
            0,
            0,
        )
    finally:
        server.stop()


def test_claim_waits_for_a_publish_and_times_out_empty() -> None:
    with ChannelServer(DescriptorQueue()) as server:
        consumer = server.connect("c")
        start = time.monotonic()
        assert consumer.claim(1, timeout=0.3) == []
        assert 0.25 <= time.monotonic() - start < 3
        timer = threading.Timer(0.2, server.publish, (desc(9),))
        timer.start()
        got = consumer.claim(1, timeout=5.0)
        timer.join()
        assert [d.key for d in got] == ["9:1"]


def test_unclaim_puts_an_undelivered_handout_back_first() -> None:
    queue = DescriptorQueue()
    queue.publish(desc(1))
    queue.publish(desc(2))
    got = queue.claim("a", 1)
    queue.unclaim(d.id for d in got)
    assert [(d.key, d.delivery) for d in queue.claim("b", 2)] == [("1:1", 1), ("2:1", 1)]
    assert queue.snapshot().redelivered == 0


async def test_ports_are_indexes_after_bind_ports_and_streams_keyed_by_index() -> None:
    def build(ports: list[int]) -> tuple[ChaosLinkWrapper, Events]:
        events = Events()
        spec = FaultSpec.parse(0, kind="truncate", ports=[1], probability=0.5)
        wrapper = make_link_wrapper([spec], 3, events, time.time() - 1)
        wrapper.bind_ports(ports)
        return wrapper, events

    patterns = []
    for ports in ([50000, 50001], [60000, 60001]):  # ephemeral numbers differ between runs
        wrapper, events = build(ports)
        untouched, hit = FakeLink(ports[0]), FakeLink(ports[1])
        for _ in range(30):
            await serve_commit(wrapper(untouched))
            await serve_commit(wrapper(hit))
        assert {n for p, n, _ in untouched.sent if p == Phase.PAYLOAD} == {PAYLOAD}
        assert {e["port"] for e in events.of("fault")} == {1}
        patterns.append([n for p, n, _ in hit.sent if p == Phase.PAYLOAD])
    assert patterns[0] == patterns[1]


def test_nack_redelivers_at_once_and_only_the_owners_entries() -> None:
    clock = Clock()
    queue = DescriptorQueue(clock=clock, visibility_timeout=30.0)
    for slot in range(3):
        queue.publish(desc(slot))
    queue.claim("a", 3)
    assert queue.nack("b", ["0:1"]) == 0  # not b's
    assert queue.nack("a", ["0:1", "2:1"]) == 2
    again = queue.claim("b", 10)  # no wait for the visibility timeout
    assert [(d.key, d.delivery) for d in again] == [("0:1", 2), ("2:1", 2)]
    assert queue.ack("a", ["1:1"]) == 1 and queue.ack("b", ["0:1", "2:1"]) == 2 and queue.empty()


async def serve_batch(link: Any, payloads: int) -> None:
    """What the server does for one batch: one status, one payload per slot, commit, committed."""
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(np.zeros(FRAME, np.uint8), Phase.STATUS)
    for _ in range(payloads):
        await link.send(np.zeros(PAYLOAD, np.uint8), Phase.PAYLOAD)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.COMMIT)
    await link.send(np.zeros(FRAME, np.uint8), Phase.COMMITTED)


async def test_payload_faults_draw_again_for_every_payload_of_a_batch() -> None:
    """A truncate at 30% per payload hits single slots of a 16-payload batch (not all or none), and
    a later slot of the batch can be the one cut (e.g. the third)."""
    wrapper, fake, events = wrapped(FaultSpec.parse(1, kind="truncate", probability=0.3), seed=3)
    link = wrapper(fake)
    cut_positions: list[int] = []
    for _ in range(20):
        fake.sent.clear()
        await serve_batch(link, 16)
        sizes = [n for phase, n, _ in fake.sent if phase == Phase.PAYLOAD]
        cut_positions += [i for i, n in enumerate(sizes) if n == PAYLOAD // 2]
    fired = len(events.of("fault"))
    assert fired == len(cut_positions) and 20 < fired < 20 * 16, "per slot, not per batch"
    assert any(i >= 2 for i in cut_positions), "slots after the first are cut too"


async def test_inline_status_meets_both_status_and_payload_faults() -> None:
    wrapper, fake, events = wrapped(
        FaultSpec.parse(0, kind="timeout", delay=0.05), FaultSpec.parse(1, kind="truncate", phase="payload")
    )
    link = wrapper(fake)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.REQUEST)
    await link.send(np.zeros(FRAME + 100, np.uint8), Phase.INLINE)
    assert [e["kind"] for e in events.of("fault")] == ["timeout", "truncate"]
    assert [n for _, n, _ in fake.sent] == [(FRAME + 100) // 2]


# -- client-side transport faults (the consumer's own link) ---------------------------------------


def client_wrapped(
    *specs: FaultSpec, stream: str = "consumer-0", **kw: Any
) -> tuple[ChaosLinkWrapper, Events]:
    events = Events()
    wrapper = make_link_wrapper(
        list(specs), 1, events, time.time() - 1.0, port_index={PORT: 2}, stream=stream, side="client", **kw
    )
    return wrapper, events


def request_frame(slot: int = 5, generation: int = 7) -> bytes:
    from transport import protocol as proto

    return proto.encode(proto.request(slot, generation, 99, bytes(16)))


async def client_read(link: Any) -> None:
    """What the client does for one commit-protocol read (the payload not inline)."""
    await link.send(request_frame(), Phase.REQUEST)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.STATUS)
    await link.recv(np.zeros(PAYLOAD, np.uint8), Phase.PAYLOAD)
    await link.send(np.zeros(FRAME, np.uint8), Phase.COMMIT)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.COMMITTED)


async def client_resolve(link: Any) -> None:
    from transport import protocol as proto

    await link.send(proto.encode(proto.resolve(5, 7, 99, bytes(16))), Phase.RESOLVE)
    await link.recv(np.zeros(FRAME, np.uint8), Phase.RESOLVE)


def test_each_side_wraps_only_its_own_links_with_its_own_faults() -> None:
    client_reset = FaultSpec.parse(0, kind="reset", phase="commit", side="client")
    server_reset = FaultSpec.parse(1, kind="reset", phase="commit")
    server, _, _ = wrapped(client_reset, server_reset)
    assert server.faults == [server_reset]
    client, _ = client_wrapped(client_reset, server_reset)
    assert client.faults == [client_reset]
    server_link, client_link = FakeLink(), FakeLink(role="client")
    assert client(server_link) is server_link and server(client_link) is client_link
    assert client(client_link) is not client_link and server(server_link) is not server_link
    only_server, _ = client_wrapped(server_reset)
    assert only_server(client_link) is client_link  # no client-side fault: no wrapper, no cost


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"kind": "truncate", "side": "client"}, "side client applies to"),
        ({"kind": "evict", "side": "client"}, "side client applies to"),
        ({"kind": "stall", "delay": 1.0, "side": "client"}, "needs phase"),
        ({"kind": "stall", "delay": 1.0, "side": "client", "phase": "payload"}, "phase"),
        ({"kind": "reset", "side": "client", "phase": "committed"}, "phase"),
        ({"kind": "reset", "side": "peer", "phase": "commit"}, "server.*client"),
    ],
)
def test_client_side_spec_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FaultSpec.parse(0, **fields)


@pytest.mark.parametrize(
    ("phase", "sent", "received", "run"),
    [
        ("request", [], [], client_read),
        ("status", ["request"], [], client_read),  # the request went out, its reply is never seen
        ("payload", ["request"], ["status"], client_read),
        ("commit", ["request"], ["status", "payload"], client_read),
        ("resolve", [], [], client_resolve),
    ],
)
async def test_client_reset_aborts_its_own_endpoint_at_its_phase(
    phase: str, sent: list[str], received: list[str], run: Any
) -> None:
    wrapper, events = client_wrapped(FaultSpec.parse(3, kind="reset", phase=phase, side="client"))
    fake = FakeLink(role="client")
    link = wrapper(fake)
    with pytest.raises(InjectedFaultError, match=f"client reset at {phase}"):
        await run(link)
    assert fake.aborted and link.closed
    assert sent_phases(fake) == sent and [str(p) for p in fake.received] == received
    assert events.of("fault") == [
        {
            "fault": 3,
            "kind": "reset",
            "port": 2,
            "phase": phase,
            "target": None,
            "side": "client",
            "keys": ["5:7"],
        }
    ]


async def test_client_reset_at_request_never_fires_on_a_resolve() -> None:
    """One decision per request; a drawn fault whose step the exchange never reaches does not fire."""
    wrapper, events = client_wrapped(FaultSpec.parse(0, kind="reset", phase="request", side="client"))
    fake = FakeLink(role="client")
    await client_resolve(wrapper(fake))
    assert not fake.aborted and events.of("fault") == []


async def test_client_timeout_holds_the_received_status_past_the_clients_bound() -> None:
    """The status arrived (the server answered in time); the client's own bound still fires."""
    wrapper, events = client_wrapped(FaultSpec.parse(0, kind="timeout", delay=5.0, side="client"))
    fake = FakeLink(role="client")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client_read(wrapper(fake)), 0.3)
    assert time.monotonic() - started < 2.0
    assert [str(p) for p in fake.received] == ["status"] and sent_phases(fake) == ["request"]
    assert [(e["kind"], e["phase"], e["side"]) for e in events.of("fault")] == [
        ("timeout", "status", "client")
    ]


async def test_client_timeout_default_delay_is_past_the_read_timeout() -> None:
    wrapper, _ = client_wrapped(FaultSpec.parse(0, kind="timeout", side="client"), read_timeout=0.2)
    assert wrapper.delay_for(wrapper.faults[0]) > 0.2


@pytest.mark.parametrize("phase", ["request", "commit"])
async def test_client_stall_holds_the_send_at_its_phase(phase: str) -> None:
    wrapper, events = client_wrapped(FaultSpec.parse(0, kind="stall", delay=0.3, phase=phase, side="client"))
    fake = FakeLink(role="client")
    started = time.monotonic()
    await client_read(wrapper(fake))
    at = {str(p): t - started for p, _, t in fake.sent}
    assert at[phase] >= 0.29 and (phase == "request" or at["request"] < 0.25)
    assert [(e["kind"], e["phase"], e["keys"]) for e in events.of("fault")] == [("stall", phase, ["5:7"])]


async def test_client_stall_at_resolve_holds_the_resolve() -> None:
    wrapper, events = client_wrapped(
        FaultSpec.parse(0, kind="stall", delay=0.3, phase="resolve", side="client")
    )
    fake = FakeLink(role="client")
    started = time.monotonic()
    await client_read(wrapper(fake))  # no RESOLVE in a read: nothing held
    assert events.of("fault") == [] and time.monotonic() - started < 0.25
    await client_resolve(wrapper(fake))
    assert fake.sent[-1][2] - started >= 0.29 and [e["phase"] for e in events.of("fault")] == ["resolve"]


async def test_client_heal_cuts_a_stall_short() -> None:
    wrapper, events = client_wrapped(
        FaultSpec.parse(0, kind="stall", delay=30.0, phase="commit", side="client")
    )
    task = asyncio.create_task(client_read(wrapper(FakeLink(role="client"))))
    await asyncio.sleep(0.1)
    wrapper.heal()
    await asyncio.wait_for(task, 2.0)
    assert len(events.of("fault")) == 1


async def test_client_decisions_are_seeded_per_consumer_stream() -> None:
    """Same consumer, same seed: the same firings; another consumer draws its own stream."""
    spec = FaultSpec.parse(0, kind="reset", phase="request", side="client", probability=0.5)

    async def firings(stream: str) -> list[bool]:
        wrapper, _ = client_wrapped(spec, stream=stream)
        out = []
        for _ in range(40):
            try:
                await client_read(wrapper(FakeLink(role="client")))
                out.append(False)
            except InjectedFaultError:
                out.append(True)
        return out

    first = await firings("consumer-0")
    assert first == await firings("consumer-0") and 5 < sum(first) < 35
    assert first != await firings("consumer-1")


def test_request_keys_decode_single_and_batch_requests() -> None:
    from chaos.faults.transport import request_keys
    from transport import protocol as proto

    assert request_keys(request_frame(3, 9)) == ["3:9"]
    batch = proto.ClientBatch(
        [proto.BatchSlot(1, 4, 8, 0, bytes(16)), proto.BatchSlot(2, 6, 8, 0, bytes(16))], 99
    )
    assert request_keys(batch.request_message()) == ["1:4", "2:6"]
    assert request_keys(b"junk") == []


def test_a_wrapper_without_a_start_fires_nothing_until_the_runner_writes_it(tmp_path: Path) -> None:
    """The runner fixes the fault phase once every role is up; a server up before that must not fire,
    must fire once the start file is there, and must heal `duration` after the written start."""
    start_file = tmp_path / "fault-start"
    now = [1000.0]
    wrapper = make_link_wrapper(
        [FaultSpec.parse(0, kind="reset", phase="request")],
        1,
        Events(),
        None,
        port_index={PORT: 0},
        start_file=str(start_file),
        duration=5.0,
        clock=lambda: now[0],
    )
    assert wrapper.draw(PORT) == [] and wrapper.run_start is None  # no file yet: not started
    write_start(start_file, 1010.0)
    assert read_start(start_file) == 1010.0
    now[0] = 1011.0
    assert [f.kind for f in wrapper.draw(PORT)] == ["reset"]  # inside the phase: fires
    now[0] = 1015.0
    assert wrapper.draw(PORT) == [] and wrapper.healed  # start + duration: healed
    with pytest.raises(ValueError, match="start_file and duration"):
        make_link_wrapper([], 1, Events(), None)


def test_control_faults_wait_for_their_start() -> None:
    control = ControlFaults([FaultSpec.parse(0, kind="duplicate_descriptor")], 1, Events(), None)
    assert control.decide("k", now=50.0).faults == ()  # not started: nothing fires
    control.start(run_start=100.0, heal_at=110.0)
    assert control.decide("k", now=101.0).faults == (0,)
    assert control.decide("k", now=111.0).faults == ()
