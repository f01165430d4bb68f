"""A SlotServer on the process's shared loop over a real ring, for tests that need its counters.

The server, the attacking endpoints and the real consumer share one event loop (ucxx binds to one
loop per process), so a test can read `server.stats` and `server.live_endpoints` directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from transport.descriptor import SlotDescriptor
from transport.errors import RingFullError
from transport.protocol import RingKey
from transport.ring import SharedRing
from transport.server import SlotServer
from transport.syncloop import SharedLoop

HOST = "127.0.0.1"
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    return SharedLoop.get().run(coro, timeout)


class LiveServer:
    def __init__(self, ring: SharedRing, server: SlotServer) -> None:
        self.ring = ring
        self.server = server
        self.key = RingKey(ring.secret, ring.ring_id)

    @property
    def port(self) -> int:
        return self.server.ports[0]

    def put(self, data: bytes, timeout: float = 0.001) -> SlotDescriptor:
        """Write now (RingFullError if no slot is FREE: from the loop, use `aput`)."""
        w = self.ring.write(data, timeout=timeout)
        return SlotDescriptor(
            host=HOST,
            ports=tuple(self.server.ports),
            ring_id=self.ring.ring_id,
            ring_slots=self.ring.slots,
            slot=w.slot,
            generation=w.generation,
            nbytes=w.nbytes,
            checksum=w.checksum,
            capability=self.key.capability(w.slot, w.generation).hex(),
        )

    async def aput(self, data: bytes, timeout: float = 30.0) -> SlotDescriptor:
        """`put` from inside the loop: waits for a FREE slot without blocking the server's handlers
        (which may be the ones about to release it)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                return self.put(data)
            except RingFullError:
                if asyncio.get_running_loop().time() >= deadline:
                    raise
                await asyncio.sleep(0.02)

    async def wait_for_handlers(self, at_most: int, timeout: float) -> int:
        """Poll until at most `at_most` handlers are live (or `timeout`); returns the last count."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.server.live_endpoints > at_most and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        return self.server.live_endpoints


@contextmanager
def live_server(slots: int = 8, slot_bytes: int = 4096, **options: Any) -> Iterator[LiveServer]:
    ring = SharedRing.create(slots, slot_bytes)
    server = SlotServer(ring, (0,), **options)
    try:
        run(server.start(), 60)
        yield LiveServer(ring, server)
    finally:
        try:
            run(server.stop(), 30)
        finally:
            ring.close()
            ring.unlink()


def frame_buffer(size: int) -> np.ndarray:
    return np.zeros(size, dtype=np.uint8)
