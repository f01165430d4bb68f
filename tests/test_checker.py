"""The exactly-once checker and the history reader, on hand-built histories (no UCX, no processes)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chaos.checker import CheckSpec, Expectations, FaultRef, Verdict, check, quantile
from chaos.history import merge, read_events_file, read_history

T0 = 1_700_000_000.0


class H:
    """A tiny history builder: times are seconds after the `faults` phase."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = [{"t": T0, "proc": "runner", "type": "phase", "name": "faults"}]
        self.commits: set[tuple[str, int]] = set()

    def add(self, t: float, proc: str, type: str, **fields: Any) -> H:
        self.events.append({"t": T0 + t, "proc": proc, "type": type, **fields})
        return self

    def publish(self, t: float, key: str) -> H:
        slot, gen = (int(x) for x in key.split(":"))
        return self.add(t, "producer", "published", key=key, slot=slot, generation=gen, nbytes=64, checksum=1)

    def deliver(
        self,
        t: float,
        key: str,
        proc: str = "consumer-0",
        port: int = 0,
        latency: float = 0.01,
        checksum_ok: bool = True,
        content_ok: bool = True,
        token: int | None = None,
        commit: bool = True,
    ) -> H:
        """A delivery by the read `token` (default: one per key); `commit` also logs the server's
        commit of that read just before, unless the history already has it."""
        slot, gen = (int(x) for x in key.split(":"))
        token = 1000 + 100 * slot + gen if token is None else token
        if commit and (key, token) not in self.commits:
            self.commits.add((key, token))
            self.add(t - 0.001, "server", "committed", key=key, port=port, token=token)
        return self.add(
            t,
            proc,
            "delivered",
            key=key,
            slot=slot,
            generation=gen,
            port=port,
            nbytes=64,
            checksum_ok=checksum_ok,
            content_ok=content_ok,
            latency_s=latency,
            attempts=1,
            token=token,
        )

    def fail(self, t: float, key: str, reason: str, proc: str = "consumer-0") -> H:
        slot, gen = (int(x) for x in key.split(":"))
        return self.add(t, proc, "failed", key=key, slot=slot, generation=gen, reason=reason, error=reason)

    def fault(self, t: float, index: int, kind: str, port: int | None = None, target: str | None = None) -> H:
        return self.add(t, "chaos", "fault", fault=index, kind=kind, port=port, phase=None, target=target)


def spec(**expect: Any) -> CheckSpec:
    """Tests of other rules do not judge effects (tests of effects ask for them explicitly)."""
    faults = expect.pop("faults", ())
    expect.setdefault("faults_effective", "none")
    duration = expect.pop("duration_s", 10.0)
    return CheckSpec(duration_s=duration, ports=2, faults=tuple(faults), expect=Expectations(**expect))


def ok_history(n: int = 4) -> H:
    h = H()
    for i in range(n):
        h.publish(0.1 * i, f"{i}:1").deliver(0.1 * i + 0.05, f"{i}:1", port=i % 2)
    return h


# -- anomalies -------------------------------------------------------------------------------------


def test_clean_history_passes() -> None:
    v = check(ok_history().events, spec())
    assert v.passed, v.failures
    assert v.counts["published"] == v.counts["delivered"] == 4
    assert all(v.counts[k] == 0 for k in ("lost", "duplicated", "corrupted", "unexpected", "in_doubt"))
    assert v.per_port[0]["delivered"] == 2 and v.per_port[1]["delivered"] == 2


def test_lost() -> None:
    h = ok_history().publish(0.5, "9:1")
    v = check(h.events, spec())
    assert not v.passed
    assert v.counts["lost"] == 1
    assert v.failures == ["lost: 1 > 0 (slots 9:1)"]
    (a,) = v.anomalies["lost"]
    assert (a["key"], a["slot"], a["generation"], a["note"]) == ("9:1", 9, 1, "never delivered")
    assert [e["type"] for e in a["events"]] == ["published"]


def test_exhausted_failure_is_lost() -> None:
    h = ok_history().publish(0.5, "9:1").fail(0.9, "9:1", "exhausted")
    v = check(h.events, spec())
    assert v.counts["lost"] == 1 and v.counts["failed"] == 1
    assert v.anomalies["lost"][0]["note"] == "failed: exhausted"


def test_duplicate_across_two_consumers() -> None:
    h = ok_history().deliver(0.7, "2:1", proc="consumer-1", port=1)
    v = check(h.events, spec())
    assert not v.passed
    assert v.counts["duplicated"] == 1 and v.counts["delivered"] == 4
    assert v.failures == ["duplicated: 1 > 0 (slots 2:1)"]
    a = v.anomalies["duplicated"][0]
    assert a["note"] == "delivered 2 times by consumer-0, consumer-1"
    assert [e["type"] for e in a["events"]] == ["published", "committed", "delivered", "delivered"]


