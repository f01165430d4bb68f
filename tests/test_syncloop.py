"""SharedLoop: the calling thread drives the loop; concurrent callers hand over; every wait bounded."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from transport.errors import ConfigError, TransportError
from transport.syncloop import SharedLoop

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def shared() -> SharedLoop:
    return SharedLoop()  # a private instance: the process singleton may carry ucxx in this worker


def test_caller_thread_drives_the_loop(shared: SharedLoop) -> None:
    async def where() -> int:
        await asyncio.sleep(0)
        return threading.get_ident()

    assert shared.run(where(), 5) == threading.get_ident()


def test_concurrent_callers_all_finish(shared: SharedLoop) -> None:
    async def job(i: int) -> int:
        for _ in range(5):
            await asyncio.sleep(random.uniform(0, 0.004))
        return i * i

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: shared.run(job(i), 10), range(200)))
    assert results == [i * i for i in range(200)]
    assert not asyncio.all_tasks(shared.loop)  # nothing left behind on the loop


def test_waiter_takes_over_when_the_driver_returns(shared: SharedLoop) -> None:
    """B's work outlives A's: once A returns, nobody drives unless B takes over."""
    ran_on: list[int] = []
    b_started = threading.Event()

    async def short() -> str:
        for _ in range(500):  # drive until B's first step ran on this loop (bounded: 5 s)
            if b_started.is_set():
                break
            await asyncio.sleep(0.01)
        return "a"

    async def long() -> str:
        for _ in range(10):
            ran_on.append(threading.get_ident())
            b_started.set()
            await asyncio.sleep(0.05)
        return "b"

    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(shared.run, short(), 5)
        while not shared._driver.locked():
            pass
        second = pool.submit(lambda: (threading.get_ident(), shared.run(long(), 5)))
        assert first.result(5) == "a"
        b_thread, b_result = second.result(5)
    assert b_result == "b"
    assert ran_on[0] != b_thread, "B should have started on A's driving"
    assert ran_on[-1] == b_thread, "B never took over driving after A returned"


def test_timeout_is_a_transport_error_and_cancels_the_work(shared: SharedLoop) -> None:
    cancelled = threading.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TransportError, match=r"within 0\.2s"):
        shared.run(stuck(), 0.2)
    assert cancelled.is_set()


def test_inner_timeout_error_is_not_mistaken_for_the_bound(shared: SharedLoop) -> None:
    async def fails() -> None:
        raise TimeoutError("inner")

    with pytest.raises(TimeoutError, match="inner"):
        shared.run(fails(), 5)


def test_timeout_of_a_handed_over_call(shared: SharedLoop) -> None:
    async def slow() -> None:
        await asyncio.sleep(1.0)

    async def stuck() -> None:
        await asyncio.sleep(60)

    with ThreadPoolExecutor(2) as pool:
        driver = pool.submit(shared.run, slow(), 5)
        while not shared._driver.locked():
            pass
        with pytest.raises(TransportError, match=r"within 0\.2s"):
            shared.run(stuck(), 0.2)
        driver.result(5)


def test_call_from_a_running_loop_is_refused_clearly(shared: SharedLoop) -> None:
    async def inner() -> None:
        return None

    async def outer() -> None:
        with pytest.raises(ConfigError, match="AsyncConsumer"):
            shared.run(inner(), 1)

    asyncio.run(outer())


def test_an_error_propagates_and_the_loop_stays_usable(shared: SharedLoop) -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise ValueError("from the work")

    async def fine() -> int:
        await asyncio.sleep(0)
        return 3

    with pytest.raises(ValueError, match="from the work"):
        shared.run(boom(), 5)
    assert shared.run(fine(), 5) == 3  # the loop's stop request did not leak into the next call


def test_an_interrupted_drive_cancels_its_work_and_the_loop_stays_usable(shared: SharedLoop) -> None:
    seen: list[str] = []

    def interrupt() -> None:
        raise KeyboardInterrupt

    async def work() -> None:
        asyncio.get_running_loop().call_later(0.05, interrupt)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    async def fine() -> int:
        await asyncio.sleep(0)
        return 4

    with pytest.raises(KeyboardInterrupt):
        shared.run(work(), 5)
    assert seen == ["cancelled"]
    assert shared.run(fine(), 5) == 4
