"""Network fault layer: an embedded Toxiproxy-compatible TCP proxy per port, driven over its HTTP API."""

from chaos.proxy.control import ProxyControlError, ProxyController
from chaos.proxy.server import EmbeddedProxyServer

__all__ = ["EmbeddedProxyServer", "ProxyControlError", "ProxyController"]