def test_duplicate_same_consumer() -> None:
    v = check(ok_history().deliver(0.8, "0:1").events, spec())
    assert v.counts["duplicated"] == 1 and not v.passed


def test_duplicate_allowed_by_expectation() -> None:
    v = check(ok_history().deliver(0.8, "0:1").events, spec(duplicated=1))
    assert v.passed and v.counts["duplicated"] == 1


@pytest.mark.parametrize("field", ["checksum_ok", "content_ok"])
def test_corrupted(field: str) -> None:
    h = ok_history().publish(0.5, "7:3").deliver(0.6, "7:3", **{field: False})
    v = check(h.events, spec())
    assert v.counts["corrupted"] == 1 and v.counts["lost"] == 0
    assert v.failures == ["corrupted: 1 > 0 (slots 7:3)"]
    assert v.anomalies["corrupted"][0]["note"] == f"{field} false"


def test_unexpected() -> None:
    v = check(ok_history().deliver(0.6, "5:5").events, spec())
    assert v.counts["unexpected"] == 1
    assert v.failures == ["unexpected: 1 > 0 (slots 5:5)"]


def test_dropped_is_not_lost() -> None:
    h = ok_history().publish(0.5, "3:2").add(0.6, "producer", "dropped", key="3:2", slot=3, generation=2)
    v = check(h.events, spec())
    assert v.passed, v.failures
    assert v.counts["dropped"] == 1 and v.counts["lost"] == 0


def test_stale_of_dropped_key_is_fine() -> None:
    h = ok_history().publish(0.5, "3:2").add(0.6, "producer", "dropped", key="3:2", slot=3, generation=2)
    v = check(h.fail(0.7, "3:2", "stale").events, spec())
    assert v.passed, v.failures
    assert v.counts["stale_rejected"] == 1 and v.counts["lost"] == 0


def test_stale_of_non_dropped_key_is_lost() -> None:
    v = check(ok_history().publish(0.5, "3:2").fail(0.7, "3:2", "stale").events, spec())
    assert v.counts["lost"] == 1 and v.counts["stale_rejected"] == 1
    assert v.anomalies["lost"][0]["note"] == "rejected as stale but never dropped"


def test_stale_of_key_delivered_elsewhere_is_fine() -> None:
    """duplicate_descriptor: the losing consumer of the race sees a stale slot."""
    v = check(ok_history().fail(0.9, "1:1", "stale", proc="consumer-1").events, spec())
    assert v.passed, v.failures


def test_in_doubt() -> None:
    v = check(ok_history().publish(0.5, "8:1").fail(0.9, "8:1", "in_doubt").events, spec())
    assert v.counts["in_doubt"] == 1 and v.counts["lost"] == 0
    assert v.failures == ["in_doubt: 1 > 0 (slots 8:1)"]
    assert check(
        ok_history().publish(0.5, "8:1").fail(0.9, "8:1", "in_doubt").events, spec(in_doubt=1)
    ).passed


def test_in_doubt_then_delivered_elsewhere_is_delivered() -> None:
    h = ok_history().publish(0.5, "8:1").fail(0.9, "8:1", "in_doubt").deliver(1.2, "8:1", proc="consumer-1")
    v = check(h.events, spec())
    assert v.passed and v.counts["in_doubt"] == 0


def _committed(h: H, t: float, key: str) -> H:
    return h.add(t, "server", "committed", key=key, port=0, token=77)


def _killed_holding(h: H, t: float, consumer: str, *keys: str, how: str = "killed") -> H:
    """The harness kills `consumer`; the channel hands the descriptors it held back out."""
    h.add(t, "runner", "proc_exit", target=consumer, pid=9, how=how)
    return h.add(t + 0.01, "runner", "channel_returned", consumer=consumer, keys=list(keys), why="died")


def test_dead_consumer_after_commit() -> None:
    h = ok_history().publish(0.5, "6:1")
    _killed_holding(_committed(h, 0.6, "6:1"), 0.65, "consumer-1", "6:1")
    h.fail(1.5, "6:1", "consumed", proc="consumer-0")  # the redelivered descriptor finds the slot consumed
    v = check(h.events, spec())
    assert v.passed, v.failures
    assert v.counts["consumed_by_dead_consumer"] == 1 and v.counts["lost"] == 0
    assert v.anomalies["consumed_by_dead_consumer"][0]["key"] == "6:1"


def test_dead_consumer_bound_by_expectation() -> None:
    h = ok_history().publish(0.5, "6:1")
    _killed_holding(_committed(h, 0.6, "6:1"), 0.65, "consumer-1", "6:1")
    v = check(h.events, spec(consumed_by_dead_consumer=0))
    assert v.failures == ["consumed_by_dead_consumer: 1 > 0 (slots 6:1)"]


