"""Exactly-once checker: a pure function from a run's merged event history to a `Verdict`.

In the spirit of Jepsen's checkers (total-queue, stats, perf), except that a duplicate FAILS the
scenario: the transport promises exactly-once, not at-least-once. No I/O here: `chaos.history` reads
the per-process JSONL files, the runner builds a `CheckSpec` from the scenario, and
`check(events, spec)` decides. Deterministic (same input -> same verdict) and one pass over the
events after a stable sort by `t` (100k events in well under a second). `check` composes named
phases, each a function below: read -> classify -> invariants -> coverage -> measures -> thresholds.

Input: event dicts as in docs/interfaces.md (`t`, `proc`, `type`, fields). Time zero is the `t` of the
`phase` event named `faults` (else the first event); every `*_s` in the verdict is relative to it.
Ports: port *indexes* 0..ports-1. Server and fault events report indexes, the client's `quarantine`
(and maybe `delivered`) report real port numbers; `CheckSpec.port_numbers` maps those back.

Classification of every key `"slot:generation"`, first rule that matches wins:
1. delivered (>= 1 `delivered` event) -> delivered; >1 such events (from any consumer) -> duplicated;
   any with `checksum_ok` or `content_ok` False -> corrupted; never `published` -> unexpected.
2. `dropped` by the overwrite policy -> dropped, not lost. A `failed{reason: stale}` for it is the
   legitimate rejection of its recycled descriptor.
3. `failed{reason: in_doubt}` -> in_doubt (the client could not learn whether its read committed).
4. consumed_by_dead_consumer: the server committed it, and a consumer that the harness killed (or
   restarted) held its descriptor claimed and un-acked when it died (the runner's `channel_returned`
   event lists those keys), at or after the commit. Only that consumer could have delivered it.
   Bounded by `expect.consumed_by_dead_consumer` (None: at most what killed consumers held, which is
   the rule itself; 0 forbids it).
5. otherwise lost: published, never delivered, not dropped, not in doubt. A `stale` rejection of a key
   that was never dropped lands here too: the descriptor went stale without the producer recycling
   it, i.e. the slot was consumed or overwritten behind the consumer's back.

Counts are distinct keys, except `retries` and `failed` (events). `unexpected` has its own
expectation (default 0): delivering a payload nobody published is the ABA bug.

Server-side invariants, from the server's own events (each fails the run like a duplicate does):
- double_commit: more than one `committed` event for one key (at most one server commit per key).
- uncommitted_delivery (commit protocol): a delivery whose read's token (`delivered.token`) has no
  server `committed` event for that key. The client may hand a payload over only after COMMITTED.
- republished: the producer published one key twice (the channel's `published` events).
- wrong_generation: a `served` event whose ring generation (its key) differs from the generation the
  request named (`requested`, commit protocol only). The ring must answer STALE instead; the client's
  descriptor check may still refuse the payload, so this is the first place the ABA bug shows.
  Counted per requested key.
- fencing: a `committed` event whose token is not the token of the latest `served` event of that
  key. A read whose slot was reclaimed or fenced and then served to another reader no longer holds
  it, so its late commit must be a no-op; the server committing it means the token check is gone.
  Counted per key.
- ring_audit: the runner's end-of-run `ring_audit` event; `ready_count()` must equal the number of
  READY slots in the snapshot taken with it (the ring is quiescent then).
- slot_leak: that snapshot has READING or WRITING slots after the drain (`expect.slot_leak`, default 0).
- drain_incomplete: the runner's `drain` event says the channel still held descriptors when the drain
  ended (`expect.drain_incomplete`, default false).

Effects (chaos.effects): every configured fault must have changed an outcome it is meant to change
(`expect.faults_effective`, default all); a fault that fired with no effect fails as
`ineffective: fault N (kind) ...`. `faults_fired` (default none) still asks for firing per port.
`faults_quarantined` (default none) asks that every port on which a listed fault fired was
quarantined by a client at least once: a port that just failed a read must leave the rotation.

A run that published nothing fails as `vacuous`: it checked nothing.

Safety vs liveness: every failure string starts with its kind; `failure_class` sorts kinds into
safety (an invariant broke), coverage (the run proved less than it claims) and liveness
(throughput, recovery, latency). `Verdict.summary()` says in one line when only liveness failed.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, NamedTuple

from chaos.effects import FaultView, Indexed, judge

Event = Mapping[str, Any]
FaultsFired = Literal["all", "none"] | Sequence[int]
FaultRef = FaultView  # what the checker knows of one configured fault (seconds relative to time zero)

ANOMALY_KINDS = (
    "lost",
    "duplicated",
    "corrupted",
    "unexpected",
    "in_doubt",
    "consumed_by_dead_consumer",
    "wrong_generation",
    "fencing",
    "double_commit",
    "uncommitted_delivery",
    "republished",
)
COUNT_KEYS = (
    "published",
    "delivered",
    "lost",
    "duplicated",
    "corrupted",
    "unexpected",
    "dropped",
    "stale_rejected",
    "in_doubt",
    "consumed_by_dead_consumer",
    "wrong_generation",
    "fencing",
    "double_commit",
    "uncommitted_delivery",
    "republished",
    "slot_leak",
    "port_abandoned",
    "retries",
    "failed",
)
# Anomalies bounded by an expectation of the same name (the rest have their own rules below).
BOUNDED = (
    "lost",
    "duplicated",
    "corrupted",
    "unexpected",
    "in_doubt",
    "wrong_generation",
    "fencing",
    "double_commit",
    "uncommitted_delivery",
    "republished",
)
SAFETY_KINDS = frozenset({*ANOMALY_KINDS, "ring_audit", "slot_leak", "drain_incomplete", "port_abandoned"})
# A port is abandoned when this many deliveries per port went elsewhere after its quarantine ended.
ABANDON_DELIVERIES_PER_PORT = 10
ABANDON_GRACE_S = 1.0
COVERAGE_KINDS = frozenset({"ineffective", "faults_fired", "faults_quarantined", "vacuous"})
LIVENESS_KINDS = frozenset({"throughput", "recovery", "p99_latency"})
CONSUMER_EXITS = frozenset({"killed", "restarted"})
SHOWN_KEYS = 5  # keys named in one failure string


def failure_kind(failure: str) -> str:
    """`lost` from `lost: 3 > 0 (slots ...)`: every failure string starts with its kind."""
    head, sep, _ = failure.partition(":")
    return head.strip().replace(" ", "_") if sep else "failure"


def failures_line(failures: Sequence[str]) -> str:
    """What failed, in one line that starts by saying whether any safety invariant broke."""
    classes = Counter(failure_class(f) for f in failures)
    if set(classes) == {"liveness"}:
        return "liveness only (no safety anomaly): " + "; ".join(failures)
    counts = f"{classes['safety']} safety, {classes['coverage']} coverage, {classes['liveness']} liveness"
    return f"failed ({counts}): " + "; ".join(failures)


def failure_class(failure: str) -> Literal["safety", "coverage", "liveness"]:
    """Safety (an invariant broke), coverage (a fault proved nothing) or liveness (too slow)."""
    kind = failure_kind(failure)
    if kind in LIVENESS_KINDS:
        return "liveness"
    if kind in COVERAGE_KINDS:
        return "coverage"
    return "safety"  # unknown kinds fail safe: never excused as "only slow"


@dataclass(frozen=True)
class Expectations:
    """Maximum allowed anomaly counts and performance floors/ceilings (None = not checked).

    `faults_effective`: "all" (default) = every configured fault must have changed an outcome its
    kind is meant to change (chaos.effects), a list = those fault indexes, "none" = not required.
    `faults_fired`: same values, only asks that the fault fired (on every port it lists).
    `faults_quarantined`: same values; every port on which such a fault fired must have been
    quarantined by a client at least once. `consumed_by_dead_consumer`: None = at most what killed
    consumers held (the rule itself), an int = also at most that many. `slot_leak`: READING/WRITING
    slots allowed after the drain; `drain_incomplete`: True allows descriptors left in the channel.
    """

    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    in_doubt: int = 0
    unexpected: int = 0
    wrong_generation: int = 0
    fencing: int = 0
    double_commit: int = 0
    uncommitted_delivery: int = 0
    republished: int = 0
    consumed_by_dead_consumer: int | None = None
    slot_leak: int = 0
    drain_incomplete: bool = False
    faults_effective: FaultsFired = "all"
    faults_fired: FaultsFired = "none"
    faults_quarantined: FaultsFired = "none"
    min_throughput: float | None = None
    max_recovery_s: float | None = None
    max_p99_latency_s: float | None = None


@dataclass(frozen=True)
class CheckSpec:
    """Plain values the runner takes from the scenario.

    `ports` = number of server ports; `port_numbers` = the real port number of each index, used to
    map events that carry real numbers back to indexes (empty = events already carry indexes).
    `examples` = how many offending keys per anomaly kind get their full event history.
    """

    duration_s: float
    ports: int
    faults: tuple[FaultRef, ...] = ()
    expect: Expectations = field(default_factory=Expectations)
    port_numbers: tuple[int, ...] = ()
    examples: int = 5
    protocol: str = "commit"

    def __post_init__(self) -> None:
        indexes = [f.index for f in self.faults]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"fault indexes are not unique: {indexes}")
        for name in ("faults_effective", "faults_fired", "faults_quarantined"):
            ff = getattr(self.expect, name)
            if isinstance(ff, str):
                if ff not in ("all", "none"):
                    raise ValueError(f"{name} must be 'all', 'none' or a list of indexes, got {ff!r}")
            else:
                unknown = sorted(set(ff) - set(indexes))
                if unknown:
                    raise ValueError(f"{name} names faults {unknown} that are not configured")
        if self.port_numbers and len(self.port_numbers) != self.ports:
            raise ValueError(f"port_numbers has {len(self.port_numbers)} entries for {self.ports} ports")


@dataclass(frozen=True)
class Verdict:
    """The checker's answer. `to_dict()` is JSON-safe and equal to its own JSON round trip.

    - counts: COUNT_KEYS -> int.
    - per_port: port index -> {delivered, retries, faults, quarantines}.
    - faults_fired: [{index, kind, port, count}] per (fault, port) from `fault` events.
    - coverage: per configured fault {index, kind, count, ports, fired_ports, missing_ports, covered,
      effect, effective, effect_detail}: `effect` is effective / ineffective / not_judged (chaos.effects),
      `effective` how many firings an outcome matched, `effect_detail` the evidence or the reason.
    - recovery: per configured fault {fault, kind, basis, end_s, recovery_s, pending}: `end_s` is the
      window end (basis `window_end`), the one-shot firing (`fired`, or `at` if it never fired), the
      last firing of an always-on process fault (`fired`) or the end of the fault phase (`heal`);
      `recovery_s` = first delivery at or after it minus `end_s`; `pending` = something was published
      at or after `end_s` (a None recovery with nothing pending is not a failure).
    - throughput: {per_s, overall_per_s, bucket_s, start_s, timeline} (timeline[i] = deliveries in
      [start_s + i, start_s + i + 1)).
    - latency: {count, p50, p90, p99, max} of `delivered.latency_s` (nearest rank; None if none), and
      under `claim` the same of `claimed.claim_latency_s`: publish-to-claim time per handout.
    - anomalies: kind -> [{key, slot, generation, note, events}] for the first `examples` keys.
    """

    passed: bool
    failures: list[str]
    counts: dict[str, int]
    per_port: dict[int, dict[str, int]]
    faults_fired: list[dict[str, Any]]
    coverage: list[dict[str, Any]]
    recovery: list[dict[str, Any]]
    throughput: dict[str, Any]
    latency: dict[str, Any]
    anomalies: dict[str, list[dict[str, Any]]]
    t0: float
    end_s: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["per_port"] = {str(p): dict(v) for p, v in self.per_port.items()}
        for entry in out["coverage"]:
            entry["fired_ports"] = {str(p): n for p, n in entry["fired_ports"].items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        """Inverse of `to_dict` (for `chaos replay` / reports reading results.json)."""
        values = dict(data)
        values["per_port"] = {int(p): dict(v) for p, v in data["per_port"].items()}
        values["coverage"] = [
            {**c, "fired_ports": {int(p): n for p, n in c["fired_ports"].items()}} for c in data["coverage"]
        ]
        return cls(**values)

    def by_class(self, which: str) -> list[str]:
        return [f for f in self.failures if failure_class(f) == which]

    @property
    def safety_failures(self) -> list[str]:
        """Invariants that broke: what a mutant must be caught by, and what `chaos explore` hunts."""
        return self.by_class("safety")

    @property
    def coverage_failures(self) -> list[str]:
        return self.by_class("coverage")

    @property
    def liveness_failures(self) -> list[str]:
        return self.by_class("liveness")

    def summary(self) -> str:
        """One line: passed, or what failed, saying so when only liveness (speed) did."""
        return failures_line(self.failures) if self.failures else "passed"


# -- helpers ---------------------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile: always a value that was observed; None for no values."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def quantiles(values: list[float]) -> dict[str, Any]:
    """{count, p50, p90, p99, max} of `values` (sorted in place)."""
    values.sort()
    return {
        "count": len(values),
        "p50": quantile(values, 0.50),
        "p90": quantile(values, 0.90),
        "p99": quantile(values, 0.99),
        "max": values[-1] if values else None,
    }


def _split_key(key: str) -> tuple[int | None, int | None]:
    slot, _, gen = key.partition(":")
    try:
        return int(slot), int(gen)
    except ValueError:
        return None, None


def _name_keys(keys: Sequence[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = f", +{len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
    return f"slots {shown}{more}"


class _Ports:
    """Normalises event ports to indexes (real numbers via `port_numbers`, indexes kept)."""

    def __init__(self, spec: CheckSpec) -> None:
        self.by_number = {num: i for i, num in enumerate(spec.port_numbers)}

    def __call__(self, value: Any) -> int | None:
        if value is None or isinstance(value, bool):
            return None
        try:
            port = int(value)
        except (TypeError, ValueError):
            return None
        return self.by_number.get(port, port)


# -- the checker: `check` composes its phases ------------------------------------------------------


def check(events: Iterable[Event], spec: CheckSpec) -> Verdict:
    """Judge one run: classify every key, count, measure, and compare with `spec.expect`.

    The phases, in order (each below under its own heading):
    read -> classify -> invariants -> coverage -> measures -> thresholds -> the Verdict.
    """
    history, port_of, sc = _read(events, spec)
    found = _invariants(sc, spec, _classify(sc, spec))
    counts, abandoned = _counts(sc, spec, found)
    faults_fired = _fired(sc, port_of)
    coverage = _coverage(sc, spec, history, port_of)
    measures = _measures(sc, spec, history)
    failures = _thresholds(sc, spec, counts, found, abandoned, coverage, measures)
    return _verdict(sc, spec, counts, faults_fired, coverage, measures, found, failures)


# -- read: one pass over the time-sorted history ---------------------------------------------------


def _read(events: Iterable[Event], spec: CheckSpec) -> tuple[list[Event], _Ports, _Scan]:
    """Read phase: the events sorted by `t` (stable), the port normaliser, and the one-pass scan."""
    history = sorted((e for e in events if "type" in e), key=lambda e: float(e.get("t", 0.0)))
    port_of = _Ports(spec)
    sc = _scan(history, spec, port_of)
    sc.delivery_times.sort()
    return history, port_of, sc


@dataclass
class _Scan:
    """Everything one pass over the history collects (the checker's working state)."""

    t0: float
    heal_t: float | None = None
    end_t: float = 0.0
    by_key: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    first_seen: dict[str, int] = field(default_factory=dict)
    published: Counter[str] = field(default_factory=Counter)
    dropped: set[str] = field(default_factory=set)
    deliveries: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    failed_reasons: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    commits: dict[str, list[Event]] = field(default_factory=lambda: defaultdict(list))
    consumer_deaths: dict[str, float] = field(default_factory=dict)  # consumer -> first harness kill
    returned: list[Event] = field(default_factory=list)  # channel_returned events
    delivery_times: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    claim_latencies: list[float] = field(default_factory=list)
    fault_events: dict[int, list[Event]] = field(default_factory=lambda: defaultdict(list))
    per_port: dict[int, Counter[str]] = field(default_factory=dict)
    holder: dict[str, Any] = field(default_factory=dict)  # key -> token of its latest `served`
    wrong_generation: dict[str, list[Event]] = field(default_factory=dict)
    fencing: dict[str, list[tuple[Event, Any]]] = field(default_factory=dict)
    audit: Event | None = None
    drain: Event | None = None
    quarantine_end: dict[int, float] = field(default_factory=dict)  # port -> last quarantine's end
    port_deliveries: dict[int, list[float]] = field(default_factory=lambda: defaultdict(list))
    retries: int = 0
    failed: int = 0


def _time_zero(history: Sequence[Event]) -> tuple[float, float | None]:
    t0: float | None = None
    heal_t: float | None = None
    for e in history:
        if e["type"] == "phase":
            if e.get("name") == "faults" and t0 is None:
                t0 = float(e["t"])
            elif e.get("name") == "heal" and heal_t is None:
                heal_t = float(e["t"])
    if t0 is None:
        t0 = float(history[0].get("t", 0.0)) if history else 0.0
    return t0, heal_t


def _scan(history: Sequence[Event], spec: CheckSpec, port_of: _Ports) -> _Scan:
    t0, heal_t = _time_zero(history)
    sc = _Scan(t0=t0, heal_t=heal_t, end_t=t0, per_port={p: Counter() for p in range(spec.ports)})

    def bump(port_value: Any, what: str) -> None:
        port = port_of(port_value)
        if port is not None:
            sc.per_port.setdefault(port, Counter())[what] += 1

    for pos, e in enumerate(history):
        kind = e["type"]
        t = float(e.get("t", 0.0))
        sc.end_t = max(sc.end_t, t)
        key = e.get("key")
        if isinstance(key, str):
            sc.by_key[key].append(e)
            sc.first_seen.setdefault(key, pos)
        if kind == "published" and key:
            sc.published[key] += 1
        elif kind == "delivered" and key:
            sc.deliveries[key].append(e)
            sc.delivery_times.append(t - t0)
            lat = e.get("latency_s")
            if isinstance(lat, int | float) and not isinstance(lat, bool):
                sc.latencies.append(float(lat))
            bump(e.get("port"), "delivered")
            port = port_of(e.get("port"))
            if port is not None:
                sc.port_deliveries[port].append(t)
        elif kind == "claimed":
            lat = e.get("claim_latency_s")
            if isinstance(lat, int | float) and not isinstance(lat, bool):
                sc.claim_latencies.append(float(lat))
        elif kind == "dropped" and key:
            sc.dropped.add(key)
        elif kind == "failed":
            sc.failed += 1
            if key:
                sc.failed_reasons[key].add(str(e.get("reason")))
        elif kind == "committed" and key:
            sc.commits[key].append(e)
            if key in sc.holder and e.get("token") != sc.holder[key]:
                sc.fencing.setdefault(key, []).append((e, sc.holder[key]))
        elif kind == "served" and key:
            sc.holder[key] = e.get("token")
            requested = e.get("requested")
            slot, gen = _split_key(key)
            if e.get("protocol", "commit") == "commit" and isinstance(requested, int) and requested != gen:
                sc.wrong_generation.setdefault(f"{slot}:{requested}", []).append(e)
        elif kind == "ring_audit":
            sc.audit = e
        elif kind == "drain":
            sc.drain = e
        elif kind == "channel_returned":
            sc.returned.append(e)
        elif kind == "retry":
            sc.retries += 1
            bump(e.get("port"), "retries")
        elif kind == "quarantine":
            bump(e.get("port"), "quarantines")
            port = port_of(e.get("port"))
            seconds = e.get("seconds")
            if port is not None and isinstance(seconds, int | float):
                sc.quarantine_end[port] = max(sc.quarantine_end.get(port, t), t + float(seconds))
        elif kind == "fault":
            bump(e.get("port"), "faults")
            try:
                index = int(e.get("fault"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            sc.fault_events[index].append(e)
        elif kind == "proc_exit":
            target = str(e.get("target") or "")
            if target.startswith("consumer") and e.get("how") in CONSUMER_EXITS:
                sc.consumer_deaths.setdefault(target, t)
    return sc


# -- classify: each key's outcome ------------------------------------------------------------------


@dataclass
class _Found:
    """The anomalous keys of each kind (ANOMALY_KINDS order) and a note per (kind, key)."""

    keys: dict[str, list[str]] = field(default_factory=lambda: {k: [] for k in ANOMALY_KINDS})
    notes: dict[tuple[str, str], str] = field(default_factory=dict)

    def flag(self, kind: str, key: str, note: str) -> None:
        self.keys[kind].append(key)
        self.notes[(kind, key)] = note


def _held_by_the_dead(sc: _Scan) -> dict[str, float]:
    """Key -> time its holder died, for keys a harness-killed consumer held claimed and un-acked."""
    held: dict[str, float] = {}
    for e in sc.returned:
        consumer = str(e.get("consumer"))
        died = sc.consumer_deaths.get(consumer)
        if died is None:
            continue  # a consumer that died on its own excuses nothing
        for key in e.get("keys") or ():
            held[str(key)] = max(held.get(str(key), died), float(e["t"]))
    return held


def _classify(sc: _Scan, spec: CheckSpec) -> _Found:
    """Classify phase: each key's outcome, by the rules of the module docstring (first match wins).

    Delivered keys may be duplicated, corrupted or unexpected; a published key never delivered and
    not dropped is in doubt, consumed by a dead consumer, or lost.
    """
    found = _Found()
    for key, dels in sc.deliveries.items():
        if len(dels) > 1:
            procs = sorted({str(d.get("proc")) for d in dels})
            found.flag("duplicated", key, f"delivered {len(dels)} times by {', '.join(procs)}")
        bad = [name for name in ("checksum_ok", "content_ok") if any(d.get(name) is False for d in dels)]
        if bad:
            found.flag("corrupted", key, " and ".join(f"{name} false" for name in bad))
        if key not in sc.published:
            found.flag("unexpected", key, "delivered, never published")

    held = _held_by_the_dead(sc)
    for key in sorted(set(sc.published) - set(sc.deliveries) - sc.dropped):
        reasons = sc.failed_reasons.get(key, set())
        commits = sc.commits.get(key, [])
        died = held.get(key)
        if "in_doubt" in reasons:
            found.flag("in_doubt", key, "read could not be resolved")
        elif commits and died is not None and float(commits[0]["t"]) <= died + 0.5:
            found.flag(
                "consumed_by_dead_consumer",
                key,
                "committed while a consumer held it un-acked, then it was killed",
            )
        elif "stale" in reasons:
            found.flag("lost", key, "rejected as stale but never dropped")
        elif commits:
            found.flag("lost", key, "committed by the server, never delivered")
        else:
            found.flag("lost", key, "failed: " + ", ".join(sorted(reasons)) if reasons else "never delivered")
    return found


# -- invariants: the server's promises, the counts -------------------------------------------------


def _invariants(sc: _Scan, spec: CheckSpec, found: _Found) -> _Found:
    """Invariants phase: what the server itself promises, from its own events (module docstring).

    Adds double_commit, uncommitted_delivery, republished, wrong_generation and fencing to what
    `_classify` found, then orders every kind's keys by when the history first named them.
    A wrong_generation key's examples also get the `served` events that answered it.
    """
    if spec.protocol == "commit":
        for key, dels in sc.deliveries.items():
            tokens = {c.get("token") for c in sc.commits.get(key, ())}
            orphans = [d.get("token") for d in dels if d.get("token") not in tokens]
            if orphans:
                by = f"committed by {sorted(map(str, tokens))}" if tokens else "never committed by the server"
                found.flag("uncommitted_delivery", key, f"delivered by read {orphans[0]}, {by}")
    for key, commits in sc.commits.items():
        if len(commits) > 1:
            found.flag(
                "double_commit",
                key,
                f"committed {len(commits)} times, tokens {[c.get('token') for c in commits]}",
            )
    for key, n in sc.published.items():
        if n > 1:
            found.flag("republished", key, f"published {n} times")
    for key, served in sc.wrong_generation.items():
        gens = ", ".join(sorted({str(s["key"]) for s in served}))
        found.flag("wrong_generation", key, f"requested {key}, the ring served {gens}")
        sc.by_key[key] = sorted([*sc.by_key[key], *served], key=lambda e: float(e.get("t", 0.0)))
        sc.first_seen.setdefault(key, sc.first_seen[str(served[0]["key"])])
    for key, stolen in sc.fencing.items():
        commit, held_by = stolen[0]
        more = f" (+{len(stolen) - 1} more)" if len(stolen) > 1 else ""
        found.flag(
            "fencing",
            key,
            f"committed for token {commit.get('token')} while token {held_by} held the slot{more}",
        )
    for keys in found.keys.values():
        keys.sort(key=lambda k: sc.first_seen.get(k, 0))
    return found


def _counts(sc: _Scan, spec: CheckSpec, found: _Found) -> tuple[dict[str, int], dict[int, tuple[float, int]]]:
    """Every COUNT_KEYS count (distinct keys; `retries` and `failed` are events), and the
    abandoned ports (an invariant of the clients, judged from the deliveries after a quarantine)."""
    audit = sc.audit
    abandoned = _abandoned_ports(sc, spec)
    leaked = 0 if audit is None else int(audit.get("reading") or 0) + int(audit.get("writing") or 0)
    counts = {
        "published": len(sc.published),
        "delivered": len(sc.deliveries),
        "dropped": len(sc.dropped),
        "stale_rejected": sum(1 for reasons in sc.failed_reasons.values() if "stale" in reasons),
        "slot_leak": leaked,
        "port_abandoned": len(abandoned),
        "retries": sc.retries,
        "failed": sc.failed,
        **{kind: len(keys) for kind, keys in found.keys.items()},
    }
    return {k: counts[k] for k in COUNT_KEYS}, abandoned


def _abandoned_ports(sc: _Scan, spec: CheckSpec) -> dict[int, tuple[float, int]]:
    """Ports whose quarantine ended but that never carried a delivery again, although plenty of
    deliveries went to other ports afterwards (a client must bring a recovered port back)."""
    out: dict[int, tuple[float, int]] = {}
    ports = max(spec.ports, 1)
    for port, end in sc.quarantine_end.items():
        free_at = end + ABANDON_GRACE_S
        if any(t >= free_at for t in sc.port_deliveries.get(port, ())):
            continue
        elsewhere = sum(1 for p, ts in sc.port_deliveries.items() if p != port for t in ts if t >= free_at)
        if elsewhere >= ABANDON_DELIVERIES_PER_PORT * ports:
            out[port] = (free_at, elsewhere)
    return out


# -- coverage: which faults fired where, and whether they changed anything -------------------------


def _fired(sc: _Scan, port_of: _Ports) -> list[dict[str, Any]]:
    """{index, kind, port, count} per (fault, port) from the `fault` events; port None last."""
    fired_counts: Counter[tuple[int, int | None, str]] = Counter()
    for index, fires in sc.fault_events.items():
        for e in fires:
            fired_counts[(index, port_of(e.get("port")), str(e.get("kind")))] += 1
    return [
        {"index": i, "kind": k, "port": p, "count": n}
        for (i, p, k), n in sorted(
            fired_counts.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0)
        )
    ]


def _coverage(sc: _Scan, spec: CheckSpec, history: Sequence[Event], port_of: _Ports) -> list[dict[str, Any]]:
    ix = Indexed.build(history, sc.t0, port_of)
    coverage: list[dict[str, Any]] = []
    for f in spec.faults:
        fires = sc.fault_events.get(f.index, [])
        by_port = Counter(p for p in (port_of(e.get("port")) for e in fires) if p is not None)
        listed = None if f.ports is None else sorted({port_of(p) for p in f.ports} - {None})
        missing = [] if listed is None else [p for p in listed if by_port[p] == 0]
        effect = judge(f, fires, ix)
        coverage.append(
            {
                "index": f.index,
                "kind": f.kind,
                "count": len(fires),
                "ports": listed,
                "fired_ports": dict(sorted(by_port.items())),
                "missing_ports": missing,
                "covered": bool(fires) and not missing,
                "effect": effect.status,
                "effective": effect.effective,
                "effect_detail": effect.detail,
            }
        )
    return coverage


# -- measures: recovery, throughput, latency -------------------------------------------------------


class _Measures(NamedTuple):
    recovery: list[dict[str, Any]]
    throughput: dict[str, Any]
    latency: dict[str, Any]


def _measures(sc: _Scan, spec: CheckSpec, history: Sequence[Event]) -> _Measures:
    """Measures phase: per-fault recovery, deliveries per second, delivery and claim latency."""
    return _Measures(
        recovery=_recovery(sc, spec, history),
        throughput=_throughput(sc, spec),
        latency={**quantiles(sc.latencies), "claim": quantiles(sc.claim_latencies)},
    )


def _recovery(sc: _Scan, spec: CheckSpec, history: Sequence[Event]) -> list[dict[str, Any]]:
    phase_end = (sc.heal_t - sc.t0) if sc.heal_t is not None else spec.duration_s
    publish_times = sorted(float(e["t"]) - sc.t0 for e in history if e["type"] == "published")
    recovery: list[dict[str, Any]] = []
    for f in spec.faults:
        fires = sorted(float(e["t"]) - sc.t0 for e in sc.fault_events.get(f.index, []))
        if f.window is not None:
            basis, end_s = "window_end", float(f.window[1])
        elif f.at_s is not None:
            basis, end_s = ("fired", fires[0]) if fires else ("at", float(f.at_s))
        elif f.layer == "process" and fires:  # a process fault's firing is a signal, an event in time
            basis, end_s = "fired", fires[-1]
        else:
            basis, end_s = "heal", float(phase_end)
        after = _first_at_or_after(sc.delivery_times, end_s)
        recovery.append(
            {
                "fault": f.index,
                "kind": f.kind,
                "basis": basis,
                "end_s": end_s,
                "recovery_s": None if after is None else after - end_s,
                # Nothing published from here on and nothing delivered: no recovery to wait for.
                "pending": _first_at_or_after(publish_times, end_s) is not None,
            }
        )
    return recovery


def _throughput(sc: _Scan, spec: CheckSpec) -> dict[str, Any]:
    times = sc.delivery_times
    span = max(sc.end_t - sc.t0, 0.0)
    in_phase = sum(1 for d in times if 0.0 <= d < spec.duration_s)
    per_s = in_phase / spec.duration_s if spec.duration_s > 0 else (len(times) / span if span else 0.0)
    start_s = math.floor(times[0]) if times and times[0] < 0 else 0
    timeline: list[int] = []
    if times:
        timeline = [0] * (math.floor(times[-1]) - start_s + 1)
        for d in times:
            timeline[math.floor(d) - start_s] += 1
    return {
        "per_s": per_s,
        "overall_per_s": len(times) / span if span > 0 else 0.0,
        "bucket_s": 1.0,
        "start_s": start_s,
        "timeline": timeline,
    }


# -- thresholds: every finding against `spec.expect` -----------------------------------------------


def _thresholds(
    sc: _Scan,
    spec: CheckSpec,
    counts: Mapping[str, int],
    found: _Found,
    abandoned: Mapping[int, tuple[float, int]],
    coverage: Sequence[Mapping[str, Any]],
    measures: _Measures,
) -> list[str]:
    """Thresholds phase: the failure strings, safety first, then coverage, then liveness."""
    failures = _safety_failures(sc, spec, counts, found.keys, abandoned)
    failures += _coverage_failures(sc, spec, coverage)
    failures += _liveness_failures(spec, measures.throughput, measures.recovery, measures.latency)
    return failures


def _safety_failures(
    sc: _Scan,
    spec: CheckSpec,
    counts: Mapping[str, int],
    anomaly_keys: Mapping[str, list[str]],
    abandoned: Mapping[int, tuple[float, int]],
) -> list[str]:
    ex = spec.expect
    failures: list[str] = []
    for name in BOUNDED:
        limit = getattr(ex, name)
        if counts[name] > limit:
            failures.append(f"{name}: {counts[name]} > {limit} ({_name_keys(anomaly_keys[name])})")
    dead = counts["consumed_by_dead_consumer"]
    if ex.consumed_by_dead_consumer is not None and dead > ex.consumed_by_dead_consumer:
        failures.append(
            f"consumed_by_dead_consumer: {dead} > {ex.consumed_by_dead_consumer} "
            f"({_name_keys(anomaly_keys['consumed_by_dead_consumer'])})"
        )
    audit = sc.audit
    if audit is not None and audit.get("ready_count") != audit.get("ready"):
        failures.append(
            f"ring_audit: ready_count() says {audit.get('ready_count')} but {audit.get('ready')} of "
            f"{audit.get('slots')} slots are READY"
        )
    if counts["slot_leak"] > ex.slot_leak:
        assert audit is not None
        failures.append(
            f"slot_leak: {counts['slot_leak']} > {ex.slot_leak} slots left mid-transition after the drain "
            f"({audit.get('reading')} READING, {audit.get('writing')} WRITING)"
        )
    for port, (free_at, elsewhere) in abandoned.items():
        failures.append(
            f"port_abandoned: port {port} carried no read after its quarantine ended at "
            f"{free_at - sc.t0:.1f}s while {elsewhere} reads went to other ports"
        )
    drain = sc.drain
    if drain is not None and not drain.get("complete", True) and not ex.drain_incomplete:
        failures.append(
            f"drain_incomplete: {drain.get('pending', 0)} pending and {drain.get('in_flight', 0)} claimed "
            f"descriptors left in the channel after {drain.get('seconds', 0):.0f}s of drain"
        )
    return failures


def _coverage_failures(sc: _Scan, spec: CheckSpec, coverage: Sequence[Mapping[str, Any]]) -> list[str]:
    ex = spec.expect
    failures: list[str] = []
    if not sc.published:
        # Nothing was at stake (e.g. the producer started after the fault phase on a loaded box).
        failures.append("vacuous: nothing was published during the run, so nothing was checked")
    cov = {c["index"]: c for c in coverage}
    for index in _required(ex.faults_fired, spec.faults):
        c = cov[index]
        if c["count"] == 0:
            failures.append(f"faults_fired: fault {index} ({c['kind']}) never fired")
        elif c["missing_ports"]:
            failures.append(
                f"faults_fired: fault {index} ({c['kind']}) never fired on ports {c['missing_ports']}"
            )
    for index in _required(ex.faults_effective, spec.faults):
        c = cov[index]
        if c["effect"] == "ineffective":
            failures.append(
                f"ineffective: fault {index} ({c['kind']}) fired {c['count']} times and changed nothing: "
                f"{c['effect_detail']}"
            )
    for index in _required(ex.faults_quarantined, spec.faults):
        c = cov[index]
        for port, fires in c["fired_ports"].items():
            if sc.per_port.get(port, Counter())["quarantines"] == 0:
                failures.append(
                    f"faults_quarantined: fault {index} ({c['kind']}) fired {fires} times on port {port}, "
                    "which was never quarantined"
                )
    return failures


def _liveness_failures(
    spec: CheckSpec,
    throughput: Mapping[str, Any],
    recovery: Sequence[Mapping[str, Any]],
    latency: Mapping[str, Any],
) -> list[str]:
    ex = spec.expect
    failures: list[str] = []
    per_s = throughput["per_s"]
    if ex.min_throughput is not None and per_s < ex.min_throughput:
        failures.append(f"throughput: {per_s:.1f}/s < {ex.min_throughput:g}/s")
    if ex.max_recovery_s is not None:
        for r in recovery:
            if r["recovery_s"] is None and r["pending"]:
                failures.append(
                    f"recovery: fault {r['fault']} ({r['kind']}) no delivery after {r['end_s']:.2f}s"
                )
            elif r["recovery_s"] is not None and r["recovery_s"] > ex.max_recovery_s:
                took, limit = r["recovery_s"], ex.max_recovery_s
                failures.append(f"recovery: fault {r['fault']} ({r['kind']}) {took:.2f}s > {limit:g}s")
    p99 = latency["p99"]
    if ex.max_p99_latency_s is not None and p99 is not None and p99 > ex.max_p99_latency_s:
        failures.append(f"p99 latency: {p99:.3f}s > {ex.max_p99_latency_s:g}s")
    return failures


def _required(which: FaultsFired, faults: Sequence[FaultRef]) -> list[int]:
    """Fault indexes an `all` / `none` / list-of-indexes expectation names."""
    if which == "all":
        return [f.index for f in faults]
    if which == "none":
        return []
    return list(which)


# -- the verdict -----------------------------------------------------------------------------------


def _verdict(
    sc: _Scan,
    spec: CheckSpec,
    counts: dict[str, int],
    faults_fired: list[dict[str, Any]],
    coverage: list[dict[str, Any]],
    measures: _Measures,
    found: _Found,
    failures: list[str],
) -> Verdict:
    return Verdict(
        passed=not failures,
        failures=failures,
        counts=counts,
        per_port={
            p: {n: c[n] for n in ("delivered", "retries", "faults", "quarantines")}
            for p, c in sorted(sc.per_port.items())
        },
        faults_fired=faults_fired,
        coverage=coverage,
        recovery=measures.recovery,
        throughput=measures.throughput,
        latency=measures.latency,
        anomalies=_examples(sc, found, spec.examples),
        t0=sc.t0,
        end_s=max(sc.end_t - sc.t0, 0.0),
    )


def _examples(sc: _Scan, found: _Found, limit: int) -> dict[str, list[dict[str, Any]]]:
    """The first `limit` keys of each anomaly kind with their note and full event history."""
    anomalies: dict[str, list[dict[str, Any]]] = {}
    for kind, keys in found.keys.items():
        shown = []
        for key in keys[:limit]:
            slot, gen = _split_key(key)
            shown.append(
                {
                    "key": key,
                    "slot": slot,
                    "generation": gen,
                    "note": found.notes.get((kind, key), ""),
                    "events": [dict(e) for e in sc.by_key[key]],
                }
            )
        anomalies[kind] = shown
    return anomalies


def _first_at_or_after(sorted_times: Sequence[float], t: float) -> float | None:
    i = bisect.bisect_left(sorted_times, t)
    return sorted_times[i] if i < len(sorted_times) else None
