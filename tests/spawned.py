"""Test-only process helpers: a ready-made `ProcessHandle` and two ways to tick `ProcessFaults` on a
timer. The runner needs neither (it owns its role handles and ticks faults from its own phase loop),
so they live here rather than in the package a trainer installs."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.process
import signal
import threading
from collections.abc import Callable

import psutil

from chaos.faults.process import ProcessFaults, process_handle

SPAWN = multiprocessing.get_context("spawn")  # fork after ucxx is initialised hangs the child


class SpawnedProcess:
    """A ready-made `ProcessHandle`: a spawn-context process that `restart()` starts again.

    `restart()` joins (reaps) the old process first, then starts a new one with the same target and
    arguments; `stop()` kills and joins within a timeout, for cleanup.
    """

    def __init__(
        self,
        target: Callable[..., object],
        args: tuple[object, ...] = (),
        kwargs: dict[str, object] | None = None,
        *,
        name: str | None = None,
        start: bool = True,
    ) -> None:
        self.target = target
        self.args = args
        self.kwargs = dict(kwargs or {})
        self.name = name
        self.process: multiprocessing.process.BaseProcess | None = None
        self.proc: psutil.Process | None = None
        self.starts = 0
        if start:
            self.start()

    @property
    def pid(self) -> int | None:
        """For logs and events only; signals go through `proc`."""
        return None if self.process is None else self.process.pid

    def start(self) -> None:
        self.process = SPAWN.Process(
            target=self.target, args=self.args, kwargs=self.kwargs, name=self.name, daemon=True
        )
        self.process.start()
        self.proc = process_handle(self.process)
        self.starts += 1

    def restart(self) -> None:
        self.stop()
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None:
            return
        if process.is_alive():
            if self.proc is not None:  # a stopped process must not outlive cleanup
                with contextlib.suppress(psutil.Error):
                    self.proc.send_signal(signal.SIGCONT)
            process.kill()
        process.join(timeout)


class TickThread:
    """Ticks `faults` from a daemon thread every `interval` until `close()` or heal."""

    def __init__(self, faults: ProcessFaults, interval: float = 0.1) -> None:
        self.faults = faults
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(interval,), name="process-faults", daemon=True
        )
        self._thread.start()

    def _loop(self, interval: float) -> None:
        try:
            while not self._stop.wait(interval):
                self.faults.tick()
                if self.faults.switch.healed():
                    return
        finally:
            self.faults.resume_all()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (bounded by `timeout`), then close the faults (which heals them)."""
        self._stop.set()
        self._thread.join(timeout)
        self.faults.close()


async def tick_until(faults: ProcessFaults, interval: float = 0.1, stop: asyncio.Event | None = None) -> None:
    """Tick every `interval` until `stop` is set or healed; signals run in a worker thread (a restart
    may block while the process starts again)."""
    stop = stop or asyncio.Event()
    try:
        while not stop.is_set() and not faults.switch.healed():
            await asyncio.to_thread(faults.tick)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        faults.resume_all()