def test_kill_excuses_only_keys_the_killed_consumer_held() -> None:
    """The old rule excused every committed-undelivered key before any consumer kill."""
    h = ok_history().publish(0.5, "6:1").publish(0.5, "7:1")
    _committed(_committed(h, 0.6, "6:1"), 0.6, "7:1")
    _killed_holding(h, 0.65, "consumer-1", "6:1")  # it held 6:1 only
    v = check(h.events, spec())
    assert v.counts["consumed_by_dead_consumer"] == 1
    assert v.failures == ["lost: 1 > 0 (slots 7:1)"]


def test_consumer_that_died_on_its_own_excuses_nothing() -> None:
    h = _committed(ok_history().publish(0.5, "6:1"), 0.6, "6:1")
    h.add(0.7, "runner", "channel_returned", consumer="consumer-1", keys=["6:1"], why="died")
    assert check(h.events, spec()).failures == ["lost: 1 > 0 (slots 6:1)"]


def test_commit_without_delivery_and_no_kill_is_lost() -> None:
    v = check(_committed(ok_history().publish(0.5, "6:1"), 0.6, "6:1").events, spec())
    assert v.counts["lost"] == 1 and v.counts["consumed_by_dead_consumer"] == 0
    assert v.anomalies["lost"][0]["note"] == "committed by the server, never delivered"


def test_consumer_killed_before_commit_is_lost() -> None:
    h = _killed_holding(ok_history().publish(0.5, "6:1"), 0.55, "consumer-1", "6:1")
    v = check(_committed(h, 1.6, "6:1").events, spec())
    assert v.counts["lost"] == 1


def test_second_server_commit_of_a_key_is_double_commit() -> None:
    h = ok_history()
    h.add(0.9, "server", "committed", key="0:1", port=1, token=99)
    v = check(h.events, spec())
    assert v.counts["double_commit"] == 1
    assert "double_commit: 1 > 0 (slots 0:1)" in v.failures


def test_delivery_without_a_server_commit_is_uncommitted_delivery() -> None:
    h = ok_history().publish(0.5, "6:1").deliver(0.6, "6:1", commit=False)
    v = check(h.events, spec())
    assert v.failures == ["uncommitted_delivery: 1 > 0 (slots 6:1)"]
    assert "never committed by the server" in v.anomalies["uncommitted_delivery"][0]["note"]


def test_delivery_by_another_token_than_the_committed_one_is_uncommitted_delivery() -> None:
    h = ok_history().publish(0.5, "6:1")
    _committed(h, 0.55, "6:1").deliver(0.6, "6:1", token=5, commit=False)
    v = check(h.events, spec())
    assert v.failures == ["uncommitted_delivery: 1 > 0 (slots 6:1)"]


def test_single_chunk_deliveries_need_no_token() -> None:
    h = ok_history().publish(0.5, "6:1").deliver(0.6, "6:1", commit=False)
    s = spec()
    assert check(h.events, CheckSpec(s.duration_s, s.ports, protocol="single-chunk")).passed


def test_key_published_twice_is_republished() -> None:
    v = check(ok_history().publish(0.9, "1:1").events, spec())
    assert v.failures == ["republished: 1 > 0 (slots 1:1)"]


def test_slots_left_mid_transition_after_the_drain_are_a_slot_leak() -> None:
    audit = {"ready_count": 0, "slots": 8, "free": 6, "ready": 0, "reading": 1, "writing": 1}
    v = check(ok_history().add(2.0, "runner", "ring_audit", **audit).events, spec())
    assert v.failures == ["slot_leak: 2 > 0 slots left mid-transition after the drain (1 READING, 1 WRITING)"]
    assert check(ok_history().add(2.0, "runner", "ring_audit", **audit).events, spec(slot_leak=2)).passed


def test_descriptors_left_after_the_drain_are_drain_incomplete() -> None:
    h = ok_history().add(2.0, "runner", "drain", complete=False, pending=3, in_flight=1, seconds=20.0)
    v = check(h.events, spec())
    assert v.failures == [
        "drain_incomplete: 3 pending and 1 claimed descriptors left in the channel after 20s of drain"
    ]
    assert check(h.events, spec(drain_incomplete=True)).passed
    done = ok_history().add(2.0, "runner", "drain", complete=True, pending=0, in_flight=0, seconds=1.0)
    assert check(done.events, spec()).passed


