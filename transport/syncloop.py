"""The process's one UCX event loop, driven by whichever sync caller needs it.

ucxx binds to one event loop per process, so every sync `Consumer` shares this loop. A background
thread running it (the first design) cost each `get` two thread hand-offs and a GIL fight with that
thread (measured: 296 us vs 152 us per 4 KiB get, docs/decisions.md). Instead the calling thread runs
the loop itself for as long as its own coroutine needs. A second thread that arrives while the loop is
being driven hands its coroutine to the running loop and waits; when the driver's own work is done it
wakes the waiters, and one of them takes over driving. Between calls nothing runs: an idle sync
consumer uses no CPU at all.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from transport.errors import ConfigError, TransportError

T = TypeVar("T")

# A waiter also re-checks this often, in case a hand-over wake-up raced with its registration.
_HANDOVER_POLL_S = 0.05


class SharedLoop:
    """One per process (`SharedLoop.get()`); `run(coro, timeout)` from any thread, any number at once."""

    _instance: SharedLoop | None = None
    _guard = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._driver = threading.Lock()  # held by the thread currently running the loop
        self._waiters: set[threading.Event] = set()
        self._waiters_guard = threading.Lock()
        atexit.register(self._cancel_leftovers)

    @classmethod
    def get(cls) -> SharedLoop:
        with cls._guard:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coro` on the shared loop; TransportError if it takes longer than `timeout` seconds."""
        if _running_loop() is not None:
            coro.close()
            raise ConfigError(
                "a sync Consumer was called from inside a running asyncio loop: use AsyncConsumer there"
            )
        bounded = _bounded(coro, timeout)
        if self._driver.acquire(blocking=False):
            try:
                return self._drive(bounded)
            finally:
                self._release()
        return self._hand_over(bounded, timeout)

    # -- the driving thread --------------------------------------------------------------------

    def _drive(self, coro: Coroutine[Any, Any, T]) -> T:
        # The coroutine stops the loop itself as it ends: `run_until_complete` would need one more loop
        # turn to run its done-callback (a few us of every sync get).
        task = self.loop.create_task(_stop_when_done(coro, self.loop))
        try:
            while not task.done():
                self.loop.run_forever()
            return task.result()
        except BaseException:
            if not task.done():  # interrupted (KeyboardInterrupt): cancel, never leave it half-run
                task.cancel()
                try:
                    self.loop.run_until_complete(asyncio.wait([task], timeout=5.0))
                except BaseException:
                    pass
            raise

    def _release(self) -> None:
        self._driver.release()
        with self._waiters_guard:
            for wake in self._waiters:
                wake.set()

    def _cancel_leftovers(self) -> None:
        """At exit: cancel what still sits on the stopped loop (the progress engine) so it ends quietly."""
        if not self._driver.acquire(blocking=False):
            return  # a daemon thread is still driving: leave the loop to it
        try:
            tasks = asyncio.all_tasks(self.loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self.loop.run_until_complete(asyncio.wait(tasks, timeout=2.0))
        except BaseException:  # exiting anyway
            pass
        finally:
            self._driver.release()

    # -- a thread arriving while another drives ---------------------------------------------------

    def _hand_over(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        wake = threading.Event()
        with self._waiters_guard:
            self._waiters.add(wake)
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            future.add_done_callback(lambda _: wake.set())
            deadline = time.monotonic() + timeout + 5.0  # `coro` bounds itself; this is a backstop
            while not future.done():
                if self._driver.acquire(blocking=False):
                    try:  # the driver finished its own work: this thread drives now
                        self.loop.run_until_complete(asyncio.wrap_future(future, loop=self.loop))
                    finally:
                        self._release()
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    future.cancel()
                    raise TransportError(f"operation did not finish within {timeout:.1f}s")
                wake.wait(min(remaining, _HANDOVER_POLL_S))
                wake.clear()
            return future.result(timeout=0)
        except concurrent.futures.CancelledError as exc:
            raise TransportError("operation was cancelled") from exc
        finally:
            with self._waiters_guard:
                self._waiters.discard(wake)


async def _stop_when_done(coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop) -> T:
    try:
        return await coro
    finally:
        loop.stop()


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    try:
        async with asyncio.timeout(timeout) as scope:
            return await coro
    except TimeoutError as exc:
        if scope.expired():
            raise TransportError(f"operation did not finish within {timeout:.1f}s") from exc
        raise


def _running_loop() -> asyncio.AbstractEventLoop | None:
    return asyncio._get_running_loop()  # public get_running_loop raises instead of returning None
