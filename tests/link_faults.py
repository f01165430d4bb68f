"""Test helper link wrappers loaded by name in the spawned server process."""

from __future__ import annotations

import os
from typing import Any

from transport.link import Link, Phase, SteppedLink


def _record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class DropCommitted(SteppedLink):
    """Swallows the first `count` COMMITTED replies and aborts the endpoint, like a lost message."""

    def __init__(self, inner: Link, state: dict[str, int], fired_path: str) -> None:
        self.inner, self.port, self.role = inner, inner.port, inner.role
        self._state, self._fired_path = state, fired_path

    async def send(self, buf: Any, phase: Phase) -> None:
        if phase == Phase.COMMITTED and self._state["left"] > 0:
            self._state["left"] -= 1
            _record(self._fired_path, f"{self.port} drop_committed")
            self.inner.abort()
            return
        await self.inner.send(buf, phase)

    async def recv(self, buf: Any, phase: Phase) -> None:
        await self.inner.recv(buf, phase)

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    @property
    def closed(self) -> bool:
        return self.inner.closed


def drop_committed(*, events: Any, count: int, fired_path: str) -> Any:
    state = {"left": count}
    return lambda link: DropCommitted(link, state, fired_path)