def test_a_port_never_used_after_its_quarantine_is_abandoned() -> None:
    h = H()
    h.add(0.0, "consumer-0", "quarantine", port=1, reason="ConnectionLostError", seconds=1.0)
    for i in range(30):  # 30 deliveries after the quarantine ended, all on port 0
        h.publish(2.0 + 0.1 * i, f"{i}:1").deliver(2.05 + 0.1 * i, f"{i}:1", port=0)
    v = check(h.events, spec())
    assert v.failures == [
        "port_abandoned: port 1 carried no read after its quarantine ended at 2.0s while 30 reads went "
        "to other ports"
    ]
    h.publish(5.0, "99:1").deliver(5.05, "99:1", port=1)  # the port came back
    assert check(h.events, spec()).passed


def test_a_run_that_published_nothing_is_vacuous() -> None:
    v = check(H().events, spec())
    assert v.failures == ["vacuous: nothing was published during the run, so nothing was checked"]
    assert v.coverage_failures == v.failures


def test_liveness_is_reported_apart_from_safety() -> None:
    slow = check(ok_history().events, spec(min_throughput=100.0))
    assert not slow.passed and slow.safety_failures == [] and slow.liveness_failures == slow.failures
    assert slow.summary().startswith("liveness only (no safety anomaly): throughput:")
    both = check(ok_history().publish(0.5, "6:1").events, spec(min_throughput=100.0))
    assert both.safety_failures == ["lost: 1 > 0 (slots 6:1)"]
    assert both.summary().startswith("failed (1 safety, 0 coverage, 1 liveness)")


def test_server_kill_does_not_excuse_a_commit() -> None:
    h = _committed(ok_history().publish(0.5, "6:1"), 0.6, "6:1")
    h.add(0.71, "runner", "channel_returned", consumer="server", keys=["6:1"], why="died")
    v = check(h.add(0.7, "runner", "proc_exit", target="server", pid=3, how="killed").events, spec())
    assert v.counts["lost"] == 1


def test_examples_are_bounded_and_in_history_order() -> None:
    h = H()
    for i in range(20):
        h.publish(i * 0.01, f"{i}:1")
    v = check(h.events, spec())
    assert [a["key"] for a in v.anomalies["lost"]] == ["0:1", "1:1", "2:1", "3:1", "4:1"]
    assert v.failures == ["lost: 20 > 0 (slots 0:1, 1:1, 2:1, 3:1, 4:1, +15 more)"]


# -- faults ------------------------------------------------------------------------------------------


def test_fault_on_one_of_two_listed_ports_is_not_covered() -> None:
    faults = [
        FaultRef(0, "reset", ports=(0, 1)),
        FaultRef(1, "kill", layer="process", target="server", at_s=0.2),
    ]
    h = ok_history().fault(0.1, 0, "reset", port=0).fault(0.15, 0, "reset", port=0)
    h.fault(0.2, 1, "kill", target="server")
    v = check(h.events, spec(faults=faults, faults_fired="all"))
    assert v.failures == ["faults_fired: fault 0 (reset) never fired on ports [1]"]
    c0, c1 = v.coverage
    assert (c0["covered"], c0["count"], c0["fired_ports"], c0["missing_ports"]) == (False, 2, {0: 2}, [1])
    assert c1["covered"] and c1["ports"] is None
    assert v.faults_fired == [
        {"index": 0, "kind": "reset", "port": 0, "count": 2},
        {"index": 1, "kind": "kill", "port": None, "count": 1},
    ]
    assert v.per_port[0]["faults"] == 2 and v.per_port[1]["faults"] == 0
    h.fault(0.3, 0, "reset", port=1)
    assert check(h.events, spec(faults=faults, faults_fired="all")).passed


def test_faults_fired_modes() -> None:
    faults = [FaultRef(0, "reset", ports=(0,)), FaultRef(1, "stall")]
    h = ok_history().fault(0.1, 1, "stall", port=1)
    assert check(h.events, spec(faults=faults, faults_fired="none")).passed
    assert check(h.events, spec(faults=faults, faults_fired=[1])).passed
    v = check(h.events, spec(faults=faults, faults_fired="all"))
    assert v.failures == ["faults_fired: fault 0 (reset) never fired"]
    with pytest.raises(ValueError, match="not configured"):
        spec(faults=faults, faults_fired=[2])
    with pytest.raises(ValueError, match="faults_fired"):
        spec(faults=faults, faults_fired="some")


