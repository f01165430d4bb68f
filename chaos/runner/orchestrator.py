"""Run one scenario: start the processes, inject faults, heal, drain, check, clean up.

Timeline (wall clock, shared by every process): `run_start` is one second after every role has started
(at the earliest STARTUP_S after launch), written to `<run dir>/fault-start` for the fault wrappers in
the server and consumers; faults act in `[run_start, run_start + duration)`; then the producer stops,
every fault heals (a killed server is restarted) and consumers drain the channel for at most
`drain_timeout`. A watchdog enforces the scenario's `deadline`: past it, every process's stacks are
dumped into the run directory and the run is judged a harness error (exit 3).

Teardown goes through `chaos.runner.cleanup.RunCleanup`: every step runs (even after a failing one or
a second Ctrl-C), and the ring segment and every child process are tracked from the moment they exist,
so a runner killed with SIGKILL leaves a record the next run sweeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import functools
import multiprocessing as mp
import random
import signal
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from chaos.channel import ChannelFailedError, ChannelServer, DescriptorQueue, emit_published
from chaos.checker import CheckSpec, Expectations, FaultRef, Verdict, check
from chaos.faults.base import FaultSpec, write_start
from chaos.faults.control import ControlFaults
from chaos.faults.process import ProcessFaults, process_handle
from chaos.history import read_history
from chaos.hosts import Host, InHost, netns
from chaos.hosts.effects import NetFaultRef, affected_consumers, judge
from chaos.hosts.schedule import HostsUnavailable
from chaos.redis_channel import RedisQueue, StreamRef
from chaos.redis_server import RedisServer, RedisServerError
from chaos.runner.cleanup import CleanupReport, RunCleanup, port_id, register_kind
from chaos.runner.network import NetworkFaults
from chaos.runner.roles import (
    ConsumerConfig,
    ProducerConfig,
    consumer_main,
    delayed_producer_main,
    server_role,
)
from chaos.scenario.model import Scenario
from chaos.trainer import load_entrypoint
from transport.client import default_resolve_timeout
from transport.errors import TransportError
from transport.events import JsonlSink
from transport.ring import SHM_DIR, SharedRing, SlotState
from transport.serve import ServerConfig, ServerProcess

if TYPE_CHECKING:
    from chaos.hosts.schedule import HostNetwork

SPAWN = mp.get_context("spawn")
STARTUP_S = 4.0  # processes spawn and import ucxx before the fault phase starts
STEP_TIMEOUT_S = 5.0
CONSUMER_EXIT_S = 10.0  # all consumers together, after the drain
ROLE_READY_TIMEOUT_S = 60.0  # how long the clock may wait for spawned roles to start
STARTUP_BUDGET_S = 90.0  # launch to fault phase, before the scenario's deadline starts counting
HOST = "127.0.0.1"
VISIBILITY_TIMEOUT_S = 10.0  # a claimed descriptor not acked for this long is handed out again


class HarnessError(RuntimeError):
    """The run could not be judged (a process failed to start, the deadline passed, ...)."""


@dataclass
class Progress:
    scenario: str
    phase: str
    elapsed: float
    duration: float
    published: int
    acked: int
    pending: int


@dataclass
class Outcome:
    """What one scenario run produced; `verdict` is None when the harness itself failed."""

    scenario: Scenario
    seed: int
    run_dir: Path
    verdict: Verdict | None
    error: str | None
    started: float
    duration_s: float
    notes: list[str] = field(default_factory=list)
    cleanup: CleanupReport | None = None

    @property
    def status(self) -> str:
        if self.error is not None or self.verdict is None:
            return "error"
        return "passed" if self.verdict.passed else "failed"


class Recording:
    """Logs `published` when the channel accepts a descriptor: from then on it must be delivered.

    Logging here rather than in the producer makes publish atomic for the checker: a producer
    killed between its ring write and the channel leaves a slot nobody was promised. One mixin for
    both channels, so the in-process queue and the Redis stream log the same events.
    """

    events: JsonlSink

    def publish(self, descriptor: dict[str, Any], now: float | None = None) -> list[int]:
        ids = super().publish(descriptor, now)  # type: ignore[misc]
        emit_published(self.events, descriptor)
        return ids


class RecordingQueue(Recording, DescriptorQueue):
    def __init__(self, events: JsonlSink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events = events

    def consumer_died(self, consumer: str) -> int:
        """Logs which descriptors the dead consumer held claimed and un-acked (`channel_returned`):
        the only keys the checker excuses as `consumed_by_dead_consumer`."""
        keys = sorted({e.key for e in self._in_flight.values() if e.owner == consumer})
        count = super().consumer_died(consumer)
        self.events.emit("channel_returned", consumer=consumer, keys=keys, why="died")
        return count


class RecordingRedisQueue(Recording, RedisQueue):
    def __init__(self, events: JsonlSink, ref: StreamRef, **kwargs: Any) -> None:
        super().__init__(ref, **kwargs)
        self.events = events

    def consumer_died(self, consumer: str) -> int:
        """`channel_returned` as the in-process queue logs it: the dead consumer's pending entries."""
        keys = sorted(set(self.return_held(consumer)))
        self.events.emit("channel_returned", consumer=consumer, keys=keys, why="died")
        return len(keys)


