"""What each fault kind must *change* for it to count: one pure rule per kind, in one place.

A fault that fired but changed nothing proves nothing (DESIGN.md §3, "Verdicts: effects, not
schedules"): a reset whose endpoint was never used again, a truncate the client never saw, a kill of
a consumer that held nothing. `RULES[kind](fault, fires, ix)` looks for the outcome the kind is
meant to cause in the merged history and returns an `Effect`: the evidence, or why the fault was
ineffective. The checker turns an ineffective fault into the failure `ineffective: fault N (kind)
...` when `expect.faults_effective` asks for it (the default: every fault).

Rules (events named as in docs/interfaces.md; "on that port" = the port a firing reported):
- reset / timeout / corrupt: a failed attempt on that port (`retry` or `quarantine` on it) after the
  firing.
- client-side faults (`side: client`, fired in a consumer: judged by `CLIENT_RULES`): reset, a failed
  attempt on that port *by that consumer* after the firing; timeout, the same with reason
  ReadTimeoutError (the client's own bound fired); stall, the held exchange shows the hold: one of
  the keys it names was answered by RESOLVE, refused or fenced on the server (`resolved`,
  `late_finalise`, `released`), failed (`retry`/`failed`), or delivered, at least 0.9x `delay` after
  the firing; or that consumer's attempt on that port failed after it.
- truncate: a detected bad message quarantined that port (`quarantine` with reason TruncatedError or
  ProtocolError): the short message was caught *and* the port left the rotation.
- stall: the held read failed on the client (ReadTimeoutError on that port) or was released or
  fenced on the server (`released`/`late_finalise`/`resolved`) after the hold began.
- evict: the client replaced an endpoint on that port (`connect` on it after the firing), or a read
  on it failed (the closed endpoint was used).
- drop_commit: a RESOLVE was answered (`resolved` after the firing).
- duplicate_descriptor: the copy lost its race: the key was refused (`failed` consumed/stale), met a
  BUSY slot, or was served twice.
- delay_descriptor: on an overwrite ring a STALE or a drop of the held key; otherwise the key was
  delivered no earlier than `delay` after the firing.
- kill / restart of a consumer: it held claimed, un-acked descriptors that the channel handed out
  again (`channel_returned`); of the server: a client attempt failed afterwards; of the producer: it
  died (`proc_exit`) and nothing was published until it came back (a WRITING slot the server then
  reclaimed, `reclaimed`, marks a kill mid-write).
- pause: the target logged nothing for most of the pause (`duration`) and something after it
  (resumed service); a server pause also counts through failed client attempts.
- network `toxic` reset_peer / timeout and `down`: a failed attempt on that port inside the fault's
  window (plus slack). Data-shaping toxics (latency, bandwidth, slicer, slow_close) and limit_data on a
  listener proxy act on the UCX connection-manager link only: `not_judged` ("connection-setup only")
  until the simulated-hosts layer (issue 8) gives them real predicates: register them here.
"""

from __future__ import annotations

import bisect
import itertools
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Event = Mapping[str, Any]
Status = Literal["effective", "ineffective", "not_judged"]

SLACK_S = 0.5  # clocks of one machine; an effect logged just before its firing event still counts
FAILED_ATTEMPT = ("retry", "quarantine")
CONSUMER_EXITS = frozenset({"killed", "restarted"})


@dataclass(frozen=True)
class Effect:
    """`status` of one configured fault; `detail` is the evidence or the reason it had none.

    `effective` counts firings matched by an outcome; `ports_without` lists ports (of a per-port
    fault) where it fired but changed nothing, or never fired.
    """

    status: Status
    detail: str
    effective: int = 0
    ports_without: tuple[int, ...] = ()


@dataclass(frozen=True)
class FaultView:
    """What a rule needs of the configured fault (the checker's `FaultRef` satisfies it)."""

    index: int
    kind: str
    layer: str = ""  # the kind's layer, as the scenario model defines it (`chaos.scenario.model.layer_of`)
    ports: tuple[int, ...] | None = None
    target: str | None = None
    window: tuple[float, float] | None = None
    at_s: float | None = None
    delay_s: float | None = None
    duration_s: float | None = None
    toxic: str | None = None
    policy: str = "block"
    host_link: bool = False  # placed on a simulated host link (`between`/`isolate`): chaos.hosts.effects
    side: str = "server"  # transport faults: whose link it acted on (`client`: CLIENT_RULES judge it)
    phase: str | None = None


