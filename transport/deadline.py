"""A reusable per-step timeout: `asyncio.timeout` semantics at a fraction of the cost.

Every protocol step is bounded, and a read has five steps on each side. `asyncio.timeout` schedules and
cancels a timer per step (3.6 us here, a fifth of the Python time of a 4 KiB read). A `StepDeadline`
belongs to one task and keeps at most one timer alive: entering a step only stores its deadline; the
timer, when it fires, either cancels the task (the step ran out) or re-arms itself at the current
step's deadline. Expiry raises `TimeoutError` out of the step, exactly as `asyncio.timeout` does.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class StepDeadline:
    """`async with deadline:` bounds one await by `seconds`; reuse it for every step of one task."""

    __slots__ = ("_cancelling", "_deadline", "_expiring", "_handle", "_loop", "_task", "seconds")

    def __init__(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError(f"seconds={seconds!r}: must be > 0")
        self.seconds = seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[object] | None = None
        self._deadline: float | None = None  # None: no step in progress
        self._handle: asyncio.TimerHandle | None = None
        self._expiring = False
        self._cancelling = 0

    async def __aenter__(self) -> StepDeadline:
        if self._deadline is not None:
            raise RuntimeError("StepDeadline is already bounding a step")
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("StepDeadline must be used inside a task")
        if task is not self._task:
            self._task = task
            self._loop = task.get_loop()
        assert self._loop is not None
        self._cancelling = task.cancelling()
        deadline = self._deadline = self._loop.time() + self.seconds
        if self._handle is None or self._handle.when() > deadline:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(deadline, self._on_timer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadline = None
        if self._expiring:
            self._expiring = False
            assert self._task is not None
            if self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
                raise TimeoutError(f"step did not finish within {self.seconds}s") from exc

    def restart(self) -> None:
        """Begin the next step inside one `async with` block: it gets its own full `seconds`.

        Cheaper than a block per step when a task runs several steps in a row (a client read runs
        five); expiry still raises `TimeoutError` out of the block.
        """
        if self._deadline is None or self._loop is None:
            raise RuntimeError("StepDeadline.restart() outside its `async with` block")
        self._deadline = self._loop.time() + self.seconds

    def _on_timer(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None:
            return  # between steps: the next step re-arms
        assert self._loop is not None and self._task is not None
        if self._loop.time() >= deadline:
            self._expiring = True
            self._task.cancel()
        else:  # an earlier step's timer: wait for this step's own deadline
            self._handle = self._loop.call_at(deadline, self._on_timer)

    def close(self) -> None:
        """Drop the pending timer (optional: an unneeded timer fires once and dies)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = None
