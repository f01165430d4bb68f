"""`ProxyController`: the harness's handle on the network fault layer, one proxy per server port.

It speaks only the Toxiproxy HTTP API, through the PyPI client `toxiproxy-python`, so the embedded
server and a real toxiproxy-server (`--toxiproxy URL`) are interchangeable. Two client quirks shape it:
the client keeps its server address in class attributes (so calls are serialised under one lock and
re-point the client first), and it sets no HTTP timeout (so each call runs on a daemon thread that the
caller waits on for at most `timeout` seconds).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

import requests
from toxiproxy import Proxy, Toxiproxy
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists

from chaos.proxy.server import EmbeddedProxyServer

T = TypeVar("T")
_CLIENT_LOCK = threading.Lock()
_INSTANCES = itertools.count()


class ProxyControlError(RuntimeError):
    """The Toxiproxy server refused a request, was unreachable, or did not answer in time."""


def _message(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else b""
    try:
        return str(json.loads(raw)["error"])
    except (ValueError, KeyError, TypeError):
        return raw.decode(errors="replace") if isinstance(raw, bytes) else str(raw)


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


class ProxyController:
    """Proxies `127.0.0.1:<free port> -> 127.0.0.1:<listener port>` per port index, plus their faults.

    With no `url` it starts (and on `close` stops) an embedded server seeded with `seed`. Methods block
    for at most `timeout` seconds each; async callers run them with `asyncio.to_thread`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        seed: int | None = None,
        prefix: str | None = None,
        host: str = "127.0.0.1",
        timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.timeout = timeout
        self.prefix = prefix or f"slotwire-{os.getpid()}-{next(_INSTANCES)}-port"
        self._embedded: EmbeddedProxyServer | None = None
        if url is None:
            self._embedded = EmbeddedProxyServer(seed=seed).start(timeout)
            url = self._embedded.url
        self.url = url
        parts = urlsplit(url if "//" in url else f"http://{url}")
        self._api = (parts.hostname or "127.0.0.1", parts.port or 8474)
        self._server = Toxiproxy()
        self._proxies: dict[int, Proxy] = {}

    @property
    def seed(self) -> int | None:
        """The embedded server's seed (None for an external server, whose draws we do not control)."""
        return self._embedded.seed if self._embedded is not None else None

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """Run one client call against our server, bounded by `timeout`, with errors made ours."""
        box: dict[str, object] = {}

        def run() -> None:
            if not _CLIENT_LOCK.acquire(timeout=self.timeout):
                box["error"] = ProxyControlError(f"{what}: toxiproxy client busy")
                return
            try:
                self._server.update_api_consumer(*self._api)
                box["value"] = fn()
            except (ProxyExists, NotFound, InvalidToxic) as exc:
                box["error"] = ProxyControlError(f"{what}: {_message(exc)}")
            except requests.RequestException as exc:
                box["error"] = ProxyControlError(f"{what}: {self.url} unreachable: {exc}")
            except Exception as exc:  # e.g. a 500 body the client cannot parse
                error = ProxyControlError(f"{what}: {exc!r}")
                error.__cause__ = exc
                box["error"] = error
            finally:
                _CLIENT_LOCK.release()

        thread = threading.Thread(target=run, name="toxiproxy-call", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise ProxyControlError(f"{what}: no answer from {self.url} within {self.timeout:g}s")
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]

    def _proxy(self, index: int) -> Proxy:
        try:
            return self._proxies[index]
        except KeyError:
            raise ProxyControlError(f"port {index} has no proxy") from None

    @property
    def api_port(self) -> int:
        """The Toxiproxy API's port (the embedded server's, or the external one's)."""
        return self._api[1]

    def name(self, index: int) -> str:
        return f"{self.prefix}{index}"

    def add_port(self, index: int, upstream_port: int) -> int:
        """Put a proxy in front of listener port `upstream_port`; returns the port clients should use."""
        name = self.name(index)

        def create() -> Proxy:
            stale = self._server.get_proxy(name)
            if stale is not None:
                stale.destroy()
            return self._server.create(
                upstream=f"{self.host}:{upstream_port}", name=name, listen=f"{self.host}:0"
            )

        self._proxies[index] = self._call(f"create proxy {name}", create)
        return self.listen_port(index)

    def listen_port(self, index: int) -> int:
        return _port(self._proxy(index).listen)

    def ports(self) -> dict[int, int]:
        """Port index -> proxy listen port."""
        return {index: _port(proxy.listen) for index, proxy in self._proxies.items()}

    def add_toxic(
        self,
        index: int,
        type: str,
        attributes: Mapping[str, int] | None = None,
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        """Add a toxic to port `index`'s proxy; returns its name (default `<type>_<stream>`)."""
        proxy = self._proxy(index)
        toxic_name = name or f"{type}_{stream}"
        self._call(
            f"add toxic {toxic_name} to {proxy.name}",
            lambda: proxy.add_toxic(
                type=type,
                stream=stream,
                toxicity=toxicity,
                attributes=dict(attributes or {}),
                name=toxic_name,
            ),
        )
        return toxic_name

    def remove_toxic(self, index: int, name: str) -> None:
        proxy = self._proxy(index)
        self._call(f"remove toxic {name} from {proxy.name}", lambda: proxy.destroy_toxic(name))

    def toxics(self, index: int) -> dict[str, dict[str, object]]:
        """Toxic name -> its fields (type, stream, toxicity, attributes), as the server reports them."""
        proxy = self._proxy(index)
        found = self._call(f"list toxics of {proxy.name}", proxy.toxics)
        return {
            name: {"type": t.type, "stream": t.stream, "toxicity": t.toxicity, "attributes": t.attributes}
            for name, t in found.items()
        }

    def down(self, index: int) -> None:
        """Disable the proxy: existing connections close and new ones are refused."""
        proxy = self._proxy(index)
        self._call(f"disable {proxy.name}", proxy.disable)

    def up(self, index: int) -> None:
        proxy = self._proxy(index)
        self._call(f"enable {proxy.name}", proxy.enable)

    def reset(self) -> None:
        """Enable our proxies and remove their toxics (server-wide `POST /reset` if the server is ours)."""
        if self._embedded is not None:
            self._call("reset", self._server.reset)
            return
        for index in list(self._proxies):
            self.up(index)
            for name in self.toxics(index):
                self.remove_toxic(index, name)

    def close(self) -> None:
        """Delete our proxies (best effort) and stop the embedded server if we started it."""
        try:
            if self._embedded is None:
                for proxy in self._proxies.values():
                    try:
                        self._call(f"delete {proxy.name}", proxy.destroy)
                    except ProxyControlError:
                        pass
        finally:
            self._proxies.clear()
            if self._embedded is not None:
                self._embedded.stop(self.timeout)
                self._embedded = None

    def __enter__(self) -> ProxyController:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
