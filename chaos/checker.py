"""Exactly-once checker: a pure function from a run's merged event history to a `Verdict`.

In the spirit of Jepsen's checkers (total-queue, stats, perf), except that a duplicate FAILS the
scenario: the transport promises exactly-once, not at-least-once. No I/O here: `chaos.history` reads
the per-process JSONL files, the runner builds a `CheckSpec` from the scenario, and
`check(events, spec)` decides. Deterministic (same input -> same verdict) and one pass over the
events after a stable sort by `t` (100k events in well under a second).

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
4. the server logged `committed` and a consumer was killed (or restarted) by the harness at or after
   the first commit -> delivered_to_dead_consumer. Why: the client hands a payload over only after
   COMMITTED and logs `delivered` right after, but `delivered` carries the key only (the server's token
   never reaches the consumer's log), so the consumer that owned the read cannot be identified. A
   commit with no delivery is a transport loss unless the process that would have logged it died
   first; a later consumer kill is the only event that can explain it. Counted apart from `lost` and
   listed in `anomalies`, so a report still shows every such key; with no consumer kill it is lost.
5. otherwise lost: published, never delivered, not dropped, not in doubt. A `stale` rejection of a key
   that was never dropped lands here too: the descriptor went stale without the producer recycling
   it, i.e. the slot was consumed or overwritten behind the consumer's back.

Counts are distinct keys, except `retries` and `failed` (events). `unexpected` has its own
expectation (default 0): delivering a payload nobody published is the ABA bug.

Server-side invariants, from the server's own events (each fails the run like a duplicate does):
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

`faults_quarantined` (default none) asks that every port on which a listed fault fired was
quarantined by a client at least once: a port that just failed a read must leave the rotation.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Event = Mapping[str, Any]
FaultsFired = Literal["all", "none"] | Sequence[int]

ANOMALY_KINDS = (
    "lost",
    "duplicated",
    "corrupted",
    "unexpected",
    "in_doubt",
    "delivered_to_dead_consumer",
    "wrong_generation",
    "fencing",
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
    "delivered_to_dead_consumer",
    "wrong_generation",
    "fencing",
    "retries",
    "failed",
)
# Fault kinds whose firing is an event in time (a signal), not a per-request decision.
PROCESS_KINDS = frozenset({"kill", "pause", "restart"})
CONSUMER_EXITS = frozenset({"killed", "restarted"})
SHOWN_KEYS = 5  # keys named in one failure string


@dataclass(frozen=True)
class FaultRef:
    """What the checker needs to know of one configured fault (seconds relative to time zero).

    `ports` are port indexes (None = every port); at most one of `window` and `at_s` is set.
    """

    index: int
    kind: str
    ports: tuple[int, ...] | None = None
    target: str | None = None
    window: tuple[float, float] | None = None
    at_s: float | None = None


@dataclass(frozen=True)
class Expectations:
    """Maximum allowed anomaly counts and performance floors/ceilings (None = not checked).

    `faults_fired`: "all" = every configured fault must fire (on every port it lists), a list = those
    fault indexes must, "none" = no firing is required. `faults_quarantined`: same values; every port
    on which such a fault fired must have been quarantined by a client at least once.
    """

    lost: int = 0
    duplicated: int = 0
    corrupted: int = 0
    in_doubt: int = 0
    unexpected: int = 0
    wrong_generation: int = 0
    fencing: int = 0
    faults_fired: FaultsFired = "all"
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

    def __post_init__(self) -> None:
        indexes = [f.index for f in self.faults]
        if len(set(indexes)) != len(indexes):
            raise ValueError(f"fault indexes are not unique: {indexes}")
        for name in ("faults_fired", "faults_quarantined"):
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
    - coverage: per configured fault {index, kind, count, ports, fired_ports, missing_ports, covered}.
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


# -- the checker -----------------------------------------------------------------------------------


def check(events: Iterable[Event], spec: CheckSpec) -> Verdict:
    """Judge one run: classify every key, count, measure, and compare with `spec.expect`."""
    history = sorted((e for e in events if "type" in e), key=lambda e: float(e.get("t", 0.0)))
    port_of = _Ports(spec)

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

    by_key: dict[str, list[Event]] = defaultdict(list)
    first_seen: dict[str, int] = {}
    published: set[str] = set()
    dropped: set[str] = set()
    deliveries: dict[str, list[Event]] = defaultdict(list)
    failed_reasons: dict[str, set[str]] = defaultdict(set)
    first_commit: dict[str, float] = {}
    consumer_exit_t: float | None = None
    delivery_times: list[float] = []
    latencies: list[float] = []
    claim_latencies: list[float] = []
    fault_events: dict[int, list[tuple[float, int | None, str]]] = defaultdict(list)
    per_port: dict[int, Counter[str]] = {p: Counter() for p in range(spec.ports)}
    holder: dict[str, Any] = {}  # key -> token of its latest `served` event
    wrong_generation: dict[str, list[Event]] = {}  # requested key -> its wrong `served` events
    fencing: dict[str, list[tuple[Event, Any]]] = {}  # key -> [(commit, holder token)] by a non-holder
    audit: Event | None = None
    retries = failed = 0
    end_t = t0

    for pos, e in enumerate(history):
        kind = e["type"]
        t = float(e.get("t", 0.0))
        end_t = max(end_t, t)
        key = e.get("key")
        if isinstance(key, str):
            by_key[key].append(e)
            first_seen.setdefault(key, pos)
        if kind == "published" and key:
            published.add(key)
        elif kind == "delivered" and key:
            deliveries[key].append(e)
            delivery_times.append(t - t0)
            lat = e.get("latency_s")
            if isinstance(lat, int | float) and not isinstance(lat, bool):
                latencies.append(float(lat))
            port = port_of(e.get("port"))
            if port is not None:
                per_port.setdefault(port, Counter())["delivered"] += 1
        elif kind == "claimed":
            lat = e.get("claim_latency_s")
            if isinstance(lat, int | float) and not isinstance(lat, bool):
                claim_latencies.append(float(lat))
        elif kind == "dropped" and key:
            dropped.add(key)
        elif kind == "failed":
            failed += 1
            if key:
                failed_reasons[key].add(str(e.get("reason")))
        elif kind == "committed" and key:
            first_commit.setdefault(key, t)
            if key in holder and e.get("token") != holder[key]:
                fencing.setdefault(key, []).append((e, holder[key]))
        elif kind == "served" and key:
            holder[key] = e.get("token")
            requested = e.get("requested")
            slot, gen = _split_key(key)
            if e.get("protocol", "commit") == "commit" and isinstance(requested, int) and requested != gen:
                wrong_generation.setdefault(f"{slot}:{requested}", []).append(e)
        elif kind == "ring_audit":
            audit = e
        elif kind == "retry":
            retries += 1
            port = port_of(e.get("port"))
            if port is not None:
                per_port.setdefault(port, Counter())["retries"] += 1
        elif kind == "quarantine":
            port = port_of(e.get("port"))
            if port is not None:
                per_port.setdefault(port, Counter())["quarantines"] += 1
        elif kind == "fault":
            port = port_of(e.get("port"))
            if port is not None:
                per_port.setdefault(port, Counter())["faults"] += 1
            try:
                index = int(e.get("fault"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            fault_events[index].append((t - t0, port, str(e.get("kind"))))
        elif kind == "proc_exit":
            target = str(e.get("target") or "")
            if target.startswith("consumer") and e.get("how") in CONSUMER_EXITS:
                consumer_exit_t = t if consumer_exit_t is None else max(consumer_exit_t, t)

    # -- classify keys ---------------------------------------------------------------------------
    anomaly_keys: dict[str, list[str]] = {k: [] for k in ANOMALY_KINDS}
    notes: dict[tuple[str, str], str] = {}
    delivered_keys = set(deliveries)
    for key, dels in deliveries.items():
        if len(dels) > 1:
            anomaly_keys["duplicated"].append(key)
            procs = sorted({str(d.get("proc")) for d in dels})
            notes[("duplicated", key)] = f"delivered {len(dels)} times by {', '.join(procs)}"
        bad = [name for name in ("checksum_ok", "content_ok") if any(d.get(name) is False for d in dels)]
        if bad:
            anomaly_keys["corrupted"].append(key)
            notes[("corrupted", key)] = " and ".join(f"{name} false" for name in bad)
        if key not in published:
            anomaly_keys["unexpected"].append(key)
            notes[("unexpected", key)] = "delivered, never published"

    stale_rejected = sum(1 for reasons in failed_reasons.values() if "stale" in reasons)
    for key in published - delivered_keys - dropped:
        reasons = failed_reasons.get(key, set())
        commit_t = first_commit.get(key)
        if "in_doubt" in reasons:
            anomaly_keys["in_doubt"].append(key)
            notes[("in_doubt", key)] = "read could not be resolved"
        elif commit_t is not None and consumer_exit_t is not None and consumer_exit_t >= commit_t:
            anomaly_keys["delivered_to_dead_consumer"].append(key)
            notes[("delivered_to_dead_consumer", key)] = "committed, then a consumer was killed"
        else:
            anomaly_keys["lost"].append(key)
            if "stale" in reasons:
                notes[("lost", key)] = "rejected as stale but never dropped"
            elif commit_t is not None:
                notes[("lost", key)] = "committed by the server, never delivered"
            elif reasons:
                notes[("lost", key)] = "failed: " + ", ".join(sorted(reasons))
            else:
                notes[("lost", key)] = "never delivered"
    for key, served in wrong_generation.items():
        anomaly_keys["wrong_generation"].append(key)
        gens = ", ".join(sorted({str(s["key"]) for s in served}))
        notes[("wrong_generation", key)] = f"requested {key}, the ring served {gens}"
        by_key[key] = sorted([*by_key[key], *served], key=lambda e: float(e.get("t", 0.0)))
        first_seen.setdefault(key, first_seen[str(served[0]["key"])])
    for key, stolen in fencing.items():
        anomaly_keys["fencing"].append(key)
        commit, held_by = stolen[0]
        notes[("fencing", key)] = (
            f"committed for token {commit.get('token')} while token {held_by} held the slot"
            + (f" (+{len(stolen) - 1} more)" if len(stolen) > 1 else "")
        )
    for keys in anomaly_keys.values():
        keys.sort(key=first_seen.__getitem__)

    counts = {
        "published": len(published),
        "delivered": len(delivered_keys),
        "lost": len(anomaly_keys["lost"]),
        "duplicated": len(anomaly_keys["duplicated"]),
        "corrupted": len(anomaly_keys["corrupted"]),
        "unexpected": len(anomaly_keys["unexpected"]),
        "dropped": len(dropped),
        "stale_rejected": stale_rejected,
        "in_doubt": len(anomaly_keys["in_doubt"]),
        "delivered_to_dead_consumer": len(anomaly_keys["delivered_to_dead_consumer"]),
        "wrong_generation": len(anomaly_keys["wrong_generation"]),
        "fencing": len(anomaly_keys["fencing"]),
        "retries": retries,
        "failed": failed,
    }

    anomalies: dict[str, list[dict[str, Any]]] = {}
    for kind, keys in anomaly_keys.items():
        shown = []
        for key in keys[: spec.examples]:
            slot, gen = _split_key(key)
            shown.append(
                {
                    "key": key,
                    "slot": slot,
                    "generation": gen,
                    "note": notes.get((kind, key), ""),
                    "events": [dict(e) for e in by_key[key]],
                }
            )
        anomalies[kind] = shown

    # -- faults: fired, coverage, recovery -------------------------------------------------------
    fired_counts: Counter[tuple[int, int | None, str]] = Counter()
    for index, fires in fault_events.items():
        for _, port, kind in fires:
            fired_counts[(index, port, kind)] += 1
    faults_fired = [
        {"index": i, "kind": k, "port": p, "count": n}
        for (i, p, k), n in sorted(
            fired_counts.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or 0)
        )
    ]

    coverage: list[dict[str, Any]] = []
    for f in spec.faults:
        fires = fault_events.get(f.index, [])
        by_port = Counter(p for _, p, _ in fires if p is not None)
        listed = None if f.ports is None else sorted({port_of(p) for p in f.ports} - {None})
        missing = [] if listed is None else [p for p in listed if by_port[p] == 0]
        coverage.append(
            {
                "index": f.index,
                "kind": f.kind,
                "count": len(fires),
                "ports": listed,
                "fired_ports": dict(sorted(by_port.items())),
                "missing_ports": missing,
                "covered": bool(fires) and not missing,
            }
        )

    phase_end = (heal_t - t0) if heal_t is not None else spec.duration_s
    publish_times = sorted(float(e["t"]) - t0 for e in history if e["type"] == "published")
    delivery_times.sort()
    recovery: list[dict[str, Any]] = []
    for f in spec.faults:
        fires = sorted(t for t, _, _ in fault_events.get(f.index, []))
        if f.window is not None:
            basis, end_s = "window_end", float(f.window[1])
        elif f.at_s is not None:
            basis, end_s = ("fired", fires[0]) if fires else ("at", float(f.at_s))
        elif f.kind in PROCESS_KINDS and fires:
            basis, end_s = "fired", fires[-1]
        else:
            basis, end_s = "heal", float(phase_end)
        after = _first_at_or_after(delivery_times, end_s)
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

    # -- throughput and latency ------------------------------------------------------------------
    span = max(end_t - t0, 0.0)
    in_phase = sum(1 for d in delivery_times if 0.0 <= d < spec.duration_s)
    per_s = (
        in_phase / spec.duration_s if spec.duration_s > 0 else (len(delivery_times) / span if span else 0.0)
    )
    start_s = math.floor(delivery_times[0]) if delivery_times and delivery_times[0] < 0 else 0
    timeline: list[int] = []
    if delivery_times:
        timeline = [0] * (math.floor(delivery_times[-1]) - start_s + 1)
        for d in delivery_times:
            timeline[math.floor(d) - start_s] += 1
    throughput = {
        "per_s": per_s,
        "overall_per_s": len(delivery_times) / span if span > 0 else 0.0,
        "bucket_s": 1.0,
        "start_s": start_s,
        "timeline": timeline,
    }
    latency = {**quantiles(latencies), "claim": quantiles(claim_latencies)}

    # -- expectations ----------------------------------------------------------------------------
    ex = spec.expect
    failures: list[str] = []
    for name in ("lost", "duplicated", "corrupted", "unexpected", "in_doubt", "wrong_generation", "fencing"):
        limit = getattr(ex, name)
        if counts[name] > limit:
            failures.append(f"{name}: {counts[name]} > {limit} ({_name_keys(anomaly_keys[name])})")
    if audit is not None and audit.get("ready_count") != audit.get("ready"):
        failures.append(
            f"ring_audit: ready_count() says {audit.get('ready_count')} but {audit.get('ready')} of "
            f"{audit.get('slots')} slots are READY"
        )
    required = _required(ex.faults_fired, spec.faults)
    cov_by_index = {c["index"]: c for c in coverage}
    for index in required:
        c = cov_by_index[index]
        if c["count"] == 0:
            failures.append(f"faults_fired: fault {index} ({c['kind']}) never fired")
        elif c["missing_ports"]:
            failures.append(
                f"faults_fired: fault {index} ({c['kind']}) never fired on ports {c['missing_ports']}"
            )
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
    quarantined = _required(ex.faults_quarantined, spec.faults)
    for index in quarantined:
        c = cov_by_index[index]
        for port, fires in c["fired_ports"].items():
            if per_port.get(port, Counter())["quarantines"] == 0:
                failures.append(
                    f"faults_quarantined: fault {index} ({c['kind']}) fired {fires} times on port {port}, "
                    "which was never quarantined"
                )
    p99 = latency["p99"]
    if ex.max_p99_latency_s is not None and p99 is not None and p99 > ex.max_p99_latency_s:
        failures.append(f"p99 latency: {p99:.3f}s > {ex.max_p99_latency_s:g}s")

    return Verdict(
        passed=not failures,
        failures=failures,
        counts=counts,
        per_port={
            p: {n: c[n] for n in ("delivered", "retries", "faults", "quarantines")}
            for p, c in sorted(per_port.items())
        },
        faults_fired=faults_fired,
        coverage=coverage,
        recovery=recovery,
        throughput=throughput,
        latency=latency,
        anomalies=anomalies,
        t0=t0,
        end_s=span,
    )


def _required(which: FaultsFired, faults: Sequence[FaultRef]) -> list[int]:
    """Fault indexes an `all` / `none` / list-of-indexes expectation names."""
    if which == "all":
        return [f.index for f in faults]
    if which == "none":
        return []
    return list(which)


def _first_at_or_after(sorted_times: Sequence[float], t: float) -> float | None:
    i = bisect.bisect_left(sorted_times, t)
    return sorted_times[i] if i < len(sorted_times) else None
