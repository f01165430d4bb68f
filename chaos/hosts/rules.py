"""Packet rules and traffic shaping in the fabric namespace, for interception and kernel-level faults.

A fault names a set of *directions*: (source CIDR, destination CIDR) pairs of fabric traffic. `between:
[a, b]` is a->b and b->a; `isolate: a` is a->everyone and everyone->a. Builders here are pure (they return
`Rule` values); `PacketRules` and `Shaper` apply them inside the fabric namespace and undo exactly what
they applied. Where each rule sits:

- drops (partition, loss, flap) in `raw PREROUTING`: every packet entering the fabric from any host
  passes there first, whether it is then forwarded or intercepted by the proxy;
- TCP resets (reject) in `filter FORWARD` and `filter INPUT` (REJECT is only valid there; intercepted
  traffic is local input, the rest is forwarded);
- interception in `mangle PREROUTING` (TPROXY, and the `socket --transparent` mark that steers replies
  to the proxy's own upstream sockets);
- bandwidth as an htb class per direction on the fabric-side veth that leads to the destination host,
  picked by a u32 match on the source address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from chaos.hosts import netns
from chaos.hosts.fabric import Fabric

Direction = tuple[str, str]  # (source CIDR, destination CIDR)
TPROXY_MARK = 1
TPROXY_TABLE = 100
ETH_P_IP = 0x0800
HTB_ROOT = 0x10000
HTB_DEFAULT = 0x1FFFF
UNLIMITED = "10gbit"


def directions(
    fabric: Fabric, between: Sequence[str] | None = None, isolate: str | None = None
) -> list[Direction]:
    """The traffic a fault applies to, as (source, destination) CIDRs."""
    if between is not None:
        a, b = (fabric.host(name).subnet for name in between)
        return [(a, b), (b, a)]
    if isolate is not None:
        h = fabric.host(isolate).subnet
        return [(h, fabric.network), (fabric.network, h)]
    raise ValueError("a network fault needs `between` or `isolate`")


@dataclass(frozen=True)
class Rule:
    """One iptables rule: `iptables -t table -A chain *args`."""

    table: str
    chain: str
    args: tuple[str, ...]

    def argv(self, op: str) -> list[str]:
        return ["iptables", "-w", "5", "-t", self.table, op, self.chain, *self.args]


def _match(d: Direction, tcp: bool = False) -> tuple[str, ...]:
    return (*(("-p", "tcp") if tcp else ()), "-s", d[0], "-d", d[1])


def drop_rules(dirs: Iterable[Direction], probability: float = 1.0, tag: str = "") -> list[Rule]:
    """Drop every packet (partition, flap) or a random `probability` of them (loss)."""
    sample = (
        ()
        if probability >= 1.0
        else ("-m", "statistic", "--mode", "random", "--probability", f"{probability:.6f}")
    )
    note = ("-m", "comment", "--comment", tag) if tag else ()
    return [Rule("raw", "PREROUTING", (*_match(d), *sample, *note, "-j", "DROP")) for d in dirs]


def reject_rules(dirs: Iterable[Direction], tag: str = "") -> list[Rule]:
    """Answer every TCP segment with a reset, forwarded or intercepted."""
    note = ("-m", "comment", "--comment", tag) if tag else ()
    return [
        Rule("filter", chain, (*_match(d, tcp=True), *note, "-j", "REJECT", "--reject-with", "tcp-reset"))
        for d in dirs
        for chain in ("FORWARD", "INPUT")
    ]


def intercept_rules(dirs: Iterable[Direction], port: int) -> list[Rule]:
    """Send new TCP connections of `dirs` to the transparent proxy on `port`; replies to the proxy's
    upstream sockets (bound to the client's address) are marked so they are delivered locally too."""
    mark = str(TPROXY_MARK)
    rules = [
        Rule(
            "mangle",
            "PREROUTING",
            ("-p", "tcp", "-m", "socket", "--transparent", "-j", "MARK", "--set-mark", mark),
        ),
        Rule("mangle", "PREROUTING", ("-p", "tcp", "-m", "mark", "--mark", mark, "-j", "ACCEPT")),
    ]
    rules += [
        Rule(
            "mangle",
            "PREROUTING",
            (
                *_match(d, tcp=True),
                "-j",
                "TPROXY",
                "--on-port",
                str(port),
                "--tproxy-mark",
                f"{TPROXY_MARK}/{TPROXY_MARK}",
            ),
        )
        for d in dirs
    ]
    return rules


class PacketRules:
    """Rules applied in one namespace; `remove` undoes a batch, `clear` all (the namespace's end does too).

    Rules tagged with an iptables comment count the packets they matched: `packets(tag)` adds what
    removed rules had matched (read just before they go) to what the active ones match now.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self.active: list[Rule] = []
        self._removed_packets: dict[str, int] = {}

    def _counters(self, tables: Iterable[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for table in sorted(set(tables)):
            listing = netns.run(
                self.ns, ["iptables", "-w", "5", "-t", table, "-L", "-v", "-x", "-n"], check=False
            )
            for line in listing.splitlines():
                start = line.find("/* ")
                if start >= 0 and line.split()[0].isdigit():
                    tag = line[start + 3 : line.find(" */", start)]
                    counts[tag] = counts.get(tag, 0) + int(line.split()[0])
        return counts

    def packets(self, tag: str) -> int:
        tables = [r.table for r in self.active if _tag(r) == tag]
        now = self._counters(tables).get(tag, 0) if tables else 0
        return now + self._removed_packets.get(tag, 0)

    def add(self, rules: Sequence[Rule]) -> None:
        for rule in rules:
            netns.run(self.ns, rule.argv("-A"))
            self.active.append(rule)

    def remove(self, rules: Sequence[Rule]) -> None:
        tagged = [r for r in rules if r in self.active and _tag(r)]
        if tagged:
            counts = self._counters(r.table for r in tagged)
            for tag in {_tag(r) for r in tagged}:
                self._removed_packets[tag] = self._removed_packets.get(tag, 0) + counts.get(tag, 0)
        for rule in rules:
            if rule in self.active:
                self.active.remove(rule)
                netns.run(self.ns, rule.argv("-D"), check=False)

    def clear(self) -> None:
        self.remove(list(reversed(self.active)))


def _tag(rule: Rule) -> str:
    args = rule.args
    for i, arg in enumerate(args[:-1]):
        if arg == "--comment":
            return args[i + 1]
    return ""


def route_marked_locally(ns: str) -> None:
    """`ip rule fwmark 1 lookup 100` + `ip route add local 0.0.0.0/0 dev lo table 100` (TPROXY's routing)."""

    def routes(ipr: IPRoute) -> None:
        ipr.rule("add", fwmark=TPROXY_MARK, table=TPROXY_TABLE, priority=100)
        ipr.route(
            "add",
            dst="0.0.0.0/0",
            type="local",
            oif=ipr.link_lookup(ifname="lo")[0],
            table=TPROXY_TABLE,
            scope="host",
        )

    netns.netlink(ns, routes)


def _u32_source(cidr: str) -> str:
    net = ipaddress.ip_network(cidr)
    return f"{int(net.network_address):#010x}/{int(net.netmask):#010x}+12"


@dataclass
class Shaper:
    """Bandwidth limits per direction: an htb class on the veth toward the destination, picked by source."""

    fabric: Fabric
    _rooted: set[str] = field(default_factory=set)
    _next_class: int = 2
    _next_handle: int = 1
    _limits: dict[int, list[tuple[str, int, int]]] = field(
        default_factory=dict
    )  # id -> (ifname, class, prio)

    def _veths_toward(self, dst: str, src: str) -> list[str]:
        dst_net, src_net = ipaddress.ip_network(dst), ipaddress.ip_network(src)
        return [
            h.fabric_ifname
            for h in self.fabric.hosts.values()
            if ipaddress.ip_network(h.subnet).subnet_of(dst_net)
            and not ipaddress.ip_network(h.subnet).subnet_of(src_net)
        ]

    def limit(self, dirs: Sequence[Direction], bytes_per_s: float) -> int:
        """Cap every direction at `bytes_per_s`; returns a handle for `unlimit`."""
        handle = self._next_handle
        self._next_handle += 1
        rate = max(8, int(bytes_per_s * 8))
        burst = max(1600, int(bytes_per_s / 10))  # 100 ms worth, at least one packet
        self._limits[handle] = netns.netlink(
            self.fabric.fabric_netns, lambda ipr: self._place(ipr, dirs, rate, burst)
        )
        return handle

    def _place(
        self, ipr: IPRoute, dirs: Sequence[Direction], rate: int, burst: int
    ) -> list[tuple[str, int, int]]:
        placed: list[tuple[str, int, int]] = []
        for src, dst in dirs:
            for ifname in self._veths_toward(dst, src):
                index = ipr.link_lookup(ifname=ifname)[0]
                if ifname not in self._rooted:
                    ipr.tc("add", "htb", index, HTB_ROOT, default=HTB_DEFAULT)
                    ipr.tc(
                        "add-class", "htb", index, HTB_DEFAULT, parent=HTB_ROOT, rate=UNLIMITED, burst=1 << 20
                    )
                    self._rooted.add(ifname)
                classid = HTB_ROOT | self._next_class
                prio = self._next_class
                self._next_class += 1
                ipr.tc("add-class", "htb", index, classid, parent=HTB_ROOT, rate=f"{rate}bit", burst=burst)
                keys = [_u32_source(src)]
                ipr.tc(
                    "add-filter",
                    "u32",
                    index,
                    parent=HTB_ROOT,
                    prio=prio,
                    protocol=ETH_P_IP,
                    target=classid,
                    keys=keys,
                )
                placed.append((ifname, classid, prio))
        return placed

    def unlimit(self, handle: int) -> None:
        """Remove the direction's filter and class (with iproute2's tc: pyroute2 cannot encode an htb
        class deletion without its rate table)."""
        ns = self.fabric.fabric_netns
        for ifname, classid, prio in self._limits.pop(handle, []):
            parent = f"{HTB_ROOT >> 16:x}:"
            netns.run(
                ns, ["tc", "filter", "del", "dev", ifname, "parent", parent, "prio", str(prio)], check=False
            )
            klass = f"{classid >> 16:x}:{classid & 0xFFFF:x}"
            netns.run(ns, ["tc", "class", "del", "dev", ifname, "classid", klass], check=False)
