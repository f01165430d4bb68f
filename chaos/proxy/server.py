"""Run the embedded Toxiproxy-compatible server: in-process on a background thread, or standalone.

The in-process server owns its own event loop on a daemon thread, so the harness (sync or async,
with or without ucxx on its own loop) drives it over HTTP exactly as it would drive an external
toxiproxy-server. Start and stop are bounded; a stuck loop is abandoned, never waited on forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from chaos.proxy.api import create_app
from chaos.proxy.collection import ProxyCollection
from chaos.proxy.policy import is_local

SHUTDOWN_TIMEOUT = 1.0
T = TypeVar("T")


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def start_api(
    host: str, port: int, seed: int | None, allow_remote: bool = False, sock: socket.socket | None = None
) -> tuple[web.AppRunner, ProxyCollection, str]:
    """Start the HTTP API on (host, port), or on the bound `sock`; port 0 picks a free one.

    Without `allow_remote` the API itself must listen on loopback too (ValueError otherwise)."""
    if not allow_remote and not is_local(host):
        raise ValueError(f"API host {host!r} is not loopback: pass --allow-remote to listen there")
    collection = ProxyCollection(seed, allow_remote=allow_remote)
    runner = web.AppRunner(
        create_app(collection), handle_signals=False, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT
    )
    await runner.setup()
    try:
        site = web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, host, port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return runner, collection, _url(host, bound_port)


async def serve(
    host: str,
    port: int,
    seed: int | None,
    stop: asyncio.Event,
    on_ready: Callable[[str, int], None],
    allow_remote: bool = False,
) -> None:
    """Serve until `stop` is set; `on_ready(url, seed)` is called once listening."""
    runner, collection, url = await start_api(host, port, seed, allow_remote)
    try:
        on_ready(url, collection.seed)
        await stop.wait()
    finally:
        await runner.cleanup()


class EmbeddedProxyServer:
    """A Toxiproxy-compatible server on a background thread: `with EmbeddedProxyServer() as s: s.url`."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int | None = None,
        *,
        allow_remote: bool = False,
        netns: str | None = None,
    ) -> None:
        """With `netns`, the proxies (their listeners and upstream sockets) live in that network
        namespace while the API stays reachable here: its socket is bound before the loop moves."""
        self.netns = netns
        self.collection: ProxyCollection | None = None
        self.host = host
        self.port = port
        self.seed = seed
        self.allow_remote = allow_remote
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self, timeout: float = 10.0) -> EmbeddedProxyServer:
        if self._loop is not None:
            raise RuntimeError("server already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        sock = None
        if self.netns is not None:
            sock = socket.create_server((self.host, self.port))
        self._thread = threading.Thread(target=self._loop_main, name="toxiproxy-embedded", daemon=True)
        self._thread.start()
        try:
            future = asyncio.run_coroutine_threadsafe(
                start_api(self.host, self.port, self.seed, self.allow_remote, sock), loop
            )
            self._runner, collection, self.url = future.result(timeout)
            self.collection = collection
        except BaseException:
            self._shutdown(timeout)
            raise
        self.seed = collection.seed
        self.port = int(self.url.rsplit(":", 1)[1])
        return self

    def _loop_main(self) -> None:
        assert self._loop is not None
        if self.netns is not None:
            from chaos.hosts.netns import enter

            enter(self.netns)  # this thread only: every socket the loop opens from now on is in there
        self._loop.run_forever()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        """Run `coro` on the server's loop and return its result (bounded by `timeout`)."""
        if self._loop is None:
            raise RuntimeError("server not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the API and every proxy (closing their connections), then the loop; bounded by `timeout`."""
        if self._loop is None:
            return
        if self._runner is not None:
            future = asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop)
            with contextlib.suppress(Exception):
                future.result(timeout)
            self._runner = None
        self._shutdown(timeout)

    def _shutdown(self, timeout: float) -> None:
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def cancel_rest() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()

    def __enter__(self) -> EmbeddedProxyServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
