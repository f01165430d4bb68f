"""Simulated hosts on real namespaces, veths and UCX traffic (needs root: CAP_NET_ADMIN)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from toxiproxy import Toxiproxy

from chaos.hosts import Fabric, InHost, netns, sweep
from chaos.hosts.fabric import PREFIX
from chaos.hosts.faults import KernelFaults
from chaos.hosts.links import HostLinks
from tests.host_roles import timed_reader
from transport.descriptor import SlotDescriptor
from transport.protocol import RingKey
from transport.ring import SharedRing
from transport.serve import ServerConfig, ServerProcess, server_main

SPAWN = mp.get_context("spawn")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_ADMIN) for namespaces")


class HostBed:
    """A ring served from host `server`, readers in other hosts, all across one fabric."""

    def __init__(self, fabric: Fabric, slots: int = 16, slot_bytes: int = 256 * 1024) -> None:
        self.fabric = fabric
        self.ring = SharedRing.create(slots, slot_bytes)
        self.key = RingKey(self.ring.secret, self.ring.ring_id)
        server = fabric.host("server")
        self.server = ServerProcess(
            ServerConfig(ring_name=self.ring.name, ports=[0, 0]),
            target=InHost(server_main, server.netns, server.ifname),
        )
        self.ports = self.server.start()
        self.readers: dict[str, tuple[Any, Any, Any]] = {}

    def publish(self, nbytes: int) -> dict[str, Any]:
        written = self.ring.write(os.urandom(nbytes), timeout=10.0)
        return SlotDescriptor(
            host=self.fabric.host("server").address,
            ports=tuple(self.ports),
            ring_id=self.ring.ring_id,
            ring_slots=self.ring.slots,
            slot=written.slot,
            generation=written.generation,
            nbytes=written.nbytes,
            checksum=written.checksum,
            capability=self.key.issue(written.slot, written.generation, "commit").hex(),
        ).to_dict()

    def reader(self, host: str, read_timeout: float = 5.0) -> None:
        h = self.fabric.host(host)
        requests, results = SPAWN.Queue(), SPAWN.Queue()
        proc = SPAWN.Process(
            target=InHost(timed_reader, h.netns, h.ifname), args=(requests, results, read_timeout)
        )
        proc.start()
        self.readers[host] = (proc, requests, results)

    def read(
        self, host: str, nbytes: int, timeout: float = 60.0
    ) -> tuple[str, float, int | None, str | None]:
        _, requests, results = self.readers[host]
        requests.put(self.publish(nbytes))
        return results.get(timeout=timeout)

    def close(self) -> None:
        for proc, requests, _ in self.readers.values():
            requests.put(None)
            proc.join(15)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        self.server.stop()
        self.ring.close()
        self.ring.unlink()


def _ours() -> list[str]:
    return netns.names(PREFIX)


@pytest.fixture
def fabric() -> Iterator[Fabric]:
    with Fabric("test", ["server", "consumer-1", "consumer-2"]) as fab:
        yield fab
    left = [n for n in _ours() if fab.id in n]
    assert not left, f"namespaces left behind: {left}"


@pytest.fixture
def bed(fabric: Fabric) -> Iterator[HostBed]:
    bed = HostBed(fabric)
    try:
        yield bed
    finally:
        bed.close()


def test_reads_cross_the_fabric_between_host_namespaces(bed: HostBed) -> None:
    bed.reader("consumer-1")
    server_ns = netns.inode(bed.fabric.host("server").netns)
    assert server_ns is not None and os.stat(f"/proc/{bed.server.pid}/ns/net").st_ino == server_ns
    for nbytes in (4096, 256 * 1024):
        key, _seconds, got, error = bed.read("consumer-1", nbytes)
        assert error is None and got == nbytes, (key, error)
    proc = bed.readers["consumer-1"][0]
    assert proc.pid in netns.pids(bed.fabric.host("consumer-1").netns)


def test_close_removes_every_namespace_and_kills_what_runs_inside() -> None:
    fab = Fabric("test", ["server", "consumer-1"]).create()
    h = fab.host("consumer-1")
    proc = SPAWN.Process(target=InHost(_sleep, h.netns, h.ifname), args=(60,))
    proc.start()
    try:
        deadline = 600  # 30 s: a loaded box can take long to spawn
        while not netns.pids(h.netns) and deadline:
            deadline -= 1
            __import__("time").sleep(0.05)
        assert proc.pid in netns.pids(h.netns)
        fab.close()
        proc.join(10)
        assert proc.exitcode is not None and proc.exitcode != 0
        assert not [n for n in _ours() if fab.id in n]
    finally:
        fab.close()
        if proc.is_alive():
            proc.kill()


def test_sweep_removes_a_dead_owners_fabric_and_spares_a_live_one() -> None:
    live = Fabric("live", ["a"]).create()
    dead_owner = SPAWN.Process(target=_build_and_die)
    dead_owner.start()
    dead_owner.join(60)
    try:
        dead = [n for n in _ours() if n.split("-")[1].startswith("dead.")]
        assert len(dead) == 3, f"the dead owner's namespaces should exist before the sweep: {dead}"
        removed = sweep()
        assert set(dead) <= set(removed) and not set(removed) & set(live.namespaces())
        assert all(netns.exists(n) for n in live.namespaces())
    finally:
        live.close()


def _sleep(seconds: float) -> None:
    __import__("time").sleep(seconds)


def _build_and_die() -> None:
    Fabric("dead", ["a", "b"]).create()
    os._exit(0)  # no close(): like kill -9, only the kernel's lock release remains


# -- faults on every byte: toxics through toxiproxy-python, kernel faults ---------------------------

KIB = 1024


@pytest.fixture
def links(fabric: Fabric) -> Iterator[HostLinks]:
    with HostLinks(fabric, seed=1) as host_links:
        yield host_links


def toxiproxy_client(url: str) -> Toxiproxy:
    """The PyPI client, pointed at the fabric's embedded API (it keeps the address per class)."""
    parts = urlsplit(url)
    client = Toxiproxy()
    client.update_api_consumer(parts.hostname, parts.port)
    return client


