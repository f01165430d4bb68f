"""Server + client integration: real ucxx endpoints, a real server process, real shared memory."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from transport import (
    Consumer,
    NotReadyError,
    Producer,
    StaleSlotError,
    UnauthorizedError,
)
from transport import protocol as proto
from transport.descriptor import SlotDescriptor
from transport.ring import SlotState

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def producer() -> Iterator[Producer]:
    with Producer(slots=16, slot_bytes=2 << 20, ports=3) as p:
        yield p


@pytest.fixture(scope="module")
def consumer() -> Iterator[Consumer]:
    c = Consumer(read_timeout=2.0, quarantine=1.0, max_attempts=4, local=False)
    yield c
    c.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("nbytes", [0, 1, 4096, 1 << 20, 2 << 20])
def test_roundtrip_sizes(producer: Producer, consumer: Consumer, nbytes: int) -> None:
    data = np.random.default_rng(nbytes).integers(0, 256, nbytes, dtype=np.uint8)
    desc = producer.put(data)
    got = consumer.get(desc)
    assert got.dtype == np.uint8 and got.shape == (nbytes,)
    assert np.array_equal(got, data)
    assert producer.ring.info(desc.slot).state == SlotState.FREE


def test_descriptor_json_roundtrip(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"hello")
    again = SlotDescriptor.from_dict(desc.to_dict())
    assert again == desc
    assert bytes(consumer.get(again)) == b"hello"


def test_second_read_of_consumed_slot_is_not_delivered_twice(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"once")
    assert bytes(consumer.get(desc)) == b"once"
    reads_before = consumer.client.stats.reads
    with pytest.raises(NotReadyError):
        consumer.get(desc)
    assert consumer.client.stats.reads - reads_before == 1, "a consumed slot is final, not retried"


def test_stale_descriptor_is_not_retried() -> None:
    with Producer(slots=1, slot_bytes=1024, ports=2, policy="overwrite") as p:
        old = p.put(b"old")
        new = p.put(b"new")  # recycles the only slot: `old` is now STALE
        c = Consumer(read_timeout=2.0, max_attempts=5, local=False)
        try:
            reads_before = c.client.stats.reads
            with pytest.raises(StaleSlotError):
                c.get(old)
            assert c.client.stats.reads - reads_before == 1, "STALE must not be retried"
            assert bytes(c.get(new)) == b"new"
        finally:
            c.close()


def test_wrong_capability_is_unauthorized_and_not_retried(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"secret stuff")
    forged = SlotDescriptor.from_dict({**desc.to_dict(), "capability": "00" * 16})
    reads_before = consumer.client.stats.reads
    with pytest.raises(UnauthorizedError):
        consumer.get(forged)
    assert consumer.client.stats.reads - reads_before == 1
    assert bytes(consumer.get(desc)) == b"secret stuff", "the slot stays READY for the real owner"


def test_get_many_reports_failures_per_slot(producer: Producer, consumer: Consumer) -> None:
    descs = [producer.put(bytes([i]) * (i + 1)) for i in range(8)]
    forged = SlotDescriptor.from_dict({**descs[3].to_dict(), "capability": "11" * 16})
    batch = consumer.get_many([*descs[:3], forged, *descs[4:]])
    assert [f.index for f in batch.failures] == [3]
    assert batch.failures[0].reason == "unauthorized"
    for i, payload in enumerate(batch.payloads):
        if i != 3:
            assert payload is not None and bytes(payload) == bytes([i]) * (i + 1)
    assert bytes(consumer.get(descs[3])) == bytes([3]) * 4


def test_a_descriptor_opens_its_own_slot_and_generation_only() -> None:
    """The capability of slot 3 opens neither slot 4 nor slot 3 at another generation (with the old
    ring-wide secret both were readable), and neither the descriptor nor its repr holds the ring key."""
    with Producer(slots=8, slot_bytes=1024, ports=2) as p:
        c = Consumer(read_timeout=2.0, max_attempts=4, local=False)
        try:
            descs = {d.slot: d for d in (p.put(bytes([i]) * 8) for i in range(5))}
            three, four = descs[3], descs[4]
            assert p.ring.secret_hex not in json.dumps(three.to_dict()) + repr(three)
            assert three.capability not in repr(three)
            reads = c.client.stats.reads
            for forged in (replace(three, slot=4), replace(three, generation=three.generation + 1)):
                with pytest.raises(UnauthorizedError):
                    c.get(forged)
            assert c.client.stats.reads - reads == 2, "UNAUTHORIZED is never retried"
            assert c.client.stats.quarantines == 0, "nor blamed on a port"
            assert p.ring.info(4).state == SlotState.READY, "slot 4 was not touched"
            assert bytes(c.get(four)) == bytes([4]) * 8 and bytes(c.get(three)) == bytes([3]) * 8
        finally:
            c.close()


def test_single_chunk_descriptors_do_not_carry_the_ring_key() -> None:
    """The single-chunk protocol names no generation, so its capability opens one slot at any generation;
    it still opens no other slot and is not the ring key."""
    with Producer(slots=4, slot_bytes=1024, ports=1, protocol="single-chunk") as p:
        c = Consumer(read_timeout=2.0, max_attempts=2, protocol="single-chunk")
        try:
            d0, _d1 = p.put(b"zero"), p.put(b"one")
            assert p.ring.secret_hex not in json.dumps(d0.to_dict())
            with pytest.raises(UnauthorizedError):
                c.get(replace(d0, slot=1))
            assert bytes(c.get(d0)) == b"zero"
        finally:
            c.close()


def test_dead_port_is_quarantined_and_skipped(producer: Producer) -> None:
    dead = _free_port()
    c = Consumer(read_timeout=1.0, quarantine=30.0, max_attempts=4, connect_timeout=1.0, local=False)
    try:
        for i in range(6):
            desc = producer.put(bytes([i]) * 100)
            desc = SlotDescriptor.from_dict({**desc.to_dict(), "ports": [dead, *producer.ports]})
            assert bytes(c.get(desc)) == bytes([i]) * 100
        assert c.client.stats.quarantines == 1, "the dead port is tried once, then skipped"
    finally:
        c.close()


async def _raw_exchange(port: int, message: bytes | np.ndarray) -> tuple[bytes | None, bool]:
    """Send raw bytes with ucxx; return the reply (if any) and whether the server closed on us."""
    import ucxx

    from transport.ucx import init_in_loop

    init_in_loop()
    ep = await asyncio.wait_for(ucxx.create_endpoint("127.0.0.1", port), 5)
    try:
        await asyncio.wait_for(ep.send(np.frombuffer(bytes(message), dtype=np.uint8)), 5)
        reply = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
        try:
            await asyncio.wait_for(ep.recv(reply), 3)
        except Exception:
            return None, True
        closed = False
        try:
            await asyncio.wait_for(ep.recv(np.zeros(proto.FRAME_SIZE, dtype=np.uint8)), 1)
        except Exception:
            closed = True
        return reply.tobytes(), closed
    finally:
        ep.abort()


def _run_raw(port: int, message: bytes) -> tuple[bytes | None, bool]:
    from transport.syncloop import SharedLoop

    return SharedLoop.get().run(_raw_exchange(port, message), 30)


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00" * proto.FRAME_SIZE,
        b"not a frame",
        bytes(range(256)) * 4096,  # oversized: 1 MiB where a 128-byte frame is expected
    ],
    ids=["zeros", "short", "oversized"],
)
def test_garbage_never_takes_the_server_down(producer: Producer, consumer: Consumer, garbage: bytes) -> None:
    reply, closed = _run_raw(producer.ports[0], garbage)
    if reply is not None:
        frame = proto.decode(reply)
        assert frame.type == proto.MsgType.STATUS and frame.code == proto.Status.BAD_REQUEST
    assert closed
    desc = producer.put(b"still serving")
    assert bytes(consumer.get(desc)) == b"still serving"


def test_unauthenticated_raw_request_gets_status_and_close(producer: Producer, consumer: Consumer) -> None:
    desc = producer.put(b"x")
    request = proto.encode(proto.request(desc.slot, desc.generation, 1, b"\x01" * 16))
    reply, closed = _run_raw(producer.ports[1], request)
    assert reply is not None and proto.decode(reply).code == proto.Status.UNAUTHORIZED
    assert closed
    assert bytes(consumer.get(desc)) == b"x"


def test_lost_committed_is_resolved_not_duplicated(tmp_path: Path) -> None:
    fired = tmp_path / "fired"
    options = {
        "link_wrapper": "link_faults:drop_committed",
        "link_wrapper_args": {"count": 3, "fired_path": str(fired)},
    }
    with Producer(slots=4, slot_bytes=4096, ports=2, server_options=options) as p:
        c = Consumer(read_timeout=1.0, quarantine=0.1, max_attempts=3, local=False)
        try:
            for i in range(5):
                desc = p.put(bytes([i]) * 10)
                assert bytes(c.get(desc)) == bytes([i]) * 10
                assert p.ring.info(desc.slot).state == SlotState.FREE
            assert len(fired.read_text().splitlines()) == 3, "the COMMITTED reply was really dropped"
            assert c.client.stats.resolves == 3
            assert c.client.stats.in_doubt == 0
        finally:
            c.close()


def test_idle_server_and_stop_are_bounded() -> None:
    p = Producer(slots=2, slot_bytes=1024, ports=2)
    try:
        c = Consumer(read_timeout=2.0, local=False)
        try:
            assert bytes(c.get(p.put(b"warm"))) == b"warm"  # leaves a pooled idle endpoint
            server = psutil.Process(p.server.pid)
            server.cpu_percent(None)
            time.sleep(2.0)
            assert server.cpu_percent(None) < 25.0, "idle server must not busy-spin"
        finally:
            c.close()
    finally:
        started = time.monotonic()
        p.close()
        assert time.monotonic() - started < 6.0


def test_idle_eviction_and_max_age_replace_pooled_endpoints() -> None:
    with Producer(slots=4, slot_bytes=1024, ports=1, idle_evict=0.5) as p:
        evicted = Consumer(read_timeout=2.0, max_age=30.0, quarantine=30.0, local=False)
        aged = Consumer(read_timeout=2.0, max_age=0.3, quarantine=30.0, local=False)
        try:
            for c in (evicted, aged):
                assert bytes(c.get(p.put(b"first"))) == b"first"
            time.sleep(1.2)  # past the server's idle eviction and the second client's max age
            for c in (evicted, aged):
                assert bytes(c.get(p.put(b"second"))) == b"second"
                assert c.client.stats.connects == 2, "the stale pooled endpoint was replaced"
                assert c.client.stats.quarantines == 0, "replacing it is not a port failure"
        finally:
            evicted.close()
            aged.close()


def test_data_packer_mixin_fetches_batches(producer: Producer, consumer: Consumer) -> None:
    from transport import DataPackerMixin

    class Packer(DataPackerMixin):
        def __init__(self) -> None:
            self.slot_client = consumer.client

    from transport.syncloop import SharedLoop

    descs = [producer.put(bytes([i]) * 64) for i in range(5)]
    packer = Packer()
    batch = SharedLoop.get().run(packer.fetch_slots(descs), 30)
    assert batch.ok and [bytes(x) for x in batch.delivered()] == [bytes([i]) * 64 for i in range(5)]
    assert packer.last_fetch_seconds > 0 and len(batch.seconds) == 5


def test_threads_share_the_consumer_loop(producer: Producer, consumer: Consumer) -> None:
    """Several trainer threads call get at once: each drives the loop or hands over, none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    payloads = [bytes([i % 251]) * (1 + 97 * i) for i in range(48)]
    descs = [producer.put(p) for p in payloads[:12]]  # the ring has 16 slots: publish in waves
    got: list[bytes] = []
    with ThreadPoolExecutor(4) as pool:
        for wave in range(4):
            descs = [producer.put(p) for p in payloads[wave * 12 : wave * 12 + 12]] if wave else descs
            got += [bytes(a) for a in pool.map(consumer.get, descs)]
    assert got == payloads


