"""Host links as Toxiproxy proxies: every TCP connection between two hosts, relayed transparently.

In the fabric namespace, TPROXY hands each new connection between two intercepted hosts to one listener
(`IP_TRANSPARENT`, so it accepts connections addressed to any host). The proxy dials the original
destination *from the original source address* (an `IP_TRANSPARENT` socket bound to the client's
address), so neither side sees the proxy: UCX's wire-up, which checks addresses, keeps working (nat
REDIRECT breaks it, see DESIGN.md §3).

Each ordered pair of hosts is a proxy named `<a>-><b>` in the embedded Toxiproxy API. As with any
Toxiproxy proxy, its `upstream` stream is what `a` sends to `b` and `downstream` what `b` sends back,
whichever side opened the TCP connection (UCX opens data lanes both ways). So one connection between
`a` and `b` runs, per direction, the toxics of both proxies that describe it: bytes a->b pass
`a->b` upstream then `b->a` downstream. Disabling either proxy takes the link down: its connections
are cut and new ones refused. Host-link proxies cannot be moved (listen/upstream are fixed).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
from collections.abc import Iterable, Sequence
from typing import Any

from chaos.hosts.fabric import Fabric, Host
from chaos.hosts.rules import PacketRules, intercept_rules, route_marked_locally
from chaos.proxy.collection import ProxyCollection
from chaos.proxy.server import EmbeddedProxyServer
from chaos.proxy.tcp import DIAL_TIMEOUT, AlreadyStarted, Connection, Link, Proxy

IP_TRANSPARENT = 19
HOST_READ_SIZE = 256 * 1024  # bytes per read on host links: a 32 KiB read (Toxiproxy's) caps the relay
STREAM_LIMIT = 1 << 20
SOCKET_BUFFER = 4 << 20


def link_name(a: str, b: str) -> str:
    return f"{a}->{b}"


class HostLinkProxy(Proxy):
    """Directed host link `a->b`; its connections come from the fabric's transparent listener."""

    def __init__(self, a: Host, b: Host, listen: str, seed: int) -> None:
        super().__init__(link_name(a.name, b.name), listen, f"{b.address}:*", seed)
        self.a, self.b = a, b

    async def start(self) -> None:
        if self.enabled:
            raise AlreadyStarted(self.name)
        self.enabled = True

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        if (listen, upstream) != (self.listen, self.upstream):
            raise ValueError(f"{self.name} is a host link: its listen and upstream are fixed")
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            await self.stop()


class _Mirror:
    """A host connection as the reverse proxy (`b->a`) sees it: its streams swapped."""

    def __init__(self, conn: HostConnection) -> None:
        self.conn = conn
        self.links: dict[str, Link] = {
            "upstream": conn.links["downstream"],
            "downstream": conn.links["upstream"],
        }

    def abort(self, rst: bool = False) -> None:
        self.conn.abort(rst)

    async def wait(self) -> None:
        await self.conn.wait()


class HostConnection(Connection):
    """One intercepted connection from host `a` to host `b`, under the toxics of `a->b` and `b->a`."""

    read_size = HOST_READ_SIZE

    def __init__(
        self, forward: HostLinkProxy, backward: HostLinkProxy, index: int, client: Any, upstream: Any
    ) -> None:
        super().__init__(forward, index, client, upstream)
        self.backward = backward
        self.mirror = _Mirror(self)

    def begin(self) -> None:
        fwd, bwd = self.proxy.chains, self.backward.chains
        self.links["upstream"].start([*fwd["upstream"], *bwd["downstream"]])
        self.links["downstream"].start([*fwd["downstream"], *bwd["upstream"]])

    def link_done(self, link: Link) -> None:
        super().link_done(link)
        if self._done == len(self.links):
            self.backward.forget(self.mirror)  # type: ignore[arg-type]


def _transparent_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # asyncio sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP; without it Nagle and
    # delayed ACKs add 40 ms to every UCX rendezvous (measured: 64 KiB reads 2.7 ms -> 47 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, opt, SOCKET_BUFFER)
    sock.setblocking(False)
    return sock


