"""Unit tests for the shared-memory ring: every transition, every error, crash recovery across processes."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing as mp
import os
import signal
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from transport.checksum import checksum
from transport.errors import ConfigError, PayloadTooLargeError, RingError, RingFullError
from transport.ring import (
    HEADER_DTYPE,
    LAYOUT_VERSION,
    ReadCode,
    ReclaimReport,
    SharedRing,
    SlotInfo,
    SlotState,
    WriteResult,
)

SPAWN = mp.get_context("spawn")
WAIT = 20.0  # bound for any wait on a child process (spawn + numpy import is ~1 s on a busy machine)


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
def make_ring() -> Iterator[Callable[..., SharedRing]]:
    rings: list[SharedRing] = []

    def make(slots: int = 4, slot_bytes: int = 256, policy: str = "block") -> SharedRing:
        ring = SharedRing.create(slots, slot_bytes, policy)
        rings.append(ring)
        return ring

    yield make
    for ring in rings:
        ring.close()


@contextmanager
def spawned(target: Callable[..., None], *args: Any) -> Iterator[Any]:
    """A spawned child that is always reaped: joined with a bound, killed if still alive."""
    proc = SPAWN.Process(target=target, args=args, daemon=True)
    proc.start()
    try:
        yield proc
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(WAIT)


def kill_and_reap(proc: Any) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(WAIT)
    assert proc.exitcode == -signal.SIGKILL


def try_lock(name: str, offset: int) -> bool:
    """Non-blocking OFD lock attempt from a fresh open file description."""
    fd = os.open(f"/dev/shm/{name}", os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, offset, 1, 0))
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# Child process bodies (module level so `spawn` can import them).


def _child_read(name: str, slot: int, generation: int, token: int, conn: Any) -> None:
    with SharedRing.attach(name) as ring:
        code, info = ring.begin_read(slot, generation, token, 30.0)
        view = ring.payload_view(slot, info.nbytes)
        data, ok = bytes(view), checksum(view) == info.checksum
        view.release()
        committed = ring.commit_read(slot, generation, token)
        conn.send((int(code), data, ok, committed, os.getpid()))


def _child_hold_lock(name: str, slot: int, ready: Any) -> None:
    ring = SharedRing.attach(name)
    ring._enter(slot)
    ready.set()
    time.sleep(60)


def _child_begin_read(name: str, slot: int, generation: int, token: int, ready: Any) -> None:
    ring = SharedRing.attach(name)
    code, _ = ring.begin_read(slot, generation, token, 3600.0)
    assert code == ReadCode.OK
    ready.set()
    time.sleep(60)


def _child_reserve(name: str, conn: Any) -> None:
    ring = SharedRing.attach(name)
    slot, gen, _ = ring._reserve(0)
    conn.send((slot, gen))
    time.sleep(60)


# ----------------------------------------------------------------------------- create / attach / lifetime


def test_create_defaults_and_identity(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(8, 1000)
    tag = os.environ.get("SLOTWIRE_SHM_TAG") or str(os.getpid())
    assert ring.name.startswith(f"slotwire-{tag}-")
    assert (ring.slots, ring.slot_bytes, ring.policy) == (8, 1000, "block")
    assert len(ring.ring_id) == 32 and int(ring.ring_id, 16) >= 0
    assert len(ring.secret) == 16 and ring.secret_hex == ring.secret.hex()
    assert all(i.state is SlotState.FREE and i.generation == 0 for i in ring.snapshot())
    assert ring.ready_count() == 0
    assert ring.stats() == dict.fromkeys(
        ["writes", "drops", "late_finalise", "reclaimed_reading", "reclaimed_writing"], 0
    )


def test_segment_mode_0600_and_unlinked_on_close() -> None:
    old = os.umask(0)
    try:
        ring = SharedRing.create(2, 64)
    finally:
        os.umask(old)
    path = Path("/dev/shm") / ring.name
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    other = SharedRing.attach(ring.name)
    other.close()
    assert path.exists(), "an attacher must not unlink"
    ring.close()
    assert not path.exists()
    ring.close()  # idempotent
    ring.unlink()  # idempotent


def test_context_manager_and_unlink_idempotent() -> None:
    with SharedRing.create(2, 64) as ring:
        path = Path("/dev/shm") / ring.name
        ring.unlink()
        ring.unlink()
        assert not path.exists()
        ring.write(b"still mapped")
        assert ring.ready_count() == 1
    assert ring.closed
    with pytest.raises(RingError, match="closed"):
        ring.write(b"x")
    with pytest.raises(RingError, match="closed"):
        ring.info(0)


def test_explicit_name_and_collision() -> None:
    name = f"slotwire-{os.environ.get('SLOTWIRE_SHM_TAG') or os.getpid()}-explicit"
    with SharedRing.create(2, 64, "overwrite", name=name) as ring:
        assert ring.name == name
        with pytest.raises(RingError, match="already exists"):
            SharedRing.create(2, 64, name=name)
        with SharedRing.attach(name) as other:
            assert other.policy == "overwrite"
            assert (other.ring_id, other.secret) == (ring.ring_id, ring.secret)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0, 64), "slots"),
        ((-1, 64), "slots"),
        ((2, 0), "slot_bytes"),
        ((2, 64, "drop"), "policy"),
    ],
)
def test_create_rejects_bad_arguments(args: tuple[Any, ...], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SharedRing.create(*args)


def test_create_rejects_bad_name() -> None:
    with pytest.raises(ConfigError, match="name"):
        SharedRing.create(2, 64, name="a/b")


def test_attach_missing() -> None:
    with pytest.raises(RingError, match="no segment named"):
        SharedRing.attach("slotwire-does-not-exist-0")


def _raw_segment(name: str, data: bytes) -> Path:
    path = Path("/dev/shm") / name
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return path


def test_attach_rejects_bad_magic() -> None:
    path = _raw_segment(f"slotwire-{os.environ['SLOTWIRE_SHM_TAG']}-badmagic", b"NOTARING" + bytes(4096))
    try:
        with pytest.raises(RingError, match="bad magic"):
            SharedRing.attach(path.name)
    finally:
        path.unlink()


def test_attach_rejects_short_file() -> None:
    path = _raw_segment(f"slotwire-{os.environ['SLOTWIRE_SHM_TAG']}-short", b"SLOTRING")
    try:
        with pytest.raises(RingError, match="smaller than"):
            SharedRing.attach(path.name)
    finally:
        path.unlink()


def _patch_header(ring: SharedRing, field: str, value: int) -> None:
    offset = HEADER_DTYPE.fields[field][1]
    fmt = {"<u4": "<I", "<u8": "<Q"}[HEADER_DTYPE.fields[field][0].str]
    with open(f"/dev/shm/{ring.name}", "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, value))


def test_attach_rejects_wrong_version(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    _patch_header(ring, "version", LAYOUT_VERSION + 1)
    with pytest.raises(RingError, match=f"layout version {LAYOUT_VERSION + 1}, expected {LAYOUT_VERSION}"):
        SharedRing.attach(ring.name)


def test_attach_rejects_geometry_mismatch(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(4, 256)
    _patch_header(ring, "slots", 5)
    with pytest.raises(RingError, match="geometry"):
        SharedRing.attach(ring.name)
    _patch_header(ring, "slots", 4)
    os.truncate(f"/dev/shm/{ring.name}", os.path.getsize(f"/dev/shm/{ring.name}") - 64)
    with pytest.raises(RingError, match="file size"):
        SharedRing.attach(ring.name)


def test_close_with_live_view_keeps_mapping_and_unlinks(caplog: pytest.LogCaptureFixture) -> None:
    ring = SharedRing.create(2, 64)
    w = ring.write(b"hello")
    view = ring.payload_view(w.slot, w.nbytes)
    arr = np.frombuffer(view, dtype=np.uint8)
    with caplog.at_level(logging.WARNING, logger="transport.ring"):
        ring.close()
    assert not (Path("/dev/shm") / ring.name).exists()
    assert bytes(view) == b"hello" and arr.tobytes() == b"hello"
    assert "views still alive" in caplog.text
    del arr
    view.release()


# ----------------------------------------------------------------------------- write


def test_write_publishes_ready_slot(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"abc")
    assert isinstance(w, WriteResult) and w.dropped is None
    assert (w.generation, w.nbytes, w.checksum) == (1, 3, checksum(b"abc"))
    info = ring.info(w.slot)
    assert isinstance(info, SlotInfo)
    assert (info.state, info.generation, info.nbytes, info.checksum) == (SlotState.READY, 1, 3, w.checksum)
    assert (info.token, info.owner_pid, info.seq) == (0, 0, 1)
    assert bytes(ring.payload_view(w.slot, 3)) == b"abc"
    assert ring.ready_count() == 1
    assert ring.stats()["writes"] == 1


@pytest.mark.parametrize(
    "data",
    [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"memoryview"),
        memoryview(np.arange(5, dtype=np.int32)),
        np.arange(7, dtype=np.float64),
        np.arange(12, dtype=np.int16).reshape(3, 4),
        np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")]),
        np.array(3.5),
        b"",
        np.zeros(0, dtype=np.float32),
    ],
    ids=lambda d: type(d).__name__ + str(getattr(d, "dtype", "")),
)
def test_write_accepts_buffers(make_ring: Callable[..., SharedRing], data: Any) -> None:
    ring = make_ring()
    raw = np.ascontiguousarray(data).tobytes() if isinstance(data, np.ndarray) else bytes(data)
    w = ring.write(data)
    assert (w.nbytes, w.checksum) == (len(raw), checksum(raw))
    assert bytes(ring.payload_view(w.slot, w.nbytes)) == raw
    assert ring.info(w.slot).state is SlotState.READY


def test_write_rejects_non_contiguous_and_non_buffers(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    with pytest.raises(ConfigError, match="C-contiguous"):
        ring.write(np.arange(10)[::2])
    with pytest.raises(ConfigError, match="C-contiguous"):
        ring.write(np.asfortranarray(np.arange(6).reshape(2, 3)))
    with pytest.raises(ConfigError):
        ring.write("text")  # type: ignore[arg-type]
    assert ring.ready_count() == 0 and ring.stats()["writes"] == 0


def test_write_size_limits(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(2, 100)
    w = ring.write(bytes(range(100)))
    assert w.nbytes == 100
    with pytest.raises(PayloadTooLargeError, match="101 bytes"):
        ring.write(bytes(101))
    assert ring.info(1 - w.slot).state is SlotState.FREE  # nothing reserved by the failed write


def test_slots_are_64_byte_aligned_and_views_zero_copy(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(5, 100)
    other = SharedRing.attach(ring.name)
    try:
        for slot in range(ring.slots):
            view = ring.payload_view(slot, 100)
            assert np.frombuffer(view, dtype=np.uint8).ctypes.data % 64 == 0
            view[:4] = b"ab%02d" % slot  # a write through the view is what every mapping sees
            assert bytes(other.payload_view(slot, 4)) == b"ab%02d" % slot
    finally:
        other.close()
    with pytest.raises(ConfigError):
        ring.payload_view(0, 101)
    with pytest.raises(ConfigError):
        ring.payload_view(5, 1)


def test_generation_increments_per_write_and_seq_is_global(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(2, 64)
    seen: dict[int, int] = {}
    for i in range(6):
        w = ring.write(b"%d" % i)
        assert w.generation == seen.get(w.slot, 0) + 1
        seen[w.slot] = w.generation
        assert ring.info(w.slot).seq == i + 1
        assert ring.begin_read(w.slot, w.generation, 1, 10)[0] is ReadCode.OK
        assert ring.commit_read(w.slot, w.generation, 1)
    assert sorted(seen) == [0, 1]  # round-robin: both slots used


# ----------------------------------------------------------------------------- read transitions


def test_begin_read_ok_sets_owner_token_and_lease(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"payload")
    before = time.monotonic()
    code, info = ring.begin_read(w.slot, w.generation, 0xDEADBEEF, 5.0)
    assert code is ReadCode.OK
    assert info.state is SlotState.READING and info.token == 0xDEADBEEF and info.owner_pid == os.getpid()
    assert before + 5.0 <= info.lease_deadline <= time.monotonic() + 5.0
    assert ring.ready_count() == 0


def test_begin_read_codes(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    assert ring.begin_read(w.slot, w.generation + 1, 1, 10)[0] is ReadCode.STALE
    assert ring.begin_read(w.slot, 0, 1, 10)[0] is ReadCode.STALE
    assert ring.begin_read(w.slot, w.generation, 1, 10)[0] is ReadCode.OK
    code, info = ring.begin_read(w.slot, w.generation, 2, 10)
    assert code is ReadCode.BUSY and info.token == 1  # the owner is untouched
    assert ring.begin_read(w.slot, w.generation + 1, 2, 10)[0] is ReadCode.STALE  # whatever the state
    assert ring.commit_read(w.slot, w.generation, 1)
    assert ring.begin_read(w.slot, w.generation, 3, 10)[0] is ReadCode.NOT_READY  # consumed
    assert ring.begin_read((w.slot + 1) % ring.slots, 0, 4, 10)[0] is ReadCode.NOT_READY  # never written


def test_begin_read_writing_slot(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    slot, gen, _ = ring._reserve(0)
    assert ring.info(slot).state is SlotState.WRITING and ring.info(slot).owner_pid == os.getpid()
    assert ring.begin_read(slot, gen, 1, 10)[0] is ReadCode.NOT_READY
    assert ring.begin_read(slot, gen - 1, 1, 10)[0] is ReadCode.STALE
    ring._publish(slot, gen, 0, checksum(b""))
    assert ring.begin_read(slot, gen, 1, 10)[0] is ReadCode.OK


@pytest.mark.parametrize("method", ["begin_read", "begin_read_single_chunk", "commit_read", "release_read"])
@pytest.mark.parametrize("slot", [-1, 4])
def test_slot_out_of_range(make_ring: Callable[..., SharedRing], method: str, slot: int) -> None:
    ring = make_ring(4)
    args = {"begin_read": (slot, 1, 1, 1.0), "begin_read_single_chunk": (slot, 1.0)}.get(method, (slot, 1, 1))
    with pytest.raises(ConfigError, match="out of range"):
        getattr(ring, method)(*args)
    for other in (ring.info, ring.finalise_single_chunk):
        with pytest.raises(ConfigError):
            other(slot)


def test_commit_read_frees_slot(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    ring.begin_read(w.slot, w.generation, 7, 10)
    assert ring.commit_read(w.slot, w.generation, 7)
    info = ring.info(w.slot)
    assert (info.state, info.token, info.owner_pid, info.generation) == (SlotState.FREE, 0, 0, 1)
    assert ring.stats()["late_finalise"] == 0


def test_release_read_returns_to_ready(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    ring.begin_read(w.slot, w.generation, 7, 10)
    assert ring.release_read(w.slot, w.generation, 7)
    info = ring.info(w.slot)
    assert (info.state, info.token, info.generation, info.seq) == (SlotState.READY, 0, 1, 1)
    assert ring.begin_read(w.slot, w.generation, 8, 10)[0] is ReadCode.OK
    assert not ring.commit_read(w.slot, w.generation, 7)  # the previous reader's token is dead
    assert ring.commit_read(w.slot, w.generation, 8)


@pytest.mark.parametrize("finalise", ["commit_read", "release_read"])
def test_late_finalise_is_counted_logged_noop(
    make_ring: Callable[..., SharedRing], finalise: str, caplog: pytest.LogCaptureFixture
) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    ring.begin_read(w.slot, w.generation, 7, 10)
    fn = getattr(ring, finalise)
    with caplog.at_level(logging.DEBUG, logger="transport.ring"):
        assert not fn(w.slot, w.generation, 8)  # wrong token
        assert not fn(w.slot, w.generation + 1, 7)  # wrong generation
    assert ring.info(w.slot).state is SlotState.READING and ring.info(w.slot).token == 7
    assert ring.stats()["late_finalise"] == 2
    assert caplog.text.count("late") == 2
    assert fn(w.slot, w.generation, 7)
    assert not fn(w.slot, w.generation, 7)  # twice: the second is late
    assert ring.stats()["late_finalise"] == 3


def test_single_chunk_serves_reading_slot_again(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    assert ring.begin_read_single_chunk(w.slot, 10)[0] is ReadCode.OK
    code, info = ring.begin_read_single_chunk(w.slot, 10)
    assert code is ReadCode.OK and info.state is SlotState.READING
    assert ring.finalise_single_chunk(w.slot)
    assert ring.info(w.slot).state is SlotState.FREE
    assert not ring.finalise_single_chunk(w.slot)  # the second handler's finalise
    assert ring.stats()["late_finalise"] == 1
    assert ring.begin_read_single_chunk(w.slot, 10)[0] is ReadCode.NOT_READY
    slot, _, _ = ring._reserve(0)
    assert ring.begin_read_single_chunk(slot, 10)[0] is ReadCode.NOT_READY


def test_ready_count(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(4)
    ws = [ring.write(b"%d" % i) for i in range(3)]
    assert ring.ready_count() == 3
    ring.begin_read(ws[0].slot, ws[0].generation, 1, 10)
    assert ring.ready_count() == 2
    ring.release_read(ws[0].slot, ws[0].generation, 1)
    assert ring.ready_count() == 3
    ring.begin_read(ws[1].slot, ws[1].generation, 2, 10)
    ring.commit_read(ws[1].slot, ws[1].generation, 2)
    assert ring.ready_count() == 2
    assert ring.ready_count() == sum(i.state is SlotState.READY for i in ring.snapshot())


# ----------------------------------------------------------------------------- full-ring policies


def test_block_policy_times_out(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(2)
    ring.write(b"a")
    ring.write(b"b")
    start = time.monotonic()
    with pytest.raises(RingFullError, match="no FREE slot"):
        ring.write(b"c", timeout=0.05)
    assert 0.05 <= time.monotonic() - start < 2.0
    with pytest.raises(RingFullError):
        ring.write(b"c", timeout=0)
    assert ring.stats()["writes"] == 2 and ring.ready_count() == 2


def test_block_policy_waits_for_a_commit(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(1)
    w = ring.write(b"a")
    reader = SharedRing.attach(ring.name)  # its own description, as a thread must have

    def consume() -> None:
        time.sleep(0.05)
        reader.begin_read(w.slot, w.generation, 1, 10)
        reader.commit_read(w.slot, w.generation, 1)

    t = threading.Thread(target=consume)
    t.start()
    try:
        w2 = ring.write(b"b", timeout=10)
        assert (w2.slot, w2.generation) == (w.slot, 2)
    finally:
        t.join(WAIT)
        reader.close()


def test_overwrite_recycles_oldest_ready_and_old_descriptor_is_stale(
    make_ring: Callable[..., SharedRing],
) -> None:
    ring = make_ring(3, policy="overwrite")
    a, b, c = (ring.write(x) for x in (b"a", b"b", b"c"))
    # b is being read: only READY slots are recycled, oldest (smallest seq) first.
    assert ring.begin_read(b.slot, b.generation, 9, 10)[0] is ReadCode.OK
    d = ring.write(b"d")
    assert d.dropped == WriteResult(a.slot, a.generation, 1, checksum(b"a"))
    assert (d.slot, d.generation) == (a.slot, a.generation + 1)
    assert ring.begin_read(a.slot, a.generation, 1, 10)[0] is ReadCode.STALE
    assert ring.stats()["drops"] == 1
    e = ring.write(b"e")
    assert e.dropped is not None and e.dropped.slot == c.slot
    # Released b keeps its seq, so it is now the oldest READY slot.
    assert ring.release_read(b.slot, b.generation, 9)
    f = ring.write(b"f")
    assert f.dropped is not None and f.dropped.slot == b.slot
    assert bytes(ring.payload_view(f.slot, 1)) == b"f"
    assert ring.stats()["drops"] == 3


def test_overwrite_with_every_slot_reading_times_out(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(2, policy="overwrite")
    for i in range(2):
        w = ring.write(b"%d" % i)
        ring.begin_read(w.slot, w.generation, i + 1, 10)
    with pytest.raises(RingFullError):
        ring.write(b"x", timeout=0.02)
    assert ring.stats()["drops"] == 0


# ----------------------------------------------------------------------------- reclaim


def test_reclaim_expired_lease(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    live = ring.write(b"y")
    ring.begin_read(w.slot, w.generation, 5, 0.0)
    ring.begin_read(live.slot, live.generation, 6, 3600.0)
    report = ring.reclaim()
    assert report == ReclaimReport(reading=(w.slot,), writing=()) and report.count == 1 and report
    assert ring.info(w.slot).state is SlotState.READY and ring.info(w.slot).token == 0
    assert ring.info(live.slot).state is SlotState.READING
    assert not ring.commit_read(w.slot, w.generation, 5)  # the orphaned reader's commit is a no-op
    assert ring.stats()["reclaimed_reading"] == 1 and ring.stats()["late_finalise"] == 1
    assert not ring.reclaim()


def test_reclaim_leaves_live_writer(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    slot, _, _ = ring._reserve(0)
    assert ring.reclaim() == ReclaimReport()
    assert ring.info(slot).state is SlotState.WRITING


def test_attach_and_read_from_another_process(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(4, 1 << 16)
    data = np.random.default_rng(1).integers(0, 255, 50_000, dtype=np.uint8)
    w = ring.write(data)
    parent, child = SPAWN.Pipe()
    with spawned(_child_read, ring.name, w.slot, w.generation, 42, child) as proc:
        assert parent.poll(WAIT), "child did not answer"
        code, got, ok, committed, pid = parent.recv()
        proc.join(WAIT)
    assert proc.exitcode == 0
    assert (code, ok, committed, pid) == (ReadCode.OK, True, True, proc.pid)
    assert got == data.tobytes()
    assert ring.info(w.slot).state is SlotState.FREE


def test_killed_lock_holder_does_not_leave_slot_locked(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    ready = SPAWN.Event()
    with spawned(_child_hold_lock, ring.name, w.slot, ready) as proc:
        assert ready.wait(WAIT)
        assert not try_lock(ring.name, w.slot), "the child should hold the slot lock"
        assert try_lock(ring.name, (w.slot + 1) % ring.slots), "other slots stay free"
        done = threading.Event()
        waiter = threading.Thread(target=lambda: (ring.info(w.slot), done.set()))
        waiter.start()
        assert not done.wait(0.2), "a transition must wait for the lock"
        kill_and_reap(proc)
        assert done.wait(WAIT), "the kernel must drop the dead holder's lock"
        waiter.join(WAIT)
    assert try_lock(ring.name, w.slot)
    assert ring.begin_read(w.slot, w.generation, 1, 10)[0] is ReadCode.OK


def test_reclaim_after_killed_reader(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring()
    w = ring.write(b"x")
    ready = SPAWN.Event()
    with spawned(_child_begin_read, ring.name, w.slot, w.generation, 77, ready) as proc:
        assert ready.wait(WAIT)
        info = ring.info(w.slot)
        assert (info.state, info.owner_pid, info.token) == (SlotState.READING, proc.pid, 77)
        assert ring.reclaim() == ReclaimReport(), "a live reader with a valid lease keeps its slot"
        kill_and_reap(proc)
    assert ring.reclaim() == ReclaimReport(reading=(w.slot,))
    assert ring.info(w.slot).state is SlotState.READY
    assert ring.begin_read(w.slot, w.generation, 78, 10)[0] is ReadCode.OK
    assert ring.stats()["reclaimed_reading"] == 1


def test_reclaim_after_killed_writer(make_ring: Callable[..., SharedRing]) -> None:
    ring = make_ring(1)
    parent, child = SPAWN.Pipe()
    with spawned(_child_reserve, ring.name, child) as proc:
        assert parent.poll(WAIT)
        slot, gen = parent.recv()
        info = ring.info(slot)
        assert (info.state, info.owner_pid, info.generation) == (SlotState.WRITING, proc.pid, gen)
        assert ring.reclaim() == ReclaimReport()
        with pytest.raises(RingFullError):
            ring.write(b"x", timeout=0)
        kill_and_reap(proc)
    assert ring.reclaim() == ReclaimReport(writing=(slot,))
    info = ring.info(slot)
    assert (info.state, info.generation) == (SlotState.FREE, gen)
    w = ring.write(b"x", timeout=0)
    assert (w.slot, w.generation) == (slot, gen + 1)  # generations never go back
    assert ring.stats()["reclaimed_writing"] == 1


def test_threads_sharing_one_instance(make_ring: Callable[..., SharedRing]) -> None:
    """The per-instance thread lock makes the CAS exclusive between threads of one instance too."""
    ring = make_ring(8)
    committed: list[tuple[int, int]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(base: int) -> None:
        token = base
        try:
            while not stop.is_set():
                for info in ring.snapshot():
                    token += 2
                    code, _ = ring.begin_read(info.slot, info.generation, token, 10)
                    if code is ReadCode.OK:
                        assert ring.commit_read(info.slot, info.generation, token)
                        committed.append((info.slot, info.generation))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=reader, args=(b,)) for b in (1, 2)]
    for t in threads:
        t.start()
    written = [ring.write(b"%d" % i, timeout=10) for i in range(300)]
    deadline = time.monotonic() + WAIT
    while len(committed) < len(written) and time.monotonic() < deadline and not errors:
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join(WAIT)
    assert not errors
    assert sorted(committed) == sorted((w.slot, w.generation) for w in written)


def test_commit_history_answers_for_rewritten_generations() -> None:
    """RESOLVE after a slot was rewritten (and after a server restart) reads the ring's history."""
    from transport.ring import COMMIT_HISTORY

    with SharedRing.create(1, 64) as ring:
        tokens = {}
        for i in range(COMMIT_HISTORY + 2):
            w = ring.write(bytes([i]))
            token = 1000 + i
            assert ring.begin_read(0, w.generation, token, 30.0)[0] == ReadCode.OK
            assert ring.commit_read(0, w.generation, token)
            tokens[w.generation] = token
        last = max(tokens)
        assert ring.info(0).last_commit_token == tokens[last]
        for generation, token in tokens.items():
            expected = token if generation > last - COMMIT_HISTORY else 0
            assert ring.committed_token(0, generation) == expected
        w = ring.write(b"released, never committed")
        assert ring.begin_read(0, w.generation, 7, 30.0)[0] == ReadCode.OK
        assert ring.release_read(0, w.generation, 7)
        assert ring.committed_token(0, w.generation) == 0