# -- conversions --------------------------------------------------------------------------------


def resolve_target(target: str, consumers: int, seed: int) -> str:
    """`consumer` means one consumer chosen by the run's seed."""
    if target == "consumer":
        return f"consumer-{random.Random(f'{seed}:target').randrange(consumers)}"
    return target


def fault_specs(scenario: Scenario, seed: int) -> list[FaultSpec]:
    """Every scenario fault as the fault layers read it (each layer keeps its own), a `consumer`
    target resolved to the consumer the run's seed picks. Ports stay indexes."""
    specs = []
    for index, fault in enumerate(scenario.faults):
        target = getattr(fault, "target", None)
        if target is not None:
            target = resolve_target(target, scenario.consumers.count, seed)
            fault = fault.model_copy(update={"target": target})
        specs.append(FaultSpec.of(index, fault))
    return specs


def check_spec(scenario: Scenario, seed: int, port_numbers: list[int]) -> CheckSpec:
    """The checker's view of a scenario; `port_numbers` are the ports descriptors advertise (the
    proxies' under network faults), which is what client events report."""
    faults = []
    for spec in fault_specs(scenario, seed):
        toxic = getattr(spec.fault, "toxic", None)
        faults.append(
            FaultRef(
                index=spec.index,
                kind=spec.kind,
                layer=spec.layer,
                ports=spec.ports,
                target=spec.target,
                window=spec.window,
                at_s=spec.at_s,
                delay_s=spec.delay_s,
                duration_s=spec.duration_s,
                toxic=toxic.type if toxic is not None else None,
                policy=scenario.ring.policy,
                host_link=bool(getattr(spec.fault, "between", None) or getattr(spec.fault, "isolate", None)),
                side=spec.side,
                phase=None if spec.phase is None else str(spec.phase),
            )
        )
    e = scenario.expect

    def which(value: str | list[int]) -> str | tuple[int, ...]:
        return value if isinstance(value, str) else tuple(value)

    return CheckSpec(
        duration_s=scenario.duration,
        ports=scenario.server.ports,
        faults=tuple(faults),
        expect=Expectations(
            lost=e.lost,
            duplicated=e.duplicated,
            corrupted=e.corrupted,
            in_doubt=e.in_doubt,
            consumed_by_dead_consumer=e.consumed_by_dead_consumer,
            slot_leak=e.slot_leak,
            drain_incomplete=e.drain_incomplete,
            faults_effective=which(e.faults_effective),  # type: ignore[arg-type]
            faults_fired=which(e.faults_fired),  # type: ignore[arg-type]
            faults_quarantined=which(e.faults_quarantined),  # type: ignore[arg-type]
            min_throughput=e.min_throughput,
            max_recovery_s=e.max_recovery,
            max_p99_latency_s=e.max_p99_latency,
        ),
        port_numbers=tuple(port_numbers),
        protocol=scenario.protocol,
    )


FaultStart = float | Path  # a fixed start time, or the file the runner writes it to once the roles are up


def _clock_args(start: FaultStart, duration: float) -> dict[str, Any]:
    """How a fault wrapper in another process learns the fault phase: a fixed time, or the start file."""
    if isinstance(start, Path):
        return {"run_start": None, "start_file": str(start), "duration": duration}
    return {"run_start": start, "heal_at": start + duration}


def server_options(
    sc: Scenario, specs: list[FaultSpec], seed: int, run_start: FaultStart, events_path: Path
) -> dict[str, Any]:
    """`ServerConfig` fields for a scenario's server: timeouts, its event log and, when the scenario
    has transport faults, the fault wrapper on its links (active from `run_start` for `duration`)."""
    has_transport = any(s.layer == "transport" and s.side == "server" for s in specs)
    return {
        "step_timeout": STEP_TIMEOUT_S,
        "lease": sc.server.lease if sc.server.lease is not None else max(30.0, 3 * STEP_TIMEOUT_S),
        "events_path": str(events_path),
        "link_wrapper": "chaos.faults.transport:make_link_wrapper" if has_transport else None,
        "link_wrapper_args": {
            "faults": [s for s in specs if s.layer == "transport" and s.side == "server"],
            "seed": seed,
            "read_timeout": sc.consumers.read_timeout,
            **_clock_args(run_start, sc.duration),
        }
        if has_transport
        else {},
    }


