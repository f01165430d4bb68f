"""Simulated hosts on real namespaces, veths and UCX traffic (needs root: CAP_NET_ADMIN)."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from typing import Any

import pytest

from chaos.hosts import Fabric, InHost, netns, sweep
from chaos.hosts.fabric import PREFIX
from tests.host_roles import timed_reader
from transport.descriptor import SlotDescriptor
from transport.ring import SharedRing
from transport.serve import ServerConfig, ServerProcess, server_main

SPAWN = mp.get_context("spawn")
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (CAP_NET_ADMIN) for namespaces")


class HostBed:
    """A ring served from host `server`, readers in other hosts, all across one fabric."""

    def __init__(self, fabric: Fabric, slots: int = 16, slot_bytes: int = 256 * 1024) -> None:
        self.fabric = fabric
        self.ring = SharedRing.create(slots, slot_bytes)
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
            slot=written.slot,
            generation=written.generation,
            nbytes=written.nbytes,
            checksum=written.checksum,
            secret=self.ring.secret_hex,
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
    before = set(_ours())
    with Fabric("test", ["server", "consumer-1", "consumer-2"]) as fab:
        yield fab
    assert set(_ours()) <= before, f"namespaces left behind: {sorted(set(_ours()) - before)}"


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
        key, seconds, got, error = bed.read("consumer-1", nbytes)
        assert error is None and got == nbytes, (key, error)
    proc = bed.readers["consumer-1"][0]
    assert proc.pid in netns.pids(bed.fabric.host("consumer-1").netns)


def test_close_removes_every_namespace_and_kills_what_runs_inside() -> None:
    fab = Fabric("test", ["server", "consumer-1"]).create()
    h = fab.host("consumer-1")
    proc = SPAWN.Process(target=InHost(_sleep, h.netns, h.ifname), args=(60,))
    proc.start()
    try:
        deadline = 100
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


def test_sweep_removes_a_dead_owners_fabric_and_spares_a_live_one(tmp_path: Any) -> None:
    live = Fabric("live", ["a"], state_dir=tmp_path).create()
    dead_owner = SPAWN.Process(target=_build_and_die, args=(str(tmp_path),))
    dead_owner.start()
    dead_owner.join(60)
    try:
        dead = [n for n in _ours() if ".dead." in n or "-dead" in n or n.split("-")[1].startswith("dead.")]
        assert dead, "the dead owner's namespaces should exist before the sweep"
        removed = sweep(tmp_path)
        assert sorted(removed) == sorted(dead)
        assert all(netns.exists(n) for n in live.namespaces())
    finally:
        live.close()


def _sleep(seconds: float) -> None:
    __import__("time").sleep(seconds)


def _build_and_die(state_dir: str) -> None:
    from pathlib import Path

    Fabric("dead", ["a", "b"], state_dir=Path(state_dir)).create()
    os._exit(0)  # no close(): like kill -9, only the kernel's lock release remains
