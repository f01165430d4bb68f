"""Process-layer faults: signals to the runner's producer, server and consumer processes.

The runner owns the processes and gives a handle per target name (`proc`, `restart()`); this module
only decides when (seeded, per tick) and sends the signals. It never reaps a child (a `waitpid`
here would hide the exit status from the runner's own `Process.join`): a killed process counts as
gone once it is a zombie or has vanished.

Signals go through the handle's `psutil.Process`, taken when the process was started, never through
a bare pid: psutil checks the process's start time before every signal, so a pid the kernel has
handed to an unrelated process after the child was reaped is never signalled.

- `kill`: SIGKILL, wait until gone, `proc_exit{how: killed}`.
- `pause`: SIGSTOP, SIGCONT after `duration` (bounded by `max_pause_s`); every stopped process is
  continued on `heal()` and `close()`, so nothing stays stopped after the fault phase or an error.
- `restart`: SIGKILL, wait until gone (ports free), `proc_exit{how: restarted}`, then `restart()`:
  the runner starts the same role again (the server on the same ports).

A fault with `at` fires at the first tick at or after it; otherwise it draws with `probability` on
every tick inside its window. A target that is not running (dead, or already paused for `pause`)
is skipped without a draw being counted as a firing.
"""

from __future__ import annotations

import multiprocessing.process
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Protocol

import psutil

from chaos.faults.base import Clock, FaultSpec, HealSwitch, Trigger
from transport.events import EventSink

DEFAULT_PAUSE_S = 1.0


class ProcessHandle(Protocol):
    """What the runner gives per target: the current process and a way to start the role again."""

    @property
    def proc(self) -> psutil.Process | None: ...

    def restart(self) -> None: ...


def process_handle(process: multiprocessing.process.BaseProcess | None) -> psutil.Process | None:
    """A psutil handle on a just-started child (its pid cannot have been reused: nobody reaped it)."""
    if process is None or process.pid is None:
        return None
    try:
        return psutil.Process(process.pid)
    except psutil.NoSuchProcess:
        return None


def is_running(proc: psutil.Process | None) -> bool:
    """This very process is alive and not a zombie (a killed child the runner has not joined yet
    counts as gone; so does a pid now used by another process)."""
    if proc is None:
        return False
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """Poll (never reap) until `proc` is gone or a zombie; False if it outlived `timeout`."""
    deadline = time.monotonic() + timeout
    while is_running(proc):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _signal(proc: psutil.Process | None, sig: signal.Signals) -> bool:
    """Signal this very process (psutil refuses a pid reused by another one)."""
    if proc is None:
        return False
    try:
        proc.send_signal(sig)
    except psutil.Error:
        return False
    return True


class ProcessFaults:
    """Fires process faults on `tick()` (the runner ticks it from its fault phase). Thread-safe."""

    def __init__(
        self,
        faults: Iterable[FaultSpec],
        targets: Mapping[str, ProcessHandle],
        seed: int,
        events: EventSink,
        run_start: float,
        *,
        heal_at: float | None = None,
        max_pause_s: float = 30.0,
        exit_timeout_s: float = 10.0,
        clock: Clock = time.time,
    ) -> None:
        self.faults = [f for f in faults if f.layer == "process"]
        missing = sorted({f.target for f in self.faults if f.target not in targets})
        if missing:
            raise ValueError(f"process faults name unknown targets {missing}; known: {sorted(targets)}")
        self.targets = targets
        self.events = events
        self.max_pause_s = max_pause_s
        self.exit_timeout_s = exit_timeout_s
        self.clock = clock
        self.switch = HealSwitch(heal_at, clock)
        self.triggers = [Trigger(f, seed, f.target, "process", run_start, self.switch) for f in self.faults]
        self.fired: Counter[int] = Counter()  # fault index -> firings
        self._paused: dict[psutil.Process, float] = {}  # process -> resume time (clock)
        self._lock = threading.RLock()

    # -- decisions ------------------------------------------------------------------------------

    def tick(self, now: float | None = None) -> list[int]:
        """Resume due pauses, then fire what is due; returns the indexes of the faults that fired."""
        with self._lock:
            now = self.clock() if now is None else now
            self._resume_due(now)
            if self.switch.healed(now):
                self.resume_all()
                return []
            fired: list[int] = []
            for trigger in self.triggers:
                spec = trigger.spec
                handle = self.targets[spec.target or ""]
                running = is_running(handle.proc)
                if (not running and spec.kind != "restart") or (
                    spec.kind == "pause" and handle.proc in self._paused
                ):
                    continue  # nothing to act on: no draw, so the seeded sequence counts real chances
                # `restart` also brings back a target that an earlier `kill` left dead.
                if trigger.decide(now) and self._fire(spec, handle, now):
                    fired.append(spec.index)
            return fired

    def _fire(self, spec: FaultSpec, handle: ProcessHandle, now: float) -> bool:
        proc = handle.proc
        pid = proc.pid if proc is not None else None
        if proc is None and spec.kind != "restart":
            return False
        self.fired[spec.index] += 1
        self.events.emit("fault", fault=spec.index, kind=spec.kind, port=None, phase=None, target=spec.target)
        if spec.kind == "pause":
            duration = DEFAULT_PAUSE_S if spec.duration_s is None else spec.duration_s
            if _signal(proc, signal.SIGSTOP):
                assert proc is not None
                self._paused[proc] = now + min(duration, self.max_pause_s)
            return True
        if proc is not None and is_running(proc):
            _signal(proc, signal.SIGKILL)  # a stopped process dies on SIGKILL too
            self._paused.pop(proc, None)
            wait_gone(proc, self.exit_timeout_s)
        how = "killed" if spec.kind == "kill" else "restarted"
        if spec.kind == "restart":
            handle.restart()
            new = handle.proc
            self.events.emit(
                "proc_exit", target=spec.target, pid=pid, how=how, new_pid=new.pid if new else None
            )
        else:
            self.events.emit("proc_exit", target=spec.target, pid=pid, how=how)
        return True

    def _resume_due(self, now: float) -> None:
        for proc, resume_at in list(self._paused.items()):
            if now >= resume_at:
                _signal(proc, signal.SIGCONT)
                del self._paused[proc]

    # -- healing and cleanup --------------------------------------------------------------------

    @property
    def paused(self) -> list[int]:
        """Pids of the processes this object holds stopped."""
        with self._lock:
            return [proc.pid for proc in self._paused]

    def resume_all(self) -> None:
        """SIGCONT every process this object stopped (idempotent; a dead one is skipped)."""
        with self._lock:
            for proc in list(self._paused):
                _signal(proc, signal.SIGCONT)
            self._paused.clear()

    def heal(self) -> None:
        """End of the fault phase: no more firings and nothing left stopped."""
        self.switch.heal()
        self.resume_all()

    def close(self) -> None:
        """The runner's cleanup step (and `with`): heal, so nothing stays stopped."""
        self.heal()

    def __enter__(self) -> ProcessFaults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
