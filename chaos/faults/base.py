"""What every fault shares: a view of its scenario model, a heal switch, seeded firing decisions.

Modelled on Toxiproxy's toxics: each fault kind is a small type behind one interface, and *when* a
fault fires is decided here, once, the same way for every layer. A decision comes from a
`random.Random` derived from `(seed, fault index, stream, role)` with a stable hash (never Python's
salted `hash`), so the n-th decision of a fault on a port / target / channel is the same in every run
with the same seed, in every process.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import InitVar, dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transport.link import Phase

if TYPE_CHECKING:  # at run time only `parse` needs the model: every role imports this module
    from pydantic import TypeAdapter

    from chaos.scenario.model import Fault

SIDES = ("server", "client")

Clock = Callable[[], float]


@dataclass(frozen=True)
class FaultSpec:
    """One configured fault as the fault layers read it: its position and its fields, derived from its model.

    A view, not a second definition: a spec is made only from a validated scenario model (`of`, or
    `parse` for a fault's YAML fields), so nothing here can accept what a scenario refuses, and every
    field and rule of a kind lives in its pydantic class (`chaos/scenario/model.py`). The fields are
    the model's in the layers' units: `index` is the fault's position in the scenario (what `fault`
    events report); `ports` are port indexes into the server's port list, None = every port; `window`
    is `(start_s, end_s)` and `at_s` a one-shot time, both relative to the start of the fault phase
    (at most one is set, neither = the whole fault phase); `phase` is a `Phase`. `fault` is the model
    itself, for what only one layer reads (a toxic, a host link); it stays in this process: a pickled
    spec (a server's or consumer's wrapper arguments) carries the derived fields only, so a role
    process needs no pydantic to read it.
    """

    index: int
    kind: str
    ports: tuple[int, ...] | None
    probability: float
    window: tuple[float, float] | None
    at_s: float | None
    phase: Phase | None
    delay_s: float | None
    duration_s: float | None
    target: str | None
    side: str
    model: InitVar[Fault | None] = None
    # `layer` and `fault` are attributes, not fields: `asdict` (the bench's JSON) keeps its keys.
    if TYPE_CHECKING:
        layer: str
        fault: Fault | None

    def __post_init__(self, model: Fault | None) -> None:
        if model is None:  # unpickling does not come here
            raise TypeError("a FaultSpec is made from its scenario model: FaultSpec.of or FaultSpec.parse")
        object.__setattr__(self, "fault", model)
        object.__setattr__(self, "layer", type(model).layer)

    @classmethod
    def of(cls, index: int, fault: Fault) -> FaultSpec:
        """The view of scenario fault number `index`."""
        ports = getattr(fault, "ports", None)
        window = getattr(fault, "window", None)
        phase = getattr(fault, "phase", None)
        return cls(
            index=index,
            kind=fault.kind,
            ports=None if ports is None else tuple(ports),
            probability=getattr(fault, "probability", 1.0),  # per request, descriptor or tick
            window=None if window is None else (window.start, window.end),
            at_s=getattr(fault, "at", None),
            phase=None if phase is None else Phase(phase),
            delay_s=getattr(fault, "delay", None),
            duration_s=getattr(fault, "duration", None),
            target=getattr(fault, "target", None),
            side=getattr(fault, "side", "server"),
            model=fault,
        )

    @classmethod
    def parse(cls, index: int, **fields: Any) -> FaultSpec:
        """A spec from a scenario's fault fields (`kind`, `phase`, `delay`, `window: {start, end}`, ...),
        validated by the model; raises `ValueError` (pydantic's `ValidationError`) like a scenario would."""
        return cls.of(index, _fault_adapter().validate_python(fields))

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without its model (see the class docstring)."""
        return {**self.__dict__, "fault": None}

    @property
    def one_shot(self) -> bool:
        return self.at_s is not None

    def applies_to_port(self, port: int) -> bool:
        return self.ports is None or port in self.ports

    def in_time(self, elapsed: float) -> bool:
        """Inside the window, at or past the one-shot time, or always when neither is set."""
        if self.at_s is not None:
            return elapsed >= self.at_s
        if self.window is not None:
            return self.window[0] <= elapsed < self.window[1]
        return True

    def span(self, duration: float) -> tuple[float, float]:
        """When a scheduled (network) fault is on, in seconds of a fault phase of `duration`: its window,
        from `at` to the end, or the whole phase; the same times `in_time` answers for."""
        if self.window is not None:
            return self.window
        return (self.at_s if self.at_s is not None else 0.0), duration


@cache
def _fault_adapter() -> TypeAdapter[Fault]:
    """The scenario's `Fault` union as a validator, built on first use (pydantic is the harness's
    dependency: a role process that never parses a fault does not load it)."""
    from pydantic import TypeAdapter

    from chaos.scenario.model import Fault

    return TypeAdapter(Fault)


class HealSwitch:
    """Turns every fault that shares it off at once: at the end of the fault phase, by call or by time.

    `heal_at` (an absolute `clock()` time) lets a process that cannot be told heal on its own.
    Thread-safe: the runner may heal from another thread than the one deciding.
    """

    def __init__(self, heal_at: float | None = None, clock: Clock = time.time) -> None:
        self.heal_at = heal_at
        self.clock = clock
        self._healed = threading.Event()

    def heal(self) -> None:
        self._healed.set()

    def healed(self, now: float | None = None) -> bool:
        if self._healed.is_set():
            return True
        if self.heal_at is not None and (self.clock() if now is None else now) >= self.heal_at:
            self._healed.set()
            return True
        return False


def write_start(path: str | os.PathLike[str], run_start: float) -> None:
    """The runner fixes the fault phase's start once every role is up: written whole, then renamed, so a
    reader in another process never sees half a number."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(repr(run_start))
    os.replace(partial, target)


def read_start(path: str | os.PathLike[str]) -> float | None:
    """The start `write_start` wrote (None until it has)."""
    try:
        return float(Path(path).read_text())
    except (OSError, ValueError):
        return None


def derive_seed(seed: int, *parts: object) -> int:
    """A stable 64-bit seed for one decision stream (independent of PYTHONHASHSEED and process)."""
    digest = hashlib.blake2b(repr((int(seed), *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def derive_rng(seed: int, *parts: object) -> random.Random:
    return random.Random(derive_seed(seed, *parts))


class Trigger:
    """When one fault fires on one stream (a port, a target or the channel), decided by its own RNG.

    `decide(now)` draws exactly once per opportunity while active, so the n-th opportunity gets the
    same answer for a given seed. A one-shot fault gets one draw at its first opportunity at or
    after `at` (it fires then with `probability`, else never) and is spent afterwards.
    """

    def __init__(
        self,
        spec: FaultSpec,
        seed: int,
        stream: object,
        role: str,
        run_start: float | None,
        switch: HealSwitch | None = None,
    ) -> None:
        """`run_start` None: the fault phase has not started yet (nothing is active until it is set)."""
        self.spec = spec
        self.run_start = run_start
        self.switch = switch or HealSwitch()
        self.rng = derive_rng(seed, spec.index, stream, role)
        self.spent = False
        self.hits = 0

    def active(self, now: float) -> bool:
        if self.run_start is None or self.spent or self.switch.healed(now):
            return False
        return self.spec.in_time(now - self.run_start)

    def decide(self, now: float) -> bool:
        if not self.active(now):
            return False
        if self.spec.one_shot:
            self.spent = True
        hit = self.rng.random() < self.spec.probability
        if hit:
            self.hits += 1
        return hit
