"""A batch fetch stops as one: an error that is not a TransportError cancels the other workers, and
an outside cancel of `SlotClient.close` is not swallowed (issue 11, point 4).

Real server, ring and ucxx endpoints (tests/live_server.py); the faults come in through the client's
own seams: an events sink that fails (as a JsonlSink on a full disk would) and a link wrapper whose
close hangs.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from live_server import HOST, LiveServer, live_server, run

from transport.client import SlotClient
from transport.link import Link, Phase, SteppedLink
from transport.packer import fetch_batch
from transport.ring import SlotState

pytestmark = pytest.mark.timeout(120)

SLOTS = 8


class FailingSink:
    """Raises RuntimeError on the first `connect` event: a bug outside the transport's error
    hierarchy, met by one worker while its siblings are reading."""

    def __init__(self) -> None:
        self.failed = False

    def emit(self, type: str, **fields: Any) -> None:
        if type == "connect" and not self.failed:
            self.failed = True
            raise RuntimeError("events sink broke")


def _consumed(live: LiveServer) -> int:
    """Slots committed (FREE again): a read cut off by the cancel only releases its slot to READY."""
    return sum(live.ring.info(s).state is SlotState.FREE for s in range(live.ring.slots))


@pytest.mark.parametrize("batch_size", [0, 2], ids=["singles", "batched"])
def test_a_worker_bug_cancels_its_siblings_and_propagates(batch_size: int) -> None:
    async def scenario(live: LiveServer) -> tuple[int, int]:
        descs = [await live.aput(bytes([i]) * 64) for i in range(SLOTS)]
        client = SlotClient(read_timeout=2.0, quarantine=0.0, local=False, events=FailingSink())
        try:
            with pytest.raises(RuntimeError, match="events sink broke"):
                await fetch_batch(
                    client, descs, max_attempts=1, rounds=1, concurrency=2, batch_size=batch_size
                )
            at_raise = _consumed(live)
            # Long enough for a surviving worker to read every slot left (it did, with gather).
            await asyncio.sleep(1.5)
            return at_raise, _consumed(live)
        finally:
            await client.close()

    with live_server(slots=SLOTS, idle_evict=60.0) as live:
        at_raise, settled = run(scenario(live))
    assert at_raise < SLOTS, "the failure came after every slot was read: the test proves nothing"
    # A sibling cancelled after its COMMIT went out still commits that one exchange (at most a batch);
    # a sibling left running (gather) goes on to read every slot left.
    in_flight = max(batch_size, 1)
    assert settled - at_raise <= in_flight, f"{settled - at_raise} slot(s) were read after fetch_batch raised"
    assert settled < SLOTS, "every slot was read: the siblings kept running"


class SlowClose(SteppedLink):
    """A real link whose close hangs for `delay` seconds first (a peer that never answers)."""

    def __init__(self, inner: Link, delay: float, cancel_itself: bool = False) -> None:
        self.inner, self.port, self.role = inner, inner.port, inner.role
        self.delay = delay
        self.cancel_itself = cancel_itself
        self.aborted = False

    async def send(self, buf: Any, phase: Phase) -> None:
        await self.inner.send(buf, phase)

    async def recv(self, buf: Any, phase: Phase) -> None:
        await self.inner.recv(buf, phase)

    async def close(self) -> None:
        await asyncio.sleep(self.delay)
        if self.cancel_itself:  # as ucxx did when closing a broken endpoint
            raise asyncio.CancelledError
        await self.inner.close()

    def abort(self) -> None:
        self.aborted = True
        self.inner.abort()

    @property
    def closed(self) -> bool:
        return self.inner.closed


def _client(links: list[SlowClose], delay: float, cancel_itself: bool = False) -> SlotClient:
    def wrap(link: Link) -> Link:
        links.append(SlowClose(link, delay, cancel_itself))
        return links[-1]

    return SlotClient(read_timeout=10.0, quarantine=0.0, local=False, link_wrapper=wrap)


def test_cancelling_close_propagates_after_cleanup() -> None:
    async def scenario(live: LiveServer) -> None:
        links: list[SlowClose] = []
        client = _client(links, delay=5.0)
        assert await client.warm(HOST, live.server.ports) == 1
        closing = asyncio.ensure_future(client.close())
        await asyncio.sleep(0.1)  # close is now waiting on the hanging link
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert [link.aborted for link in links] == [True], "the pooled link was not aborted"
        assert not client._ucx_acquired, "ucxx was not released before the cancel propagated"

    with live_server(idle_evict=60.0) as live:
        run(scenario(live))


def test_a_close_cancelled_from_inside_is_not_an_outside_cancel() -> None:
    async def scenario(live: LiveServer) -> None:
        links: list[SlowClose] = []
        client = _client(links, delay=0.0, cancel_itself=True)
        assert await client.warm(HOST, live.server.ports) == 1
        await client.close()  # returns: nobody cancelled the caller
        assert [link.aborted for link in links] == [True]

    with live_server(idle_evict=60.0) as live:
        run(scenario(live))