class TransparentListener:
    """Accepts every intercepted connection and hands it to the proxy pair of its two hosts."""

    def __init__(self, fabric: Fabric, collection: ProxyCollection) -> None:
        self.fabric = fabric
        self.collection = collection
        self.port = 0
        self.refused = 0
        self._server: asyncio.Server | None = None
        self._index = itertools.count()

    async def start(self) -> int:
        sock = _transparent_socket()
        sock.bind(("0.0.0.0", 0))
        sock.listen(1024)
        self._server = await asyncio.start_server(self._accept, sock=sock, limit=STREAM_LIMIT)
        self.port = sock.getsockname()[1]
        return self.port

    def _pair(self, src: str, dst: str) -> tuple[HostLinkProxy, HostLinkProxy] | None:
        a, b = self.fabric.host_of_address(src), self.fabric.host_of_address(dst)
        if a is None or b is None:
            return None
        forward = self.collection.proxies.get(link_name(a.name, b.name))
        backward = self.collection.proxies.get(link_name(b.name, a.name))
        if not isinstance(forward, HostLinkProxy) or not isinstance(backward, HostLinkProxy):
            return None
        if not (forward.enabled and backward.enabled):
            return None
        return forward, backward

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = writer.get_extra_info("socket")
        if accepted is not None:
            with contextlib.suppress(OSError):
                accepted.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        src = writer.get_extra_info("peername")
        dst = writer.get_extra_info("sockname")
        pair = self._pair(src[0], dst[0])
        upstream = None
        if pair is not None:
            upstream = await self._dial(src[0], dst)
        if pair is None or upstream is None or not (pair[0].enabled and pair[1].enabled):
            self.refused += 1
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()
            return
        forward, backward = pair
        conn = HostConnection(forward, backward, next(self._index), (reader, writer), upstream)
        forward._connections.add(conn)
        backward._connections.add(conn.mirror)  # type: ignore[arg-type]
        conn.begin()

    async def _dial(
        self, src_ip: str, dst: tuple[str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Connect to the original destination from the client's own address."""
        sock = _transparent_socket()
        try:
            sock.bind((src_ip, 0))
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, dst), DIAL_TIMEOUT)
            return await asyncio.open_connection(sock=sock, limit=STREAM_LIMIT)
        except (OSError, TimeoutError):
            sock.close()
            return None

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None


class HostLinks:
    """The fabric's Toxiproxy: a proxy per ordered host pair, TPROXY for the pairs in `intercept`.

    `intercept` lists unordered host pairs whose connections pass the proxy (None: every pair). Pairs
    left out run at kernel speed and their proxies exist but see no traffic. `redirect=False` builds
    everything but installs no TPROXY rule (for showing that a toxic off the data path is caught).
    """

    def __init__(
        self,
        fabric: Fabric,
        *,
        seed: int | None = None,
        intercept: Iterable[Sequence[str]] | None = None,
        redirect: bool = True,
    ) -> None:
        self.fabric = fabric
        names = list(fabric.hosts)
        pairs = intercept if intercept is not None else itertools.combinations(names, 2)
        self.intercepted = sorted({tuple(sorted(p)) for p in pairs})  # type: ignore[misc]
        for pair in self.intercepted:
            for name in pair:
                fabric.host(name)
        self.redirect = redirect
        self.server = EmbeddedProxyServer(seed=seed, netns=fabric.fabric_netns)
        self.rules = PacketRules(fabric.fabric_netns)
        self.listener: TransparentListener | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> HostLinks:
        self.server.start()
        try:
            port = self.server.call(self._setup())
            if self.redirect and self.intercepted:
                route_marked_locally(self.fabric.fabric_netns)
                dirs = []
                for a, b in self.intercepted:
                    sa, sb = self.fabric.host(a).subnet, self.fabric.host(b).subnet
                    dirs += [(sa, sb), (sb, sa)]
                self.rules.add(intercept_rules(dirs, port))
        except BaseException:
            self.close()
            raise
        return self

    async def _setup(self) -> int:
        collection = self.server.collection
        assert collection is not None
        self.listener = TransparentListener(self.fabric, collection)
        port = await self.listener.start()
        listen = f"0.0.0.0:{port}"
        async with collection.lock:
            for a, b in itertools.permutations(self.fabric.hosts.values(), 2):
                proxy = HostLinkProxy(a, b, listen, collection.seed)
                await proxy.start()
                collection.proxies[proxy.name] = proxy
        return port

    def meters(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per proxy, per toxic name: connections and bytes the toxic acted on (removed toxics too)."""
        collection = self.server.collection
        if collection is None:
            return {}
        return {
            name: {toxic: meter.to_json() for toxic, meter in proxy.meters.items()}
            for name, proxy in list(collection.proxies.items())
        }

    def close(self) -> None:
        """Stop the proxy (cutting its connections) and remove the interception rules. Idempotent."""
        with contextlib.suppress(Exception):
            self.rules.clear()
        if self.listener is not None and self.server.collection is not None:
            with contextlib.suppress(Exception):
                self.server.call(self.listener.close())
            self.listener = None
        self.server.stop()

    def __enter__(self) -> HostLinks:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
