"""Shrink a failing scenario dict to a minimal one: ddmin over its faults, then each field toward simple.

Pure: the only outside world is the `judge` callable (which in `chaos explore` runs the scenario,
and in the unit tests is a plain function) and `stop` (the budget). Nothing here reads a clock or a
file, so the algorithm is tested without UCX.

1. Confirm: the original is judged once more. If it does not fail again it is reported flaky and not
   shrunk (a failure that does not reproduce cannot guide a search).
2. Faults: delta debugging (Zeller's ddmin) over the fault list: try each chunk alone, then each
   complement, doubling the granularity when nothing fails. The result is 1-minimal: removing any
   one remaining fault makes the failure go away. A conjunction of two faults shrinks to those two.
3. Fields: for each field, candidates toward its simplest value (fewer ports per fault and on the
   server, fewer consumers, lower rate, smaller payloads and slots, shorter windows and fault phase,
   batch 1, block policy), simplest first; the first candidate that still fails is kept.

A candidate is kept when the judge says `failed` or `flaky` (it reproduced at least once: a safety
anomaly is a bug even when it shows only sometimes). The result is flaky when the last judgement of
the scenario it returns was flaky. Candidates the schema rejects are skipped without a run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["failed", "passed", "flaky"]
Stage = Literal["confirm", "faults", "fields", "verify"]
Judge = Callable[[dict[str, Any]], Outcome]
REPRODUCES: frozenset[str] = frozenset({"failed", "flaky"})
MIN_DURATION_S = 3.0
MIN_RATE = 10.0
MIN_PAYLOAD = 1024


class Interrupted(Exception):
    """Raised by a judge that was stopped mid-run (Ctrl-C): shrinking ends with the best so far."""


def rerun(run_once: Callable[[dict[str, Any]], bool], times: int) -> Judge:
    """A judge from a single run (`True` = it failed): up to `times` runs, stopping at the first
    failure. Failed on the first run = `failed`; only on a later one = `flaky`; never = `passed`."""
    if times < 1:
        raise ValueError(f"times must be >= 1, got {times}")

    def judge(scenario: dict[str, Any]) -> Outcome:
        for attempt in range(times):
            if run_once(scenario):
                return "failed" if attempt == 0 else "flaky"
        return "passed"

    return judge


@dataclass(frozen=True)
class Step:
    """One judged candidate: which stage, what changed, the candidate's shape, the verdict, kept or not."""

    index: int
    stage: Stage
    change: str
    summary: str
    outcome: Outcome
    kept: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "stage": self.stage,
            "change": self.change,
            "summary": self.summary,
            "outcome": self.outcome,
            "kept": self.kept,
        }


@dataclass
class ShrinkResult:
    """The smallest failing scenario found, how it got there, and whether its failure is flaky.

    `reproduced` False: the confirmation did not fail, `scenario` is the original, `flaky` is True
    (unless it was never judged: stopped before or during the confirmation).
    `stopped`: why shrinking ended early (`budget` or `interrupted`), None when it ran to completion.
    """

    scenario: dict[str, Any]
    trail: list[Step] = field(default_factory=list)
    flaky: bool = False
    reproduced: bool = True
    stopped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": summary(self.scenario),
            "faults": len(self.scenario.get("faults") or []),
            "flaky": self.flaky,
            "reproduced": self.reproduced,
            "stopped": self.stopped,
            "trail": [s.to_dict() for s in self.trail],
        }


def summary(scenario: dict[str, Any]) -> str:
    """`3 faults [reset@payload p0.2 ports 0,1; kill server @3s; ...] 2 consumers 100/s` in one line."""
    faults = scenario.get("faults") or []
    consumers = (scenario.get("consumers") or {}).get("count", 2)
    rate = (scenario.get("producer") or {}).get("rate", 100)
    ports = (scenario.get("server") or {}).get("ports", 4)
    parts = "; ".join(fault_label(f) for f in faults)
    return f"{len(faults)} fault(s) [{parts}] {ports} port(s) {consumers} consumer(s) {rate:g}/s"


def fault_label(fault: dict[str, Any]) -> str:
    bits = [fault["kind"]]
    for key in ("phase", "target", "side"):
        if key in fault:
            bits.append(f"{key}={fault[key]}")
    if "ports" in fault:
        bits.append("ports=" + ",".join(str(p) for p in fault["ports"]))
    if "probability" in fault:
        bits.append(f"p={fault['probability']:g}")
    if "at" in fault:
        bits.append(f"at={fault['at']:g}s")
    if "window" in fault:
        bits.append(f"window={fault['window']['start']:g}-{fault['window']['end']:g}s")
    return " ".join(bits)