# ----------------------------------------------------------------------------- a full ring's writer sleeps


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def _sleeping_writer_registered(ring: SharedRing, batch: int) -> bool:
    """The writer counted itself as a waiter and asked to be woken `batch` frees from now."""
    word, waiters, target = (int(x) for x in ring._wake)
    return waiters == 1 and target == (word + batch) & 0xFFFFFFFF


def _child_blocked_write(name: str, conn: Any) -> None:
    import transport.ring as ring_module

    ring_module.FREE_WAIT_POLL_S = 60.0  # so only a wake-up (never the re-scan interval) ends the wait
    ring = SharedRing.attach(name)
    try:
        w = ring.write(b"late", timeout=60)
        conn.send((w.slot, w.generation, dict(ring.wait_stats)))
    finally:
        ring.close()


def test_full_ring_writer_is_woken_by_a_commit_in_another_process(
    make_ring: Callable[..., SharedRing],
) -> None:
    ring = make_ring(4)  # a quarter of 4 slots: woken at the first free
    written = [ring.write(b"x") for _ in range(4)]
    parent, child = SPAWN.Pipe()
    with spawned(_child_blocked_write, ring.name, child) as proc:
        _wait_for(lambda: _sleeping_writer_registered(ring, 1), "the writer to sleep")
        w = written[2]
        ring.begin_read(w.slot, w.generation, 7, 10)
        assert ring.commit_read(w.slot, w.generation, 7)
        assert ring.wait_stats["wakes"] == 1  # the commit woke the sleeper
        assert parent.poll(WAIT), "the blocked writer never finished"
        slot, generation, stats = parent.recv()
        proc.join(WAIT)
    assert (slot, generation) == (w.slot, w.generation + 1)
    # Woken (or saw the word move just before sleeping), never by the 60 s re-scan interval.
    assert stats["woken"] >= 1 and stats["timeouts"] == 0
    assert int(ring._wake[1]) == 0  # it unregistered