def test_faults_quarantined() -> None:
    faults = [FaultRef(0, "truncate", ports=(0, 1)), FaultRef(1, "evict")]
    h = ok_history().fault(0.1, 0, "truncate", port=0).fault(0.2, 0, "truncate", port=1)
    h.fault(0.3, 1, "evict", port=0).fault(0.3, 1, "evict", port=1)
    h.add(0.15, "consumer-0", "quarantine", port=0, reason="TruncatedError", seconds=2)
    assert check(h.events, spec(faults=faults)).passed  # default: not checked
    v = check(h.events, spec(faults=faults, faults_quarantined="all"))
    assert v.failures == [
        "faults_quarantined: fault 0 (truncate) fired 1 times on port 1, which was never quarantined",
        "faults_quarantined: fault 1 (evict) fired 1 times on port 1, which was never quarantined",
    ]
    assert check(h.events, spec(faults=faults, faults_quarantined=[1])).failures == v.failures[1:]
    h.add(0.25, "consumer-1", "quarantine", port=1, reason="ProtocolError", seconds=2)
    assert check(h.events, spec(faults=faults, faults_quarantined="all")).passed
    with pytest.raises(ValueError, match="faults_quarantined names faults"):
        spec(faults=faults, faults_quarantined=[2])


# -- server-side invariants ----------------------------------------------------------------------------


def _served(
    h: H, t: float, key: str, token: int, requested: int | None = None, protocol: str = "commit"
) -> H:
    gen = int(key.split(":")[1])
    fields = {"requested": gen if requested is None else requested}
    return h.add(t, "server", "served", key=key, port=0, token=token, protocol=protocol, **fields)


def test_served_generation_must_be_the_requested_one() -> None:
    h = ok_history()
    _served(h, 0.01, "0:1", token=1001)  # as asked (ok_history's read of 0:1)
    _served(h, 0.5, "1:3", token=6, requested=2)  # the ring served a newer payload: ABA
    h.publish(0.4, "1:2").fail(0.55, "1:2", "protocol")
    v = check(h.events, spec(lost=1))
    assert v.counts["wrong_generation"] == 1
    assert v.failures == ["wrong_generation: 1 > 0 (slots 1:2)"]
    (a,) = v.anomalies["wrong_generation"]
    assert (a["key"], a["note"]) == ("1:2", "requested 1:2, the ring served 1:3")
    assert [e["type"] for e in a["events"]] == ["published", "served", "failed"]
    # single-chunk requests name no generation: nothing to compare
    single_chunk = _served(ok_history(), 0.5, "1:3", token=0, requested=0, protocol="single-chunk")
    assert check(single_chunk.events, spec()).passed
    # events written before the server recorded `requested` are not judged
    old = ok_history().add(0.5, "server", "served", key="1:3", port=0, token=1, protocol="commit")
    assert check(old.events, spec()).passed


def test_commit_by_a_token_that_no_longer_holds_the_slot_fails_fencing() -> None:
    h = H().publish(0.0, "0:1")
    _served(h, 0.1, "0:1", token=10)  # stalled past its lease: reclaimed, then
    _served(h, 0.5, "0:1", token=20)  # served to the racing consumer
    h.add(1.1, "server", "committed", key="0:1", port=0, token=10)  # the stalled reader's commit wins
    h.add(1.2, "server", "late_finalise", key="0:1", port=1, token=20)
    h.deliver(1.15, "0:1", token=10, commit=False)
    v = check(h.events, spec())
    assert v.counts["fencing"] == 1
    assert v.failures == ["fencing: 1 > 0 (slots 0:1)"]
    assert v.anomalies["fencing"][0]["note"] == "committed for token 10 while token 20 held the slot"


def test_fencing_accepts_the_holders_commit_and_single_chunk_reads() -> None:
    h = H().publish(0.0, "0:1").publish(0.0, "1:1")
    _served(h, 0.1, "0:1", token=10)
    _served(h, 0.5, "0:1", token=20)
    h.add(1.1, "server", "late_finalise", key="0:1", port=0, token=10)  # refused: fenced
    h.add(1.2, "server", "committed", key="0:1", port=1, token=20)
    h.deliver(1.25, "0:1", token=20, commit=False)
    _served(h, 0.2, "1:1", token=0, protocol="single-chunk", requested=0)
    _served(h, 0.3, "1:1", token=0, protocol="single-chunk", requested=0)  # served again while READING
    h.add(0.4, "server", "committed", key="1:1", port=0, token=0).deliver(0.45, "1:1", token=0, commit=False)
    h.add(0.6, "server", "committed", key="2:1", port=0, token=7)  # no `served` seen: not judged
    v = check(h.events, spec())
    assert v.counts["fencing"] == 0 and v.passed, v.failures


def test_ring_audit() -> None:
    audit = {"slots": 4, "free": 4, "writing": 0, "ready": 0, "reading": 0}
    good = ok_history().add(1.0, "runner", "ring_audit", ready_count=0, **audit)
    assert check(good.events, spec()).passed
    bad = ok_history().add(1.0, "runner", "ring_audit", ready_count=1204, **audit)
    v = check(bad.events, spec())
    assert v.failures == ["ring_audit: ready_count() says 1204 but 0 of 4 slots are READY"]
    assert check(ok_history().events, spec()).passed  # no audit (an older history): nothing to judge


