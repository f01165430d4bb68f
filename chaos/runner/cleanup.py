"""Teardown that survives interrupts, and a record that lets the next run sweep what a killed run left.

A run registers two things here:

* **steps** (`cleanup.step(name, fn)`): what to call at the end, newest first (stop the server, kill a
  role, close the proxies, delete a network namespace...). `close()` runs every step even if one
  fails or a second Ctrl-C / SIGTERM arrives: those signals are held off (`shielded()`) until the
  teardown is over.
* **resources** (`cleanup.track(kind, value)`): things that outlive a process (a /dev/shm segment, a
  child process, a listening port, a namespace). They are written to a per-run state file as they
  are created, so after a SIGKILL of the runner the next run's `sweep_stale()` removes them. `close()`
  also checks each one after the steps ran, removes what is still there, and reports only what it
  verified: a resource is "cleaned" when its kind's `exists()` says it is gone.

A kind is registered once per process with `register_kind(name, exists=..., remove=...)`; `segment`,
`process` and `port` are built in. Example (what the simulated-hosts layer does for namespaces)::

    register_kind("netns", exists=netns_exists, remove=delete_netns)
    cleanup.track("netns", "slotwire-<run>-h1")          # persisted before anything else happens
    cleanup.step("delete namespaces", hosts.teardown)      # the normal path; `remove` is the fallback

State files live in `$SLOTWIRE_RUN_STATE` (default `<tmp>/slotwire-runs-<uid>`), one per run, named by
its id, holding the owner's pid and start time. `sweep_stale()` only touches files whose owner is gone
(pid dead, or reused by another process), so concurrent runs never sweep each other.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from chaos.atomic import write_atomic

STATE_ENV = "SLOTWIRE_RUN_STATE"
SHIELDED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


# -- kinds of resources -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    """How to tell whether a tracked resource still exists, and how to remove it."""

    exists: Callable[[str], bool]
    remove: Callable[[str], None]


KINDS: dict[str, Kind] = {}


def register_kind(name: str, *, exists: Callable[[str], bool], remove: Callable[[str], None]) -> None:
    """Teach cleanup (and the next run's sweep) a kind of resource. Idempotent; last one wins."""
    KINDS[name] = Kind(exists, remove)


def _segment_exists(path: str) -> bool:
    return os.path.lexists(path)


def _segment_remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def process_id(process: psutil.Process) -> str:
    """`pid:create_time`: names one process, never a later one that reuses its pid."""
    return f"{process.pid}:{process.create_time():.3f}"


def _process(value: str) -> psutil.Process | None:
    """The live (non-zombie) process `value` names, or None."""
    pid, _, started = value.partition(":")
    try:
        proc = psutil.Process(int(pid))
        if f"{proc.create_time():.3f}" != started or proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except (psutil.Error, ValueError):
        return None


def _process_exists(value: str) -> bool:
    return _process(value) is not None


def _process_remove(value: str) -> None:
    proc = _process(value)
    if proc is None:
        return
    with contextlib.suppress(psutil.Error):
        proc.send_signal(signal.SIGCONT)  # a stopped process must not survive as one
        proc.kill()
        proc.wait(5.0)


def _listening(port: int) -> set[int]:
    """Pids with a TCP socket listening on `port` (ours at least; others if permitted)."""
    pids: set[int] = set()
    with contextlib.suppress(psutil.Error):
        for conn in psutil.net_connections("tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                pids.add(conn.pid or -1)
    return pids


def _port_exists(value: str) -> bool:
    """`owner_pid:port`: still listening by its owner (a port a dead owner held is closed by the kernel)."""
    owner, _, port = value.partition(":")
    return int(owner) in _listening(int(port)) if psutil.pid_exists(int(owner)) else False


def _port_remove(value: str) -> None:
    """Nothing to do from outside: the owner closes it (its cleanup step) or the kernel does (it died)."""


register_kind("segment", exists=_segment_exists, remove=_segment_remove)
register_kind("process", exists=_process_exists, remove=_process_remove)
register_kind("port", exists=_port_exists, remove=_port_remove)


def port_id(port: int, owner: int | None = None) -> str:
    return f"{owner or os.getpid()}:{port}"


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Does anything accept connections on host:port right now?"""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


# -- signals ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def shielded() -> Iterator[list[int]]:
    """Hold off SIGINT and SIGTERM (they are recorded, not raised) until the block ends.

    Only the main thread receives Python signals; elsewhere this is a no-op. The yielded list gets
    every signal that arrived meanwhile, so the caller can report it.
    """
    got: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield got
        return

    def note(signum: int, frame: Any) -> None:
        got.append(signum)

    previous = {sig: signal.signal(sig, note) for sig in SHIELDED_SIGNALS}
    try:
        yield got
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# -- one run's cleanup --------------------------------------------------------------------------------


def state_dir() -> Path:
    return Path(os.environ.get(STATE_ENV) or Path(tempfile.gettempdir()) / f"slotwire-runs-{os.getuid()}")


@dataclass
class CleanupReport:
    """What `close()` did and verified. `leftovers` are resources that still exist afterwards."""

    steps_run: int = 0
    step_errors: list[str] = field(default_factory=list)
    verified: dict[str, int] = field(default_factory=dict)  # kind -> resources verified gone
    leftovers: list[str] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)  # SIGINT/SIGTERM held off during the teardown

    @property
    def clean(self) -> bool:
        return not self.leftovers

    def summary(self) -> str:
        gone = ", ".join(f"{n} {kind}{'' if n == 1 else 's'}" for kind, n in sorted(self.verified.items()))
        text = f"verified gone: {gone or 'nothing tracked'}"
        if self.leftovers:
            text += f"; LEFT BEHIND: {', '.join(self.leftovers)}"
        if self.step_errors:
            text += f"; {len(self.step_errors)} cleanup step(s) failed: {'; '.join(self.step_errors)}"
        return text


class RunCleanup:
    """Steps and tracked resources of one run; `close()` once at the end (idempotent)."""

    def __init__(self, run_id: str, directory: Path | None = None) -> None:
        self.run_id = run_id
        self.directory = directory or state_dir()
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.directory / f"{_safe(run_id)}-{os.getpid()}.json"
        me = psutil.Process()
        self._owner = {"pid": me.pid, "started": f"{me.create_time():.3f}"}
        self._steps: list[tuple[str, Callable[[], object]]] = []
        self._resources: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._report: CleanupReport | None = None
        self._save()

    def step(self, name: str, fn: Callable[[], object]) -> None:
        """Call `fn` at close, after every step registered later (LIFO)."""
        with self._lock:
            self._steps.append((name, fn))

    def track(self, kind: str, value: str) -> None:
        """Remember a resource (persisted at once) to verify at close and to sweep after a crash."""
        if kind not in KINDS:
            raise ValueError(f"unknown resource kind {kind!r}: register_kind() it first")
        with self._lock:
            if (kind, value) not in self._resources:
                self._resources.append((kind, value))
                self._save()

    def track_process(self, pid: int | None) -> None:
        if pid is None:
            return
        with contextlib.suppress(psutil.Error):
            self.track("process", process_id(psutil.Process(pid)))

    def close(self) -> CleanupReport:
        """Run every step (newest first) and verify every resource, with SIGINT/SIGTERM held off."""
        with shielded() as signals:
            if self._report is not None:
                return self._report
            report = CleanupReport()
            with self._lock:
                steps, self._steps = list(reversed(self._steps)), []
            for name, fn in steps:
                report.steps_run += 1
                try:
                    fn()
                except BaseException as exc:
                    report.step_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            report.verified, report.leftovers = verify(self._resources)
            report.signals = list(signals)
            if report.clean:
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
            else:
                self._save()  # the next run's sweep tries again
            self._report = report
            return report

    def _save(self) -> None:
        data = {"run_id": self.run_id, "owner": self._owner, "resources": self._resources}
        write_atomic(self.path, json.dumps(data))


def verify(resources: list[tuple[str, str]]) -> tuple[dict[str, int], list[str]]:
    """Remove what still exists, then check again: (kind -> verified gone, what is left)."""
    gone: dict[str, int] = {}
    left: list[str] = []
    for kind, value in resources:
        spec = KINDS.get(kind)
        if spec is None:
            left.append(f"{kind} {value} (kind not registered here)")
            continue
        try:
            if spec.exists(value):
                spec.remove(value)
                deadline = time.monotonic() + 5.0
                while spec.exists(value) and time.monotonic() < deadline:
                    time.sleep(0.05)
            still = spec.exists(value)
        except Exception as exc:
            left.append(f"{kind} {value} ({type(exc).__name__}: {exc})")
            continue
        if still:
            left.append(f"{kind} {value}")
        else:
            gone[kind] = gone.get(kind, 0) + 1
    return gone, left


def sweep_stale(directory: Path | None = None) -> list[str]:
    """Remove the resources of runs whose owner is gone (SIGKILLed); returns what was removed."""
    directory = directory or state_dir()
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
            owner = data["owner"]
            resources = [(str(k), str(v)) for k, v in data["resources"]]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # half-written or foreign: leave it
        if _process_exists(f"{owner['pid']}:{owner['started']}"):
            continue  # its run is still going
        gone, left = verify(resources)
        if sum(gone.values()):
            removed.append(f"run {data.get('run_id')}: {', '.join(f'{n} {k}' for k, n in gone.items())}")
        if not left:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return removed


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:100]
