"""Network-layer faults on a schedule: toxics and `down` applied to the proxies of their ports.

A network fault is on during its `window`; with `at` it starts then and lasts to the end of the fault
phase; with neither it covers the whole fault phase. Its chance is the toxic's `toxicity` (per
connection, as in Toxiproxy), so there is no per-request draw here. Applying a fault to a port emits
one `fault` event for that port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos.faults.base import FaultSpec
from chaos.proxy.control import ProxyController
from transport.events import EventSink


@dataclass
class _Scheduled:
    index: int
    kind: str
    ports: list[int]
    start: float
    end: float
    toxic: dict[str, Any] | None
    applied: bool = False
    removed: bool = False


class NetworkFaults:
    def __init__(
        self, faults: list[FaultSpec], duration: float, proxies: ProxyController, events: EventSink
    ) -> None:
        """`faults`: the scenario's; the proxied network ones (not the kernel's) are scheduled here."""
        self.proxies = proxies
        self.events = events
        self._items: list[_Scheduled] = []
        for spec in faults:
            if spec.layer != "network" or spec.fault.by_kernel:
                continue
            start, end = spec.span(duration)
            toxic = getattr(spec.fault, "toxic", None)
            dumped = None if toxic is None else toxic.model_dump()
            self._items.append(_Scheduled(spec.index, spec.kind, list(spec.ports or ()), start, end, dumped))

    def __bool__(self) -> bool:
        return bool(self._items)

    def tick(self, elapsed: float) -> None:
        """Apply what should be on and remove what should be off at `elapsed` seconds into the run."""
        for item in self._items:
            if not item.applied and item.start <= elapsed < item.end:
                self._apply(item)
            elif item.applied and not item.removed and elapsed >= item.end:
                self._remove(item)

    def heal(self) -> None:
        for item in self._items:
            if item.applied and not item.removed:
                self._remove(item)

    def _name(self, item: _Scheduled) -> str:
        return f"fault{item.index}"

    def _apply(self, item: _Scheduled) -> None:
        item.applied = True
        for port in item.ports:
            if item.kind == "down":
                self.proxies.down(port)
            else:
                assert item.toxic is not None
                self.proxies.add_toxic(
                    port,
                    item.toxic["type"],
                    item.toxic.get("attributes") or {},
                    stream=item.toxic.get("stream", "downstream"),
                    toxicity=item.toxic.get("toxicity", 1.0),
                    name=self._name(item),
                )
            self.events.emit("fault", fault=item.index, kind=item.kind, port=port, phase=None, target=None)

    def _remove(self, item: _Scheduled) -> None:
        item.removed = True
        for port in item.ports:
            if item.kind == "down":
                self.proxies.up(port)
            else:
                self.proxies.remove_toxic(port, self._name(item))
