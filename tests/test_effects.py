"""Effect rules (chaos.effects): a fault counts when it changed the outcome its kind is meant to change.

Hand-built histories, checked through `chaos.checker.check` with `faults_effective: all` (the
default), so each test also shows the failure string a user reads.
"""

from __future__ import annotations

from typing import Any

import pytest

from chaos.checker import CheckSpec, Expectations, FaultRef, Verdict, check
from chaos.effects import RULES
from chaos.scenario.model import FAULT_KINDS

T0 = 1_700_000_000.0


class H:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = [{"t": T0, "proc": "runner", "type": "phase", "name": "faults"}]
        for i in range(4):  # a healthy run underneath, so nothing but the effect rule can fail
            key = f"{i}:1"
            self.add(0.01 * i, "runner", "published", key=key, slot=i, generation=1, nbytes=8, checksum=0)
            self.add(0.01 * i + 0.004, "server", "committed", key=key, port=0, token=50 + i)
            self.add(
                0.01 * i + 0.005, "consumer-0", "delivered", key=key, port=0, token=50 + i, latency_s=0.01
            )

    def add(self, t: float, proc: str, type: str, **fields: Any) -> H:
        self.events.append({"t": T0 + t, "proc": proc, "type": type, **fields})
        return self

    def fire(self, t: float, kind: str, port: int | None = None, **fields: Any) -> H:
        fields = {"phase": None, "target": None, **fields}
        return self.add(t, "runner", "fault", fault=0, kind=kind, port=port, **fields)


def judge(h: H, fault: FaultRef) -> Verdict:
    return check(h.events, CheckSpec(duration_s=10.0, ports=2, faults=(fault,), expect=Expectations()))


def effect(v: Verdict) -> tuple[str, str]:
    (c,) = v.coverage
    return c["effect"], c["effect_detail"]


def test_every_scenario_fault_kind_has_a_rule() -> None:
    assert set(FAULT_KINDS) <= set(RULES)


def test_reset_needs_a_failed_attempt_on_its_port() -> None:
    fault = FaultRef(0, "reset", ports=(1,))
    h = H().fire(1.0, "reset", port=1)
    v = judge(h, fault)
    assert v.failures == [
        "ineffective: fault 0 (reset) fired 1 times and changed nothing: no failed attempt on ports [1]"
    ]
    h.add(1.01, "consumer-0", "retry", key="0:1", port=0, reason="ConnectionLostError")  # another port
    assert not judge(h, fault).passed
    h.add(1.02, "consumer-0", "retry", key="0:1", port=1, reason="ConnectionLostError")
    v = judge(h, fault)
    assert v.passed and effect(v)[0] == "effective" and v.coverage[0]["effective"] == 1


def test_per_port_fault_must_act_on_every_listed_port() -> None:
    fault = FaultRef(0, "reset", ports=(0, 1))
    h = H().fire(1.0, "reset", port=0).add(1.01, "consumer-0", "retry", port=0, reason="x")
    assert effect(judge(h, fault)) == ("ineffective", "no failed attempt on ports [1] (never fired on [1])")


def test_truncate_needs_detection_and_quarantine() -> None:
    fault = FaultRef(0, "truncate", ports=(0,))
    h = H().fire(1.0, "truncate", port=0).add(1.01, "consumer-0", "retry", port=0, reason="TruncatedError")
    assert effect(judge(h, fault))[0] == "ineffective"  # detected, but the port stayed in rotation
    h.add(1.01, "consumer-0", "quarantine", port=0, reason="TruncatedError", seconds=2.0)
    assert effect(judge(h, fault))[0] == "effective"


def test_drop_commit_needs_an_answered_resolve() -> None:
    fault = FaultRef(0, "drop_commit", ports=(0,))
    h = H().fire(1.0, "drop_commit", port=0)
    assert effect(judge(h, fault)) == ("ineffective", "no RESOLVE was answered after it fired")
    h.add(1.2, "server", "resolved", key="1:1", port=1, token=51, resolution="COMMITTED")
    assert effect(judge(h, fault))[0] == "effective"


def test_duplicate_descriptor_needs_a_lost_race() -> None:
    fault = FaultRef(0, "duplicate_descriptor")
    h = H().fire(0.001, "duplicate_descriptor", key="0:1")
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(0.5, "consumer-1", "failed", key="0:1", reason="consumed")
    assert effect(judge(h, fault))[0] == "effective"


