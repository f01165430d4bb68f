"""The fault seam: server and client talk through a `Link`, never to a ucxx endpoint directly.

The chaos harness installs a `LinkWrapper` that decorates links with faults (Toxiproxy's toxics,
moved inside the process); with chaos off the wrapper is the identity and costs one call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from enum import StrEnum
from typing import Any, Protocol

from transport import ucx


class Phase(StrEnum):
    """Which protocol message a send/recv carries, so a fault can target one step."""

    REQUEST = "request"
    STATUS = "status"
    PAYLOAD = "payload"
    INLINE = "inline"  # STATUS and a small payload in one message: faults of both phases apply
    COMMIT = "commit"
    COMMITTED = "committed"
    RESOLVE = "resolve"  # RESOLVE request and RESOLVED reply, kept apart so `drop_commit` spares them


class Link(Protocol):
    """What server and client talk through. Posting ahead is part of the contract: `post_send` /
    `post_recv` start a transfer now and return a future to await later (transfers posted on one link
    are matched in the order they were posted), or return None when this link goes step by step (a
    fault wrapper: its faults act inside `send`/`recv`), and the caller then uses `send`/`recv`. A
    wrapper passes the posts through to its inner link when it may, or inherits `SteppedLink`."""

    port: int
    role: str

    async def send(self, buf: Any, phase: Phase) -> None: ...

    async def recv(self, buf: Any, phase: Phase) -> None: ...

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None: ...

    def post_recv(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None: ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...

    @property
    def closed(self) -> bool: ...


LinkWrapper = Callable[[Link], Link]


class SteppedLink:
    """Base of a link wrapper that posts nothing ahead: every transfer goes through its `send`/`recv`,
    one step at a time, so the faults it adds there act on every message."""

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None:
        return None

    def post_recv(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None:
        return None


def start_recv(link: Link, buf: Any, phase: Phase) -> asyncio.Future[None]:
    """Start a receive now, so receives are matched in the order they were started; await it later.

    A link that posts ahead (a bare `UcxLink`) posts straight to UCX; a stepped one runs its `recv`
    as a task, which starts in creation order.
    """
    return link.post_recv(buf, phase) or asyncio.ensure_future(link.recv(buf, phase))


def discard(future: asyncio.Future[None] | None) -> None:
    """A posted transfer nobody will await any more: cancel it, or mark its error as seen."""
    if future is None:
        return
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


def identity(link: Link) -> Link:
    return link


class UcxLink:
    """A ucxx endpoint as a Link. `port` is the server port index's real port number."""

    def __init__(self, endpoint: Any, port: int, role: str) -> None:
        self.endpoint = endpoint
        self.port = port
        self.role = role
        self._aborted = False

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None]:
        engine = ucx.engine()
        if engine is not None:
            return engine.post_send(self.endpoint, buf)
        return asyncio.ensure_future(self.endpoint.send(buf))

    def post_recv(self, buf: Any, phase: Phase) -> asyncio.Future[None]:
        engine = ucx.engine()
        if engine is not None:
            return engine.post_recv(self.endpoint, buf)
        return asyncio.ensure_future(self.endpoint.recv(buf))

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