def test_full_ring_writer_is_woken_once_a_quarter_is_free(
    make_ring: Callable[..., SharedRing], monkeypatch: pytest.MonkeyPatch
) -> None:
    import transport.ring as ring_module

    monkeypatch.setattr(ring_module, "FREE_WAIT_POLL_S", 60.0)
    ring = make_ring(8)  # a quarter: 2 slots
    written = [ring.write(b"x") for _ in range(8)]
    writer = SharedRing.attach(ring.name)
    result: list[WriteResult] = []
    t = threading.Thread(target=lambda: result.append(writer.write(b"late", timeout=60)))
    t.start()
    try:
        _wait_for(lambda: _sleeping_writer_registered(ring, 2), "the writer to sleep")
        first, second = written[:2]
        ring.begin_read(first.slot, first.generation, 1, 10)
        assert ring.commit_read(first.slot, first.generation, 1)
        assert ring.wait_stats["wakes"] == 0  # one free of a quarter wakes nobody
        # (A writer still on its way into the futex sees the word move and takes that slot itself.)
        ring.begin_read(second.slot, second.generation, 2, 10)
        assert ring.commit_read(second.slot, second.generation, 2)
        assert ring.wait_stats["wakes"] <= 1
        t.join(WAIT)
        assert not t.is_alive() and len(result) == 1
        assert result[0].slot in (written[0].slot, written[1].slot)
        assert writer.wait_stats["timeouts"] == 0
    finally:
        t.join(WAIT)
        writer.close()


