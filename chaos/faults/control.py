"""Control-layer faults: what the harness's descriptor channel does wrong on purpose.

Pure decision logic, no I/O: for each published descriptor, `decide()` says how many copies to hand
out and when each becomes claimable. The channel (`chaos.channel`) applies it.

- `duplicate_descriptor`: one extra copy, claimable `delay` (default 0) after the original and, by
  the channel's rule, by a different consumer first, so two consumers race for one slot.
- `delay_descriptor`: every copy is held `delay` before it can be claimed.

Decisions draw once per descriptor per fault from the fault's own seeded stream (a one-shot fault
applies to the first descriptor published at or after `at`). Each firing emits one `fault` event
with the descriptor's `key`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from chaos.faults.base import Clock, FaultSpec, HealSwitch, Trigger
from transport.events import EventSink


@dataclass(frozen=True)
class Handout:
    """How to hand out one descriptor: one entry per copy, its delay in seconds from publish."""

    delays: tuple[float, ...] = (0.0,)
    faults: tuple[int, ...] = ()  # indexes of the faults that fired

    @property
    def copies(self) -> int:
        return len(self.delays)


class ControlFaults:
    """Seeded handout decisions for the descriptor channel."""

    def __init__(
        self,
        faults: Iterable[FaultSpec],
        seed: int,
        events: EventSink,
        run_start: float | None,
        *,
        heal_at: float | None = None,
        clock: Clock = time.time,
    ) -> None:
        """`run_start` None: nothing fires until `start` fixes the fault phase (the runner knows it only
        once every role is up, after the channel is already serving)."""
        self.faults = [f for f in faults if f.layer == "control"]
        self.events = events
        self.clock = clock
        self.switch = HealSwitch(heal_at, clock)
        self.triggers = [Trigger(f, seed, "channel", "control", run_start, self.switch) for f in self.faults]
        self.fired: Counter[int] = Counter()

    def start(self, run_start: float, heal_at: float) -> None:
        """The fault phase runs from `run_start` to `heal_at` (wall clock)."""
        self.switch.heal_at = heal_at
        for trigger in self.triggers:
            trigger.run_start = run_start

    def heal(self) -> None:
        self.switch.heal()

    @property
    def healed(self) -> bool:
        return self.switch.healed()

    def decide(self, key: str, now: float | None = None) -> Handout:
        now = self.clock() if now is None else now
        hold = 0.0
        extra: list[float] = []
        fired: list[int] = []
        for trigger in self.triggers:
            if not trigger.decide(now):
                continue
            spec = trigger.spec
            delay = spec.delay_s or 0.0
            if spec.kind == "delay_descriptor":
                hold = max(hold, delay)
            else:
                extra.append(delay)
            fired.append(spec.index)
            self.fired[spec.index] += 1
            self.events.emit(
                "fault", fault=spec.index, kind=spec.kind, port=None, phase=None, target=None, key=key
            )
        return Handout(delays=(hold, *(hold + d for d in extra)), faults=tuple(fired))
