"""Proxies by name, with Toxiproxy 2.12's validation rules and error messages (HTTP-agnostic).

Every request body arrives as decoded JSON (or a decode error); each operation raises `ApiError`
with Toxiproxy's message and status, which the HTTP layer renders as `{"error": ..., "status": ...}`.
Mutations are serialised by one lock, as Toxiproxy serialises them with its collection mutex.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

from chaos.proxy.tcp import AlreadyStarted, Proxy
from chaos.proxy.toxics import REGISTRY, STREAMS, ToxicSpec

VERSION = "2.12.0"


class ApiError(Exception):
    """An error with Toxiproxy's message and HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status

    def wrap(self, detail: object) -> ApiError:
        return ApiError(f"{self.message}: {detail}", self.status)


BAD_REQUEST_BODY = ApiError("bad request body", 400)
MISSING_FIELD = ApiError("missing required field", 400)
PROXY_NOT_FOUND = ApiError("proxy not found", 404)
PROXY_EXISTS = ApiError("proxy already exists", 409)
INVALID_STREAM = ApiError("stream was invalid, can be either upstream or downstream", 400)
INVALID_TOXIC_TYPE = ApiError("invalid toxic type", 400)
TOXIC_EXISTS = ApiError("toxic already exists", 409)
TOXIC_NOT_FOUND = ApiError("toxic not found", 404)


