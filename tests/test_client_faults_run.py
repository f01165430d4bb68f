"""Client-side transport faults and the commit-history overflow, in real chaos runs (issue 9).

Both shipped scenarios run end to end (`python -m chaos.cli run`); the assertions read the run's own
event files, so they show that the firings happened *in the consumers* and changed what the consumer
did, and that RESOLVE really answered past the ring's 16-generation commit history, not only that the
verdict was green.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from transport.ring import COMMIT_HISTORY

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 300

pytestmark = [pytest.mark.slow, pytest.mark.timeout(RUN_TIMEOUT_S + 60)]


def run(name: str, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run one shipped scenario; its verdict and its merged, time-ordered events."""
    cmd = [sys.executable, "-m", "chaos.cli", "run", str(SCENARIOS / f"{name}.yaml"), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    (result,) = json.loads((out / "results.json").read_text())["scenarios"]
    verdict = result["verdict"]
    assert proc.returncode == 0 and verdict["passed"], (verdict["failures"], proc.stdout[-3000:])
    events = [
        json.loads(line)
        for path in sorted((out / name / "events").glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    return verdict, sorted(events, key=lambda e: float(e["t"]))


def test_client_side_faults_fire_in_the_consumers_and_fail_their_own_attempts(tmp_path: Path) -> None:
    verdict, events = run("transport-client-faults", tmp_path)
    counts = verdict["counts"]
    assert counts["published"] > 0 and counts["delivered"] == counts["published"]
    fires = [e for e in events if e["type"] == "fault"]
    assert fires and all(e["side"] == "client" and e["proc"].startswith("consumer-") for e in fires)
    assert {(e["kind"], e["phase"]) for e in fires} == {
        ("reset", "status"),
        ("reset", "commit"),
        ("timeout", "status"),
    }
    # Each firing is followed, in the same consumer and on the same port index, by that consumer's
    # own failed attempt (`retry` events carry the port index, as `fault` events do).
    failed: dict[tuple[str, int], list[tuple[float, str]]] = defaultdict(list)
    for e in events:
        if e["type"] == "retry" and e["port"] is not None:
            failed[(e["proc"], e["port"])].append((float(e["t"]), e["reason"]))
    matched = sum(1 for f in fires if any(t >= float(f["t"]) for t, _ in failed[(f["proc"], f["port"])]))
    assert matched >= 0.9 * len(fires), (matched, len(fires))
    timed_out = [f for f in fires if f["kind"] == "timeout"]
    assert any(
        reason == "ReadTimeoutError" and t >= float(f["t"])
        for f in timed_out
        for t, reason in failed[(f["proc"], f["port"])]
    ), "no client read timeout followed a client timeout firing"
    # A reset before the commit leaves the read in doubt: RESOLVE settled it (here: not committed).
    commit_keys = {k for f in fires if f["phase"] == "commit" for k in f["keys"]}
    assert any(e["type"] == "resolved" and e["key"] in commit_keys for e in events)
    assert all(c["effect"] == "effective" for c in verdict["coverage"]), verdict["coverage"]


def test_resolve_answers_committed_after_the_ring_history_wrapped(tmp_path: Path) -> None:
    verdict, events = run("transport-commit-history-overflow", tmp_path)
    newest: dict[int, int] = {}
    wrapped: list[tuple[str, int]] = []
    for e in events:
        if e["type"] == "published":
            newest[e["slot"]] = max(newest.get(e["slot"], 0), e["generation"])
        elif e["type"] == "resolved" and e["resolution"] == "COMMITTED":
            slot, generation = map(int, e["key"].split(":"))
            behind = newest.get(slot, 0) - generation
            if behind > COMMIT_HISTORY:
                wrapped.append((e["key"], behind))
    assert wrapped, "no RESOLVE answered after the slot's commit history wrapped"
    delivered = defaultdict(int)
    for e in events:
        if e["type"] == "delivered":
            delivered[e["key"]] += 1
    assert all(delivered[key] == 1 for key, _ in wrapped), wrapped
    assert verdict["counts"]["in_doubt"] == 0 and verdict["counts"]["lost"] == 0
