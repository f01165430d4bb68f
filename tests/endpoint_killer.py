"""Test helper: a server-side link wrapper that aborts endpoints at random protocol steps.

Loaded by the spawned server process by name (`endpoint_killer:make`), so it must be importable
from the tests directory. Each abort appends a line to `fired_path`, so tests can prove it fired.
"""

from __future__ import annotations

import os
import random
from typing import Any

from transport.link import Link, Phase, SteppedLink


class EndpointKilled(ConnectionError):
    pass


class KillingLink(SteppedLink):
    def __init__(self, inner: Link, rng: random.Random, probability: float, fired_path: str) -> None:
        self.inner = inner
        self.port = inner.port
        self.role = inner.role
        self._rng = rng
        self._p = probability
        self._fired_path = fired_path

    def _maybe_kill(self, phase: Phase) -> None:
        if self._rng.random() < self._p:
            self.inner.abort()
            self._record(phase, "before")
            raise EndpointKilled(f"test killed endpoint at {phase.value}")

    def _record(self, phase: Phase, when: str) -> None:
        fd = os.open(self._fired_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, f"{self.port} {phase.value} {when}\n".encode())
        finally:
            os.close(fd)

    async def send(self, buf: Any, phase: Phase) -> None:
        self._maybe_kill(phase)
        await self.inner.send(buf, phase)
        if phase == Phase.PAYLOAD and self._rng.random() < self._p:
            # Abort right after the send completed locally, without telling the server code:
            # the bytes may or may not reach the client (a completed send is not a receipt).
            self._record(phase, "after-send")
            self.inner.abort()

    async def recv(self, buf: Any, phase: Phase) -> None:
        await self.inner.recv(buf, phase)
        if phase != Phase.REQUEST:
            self._maybe_kill(phase)

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def closed(self) -> bool:
        return self.inner.closed


def make(*, events: Any, probability: float, seed: int, fired_path: str) -> Any:
    rng = random.Random(seed)

    def wrap(link: Link) -> Link:
        return KillingLink(link, rng, probability, fired_path)

    return wrap