def client_link_wrapper_args(
    sc: Scenario, specs: list[FaultSpec], seed: int, run_start: FaultStart, advertised: list[int]
) -> dict[str, Any] | None:
    """`ChaosLinkWrapper` arguments for a consumer's own links when the scenario has client-side
    transport faults (None otherwise: no wrapper, no cost). Consumers see the advertised port numbers,
    the scenario speaks port indexes, hence `port_index`; each consumer adds its own RNG stream."""
    client = [s for s in specs if s.layer == "transport" and s.side == "client"]
    if not client:
        return None
    return {
        "faults": client,
        "seed": seed,
        "port_index": {port: index for index, port in enumerate(advertised)},
        "read_timeout": sc.consumers.read_timeout,
        "side": "client",
        **_clock_args(run_start, sc.duration),
    }


# -- process handles ----------------------------------------------------------------------------


Tracker = Callable[[int | None], None]


class ServerHandle(ServerProcess):
    """The server process under `server_role` (log file, stack dumps); `restart()` brings it back on
    the same ports with a fresh RNG stream. `track(pid)` is told of every process it starts. With `host`,
    it runs inside that simulated host."""

    def __init__(
        self, run_dir: Path, config: ServerConfig, track: Tracker = lambda pid: None, host: Host | None = None
    ) -> None:
        target = server_role if host is None else InHost(server_role, host.netns, host.ifname)
        super().__init__(config, target=target, target_args=(str(run_dir),))
        self.starts = 0
        self.track = track
        self.proc: Any = None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self, timeout: float = 60.0) -> list[int]:
        self.starts += 1
        if self.config.link_wrapper and self.starts > 1:
            self.config.link_wrapper_args = {
                **self.config.link_wrapper_args,
                "stream": f"server#{self.starts}",
            }
        try:
            return super().start(timeout)
        except TransportError as exc:
            raise HarnessError(f"{exc} (see logs/server.log)") from exc
        finally:
            self.proc = process_handle(self.process)
            self.track(self.pid)

    def restart(self) -> None:
        self.stop()
        self.start()


