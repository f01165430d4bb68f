"""Server limits: a flood of endpoints that connect and never speak cannot starve real consumers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from live_server import HOST, LiveServer, live_server, run

from transport.client import SlotClient
from transport.packer import fetch_one

pytestmark = pytest.mark.timeout(170)

CAP = 32
FLOOD = 500


async def _flood(port: int, n: int, batch: int = 50) -> list[Any]:
    """Open `n` endpoints that never send a byte; returns those ucxx created."""
    import ucxx

    endpoints: list[Any] = []
    for start in range(0, n, batch):
        made = await asyncio.gather(
            *(asyncio.wait_for(ucxx.create_endpoint(HOST, port), 10) for _ in range(min(batch, n - start))),
            return_exceptions=True,
        )
        endpoints += [e for e in made if not isinstance(e, BaseException)]
    return endpoints


async def _scenario(live: LiveServer) -> dict[str, Any]:
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, live.server.live_endpoints)
            await asyncio.sleep(0.005)

    async with SlotClient(read_timeout=2.0, quarantine=0.0, max_age=120.0) as c:
        first = await live.aput(b"warm-up")
        assert bytes((await c.read(first)).payload) == b"warm-up"  # the consumer holds an endpoint now
        watcher = asyncio.ensure_future(watch())
        flood = asyncio.ensure_future(_flood(live.port, FLOOD))
        delivered = 0
        while not flood.done() or delivered < 20:
            desc = await live.aput(bytes([delivered % 256]) * 512)
            result, _ = await fetch_one(c, desc, max_attempts=4)
            assert bytes(result.payload) == bytes([delivered % 256]) * 512
            delivered += 1
        endpoints = await flood
        remaining = await live.wait_for_handlers(at_most=1, timeout=30.0)  # silent ones time out
        stop.set()
        await watcher
        for ep in endpoints:
            ep.abort()
        after = await live.aput(b"after the flood")
        assert bytes((await c.read(after)).payload) == b"after the flood"
        connects = c.stats.connects
    return {
        "delivered": delivered,
        "opened": len(endpoints),
        "peak": peak,
        "remaining": remaining,
        "connects": connects,
    }


def test_a_flood_of_silent_endpoints_is_capped_and_real_reads_go_on() -> None:
    with live_server(max_endpoints=CAP, first_frame_timeout=0.5, idle_evict=120.0) as live:
        seen = run(_scenario(live), 150)
        stats = dict(live.server.stats)
    assert seen["opened"] >= FLOOD * 0.9, f"the flood really connected: {seen}"
    assert seen["delivered"] >= 20, "the real consumer kept reading during the flood"
    assert seen["peak"] <= CAP, f"never more than {CAP} handlers: {seen}"
    assert stats["refused"] > 0, f"endpoints beyond the cap were refused: {stats}"
    assert stats["silent"] > 0, f"silent endpoints were closed after the first-frame bound: {stats}"
    assert stats["refused"] + stats["silent"] >= seen["opened"] * 0.9, stats
    assert seen["remaining"] <= 1, f"only the consumer's own endpoint is left: {seen}"
    assert seen["connects"] == 1, "the consumer kept its endpoint: the flood cost it nothing"
