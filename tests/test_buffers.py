"""Large receive buffers are reused only when nothing holds them (transport.buffers)."""

from __future__ import annotations

import weakref

import numpy as np
import pytest

from transport import Consumer, Producer
from transport.buffers import ReceiveBuffers

pytestmark = pytest.mark.timeout(120)

MIN = 1 << 10  # a small recycling threshold keeps the unit tests light


def test_small_payloads_are_plain_arrays() -> None:
    pool = ReceiveBuffers(retain_bytes=1 << 20, min_bytes=MIN)
    small = pool.take(MIN - 1)
    assert small.base is None and small.nbytes == MIN - 1 and pool.kept_bytes == 0


def test_a_dropped_payload_buffer_is_reused_a_held_one_never() -> None:
    pool = ReceiveBuffers(retain_bytes=1 << 20, min_bytes=MIN)
    first = pool.take(4 * MIN)
    first[:] = 1
    base = id(first.base)  # an id, not a reference: a reference would hold the buffer
    second = pool.take(4 * MIN)  # `first` is held: a new buffer
    assert id(second.base) != base and pool.reused == 0
    view = first[10:20]
    del first
    third = pool.take(4 * MIN)  # a view of it is still alive: not reused either
    assert id(third.base) != base and int(view.sum()) == 10
    del view
    fourth = pool.take(3 * MIN)  # nothing holds it now: reused, as exactly the size asked for
    assert id(fourth.base) == base and fourth.nbytes == 3 * MIN and pool.reused == 1


def test_memoryviews_and_frombuffer_views_also_hold_the_buffer() -> None:
    pool = ReceiveBuffers(retain_bytes=1 << 20, min_bytes=MIN)
    payload = pool.take(2 * MIN)
    base = id(payload.base)
    exported = memoryview(payload)
    wrapped = np.frombuffer(exported, dtype=np.uint8)
    del payload, exported
    assert id(pool.take(2 * MIN).base) != base
    del wrapped
    assert id(pool.take(2 * MIN).base) == base


def test_retention_is_capped_and_a_much_bigger_buffer_is_not_lent_for_a_small_read() -> None:
    pool = ReceiveBuffers(retain_bytes=10 * MIN, min_bytes=MIN)
    held = [pool.take(4 * MIN) for _ in range(3)]  # the third does not fit under the cap
    assert pool.kept_bytes == 8 * MIN and held[2].base is None
    big_base = id(held[0].base)
    del held
    assert id(pool.take(MIN).base) != big_base  # 4x the size asked for: allocate instead
    # Free buffers make room for a new size, oldest first.
    pool.take(9 * MIN)
    assert pool.kept_bytes <= 10 * MIN


def test_a_forgotten_buffer_is_never_lent_again() -> None:
    pool = ReceiveBuffers(retain_bytes=1 << 20, min_bytes=MIN)
    payload = pool.take(2 * MIN)
    base = weakref.ref(payload.base)
    pool.forget(payload)
    del payload
    assert base() is None  # the pool let go of it: freed with its last payload
    pool.take(2 * MIN)
    assert pool.reused == 0


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="retain_bytes"):
        ReceiveBuffers(retain_bytes=-1)


def test_consumer_reuses_a_large_buffer_and_every_payload_stays_intact() -> None:
    """Real producer, real ucxx: 40 MiB gets reuse a buffer only once the caller dropped its payload."""
    size = 40 << 20
    rng = np.random.default_rng(5)
    datas = [rng.integers(0, 256, size, dtype=np.uint8) for _ in range(3)]
    with Producer(slots=3, slot_bytes=size, ports=1) as producer:
        consumer = Consumer(read_timeout=10.0, local=False)
        try:
            descs = [producer.put(d) for d in datas]
            kept = consumer.get(descs[0])  # held by the test for the whole run
            second = consumer.get(descs[1])
            assert consumer.client._buffers.reused == 0
            del second
            third = consumer.get(descs[2])  # the second's buffer is free again: reused
            assert consumer.client._buffers.reused == 1
            assert np.array_equal(kept, datas[0]) and np.array_equal(third, datas[2])
        finally:
            consumer.close()


def test_a_failed_read_gives_its_buffer_up() -> None:
    """A STALE read had its 40 MiB receive posted: that buffer leaves the pool instead of being lent."""
    from transport import StaleSlotError

    size = 40 << 20
    with Producer(slots=1, slot_bytes=size, ports=1) as producer:
        consumer = Consumer(read_timeout=10.0, local=False)
        try:
            old = producer.put(np.ones(size, dtype=np.uint8))
            assert int(consumer.get(old)[0]) == 1  # dropped at once: its buffer is free to lend
            assert consumer.client._buffers.kept_bytes == size
            producer.put(np.zeros(size, dtype=np.uint8))  # the slot's next generation
            with pytest.raises(StaleSlotError):
                consumer.get(old)
            pools = consumer.client._buffers
            assert pools.reused == 1 and pools.kept_bytes == 0  # lent to the failed read, then given up
        finally:
            consumer.close()
