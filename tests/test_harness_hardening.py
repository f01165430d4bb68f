"""Harness hardening: a dead channel thread is a harness error, report files are replaced atomically,
process faults never signal a pid that now belongs to another process."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from spawned import SpawnedProcess

from chaos.channel import ChannelClosedError, ChannelFailedError, ChannelServer, DescriptorQueue
from chaos.faults.base import FaultSpec
from chaos.faults.process import ProcessFaults
from chaos.report import write_reports
from chaos.runner import orchestrator
from chaos.scenario import parse_scenario

pytestmark = pytest.mark.timeout(170)


class Events:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, event: str, /, **fields: Any) -> None:
        self.events.append((event, fields))


class BrokenQueue(DescriptorQueue):
    """Publishes `ok` descriptors, then the queue itself fails (a bug in the harness)."""

    def __init__(self, ok: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.ok = ok

    def publish(self, descriptor: dict[str, Any], now: float | None = None) -> list[int]:
        if self.stats.published >= self.ok:
            raise RuntimeError("queue bug")
        return super().publish(descriptor, now)


def test_a_dead_channel_thread_is_reported_and_closes_its_clients() -> None:
    server = ChannelServer(BrokenQueue(1), rpc_timeout=30.0).start()
    client = server.connect("producer")
    try:
        assert client.publish({"slot": 0, "generation": 1}) == [1]
        started = time.monotonic()
        with pytest.raises(ChannelClosedError):
            client.publish({"slot": 1, "generation": 1})
        assert time.monotonic() - started < 10.0, "the client learns at once, not after its timeout"
        with pytest.raises(ChannelFailedError, match="queue bug"):
            server.check()
        assert "RuntimeError: queue bug" in server.error_trace
    finally:
        client.close()
        server.stop()


def test_a_channel_failure_fails_the_scenario_as_a_harness_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the thread died silently and the checker blamed the transport for 'lost' slots. The
    failure is injected into the consumers' claims, which start as soon as a consumer is up (no
    dependency on the producer's timing on a loaded machine)."""
    claims = {"n": 0}
    real = orchestrator.RecordingQueue.claim

    def failing(self: Any, consumer: str, n: int = 1, now: float | None = None) -> Any:
        claims["n"] += 1
        if claims["n"] > 2:
            raise RuntimeError("channel bug injected by the test")
        return real(self, consumer, n, now)

    monkeypatch.setattr(orchestrator.RecordingQueue, "claim", failing)
    scenario = parse_scenario(
        "name: channel-dies\nseed: 1\nduration: 6s\ndrain_timeout: 10s\n"
        "ring: {slots: 8, slot_bytes: 16KiB}\nproducer: {rate: 40/s, payload: {min: 1KiB, max: 4KiB}}\n"
        "server: {ports: 1}\nconsumers: {count: 1, batch: 2, read_timeout: 1s}\n"
        "expect: {faults_fired: none}\n"
    )
    outcome = orchestrator.run_scenario(scenario, tmp_path / "run")
    assert claims["n"] > 2, "the injected failure really happened"
    assert outcome.status == "error" and outcome.verdict is None, outcome.error
    assert "descriptor channel failed" in (outcome.error or "")
    assert "channel bug injected" in (tmp_path / "run" / "logs" / "channel-error.log").read_text()
    assert outcome.cleanup is not None and outcome.cleanup.clean, outcome.cleanup


def test_every_report_file_is_replaced_atomically(tmp_path: Path) -> None:
    """A rename gives each file a new inode; an in-place write (the old junit/summary/html) keeps it,
    and a reader could see half a file."""
    from test_report import make_run

    out = tmp_path / "reports"
    first = write_reports(make_run(), out)
    files = [first.results_json, first.junit_xml, first.summary_md, first.report_html]
    before = {p.name: p.stat().st_ino for p in files}
    write_reports(make_run(), out)
    for path in files:
        assert path.stat().st_ino != before[path.name], f"{path.name} was rewritten in place"
    assert sorted(p.name for p in out.iterdir()) == sorted(before), "no temp file left behind"


def test_process_faults_never_signal_a_reused_pid() -> None:
    """The handle's process is gone and its pid now names another process: nothing is signalled."""
    victim = SpawnedProcess(time.sleep, (60,), name="victim")
    try:
        assert victim.proc is not None
        # Pretend the handle was taken on an older process that had the same pid.
        older = victim.proc.create_time() - 1000.0
        victim.proc._create_time = older  # type: ignore[attr-defined]
        victim.proc._ident = (victim.proc.pid, older)  # type: ignore[attr-defined]
        faults = ProcessFaults(
            [FaultSpec.parse(0, kind="kill", target="server")], {"server": victim}, 1, Events(), 0.0
        )
        assert faults.tick(time.time()) == [], "a process that is not the handle's is left alone"
        time.sleep(0.3)
        assert psutil.Process(victim.pid or 0).status() != psutil.STATUS_ZOMBIE
        assert victim.process is not None and victim.process.is_alive(), "the other process survived"
    finally:
        if victim.process is not None:
            victim.process.kill()
            victim.process.join(5)