class RoleHandle:
    """A producer or consumer process; restart reconnects it to the channel."""

    def __init__(
        self,
        name: str,
        target: Callable[..., None],
        config: Any,
        channel: ChannelServer,
        stop: Any,
        track: Tracker = lambda pid: None,
    ) -> None:
        self.name = name
        self.target = target
        self.config = config
        self.channel = channel
        self.stop_event = stop
        self.track = track
        self.process: mp.process.BaseProcess | None = None
        self.proc: Any = None  # psutil.Process: what signals go through
        self.death_reported = False

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        is_consumer = self.name.startswith("consumer")
        client = self.channel.connect_consumer(self.name) if is_consumer else self.channel.connect(self.name)
        self.process = SPAWN.Process(
            target=self.target, args=(self.config, client, self.stop_event), name=f"chaos-{self.name}"
        )
        self.process.start()
        self.proc = process_handle(self.process)
        self.track(self.process.pid)
        client.close()  # the child has its own copy
        self.death_reported = False

    def restart(self) -> None:
        self.kill()
        self.report_death()
        self.start()

    def report_death(self) -> None:
        """Hand the dead consumer's un-acked descriptors to the others (at-least-once channel)."""
        if not self.death_reported and self.name.startswith("consumer"):
            self.channel.consumer_died(self.name)
        self.death_reported = True

    def kill(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.is_alive():  # not reaped yet: `proc` is still this child
            with contextlib.suppress(Exception):
                self.proc.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.join(timeout)

    def join(self, timeout: float) -> None:
        if self.process is not None:
            self.process.join(timeout)


# -- the run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RoleWiring:
    """What every role's config is built from: the channel, the ports consumers are given, the fault
    specs and the clock's first start, and the simulated hosts (None in port mode)."""

    channel: ChannelServer
    advertised: list[int]
    specs: list[FaultSpec]
    run_start: FaultStart  # the start file: the clock starts once every role is up
    hostnet: HostNetwork | None


@dataclass
class _Live:
    """What `_setup` started and the later phases drive; the cleanup steps `_setup` registered stop it."""

    events: JsonlSink
    ring: SharedRing
    server: ServerHandle
    channel: ChannelServer
    handles: dict[str, Any]  # role name -> handle: server, consumer-N, producer, redis
    stop_producing: Any  # SPAWN.Event: the producer stops at heal
    stop_consuming: Any  # SPAWN.Event: consumers stop after the drain
    process_faults: ProcessFaults
    run_start: float  # the fault phase's start (wall clock)
    advertised: list[int]  # the ports consumers were given (proxy ports under network faults)
    hostnet: HostNetwork | None
    network: NetworkFaults | None
    redis_server: RedisServer | None

    @property
    def consumers(self) -> list[Any]:
        return [h for n, h in self.handles.items() if n.startswith("consumer")]

    def report_deaths(self) -> None:
        """A consumer found dead hands its claimed descriptors back (each handle reports once)."""
        for handle in self.consumers:
            if not handle.alive():
                handle.report_death()


class ScenarioRun:
    def __init__(
        self,
        scenario: Scenario,
        run_dir: Path,
        *,
        seed: int | None = None,
        toxiproxy_url: str | None = None,
        redis_url: str | None = None,
        progress: Callable[[Progress], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.redis_url = redis_url
        self.seed = scenario.seed if seed is None else seed
        self.run_dir = run_dir
        self.toxiproxy_url = toxiproxy_url
        self.progress = progress or (lambda p: None)
        self.notes: list[str] = []
        self._children: list[Any] = []
        self.cleanup = RunCleanup(f"{run_dir.parent.name}-{scenario.name}")
        self._finished = threading.Event()
        self._deadline_hit = threading.Event()
        self._clock_started = threading.Event()

    # -- helpers ----------------------------------------------------------------------------------

    def _check_channel(self, channel: ChannelServer) -> None:
        """A dead channel thread fails the run as a harness error (exit 3), never as lost slots."""
        try:
            channel.check()
        except ChannelFailedError as exc:
            (self.run_dir / "logs" / "channel-error.log").write_text(channel.error_trace)
            raise HarnessError(f"{exc} (see logs/channel-error.log)") from exc

    def _report(self, phase: str, elapsed: float, channel: ChannelServer) -> None:
        self._check_channel(channel)
        stats = channel.stats()
        self.progress(
            Progress(
                self.scenario.name,
                phase,
                elapsed,
                self.scenario.duration,
                stats.published,
                stats.acked,
                stats.pending + stats.in_flight,
            )
        )

    def _procs(self) -> list[tuple[str, Any]]:
        """(name, psutil.Process) of every live child but Redis (SIGUSR1 dumps no Python stacks there)."""
        return [
            (getattr(handle, "name", "server"), handle.proc)
            for handle in self._children
            if handle.proc is not None and handle.alive() and not isinstance(handle, RedisServer)
        ]

    def dump_stacks(self) -> None:
        """Write every process's stacks to `stacks/<proc>.txt` (and the runner's to `stacks/runner.txt`).

        SIGUSR1 makes a child's faulthandler write its stacks to its log; what the log gained after
        the signal is copied out, so the stacks sit apart from the rest of the log.
        """
        stacks = self.run_dir / "stacks"
        stacks.mkdir(parents=True, exist_ok=True)
        with open(stacks / "runner.txt", "w") as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
        marks: dict[str, tuple[int, Path]] = {}
        for name, proc in self._procs():
            log = self.run_dir / "logs" / f"{name}.log"
            marks[name] = (log.stat().st_size if log.exists() else 0, log)
            try:
                proc.send_signal(signal.SIGCONT)  # a paused process cannot run its handler
                proc.send_signal(signal.SIGUSR1)
            except Exception:  # gone (psutil.NoSuchProcess): nothing to dump
                marks.pop(name)
        time.sleep(1.0)
        for name, (offset, log) in marks.items():
            with open(log, "rb") as f:
                f.seek(offset)
                dumped = f.read()
            (stacks / f"{name}.txt").write_bytes(dumped or b"(no stacks written within 1 s)\n")

    def _watchdog(self) -> None:
        """The deadline counts from launch, extended by however much longer than STARTUP_S the roles took
        to start (bounded by STARTUP_BUDGET_S): on a loaded box starting up can take longer than the run."""
        assert self.scenario.deadline is not None
        launched = time.monotonic()
        self._clock_started.wait(STARTUP_BUDGET_S)
        startup = time.monotonic() - launched
        remaining = self.scenario.deadline + max(0.0, startup - STARTUP_S) - startup
        if not self._finished.wait(max(0.0, remaining)):
            self.dump_stacks()  # first: the run stops when it sees the flag, and must not exit mid-dump
            self._deadline_hit.set()
            for handle in list(self._children):
                try:
                    handle.kill() if hasattr(handle, "kill") else handle.stop()
                except Exception:
                    pass

    # -- main -------------------------------------------------------------------------------------

    def run(self) -> Outcome:
        started = time.time()
        (self.run_dir / "events").mkdir(parents=True, exist_ok=True)
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        threading.Thread(target=self._watchdog, name="chaos-watchdog", daemon=True).start()
        verdict: Verdict | None = None
        error: str | None = None
        ports: list[int] = []
        try:
            ports = self._run_phases()
            if self._deadline_hit.is_set():
                raise HarnessError(f"deadline of {self.scenario.deadline:.0f}s passed; stacks in stacks/")
            verdict = self._judge(ports)
        except HarnessError as exc:
            error = str(exc)
        except HostsUnavailable as exc:
            error = str(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
            (self.run_dir / "logs" / "runner-error.log").write_text(traceback.format_exc())
        finally:
            self._finished.set()
            self._cleanup()
        if self._deadline_hit.is_set() and error is None:
            error = f"deadline of {self.scenario.deadline:.0f}s passed; stacks in stacks/"
            verdict = None
        return Outcome(
            self.scenario,
            self.seed,
            self.run_dir,
            verdict,
            error,
            started,
            time.time() - started,
            self.notes,
            self.cleanup_report,
        )

    cleanup_report: CleanupReport | None = None

    def _judge(self, ports: list[int]) -> Verdict:
        """The last phase: the merged history of every process, checked; then host-mode network effects."""
        history = read_history(self.run_dir)
        if history.skipped:
            self.notes.extend(f"skipped event line: {s}" for s in history.skipped[:10])
        verdict = check(history.events, check_spec(self.scenario, self.seed, ports))
        return self._judge_network_effects(verdict, history.events)

    def _judge_network_effects(self, verdict: Verdict, events: list[Any]) -> Verdict:
        """Host-mode network faults must show their effect on the slots' traffic (`ineffective: ...`)."""
        sc = self.scenario
        placement = sc.placement()
        if placement is None:
            return verdict
        refs = []
        for spec in fault_specs(sc, self.seed):
            if spec.layer != "network":
                continue
            f = spec.fault
            toxic = getattr(f, "toxic", None)
            refs.append(
                NetFaultRef(
                    index=spec.index,
                    kind=spec.kind,
                    affected=affected_consumers(placement, f.between, getattr(f, "isolate", None)),
                    toxic_type=toxic.type if toxic is not None else None,
                    attributes=toxic.attributes.model_dump() if toxic is not None else None,
                    rate=getattr(f, "rate", None),
                )
            )
        c = sc.consumers
        # A read that started under the fault may finish after every attempt of every round, and a
        # lost COMMITTED after its RESOLVE window too (the client's default, transport.client).
        settle_s = c.read_timeout * c.max_attempts * c.rounds + default_resolve_timeout(c.read_timeout)
        problems = judge(refs, events, c.read_timeout, settle_s=settle_s)
        if not problems:
            return verdict
        return dataclasses.replace(verdict, passed=False, failures=[*verdict.failures, *problems])

    def _cleanup(self) -> None:
        """Every step, signals held off, then every tracked resource verified gone (see cleanup.py)."""
        report = self.cleanup.close()
        self.cleanup_report = report
        if not report.clean or report.step_errors:
            self.notes.append(f"cleanup: {report.summary()}")

    def _step(self, name: str, fn: Callable[[], object]) -> None:
        self.cleanup.step(name, fn)

    def _run_phases(self) -> list[int]:
        """setup -> fault phase -> heal -> drain (then `run` calls `_judge`). Returns the ports consumers
        were given, which client events report (proxy ports under network faults)."""
        live = self._setup()
        self._fault_phase(live)
        self._heal(live)
        self._drain(live)
        self._stop_consumers(live)
        self._audit_ring(live)
        return live.advertised

    # -- setup ------------------------------------------------------------------------------------

    def _setup(self) -> _Live:
        """Start everything in dependency order, each piece's cleanup step registered as it exists:
        hosts, ring, server, proxies, channel, roles; then fix the fault clock."""
        sc = self.scenario
        events = JsonlSink(self.run_dir / "events" / "runner.jsonl", "runner")
        self._step("close the runner event log", events.close)
        self._check_entrypoint()
        # The simulated network first: building it takes a while, and must not eat the startup budget.
        specs = fault_specs(sc, self.seed)
        hostnet = self._start_hosts(events, specs)
        ring = self._create_ring()
        launched = time.time()
        # Every fault clock starts once every role is up (and not before STARTUP_S): processes in other
        # processes read it from this file, the channel's control faults are told, the producer waits on
        # a shared value. So a slow start on a loaded box delays the fault phase instead of eating it.
        start_file = self.run_dir / "fault-start"
        server, server_ports, lease = self._start_server(ring, specs, start_file, hostnet)
        network, advertised = self._start_proxies(server_ports, events, hostnet, specs)
        control = ControlFaults(specs, self.seed, events, None)
        redis_server = self._start_redis() if sc.channel == "redis" else None
        channel = ChannelServer(self._queue(events, control)).start()
        self._step("stop the channel", channel.stop)
        stop_producing = SPAWN.Event()
        stop_consuming = SPAWN.Event()
        self._step("tell consumers to stop", stop_consuming.set)
        handles: dict[str, Any] = {"server": server}
        roles = _RoleWiring(channel, advertised, specs, start_file, hostnet)
        handles.update(self._consumer_handles(roles, lease, stop_consuming))
        start_at = SPAWN.Value("d", 0.0, lock=False)
        handles["producer"] = self._producer_handle(roles, ring, start_at, stop_producing)
        self._start_roles(handles, redis_server, specs)
        up = self._wait_for_roles([n for n in handles if n != "server"], ROLE_READY_TIMEOUT_S)
        events.emit("roles_up", waited_s=round(up - launched, 3))
        run_start = max(launched + STARTUP_S, up + 1.0)
        heal_at = run_start + sc.duration
        write_start(start_file, run_start)
        control.start(run_start, heal_at)
        start_at.value = run_start
        process_faults = ProcessFaults(specs, handles, self.seed, events, run_start, heal_at=heal_at)
        self._step("close process faults", process_faults.close)
        return _Live(
            events, ring, server, channel, handles, stop_producing, stop_consuming, process_faults,
            run_start, advertised, hostnet, network, redis_server,
        )  # fmt: skip

    def _check_entrypoint(self) -> None:
        """Here, not in each consumer: a typo is one clear harness error, not a silent drain."""
        if self.scenario.consumers.entrypoint:
            try:
                load_entrypoint(self.scenario.consumers.entrypoint)
            except (ImportError, AttributeError, TypeError) as exc:
                raise HarnessError(str(exc)) from exc

    def _start_hosts(self, events: JsonlSink, specs: list[FaultSpec]) -> HostNetwork | None:
        """The simulated hosts and their links (host mode only), with the kernel faults they carry."""
        sc = self.scenario
        if sc.placement() is None:
            return None
        from chaos.hosts.schedule import HostNetwork

        net_faults = [s for s in specs if s.layer == "network"]
        run_id = f"{self.run_dir.parent.name}.{self.run_dir.name}"
        register_kind("netns", exists=netns.exists, remove=netns.remove)
        track = functools.partial(self.cleanup.track, "netns")
        hostnet = HostNetwork(run_id, sc.host_names(), net_faults, sc.duration, self.seed, events, track)
        self._step("remove the simulated hosts", hostnet.close)
        hostnet.start()
        return hostnet

    def _create_ring(self) -> SharedRing:
        ring_cfg = self.scenario.ring
        ring = SharedRing.create(ring_cfg.slots, ring_cfg.slot_bytes, policy=ring_cfg.policy)
        self.cleanup.track("segment", f"{SHM_DIR}/{ring.name}")
        self._step("close and unlink the ring", lambda: self._close_ring(ring))
        return ring

    def _start_server(
        self, ring: SharedRing, specs: list[FaultSpec], run_start: FaultStart, hostnet: HostNetwork | None
    ) -> tuple[ServerHandle, list[int], float]:
        """The producer's server process (in its host under host mode): its handle, ports and lease."""
        sc = self.scenario
        server_config = ServerConfig(
            ring_name=ring.name,
            ports=[0] * sc.server.ports,
            protocol=sc.protocol,
            idle_evict=sc.server.idle_evict,
            **server_options(sc, specs, self.seed, run_start, self.run_dir / "events" / "server.jsonl"),
        )
        host = self._host_of(hostnet, "server")
        server = ServerHandle(self.run_dir, server_config, self.cleanup.track_process, host)
        self._children.append(server)
        self._step("stop the server", server.stop)
        return server, server.start(), server_config.lease

    def _host_of(self, hostnet: HostNetwork | None, role: str) -> Host | None:
        placement = self.scenario.placement()
        return None if hostnet is None or placement is None else hostnet.fabric.host(placement[role])

    def _start_proxies(
        self, server_ports: list[int], events: JsonlSink, hostnet: HostNetwork | None, specs: list[FaultSpec]
    ) -> tuple[NetworkFaults | None, list[int]]:
        """Port mode's network faults: a proxy in front of each server port. Returns the network fault
        driver (None without network faults or in host mode) and the ports consumers are given."""
        sc = self.scenario
        if hostnet is not None or not any(s.layer == "network" for s in specs):
            return None, list(server_ports)
        from chaos.proxy.control import ProxyController

        proxies = ProxyController(self.toxiproxy_url, seed=self.seed)
        self._step("close the proxies", proxies.close)
        advertised = [proxies.add_port(i, port) for i, port in enumerate(server_ports)]
        if self.toxiproxy_url is None:  # our own listeners: verified closed at the end
            for port in (proxies.api_port, *advertised):
                self.cleanup.track("port", port_id(port))
        network = NetworkFaults([s for s in specs if s.layer == "network"], sc.duration, proxies, events)
        self._step("heal network faults", network.heal)
        return network, advertised

    def _consumer_handles(
        self, roles: _RoleWiring, lease: float, stop_consuming: Any
    ) -> dict[str, RoleHandle]:
        """One handle per consumer (not started), in its host under host mode."""
        sc = self.scenario
        handles = {}
        for i in range(sc.consumers.count):
            name = f"consumer-{i}"
            cfg = ConsumerConfig(
                run_dir=str(self.run_dir),
                name=name,
                seed=self.seed,
                protocol=sc.protocol,
                batch=sc.consumers.batch,
                read_timeout=sc.consumers.read_timeout,
                quarantine=sc.consumers.quarantine,
                max_attempts=sc.consumers.max_attempts,
                rounds=sc.consumers.rounds,
                entrypoint=sc.consumers.entrypoint,
                warm=(HOST, tuple(roles.advertised)) if sc.consumers.transport == "ucx" else None,
                transport=sc.consumers.transport,
                borrow=sc.consumers.borrow,
                hold=sc.consumers.hold,
                lease=lease,
                link_wrapper_args=client_link_wrapper_args(
                    sc, roles.specs, self.seed, roles.run_start, roles.advertised
                ),
            )
            host = self._host_of(roles.hostnet, name)
            target = consumer_main if host is None else InHost(consumer_main, host.netns, host.ifname)
            handles[name] = RoleHandle(
                name, target, cfg, roles.channel, stop_consuming, self.cleanup.track_process
            )
        return handles

    def _producer_handle(
        self, roles: _RoleWiring, ring: SharedRing, start_at: Any, stop_producing: Any
    ) -> RoleHandle:
        """The producer's handle (not started): it waits for `start_at`, the fault clock's start."""
        sc, hostnet, placement = self.scenario, roles.hostnet, self.scenario.placement()
        producer_cfg = ProducerConfig(
            run_dir=str(self.run_dir),
            ring_name=ring.name,
            host=HOST if hostnet is None or placement is None else hostnet.address(placement["server"]),
            ports=tuple(roles.advertised),
            seed=self.seed,
            rate=sc.producer.rate,
            min_bytes=sc.producer.payload.min,
            max_bytes=sc.producer.payload.max,
            count=sc.producer.count,
            protocol=sc.protocol,
        )
        return RoleHandle(
            "producer",
            delayed_producer_main,
            (producer_cfg, start_at),
            roles.channel,
            stop_producing,
            self.cleanup.track_process,
        )

    def _start_roles(
        self, handles: dict[str, Any], redis_server: RedisServer | None, specs: list[FaultSpec]
    ) -> None:
        """Start the consumers and the producer (the server already runs); Redis joins the handles so
        process faults can target it."""
        if redis_server is not None:
            handles["redis"] = redis_server
        elif any(s.target == "redis" for s in specs):
            raise HarnessError("process faults on redis need the embedded server (drop --redis URL)")
        for name, handle in handles.items():
            if name in ("server", "redis"):
                continue
            self._children.append(handle)
            self._step(f"kill {name}", handle.kill)
            handle.start()

    # -- fault phase, heal, drain -----------------------------------------------------------------

    def _fault_phase(self, live: _Live) -> None:
        """Wait for the clock, then tick every fault driver until `duration` passed (or the deadline)."""
        sc = self.scenario
        while time.time() < live.run_start:
            self._report("starting", 0.0, live.channel)
            time.sleep(0.1)
        live.events.emit("phase", name="faults")
        self._clock_started.set()
        last_report = 0.0
        while not self._deadline_hit.is_set():
            now = time.time()
            elapsed = now - live.run_start
            if elapsed >= sc.duration:
                break
            if live.network is not None:
                live.network.tick(elapsed)
            if live.hostnet is not None:
                live.hostnet.tick(elapsed)
            live.process_faults.tick(now)
            live.report_deaths()
            if now - last_report >= 0.25:
                self._report("faults", elapsed, live.channel)
                last_report = now
            time.sleep(0.05)

    def _heal(self, live: _Live) -> None:
        """The producer stops, every fault heals, and a server or Redis left down is started again."""
        events = live.events
        live.stop_producing.set()
        events.emit("phase", name="heal")
        live.process_faults.heal()
        if live.network is not None:
            live.network.heal()
        redis_server = live.redis_server
        if redis_server is not None and not redis_server.alive():
            self.notes.append("redis was down at heal: restarted")
            redis_server.start()
            events.emit("proc_exit", target="redis", pid=redis_server.pid, how="restarted")
        if live.hostnet is not None:
            live.hostnet.heal()
        live.channel.heal()
        if not live.server.alive():
            self.notes.append("server was down at heal: restarted")
            live.server.start()
            events.emit("proc_exit", target="server", pid=live.server.pid, how="restarted")
        live.handles["producer"].join(10.0)

    def _drain(self, live: _Live) -> None:
        """Consumers empty the channel, bounded by `drain_timeout`; the outcome is logged as `drain`."""
        sc, channel, events = self.scenario, live.channel, live.events
        events.emit("phase", name="drain")
        drain_start = time.time()
        drain_end = drain_start + sc.drain_timeout
        while time.time() < drain_end and not self._deadline_hit.is_set():
            live.report_deaths()
            if channel.empty():
                break
            self._report("drain", time.time() - live.run_start, channel)
            time.sleep(0.1)
        else:
            if not channel.empty():
                self.notes.append(f"drain timed out after {sc.drain_timeout:.0f}s with descriptors left")
        left = channel.stats()
        events.emit(
            "drain",
            complete=channel.empty(),
            pending=left.pending,
            in_flight=left.in_flight,
            seconds=round(time.time() - drain_start, 3),
        )
        events.emit("phase", name="done")
        self._report("check", time.time() - live.run_start, channel)  # raises if the channel died

    def _stop_consumers(self, live: _Live) -> None:
        """Consumers get CONSUMER_EXIT_S together to exit; a straggler is killed (its work is logged)."""
        live.stop_consuming.set()
        exit_by = time.time() + CONSUMER_EXIT_S
        for handle in live.consumers:
            handle.join(max(0.1, exit_by - time.time()))
            if handle.alive():  # its work is acked and logged; seen: UCX teardown hanging after cut links
                self.notes.append(
                    f"{handle.name} did not exit within {CONSUMER_EXIT_S:.0f}s of the stop: killed"
                )
                handle.kill()

    def _audit_ring(self, live: _Live) -> None:
        """The ring's final state for the checker, and a note naming slots left mid-transition."""
        live.events.emit("ring_audit", **ring_audit(live.ring))
        leftover = [
            info for info in live.ring.snapshot() if info.state in (SlotState.READING, SlotState.WRITING)
        ]
        if leftover:
            self.notes.append(
                "slots left mid-transition: " + ", ".join(f"{i.slot}:{i.state.name}" for i in leftover[:10])
            )

    def _start_redis(self) -> RedisServer | None:
        """The run's own Redis (None with `--redis URL`): data and log in the run directory."""
        if self.redis_url is not None:
            return None
        server = RedisServer(
            self.run_dir / "redis",
            log_path=self.run_dir / "logs" / "redis.log",
            on_start=self.cleanup.track_process,
        )
        self._children.append(server)
        self._step("stop redis", server.stop)
        self.cleanup.track("port", port_id(server.port))
        try:
            return server.start()
        except RedisServerError as exc:
            raise HarnessError(str(exc)) from exc

    def _queue(self, events: JsonlSink, control: ControlFaults) -> DescriptorQueue | RedisQueue:
        """The channel's core: the in-process queue, or the run's stream on Redis."""
        if self.scenario.channel != "redis":
            return RecordingQueue(events, visibility_timeout=VISIBILITY_TIMEOUT_S, control=control)
        url = self.redis_url
        if url is None:
            redis_handle = next(c for c in self._children if isinstance(c, RedisServer))
            url = redis_handle.url
        ref = StreamRef.for_run(url, f"{self.run_dir.name}-{time.time_ns()}", VISIBILITY_TIMEOUT_S)
        queue = RecordingRedisQueue(events, ref, control=control)
        self._step("delete the run's stream", queue.close)
        return queue

    def _wait_for_roles(self, names: list[str], timeout: float) -> float:
        """When every role has started (its log file exists: its imports are done), bounded by `timeout`."""
        deadline = time.time() + timeout
        logs = [self.run_dir / "logs" / f"{name}.log" for name in names]
        while time.time() < deadline and not self._deadline_hit.is_set():
            if all(log.exists() for log in logs):
                break
            time.sleep(0.05)
        return time.time()

    def _close_ring(self, ring: SharedRing) -> None:
        ring.close()
        ring.unlink()


def ring_audit(ring: SharedRing, tries: int = 5) -> dict[str, int]:
    """`ready_count()` next to a snapshot's count of slots per state, for the checker to compare.

    Taken after the drain, when nothing writes or reads; a late reclaim can still turn READING into
    READY, so the snapshot is retaken until `ready_count()` is the same before and after it.
    """
    for _ in range(tries):
        before = ring.ready_count()
        states = Counter(info.state for info in ring.snapshot())
        after = ring.ready_count()
        if before == after:
            break
        time.sleep(0.05)
    return {
        "ready_count": after,
        "slots": ring.slots,
        **{state.name.lower(): states[state] for state in SlotState},
    }


def run_scenario(
    scenario: Scenario,
    run_dir: Path,
    *,
    seed: int | None = None,
    toxiproxy_url: str | None = None,
    redis_url: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> Outcome:
    """`redis_url`: for `channel: redis`, use this server instead of starting one (no `redis`
    process faults then: the harness does not own that process)."""
    return ScenarioRun(
        scenario, run_dir, seed=seed, toxiproxy_url=toxiproxy_url, redis_url=redis_url, progress=progress
    ).run()