@dataclass
class Indexed:
    """The history indexed once for every rule: times are absolute `t` seconds, `t0` the fault phase."""

    t0: float
    port_of: Callable[[Any], int | None]
    by_type: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    by_key: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    by_proc: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, history: Iterable[Event], t0: float, port_of: Callable[[Any], int | None]) -> Indexed:
        ix = cls(t0, port_of)
        for e in history:
            ix.by_type[str(e["type"])].append(e)
            key = e.get("key")
            if isinstance(key, str):
                ix.by_key[key].append(e)
            ix.by_proc[str(e.get("proc"))].append(float(e["t"]))
        return ix

    def port_times(
        self, types: Sequence[str], reasons: frozenset[str] | None = None
    ) -> dict[int, list[float]]:
        """Sorted times per port of events of `types` (optionally with a `reason` in `reasons`)."""
        return self._times_by(types, reasons, lambda e, port: port)

    def proc_port_times(
        self, types: Sequence[str], reasons: frozenset[str] | None = None
    ) -> dict[tuple[str, int], list[float]]:
        """As `port_times`, per (process, port): a client-side fault acts in one consumer only."""
        return self._times_by(types, reasons, lambda e, port: (str(e.get("proc")), port))

    def _times_by(
        self,
        types: Sequence[str],
        reasons: frozenset[str] | None,
        key: Callable[[Event, int], Any],
    ) -> dict[Any, list[float]]:
        out: dict[Any, list[float]] = defaultdict(list)
        for type_ in types:
            for e in self.by_type.get(type_, ()):
                if reasons is not None and str(e.get("reason")) not in reasons:
                    continue
                port = self.port_of(e.get("port"))
                if port is not None:
                    out[key(e, port)].append(float(e["t"]))
        for times in out.values():
            times.sort()
        return out

    def times(self, type_: str, where: Callable[[Event], bool] = lambda e: True) -> list[float]:
        return sorted(float(e["t"]) for e in self.by_type.get(type_, ()) if where(e))


Rule = Callable[[FaultView, Sequence[Event], Indexed], Effect]


def _any_between(times: Sequence[float], start: float, end: float = float("inf")) -> bool:
    i = bisect.bisect_left(times, start)
    return i < len(times) and times[i] <= end


def _per_port(
    fault: FaultView,
    fires: Sequence[Event],
    ix: Indexed,
    evidence: dict[int, list[float]],
    what: str,
    horizon_s: float = float("inf"),
) -> Effect:
    """Effective when every listed port (every port it fired on, if none are listed) shows `what`
    after one of its firings (within `horizon_s`)."""

    def shows(e: Event) -> bool:
        t = float(e["t"])
        return _any_between(evidence.get(ix.port_of(e.get("port")), []), t - SLACK_S, t + horizon_s)  # type: ignore[arg-type]

    return _judge_ports(fault, fires, ix, shows, what, "firings")


def _judge_ports(
    fault: FaultView,
    fires: Sequence[Event],
    ix: Indexed,
    shows: Callable[[Event], bool],
    what: str,
    firings: str,
) -> Effect:
    """The per-port verdict every port-scoped rule shares: each listed port (each fired port if none
    listed) needs a firing that `shows` its effect; the ports without one are named."""
    fired = _fired_by_port(fires, ix)
    ports = sorted(fault.ports) if fault.ports is not None else sorted(fired)
    matched = 0
    without: list[int] = []
    for port in ports:
        hits = sum(1 for e in fired.get(port, ()) if shows(e))
        matched += hits
        if not hits:
            without.append(port)
    if not ports:
        return Effect("ineffective", "never fired on any port")
    if without:
        never = [p for p in without if p not in fired]
        why = f"no {what} on ports {without}" + (f" (never fired on {never})" if never else "")
        return Effect("ineffective", why, matched, tuple(without))
    return Effect("effective", f"{what} after {matched} of {len(fires)} {firings}", matched)


