"""The effect rules for network faults in host mode: pure predicates over hand-built histories."""

from __future__ import annotations

from typing import Any

from chaos.hosts.effects import NetFaultRef, affected_consumers, judge

PLACEMENT = {"server": "server", "producer": "server", "consumer-0": "consumer-0", "consumer-1": "consumer-1"}


def _read(
    t: float, proc: str, seconds: float | None, nbytes: int = 65536, attempts: int = 1
) -> dict[str, Any]:
    if seconds is None:
        return {"t": t, "proc": proc, "type": "failed", "key": f"k{t}", "reason": "timeout"}
    return {
        "t": t,
        "proc": proc,
        "type": "delivered",
        "latency_s": seconds,
        "nbytes": nbytes,
        "attempts": attempts,
    }


def _window(start: float, end: float, **evidence: Any) -> list[dict[str, Any]]:
    return [
        {"t": start, "proc": "runner", "type": "fault", "fault": 0, "port": None},
        {"t": end, "proc": "runner", "type": "net_effect", "fault": 0, **evidence},
    ]


def _toxic(kind: str, **attributes: int) -> NetFaultRef:
    return NetFaultRef(0, "toxic", frozenset({"consumer-0"}), toxic_type=kind, attributes=attributes)


def test_affected_consumers_follow_the_link_to_the_server() -> None:
    assert affected_consumers(PLACEMENT, ["consumer-0", "server"], None) == {"consumer-0"}
    assert affected_consumers(PLACEMENT, None, "server") == {"consumer-0", "consumer-1"}
    assert affected_consumers(PLACEMENT, ["consumer-0", "consumer-1"], None) == frozenset()


def test_latency_needs_the_median_raised_by_the_latency() -> None:
    fault = _toxic("latency", latency=200)
    base = [_read(t, "consumer-0", 0.01) for t in (1, 2, 3)]
    slow = [_read(t, "consumer-0", 0.45) for t in (11, 12, 13)]
    same = [_read(t, "consumer-0", 0.02) for t in (11, 12, 13)]
    evidence = _window(10, 20, bytes=1000, connections=2)
    assert judge([fault], base + slow + evidence, read_timeout=2.0) == []
    [problem] = judge([fault], base + same + evidence, read_timeout=2.0)
    assert problem.startswith("ineffective: faults[0] (toxic latency)")


def test_a_toxic_that_touched_no_byte_is_ineffective_whatever_the_reads_did() -> None:
    fault = _toxic("bandwidth", rate=16)
    reads = [_read(12, "consumer-0", None)]
    assert judge([fault], reads + _window(10, 20, bytes=5, connections=1), 2.0) == []
    [problem] = judge([fault], reads + _window(10, 20, bytes=0, connections=0), 2.0)
    assert "acted on no packet or byte" in problem


def test_bandwidth_needs_reads_slowed_to_the_rate_or_failed() -> None:
    fault = _toxic("bandwidth", rate=16)  # 64 KiB at 16 KB/s: 4.1 s
    evidence = _window(10, 20, bytes=10_000, connections=1)
    assert judge([fault], [_read(15, "consumer-0", 3.0), *evidence], 2.0) == []
    assert judge([fault], [_read(15, "consumer-0", 0.05), *evidence], 2.0) != []
    assert judge([fault], [_read(15, "consumer-0", 0.05, attempts=2), *evidence], 2.0) == []


def test_partition_needs_failures_and_no_read_completing_across_it() -> None:
    fault = NetFaultRef(0, "partition", frozenset({"consumer-0"}))
    evidence = _window(10, 20, packets=40)
    assert judge([fault], [_read(12, "consumer-0", None), *evidence], 2.0) == []
    late = [_read(12, "consumer-0", None), _read(16, "consumer-0", 0.01)]
    [problem] = judge([fault], late + evidence, 2.0)
    assert "completed across the partition" in problem
    assert judge([fault], [_read(16, "consumer-1", None), *evidence], 2.0) != []  # not the affected one


def test_loss_counts_dropped_packets_and_a_fault_never_applied_is_ineffective() -> None:
    fault = NetFaultRef(0, "loss", frozenset({"consumer-0"}))
    assert judge([fault], _window(10, 20, packets=3), 2.0) == []
    assert judge([fault], _window(10, 20, packets=0), 2.0) != []
    assert "never applied" in judge([fault], [], 2.0)[0]


def test_a_quarantine_by_the_affected_consumer_counts_as_a_failed_attempt() -> None:
    fault = NetFaultRef(0, "reject", frozenset({"consumer-0"}))
    quarantine = {"t": 12.0, "proc": "consumer-0", "type": "quarantine", "port": 1, "reason": "timeout"}
    assert judge([fault], [quarantine, *_window(10, 20, packets=4)], 2.0) == []
    assert judge([fault], [{**quarantine, "proc": "consumer-1"}, *_window(10, 20, packets=4)], 2.0) != []
