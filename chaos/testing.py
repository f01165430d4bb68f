"""A chaos world for a trainer's own tests: a faulty producer, and a verdict at exit.

    import chaos

    with chaos.world("scenarios/transport-reset-payload.yaml") as world:
        descriptors = [world.publish(rollout) for rollout in rollouts]
        batch = my_packer.fetch(descriptors)          # the trainer's own code, any client
        world.record(descriptors, batch)              # or world.delivered(desc, payload) per payload
    # leaving the block judged the history: lost, duplicated, corrupted, fault coverage ...

The world starts the scenario's ring and server (a real `transport.Producer`, server in its own
process) with the scenario's **transport** faults on the server's links, active from the start of
the block for the scenario's `duration`. Network, process and control faults need the full runner
(`chaos run`); a world lists them in `notes` and leaves them out, with the expectations that name
them. Timing expectations (`min_throughput`, `max_recovery`) are the test's business and not checked.

Whatever the test publishes must be reported delivered exactly once: a published slot never
reported is `lost`, one reported twice `duplicated`, a payload whose checksum is not the
descriptor's `corrupted`. `world.consumer()` / `world.async_consumer()` give clients with the
scenario's settings that log retries and quarantines to the world's history; any other client works.

With pytest, the `chaos_world` fixture (plugin `chaos.pytest_plugin`) does the same per test:
`@pytest.mark.chaos_scenario("path.yaml")` names the scenario; a failed verdict fails the test.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from chaos.channel import emit_published
from chaos.checker import Verdict, check
from chaos.history import read_history
from chaos.runner.orchestrator import check_spec, fault_specs, server_options
from chaos.scenario import Scenario, load_scenario
from chaos.trainer import DeliverySink
from transport.descriptor import SlotDescriptor
from transport.events import JsonlSink
from transport.facade import AsyncConsumer, Consumer, Producer
from transport.packer import BatchResult


class ChaosVerdictError(AssertionError):
    """The world's history failed its scenario's expectations."""


def transport_only(scenario: Scenario) -> tuple[Scenario, list[str]]:
    """The scenario with only its transport faults (expectations renumbered), and what was left out."""
    kept = [i for i, f in enumerate(scenario.faults) if f.layer == "transport"]
    renumber = {old: new for new, old in enumerate(kept)}
    notes = [
        f"fault {i} ({f.kind}) left out: {f.layer} faults need `chaos run`"
        for i, f in enumerate(scenario.faults)
        if i not in renumber
    ]

    def keep(which: Any) -> Any:
        return which if isinstance(which, str) else [renumber[i] for i in which if i in renumber]

    data = scenario.to_dict()
    data["faults"] = [data["faults"][i] for i in kept]
    expect = data["expect"]
    expect.update(
        faults_fired=keep(scenario.expect.faults_fired),
        faults_quarantined=keep(scenario.expect.faults_quarantined),
        min_throughput=None,
        max_recovery=None,
    )
    return Scenario.from_dict(data, source=str(scenario.source or scenario.name)), notes


class ChaosWorld:
    """See the module docstring. Use as a context manager (or call `start()` / `close()`)."""

    def __init__(
        self,
        scenario: str | os.PathLike[str] | Scenario,
        *,
        run_dir: str | os.PathLike[str] | None = None,
        seed: int | None = None,
        strict: bool = True,
    ) -> None:
        loaded = scenario if isinstance(scenario, Scenario) else load_scenario(Path(scenario))
        self.scenario, self.notes = transport_only(loaded)
        self.seed = self.scenario.seed if seed is None else seed
        self.run_dir = (
            Path(run_dir) if run_dir else Path(tempfile.mkdtemp(prefix=f"chaos-world-{loaded.name}-"))
        )
        self.strict = strict
        self.verdict: Verdict | None = None
        self.producer: Producer | None = None
        self._events: JsonlSink | None = None
        self._sink: DeliverySink | None = None
        self._clients: list[Any] = []

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ChaosWorld:
        sc = self.scenario
        events_dir = self.run_dir / "events"
        self._events = JsonlSink(events_dir / "world.jsonl", "world")
        self._sink = DeliverySink(self._events, self.seed, {})
        run_start = time.time()
        self.producer = Producer(
            slots=sc.ring.slots,
            slot_bytes=sc.ring.slot_bytes,
            ports=sc.server.ports,
            policy=sc.ring.policy,
            protocol=sc.protocol,
            idle_evict=sc.server.idle_evict,
            same_host=sc.consumers.transport == "local",  # else the faults' UCX links would be bypassed
            server_options=server_options(
                sc, fault_specs(sc, self.seed), self.seed, run_start, events_dir / "server.jsonl"
            ),
        )
        self._events.emit("phase", name="faults")
        return self

    def close(self) -> Verdict:
        """Stop the server, read the history and judge it (`self.verdict`)."""
        if self.verdict is not None:
            return self.verdict
        assert self._events is not None and self.producer is not None, "world was never started"
        for closable in self._clients:
            try:
                closable.close()
            except Exception:
                pass
        try:
            self.producer.close()
        finally:
            self._events.emit("phase", name="done")
            self._events.close()
        history = read_history(self.run_dir)
        self.verdict = check(history.events, check_spec(self.scenario, self.seed, list(self.producer.ports)))
        return self.verdict

    def __enter__(self) -> ChaosWorld:
        return self.start()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        verdict = self.close()
        if self.strict and exc_type is None and not verdict.passed:
            raise ChaosVerdictError(self.explain())

    def explain(self) -> str:
        v = self.verdict
        if v is None:
            return "not judged yet"
        lines = [f"scenario {self.scenario.name} (seed {self.seed}): {'passed' if v.passed else 'FAILED'}"]
        lines += [f"  {f}" for f in v.failures]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append(f"  history: {self.run_dir / 'events'}")
        return "\n".join(lines)

    # -- what a test does ------------------------------------------------------------------------

    def publish(self, data: Any, timeout: float | None = None) -> SlotDescriptor:
        """Write one payload into the ring and record it as published (it must be delivered once)."""
        assert self.producer is not None and self._events is not None, "use the world inside `with`"
        desc = self.producer.put(data, timeout=timeout)
        emit_published(self._events, desc.to_dict())
        return desc

    def delivered(self, descriptor: SlotDescriptor, payload: np.ndarray) -> None:
        """Report one payload the code under test delivered."""
        assert self._sink is not None
        self._sink.delivered(descriptor, payload)

    def record(self, descriptors: Sequence[SlotDescriptor], batch: BatchResult) -> None:
        """Report a whole `BatchResult` (payloads delivered, failures failed)."""
        assert self._sink is not None
        self._sink.record(descriptors, batch)

    def _client_options(self, overrides: dict[str, Any]) -> dict[str, Any]:
        c = self.scenario.consumers
        options: dict[str, Any] = {
            "read_timeout": c.read_timeout,
            "quarantine": c.quarantine,
            "max_attempts": c.max_attempts,
            "rounds": c.rounds,
            "concurrency": c.batch,
            "protocol": self.scenario.protocol,
        }
        events = JsonlSink(self.run_dir / "events" / f"client-{len(self._clients)}.jsonl", "client")
        self._clients.append(events)
        return {**options, "events": events, **overrides}

    def consumer(self, **overrides: Any) -> Consumer:
        """A sync `Consumer` with the scenario's client settings (closed with the world)."""
        client = Consumer(**self._client_options(overrides))
        self._clients.insert(0, client)
        return client

    def async_consumer(self, **overrides: Any) -> AsyncConsumer:
        """An `AsyncConsumer` with the scenario's settings; close it yourself (`await .close()`)."""
        return AsyncConsumer(**self._client_options(overrides))


def world(
    scenario: str | os.PathLike[str] | Scenario,
    *,
    run_dir: str | os.PathLike[str] | None = None,
    seed: int | None = None,
    strict: bool = True,
) -> ChaosWorld:
    """`with chaos.world("scenario.yaml") as w:` (see the module docstring)."""
    return ChaosWorld(scenario, run_dir=run_dir, seed=seed, strict=strict)