def test_delay_descriptor_on_an_overwrite_ring_needs_a_stale() -> None:
    fault = FaultRef(0, "delay_descriptor", delay_s=2.0, policy="overwrite")
    h = H().fire(0.001, "delay_descriptor", key="1:1")
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(2.1, "consumer-0", "failed", key="1:1", reason="stale")
    assert effect(judge(h, fault))[0] == "effective"
    # on a block ring the delivery must come at least (90% of) the delay later
    block = FaultRef(0, "delay_descriptor", delay_s=0.5)
    assert effect(judge(H().fire(0.001, "delay_descriptor", key="1:1"), block))[0] == "ineffective"
    late = H().fire(0.001, "delay_descriptor", key="1:1").add(0.6, "consumer-0", "delivered", key="1:1")
    assert effect(judge(late, block))[0] == "effective"


def test_consumer_kill_needs_descriptors_handed_out_again() -> None:
    fault = FaultRef(0, "kill", target="consumer-1", at_s=1.0)
    h = (
        H()
        .fire(1.0, "kill", target="consumer-1")
        .add(1.0, "runner", "proc_exit", target="consumer-1", how="killed")
    )
    h.add(1.01, "runner", "channel_returned", consumer="consumer-1", keys=[], why="died")
    assert effect(judge(h, fault)) == ("ineffective", "consumer-1 held no descriptor when it was killed")
    h.add(1.02, "runner", "channel_returned", consumer="consumer-1", keys=["9:1"], why="died")
    assert effect(judge(h, fault))[0] == "effective"


def test_producer_kill_needs_publishing_to_stop() -> None:
    fault = FaultRef(0, "kill", target="producer", at_s=1.0)
    h = (
        H()
        .fire(1.0, "kill", target="producer")
        .add(1.0, "runner", "proc_exit", target="producer", how="killed")
    )
    h.add(1.2, "server", "reclaimed", reading=[], writing=[3])
    assert effect(judge(h, fault)) == (
        "effective",
        "the producer died mid-write: the server reclaimed its WRITING slot; nothing was published after",
    )
    h.add(2.0, "runner", "published", key="9:1", slot=9, generation=1, nbytes=8, checksum=0)
    assert effect(judge(h, fault)) == ("ineffective", "publishing went on after the producer was killed")


def test_pause_needs_silence_then_service() -> None:
    fault = FaultRef(0, "pause", target="consumer-0", at_s=1.0, duration_s=2.0)
    busy = H().fire(1.0, "pause", target="consumer-0").add(1.5, "consumer-0", "retry", port=0, reason="x")
    busy.add(3.5, "consumer-0", "retry", port=0, reason="x")
    assert effect(judge(busy, fault))[0] == "ineffective"  # it kept working through its "pause"
    quiet = H().fire(1.0, "pause", target="consumer-0").add(3.5, "consumer-0", "retry", port=0, reason="x")
    assert effect(judge(quiet, fault))[0] == "effective"


@pytest.mark.parametrize("toxic", ["latency", "bandwidth", "slicer", "slow_close"])
def test_data_shaping_toxic_on_a_listener_proxy_is_not_judged(toxic: str) -> None:
    fault = FaultRef(0, "toxic", ports=(0,), toxic=toxic)
    v = judge(H().fire(1.0, "toxic", port=0), fault)
    assert v.passed and effect(v)[0] == "not_judged" and "connection-setup only" in effect(v)[1]


def test_reset_peer_toxic_needs_a_failed_attempt_in_its_window() -> None:
    fault = FaultRef(0, "toxic", ports=(1,), toxic="reset_peer", window=(1.0, 2.0))
    h = H().fire(1.0, "toxic", port=1).add(9.0, "consumer-0", "retry", port=1, reason="x")  # too late
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(1.5, "consumer-0", "quarantine", port=1, reason="ConnectionLostError", seconds=2.0)
    assert effect(judge(h, fault))[0] == "effective"


def test_a_fault_that_never_fired_is_ineffective_and_faults_effective_none_skips_it() -> None:
    fault = FaultRef(0, "stall", ports=(0,))
    spec = CheckSpec(duration_s=10.0, ports=2, faults=(fault,), expect=Expectations(faults_effective="none"))
    assert check(H().events, spec).passed
    assert judge(H(), fault).failures == [
        "ineffective: fault 0 (stall) fired 0 times and changed nothing: never fired"
    ]


