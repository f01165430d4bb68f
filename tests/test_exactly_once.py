"""Acceptance: exactly-once delivery end to end, real processes, endpoints killed at random points."""

from __future__ import annotations

import collections
import multiprocessing as mp
import queue
import time
from pathlib import Path
from typing import Any

import e2e_roles
import pytest

COUNT = 2000


def _run(tmp_path: Path, protocol: str, kill_probability: float, count: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    descriptors, results, control, reports = ctx.Queue(), ctx.Queue(), ctx.Queue(), ctx.Queue()
    fired = tmp_path / "fired.log"
    cfg = {
        "seed": 7,
        "count": count,
        "slots": 32,
        "slot_bytes": 1 << 20,
        "ports": 4,
        "min_bytes": 1,
        "max_bytes": 1 << 20,
        "protocol": protocol,
        "close_after": 240.0,
        "read_timeout": 1.0,
        "quarantine": 0.3,
        "max_attempts": 10,
        "server_options": {
            "link_wrapper": "endpoint_killer:make",
            "link_wrapper_args": {"probability": kill_probability, "seed": 11, "fired_path": str(fired)},
            "step_timeout": 2.0,
        },
    }
    producer = ctx.Process(target=e2e_roles.producer_main, args=(cfg, descriptors, control, reports))
    consumers = [
        ctx.Process(target=e2e_roles.consumer_main, args=(f"c{i}", cfg, descriptors, results))
        for i in range(3)
    ]
    got: list[tuple[Any, ...]] = []
    try:
        producer.start()
        for c in consumers:
            c.start()
        deadline = time.monotonic() + 240
        while len(got) < count and time.monotonic() < deadline:
            try:
                got.append(results.get(timeout=5))
            except queue.Empty:
                if not producer.is_alive() and producer.exitcode:
                    break
        for _ in consumers:
            descriptors.put(None)
        control.put("close")
        kind, *rest = reports.get(timeout=60)
        assert kind == "ring", rest
        states, ring_stats = rest
    finally:
        for p in (*consumers, producer):
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
                p.join(5)
    lines = fired.read_text().splitlines() if fired.exists() else []
    return {"results": got, "states": states, "ring_stats": ring_stats, "fired": lines}


@pytest.mark.timeout(300)
def test_exactly_once_with_endpoint_kills(tmp_path: Path) -> None:
    out = _run(tmp_path, "commit", kill_probability=0.02, count=COUNT)
    # The fault really fired, at several phases.
    assert len(out["fired"]) >= 20, out["fired"]
    assert len({line.split()[1] for line in out["fired"]}) >= 3
    results = out["results"]
    errors = [r for r in results if r[5] is not None]
    assert not errors, errors[:5]
    by_seq = collections.Counter(r[1] for r in results)
    assert sorted(by_seq) == list(range(COUNT)), "every payload delivered"
    assert max(by_seq.values()) == 1, "no payload delivered twice"
    assert all(r[3] and r[4] for r in results), "every payload has the right bytes"
    assert not {"READING", "WRITING"} & set(out["states"]), out["states"]


@pytest.mark.timeout(300)
def test_single_chunk_shows_what_it_loses(tmp_path: Path) -> None:
    """The single-chunk protocol under the same faults loses, duplicates or corrupts slots."""
    count = 600
    out = _run(tmp_path, "single-chunk", kill_probability=0.05, count=count)
    assert out["fired"], "the fault must fire"
    results = out["results"]
    delivered = [r for r in results if r[5] is None]
    wrong = [r for r in delivered if not (r[3] and r[4])]
    failed = [r for r in results if r[5] is not None]
    seqs = collections.Counter(r[1] for r in delivered)
    missing = count - len({r[1] for r in delivered if r[3] and r[4]})
    anomalies = len(wrong) + missing + sum(n - 1 for n in seqs.values())
    assert anomalies > 0, f"single-chunk protocol survived: {len(failed)} failures, {len(wrong)} wrong"