def test_real_port_numbers_map_to_indexes() -> None:
    s = CheckSpec(duration_s=10, ports=2, port_numbers=(13000, 13001))
    h = ok_history().add(0.3, "consumer-0", "quarantine", port=13001, reason="reset", seconds=5)
    h.add(0.3, "consumer-0", "retry", key="1:1", port=13001, reason="x").add(
        0.4, "c", "retry", key="1:1", port=None
    )
    v = check(h.events, s)
    assert v.per_port[1] == {"delivered": 2, "retries": 1, "faults": 0, "quarantines": 1}
    assert v.counts["retries"] == 2 and set(v.per_port) == {0, 1}


def test_recovery_times() -> None:
    faults = [
        FaultRef(0, "toxic", ports=(1,), window=(2.0, 4.0)),
        FaultRef(1, "kill", layer="process", target="server", at_s=5.0),
        FaultRef(2, "reset"),  # always on: recovery counted from the heal
        FaultRef(
            3, "pause", layer="process", target="producer"
        ),  # probabilistic process fault: from its last firing
    ]
    h = H()
    for i, t in enumerate([1.0, 3.0, 4.5, 7.5, 8.0, 9.5, 10.6]):
        h.publish(t - 0.1, f"{i}:1").deliver(t, f"{i}:1")
    h.fault(2.5, 0, "toxic", port=1).fault(5.1, 1, "kill", target="server").fault(3.0, 2, "reset", port=0)
    h.fault(6.0, 3, "pause", target="producer").fault(7.0, 3, "pause", target="producer")
    h.add(10.0, "runner", "phase", name="heal")
    v = check(h.events, spec(faults=faults, max_recovery_s=2.0))
    got = [(r["fault"], r["basis"], r["end_s"], r["recovery_s"]) for r in v.recovery]
    assert got == [
        (0, "window_end", 4.0, pytest.approx(0.5)),
        (1, "fired", pytest.approx(5.1), pytest.approx(2.4)),
        (2, "heal", pytest.approx(10.0), pytest.approx(0.6)),
        (3, "fired", pytest.approx(7.0), pytest.approx(0.5)),
    ]
    assert v.failures == ["recovery: fault 1 (kill) 2.40s > 2s"]


def test_no_delivery_after_fault_fails_recovery_only_if_something_was_pending() -> None:
    faults = [FaultRef(0, "kill", layer="process", target="producer", at_s=5.0)]
    h = ok_history().fault(5.0, 0, "kill", target="producer")
    v = check(h.events, spec(faults=faults, max_recovery_s=1.0))
    assert v.passed and v.recovery[0]["recovery_s"] is None and not v.recovery[0]["pending"]
    h = (
        ok_history()
        .fault(7.0, 0, "kill", target="server")
        .publish(8.0, "41:1")
        .fail(9.0, "41:1", "exhausted")
    )
    faults = [FaultRef(0, "kill", layer="process", target="server", at_s=7.0)]
    v = check(h.events, spec(faults=faults, max_recovery_s=1.0, lost=1))
    assert v.recovery[0]["pending"] and v.recovery[0]["recovery_s"] is None
    assert v.failures == ["recovery: fault 0 (kill) no delivery after 7.00s"]


# -- throughput, latency ---------------------------------------------------------------------------


