"""Kernel-level network faults in the fabric: partition, loss, reject, bandwidth, flap.

Each is a small type behind one interface: `apply()` puts it on, `heal()` takes it off (idempotent),
`tick(elapsed)` lets a time-driven fault (flap) change state. They act on every packet between the
hosts they name, below any proxy, so they reach the CM link and every UCX data lane alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from chaos.hosts.fabric import Fabric
from chaos.hosts.rules import Direction, PacketRules, Rule, Shaper, directions, drop_rules, reject_rules


@dataclass
class KernelFault:
    """Base: the directions it covers and the rules it put on."""

    rules: PacketRules
    dirs: list[Direction]
    tag: str
    on: bool = False
    _applied: list[Rule] = field(default_factory=list)

    def build(self) -> list[Rule]:
        raise NotImplementedError

    def apply(self) -> None:
        if not self.on:
            self._applied = self.build()
            self.rules.add(self._applied)
            self.on = True

    def heal(self) -> None:
        if self.on:
            self.rules.remove(self._applied)
            self._applied = []
            self.on = False

    def tick(self, elapsed: float) -> None:
        """Time-driven state changes (only flap has any)."""


@dataclass
class Partition(KernelFault):
    def build(self) -> list[Rule]:
        return drop_rules(self.dirs, tag=self.tag)


@dataclass
class Loss(KernelFault):
    probability: float = 0.1

    def build(self) -> list[Rule]:
        return drop_rules(self.dirs, self.probability, tag=self.tag)


@dataclass
class Reject(KernelFault):
    def build(self) -> list[Rule]:
        return reject_rules(self.dirs, tag=self.tag)


@dataclass
class Flap(KernelFault):
    """The link goes down (all packets dropped) and up again every `period` seconds, starting down."""

    period: float = 1.0
    started_at: float | None = None
    down: bool = False
    flips: int = 0

    def build(self) -> list[Rule]:
        return drop_rules(self.dirs, tag=self.tag)

    def apply(self) -> None:
        self.on = True

    def tick(self, elapsed: float) -> None:
        if not self.on:
            return
        if self.started_at is None:
            self.started_at = elapsed
        want_down = int((elapsed - self.started_at) / self.period) % 2 == 0
        if want_down and not self.down:
            self._applied = self.build()
            self.rules.add(self._applied)
            self.down = True
            self.flips += 1
        elif not want_down and self.down:
            self.rules.remove(self._applied)
            self.down = False

    def heal(self) -> None:
        if self.down:
            self.rules.remove(self._applied)
            self.down = False
        self.on = False


@dataclass
class Bandwidth(KernelFault):
    """A token bucket (htb class) of `bytes_per_s` per direction."""

    shaper: Shaper | None = None
    bytes_per_s: float = 0.0
    _handle: int | None = None

    def apply(self) -> None:
        if not self.on:
            assert self.shaper is not None
            self._handle = self.shaper.limit(self.dirs, self.bytes_per_s)
            self.on = True

    def heal(self) -> None:
        if self.on and self._handle is not None and self.shaper is not None:
            self.shaper.unlimit(self._handle)
        self.on = False


KINDS = ("partition", "loss", "reject", "bandwidth", "flap")


class KernelFaults:
    """Builds kernel faults on one fabric; `heal_all` takes every one off."""

    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self.rules = PacketRules(fabric.fabric_netns)
        self.shaper = Shaper(fabric)
        self.made: list[KernelFault] = []

    def make(
        self,
        kind: str,
        *,
        between: Sequence[str] | None = None,
        isolate: str | None = None,
        probability: float = 1.0,
        rate: float = 0.0,
        period: float = 1.0,
        tag: str = "",
    ) -> KernelFault:
        dirs = directions(self.fabric, between, isolate)
        base = {"rules": self.rules, "dirs": dirs, "tag": tag}
        fault: KernelFault
        if kind == "partition":
            fault = Partition(**base)
        elif kind == "loss":
            fault = Loss(**base, probability=probability)
        elif kind == "reject":
            fault = Reject(**base)
        elif kind == "flap":
            fault = Flap(**base, period=period)
        elif kind == "bandwidth":
            fault = Bandwidth(**base, shaper=self.shaper, bytes_per_s=rate)
        else:
            raise ValueError(f"unknown kernel fault {kind!r}; expected one of {', '.join(KINDS)}")
        self.made.append(fault)
        return fault

    def heal_all(self) -> None:
        for fault in self.made:
            fault.heal()