def _reads(bed: HostBed, host: str, nbytes: int, n: int) -> list[tuple[str, float, int | None, str | None]]:
    return [bed.read(host, nbytes) for _ in range(n)]


def _ok_seconds(results: list[tuple[str, float, int | None, str | None]]) -> list[float]:
    assert all(error is None for *_, error in results), results
    return [seconds for _, seconds, _, _ in results]


def test_bandwidth_toxic_on_a_host_link_throttles_only_that_hosts_payloads(
    bed: HostBed, links: HostLinks
) -> None:
    bed.reader("consumer-1", read_timeout=5.0)
    bed.reader("consumer-2", read_timeout=5.0)
    for host in ("consumer-1", "consumer-2"):
        _ok_seconds(_reads(bed, host, 256 * KIB, 2))  # connections up, both through the proxy
    proxy = toxiproxy_client(links.url).get_proxy("consumer-1->server")
    proxy.add_toxic(name="slow", type="bandwidth", attributes={"rate": 16})  # KB/s, server -> consumer-1
    _, seconds, got, error = bed.read("consumer-1", 256 * KIB)
    assert got is None or seconds >= 10.0, f"256 KiB at 16 KB/s took {seconds:.2f}s"
    assert error is None or "within 5.0s" in error, error  # the read timed out
    others = sorted(_ok_seconds(_reads(bed, "consumer-2", 256 * KIB, 5)))
    assert others[2] < 0.1, f"consumer-2's 256 KiB reads slowed by consumer-1's toxic: {others}"
    meter = links.meters()["consumer-1->server"]["slow"]
    assert meter["connections"] >= 1 and meter["bytes"] > 0, meter


def test_latency_toxic_raises_that_hosts_median_read_time(bed: HostBed, links: HostLinks) -> None:
    bed.reader("consumer-1", read_timeout=5.0)
    before = sorted(_ok_seconds(_reads(bed, "consumer-1", 64 * KIB, 5)))
    proxy = toxiproxy_client(links.url).get_proxy("consumer-1->server")
    proxy.add_toxic(name="late", type="latency", attributes={"latency": 200})
    after = sorted(_ok_seconds(_reads(bed, "consumer-1", 64 * KIB, 5)))
    assert before[2] < 0.2 <= after[2], (before, after)
    proxy.destroy_toxic("late")
    healed = sorted(_ok_seconds(_reads(bed, "consumer-1", 64 * KIB, 5)))
    assert healed[2] < 0.2, healed


def test_disabling_a_host_link_through_toxiproxy_fails_reads_until_enabled(
    bed: HostBed, links: HostLinks
) -> None:
    bed.reader("consumer-1", read_timeout=2.0)
    _ok_seconds(_reads(bed, "consumer-1", 64 * KIB, 2))
    proxy = toxiproxy_client(links.url).get_proxy("consumer-1->server")
    proxy.disable()
    failed = _reads(bed, "consumer-1", 64 * KIB, 2)
    assert all(error is not None for *_, error in failed), failed
    proxy.enable()
    assert _recovers(bed, "consumer-1")


def _recovers(bed: HostBed, host: str, tries: int = 5) -> bool:
    """A read succeeds within `tries` (the first after a fault may still meet a dying endpoint)."""
    return any(bed.read(host, 64 * KIB)[3] is None for _ in range(tries))


def test_partition_fails_reads_within_the_read_timeout_and_heals(fabric: Fabric, bed: HostBed) -> None:
    bed.reader("consumer-1", read_timeout=2.0)
    bed.reader("consumer-2", read_timeout=2.0)
    _ok_seconds(_reads(bed, "consumer-1", 64 * KIB, 2))
    faults = KernelFaults(fabric)
    cut = faults.make("partition", between=["consumer-1", "server"])
    cut.apply()
    try:
        failed = _reads(bed, "consumer-1", 64 * KIB, 2)
        assert all(error is not None and seconds < 2.0 + 3.0 for _, seconds, _, error in failed), failed
        _ok_seconds(_reads(bed, "consumer-2", 64 * KIB, 2))
    finally:
        cut.heal()
    assert _recovers(bed, "consumer-1")
    assert not faults.rules.active