class _Search:
    """The state of one shrink: the current best scenario and the trail of judged candidates."""

    def __init__(
        self, judge: Judge, valid: Callable[[dict[str, Any]], bool], stop: Callable[[], bool]
    ) -> None:
        self.judge = judge
        self.valid = valid
        self.stop = stop
        self.trail: list[Step] = []
        self.last_outcome: Outcome = "failed"
        self._rejected: set[str] = set()  # candidates already judged passing: never run twice
        self.interrupted = False

    def stopped(self) -> bool:
        return self.interrupted or self.stop()

    def try_(self, candidate: dict[str, Any], stage: Stage, change: str) -> bool:
        """Judge `candidate` (if the schema accepts it); True when it still fails. A verification
        re-judges the result on purpose (no cache) and runs past the budget, not past an interrupt."""
        key = json.dumps(candidate, sort_keys=True)
        if stage == "verify":
            if self.interrupted:
                return False
        elif self.stopped() or key in self._rejected or not self.valid(candidate):
            return False
        try:
            outcome = self.judge(candidate)
        except Interrupted:
            self.interrupted = True
            return False
        kept = outcome in REPRODUCES
        if not kept:
            self._rejected.add(key)
        self.trail.append(Step(len(self.trail), stage, change, summary(candidate), outcome, kept))
        if kept:
            self.last_outcome = outcome
        return kept


def shrink(
    scenario: dict[str, Any],
    judge: Judge,
    *,
    valid: Callable[[dict[str, Any]], bool] = lambda _: True,
    stop: Callable[[], bool] = lambda: False,
    verify: int = 0,
) -> ShrinkResult:
    """Shrink `scenario` (which failed once) with `judge`; `valid` filters candidates without a run,
    `stop` is asked before every candidate (True: the budget is spent, return the best so far).

    `verify`: judge the result this many more times at the end. Every kept step failed at least once,
    but a chain of edits can shrink toward a schedule that fails only sometimes (measured: a drop_commit
    at p 0.04 shrunk to 10/s failed in its shrink runs and then passed 3 replays of 4), so the result is
    flaky unless every verification fails too."""
    search = _Search(judge, valid, stop)
    if not search.try_(deepcopy(scenario), "confirm", "re-run the failing scenario"):
        stopped = _why_stopped(search)
        return ShrinkResult(
            deepcopy(scenario), search.trail, flaky=stopped is None, reproduced=False, stopped=stopped
        )
    current = _ddmin_faults(deepcopy(scenario), search)
    if not search.stopped():
        current = _shrink_fields(current, search)
    stopped = _why_stopped(search)
    flaky = search.last_outcome == "flaky"
    for i in range(verify):
        failed = search.try_(current, "verify", f"verify the result ({i + 1} of {verify})")
        if search.interrupted:
            break
        flaky |= not failed
        flaky |= search.last_outcome == "flaky"
    return ShrinkResult(current, search.trail, flaky=flaky, stopped=stopped)


def _why_stopped(search: _Search) -> str | None:
    if search.interrupted:
        return "interrupted"
    return "budget" if search.stop() else None


# -- faults: ddmin ---------------------------------------------------------------------------------


def _with_faults(scenario: dict[str, Any], faults: list[dict[str, Any]]) -> dict[str, Any]:
    out = deepcopy(scenario)
    out["faults"] = deepcopy(faults)
    return out


def _chunks(items: list[int], n: int) -> list[list[int]]:
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return [c for c in out if c]


def _ddmin_faults(scenario: dict[str, Any], search: _Search) -> dict[str, Any]:
    faults = scenario.get("faults") or []
    keep = list(range(len(faults)))
    if len(keep) >= 1 and not search.stopped():
        # The empty schedule first: a failure that needs no fault at all is the smallest of all.
        if search.try_(_with_faults(scenario, []), "faults", "drop every fault"):
            return _with_faults(scenario, [])
    n = 2
    while len(keep) >= 2 and not search.stopped():
        reduced = False
        chunks = _chunks(keep, n)
        for subset, label in _subsets(chunks, n):
            if search.stopped():
                break
            candidate = _with_faults(scenario, [faults[i] for i in subset])
            if search.try_(candidate, "faults", f"{label}: keep faults {subset} of {keep}"):
                keep, n, reduced = subset, (2 if label == "chunk" else max(n - 1, 2)), True
                break
        if not reduced:
            if n >= len(keep):
                break
            n = min(n * 2, len(keep))
    return _with_faults(scenario, [faults[i] for i in keep])


def _subsets(chunks: list[list[int]], n: int) -> Iterator[tuple[list[int], str]]:
    """Each chunk alone, then (when there are more than two) each complement."""
    for chunk in chunks:
        yield chunk, "chunk"
    if n > 2:
        for i in range(len(chunks)):
            yield [x for j, c in enumerate(chunks) if j != i for x in c], "complement"


# -- fields: toward the simplest value -------------------------------------------------------------

Edit = tuple[str, Callable[[dict[str, Any]], None]]