def test_throughput_and_timeline() -> None:
    h = H()
    times = [0.1, 0.2, 0.9, 1.5, 3.2, 3.3, 11.0]  # the last one is in the drain phase
    for i, t in enumerate(times):
        h.publish(t - 0.05, f"{i}:1").deliver(t, f"{i}:1")
    v = check(h.events, spec(duration_s=4.0))
    assert v.throughput["per_s"] == pytest.approx(6 / 4.0)
    assert v.throughput["overall_per_s"] == pytest.approx(7 / 11.0)
    assert v.throughput["timeline"] == [3, 1, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert v.throughput["start_s"] == 0 and v.throughput["bucket_s"] == 1.0
    assert check(h.events, spec(duration_s=4.0, min_throughput=1.5)).passed
    v = check(h.events, spec(duration_s=4.0, min_throughput=2))
    assert v.failures == ["throughput: 1.5/s < 2/s"]


def test_latency_quantiles_nearest_rank() -> None:
    h = H()
    for i in range(100):
        h.publish(0.01 * i, f"{i}:1").deliver(0.01 * i + 0.001, f"{i}:1", latency=(i + 1) / 1000)
    v = check(h.events, spec())
    none = {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    assert v.latency == {"count": 100, "p50": 0.05, "p90": 0.09, "p99": 0.099, "max": 0.1, "claim": none}
    v = check(h.events, spec(max_p99_latency_s=0.05))
    assert v.failures == ["p99 latency: 0.099s > 0.05s"]
    assert quantile([], 0.5) is None and quantile([3.0], 0.99) == 3.0


def test_claim_latency_quantiles_from_claimed_events() -> None:
    h = H()
    for i in range(10):
        h.publish(0.1 * i, f"{i}:1").deliver(0.1 * i + 0.05, f"{i}:1")
    for i in range(10):
        h.add(
            0.1 * i + 0.01, "consumer-0", "claimed", key=f"{i}:1", delivery=1, claim_latency_s=(i + 1) / 1000
        )
    h.add(2.0, "consumer-1", "claimed", key="0:1", delivery=2, claim_latency_s=None)  # not measured
    v = check(h.events, spec())
    assert v.latency["claim"] == {"count": 10, "p50": 0.005, "p90": 0.009, "p99": 0.01, "max": 0.01}
    assert v.passed


def test_empty_history() -> None:
    v = check([], spec(faults_fired="none"))
    assert v.failures == ["vacuous: nothing was published during the run, so nothing was checked"]
    assert v.latency["p50"] is None and v.throughput["timeline"] == []


# -- verdict shape -----------------------------------------------------------------------------------


def test_verdict_is_json_safe_and_round_trips() -> None:
    faults = [FaultRef(0, "reset", ports=(0, 1))]
    h = ok_history().deliver(0.7, "2:1").publish(0.8, "9:1").fault(0.1, 0, "reset", port=1)
    v = check(h.events, spec(faults=faults))
    d = v.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert set(d) == {
        "passed",
        "failures",
        "counts",
        "per_port",
        "faults_fired",
        "coverage",
        "recovery",
        "throughput",
        "latency",
        "anomalies",
        "t0",
        "end_s",
    }
    assert Verdict.from_dict(d) == v
    assert d["t0"] == T0


def test_deterministic_and_order_independent() -> None:
    h = ok_history(50).deliver(3.0, "7:1").publish(4.0, "99:1")
    shuffled = list(h.events)
    random.Random(1).shuffle(shuffled)
    assert check(shuffled, spec()).to_dict() == check(h.events, spec()).to_dict()


def test_100k_events_fast() -> None:
    h = H()
    n = 33_000
    for i in range(n):
        t = i * 1e-3
        key = f"{i % 64}:{i // 64 + 1}"
        h.publish(t, key).deliver(t + 5e-4, key, port=i % 4, latency=5e-4)
        if i % 10 == 0:
            h.add(t, "consumer-0", "retry", key=key, port=i % 4, reason="x")
    events = h.events
    assert len(events) > 69_000
    start = time.perf_counter()
    v = check(events, CheckSpec(duration_s=40, ports=4, expect=Expectations(faults_fired="none")))
    elapsed = time.perf_counter() - start
    assert v.passed and v.counts["delivered"] == n
    assert elapsed < 10.0, f"{len(events)} events took {elapsed:.2f}s"  # ~1 s idle; catches O(n^2)


# -- property: an exactly-once model passes, one injected anomaly fails ----------------------------


@st.composite
def exactly_once_history(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[str]]:
    """A run of an exactly-once transport: each key delivered once, or dropped (maybe stale-rejected)."""
    n = draw(st.integers(1, 40))
    consumers = draw(st.integers(1, 3))
    h = H()
    delivered: list[str] = []
    t = 0.0
    for i in range(n):
        t += draw(st.floats(0.001, 0.5))
        key = f"{i % 8}:{i // 8 + 1}"
        h.publish(t, key)
        fate = draw(st.sampled_from(["deliver", "deliver", "deliver", "drop", "drop_stale"]))
        later = t + draw(st.floats(0.001, 2.0))
        if fate == "deliver":
            for _ in range(draw(st.integers(0, 2))):
                h.add(
                    later - 0.0005, "consumer-0", "retry", key=key, port=draw(st.integers(0, 1)), reason="r"
                )
            h.deliver(
                later,
                key,
                proc=f"consumer-{draw(st.integers(0, consumers - 1))}",
                port=draw(st.integers(0, 1)),
                latency=draw(st.floats(0.0, 1.0)),
            )
            delivered.append(key)
        else:
            h.add(later, "producer", "dropped", key=key, slot=i % 8, generation=i // 8 + 1)
            if fate == "drop_stale":
                h.fail(later + 0.01, key, "stale")
    return h.events, delivered


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LOOSE = {"faults_fired": "none"}


@PROPERTY
@given(exactly_once_history())
def test_property_exactly_once_passes(history: tuple[list[dict[str, Any]], list[str]]) -> None:
    events, delivered = history
    v = check(events, spec(**LOOSE))
    assert v.passed, v.failures
    assert v.counts["delivered"] == len(delivered)


@PROPERTY
@given(exactly_once_history(), st.data())
def test_property_one_duplicate_fails(
    history: tuple[list[dict[str, Any]], list[str]], data: st.DataObject
) -> None:
    events, delivered = history
    if not delivered:
        return
    key = data.draw(st.sampled_from(delivered))
    original = next(e for e in events if e["type"] == "delivered" and e["key"] == key)
    dup = {**original, "t": original["t"] + data.draw(st.floats(0.0, 3.0)), "proc": "consumer-9"}
    v = check([*events, dup], spec(**LOOSE))
    assert not v.passed
    assert v.failures == [f"duplicated: 1 > 0 (slots {key})"]
    assert v.anomalies["duplicated"][0]["key"] == key


@PROPERTY
@given(exactly_once_history(), st.data())
def test_property_one_missing_delivery_fails(
    history: tuple[list[dict[str, Any]], list[str]], data: st.DataObject
) -> None:
    events, delivered = history
    if not delivered:
        return
    key = data.draw(st.sampled_from(delivered))
    kept = [e for e in events if not (e["type"] == "delivered" and e["key"] == key)]
    v = check(kept, spec(**LOOSE))
    assert v.failures == [f"lost: 1 > 0 (slots {key})"]
    assert v.anomalies["lost"][0]["key"] == key


# -- history reader ---------------------------------------------------------------------------------


def _write(path: Path, events: list[dict[str, Any]], tail: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events) + tail)


def test_history_merges_by_time_and_tolerates_truncated_last_line(tmp_path: Path) -> None:
    ev = tmp_path / "events"
    _write(ev / "producer.jsonl", [{"t": 1.0, "proc": "producer", "type": "published", "key": "0:1"}])
    _write(
        ev / "consumer-0.jsonl",
        [
            {"t": 0.5, "proc": "consumer-0", "type": "phase", "name": "x"},
            {"t": 2.0, "proc": "c", "type": "delivered"},
        ],
        tail='{"t": 3.0, "proc": "consumer-0", "type": "deliv',
    )
    (ev / "notes.txt").write_text("ignored")
    h = read_history(tmp_path)
    assert [e["t"] for e in h.events] == [0.5, 1.0, 2.0]
    assert h.files == ["consumer-0.jsonl", "producer.jsonl"]
    assert h.skipped == ["consumer-0.jsonl:3: truncated last line"]
    assert read_history(ev).events == h.events


def test_history_recovers_line_glued_after_a_fragment(tmp_path: Path) -> None:
    """A restarted process appends (O_APPEND) right after its predecessor's truncated line."""
    path = tmp_path / "server.jsonl"
    path.write_text(
        '{"t": 1.0, "proc": "server", "type": "served"}\n'
        '{"t": 2.0, "proc": "server", "ty{"t": 3.0, "proc": "server", "type": "committed", "key": "1:1"}\n'
        "not json\n"
    )
    events, skipped = read_events_file(path)
    assert [e["t"] for e in events] == [1.0, 3.0]
    assert skipped == [
        "server.jsonl:2: unparsable line (event after it recovered)",
        "server.jsonl:3: unparsable line",
    ]


def test_history_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_history(tmp_path / "nope")


def test_merge_is_stable() -> None:
    a = [{"t": 1.0, "type": "x", "n": 0}, {"t": 2.0, "type": "x", "n": 1}]
    b = [{"t": 1.0, "type": "x", "n": 2}]
    assert [e["n"] for e in merge([a, b])] == [0, 2, 1]


def test_history_feeds_checker(tmp_path: Path) -> None:
    from transport.events import JsonlSink

    sinks = {name: JsonlSink(tmp_path / "events" / f"{name}.jsonl", name) for name in ("runner", "p", "c")}
    sinks["runner"].emit("phase", name="faults")
    sinks["p"].emit("published", key="0:1", slot=0, generation=1, nbytes=8, checksum=0)
    sinks["p"].emit("committed", key="0:1", port=0, token=7)
    sinks["c"].emit(
        "delivered", key="0:1", slot=0, generation=1, port=0, nbytes=8,
        checksum_ok=True, content_ok=True, latency_s=0.001, attempts=1, token=7,
    )  # fmt: skip
    for s in sinks.values():
        s.close()
    with (tmp_path / "events" / "c.jsonl").open("a") as f:
        f.write('{"t": 9')
    h = read_history(tmp_path)
    v = check(h.events, spec(faults_fired="none"))
    assert v.passed and v.counts["delivered"] == 1 and len(h.skipped) == 1