def test_consumers_opened_and_closed_leave_nothing_running(producer: Producer) -> None:
    """A trainer that makes a Consumer per epoch must not collect threads or idle CPU."""
    me = psutil.Process()

    def one_epoch() -> None:
        c = Consumer(read_timeout=2.0, local=False)
        try:
            assert bytes(c.get(producer.put(b"epoch"))) == b"epoch"
        finally:
            c.close()

    one_epoch()
    threads = me.num_threads()
    for _ in range(4):
        one_epoch()
    assert me.num_threads() == threads
    time.sleep(0.3)
    me.cpu_percent(None)
    time.sleep(1.0)
    assert me.cpu_percent(None) < 25.0, "closed consumers must not keep anything spinning"


def test_get_many_reads_batches_and_fails_bad_slots_alone() -> None:
    """32 slots of mixed sizes (inline, separate payload, empty) and three bad descriptors: the good
    ones commit in batched exchanges (32 + 3 entries), each bad one fails alone with its reason."""
    from dataclasses import replace

    producer = Producer(slots=48, slot_bytes=1 << 20, ports=2)
    c = Consumer(read_timeout=2.0, local=False, concurrency=1)
    try:
        sizes = [4096] * 28 + [0, 16 << 10, (16 << 10) + 1, 1 << 20]
        data = [np.full(n, i, dtype=np.uint8) for i, n in enumerate(sizes)]
        descs = [producer.put(d) for d in data[:14]]
        consumed = producer.put(b"eaten")
        assert bytes(c.get(consumed)) == b"eaten"
        y = producer.put(b"y")
        stale = replace(y, generation=10**6, capability=producer._ring_key.capability(y.slot, 10**6).hex())
        bad = [replace(producer.put(b"x"), capability="00" * 16), stale]
        descs += [producer.put(d) for d in data[14:]]
        before = c.client.stats.reads
        result = c.get_many([*descs[:5], bad[0], consumed, *descs[5:], bad[1]])
        assert [(f.index, f.reason) for f in result.failures] == [
            (5, "unauthorized"),
            (6, "consumed"),
            (34, "stale"),
        ]
        got = [p for p in result.payloads if p is not None]
        assert len(got) == 32 and all(np.array_equal(g, d) for g, d in zip(got, data, strict=True))
        assert c.client.stats.reads - before == 35 and set(result.attempts) == {1}
        assert all(producer.ring.info(d.slot).state == SlotState.FREE for d in descs)
    finally:
        c.close()
        producer.close()