def test_redis_outage_needs_a_gap_in_claims() -> None:
    fault = FaultRef(0, "kill", target="redis")
    flowing = H().fire(2.0, "kill", target="redis")
    for t in (1.0, 1.2, 1.4, 1.6, 1.8, 1.95, 2.1, 2.3, 2.5, 2.7, 2.9):  # claims every 0.2 s go on
        flowing.add(t, "consumer-0", "claimed", key=f"{int(t * 10)}:1")
    assert effect(judge(flowing, fault))[0] == "ineffective"
    cut = H().fire(2.0, "kill", target="redis")
    for t in (1.0, 1.5, 1.9, 2.0, 3.5, 3.6):  # a claim in flight lands at the signal, then silence
        cut.add(t, "consumer-0", "claimed", key=f"{int(t * 10)}:1")
    assert effect(judge(cut, fault))[0] == "effective"


# -- client-side faults: judged in the consumer that fired them ---------------------------------------


def client_fire(h: H, t: float, kind: str, port: int, proc: str = "consumer-0", **fields: Any) -> H:
    fields = {"phase": None, "target": None, "keys": ["0:1"], **fields}
    return h.add(t, proc, "fault", fault=0, kind=kind, port=port, side="client", **fields)


def test_client_reset_needs_a_failed_attempt_by_the_consumer_it_fired_in() -> None:
    fault = FaultRef(0, "reset", ports=(1,), side="client", phase="commit")
    h = client_fire(H(), 1.0, "reset", 1, phase="commit")
    assert effect(judge(h, fault)) == ("ineffective", "no failed attempt by that consumer on ports [1]")
    h.add(
        1.01, "consumer-1", "quarantine", port=1, reason="ConnectionLostError", seconds=2.0
    )  # other consumer
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(1.01, "consumer-0", "retry", key="0:1", port=0, reason="ConnectionLostError")  # other port
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(30.0, "consumer-0", "retry", key="0:1", port=1, reason="ConnectionLostError")  # far too late
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(1.02, "consumer-0", "quarantine", port=1, reason="ConnectionLostError", seconds=2.0)
    v = judge(h, fault)
    assert v.passed and effect(v)[0] == "effective" and v.coverage[0]["effective"] == 1


def test_client_timeout_needs_the_consumers_own_read_timeout() -> None:
    fault = FaultRef(0, "timeout", ports=(0,), side="client")
    h = client_fire(H(), 1.0, "timeout", 0, phase="status")
    h.add(1.5, "consumer-0", "quarantine", port=0, reason="ConnectionLostError", seconds=2.0)
    assert effect(judge(h, fault)) == ("ineffective", "no client read timeout on ports [0]")
    h.add(3.0, "consumer-0", "quarantine", port=0, reason="ReadTimeoutError", seconds=2.0)
    assert effect(judge(h, fault))[0] == "effective"


def test_client_stall_needs_its_exchange_to_show_the_hold() -> None:
    fault = FaultRef(0, "stall", ports=(0,), side="client", phase="resolve", delay_s=0.8)
    h = client_fire(H(), 1.0, "stall", 0, phase="resolve", keys=["2:1"])
    # Answered before the hold could have ended (another RESOLVE of the key): not this stall's doing.
    h.add(1.1, "server", "resolved", key="2:1", port=1, token=52, resolution="COMMITTED")
    h.add(1.9, "server", "resolved", key="3:1", port=1, token=53, resolution="COMMITTED")  # another key
    assert effect(judge(h, fault)) == (
        "ineffective",
        "no outcome of the held exchange 0.72s later on ports [0]",
    )
    h.add(1.8, "server", "resolved", key="2:1", port=1, token=52, resolution="COMMITTED")
    assert effect(judge(h, fault))[0] == "effective"


def test_client_stall_counts_a_failed_attempt_of_that_consumer() -> None:
    fault = FaultRef(0, "stall", ports=(0,), side="client", phase="commit", delay_s=3.0)
    h = client_fire(H(), 1.0, "stall", 0, phase="commit", keys=["2:1"])
    assert effect(judge(h, fault))[0] == "ineffective"
    h.add(3.0, "consumer-0", "quarantine", port=0, reason="ReadTimeoutError", seconds=2.0)
    assert effect(judge(h, fault))[0] == "effective"


def test_server_side_rule_still_judges_a_server_fault_of_a_client_kind() -> None:
    """A server-side reset is judged by any consumer's failed attempt, as before."""
    fault = FaultRef(0, "reset", ports=(0,))
    h = H().fire(1.0, "reset", port=0).add(1.01, "consumer-1", "retry", port=0, reason="x")
    assert effect(judge(h, fault))[0] == "effective"