def _shrink_fields(scenario: dict[str, Any], search: _Search) -> dict[str, Any]:
    current = scenario
    progress = True
    while progress and not search.stopped():
        progress = False
        for change, edit in _edits(current):
            if search.stopped():
                break
            candidate = deepcopy(current)
            edit(candidate)
            if candidate == current:
                continue
            if search.try_(candidate, "fields", change):
                current, progress = candidate, True
                break  # the edit list depends on the scenario: recompute it
    return current


def _edits(sc: dict[str, Any]) -> list[Edit]:
    """Every one-step simplification of `sc`, simplest and most valuable first."""
    edits: list[Edit] = []
    for i, fault in enumerate(sc.get("faults") or []):
        edits.extend(_fault_edits(i, fault))
    edits.extend(_server_edits(sc))
    consumers = sc.get("consumers") or {}
    if consumers.get("count", 2) > 1:
        edits.append((f"consumers {consumers['count']} -> 1", _setter(("consumers", "count"), 1)))
    if consumers.get("batch", 8) > 1:
        edits.append((f"batch {consumers['batch']} -> 1", _setter(("consumers", "batch"), 1)))
    producer = sc.get("producer") or {}
    rate = producer.get("rate", 100.0)
    if rate > MIN_RATE:
        lower = max(MIN_RATE, float(round(rate / 2)))
        edits.append((f"rate {rate:g}/s -> {lower:g}/s", _setter(("producer", "rate"), lower)))
    edits.extend(_payload_edits(sc))
    duration = sc["duration"]
    if duration > MIN_DURATION_S:
        edits.append((f"duration {duration:g}s -> shorter", _shorter_phase))
    if (sc.get("ring") or {}).get("policy") == "overwrite":
        edits.append(("policy overwrite -> block", _setter(("ring", "policy"), "block")))
    return edits


def _setter(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(sc: dict[str, Any]) -> None:
        node = sc
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value

    return edit


def _fault_edits(i: int, fault: dict[str, Any]) -> list[Edit]:
    edits: list[Edit] = []
    ports = fault.get("ports") or []
    if len(ports) > 1:
        for port in ports:
            edits.append((f"fault {i}: ports {ports} -> [{port}]", _fault_setter(i, "ports", [port])))
    window = fault.get("window")
    if window and window["end"] - window["start"] > 1.0:
        half = round(window["start"] + (window["end"] - window["start"]) / 2, 2)
        change = f"fault {i}: window {window['start']:g}-{window['end']:g}s -> ..{half:g}s"
        edits.append((change, _fault_setter(i, "window", {"start": window["start"], "end": half})))
    if fault.get("side") == "client":
        edits.append((f"fault {i}: side client -> server", _fault_setter(i, "side", None)))
    return edits


def _fault_setter(i: int, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(sc: dict[str, Any]) -> None:
        fault = sc["faults"][i]
        if value is not None:
            fault[key] = deepcopy(value)
            return
        fault.pop(key, None)
        if key == "side" and fault["kind"] == "stall":
            fault.pop("phase", None)  # a server-side stall holds the payload and takes no phase

    return edit


def _server_edits(sc: dict[str, Any]) -> list[Edit]:
    """Fewer server ports: as many as the highest port index a fault still names (at least 1)."""
    ports = (sc.get("server") or {}).get("ports", 4)
    used = [p for f in sc.get("faults") or [] for p in f.get("ports") or []]
    fewest = max(used, default=0) + 1
    if fewest < ports:
        return [(f"server ports {ports} -> {fewest}", _setter(("server", "ports"), fewest))]
    return []


def _payload_edits(sc: dict[str, Any]) -> list[Edit]:
    payload = (sc.get("producer") or {}).get("payload") or {}
    top = payload.get("max", 64 * 1024)
    if top <= MIN_PAYLOAD:
        return []
    smaller = max(MIN_PAYLOAD, top // 4)

    def edit(s: dict[str, Any]) -> None:
        p = s.setdefault("producer", {}).setdefault("payload", {})
        p["max"] = smaller
        p["min"] = min(p.get("min", smaller), smaller)

    return [(f"payload max {top} -> {smaller} bytes", edit)]


def _shorter_phase(sc: dict[str, Any]) -> None:
    """Halve the fault phase (not below MIN_DURATION_S); faults whose time falls outside are clipped,
    and the deadline and recovery bound move with it."""
    old = sc["duration"]
    new = max(MIN_DURATION_S, round(old / 2, 1))
    sc["duration"] = new
    if "deadline" in sc:
        sc["deadline"] = sc["deadline"] - old + new
    expect = sc.get("expect") or {}
    if expect.get("max_recovery") is not None:
        expect["max_recovery"] = expect["max_recovery"] - old + new
    for fault in sc.get("faults") or []:
        if "at" in fault and fault["at"] >= new:
            fault["at"] = round(new * fault["at"] / old, 2)
        window = fault.get("window")
        if window and window["end"] > new:
            start = round(new * window["start"] / old, 2)
            window.update(start=start, end=max(round(new * window["end"] / old, 2), start + 0.1))
