"""The simulated network: one namespace per host, one *fabric* namespace that routes between them.

Each host gets a /24 out of `network` (default 198.18.0.0/15, the range reserved for network test
beds): the host is `.1` on its veth `eth0`, the fabric side of that veth is `.254` and the host's
default route. Everything a fabric creates is named `slotwire-<fabric id>-...`, where the fabric id
carries the run id, and is listed in a state file the owner keeps locked (`flock`) while it lives. The
kernel drops that lock when the owner dies however it dies (kill -9 included), so `sweep()` knows a
fabric whose lock it can take is dead and removes it. Deleting a namespace deletes its veths (and the
packet rules and qdiscs inside), so removing the namespaces is the whole teardown.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from pyroute2 import IPRoute

from chaos.hosts import netns

PREFIX = "slotwire-"
STATE_DIR = Path("/run/slotwire/fabrics")
DEFAULT_NETWORK = "198.18.0.0/15"
HOST_IFNAME = "eth0"
FABRIC = "fabric"
LINK_UP_TIMEOUT_S = 5.0
HOST_NAME = re.compile(r"^[a-z][a-z0-9]*(-[0-9]+)?$")


class FabricError(RuntimeError):
    """The fabric could not be built or torn down; the message names the step."""


@dataclass(frozen=True)
class Host:
    """One simulated host: its namespace, its interface and address as its processes see them."""

    name: str
    index: int
    netns: str
    ifname: str
    address: str
    gateway: str
    subnet: str
    fabric_ifname: str


def _fabric_id(run_id: str) -> str:
    """The run id made safe for names (no `-`, which separates the parts), plus a unique suffix."""
    safe = re.sub(r"[^A-Za-z0-9.]", ".", run_id).strip(".")[:60] or "run"
    return f"{safe}.{secrets.token_hex(2)}"


def _fabric_of(netns_name: str) -> str | None:
    """`slotwire-<id>-<rest>` -> id."""
    if not netns_name.startswith(PREFIX):
        return None
    rest = netns_name[len(PREFIX) :]
    fid, sep, _ = rest.partition("-")
    return fid if sep else None


def _set_sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    netns.run(ns, ["sh", "-c", f"echo {value} > {path}"])


def _open_netns(name: str, timeout: float = LINK_UP_TIMEOUT_S) -> int:
    """An fd of the named namespace; its bind mount can take a moment to appear to this process."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return os.open(netns.RUN_DIR / name, os.O_RDONLY)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _wait_running(ns: str, ifname: str, timeout: float = LINK_UP_TIMEOUT_S) -> None:
    """Wait until the link is operationally up: the kernel's link watch can lag `up` by up to 1 s, and
    UCX skips an interface that is not RUNNING when it starts."""
    deadline = time.monotonic() + timeout

    def wait(ipr: IPRoute) -> None:
        while True:
            link = ipr.get_links(ifname=ifname)[0]
            if link.get("state") == "up" and link.get("operstate") in ("UP", "UNKNOWN"):
                return
            if time.monotonic() > deadline:
                raise FabricError(f"{ifname} in {ns} not up after {timeout:g}s ({link.get('operstate')})")
            time.sleep(0.02)

    netns.netlink(ns, wait)


