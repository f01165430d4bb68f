"""`chaos run` / `chaos replay` end to end: real processes, exit codes 0/1/2/3, reports, cleanup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.timeout(400)  # two real runs each; a loaded CI box is slow

QUICK = """
name: {name}
seed: 5
duration: 3s
drain_timeout: {drain}
deadline: {deadline}
ring: {{slots: 8, slot_bytes: 64KiB}}
producer: {{rate: 50/s, payload: {{min: 1KiB, max: 16KiB}}}}
server: {{ports: 2}}
consumers: {{count: {consumers}, batch: 4, read_timeout: 1s, quarantine: 1s}}
faults: {faults}
expect:
  faults_fired: {fired}
  min_throughput: {throughput}
"""


def scenario(
    path: Path,
    name: str,
    *,
    throughput: str = "1/s",  # liveness is not what these tests check; the box may be loaded
    faults: str = "[]",
    fired: str = "none",
    consumers: int = 1,
    drain: str = "10s",
    deadline: str = "60s",
) -> Path:
    file = path / f"{name}.yaml"
    file.write_text(
        QUICK.format(
            name=name,
            throughput=throughput,
            faults=faults,
            fired=fired,
            consumers=consumers,
            drain=drain,
            deadline=deadline,
        )
    )
    return file


def chaos(*args: str, timeout: float = 250) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chaos.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_passing_run_writes_every_report_and_replays(tmp_path: Path) -> None:
    file = scenario(
        tmp_path, "quick-pass", faults="[{kind: reset, phase: payload, probability: 0.5}]", fired="all"
    )
    out = tmp_path / "run"
    done = chaos("run", str(file), "--out", str(out), "--junit", str(tmp_path / "junit.xml"))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("results.json", "junit.xml", "summary.md", "report.html"):
        assert (out / name).is_file(), name
    assert (tmp_path / "junit.xml").is_file()
    results = json.loads((out / "results.json").read_text())
    [sc] = results["scenarios"]
    assert sc["status"] == "passed" and sc["seed"] == 5
    assert sc["verdict"]["counts"]["delivered"] == sc["verdict"]["counts"]["published"] > 0
    fired = {(f["index"], f["port"]) for f in sc["verdict"]["faults_fired"]}
    assert fired == {(0, 0), (0, 1)}, "the reset fired on both ports"
    assert "quick-pass" in done.stdout and "passed" in done.stdout
    # The fault clock waited for the roles (on a loaded box they start late), and nothing fired before it.
    run = out / "quick-pass"
    start = float((run / "fault-start").read_text())
    runner_events = [json.loads(line) for line in (run / "events" / "runner.jsonl").read_text().splitlines()]
    [roles_up] = [e["t"] for e in runner_events if e["type"] == "roles_up"]
    assert start >= roles_up + 0.9, (start, roles_up)
    server_events = [json.loads(line) for line in (run / "events" / "server.jsonl").read_text().splitlines()]
    fault_times = [e["t"] for e in server_events if e["type"] == "fault"]
    assert fault_times and min(fault_times) >= start

    again = chaos("replay", str(out / "results.json"), "--out", str(tmp_path / "replay"))
    assert again.returncode == 0, again.stdout + again.stderr
    replayed = json.loads((tmp_path / "replay" / "results.json").read_text())["scenarios"][0]
    assert replayed["seed"] == 5 and replayed["config"] == sc["config"]


def test_failed_expectation_exits_1_and_prints_the_reproduce_command(tmp_path: Path) -> None:
    file = scenario(tmp_path, "quick-fail", throughput="100000/s")
    done = chaos("run", str(file), "--out", str(tmp_path / "run"), "--seed", "9")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "throughput" in done.stderr
    assert f"chaos run {file} --seed 9" in done.stderr


def test_invalid_input_exits_2_naming_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nduration: 3s\nring: {slots: 0}\n")
    done = chaos("run", str(bad), "--out", str(tmp_path / "run"))
    assert done.returncode == 2
    assert f"{bad}:3" in done.stderr and "ring.slots" in done.stderr
    assert not (tmp_path / "run").exists(), "nothing runs on invalid input"


def test_deadline_dumps_stacks_and_exits_3(tmp_path: Path) -> None:
    """The only consumer is killed, so the drain cannot finish before the deadline."""
    file = scenario(
        tmp_path,
        "quick-hang",
        faults="[{kind: kill, target: consumer-0, at: 1s}]",
        fired="all",
        drain="10s",
        deadline="13s",
    )
    out = tmp_path / "run"
    done = chaos("run", str(file), "--out", str(out))
    assert done.returncode == 3, done.stdout + done.stderr
    stacks = out / "quick-hang" / "stacks"
    assert (stacks / "runner.txt").read_text().strip(), "the runner's own stacks were dumped"
    server = (stacks / "server.txt").read_text()
    assert "Thread 0x" in server or "Current thread" in server, "the server's stacks were dumped"
    assert "serve" in server, server[:500]
    assert "deadline" in json.loads((out / "results.json").read_text())["scenarios"][0]["error"]


def test_sigterm_cleans_up_processes_and_segments(tmp_path: Path) -> None:
    file = scenario(tmp_path, "quick-term", consumers=2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos.cli", "run", str(file), "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while len(parent.children(recursive=True)) < 4 and time.monotonic() < deadline:
            time.sleep(0.2)
        children = parent.children(recursive=True)
        assert len(children) >= 4, "server, producer and consumers are running"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 3
        _gone, alive = psutil.wait_procs(children, timeout=20)
        assert not alive, f"left running: {alive}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_parallel_jobs(tmp_path: Path) -> None:
    files = [scenario(tmp_path, f"quick-par-{i}") for i in range(2)]
    done = chaos("run", "-j", "2", *map(str, files), "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert sorted(s["name"] for s in results["scenarios"]) == ["quick-par-0", "quick-par-1"]


def test_baseline_regression_fails_the_run_only_with_the_flag(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.mkdir()
    slow.mkdir()
    scenario(fast, "quick-regress")
    slow_file = scenario(slow, "quick-regress")
    slow_file.write_text(slow_file.read_text().replace("rate: 50/s", "rate: 15/s"))  # same name, 70 % slower
    base = chaos("run", str(fast / "quick-regress.yaml"), "--out", str(tmp_path / "base"))
    assert base.returncode == 0, base.stdout + base.stderr
    lenient = chaos(
        "run", str(slow_file), "--out", str(tmp_path / "r1"), "--baseline", str(tmp_path / "base")
    )
    assert lenient.returncode == 0, lenient.stdout + lenient.stderr
    assert "REGRESSION quick-regress" in lenient.stderr and "throughput" in lenient.stderr
    strict = chaos(
        "run",
        str(slow_file),
        "--out",
        str(tmp_path / "r2"),
        "--baseline",
        str(tmp_path / "base" / "results.json"),
        "--fail-on-regression",
    )
    assert strict.returncode == 1, strict.stdout + strict.stderr
    assert strict.stderr.index("REGRESSION") < strict.stderr.index("reports:"), "regressions come first"