def test_a_wake_up_spends_the_target_so_later_frees_make_no_syscall(
    make_ring: Callable[..., SharedRing],
) -> None:
    """A writer registered as sleeping (waiters 1, target = the next free) but slow to wake: the
    first free wakes it, the frees after it do not wake again until it sets a new target (each wake is
    a futex syscall on the reader's path; they were a tenth of the live pipeline consumer's CPU)."""
    ring = make_ring(4)
    written = [ring.write(b"x") for _ in range(4)]
    ring._add_waiter(1)  # what a writer does before its first sleep: target = the next free
    try:
        for token, w in enumerate(written, 1):
            ring.begin_read(w.slot, w.generation, token, 10)
            assert ring.commit_read(w.slot, w.generation, token)
        assert ring.wait_stats["wakes"] == 1
        ring._set_target(int(ring._wake[0]))  # back to sleep: wake me a quarter (1 slot) from now
        w = ring.write(b"y")
        ring.begin_read(w.slot, w.generation, 9, 10)
        assert ring.commit_read(w.slot, w.generation, 9)
        assert ring.wait_stats["wakes"] == 2
    finally:
        ring._add_waiter(-1)


def test_a_writer_arming_after_its_target_was_reached_takes_it_over_and_wakes_the_others(
    make_ring: Callable[..., SharedRing],
) -> None:
    """Two writers: a free (a release to READY) reaches writer A's target while writer B, which found
    nothing FREE, arms. The freer may spend that target only after B has armed, and B's futex wait
    would then sleep on a target nobody reaches (the review's lost wake-up). Arming over a reached
    target replaces it and wakes the sleepers that asked for it, so nobody waits for the re-scan."""
    ring = make_ring(8)  # batch: 2 frees
    w = ring._wake
    ring._add_waiter(1)
    ring._add_waiter(1)  # A and B
    try:
        word = int(w[0])
        w[2] = word  # A's target, just reached by the last free (not yet spent)
        ring._set_target(word)  # B arms with what it saw
        assert int(w[2]) == (word + 2) & 0xFFFFFFFF  # B's target replaces the reached one ...
        assert ring.wait_stats["wakes"] == 1  # ... and A is woken to arm again
        ring._set_target(word)  # arming again before anything moved: nothing reached, no wake
        assert ring.wait_stats["wakes"] == 1
    finally:
        ring._add_waiter(-1)
        ring._add_waiter(-1)


