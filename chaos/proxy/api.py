"""Toxiproxy 2.12's HTTP API over a `ProxyCollection`, served by aiohttp.

Same paths, methods, JSON shapes and status codes as toxiproxy-server, so its clients (the PyPI
`toxiproxy-python` among them) work unchanged. Errors are rendered as Go's `http.Error` renders them:
a `{"error": ..., "status": ...}` line with a text/plain content type.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from chaos.proxy.collection import VERSION, ApiError, ProxyCollection
from chaos.proxy.tcp import Proxy

log = logging.getLogger(__name__)
COLLECTION: web.AppKey[ProxyCollection] = web.AppKey("collection", ProxyCollection)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=_dumps(value), content_type="application/json")


def _toxic_json(spec: Any) -> dict[str, Any]:
    data: dict[str, Any] = spec.to_json()
    if float(data["toxicity"]).is_integer():  # Go prints float32 1.0 as 1
        data["toxicity"] = int(data["toxicity"])
    return data


def _proxy_json(proxy: Proxy) -> dict[str, Any]:
    data = proxy.to_json()
    data["toxics"] = [_toxic_json(spec) for spec in proxy.toxics()]
    return data


def error_response(error: ApiError) -> web.Response:
    body = _dumps({"error": error.message, "status": error.status}) + b"\n"
    return web.Response(
        status=error.status,
        body=body,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-Content-Type-Options": "nosniff"},
    )


MAX_BODY_BYTES = 64 * 1024  # a proxy or toxic is a few hundred bytes; populate of many proxies fits


async def _body(request: web.Request) -> Any:
    """Decode the first JSON value of the body, ignoring what follows (as Go's json.Decoder does).
    A body over MAX_BODY_BYTES, or not UTF-8, is a 4xx in Toxiproxy's error shape."""
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise ApiError(f"request body too large: over {MAX_BODY_BYTES} bytes", 413)
    try:
        text = (await request.text()).lstrip()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(f"request body too large: over {MAX_BODY_BYTES} bytes", 413) from None
    except (UnicodeDecodeError, LookupError) as exc:
        raise ApiError(f"bad request body: {exc}", 400) from None
    if not text:
        raise ApiError("bad request body: EOF", 400)
    try:
        return json.JSONDecoder().raw_decode(text)[0]
    except json.JSONDecodeError as exc:
        raise ApiError(f"bad request body: {exc}", 400) from exc


@web.middleware
async def toxiproxy_behaviour(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browser refusal, Go-style routing misses, and ApiError (or any crash) -> error body."""
    if request.headers.get("User-Agent", "").startswith("Mozilla/"):
        return web.Response(status=403, text="User agent not allowed\n")
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPNotFound:
        return web.Response(status=404, text="404 page not found\n")
    except web.HTTPMethodNotAllowed:
        return web.Response(status=405)
    except web.HTTPException:
        raise
    except Exception as exc:
        log.exception("proxy API %s %s failed", request.method, request.path)
        return error_response(ApiError(str(exc), 500))


def _collection(request: web.Request) -> ProxyCollection:
    return request.app[COLLECTION]


async def proxy_index(request: web.Request) -> web.Response:
    proxies = _collection(request).proxies
    return _json({name: _proxy_json(proxy) for name, proxy in proxies.items()})


async def proxy_create(request: web.Request) -> web.Response:
    proxy = await _collection(request).create(await _body(request))
    return _json(_proxy_json(proxy), status=201)


async def populate(request: web.Request) -> web.Response:
    try:
        proxies = await _collection(request).populate(await _body(request))
    except ApiError as exc:
        return _json({"error": exc.message, "status": exc.status, "proxies": None}, status=exc.status)
    return _json({"proxies": [_proxy_json(p) for p in proxies]}, status=201)


async def proxy_show(request: web.Request) -> web.Response:
    return _json(_proxy_json(_collection(request).get(request.match_info["proxy"])))


async def proxy_update(request: web.Request) -> web.Response:
    collection = _collection(request)
    collection.get(request.match_info["proxy"])
    proxy = await collection.update(request.match_info["proxy"], await _body(request))
    return _json(_proxy_json(proxy))


async def proxy_delete(request: web.Request) -> web.Response:
    await _collection(request).delete(request.match_info["proxy"])
    return web.Response(status=204)


async def toxic_index(request: web.Request) -> web.Response:
    proxy = _collection(request).get(request.match_info["proxy"])
    return _json([_toxic_json(spec) for spec in proxy.toxics()])


async def toxic_create(request: web.Request) -> web.Response:
    collection = _collection(request)
    collection.get(request.match_info["proxy"])
    spec = await collection.add_toxic(request.match_info["proxy"], await _body(request))
    return _json(_toxic_json(spec))


async def toxic_show(request: web.Request) -> web.Response:
    info = request.match_info
    return _json(_toxic_json(_collection(request).toxic(info["proxy"], info["toxic"])))


async def toxic_update(request: web.Request) -> web.Response:
    info, collection = request.match_info, _collection(request)
    collection.toxic(info["proxy"], info["toxic"])
    spec = await collection.update_toxic(info["proxy"], info["toxic"], await _body(request))
    return _json(_toxic_json(spec))


async def toxic_delete(request: web.Request) -> web.Response:
    await _collection(request).remove_toxic(request.match_info["proxy"], request.match_info["toxic"])
    return web.Response(status=204)


async def meters(request: web.Request) -> web.Response:
    """Not in Toxiproxy: per toxic name, the connections and bytes it acted on (kept after removal)."""
    proxy = _collection(request).get(request.match_info["proxy"])
    return _json({name: meter.to_json() for name, meter in proxy.meters.items()})


async def reset(request: web.Request) -> web.Response:
    await _collection(request).reset()
    return web.Response(status=204)


async def version(request: web.Request) -> web.Response:
    body = f'{{"version": "{VERSION}"}}\n'.encode()
    return web.Response(body=body, headers={"Content-Type": "application/json;charset=utf-8"})


def create_app(collection: ProxyCollection) -> web.Application:
    """The API application; stopping it (aiohttp cleanup) stops every proxy."""
    app = web.Application(middlewares=[toxiproxy_behaviour], client_max_size=MAX_BODY_BYTES)
    app[COLLECTION] = collection

    async def close_proxies(app: web.Application) -> None:
        await app[COLLECTION].close()

    app.on_cleanup.append(close_proxies)
    r = app.router
    r.add_post("/reset", reset)
    r.add_get("/proxies", proxy_index)
    r.add_post("/proxies", proxy_create)
    r.add_post("/populate", populate)
    r.add_get("/proxies/{proxy}", proxy_show)
    r.add_post("/proxies/{proxy}", proxy_update)
    r.add_patch("/proxies/{proxy}", proxy_update)
    r.add_delete("/proxies/{proxy}", proxy_delete)
    r.add_get("/proxies/{proxy}/toxics", toxic_index)
    r.add_post("/proxies/{proxy}/toxics", toxic_create)
    r.add_get("/proxies/{proxy}/toxics/{toxic}", toxic_show)
    r.add_post("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_patch("/proxies/{proxy}/toxics/{toxic}", toxic_update)
    r.add_delete("/proxies/{proxy}/toxics/{toxic}", toxic_delete)
    r.add_get("/proxies/{proxy}/meters", meters)
    r.add_get("/version", version)
    return app
