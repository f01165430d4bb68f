"""The fault seam: server and client talk through a `Link`, never to a ucxx endpoint directly.

The chaos harness installs a `LinkWrapper` that decorates links with faults (Toxiproxy's toxics,
moved inside the process); with chaos off the wrapper is the identity and costs one call.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from transport import ucx


class Phase(StrEnum):
    """Which protocol message a send/recv carries, so a fault can target one step."""

    REQUEST = "request"
    STATUS = "status"
    PAYLOAD = "payload"
    COMMIT = "commit"
    COMMITTED = "committed"
    RESOLVE = "resolve"  # RESOLVE request and RESOLVED reply, kept apart so `drop_commit` spares them


class Link(Protocol):
    port: int
    role: str

    async def send(self, buf: Any, phase: Phase) -> None: ...

    async def recv(self, buf: Any, phase: Phase) -> None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def closed(self) -> bool: ...


LinkWrapper = Callable[[Link], Link]


def identity(link: Link) -> Link:
    return link


class UcxLink:
    """A ucxx endpoint as a Link. `port` is the server port index's real port number."""

    def __init__(self, endpoint: Any, port: int, role: str) -> None:
        self.endpoint = endpoint
        self.port = port
        self.role = role
        self._aborted = False

    async def send(self, buf: Any, phase: Phase) -> None:
        engine = ucx.engine()
        if engine is not None:
            await engine.send(self.endpoint, buf)
        else:
            await self.endpoint.send(buf)

    async def recv(self, buf: Any, phase: Phase) -> None:
        engine = ucx.engine()
        if engine is not None:
            await engine.recv(self.endpoint, buf)
        else:
            await self.endpoint.recv(buf)

    async def close(self) -> None:
        if not self.closed:
            try:
                await self.endpoint.close()
            except Exception:  # closing a broken endpoint: nothing left to save
                self.abort()

    def abort(self) -> None:
        if not self._aborted:
            self._aborted = True
            try:
                self.endpoint.abort()
            except Exception:
                pass

    @property
    def closed(self) -> bool:
        return self._aborted or bool(self.endpoint.closed)
