"""What every fault shares: a plain spec, a heal switch and seeded, reproducible firing decisions.

Modelled on Toxiproxy's toxics: each fault kind is a small type behind one interface, and *when* a
fault fires is decided here, once, the same way for every layer. A decision comes from a
`random.Random` derived from `(seed, fault index, stream, role)` with a stable hash (never Python's
salted `hash`), so the n-th decision of a fault on a port / target / channel is the same in every run
with the same seed, in every process.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from transport.link import Phase

TRANSPORT_KINDS = frozenset({"reset", "truncate", "corrupt", "timeout", "stall", "evict", "drop_commit"})
PROCESS_KINDS = frozenset({"kill", "pause", "restart"})
CONTROL_KINDS = frozenset({"duplicate_descriptor", "delay_descriptor"})
# built by chaos.proxy and chaos.hosts, listed here only for routing
KERNEL_KINDS = frozenset({"partition", "loss", "reject", "bandwidth", "flap"})
NETWORK_KINDS = frozenset({"toxic", "down"}) | KERNEL_KINDS

RESET_PHASES = frozenset(
    {Phase.REQUEST, Phase.STATUS, Phase.PAYLOAD, Phase.COMMIT, Phase.COMMITTED, Phase.RESOLVE}
)
TRUNCATE_PHASES = frozenset({Phase.STATUS, Phase.PAYLOAD})
# Client-side faults act on the consumer's own link (chaos.faults.transport.ClientChaosLink): only the
# kinds a client can do to itself. A client cannot truncate or corrupt what the server sends, evict its
# own endpoint or drop a reply the server never sent; those stay server-side.
CLIENT_KINDS = frozenset({"reset", "timeout", "stall"})
CLIENT_RESET_PHASES = frozenset({Phase.REQUEST, Phase.STATUS, Phase.PAYLOAD, Phase.COMMIT, Phase.RESOLVE})
# A client-side stall pauses the client before one of its own sends.
CLIENT_STALL_PHASES = frozenset({Phase.REQUEST, Phase.COMMIT, Phase.RESOLVE})
SIDES = ("server", "client")

Clock = Callable[[], float]


def layer_of(kind: str) -> str:
    """`transport`, `network`, `process` or `control`: which module runs a fault of this kind."""
    for layer, kinds in (
        ("transport", TRANSPORT_KINDS),
        ("network", NETWORK_KINDS),
        ("process", PROCESS_KINDS),
        ("control", CONTROL_KINDS),
    ):
        if kind in kinds:
            return layer
    raise ValueError(f"unknown fault kind {kind!r}")


@dataclass
class FaultSpec:
    """One configured fault, already parsed (seconds, real port numbers).

    `index` is the fault's position in the scenario (what `fault` events report). `ports` are real
    port numbers, None = every port (indexes into the server's port list instead for a transport
    wrapper built with `ports_by_index=True`). `window` is `(start_s, end_s)` and `at_s` a one-shot
    time, both relative to the run start; at most one is set, neither = the whole fault phase.
    `probability` is per request (transport), per descriptor (control) or per tick (process).
    Kind fields: `phase` (reset: where; truncate and corrupt: `status` or `payload`, default `payload`;
    a client-side stall: before which send), `delay_s` (timeout, stall, delay_descriptor),
    `duration_s` (pause), `target` (process faults). `side` says whose link a transport fault acts
    on: `server` (default) or `client` (the consumer's own link; reset, timeout and stall only).
    """

    index: int
    kind: str
    ports: list[int] | None = None
    probability: float = 1.0
    window: tuple[float, float] | None = None
    at_s: float | None = None
    phase: str | None = None
    delay_s: float | None = None
    duration_s: float | None = None
    target: str | None = None
    side: str = "server"

    def __post_init__(self) -> None:
        where = f"fault {self.index} ({self.kind})"
        layer = layer_of(self.kind)
        if layer == "network":
            raise ValueError(f"{where}: network faults are run by chaos.proxy, not chaos.faults")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"{where}: probability {self.probability} not in [0, 1]")
        if self.window is not None:
            start, end = self.window
            if not 0 <= start < end:
                raise ValueError(f"{where}: window {self.window} needs 0 <= start < end")
            self.window = (float(start), float(end))
        if self.window is not None and self.at_s is not None:
            raise ValueError(f"{where}: give either window or at, not both")
        if self.at_s is not None and self.at_s < 0:
            raise ValueError(f"{where}: at {self.at_s} is negative")
        for name in ("delay_s", "duration_s"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{where}: {name} {value} is negative")
        if self.side not in SIDES:
            raise ValueError(f"{where}: side must be server or client, got {self.side!r}")
        if self.side == "client" and self.kind not in CLIENT_KINDS:
            raise ValueError(f"{where}: side client applies only to {sorted(CLIENT_KINDS)}")
        if self.side == "client" and self.kind in ("reset", "stall"):
            phases = CLIENT_RESET_PHASES if self.kind == "reset" else CLIENT_STALL_PHASES
            if self.phase is None or self.phase not in phases:
                raise ValueError(
                    f"{where}: a client-side {self.kind} needs phase in {sorted(phases)}, got {self.phase!r}"
                )
            self.phase = Phase(self.phase)
        elif self.kind == "reset":
            if self.phase is None or self.phase not in RESET_PHASES:
                raise ValueError(f"{where}: phase must be one of {sorted(RESET_PHASES)}, got {self.phase!r}")
            self.phase = Phase(self.phase)
        elif self.kind in ("truncate", "corrupt"):
            self.phase = Phase(self.phase or Phase.PAYLOAD)
            if self.phase not in TRUNCATE_PHASES:
                raise ValueError(f"{where}: phase must be status or payload, got {self.phase!r}")
        elif self.phase is not None:
            raise ValueError(f"{where}: phase only applies to reset, truncate and corrupt")
        if layer == "process" and not self.target:
            raise ValueError(f"{where}: a process fault needs a target")
        if layer != "process" and self.target is not None:
            raise ValueError(f"{where}: target only applies to process faults")
        if layer != "transport" and self.ports is not None:
            raise ValueError(f"{where}: ports only apply to transport faults")
        if self.kind == "delay_descriptor" and self.delay_s is None:
            raise ValueError(f"{where}: delay_descriptor needs a delay")

    @property
    def layer(self) -> str:
        return layer_of(self.kind)

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
        run_start: float,
        switch: HealSwitch | None = None,
    ) -> None:
        self.spec = spec
        self.run_start = run_start
        self.switch = switch or HealSwitch()
        self.rng = derive_rng(seed, spec.index, stream, role)
        self.spent = False
        self.hits = 0

    def active(self, now: float) -> bool:
        if self.spent or self.switch.healed(now):
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
