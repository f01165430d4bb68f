"""A scenario's network in host mode: the fabric, the host-link proxy, and its faults on a schedule.

`HostNetwork` owns everything it builds and `close()` removes it all (also registered as a cleanup
step of the run). Its faults follow the same clock as the listener-proxy faults (`window`, `at`, or the
whole fault phase). Each fault emits a `fault` event when it goes on and a `net_effect` event when it
goes off, carrying what it acted on (proxy meters for toxics; packets/bytes from the kernel counters
for kernel faults), which `chaos.hosts.effects` turns into a verdict.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from chaos.hosts import netns
from chaos.hosts.fabric import Fabric
from chaos.hosts.faults import KernelFault, KernelFaults
from chaos.hosts.links import HostLinks, link_name
from transport.events import EventSink

if TYPE_CHECKING:
    from chaos.faults.base import FaultSpec

NO_REDIRECT_ENV = "SLOTWIRE_NO_REDIRECT"  # set to 1: toxics are configured but no TPROXY rule (self-test)


class HostsUnavailable(RuntimeError):
    """This process may not build namespaces: host scenarios are skipped, never passed."""


@dataclass
class _Item:
    index: int
    kind: str
    start: float
    end: float
    fault: Any
    kernel: KernelFault | None = None
    applied: bool = False
    removed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class HostNetwork:
    def __init__(
        self,
        run_id: str,
        hosts: list[str],
        faults: list[FaultSpec],
        duration: float,
        seed: int,
        events: EventSink,
        track: Callable[[str], None] = lambda name: None,
    ) -> None:
        self.events = events
        self.fabric = Fabric(run_id, hosts, track=track)
        self.links: HostLinks | None = None
        self.kernel: KernelFaults | None = None
        self._items: list[_Item] = []
        self._faults = faults
        self._duration = duration
        self._seed = seed

    def start(self) -> HostNetwork:
        try:
            self.fabric.create()
        except (OSError, netns.NetnsError) as exc:
            raise HostsUnavailable(
                f"skipped: needs CAP_NET_ADMIN (cannot build network namespaces: {exc})"
            ) from exc
        try:
            proxied = [s.fault for s in self._faults if not s.fault.by_kernel]
            if proxied:
                pairs = [tuple(f.between) for f in proxied]
                redirect = os.environ.get(NO_REDIRECT_ENV, "") not in ("1", "true", "yes")
                self.links = HostLinks(
                    self.fabric, seed=self._seed, intercept=pairs, redirect=redirect
                ).start()
            self.kernel = KernelFaults(self.fabric)
            for spec in self._faults:
                start, end = spec.span(self._duration)
                fault = spec.fault
                item = _Item(spec.index, spec.kind, start, end, fault)
                if fault.by_kernel:
                    item.kernel = self.kernel.make(
                        fault.kind,
                        between=fault.between,
                        isolate=fault.isolate,
                        probability=getattr(fault, "probability", 1.0),
                        rate=getattr(fault, "rate", 0.0),
                        period=getattr(fault, "period", 1.0),
                        tag=f"slotwire-fault{spec.index}",
                    )
                self._items.append(item)
        except BaseException:
            self.close()
            raise
        return self

    def address(self, host: str) -> str:
        return self.fabric.host(host).address

    # -- schedule ------------------------------------------------------------------------------

    def tick(self, elapsed: float) -> None:
        for item in self._items:
            if not item.applied and item.start <= elapsed < item.end:
                self._apply(item)
            elif item.applied and not item.removed and elapsed >= item.end:
                self._remove(item)
            if item.kernel is not None and item.applied and not item.removed:
                item.kernel.tick(elapsed)

    def heal(self) -> None:
        for item in self._items:
            if item.applied and not item.removed:
                self._remove(item)

    def _target(self, item: _Item) -> dict[str, Any]:
        f = item.fault
        return {"between": list(f.between) if f.between else None, "isolate": getattr(f, "isolate", None)}

    def _apply(self, item: _Item) -> None:
        item.applied = True
        if item.kernel is not None:
            item.kernel.apply()
        else:
            self._proxy_fault(item, on=True)
        self.events.emit(
            "fault",
            fault=item.index,
            kind=item.kind,
            port=None,
            phase=None,
            target=None,
            **self._target(item),
        )

    def _remove(self, item: _Item) -> None:
        item.removed = True
        evidence: dict[str, Any] = {"off_t": time.time()}  # before the heal: reading counters takes a while
        if item.kernel is not None:
            evidence |= self._kernel_counters(item)
            item.kernel.heal()
        else:
            self._proxy_fault(item, on=False)
            evidence |= self._meter(item)
        self.events.emit("net_effect", fault=item.index, kind=item.kind, **self._target(item), **evidence)

    def _proxy_fault(self, item: _Item, on: bool) -> None:
        assert self.links is not None and self.links.server.collection is not None
        a, b = item.fault.between
        name = link_name(a, b)
        collection = self.links.server.collection
        if item.kind == "down":
            proxy = collection.get(name)
            if on == proxy.enabled:  # down means disabled: apply disables, remove enables
                self.links.server.call(proxy.stop() if on else proxy.start())
            return
        toxic = item.fault.toxic
        if on:
            body = {
                "name": f"fault{item.index}",
                "type": toxic.type,
                "stream": toxic.stream,
                "toxicity": toxic.toxicity,
                "attributes": toxic.attributes.model_dump(),
            }
            self.links.server.call(collection.add_toxic(name, body))
        else:
            self.links.server.call(collection.remove_toxic(name, f"fault{item.index}"))

    def _meter(self, item: _Item) -> dict[str, Any]:
        if self.links is None or item.kind != "toxic":
            return {"connections": None, "bytes": None}
        a, b = item.fault.between
        meter = self.links.meters().get(link_name(a, b), {}).get(f"fault{item.index}", {})
        return {"connections": meter.get("connections", 0), "bytes": meter.get("bytes", 0)}

    def _kernel_counters(self, item: _Item) -> dict[str, Any]:
        """Packets the fault's rules matched (iptables counters) or bytes its htb classes sent."""
        if item.kind == "bandwidth":
            return {"packets": None, "bytes": self._htb_bytes()}
        assert self.kernel is not None
        evidence: dict[str, Any] = {"packets": self.kernel.rules.packets(f"slotwire-fault{item.index}")}
        if item.kernel is not None and hasattr(item.kernel, "flips"):
            evidence["flips"] = item.kernel.flips
        return evidence

    def _htb_bytes(self) -> int:
        """Bytes sent by every limited htb class (not the unlimited default class)."""
        total = 0
        for host in self.fabric.hosts.values():
            listing = netns.run(
                self.fabric.fabric_netns,
                ["tc", "-s", "class", "show", "dev", host.fabric_ifname],
                check=False,
            )
            current = None
            for line in listing.splitlines():
                m = re.match(r"class htb 1:(\w+)", line.strip())
                if m:
                    current = m.group(1)
                m2 = re.match(r"Sent (\d+) bytes", line.strip())
                if m2 and current is not None and current != "ffff":
                    total += int(m2.group(1))
        return total

    def close(self) -> None:
        """Heal, stop the proxy, remove the fabric (namespaces, veths, rules, qdiscs). Idempotent."""
        try:
            if self.links is not None:
                self.links.close()
        finally:
            self.fabric.close()