def test_full_ring_writer_polls_without_futexes(
    make_ring: Callable[..., SharedRing], monkeypatch: pytest.MonkeyPatch
) -> None:
    from transport import futex

    monkeypatch.setattr(futex, "AVAILABLE", False)
    ring = make_ring(1)
    w = ring.write(b"a")
    reader = SharedRing.attach(ring.name)
    t = threading.Thread(
        target=lambda: (
            reader.begin_read(w.slot, w.generation, 1, 10),
            reader.commit_read(w.slot, w.generation, 1),
        )
    )
    try:
        t.start()
        w2 = ring.write(b"b", timeout=30)
        assert (w2.slot, w2.generation) == (w.slot, 2)
        assert ring.wait_stats["woken"] == 0  # no futex was used
    finally:
        t.join(WAIT)
        reader.close()


@pytest.mark.parametrize(
    "size", [1, 4096, (256 << 10) - 1, 256 << 10, (256 << 10) + 1, 3 << 20, (3 << 20) + 17]
)
def test_copy_with_checksum_matches_one_shot(size: int) -> None:
    from transport.checksum import copy_with_checksum

    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    dst = np.zeros(size + 8, dtype=np.uint8)
    assert copy_with_checksum(dst[:size], src) == checksum(src)
    assert np.array_equal(dst[:size], src) and not dst[size:].any()