class Fabric:
    """Hosts wired through a fabric namespace; `with Fabric(run_id, ["server", "consumer-0"]) as f:`."""

    def __init__(
        self,
        run_id: str,
        hosts: Sequence[str],
        *,
        network: str = DEFAULT_NETWORK,
        state_dir: Path = STATE_DIR,
        track: Callable[[str], None] = lambda name: None,
    ) -> None:
        """`track(netns_name)` is told of each namespace before it is created (the run's cleanup
        record, `chaos.runner.cleanup`, so a sweep after a kill -9 knows it)."""
        self.track = track
        if len(set(hosts)) != len(hosts) or not hosts:
            raise FabricError(f"hosts must be unique and non-empty, got {list(hosts)}")
        for name in hosts:
            if not HOST_NAME.match(name):
                raise FabricError(f"host name {name!r}: lower-case letters and digits, optionally -N")
        subnets = list(ipaddress.ip_network(network).subnets(new_prefix=24))
        if len(hosts) > len(subnets):
            raise FabricError(f"{len(hosts)} hosts do not fit in {network} (one /24 each)")
        self.id = _fabric_id(run_id)
        self.run_id = run_id
        self.network = network
        self.fabric_netns = f"{PREFIX}{self.id}-{FABRIC}"
        self.hosts: dict[str, Host] = {}
        for index, (name, subnet) in enumerate(zip(hosts, subnets, strict=False)):
            addresses = list(subnet.hosts())
            self.hosts[name] = Host(
                name=name,
                index=index,
                netns=f"{PREFIX}{self.id}-{name}",
                ifname=HOST_IFNAME,
                address=str(addresses[0]),
                gateway=str(addresses[-1]),
                subnet=str(subnet),
                fabric_ifname=f"h{index}",
            )
        self.state_path = state_dir / f"{self.id}.json"
        self._lock_fd: int | None = None
        self._closed = False
        self._close_lock = threading.Lock()

    # -- lookup --------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise FabricError(f"no host {name!r}; hosts are {', '.join(self.hosts)}") from None

    def host_of_address(self, address: str) -> Host | None:
        ip = ipaddress.ip_address(address)
        return next((h for h in self.hosts.values() if ip in ipaddress.ip_network(h.subnet)), None)

    def namespaces(self) -> list[str]:
        return [self.fabric_netns, *(h.netns for h in self.hosts.values())]

    # -- lifecycle -----------------------------------------------------------------------------

    def create(self) -> Fabric:
        """Build everything; on any failure what was built is removed before the error propagates."""
        self._claim()
        try:
            for name in self.namespaces():
                self.track(name)
                netns.create(name)
            self._wire()
        except BaseException:
            self.close()
            raise
        return self

    def _claim(self) -> None:
        """Write and lock the state file before the first namespace exists, so a crash is sweepable."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a sweep may hold it for an instant; it skips empty files
        state = {
            "run_id": self.run_id,
            "owner_pid": os.getpid(),
            "namespaces": self.namespaces(),
            "hosts": {name: asdict(h) for name, h in self.hosts.items()},
        }
        os.write(fd, json.dumps(state, indent=1).encode())
        self._lock_fd = fd

    def _wire_fabric(self, fabric: IPRoute, fds: dict[str, int]) -> None:
        fabric.link("set", index=fabric.link_lookup(ifname="lo")[0], state="up")
        for name, host in self.hosts.items():
            peer = {"ifname": host.ifname, "net_ns_fd": fds[name]}
            fabric.link("add", ifname=host.fabric_ifname, kind="veth", peer=peer)
            index = fabric.link_lookup(ifname=host.fabric_ifname)[0]
            fabric.addr("add", index=index, address=host.gateway, prefixlen=24)
            fabric.link("set", index=index, state="up")

    @staticmethod
    def _wire_host(inside: IPRoute, host: Host) -> None:
        inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
        index = inside.link_lookup(ifname=host.ifname)[0]
        inside.addr("add", index=index, address=host.address, prefixlen=24)
        inside.link("set", index=index, state="up")
        inside.route("add", dst="0.0.0.0/0", gateway=host.gateway)

    def _wire(self) -> None:
        fds = {name: _open_netns(h.netns) for name, h in self.hosts.items()}
        try:
            netns.netlink(self.fabric_netns, lambda ipr: self._wire_fabric(ipr, fds))
        finally:
            for fd in fds.values():
                os.close(fd)
        for host in self.hosts.values():
            netns.netlink(host.netns, lambda ipr, h=host: self._wire_host(ipr, h))
        _set_sysctl(self.fabric_netns, "net.ipv4.ip_forward", "1")
        for host in self.hosts.values():
            _wait_running(host.netns, host.ifname)
        for key in ("all", "default", "lo", *(h.fabric_ifname for h in self.hosts.values())):
            _set_sysctl(self.fabric_netns, f"net.ipv4.conf.{key}.rp_filter", "0")

    def close(self) -> None:
        """Remove every namespace (killing what runs inside) and the state file. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            errors = []
            for name in reversed(self.namespaces()):
                try:
                    netns.remove(name)
                except netns.NetnsError as exc:
                    errors.append(str(exc))
            if self._lock_fd is not None:
                with contextlib.suppress(OSError):
                    self.state_path.unlink()
                os.close(self._lock_fd)
                self._lock_fd = None
            if errors:
                raise FabricError("; ".join(errors))

    def __enter__(self) -> Fabric:
        return self.create()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


# -- stale fabrics -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _if_dead(path: Path) -> Iterator[bool]:
    """Yields True while holding the state file's lock (its owner is gone), False if the owner lives."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        yield True
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield os.fstat(fd).st_size > 0  # empty: its owner is between creating and locking it
    finally:
        os.close(fd)


def sweep(state_dir: Path = STATE_DIR) -> list[str]:
    """Remove the namespaces of every fabric whose owner died; returns what it removed.

    A namespace named like ours but listed by no live owner's state file is stale too (its owner died
    between naming it and writing the state, or its state file was lost).
    """
    removed: list[str] = []
    live: set[str] = set()
    for path in sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []:
        with _if_dead(path) as dead:
            if not dead:
                live.add(path.stem)
                continue
            with contextlib.suppress(OSError):
                path.unlink()
    for name in netns.names(PREFIX):
        fid = _fabric_of(name)
        if fid is None or fid in live:
            continue
        with contextlib.suppress(netns.NetnsError):
            netns.remove(name)
            removed.append(name)
    return removed
