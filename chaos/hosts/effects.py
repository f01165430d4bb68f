"""Did each network fault touch the slots' traffic? Pure predicates over a run's history.

A fault counts when it changed an outcome, not when its code ran. Every predicate needs two kinds of
evidence: the fault acted on real packets or bytes (the proxy's meter for a toxic, the kernel's rule or
qdiss counters for a kernel fault, from its `net_effect` event) *and* the reads of the consumers
behind it changed the way that fault changes them:

| fault | outcome required (reads of the affected consumers inside the fault's window) |
|---|---|
| toxic latency | median read time raised by at least the latency (against their reads outside it) |
| bandwidth (toxic, kernel) | median read >= half the time the rate implies, or a failed/retried read |
| toxic timeout, reset_peer, limit_data; down; reject; flap | a failed or retried read, or a quarantine |
| partition | a failed or retried read, and no read completed later than one read timeout into it |
| loss | dropped TCP packets (each one is retransmitted) |
| toxic slicer, slow_close | bytes or connections through the toxic (they must not change an outcome) |

`judge()` returns one `ineffective: ...` line per fault that fails its predicate.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Event = Mapping[str, Any]


@dataclass(frozen=True)
class NetFaultRef:
    """A host-mode network fault as the effect rules need it."""

    index: int
    kind: str
    affected: frozenset[str]  # consumer names whose slot traffic crosses the faulted link
    toxic_type: str | None = None
    attributes: Mapping[str, int] | None = None
    rate: float | None = None  # bytes/s for kernel bandwidth


@dataclass(frozen=True)
class Read:
    t: float
    proc: str
    ok: bool
    seconds: float | None
    nbytes: int | None
    attempts: int


def reads(events: Iterable[Event]) -> list[Read]:
    out = []
    for e in events:
        if e.get("type") == "delivered":
            out.append(
                Read(
                    float(e["t"]),
                    str(e.get("proc")),
                    True,
                    e.get("latency_s"),
                    e.get("nbytes"),
                    int(e.get("attempts") or 1),
                )
            )
        elif e.get("type") in ("failed", "retry", "quarantine"):  # a failed attempt, as the client saw it
            out.append(Read(float(e["t"]), str(e.get("proc")), False, None, None, 1))
    return out


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _disturbed(rs: Sequence[Read]) -> bool:
    return any(not r.ok or r.attempts > 1 for r in rs)


def _slower_than_rate(rs: Sequence[Read], bytes_per_s: float) -> bool:
    timed = [(r.seconds, r.nbytes) for r in rs if r.ok and r.seconds is not None and r.nbytes]
    if not timed:
        return False
    actual = statistics.median(s for s, _ in timed)
    implied = statistics.median(n / bytes_per_s for _, n in timed)
    return actual >= 0.5 * implied


def verdict(
    fault: NetFaultRef,
    inside: Sequence[Read],
    outside: Sequence[Read],
    evidence: Mapping[str, Any],
    window: tuple[float, float],
    read_timeout: float,
) -> str | None:
    """None if the fault had its effect, else why not. `inside`/`outside`: the affected consumers'
    reads completed inside / outside the fault's window."""
    touched = (evidence.get("bytes") or 0) > 0 or (evidence.get("packets") or 0) > 0
    if fault.kind != "down" and not touched:
        return "acted on no packet or byte of the run's traffic"
    if not fault.affected:
        return "no consumer's slot traffic crosses it"
    kind = fault.toxic_type if fault.kind == "toxic" else fault.kind
    attrs = fault.attributes or {}
    if kind == "latency":
        before = _median([r.seconds for r in outside if r.ok and r.seconds is not None]) or 0.0
        during = _median([r.seconds for r in inside if r.ok and r.seconds is not None])
        need = attrs.get("latency", 0) / 1000
        if during is None or during - before < need:
            return f"median read {during}s vs {before:.3f}s outside: not raised by {need:.3f}s"
        return None
    if kind == "bandwidth":
        rate = fault.rate if fault.kind == "bandwidth" else attrs.get("rate", 0) * 1000
        if _disturbed(inside) or (rate and _slower_than_rate(inside, rate)):
            return None
        return "reads neither failed nor slowed to the rate"
    if kind in ("loss", "slicer", "slow_close"):
        return None  # touched is the evidence (a dropped TCP segment is always retransmitted)
    if not _disturbed(inside):
        return "no read of an affected consumer failed or was retried in its window"
    if kind == "partition":
        late = [r for r in inside if r.ok and r.t > window[0] + read_timeout + 1.0 and r.t < window[1]]
        if late:
            return f"{len(late)} read(s) completed across the partition"
    return None


def judge(
    faults: Sequence[NetFaultRef], events: Sequence[Event], read_timeout: float, settle_s: float | None = None
) -> list[str]:
    """`ineffective: faults[i] (kind): why` for every fault without its effect.

    `settle_s`: how long after the window a read that started under the fault may still complete (a
    batch reports only when every slot is done, retries included); default one read timeout."""
    settle = read_timeout if settle_s is None else max(read_timeout, settle_s)
    history = list(events)
    on = {
        e["fault"]: float(e["t"])
        for e in history
        if e.get("type") == "fault" and e.get("port") is None and "fault" in e
    }
    off = {e["fault"]: (float(e["t"]), e) for e in history if e.get("type") == "net_effect"}
    all_reads = reads(history)
    problems = []
    for fault in faults:
        label = f"faults[{fault.index}] ({fault.kind}{' ' + fault.toxic_type if fault.toxic_type else ''})"
        if fault.index not in on or fault.index not in off:
            problems.append(f"ineffective: {label}: never applied and removed")
            continue
        start, (logged_end, evidence) = on[fault.index], off[fault.index]
        end = float(evidence.get("off_t") or logged_end)  # when the heal began, not when it was logged
        mine = [r for r in all_reads if r.proc in fault.affected]
        # Reads completed in the window, plus reads that failed or were retried up to `settle` after
        # it (they started under the fault); fast reads right after the heal are not.
        inside = [r for r in mine if start <= r.t <= end]
        inside += [r for r in mine if end < r.t <= end + settle and (not r.ok or r.attempts > 1)]
        outside = [r for r in mine if r.t < start or r.t > end + settle]
        why = verdict(fault, inside, outside, evidence, (start, end), read_timeout)
        if why is not None:
            problems.append(f"ineffective: {label}: {why}")
    return problems


def affected_consumers(
    placement: Mapping[str, str], between: Sequence[str] | None, isolate: str | None
) -> frozenset[str]:
    """Consumers whose reads cross the faulted link (their host to the server's host)."""
    server = placement["server"]
    consumers = {role: host for role, host in placement.items() if role.startswith("consumer")}
    if isolate is not None:
        if isolate == server:
            return frozenset(c for c, h in consumers.items() if h != server)
        return frozenset(c for c, h in consumers.items() if h == isolate)
    assert between is not None
    if server not in between:
        return frozenset()
    other = between[1] if between[0] == server else between[0]
    return frozenset(c for c, h in consumers.items() if h == other)
