"""Spin-then-block UCX progress (`SLOTWIRE_PROGRESS_MODE=hybrid`).

ucxx's modes force a choice (docs/decisions.md): `polling` is fast but spins a core even when idle;
`thread` + python futures idles at ~1 % but every completion hops through two threads (~100 us per
message). This engine drives a polling-mode worker from one task per loop: it spins while a request is
pending and for `spin_s` after the last completion, then arms the worker and sleeps on its epoll fd.
Transfers are posted on the endpoint's tag channel and awaited through plain asyncio futures.

It uses ucxx internals (`Endpoint._ep`, `Endpoint._tags`, `ProgressTasks`), which is why
pyproject pins ucxx to 0.52.x. It is the default mode (`transport.ucx.DEFAULT_MODE`), so every transport
test runs over it; `tests/test_progress_buffers.py` and `tests/test_progress_gc.py` test the engine itself.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

SPIN_S = 100e-6  # longer spins cost more than they save on a loaded 2-core machine (measured)
IDLE_WAKE_S = 1.0  # also progress once a second in case an epoll event was missed


class HybridProgress:
    """One per process (ucxx has one worker); bound to the loop it was installed in."""

    def __init__(self, spin_s: float = SPIN_S) -> None:
        import ucxx
        from ucxx._lib.arr import Array
        from ucxx._lib_async.application_context import ProgressTasks
        from ucxx.types import Tag, TagMaskFull

        self.spin_s = spin_s
        self._array, self._tag, self._mask_full = Array, Tag, TagMaskFull
        self.loop = asyncio.get_running_loop()
        ucxx.init(progress_mode="polling")
        ctx = ucxx.core._get_ctx()
        ctx.continuous_ucx_progress()  # registers ucxx's busy PollingMode task for this loop ...
        ProgressTasks[self.loop].progress_task.cancel()  # ... which this engine replaces
        self.worker = ctx.worker
        self._pending: dict[Any, tuple[asyncio.Future[None], Any]] = {}
        # Buffers of requests whose future was given up (a timed-out or failed step) while UCX may
        # still write into (or read from) them: kept alive until UCX completes or cancels the request.
        self._orphans: dict[Any, Any] = {}
        self._wake = asyncio.Event()
        self.loop.add_reader(self.worker.epoll_file_descriptor, self._wake.set)
        self._last = time.monotonic()
        self._task = self.loop.create_task(self._run(), name="slotwire-ucx-progress")

    def track(self, request: Any, buf: Any = None) -> asyncio.Future[None]:
        """A future this engine completes with `request` (already done if the request is).

        `buf` is held until the request completes in UCX, not only until the future is done: a
        caller that gives up on a receive (its step timed out) drops the buffer, and UCX would
        otherwise go on writing a late or half-received message into freed memory. That corrupted
        the heap of consumers whose large reads timed out mid-transfer under a kernel bandwidth
        fault (a SIGSEGV in unrelated Python code, and the slots it held lost)."""
        future = self.loop.create_future()
        if request.completed:
            _settle(future, request)
            return future
        self._pending[request] = (future, buf)
        self._last = time.monotonic()
        self._wake.set()
        return future

    async def wait(self, request: Any, buf: Any = None) -> None:
        if request.completed:
            request.check_error()
            return
        await self.track(request, buf)

    def _tag_send(self, endpoint: Any, buf: Any) -> Any:
        return endpoint._ep.tag_send(self._array(buf), self._tag(endpoint._tags["msg_send"]))

    def _tag_recv(self, endpoint: Any, buf: Any) -> Any:
        return endpoint._ep.tag_recv(self._array(buf), self._tag(endpoint._tags["msg_recv"]), self._mask_full)

    def post_send(self, endpoint: Any, buf: Any) -> asyncio.Future[None]:
        """Post a send now (in order with every other post on `endpoint`); await the result later."""
        return self.track(self._tag_send(endpoint, buf), buf)

    def post_recv(self, endpoint: Any, buf: Any) -> asyncio.Future[None]:
        """Post a receive now (matched in posting order); await the result later."""
        return self.track(self._tag_recv(endpoint, buf), buf)

    async def send(self, endpoint: Any, buf: Any) -> None:
        await self.wait(self._tag_send(endpoint, buf), buf)

    async def recv(self, endpoint: Any, buf: Any) -> None:
        await self.wait(self._tag_recv(endpoint, buf), buf)

    def _complete(self) -> bool:
        pending = self._pending
        done = [request for request, (future, _) in pending.items() if request.completed or future.done()]
        for request in done:
            future, buf = pending.pop(request)
            if not future.done():
                _settle(future, request)
            elif not request.completed:  # given up by a timed-out step: the link is aborted anyway,
                self._orphans[request] = buf  # but UCX may still touch the buffer until it cancels
        if self._orphans:
            for request in [r for r in self._orphans if r.completed]:
                del self._orphans[request]
        return bool(done)

    @property
    def orphans(self) -> int:
        """Requests given up by their caller that UCX has not completed or cancelled yet."""
        return len(self._orphans)

    async def _run(self) -> None:
        worker = self.worker
        while True:
            progressed = progress(worker)
            now = time.monotonic()
            # A request completes inside progress (or at once when posted, see `track`), so the
            # pending ones are scanned only after progress: the scan is most of an idle spin's cost.
            if progressed:
                self._last = now
                if self._pending:
                    self._complete()
            # Spin only just after activity: a handler waiting seconds for its next request keeps
            # a recv pending, and spinning on that would burn a core.
            if now - self._last < self.spin_s:
                await asyncio.sleep(0)
                continue
            if self._pending and self._complete():  # a last full scan before sleeping
                continue
            if not worker.arm():  # events arrived meanwhile: progress again
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            try:
                async with asyncio.timeout(IDLE_WAKE_S):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._last = time.monotonic()

    def poll(self) -> None:
        """Progress the worker now (no wait): lets a peer's close of an idle endpoint land before
        the caller decides whether that endpoint is still usable."""
        progress(self.worker)

    def close(self) -> None:
        self._task.cancel()
        self.loop.remove_reader(self.worker.epoll_file_descriptor)


def progress(worker: Any) -> bool:
    """Progress `worker` with the cyclic garbage collector held off; True if anything progressed.

    Why: progress runs the listener's callback, which holds ucxx's non-reentrant handler-tracker lock
    while it allocates; a collection there can finalise a ucxx `Endpoint`, whose finalizer calls
    `close_blocking`, which progresses the worker again and re-enters the listener callback: the
    thread then waits on the lock it holds (seen as a server hung under a flood of endpoints). The
    collection simply runs at the next allocation after progress returns.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        progressed = bool(worker.progress_once())
        if progressed:
            worker.progress()
        return progressed
    finally:
        if enabled:
            gc.enable()


def _settle(future: asyncio.Future[None], request: Any) -> None:
    """Complete `future` with the outcome of the completed UCX `request`."""
    try:
        request.check_error()
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(None)
