"""`chaos run` in host mode, end to end: effects judged, and nothing left behind on any exit path."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from chaos.hosts import netns
from chaos.hosts.fabric import PREFIX
from chaos.hosts.schedule import NO_REDIRECT_ENV

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_ADMIN) for namespaces"),
    pytest.mark.slow,
]

SCENARIO = """\
name: {name}
seed: 3
duration: {duration}
drain_timeout: 15s
deadline: 59s
hosts: default
ring: {{slots: 32, slot_bytes: 256KiB}}
producer: {{rate: 30/s, payload: {{min: 64KiB, max: 128KiB}}}}
server: {{ports: 2}}
consumers: {{count: 1, batch: 4, read_timeout: 2s, quarantine: 1s}}
faults:
  - kind: toxic
    between: [consumer-0, server]
    toxic: {{type: latency, attributes: {{latency: 300}}}}
    window: {{start: 3s, end: {end}}}
"""


def _scenario(tmp_path: Path, name: str, duration: str = "9s", end: str = "9s") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(SCENARIO.format(name=name, duration=duration, end=end))
    return path


def _chaos(
    *args: str, env: dict[str, str] | None = None, timeout: float = 150
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "chaos.cli", "run", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _ours(out: Path) -> list[str]:
    """This run's namespaces: their names carry the run id (the --out directory's name)."""
    return [n for n in netns.names(PREFIX) if n.startswith(f"{PREFIX}{out.name}.")]


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_a_toxic_off_the_data_path_fails_the_run_as_ineffective(tmp_path: Path) -> None:
    out = tmp_path / "noredirect"
    done = _chaos(str(_scenario(tmp_path, "latency-off-path")), "--out", str(out), env={NO_REDIRECT_ENV: "1"})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "ineffective: faults[0] (toxic latency)" in done.stdout + done.stderr, done.stdout[-3000:]
    assert not _ours(out)


def test_the_same_toxic_on_the_data_path_passes(tmp_path: Path) -> None:
    out = tmp_path / "redirect"
    done = _chaos(str(_scenario(tmp_path, "latency-on-path")), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:]
    assert "ineffective" not in done.stdout
    assert not _ours(out)


def _start_and_wait_for_namespaces(tmp_path: Path, out: Path) -> subprocess.Popen[str]:
    path = _scenario(tmp_path, "long", duration="40s", end="40s")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chaos.cli", "run", str(path), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(_ours(out)) < 3:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run never built its hosts"
        time.sleep(0.2)
    time.sleep(3.0)  # processes are inside their hosts by now
    return proc


SHM = Path("/dev/shm")


def _processes_inside(names: list[str]) -> list[int]:
    return [pid for name in names for pid in netns.pids(name)]


def test_ctrl_c_removes_namespaces_and_their_processes(tmp_path: Path) -> None:
    out = tmp_path / "sigint"
    proc = _start_and_wait_for_namespaces(tmp_path, out)
    names = _ours(out)
    try:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, output[-3000:]
    assert not _ours(out), output[-3000:]
    assert not _processes_inside(names)


def test_kill_9_leaves_namespaces_that_the_next_run_removes(tmp_path: Path) -> None:
    out = tmp_path / "sigkill"
    before = set(SHM.glob("slotwire-*"))
    proc = _start_and_wait_for_namespaces(tmp_path, out)
    names = _ours(out)
    proc.kill()
    proc.wait(30)
    assert _ours(out), "kill -9 gave the runner no chance to clean up: something must be left"
    left = set(SHM.glob("slotwire-*")) - before
    nxt = _chaos(str(_scenario(tmp_path, "after")), "--out", str(tmp_path / "after"))
    said = nxt.stdout + nxt.stderr
    assert "stale network namespace" in said or "swept leftovers" in said, nxt.stderr[:3000]
    assert not _ours(out), nxt.stdout[:3000]
    deadline = time.monotonic() + 20
    while _processes_inside(names) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_inside(names)
    assert not [p for p in left if p.exists()], "the next run sweeps the killed run's segments too"


def test_without_cap_net_admin_host_scenarios_are_skipped_never_passed() -> None:
    """Without CAP_NET_ADMIN the run cannot build namespaces: it says skipped and exits 3.

    The run keeps uid 0 and loses every capability (bounding, inheritable and ambient sets empty):
    exactly "no CAP_NET_ADMIN", while the interpreter under /root (0700) stays readable. Switching
    to `nobody` instead made the venv fall back to another Python and fail on imports, not on caps.
    """
    work = Path(tempfile.mkdtemp(prefix="slotwire-nocaps-", dir="/tmp"))
    try:
        out = work / "unprivileged"
        path = _scenario(work, "no-root")
        cmd = [
            "setpriv",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            sys.executable,
            "-m",
            "chaos.cli",
        ]
        probe = subprocess.run(
            [*cmd[:4], "grep", "CapEff", "/proc/self/status"], capture_output=True, text=True, timeout=30
        )
        assert probe.stdout.split() == ["CapEff:", "0000000000000000"], probe.stdout + probe.stderr
        env = {**os.environ, "HOME": str(work), "SLOTWIRE_SHM_TAG": "nocaps"}
        done = subprocess.run(
            [*cmd, "run", str(path), "--out", str(out)], capture_output=True, text=True, timeout=120, env=env
        )
        assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
        assert "skipped: needs CAP_NET_ADMIN" in done.stdout + done.stderr
        assert _results(out)["scenarios"][0]["status"] == "error"
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _left_in_user_namespaces() -> list[int]:
    """Processes that carry the marker of a run moved into its own user namespace."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"SLOTWIRE_USERNS=1" in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_without_the_right_to_make_namespaces_the_run_moves_into_a_user_namespace(tmp_path: Path) -> None:
    """A rootless container: root of a user namespace that owns neither the network nor /run.

    There `ip netns add` fails (the mount namespace belongs to the real root), as it does for a
    developer without root. The run must re-execute itself in a user namespace of its own, build the
    hosts there, and judge the toxic effective on real traffic, not skip and not pass vacuously.
    """
    out = tmp_path / "userns"
    path = _scenario(tmp_path, "latency-in-userns")
    outer = ["unshare", "--user", "--map-root-user", "--keep-caps", "--"]
    probe = subprocess.run([*outer, "ip", "netns", "add", "slotwire-cannot"], capture_output=True, text=True)
    assert probe.returncode != 0, "the outer namespace must not be able to make named namespaces"
    done = subprocess.run(
        [*outer, sys.executable, "-m", "chaos.cli", "run", str(path), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert "re-running in a user namespace of its own" in text
    assert "ineffective" not in text and "skipped" not in text
    (result,) = _results(out)["scenarios"]
    assert result["status"] == "passed", result["verdict"] if "verdict" in result else result
    assert not _left_in_user_namespaces()
