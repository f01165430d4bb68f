"""Proxy API hardening: loopback/simulated-host addresses only unless --allow-remote, a body size cap,
and every bad request answered in Toxiproxy's error shape with a 4xx, never a 500."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.proxy import EmbeddedProxyServer
from chaos.proxy.api import MAX_BODY_BYTES

pytestmark = pytest.mark.timeout(120)
WAIT = 5.0


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedProxyServer]:
    with EmbeddedProxyServer(seed=7) as embedded:
        yield embedded


def _post(server: EmbeddedProxyServer, path: str, body: Any = None, data: Any = None) -> requests.Response:
    return requests.post(f"{server.url}{path}", json=body, data=data, timeout=WAIT)


def _shaped(response: requests.Response, status: int) -> str:
    """Toxiproxy's error body: {"error": ..., "status": ...} with the HTTP status; returns the message."""
    assert response.status_code == status, (response.status_code, response.text)
    body = json.loads(response.text)
    assert body["status"] == status and isinstance(body["error"], str)
    return body["error"]


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ("0.0.0.0:0", "127.0.0.1:9"),
        ("[::]:0", "127.0.0.1:9"),
        ("10.1.2.3:0", "127.0.0.1:9"),
        ("127.0.0.1:0", "10.1.2.3:80"),
        ("127.0.0.1:0", "8.8.8.8:53"),
        ("127.0.0.1:0", "example.com:80"),
        ("127.0.0.1:0", "198.20.0.1:80"),  # just outside 198.18.0.0/15
    ],
)
def test_remote_listen_or_upstream_is_refused(
    server: EmbeddedProxyServer, listen: str, upstream: str
) -> None:
    name = f"remote-{abs(hash((listen, upstream)))}"
    message = _shaped(_post(server, "/proxies", {"name": name, "listen": listen, "upstream": upstream}), 403)
    assert "--allow-remote" in message
    assert requests.get(f"{server.url}/proxies/{name}", timeout=WAIT).status_code == 404, "nothing created"


@pytest.mark.parametrize(
    "upstream", ["127.0.0.1:9", "localhost:9", "[::1]:9", "198.18.3.4:80", "198.19.255.254:80"]
)
def test_loopback_and_simulated_hosts_are_allowed(server: EmbeddedProxyServer, upstream: str) -> None:
    name = f"local-{abs(hash(upstream))}"
    created = _post(server, "/proxies", {"name": name, "upstream": upstream})
    try:
        assert created.status_code == 201, created.text
        assert created.json()["listen"].startswith("127.0.0.1:"), "an empty listen host means loopback"
    finally:
        requests.delete(f"{server.url}/proxies/{name}", timeout=WAIT)


def test_update_cannot_move_a_proxy_to_a_remote_address(server: EmbeddedProxyServer) -> None:
    assert _post(server, "/proxies", {"name": "movable", "upstream": "127.0.0.1:9"}).status_code == 201
    try:
        _shaped(_post(server, "/proxies/movable", {"upstream": "10.0.0.1:80"}), 403)
        _shaped(_post(server, "/proxies/movable", {"listen": "0.0.0.0:0"}), 403)
        assert requests.get(f"{server.url}/proxies/movable", timeout=WAIT).json()["upstream"] == "127.0.0.1:9"
    finally:
        requests.delete(f"{server.url}/proxies/movable", timeout=WAIT)


def test_allow_remote_permits_every_interface() -> None:
    with EmbeddedProxyServer(allow_remote=True) as open_server:
        created = _post(
            open_server, "/proxies", {"name": "wide", "listen": "0.0.0.0:0", "upstream": "10.9.9.9:1"}
        )
        assert created.status_code == 201, created.text


def test_oversized_body_is_a_shaped_413(server: EmbeddedProxyServer) -> None:
    body = json.dumps({"name": "big", "upstream": "127.0.0.1:9", "pad": "x" * (MAX_BODY_BYTES + 10)})
    assert "too large" in _shaped(_post(server, "/proxies", data=body), 413)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/proxies", {"name": "p1", "upstream": "127.0.0.1:99999"}, 400),
        ("/proxies", {"name": "p2", "upstream": "127.0.0.1:0"}, 400),
        ("/proxies", {"name": "p3", "upstream": "127.0.0.1:9", "listen": "127.0.0.1:70000"}, 400),
        ("/proxies", {"name": "p4", "upstream": "nohost"}, 400),
        (
            "/populate",
            [{"name": "d", "upstream": "127.0.0.1:9"}, {"name": "d", "upstream": "127.0.0.1:9"}],
            400,
        ),
    ],
)
def test_bad_requests_are_4xx_not_500(server: EmbeddedProxyServer, path: str, body: Any, status: int) -> None:
    _shaped(_post(server, path, body), status)


def test_listen_on_a_busy_port_is_a_4xx(server: EmbeddedProxyServer) -> None:
    api_port = server.port  # certainly in use
    _shaped(
        _post(
            server, "/proxies", {"name": "busy", "listen": f"127.0.0.1:{api_port}", "upstream": "127.0.0.1:9"}
        ),
        400,
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
proxy_bodies = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=12) | json_values,
        "listen": st.sampled_from(["", "127.0.0.1:0", ":0", "0.0.0.0:1", "bad", "1.2.3.4:5", "[::1]:0"])
        | json_values,
        "upstream": st.sampled_from(["127.0.0.1:9", "x:y", ":80", "10.0.0.1:80", "127.0.0.1:65536"])
        | json_values,
        "enabled": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(["/proxies", "/populate", "/proxies/fuzzed", "/proxies/fuzzed/toxics"]),
    st.one_of(proxy_bodies, json_values, st.lists(proxy_bodies, max_size=3)),
)
def test_no_request_body_makes_a_500(server: EmbeddedProxyServer, path: str, body: Any) -> None:
    _post(server, "/proxies", {"name": "fuzzed", "upstream": "127.0.0.1:9"})
    response = _post(server, path, data=json.dumps(body, allow_nan=True))
    assert response.status_code < 500, (path, body, response.status_code, response.text)
    requests.post(f"{server.url}/reset", timeout=WAIT)
    for name in requests.get(f"{server.url}/proxies", timeout=WAIT).json():
        if name != "fuzzed":
            requests.delete(f"{server.url}/proxies/{name}", timeout=WAIT)


def test_cli_refuses_a_remote_api_host_without_the_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "proxy", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--allow-remote" in done.stderr
