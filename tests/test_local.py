"""Same-host path: reads straight from the producer's segment with the ring's fenced transitions.

Real shared memory, a real server process and real processes killed while they hold a slot. Each
test shows which path ran (`client.stats.connects`, the ReadResult's port) so a silent fallback to
UCX cannot pass for the local path, nor the other way round.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transport import (
    ConfigError,
    Consumer,
    LeaseExpiredError,
    NotReadyError,
    Producer,
    StaleSlotError,
    UnauthorizedError,
)
from transport.descriptor import SlotDescriptor
from transport.local import boot_id
from transport.ring import SlotState

pytestmark = pytest.mark.timeout(120)
NAME = "local-borrow-kill-pause"


class _Events:
    """EventSink double for a unit check: records what the local reader emitted."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []

    def emit(self, kind: str, **fields: Any) -> None:
        self.events.append((kind, fields))

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def producer() -> Iterator[Producer]:
    with Producer(slots=8, slot_bytes=1 << 20, ports=1) as p:
        yield p


@pytest.fixture()
def consumer() -> Iterator[Consumer]:
    c = Consumer(read_timeout=2.0)
    yield c
    c.close()


def _payload(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


def _cap(producer: Producer, slot: int, generation: int) -> str:
    return producer._ring_key.capability(slot, generation).hex()


def _state(producer: Producer, desc: SlotDescriptor) -> SlotState:
    return producer.ring.info(desc.slot).state


def test_get_reads_shared_memory_with_fenced_commit(producer: Producer, consumer: Consumer) -> None:
    events = _Events()
    consumer.client.local.events = events  # type: ignore[union-attr]
    data = _payload(300_000)
    desc = producer.put(data)
    assert desc.segment == producer.ring.name and desc.boot_id == boot_id() != ""
    got = consumer.get(desc)
    assert np.array_equal(got, data)
    assert _state(producer, desc) == SlotState.FREE
    assert consumer.client.stats.connects == 0, "no UCX endpoint: the read was local"
    kinds = [k for k, _ in events.events]
    assert kinds == ["served", "committed"]
    served, committed = (f for _, f in events.events)
    assert served["token"] == committed["token"] == producer.ring.committed_token(desc.slot, desc.generation)
    with pytest.raises(NotReadyError):
        consumer.get(desc)  # consumed: never delivered twice


def test_stale_and_forged_descriptors_are_refused(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"abc")
    with pytest.raises(UnauthorizedError):
        consumer.get(replace(desc, capability="00" * 16))
    newer = desc.generation + 1
    with pytest.raises(StaleSlotError):  # a genuine capability for a generation the slot is not at
        consumer.get(replace(desc, generation=newer, capability=_cap(producer, desc.slot, newer)))
    assert _state(producer, desc) == SlotState.READY, "refusals leave the slot as it was"
    assert bytes(consumer.get(desc)) == b"abc"


def test_a_bad_out_array_is_refused_and_the_slot_stays_readable(
    producer: Producer, consumer: Consumer
) -> None:
    desc = producer.put(_payload(4096, 2))
    frozen = np.zeros(4096, dtype=np.uint8)
    frozen.flags.writeable = False
    for out, words in [
        (frozen, "read-only"),
        (np.zeros(4096, dtype=np.int32)[:1024], "uint8"),
        (np.zeros(10, np.uint8), "4096"),
    ]:
        with pytest.raises(ConfigError, match=words):
            consumer.get(desc, out=out)
        assert _state(producer, desc) == SlotState.READY, "a refused out leaves the slot to the next read"
    out = np.zeros(8192, dtype=np.uint8)
    got = consumer.get(desc, out=out)
    assert np.array_equal(got, _payload(4096, 2)) and np.shares_memory(got, out)


def test_borrow_commits_on_clean_exit_and_releases_on_error(producer: Producer, consumer: Consumer) -> None:
    data = _payload(4096, 1)
    desc = producer.put(data)
    with pytest.raises(RuntimeError, match="trainer failed"):
        with consumer.borrow(desc) as view:
            assert _state(producer, desc) == SlotState.READING
            raise RuntimeError("trainer failed")
    assert _state(producer, desc) == SlotState.READY, "released for another reader"
    with consumer.borrow(desc) as view:
        assert not view.flags.writeable
        assert np.array_equal(view, data)
        # Zero copy: a byte changed in the producer's own mapping shows through the view.
        ring_view = producer.ring.payload_view(desc.slot, desc.nbytes)
        ring_view[0] = (int(data[0]) + 1) % 256
        assert view[0] == (int(data[0]) + 1) % 256
        ring_view[0] = int(data[0])
        ring_view.release()
    del view
    assert _state(producer, desc) == SlotState.FREE


def test_borrow_past_its_lease_is_not_committed(producer: Producer) -> None:
    slow = Consumer(local_lease=0.2)
    other = Consumer()
    try:
        desc = producer.put(b"leased")
        with pytest.raises(LeaseExpiredError):
            with slow.borrow(desc):
                time.sleep(0.4)
                assert producer.ring.reclaim().reading == (desc.slot,)
                assert bytes(other.get(desc)) == b"leased"  # another reader got it, once
        assert _state(producer, desc) == SlotState.FREE
        assert producer.ring.committed_token(desc.slot, desc.generation) != 0
    finally:
        slow.close()
        other.close()


def _hold_borrow(raw: dict[str, Any], ready: Any) -> None:
    consumer = Consumer()
    with consumer.borrow(SlotDescriptor.from_dict(raw)):
        ready.set()
        time.sleep(60)


def test_killed_borrower_is_reclaimed_and_read_once(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"held by a process that dies")
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_borrow, args=(desc.to_dict(), ready))
    child.start()
    try:
        assert ready.wait(60), "child never borrowed the slot"
        assert producer.ring.info(desc.slot).owner_pid == child.pid
        os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
        child.join(20)
        assert producer.ring.reclaim().reading == (desc.slot,)
        assert bytes(consumer.get(desc)) == b"held by a process that dies"
    finally:
        if child.is_alive():
            child.kill()
            child.join(10)


