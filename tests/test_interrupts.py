"""Interrupts: `chaos run` cleans up on SIGINT (twice), a `-j 2` parent on SIGTERM (twice), and a new run
sweeps what a SIGKILLed runner left. Checked from the outside: processes, /dev/shm segments, proxy ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from chaos.runner.cleanup import port_open

pytestmark = pytest.mark.timeout(300)

SCENARIO = """
name: {name}
seed: 3
duration: {duration}
drain_timeout: 10s
ring: {{slots: 8, slot_bytes: 64KiB}}
producer: {{rate: 50/s, payload: {{min: 1KiB, max: 8KiB}}}}
server: {{ports: 2}}
consumers: {{count: 1, batch: 4, read_timeout: 1s, quarantine: 1s}}
faults: {faults}
expect: {{faults_fired: none}}
"""
DOWN = "[{kind: down, ports: [0], window: {start: 50s, end: 55s}}]"  # starts the embedded proxy


def scenario(tmp: Path, name: str, duration: str = "60s", faults: str = DOWN) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, duration=duration, faults=faults))
    return path


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private shm tag and run-state directory, so only this test's leftovers are looked at."""
    tag = f"int{os.getpid()}x{time.monotonic_ns() % 10**6}"
    yield {**os.environ, "SLOTWIRE_SHM_TAG": tag, "SLOTWIRE_RUN_STATE": str(tmp_path / "state")}
    for seg in Path("/dev/shm").glob(f"slotwire-{tag}-*"):  # a failing test must not leak either
        seg.unlink(missing_ok=True)


def segments(env: dict[str, str]) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"slotwire-{env['SLOTWIRE_SHM_TAG']}-*"))


def start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "chaos.cli", "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_run(proc: subprocess.Popen[str], env: dict[str, str], children: int) -> list[psutil.Process]:
    """Until `children` descendants run, the ring exists and the proxy listens; returns descendants."""
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        kids = parent.children(recursive=True)
        if len(kids) >= children and segments(env) and listening(parent, kids):
            time.sleep(2.0)  # well inside the fault phase
            return parent.children(recursive=True)
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"the run never got going: {parent.children(recursive=True)}")


def listening(*procs: psutil.Process | list[psutil.Process]) -> list[int]:
    """TCP ports in LISTEN state held by these processes."""
    flat: list[psutil.Process] = []
    for p in procs:
        flat += p if isinstance(p, list) else [p]
    ports = []
    for p in flat:
        try:
            ports += [c.laddr.port for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
        except psutil.Error:
            pass
    return ports


def assert_nothing_left(env: dict[str, str], procs: list[psutil.Process], ports: list[int]) -> None:
    _gone, alive = psutil.wait_procs(procs, timeout=30)
    assert not alive, f"left running: {alive}"
    assert not segments(env), f"segments left in /dev/shm: {segments(env)}"
    assert not [p for p in ports if port_open(p)], f"proxy ports still open: {ports}"
    state = Path(env["SLOTWIRE_RUN_STATE"])
    assert not list(state.glob("*.json")), f"run-state records left: {list(state.glob('*.json'))}"


def interrupt_twice(proc: subprocess.Popen[str], sig: signal.Signals) -> tuple[str, str]:
    """The first signal starts the teardown; the second arrives while it runs and must not cut it short."""
    proc.send_signal(sig)
    time.sleep(0.7)
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.communicate(timeout=120)


def test_sigint_twice_mid_run_cleans_up_everything(tmp_path: Path, env: dict[str, str]) -> None:
    proc = start(env, str(scenario(tmp_path, "int-sigint")), "--out", str(tmp_path / "run"))
    try:
        kids = wait_for_run(proc, env, children=3)
        ports = listening(psutil.Process(proc.pid))
        assert len(ports) >= 2, "the embedded proxy's API and port 0's proxy listen"
        _out, err = interrupt_twice(proc, signal.SIGINT)
        assert proc.returncode == 3, err
        assert "cleanup verified: no process, segment or proxy port of this run left" in err, err
        assert_nothing_left(env, kids, ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_sigterm_twice_to_a_j2_parent_cleans_up_both_workers(tmp_path: Path, env: dict[str, str]) -> None:
    files = [str(scenario(tmp_path, f"int-par-{i}")) for i in range(2)]
    proc = start(env, "-j", "2", *files, "--out", str(tmp_path / "run"))
    try:
        kids = wait_for_run(proc, env, children=2 * 4)  # per worker: itself, server, producer, consumer
        deadline = time.monotonic() + 60
        while len(segments(env)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(segments(env)) == 2, "both scenarios have their ring"
        kids = psutil.Process(proc.pid).children(recursive=True)
        ports = listening(kids)
        _out, err = interrupt_twice(proc, signal.SIGTERM)
        assert proc.returncode == 3, err
        assert "cleanup verified" in err, err
        assert_nothing_left(env, kids, ports)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_a_new_run_sweeps_what_a_sigkilled_runner_left(tmp_path: Path, env: dict[str, str]) -> None:
    proc = start(env, str(scenario(tmp_path, "int-killed")), "--out", str(tmp_path / "run1"))
    try:
        kids = wait_for_run(proc, env, children=3)
        left_segments = segments(env)
        proc.kill()  # SIGKILL: no teardown at all
        proc.wait(30)
        records = list(Path(env["SLOTWIRE_RUN_STATE"]).glob("*.json"))
        assert records and left_segments == segments(env), "the killed run left its record and its ring"
        quick = scenario(tmp_path, "int-next", duration="2s", faults="[]")
        done = subprocess.run(
            [sys.executable, "-m", "chaos.cli", "run", str(quick), "--out", str(tmp_path / "run2")],
            capture_output=True,
            text=True,
            env=env,
            timeout=200,
        )
        assert "swept leftovers of a killed run" in done.stderr, done.stderr
        assert_nothing_left(env, kids, [])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