def _keyed(
    fires: Sequence[Event], ix: Indexed, match: Callable[[Event, list[Event]], bool], what: str
) -> Effect:
    """Effective when at least one firing's descriptor key shows `what` (control faults carry `key`)."""
    matched = 0
    for e in fires:
        key = e.get("key")
        if isinstance(key, str) and match(e, ix.by_key.get(key, [])):
            matched += 1
    if matched:
        return Effect("effective", f"{what} for {matched} of {len(fires)} descriptors", matched)
    return Effect("ineffective", f"no descriptor it touched shows {what}")


# -- rules ----------------------------------------------------------------------------------------


def failed_attempt(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    return _per_port(fault, fires, ix, ix.port_times(FAILED_ATTEMPT), "failed attempt")


def detected_and_quarantined(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    reasons = frozenset({"TruncatedError", "ProtocolError"})
    return _per_port(
        fault, fires, ix, ix.port_times(("quarantine",), reasons), "detected bad message + quarantine"
    )


def read_timed_out(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    reasons = frozenset({"ReadTimeoutError"})
    return _per_port(
        fault, fires, ix, ix.port_times(FAILED_ATTEMPT, reasons), "read timeout (endpoint aborted)"
    )


def stall_outcome(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    evidence = ix.port_times(FAILED_ATTEMPT, frozenset({"ReadTimeoutError", "ConnectionLostError"}))
    for port, times in ix.port_times(("released", "late_finalise")).items():
        evidence[port] = sorted([*evidence.get(port, []), *times])
    return _per_port(fault, fires, ix, evidence, "held read timed out or was released")


def endpoint_replaced(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    evidence = ix.port_times(("connect", *FAILED_ATTEMPT))
    return _per_port(fault, fires, ix, evidence, "endpoint replaced")


# A client-side firing raises into (or holds) the very exchange it drew for; its failure shows within
# a step bound or a RESOLVE that cannot reach the server, never minutes later.
CLIENT_HORIZON_S = 10.0


def _fired_by_port(fires: Sequence[Event], ix: Indexed) -> dict[int, list[Event]]:
    out: dict[int, list[Event]] = defaultdict(list)
    for e in fires:
        port = ix.port_of(e.get("port"))
        if port is not None:
            out[port].append(e)
    return out


def client_failed_attempt(
    fault: FaultView, fires: Sequence[Event], ix: Indexed, reasons: frozenset[str] | None = None
) -> Effect:
    """A client reset (or timeout: `reasons`) counts when the consumer it fired in saw an attempt on
    that port fail afterwards: another consumer's failure is not this firing's doing."""
    failed = ix.proc_port_times(FAILED_ATTEMPT, reasons)

    def shows(e: Event) -> bool:
        times = failed.get((str(e.get("proc")), ix.port_of(e.get("port"))), [])  # type: ignore[arg-type]
        return _any_between(times, float(e["t"]) - SLACK_S, float(e["t"]) + CLIENT_HORIZON_S)

    what = "failed attempt by that consumer" if reasons is None else "client read timeout"
    return _judge_ports(fault, fires, ix, shows, what, "client firings")


def client_read_timed_out(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    return client_failed_attempt(fault, fires, ix, frozenset({"ReadTimeoutError"}))


KEY_OUTCOMES = frozenset({"resolved", "late_finalise", "released", "retry", "failed", "delivered"})


def client_stall_outcome(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    """The held exchange shows the hold: one of its keys has an outcome at least 0.9x `delay` after
    the firing (answered late by RESOLVE, refused, fenced, failed or delivered late), or the consumer's
    attempt on that port failed (its own bound fired). A hold nothing waited for shows neither."""
    failed = ix.proc_port_times(FAILED_ATTEMPT)
    hold = 0.9 * (fault.delay_s or 0.0)

    def shows(e: Event) -> bool:
        t = float(e["t"])
        times = failed.get((str(e.get("proc")), ix.port_of(e.get("port"))), [])  # type: ignore[arg-type]
        if _any_between(times, t - SLACK_S, t + hold + CLIENT_HORIZON_S):
            return True
        keys = e.get("keys") or ()
        return any(
            later["type"] in KEY_OUTCOMES and float(later["t"]) >= t + hold
            for key in keys
            for later in ix.by_key.get(str(key), ())
        )

    what = f"outcome of the held exchange {hold:.2f}s later"
    return _judge_ports(fault, fires, ix, shows, what, "client firings")


CLIENT_RULES: dict[str, Rule] = {
    "reset": client_failed_attempt,
    "timeout": client_read_timed_out,
    "stall": client_stall_outcome,
}


def resolve_answered(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    resolved = ix.times("resolved")
    matched = sum(1 for e in fires if _any_between(resolved, float(e["t"]) - SLACK_S))
    if matched:
        return Effect("effective", f"RESOLVE answered after {matched} of {len(fires)} firings", matched)
    return Effect("ineffective", "no RESOLVE was answered after it fired")


def lost_race(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    def raced(_: Event, events: list[Event]) -> bool:
        refused = any(e["type"] == "failed" and e.get("reason") in ("consumed", "stale") for e in events)
        busy = any(e["type"] == "retry" and e.get("reason") == "BusyError" for e in events)
        return refused or busy or sum(1 for e in events if e["type"] == "served") > 1

    return _keyed(fires, ix, raced, "a lost race (refused, BUSY or served twice)")


def delayed(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    if fault.policy == "overwrite":

        def stale(_: Event, events: list[Event]) -> bool:
            return any(
                e["type"] == "dropped" or (e["type"] == "failed" and e.get("reason") == "stale")
                for e in events
            )

        return _keyed(fires, ix, stale, "a STALE or dropped slot")
    delay = 0.9 * (fault.delay_s or 0.0)

    def late(fire: Event, events: list[Event]) -> bool:
        return any(e["type"] == "delivered" and float(e["t"]) >= float(fire["t"]) + delay for e in events)

    return _keyed(fires, ix, late, f"a delivery at least {delay:.2f}s later")


def process_outcome(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    target = fault.target or ""
    if not fires:
        return Effect("ineffective", "never fired")
    first = float(fires[0]["t"])
    if target == "redis":  # the descriptor bus: its outage shows as a gap in the consumers' claims
        return _bus_outage(fault, fires, ix)
    if fault.kind == "pause":
        return _paused(fault, fires, ix)
    if target.startswith("consumer"):
        held = [
            e
            for e in ix.by_type.get("channel_returned", ())
            if e.get("consumer") == target and float(e["t"]) >= first - SLACK_S and e.get("keys")
        ]
        n = sum(len(e["keys"]) for e in held)
        if n:
            return Effect("effective", f"{target} died holding {n} descriptors, handed out again", len(held))
        return Effect("ineffective", f"{target} held no descriptor when it was {fault.kind}ed")
    if target == "producer":
        return _producer_stopped(fires, ix)
    failed = [t for times in ix.port_times(FAILED_ATTEMPT).values() for t in times if t >= first - SLACK_S]
    if failed:
        return Effect("effective", f"{len(failed)} client attempts failed after the {fault.kind}", 1)
    return Effect("ineffective", f"no client attempt failed after the server {fault.kind}")


def _producer_stopped(fires: Sequence[Event], ix: Indexed) -> Effect:
    """Killed: nothing published from its death until it was started again; a WRITING slot it left
    behind reclaimed by the server is noted (a kill mid-write)."""
    exits = sorted(float(e["t"]) for e in ix.by_type.get("proc_exit", ()) if e.get("target") == "producer")
    if not exits:
        return Effect("ineffective", "no producer exit was recorded")
    died = exits[0]
    back = next((t for t in exits[1:]), float("inf"))  # a restart logs another proc_exit
    published = ix.times("published")
    if _any_between(published, died + SLACK_S, back):
        return Effect("ineffective", "publishing went on after the producer was killed")
    mid_write = any(e.get("writing") and float(e["t"]) >= died for e in ix.by_type.get("reclaimed", ()))
    how = "mid-write: the server reclaimed its WRITING slot" if mid_write else "between writes"
    return Effect("effective", f"the producer died {how}; nothing was published after", 1)


BUS_GAP_S = 0.3  # consumers claim every ~0.1-0.5 s while descriptors flow; a dead bus stops them


def _bus_outage(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    """A killed, restarted or paused Redis: a quiet stretch in the consumers' claims that spans the
    signal (a claim already in flight may land just after it) and ends with claims resuming (the
    stream outlived it). A restart of a dead Redis is judged by the same stretch: the one it ends."""
    claims = sorted(float(e["t"]) for e in ix.by_type.get("claimed", ()))
    for e in fires:
        start = float(e["t"])
        for before, after in itertools.pairwise(claims):
            if before <= start + SLACK_S and after >= start and after - before >= BUS_GAP_S:
                return Effect(
                    "effective",
                    f"no descriptor claimed for {after - before:.2f}s around the redis {fault.kind}",
                    1,
                )
    return Effect("ineffective", f"claims flowed on through the redis {fault.kind} (or never resumed)")


def _paused(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    target = fault.target or ""
    own = ix.by_proc.get(target, [])
    duration = fault.duration_s or 1.0
    for e in fires:
        start = float(e["t"])
        quiet = not _any_between(own, start + 0.1, start + 0.8 * duration)
        resumed = _any_between(own, start + 0.8 * duration)
        if quiet and resumed:
            return Effect("effective", f"{target} was silent for its {duration:g}s pause, then resumed", 1)
    if target == "server":
        failed = [t for times in ix.port_times(FAILED_ATTEMPT).values() for t in times]
        if any(_any_between(failed, float(e["t"]) - SLACK_S, float(e["t"]) + duration + 5) for e in fires):
            return Effect("effective", "client attempts failed during the server pause", 1)
    return Effect("ineffective", f"{target} did not go quiet and resume around the pause")


def network_outcome(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    if fault.kind == "toxic" and fault.toxic in DATA_SHAPING_TOXICS:
        return Effect(
            "not_judged", "connection-setup only: a listener proxy shapes the CM link, not the data"
        )
    if fault.kind == "toxic" and fault.toxic in SETUP_BYTE_TOXICS:
        return Effect("not_judged", "connection-setup only: a listener proxy counts CM-link bytes, not data")
    horizon = 5.0
    if fault.window is not None:
        horizon = fault.window[1] - fault.window[0] + 5.0
    return _per_port(fault, fires, ix, ix.port_times(FAILED_ATTEMPT), "failed attempt in its window", horizon)


def host_link_outcome(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    """Kernel faults act on simulated host links only; their effect is judged there (chaos.hosts.effects:
    the affected consumers' reads slowed, failed or retransmitted, else `ineffective: ...`)."""
    return Effect("not_judged", "host-link fault: judged by chaos.hosts.effects")


DATA_SHAPING_TOXICS = frozenset({"latency", "bandwidth", "slicer", "slow_close"})
# limit_data closes a connection after N bytes; on a listener proxy only the CM link's setup bytes
# pass (measured: no read failed in network-limit-data), so it is judged with simulated hosts (issue 8).
SETUP_BYTE_TOXICS = frozenset({"limit_data"})

RULES: dict[str, Rule] = {
    "reset": failed_attempt,
    "truncate": detected_and_quarantined,
    "corrupt": detected_and_quarantined,
    "timeout": read_timed_out,
    "stall": stall_outcome,
    "evict": endpoint_replaced,
    "drop_commit": resolve_answered,
    "duplicate_descriptor": lost_race,
    "delay_descriptor": delayed,
    "kill": process_outcome,
    "pause": process_outcome,
    "restart": process_outcome,
    # Listener-proxy network faults; on a host link (`between`/`isolate`) `judge` defers to chaos.hosts.
    "toxic": network_outcome,
    "down": network_outcome,
    "partition": host_link_outcome,
    "loss": host_link_outcome,
    "reject": host_link_outcome,
    "bandwidth": host_link_outcome,
    "flap": host_link_outcome,
}


def judge(fault: FaultView, fires: Sequence[Event], ix: Indexed) -> Effect:
    """The effect of one configured fault given its `fault` events; unknown kinds are not judged."""
    if fault.host_link:  # one place judges host-link faults: the affected consumers' reads
        return host_link_outcome(fault, fires, ix)
    rule = (CLIENT_RULES if fault.side == "client" else RULES).get(fault.kind)
    if rule is None:
        return Effect("not_judged", f"no effect rule for kind {fault.kind!r}")
    if not fires:
        return Effect("ineffective", "never fired")
    return rule(fault, fires, ix)
