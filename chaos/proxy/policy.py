"""Which addresses the embedded proxy may listen on and relay to.

The API is unauthenticated (as Toxiproxy's is), so whoever reaches it could otherwise open listeners
on every interface and relay to any host:port. Unless the server is started with `allow_remote`
(`chaos proxy --allow-remote`), listen and upstream addresses must be loopback or inside
198.18.0.0/15, the range of the simulated hosts (DESIGN.md §3). Only literal addresses and
`localhost` are accepted then: a host name could resolve anywhere, and again differently later.
An empty listen host means loopback here (Toxiproxy would bind every interface).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from chaos.proxy.collection import ApiError
from chaos.proxy.tcp import parse_addr

SIMULATED_HOSTS = ipaddress.ip_network("198.18.0.0/15")
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_local(host: str) -> bool:
    """Loopback or a simulated host's address (literal IPs and `localhost` only)."""
    if host.lower() in LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return ip.is_loopback or (ip.version == 4 and ip in SIMULATED_HOSTS)


@dataclass(frozen=True)
class AddressPolicy:
    allow_remote: bool = False

    def listen(self, addr: str) -> str:
        """The address to listen on (an empty host becomes 127.0.0.1), or ApiError 400/403."""
        host, port = self._parse("listen", addr, allow_port_zero=True)
        if host is None:
            host = "0.0.0.0" if self.allow_remote else "127.0.0.1"
            return f"{host}:{port}"
        self._check("listen", host, addr)
        return addr

    def upstream(self, addr: str) -> str:
        host, _ = self._parse("upstream", addr, allow_port_zero=False)
        if host is None:
            raise ApiError(f"bad request body: upstream {addr!r}: missing host", 400)
        self._check("upstream", host, addr)
        return addr

    @staticmethod
    def _parse(what: str, addr: str, allow_port_zero: bool) -> tuple[str | None, int]:
        try:
            host, port = parse_addr(addr)
        except ValueError as exc:
            raise ApiError(f"bad request body: {what}: {exc}", 400) from None
        if not (0 if allow_port_zero else 1) <= port <= 65535:
            raise ApiError(f"bad request body: {what} {addr!r}: port out of range", 400)
        return host, port

    def _check(self, what: str, host: str, addr: str) -> None:
        if not self.allow_remote and not is_local(host):
            raise ApiError(
                f"{what} {addr!r} is not loopback or a simulated host (198.18.0.0/15); "
                "start the proxy with --allow-remote to permit it",
                403,
            )
