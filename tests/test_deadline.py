"""StepDeadline: asyncio.timeout semantics for every step of a task, with one reusable timer."""

from __future__ import annotations

import asyncio
import time

import pytest

from transport.deadline import StepDeadline

pytestmark = pytest.mark.timeout(30)


def test_fast_steps_pass_and_a_slow_one_times_out() -> None:
    async def main() -> float:
        bound = StepDeadline(0.2)
        for _ in range(50):
            async with bound:
                await asyncio.sleep(0)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with bound:
                await asyncio.sleep(5)
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert 0.19 <= elapsed < 1.0


def test_each_step_gets_its_full_budget_from_its_own_start() -> None:
    """Step 1's timer fires mid-step-2; it must re-arm, not cut step 2 short."""

    async def main() -> None:
        bound = StepDeadline(0.4)
        async with bound:
            await asyncio.sleep(0.3)
        async with bound:  # starts at ~0.3 s: the old timer fires at ~0.4 s
            await asyncio.sleep(0.2)  # ends at ~0.5 s, well inside its own 0.7 s deadline

    asyncio.run(main())


def test_a_shorter_step_after_a_longer_one_is_bounded_by_its_own_deadline() -> None:
    async def main() -> float:
        long_bound = StepDeadline(10.0)
        async with long_bound:
            await asyncio.sleep(0)
        short = StepDeadline(0.1)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with short:
                await asyncio.sleep(5)
        long_bound.close()
        return time.monotonic() - start

    assert asyncio.run(main()) < 1.0


def test_outside_cancellation_stays_a_cancellation() -> None:
    async def main() -> None:
        bound = StepDeadline(5.0)

        async def step() -> None:
            async with bound:
                await asyncio.sleep(5)

        task = asyncio.ensure_future(step())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_a_timed_out_step_leaves_the_task_usable() -> None:
    async def main() -> str:
        bound = StepDeadline(0.3)
        with pytest.raises(TimeoutError):
            async with bound:
                await asyncio.sleep(2)
        async with bound:
            await asyncio.sleep(0.01)  # no leftover cancellation hits this step
        return "ok"

    assert asyncio.run(main()) == "ok"


def test_nesting_and_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="seconds"):
        StepDeadline(0)

    async def main() -> None:
        bound = StepDeadline(1.0)
        async with bound:
            with pytest.raises(RuntimeError, match="already"):
                async with bound:
                    pass
        bound.close()

    asyncio.run(main())


def test_restart_gives_each_step_of_one_block_its_own_budget() -> None:
    """Three 0.25 s steps in one 0.4 s block pass (0.75 s in all); a step over budget still times out."""

    async def main() -> tuple[float, float]:
        bound = StepDeadline(0.4)
        start = time.monotonic()
        async with bound:
            for _ in range(3):
                bound.restart()
                await asyncio.sleep(0.25)
        passed = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            async with bound:
                await asyncio.sleep(0.1)
                bound.restart()
                await asyncio.sleep(5)  # the restarted step's own 0.4 s runs out
        return passed, time.monotonic() - start

    passed, timed_out = asyncio.run(main())
    assert passed >= 0.75
    assert 0.45 <= timed_out < 2.0


def test_restart_outside_its_block_is_refused() -> None:
    async def main() -> None:
        bound = StepDeadline(1.0)
        with pytest.raises(RuntimeError, match="outside"):
            bound.restart()

    asyncio.run(main())