def test_opt_out_and_foreign_descriptors_go_over_ucx(producer: Producer) -> None:
    remote = Consumer(local=False)
    local = Consumer()
    try:
        desc = producer.put(b"over ucx")
        assert bytes(remote.get(desc)) == b"over ucx"
        assert remote.client.stats.connects >= 1
        with pytest.raises(ConfigError, match="local=False"):
            remote.borrow(producer.put(b"y")).__enter__()
        other_host = replace(producer.put(b"other host"), boot_id="not-this-boot")
        assert bytes(local.get(other_host)) == b"other host"
        assert local.client.stats.connects >= 1, "another host's descriptor is read over UCX"
        with pytest.raises(ConfigError, match="not readable"):
            local.borrow(other_host).__enter__()
        # Drain what the refused borrows left READY, so the module's ring does not fill up.
        for d in (desc, other_host):
            assert _state(producer, d) == SlotState.FREE
    finally:
        remote.close()
        local.close()


@pytest.mark.timeout(170)
def test_shipped_local_scenario_passes_and_its_faults_bite(tmp_path: Path) -> None:
    """The shipped same-host scenario: exactly once under a consumer kill and a pause past the lease,
    with the unchanged checker; the pause really expired a borrow and no read went through UCX."""
    out = tmp_path / "run"
    # Throughput is liveness and this box is shared: judge safety and the faults' effect only.
    text = (Path("scenarios") / f"{NAME}.yaml").read_text()
    (tmp_path / f"{NAME}.yaml").write_text(text.replace("  min_throughput: 4/s\n", ""))
    done = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "run", str(tmp_path / f"{NAME}.yaml"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [sc] = json.loads((out / "results.json").read_text())["scenarios"]
    counts = sc["verdict"]["counts"]
    assert counts["delivered"] > 0 and counts["lost"] == counts["duplicated"] == 0
    events_dir = out / NAME / "events"
    consumer_events = [
        json.loads(line) for f in events_dir.glob("consumer-*.jsonl") for line in f.read_text().splitlines()
    ]
    server_events = [json.loads(line) for line in (events_dir / "server.jsonl").read_text().splitlines()]
    assert not [e for e in server_events if e["type"] == "served"], "no read went through the server"
    assert sum(e["type"] == "committed" for e in consumer_events) >= counts["delivered"]
    expired = [e for e in consumer_events if e.get("reason") == "LeaseExpiredError"]
    assert expired and {e["proc"] for e in expired} == {"consumer-1"}, "the pause outlived the lease"