def _field(body: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    """A typed JSON field; a wrong type is a body decode error, as with Go's json.Decoder."""
    value = body.get(key)
    if value is None:  # absent or null: Go leaves the default in place
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise BAD_REQUEST_BODY.wrap(
            f"json: cannot unmarshal {type(value).__name__} into field {key} of type {kind.__name__}"
        )
    return value


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BAD_REQUEST_BODY.wrap(f"json: cannot unmarshal {type(body).__name__} into {what}")
    return body


class ProxyCollection:
    """All proxies of one server; `seed` makes every connection's toxicity draws reproducible.

    Listen and upstream addresses go through `chaos.proxy.policy.AddressPolicy` (loopback and the
    simulated hosts only, unless `allow_remote`). Every refusal is a 4xx `ApiError`: a bad request
    never reaches the client as a 500.
    """

    def __init__(self, seed: int | None = None, *, allow_remote: bool = False) -> None:
        from chaos.proxy.policy import AddressPolicy  # policy imports ApiError from here

        self.policy = AddressPolicy(allow_remote)
        self.seed = seed if seed is not None else random.randrange(2**63)
        self.proxies: dict[str, Proxy] = {}
        self.lock = asyncio.Lock()

    def get(self, name: str) -> Proxy:
        proxy = self.proxies.get(name)
        if proxy is None:
            raise PROXY_NOT_FOUND
        return proxy

    def _new_proxy(self, body: dict[str, Any], where: str = "") -> tuple[Proxy, bool]:
        name = _field(body, "name", str, "")
        upstream = _field(body, "upstream", str, "")
        if not name:
            raise MISSING_FIELD.wrap(f"name{where}")
        if not upstream:
            raise MISSING_FIELD.wrap(f"upstream{where}")
        listen = self.policy.listen(_field(body, "listen", str, ""))
        upstream = self.policy.upstream(upstream)
        enabled = _field(body, "enabled", bool, True)
        return Proxy(name, listen, upstream, self.seed), enabled

    @staticmethod
    async def _start(proxy: Proxy) -> None:
        try:
            await proxy.start()
        except AlreadyStarted:
            pass
        except (OSError, ValueError, OverflowError) as exc:
            raise ApiError(f"listen tcp {proxy.listen}: {exc}", 400) from exc

    async def create(self, body: Any) -> Proxy:
        proxy, enabled = self._new_proxy(_object(body, "Go value of type toxiproxy.Proxy"))
        async with self.lock:
            if proxy.name in self.proxies:
                raise PROXY_EXISTS
            if enabled:
                await self._start(proxy)
            self.proxies[proxy.name] = proxy
        return proxy

    async def populate(self, body: Any) -> list[Proxy]:
        """Create or replace many proxies; all are validated before any is applied."""
        if not isinstance(body, list):
            raise BAD_REQUEST_BODY.wrap(
                f"json: cannot unmarshal {type(body).__name__} into Go value of type []struct"
            )
        wanted: list[tuple[Proxy, bool]] = []
        for i, item in enumerate(body, start=1):
            wanted.append(self._new_proxy(_object(item, "Go struct"), f" at proxy {i}"))
        names = [proxy.name for proxy, _ in wanted]
        duplicate = next((n for n in names if names.count(n) > 1), None)
        if duplicate is not None:
            raise ApiError(f'duplicate proxy name "{duplicate}"', 400)
        result: list[Proxy] = []
        async with self.lock:
            for proxy, enabled in wanted:
                existing = self.proxies.get(proxy.name)
                if existing is not None:
                    if (existing.listen, existing.upstream) == (proxy.listen, proxy.upstream):
                        result.append(existing)
                        continue
                    await existing.stop()
                    del self.proxies[proxy.name]
                if enabled:
                    await self._start(proxy)
                self.proxies[proxy.name] = proxy
                result.append(proxy)
        return result

    async def update(self, name: str, body: Any) -> Proxy:
        proxy = self.get(name)
        body = _object(body, "Go value of type toxiproxy.Proxy")
        listen = _field(body, "listen", str, proxy.listen)
        listen = proxy.listen if listen == proxy.listen else self.policy.listen(listen)
        upstream = _field(body, "upstream", str, proxy.upstream)
        # As with listen, an unchanged address is not re-checked: a host link's upstream (`<host>:*`,
        # any port of that host) is no dialable address, and clients send it back with every update.
        upstream = proxy.upstream if upstream == proxy.upstream else self.policy.upstream(upstream)
        enabled = _field(body, "enabled", bool, proxy.enabled)
        async with self.lock:
            try:
                await proxy.update(listen, upstream, enabled)
            except (OSError, ValueError, OverflowError) as exc:
                raise ApiError(f"listen tcp {proxy.listen}: {exc}", 400) from exc
        return proxy

    async def delete(self, name: str) -> None:
        async with self.lock:
            proxy = self.get(name)
            await proxy.stop()
            del self.proxies[name]

    async def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        async with self.lock:
            for proxy in list(self.proxies.values()):
                await self._start(proxy)
                await proxy.reset_toxics()

    def toxic(self, proxy_name: str, toxic_name: str) -> ToxicSpec:
        spec = self.get(proxy_name).find_toxic(toxic_name)
        if spec is None:
            raise TOXIC_NOT_FOUND
        return spec

    async def add_toxic(self, proxy_name: str, body: Any) -> ToxicSpec:
        proxy = self.get(proxy_name)
        body = _object(body, "Go value of type toxics.ToxicWrapper")
        stream = _field(body, "stream", str, "downstream")
        toxicity = _field(body, "toxicity", float, 1.0)
        kind = _field(body, "type", str, "")
        name = _field(body, "name", str, "")
        if stream.lower() not in STREAMS:
            raise INVALID_STREAM
        name = name or f"{kind}_{stream}"
        cls = REGISTRY.get(kind)
        if cls is None:
            raise INVALID_TOXIC_TYPE
        async with self.lock:
            if proxy.find_toxic(name) is not None:
                raise TOXIC_EXISTS
            try:
                toxic = cls.parse(body.get("attributes"))
            except ValueError as exc:
                raise BAD_REQUEST_BODY.wrap(exc) from exc
            spec = ToxicSpec(name=name, type=kind, stream=stream, toxicity=toxicity, toxic=toxic)
            proxy.add_toxic(spec)
        return spec

    async def update_toxic(self, proxy_name: str, toxic_name: str, body: Any) -> ToxicSpec:
        proxy = self.get(proxy_name)
        spec = self.toxic(proxy_name, toxic_name)
        body = _object(body, "Go value of type struct")
        toxicity = _field(body, "toxicity", float, spec.toxicity)
        try:
            toxic = type(spec.toxic).parse(body.get("attributes"), base=spec.toxic)
        except ValueError as exc:
            raise BAD_REQUEST_BODY.wrap(exc) from exc
        async with self.lock:
            await proxy.update_toxic(spec, toxic, toxicity)
        return spec

    async def remove_toxic(self, proxy_name: str, toxic_name: str) -> None:
        async with self.lock:
            proxy = self.get(proxy_name)
            spec = self.toxic(proxy_name, toxic_name)
            await proxy.remove_toxic(spec)

    async def close(self) -> None:
        """Stop every proxy (server shutdown)."""
        async with self.lock:
            for proxy in self.proxies.values():
                await proxy.stop()
