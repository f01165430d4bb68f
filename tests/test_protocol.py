"""Wire format and the sans-IO read machines, wired together in memory (no network, no ring)."""

from __future__ import annotations

import hmac
import json
import os
import struct
from dataclasses import dataclass, replace
from enum import IntEnum
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transport import protocol as p
from transport.checksum import checksum
from transport.errors import (
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    NotReadyError,
    ProtocolError,
    ReadTimeoutError,
    ServerError,
    StaleSlotError,
    TruncatedError,
    UnauthorizedError,
)

SECRET = bytes(range(16))  # the ring key
RING_ID = bytes(range(16, 32))
KEY = p.RingKey(SECRET, RING_ID)
OTHER_SECRET = bytes(16)  # a capability that opens nothing


# -- an in-memory ring with the contract of transport.ring.SharedRing ---------------------------------


class SlotState(IntEnum):
    FREE = 0
    WRITING = 1
    READY = 2
    READING = 3


@dataclass
class Info:
    state: SlotState = SlotState.FREE
    generation: int = 0
    nbytes: int = 0
    checksum: int = 0
    token: int = 0
    last_commit_token: int = 0


class FakeRing:
    """Just the slot state machine: CAS transitions, generations, fencing tokens."""

    def __init__(self, slots: int = 4, remembers_committer: bool = True) -> None:
        self.secret = SECRET
        self.slots = slots
        self.meta = [Info() for _ in range(slots)]
        self.data = [b""] * slots
        self.remembers_committer = remembers_committer
        self.late_finalise = 0

    def write(self, slot: int, data: bytes) -> tuple[int, int, int]:
        m = self.meta[slot]
        assert m.state in (SlotState.FREE, SlotState.READY)  # READY: `overwrite` recycles it
        m.generation += 1
        m.state, m.nbytes, m.checksum, m.token, m.last_commit_token = (
            SlotState.READY,
            len(data),
            checksum(data),
            0,
            0,
        )
        self.data[slot] = data
        return m.generation, m.nbytes, m.checksum

    def begin_read(self, slot: int, generation: int, token: int, lease: float) -> tuple[int, Info]:
        m = self.meta[slot]
        if m.generation != generation:
            return 1, replace(m)
        if m.state is SlotState.READING:
            return 3, replace(m)
        if m.state is not SlotState.READY:
            return 2, replace(m)
        m.state, m.token = SlotState.READING, token
        return 0, replace(m)

    def begin_read_single_chunk(self, slot: int, lease: float) -> tuple[int, Info]:
        m = self.meta[slot]
        if m.state not in (SlotState.READY, SlotState.READING):
            return 2, replace(m)
        m.state = SlotState.READING
        return 0, replace(m)

    def _owned(self, slot: int, generation: int, token: int) -> bool:
        m = self.meta[slot]
        ok = m.state is SlotState.READING and (m.generation, m.token) == (generation, token)
        self.late_finalise += not ok
        return ok

    def commit_read(self, slot: int, generation: int, token: int) -> bool:
        if not self._owned(slot, generation, token):
            return False
        m = self.meta[slot]
        m.state, m.token = SlotState.FREE, 0
        m.last_commit_token = token if self.remembers_committer else 0
        return True

    def release_read(self, slot: int, generation: int, token: int) -> bool:
        if not self._owned(slot, generation, token):
            return False
        self.meta[slot].state, self.meta[slot].token = SlotState.READY, 0
        return True

    def finalise_single_chunk(self, slot: int) -> bool:
        if self.meta[slot].state is not SlotState.READING:
            return False
        self.meta[slot].state = SlotState.FREE
        return True

    def info(self, slot: int) -> Info:
        return replace(self.meta[slot])

    def payload_view(self, slot: int, nbytes: int) -> memoryview:
        return memoryview(self.data[slot])[:nbytes]


# -- the I/O loops the server and client modules run, minus the I/O -------------------------------


def drive(srv: p.ServerRead, action: p.ServerAction, ring: FakeRing, wire: list[bytes]) -> p.ServerAction:
    """Perform server actions until the machine waits for the client (AwaitCommit) or is over."""
    while True:
        match action:
            case p.BeginRead(slot, generation, token, single_chunk):
                if single_chunk:
                    code, info = ring.begin_read_single_chunk(slot, lease=30.0)
                else:
                    code, info = ring.begin_read(slot, generation, token, lease=30.0)
                action = srv.on_begin_read(code, info.generation, info.nbytes, info.checksum)
            case p.SendFrame(_, data):
                wire.append(data)
                action = srv.on_sent()
            case p.SendStatus(_, data, slot, nbytes, True):
                wire.append(bytes(p.inline_message(data, ring.payload_view(slot, nbytes))))
                action = srv.on_sent()
            case p.SendStatus(_, data, slot, nbytes, False):
                wire.append(data)
                if nbytes:
                    wire.append(bytes(ring.payload_view(slot, nbytes)))
                action = srv.on_sent()
            case p.Finalise("commit", slot, generation, token):
                action = srv.on_finalised(ring.commit_read(slot, generation, token))
            case p.Finalise("release", slot, generation, token):
                action = srv.on_finalised(ring.release_read(slot, generation, token))
            case p.Finalise("single-chunk", slot, _, _):
                action = srv.on_finalised(ring.finalise_single_chunk(slot))
            case p.Fence(slot, generation, token):
                ring.release_read(slot, generation, token)
                info = ring.info(slot)
                action = srv.on_fenced(info.generation, info.state, info.last_commit_token)
            case _:
                return action


@dataclass
class Net:
    ring: FakeRing
    log: p.CommitLog
    protocol: p.Protocol = "commit"

    def server(self) -> p.ServerRead:
        return p.server_machine(self.protocol)(KEY, self.log, slots=self.ring.slots)  # type: ignore[return-value]

    def serve(self, *frames: p.Frame | bytes) -> tuple[p.ServerRead, p.ServerAction, list[bytes]]:
        """A fresh handler receives `frames` (the first is the request); returns what it sent."""
        srv, wire = self.server(), []
        action = drive(srv, srv.on_request(_raw(frames[0])), self.ring, wire)
        for frame in frames[1:]:
            assert isinstance(action, p.AwaitCommit)
            action = drive(srv, srv.on_commit(_raw(frame)), self.ring, wire)
        return srv, action, wire

    def client(self, slot: int, token: int | None = None, secret: bytes | None = None) -> p.ClientRead:
        m = self.ring.meta[slot]
        return p.client_machine(self.protocol)(  # type: ignore[return-value]
            slot,
            m.generation,
            p.new_token() if token is None else token,
            KEY.issue(slot, m.generation, self.protocol) if secret is None else secret,
            m.nbytes,
            m.checksum,
        )


def _raw(frame: p.Frame | bytes) -> bytes:
    return p.encode(frame) if isinstance(frame, p.Frame) else frame


def new_net(protocol: p.Protocol = "commit", capacity: int = 64, **ring_kw: bool) -> Net:
    ring = FakeRing(**ring_kw)
    ring.write(0, b"payload-zero" * 100)
    ring.write(1, b"one")
    return Net(ring, p.CommitLog(capacity), protocol)


def fetch_until_commit(net: Net, client: p.ClientRead) -> tuple[p.ServerRead, p.ServerAction, p.Frame | None]:
    """Request, status, payload, verified: returns the server waiting for COMMIT and the COMMIT."""
    srv = net.server()
    wire: list[bytes] = []
    action = drive(srv, srv.on_request(p.encode(client.request_frame())), net.ring, wire)
    nbytes = client.on_status(wire[0])
    payload = wire[1] if nbytes else b""
    assert len(payload) == nbytes
    return srv, action, client.on_payload(checksum(payload))


# -- frames -------------------------------------------------------------------------------------------

ALL_FRAMES = [
    p.request(3, 7, 99, KEY.capability(3, 7)),
    p.single_chunk_request(5, KEY.single_chunk_capability(5).hex()),
    p.status(p.Status.OK, slot=3, generation=7, token=99, nbytes=p.MAX_PAYLOAD, checksum=(1 << 64) - 1),
    p.status(p.Status.ERROR, message="é" * 24),
    p.commit(3, 7, 99, KEY.capability(3, 7)),
    p.committed(3, 7, 99),
    p.committed(3, 7, 99, p.Status.ERROR, "commit refused"),
    p.resolve((1 << 32) - 1, (1 << 64) - 1, (1 << 64) - 1, SECRET),
    *(p.resolved(r, 3, 7, 99) for r in p.Resolution),
    p.request(1, 2, 3, KEY.capability(1, 2))._replace(flags=0xFFFF),
    *(p.Frame(t, 0, 4, 0, 99) for t in (p.MsgType.REQUEST_BATCH, p.MsgType.STATUS_BATCH)),
    *(p.Frame(t, 0, 4, 0, 99) for t in (p.MsgType.COMMIT_BATCH, p.MsgType.COMMITTED_BATCH)),
]


@pytest.mark.parametrize("frame", ALL_FRAMES, ids=lambda f: f"{f.type.name}-{f.code}")
def test_round_trip(frame: p.Frame) -> None:
    data = p.encode(frame)
    assert len(data) == p.FRAME_SIZE
    assert data[:4] == p.MAGIC and data[-4:] == p.TRAILER
    assert p.decode(data) == frame
    assert p.decode(bytearray(data)) == frame
    assert p.decode(memoryview(data)) == frame
    assert p.decode(np.frombuffer(data, dtype=np.uint8).copy()) == frame


def test_every_type_has_a_round_trip() -> None:
    assert {f.type for f in ALL_FRAMES} == set(p.MsgType)


def test_decoded_codes_are_typed() -> None:
    assert p.decode(p.encode(p.status(p.Status.BUSY))).code is p.Status.BUSY
    assert p.decode(p.encode(p.resolved(p.Resolution.UNKNOWN, 1, 2, 3))).code is p.Resolution.UNKNOWN


def _patch(data: bytes, offset: int, fmt: str, value: object) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


GOOD = p.encode(p.status(p.Status.OK, slot=1, generation=2, token=3, nbytes=4, checksum=5))


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"", "wrong size: 0 bytes"),
        (GOOD[:100], "wrong size: 100 bytes"),
        (GOOD + b"\0", "wrong size: 129 bytes"),
        (b"XXXX" + GOOD[4:], "bad magic"),
        (bytes(p.FRAME_SIZE), "empty buffer"),
        (GOOD[:60] + bytes(p.FRAME_SIZE - 60), "missing trailer magic: truncated"),
        (_patch(GOOD, 4, "<B", 0), "unknown message type 0"),
        (_patch(GOOD, 4, "<B", 99), "unknown message type 99"),
        (_patch(GOOD, 5, "<B", 7), "code 7 not valid for STATUS"),
        (
            _patch(p.encode(p.request(1, 2, 3, KEY.capability(1, 2))), 5, "<B", 1),
            "code 1 not valid for REQUEST",
        ),
        (_patch(p.encode(p.resolved(p.Resolution.COMMITTED, 1, 2, 3)), 5, "<B", 3), "not valid for RESOLVED"),
        (_patch(GOOD, 32, "<Q", p.MAX_PAYLOAD + 1), "over MAX_PAYLOAD"),
        (_patch(GOOD, 64, "<2s", b"\xff\xfe"), "not valid utf-8"),
        (_patch(GOOD, 64, "<3s", b"a\0b"), "NUL byte"),
    ],
)
def test_decode_rejects(data: bytes, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        p.decode(data)


def test_decode_rejects_what_is_not_a_buffer() -> None:
    with pytest.raises(ProtocolError, match="bytes-like"):
        p.decode("not bytes" * 20)  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        p.decode(np.zeros(256, dtype=np.uint8)[::2])  # non-contiguous


def test_short_message_in_a_zeroed_buffer_is_reported_truncated() -> None:
    """ucxx accepts a shorter message silently: the receiver's zeroed buffer keeps a blank trailer."""
    buf = bytearray(p.FRAME_SIZE)
    buf[:90] = GOOD[:90]
    with pytest.raises(ProtocolError, match="truncated"):
        p.decode(buf)


@pytest.mark.parametrize(
    ("frame", "words"),
    [
        (p.Frame(p.MsgType.REQUEST, slot=1 << 32), "slot=4294967296 out of range"),
        (p.Frame(p.MsgType.REQUEST, token=-1), "token=-1 out of range"),
        (p.Frame(p.MsgType.REQUEST, generation=1 << 64), "generation=.* out of range"),
        (p.Frame(p.MsgType.STATUS, checksum=1 << 64), "checksum=.* out of range"),
        (p.Frame(p.MsgType.STATUS, nbytes=p.MAX_PAYLOAD + 1), "over MAX_PAYLOAD"),
        (p.Frame(p.MsgType.STATUS, nbytes=-1), "nbytes=-1"),
        (p.Frame(p.MsgType.STATUS, flags=1 << 16), "flags=65536"),
        (p.Frame(p.MsgType.STATUS, slot=1.5), "slot=1.5"),  # type: ignore[arg-type]
        (p.Frame(p.MsgType.STATUS, code=9), "code 9 not valid for STATUS"),
        (p.Frame(p.MsgType.COMMIT, code=1), "code 1 not valid for COMMIT"),
        (p.Frame(42), "unknown message type"),  # type: ignore[arg-type]
        (p.Frame(p.MsgType.REQUEST, capability=b"short"), "capability must be 16 bytes"),
        (p.Frame(p.MsgType.STATUS, message="x" * 49), "message is 49 bytes"),
        (p.Frame(p.MsgType.STATUS, message="a\0b"), "NUL"),
        (p.Frame(p.MsgType.STATUS, message="\ud800"), "utf-8"),
    ],
)
def test_encode_validates(frame: p.Frame, words: str) -> None:
    with pytest.raises(ProtocolError, match=words):
        p.encode(frame)


def test_status_helper_clips_its_message_on_a_character_boundary() -> None:
    frame = p.status(p.Status.ERROR, message="€" * 40 + "\0")
    assert frame.message == "€" * 16  # 3 bytes each: 48 bytes
    assert p.decode(p.encode(frame)) == frame


def test_capability_matches() -> None:
    frame = p.request(1, 1, 1, SECRET)
    assert p.capability_matches(frame, SECRET)
    assert p.capability_matches(frame, SECRET.hex())
    assert not p.capability_matches(frame, OTHER_SECRET)
    assert not p.capability_matches(frame, b"short")
    assert not p.capability_matches(frame, "not hex")
    with pytest.raises(ConfigError):
        p.request(1, 1, 1, b"short")


def test_a_capability_opens_one_slot_at_one_generation() -> None:
    """HMAC(ring key, ring id | slot | generation): nothing else verifies, and the key is not it."""
    cap = KEY.capability(3, 7)
    assert len(cap) == p.CAPABILITY_SIZE and cap != SECRET
    assert cap == hmac.digest(SECRET, struct.pack("<B16sIQ", 1, RING_ID, 3, 7), "sha256")[:16], (
        "as documented"
    )
    assert KEY.admits(p.request(3, 7, 1, cap)) and KEY.admits(p.commit(3, 7, 1, cap))
    assert not KEY.admits(p.request(4, 7, 1, cap)), "another slot"
    assert not KEY.admits(p.request(3, 8, 1, cap)), "another generation"
    assert not KEY.admits(p.request(3, 7, 1, p.RingKey(SECRET, bytes(16)).capability(3, 7))), "another ring"
    assert not KEY.admits(p.request(3, 7, 1, p.RingKey(OTHER_SECRET, RING_ID).capability(3, 7))), (
        "another key"
    )
    assert not KEY.admits(p.single_chunk_request(3, cap)), "a commit capability is not a single-chunk one"
    any_gen = KEY.single_chunk_capability(3)
    assert KEY.admits(p.single_chunk_request(3, any_gen)) and not KEY.admits(p.request(3, 0, 1, any_gen))
    assert SECRET.hex() not in repr(KEY) and RING_ID.hex() in repr(KEY)


def test_a_commit_must_carry_the_reads_capability() -> None:
    net = new_net()
    client = net.client(0)
    request = client.request_frame()
    commit = p.commit(0, request.generation, request.token, KEY.capability(1, request.generation))
    srv, action, wire = net.serve(request, commit)
    assert isinstance(action, p.Close) and not srv.committed
    assert p.decode(wire[-1]).code == p.Status.UNAUTHORIZED


def test_new_token_is_a_nonzero_u64() -> None:
    tokens = {p.new_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(0 < t < 1 << 64 for t in tokens)


def test_a_forked_child_draws_other_tokens_than_its_parent() -> None:
    """Tokens come from a per-process PRNG: a forked child must not replay the parent's sequence
    (two readers with one token would fence each other's reads as their own)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report its next tokens and leave at once
        os.write(write, json.dumps([p.new_token() for _ in range(4)]).encode())
        os._exit(0)
    os.close(write)
    try:
        child = json.loads(os.read(read, 4096))
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert len(child) == 4 and not set(child) & {p.new_token() for _ in range(4)}


# -- hypothesis: decode never raises anything but ProtocolError ------------------------------------

VALID_CODES: dict[p.MsgType, list[int]] = {
    t: [0]
    for t in (
        p.MsgType.REQUEST,
        p.MsgType.COMMIT,
        p.MsgType.RESOLVE,
        p.MsgType.LEGACY_REQUEST,
        p.MsgType.REQUEST_BATCH,
        p.MsgType.STATUS_BATCH,
        p.MsgType.COMMIT_BATCH,
        p.MsgType.COMMITTED_BATCH,
    )
} | {
    p.MsgType.STATUS: list(p.Status),
    p.MsgType.COMMITTED: list(p.Status),
    p.MsgType.RESOLVED: list(p.Resolution),
}

frames = st.sampled_from(p.MsgType).flatmap(
    lambda t: st.builds(
        p.Frame,
        type=st.just(t),
        code=st.sampled_from(VALID_CODES[t]),
        slot=st.integers(0, (1 << 32) - 1),
        generation=st.integers(0, (1 << 64) - 1),
        token=st.integers(0, (1 << 64) - 1),
        nbytes=st.integers(0, p.MAX_PAYLOAD),
        checksum=st.integers(0, (1 << 64) - 1),
        capability=st.binary(min_size=16, max_size=16),
        message=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=12),
        flags=st.integers(0, 0xFFFF),
    )
)


@given(frames)
def test_every_valid_frame_round_trips(frame: p.Frame) -> None:
    assert p.decode(p.encode(frame)) == frame


def _decode_or_error(data: bytes) -> p.Frame | None:
    try:
        frame = p.decode(data)
    except ProtocolError:
        return None
    assert p.decode(p.encode(frame)) == frame  # whatever decodes re-encodes to the same frame
    return frame


@settings(max_examples=500)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_protocol_error(data: bytes) -> None:
    _decode_or_error(data)


@settings(max_examples=500)
@given(st.binary(min_size=p.FRAME_SIZE - 8, max_size=p.FRAME_SIZE - 8))
def test_framed_garbage_decodes_or_protocol_error(middle: bytes) -> None:
    _decode_or_error(p.MAGIC + middle + p.TRAILER)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(frames, st.integers(0, p.FRAME_SIZE - 1), st.integers(1, 255))
def test_mutated_frames_decode_or_protocol_error(frame: p.Frame, index: int, xor: int) -> None:
    data = bytearray(p.encode(frame))
    assert p.decode(data) == frame
    data[index] ^= xor
    _decode_or_error(bytes(data))


@given(frames, st.integers(0, p.FRAME_SIZE - 1))
def test_any_truncation_is_detected(frame: p.Frame, length: int) -> None:
    buf = bytearray(p.FRAME_SIZE)
    buf[:length] = p.encode(frame)[:length]
    with pytest.raises(ProtocolError):
        p.decode(buf)


# -- commit log -----------------------------------------------------------------------------------


def test_commit_log_answers_what_it_recorded() -> None:
    log = p.CommitLog(8)
    log.record(1, 5, 111)
    assert log.lookup(1, 5, 111) is p.Resolution.COMMITTED
    assert log.lookup(1, 5, 222) is p.Resolution.NOT_COMMITTED  # another read committed it
    assert len(log) == 1


def test_commit_log_never_denies_what_it_cannot_know() -> None:
    log = p.CommitLog(8)
    assert log.lookup(2, 3, 1) is p.Resolution.UNKNOWN  # maybe committed before this log existed
    log.observe(2, 3)
    assert log.lookup(2, 3, 1) is p.Resolution.NOT_COMMITTED
    assert log.lookup(2, 4, 1) is p.Resolution.NOT_COMMITTED  # written after gen 3 was seen
    assert log.lookup(2, 2, 1) is p.Resolution.UNKNOWN  # older than the horizon
    assert log.lookup(9, 3, 1) is p.Resolution.UNKNOWN  # a slot never seen


def test_commit_log_eviction_makes_old_generations_unknown() -> None:
    log = p.CommitLog(2)
    log.observe(0, 1)
    for generation in (1, 2, 3):
        log.record(0, generation, 100 + generation)
    assert len(log) == 2
    assert log.lookup(0, 1, 101) is p.Resolution.UNKNOWN  # evicted: might have been committed
    assert log.lookup(0, 1, 999) is p.Resolution.UNKNOWN
    assert log.lookup(0, 3, 103) is p.Resolution.COMMITTED
    assert log.lookup(0, 4, 1) is p.Resolution.NOT_COMMITTED  # newer than anything evicted


@pytest.mark.parametrize("capacity", [0, -1, 1.5])
def test_commit_log_capacity_is_validated(capacity: object) -> None:
    with pytest.raises(ConfigError):
        p.CommitLog(capacity)  # type: ignore[arg-type]


# -- conversations: commit protocol -------------------------------------------------------------------


def test_happy_path() -> None:
    net = new_net()
    client = net.client(0)
    srv, action, commit = fetch_until_commit(net, client)
    assert isinstance(action, p.AwaitCommit) and srv.state is p.ServerState.AWAIT_COMMIT
    assert srv.holds_slot and net.ring.meta[0].state is SlotState.READING
    assert client.state is p.ClientState.AWAIT_COMMITTED and commit == client.commit_frame()
    wire: list[bytes] = []
    action = drive(srv, srv.on_commit(p.encode(commit)), net.ring, wire)
    assert isinstance(action, p.Done) and srv.committed and not srv.holds_slot
    assert net.ring.meta[0].state is SlotState.FREE
    client.on_committed(wire[0])
    assert client.state is p.ClientState.DONE and client.checksum_ok
    assert net.log.lookup(0, client.generation, client.token) is p.Resolution.COMMITTED


def test_a_second_read_of_a_committed_slot_is_not_ready() -> None:
    net = new_net()
    first = net.client(0)
    srv, _, commit = fetch_until_commit(net, first)
    assert commit is not None
    drive(srv, srv.on_commit(p.encode(commit)), net.ring, [])
    _, action, wire = net.serve(
        p.request(0, first.generation, p.new_token(), KEY.capability(0, first.generation))
    )
    assert isinstance(action, p.Done)
    assert p.decode(wire[0]).code is p.Status.NOT_READY


def test_empty_payload_sends_no_payload_message() -> None:
    net = new_net()
    net.ring.write(2, b"")
    client = net.client(2)
    _, action, commit = fetch_until_commit(net, client)
    assert isinstance(action, p.AwaitCommit) and client.nbytes == 0 and commit is not None


@pytest.mark.parametrize(
    ("setup", "code", "error"),
    [
        ("stale", p.Status.STALE, StaleSlotError),
        ("busy", p.Status.BUSY, BusyError),
        ("not_ready", p.Status.NOT_READY, NotReadyError),
    ],
)
def test_ring_refusals(setup: str, code: p.Status, error: type[Exception]) -> None:
    net = new_net()
    client = net.client(0)
    if setup == "stale":
        net.ring.write(0, b"newer")  # overwrite: the descriptor's generation is gone
    elif setup == "busy":
        net.ring.begin_read(0, client.generation, 12345, 30.0)
    else:
        net.ring.meta[0].state = SlotState.WRITING
    before = net.ring.info(0)
    srv, action, wire = net.serve(client.request_frame())
    assert isinstance(action, p.Done)  # the endpoint stays usable
    assert p.decode(wire[0]).code is code and len(wire) == 1
    assert net.ring.info(0) == before and not srv.holds_slot
    with pytest.raises(error):
        client.on_status(wire[0])
    assert client.state is p.ClientState.FAILED and isinstance(client.error, error)
    assert client.error.retryable is (setup == "busy")  # STALE and NOT_READY (consumed) are final


def test_unauthorized_gets_a_status_then_close() -> None:
    net = new_net()
    client = net.client(0, secret=OTHER_SECRET)
    srv, action, wire = net.serve(client.request_frame())
    assert isinstance(action, p.Close) and srv.state is p.ServerState.CLOSED
    assert net.ring.meta[0].state is SlotState.READY
    with pytest.raises(UnauthorizedError):
        client.on_status(wire[0])
    assert not client.error.retryable  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("request_bytes", "words"),
    [
        (b"\x01" * 50, "wrong size"),
        (p.encode(p.request(0, 1, 2, KEY.capability(0, 1)))[:-4] + b"\0\0\0\0", "truncated"),
        (p.encode(p.commit(0, 1, 2, KEY.capability(0, 1))), "COMMIT not a commit request"),
        (
            p.encode(p.single_chunk_request(0, KEY.single_chunk_capability(0))),
            "LEGACY_REQUEST not a commit request",
        ),
        (p.encode(p.request(9, 1, 2, KEY.capability(9, 1))), "slot 9 out of range"),
        (p.encode(p.request(0, 1, 0, KEY.capability(0, 1))), "token 0"),
    ],
)
def test_malformed_requests_get_bad_request_then_close(request_bytes: bytes, words: str) -> None:
    net = new_net()
    _, action, wire = net.serve(request_bytes)
    assert isinstance(action, p.Close) and words in action.reason
    reply = p.decode(wire[0])
    assert reply.type is p.MsgType.STATUS and reply.code is p.Status.BAD_REQUEST
    assert net.ring.meta[0].state is SlotState.READY
    client = net.client(0)
    client.request_frame()
    with pytest.raises(ServerError):  # blank or matching echo: the server's refusal is reported
        client.on_status(reply._replace(slot=0, generation=0, token=0))


def test_wrong_token_commit_releases_then_bad_request_and_close() -> None:
    net = new_net()
    client = net.client(0)
    srv, _, commit = fetch_until_commit(net, client)
    assert commit is not None
    wire: list[bytes] = []
    action = drive(srv, srv.on_commit(commit._replace(token=commit.token ^ 1)), net.ring, wire)
    assert isinstance(action, p.Close) and "token" in action.reason
    assert net.ring.meta[0].state is SlotState.READY and not srv.committed
    assert p.decode(wire[0]).code is p.Status.BAD_REQUEST
    with pytest.raises(ServerError, match="not committed"):
        client.on_committed(wire[0])
    assert client.state is p.ClientState.FAILED and client.error.retryable  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage",
        p.encode(p.request(0, 1, 2, KEY.capability(0, 1))),
        p.encode(p.commit(0, 1, 2, OTHER_SECRET)),
    ],
)
def test_anything_but_commit_after_the_payload_releases(reply: bytes) -> None:
    net = new_net()
    srv, _, _ = fetch_until_commit(net, net.client(0))
    wire: list[bytes] = []
    action = drive(srv, srv.on_commit(reply), net.ring, wire)
    assert isinstance(action, p.Close)
    assert net.ring.meta[0].state is SlotState.READY
    assert p.decode(wire[0]).code in (p.Status.BAD_REQUEST, p.Status.UNAUTHORIZED)


def test_timeout_before_commit_releases_the_slot() -> None:
    net = new_net()
    client = net.client(0)
    srv, _, _ = fetch_until_commit(net, client)
    # The server's COMMIT wait times out (client stalled or gone).
    action = srv.on_error("timeout waiting for COMMIT")
    assert isinstance(action, p.Finalise) and action.kind == "release"
    action = drive(srv, action, net.ring, [])
    assert isinstance(action, p.Close) and action.reason == "timeout waiting for COMMIT"
    assert net.ring.meta[0].state is SlotState.READY and not srv.holds_slot
    # A retry reads it: nothing lost.
    retry = net.client(0)
    srv2, _, commit = fetch_until_commit(net, retry)
    assert commit is not None
    drive(srv2, srv2.on_commit(p.encode(commit)), net.ring, [])
    assert net.ring.meta[0].state is SlotState.FREE


def test_client_failure_before_commit_is_retryable_and_definite() -> None:
    net = new_net()
    client = net.client(0)
    client.request_frame()
    err = client.on_error(TimeoutError())
    assert isinstance(err, ReadTimeoutError) and client.state is p.ClientState.FAILED
    assert err.retryable and client.error is err


def test_truncated_payload_fails_without_commit() -> None:
    net = new_net()
    client = net.client(0)
    srv = net.server()
    wire: list[bytes] = []
    action = drive(srv, srv.on_request(p.encode(client.request_frame())), net.ring, wire)
    client.on_status(wire[0])
    short = wire[1][:-10] + bytes(10)  # a short message into a zeroed buffer
    with pytest.raises(TruncatedError):
        client.on_payload(checksum(short))
    assert client.state is p.ClientState.FAILED
    with pytest.raises(ProtocolError):
        client.commit_frame()
    # The client aborts the endpoint; the server's recv fails and it releases.
    action = drive(srv, srv.on_error("connection reset"), net.ring, [])
    assert isinstance(action, p.Close) and net.ring.meta[0].state is SlotState.READY


def test_reported_length_mismatch_is_truncation() -> None:
    net = new_net()
    client = net.client(1)
    srv, wire = net.server(), []
    drive(srv, srv.on_request(p.encode(client.request_frame())), net.ring, wire)
    client.on_status(wire[0])
    with pytest.raises(TruncatedError, match="received 2 of 3"):
        client.on_payload(checksum(b"on"), nbytes=2)


def test_status_disagreeing_with_the_descriptor_is_a_protocol_error() -> None:
    net = new_net()
    m = net.ring.meta[0]
    client = p.ClientRead(
        0, m.generation, p.new_token(), KEY.capability(0, m.generation), m.nbytes + 1, m.checksum
    )
    srv, wire = net.server(), []
    drive(srv, srv.on_request(p.encode(client.request_frame())), net.ring, wire)
    with pytest.raises(ProtocolError, match="descriptor"):
        client.on_status(wire[0])
    assert client.state is p.ClientState.FAILED


def test_a_reply_for_another_read_is_not_trusted() -> None:
    net = new_net()
    client = net.client(0)
    client.request_frame()
    late = p.status(p.Status.OK, slot=0, generation=client.generation, token=client.token + 1, nbytes=1)
    with pytest.raises(ProtocolError, match="another read"):
        client.on_status(late)
    blank_stale = p.status(p.Status.STALE, slot=1, generation=client.generation, token=client.token)
    client2 = net.client(0)
    client2.request_frame()
    with pytest.raises(ProtocolError):
        client2.on_status(blank_stale)


# -- lost COMMITTED, then RESOLVE -------------------------------------------------------------------


def commit_then_lose_reply(net: Net, slot: int = 0) -> p.ClientRead:
    """The server commits; its COMMITTED never arrives; the client times out -> IN_DOUBT."""
    client = net.client(slot)
    srv, _, commit = fetch_until_commit(net, client)
    assert commit is not None
    action = drive(srv, srv.on_commit(p.encode(commit)), net.ring, [])  # reply dropped
    assert isinstance(action, p.Done) and srv.committed
    err = client.on_error(TimeoutError("no COMMITTED"))
    assert isinstance(err, InDoubtError) and client.state is p.ClientState.IN_DOUBT
    return client


def resolve(net: Net, client: p.ClientRead) -> p.Frame:
    srv, action, wire = net.serve(client.resolve_frame())
    assert isinstance(action, p.Done) and srv.resolution is not None
    assert client.state is p.ClientState.AWAIT_RESOLVED
    return p.decode(wire[0])


@pytest.mark.parametrize("ring_remembers", [True, False])
def test_lost_committed_then_resolve_committed(ring_remembers: bool) -> None:
    net = new_net(remembers_committer=ring_remembers)
    client = commit_then_lose_reply(net)
    answer = resolve(net, client)
    assert answer.code is p.Resolution.COMMITTED
    client.on_resolved(answer)
    assert client.state is p.ClientState.DONE and client.resolution is p.Resolution.COMMITTED


def test_lost_committed_after_a_server_restart_is_answered_by_the_ring() -> None:
    net = new_net()
    client = commit_then_lose_reply(net)
    net.log = p.CommitLog(64)  # the server process restarted: its log is empty
    answer = resolve(net, client)
    assert answer.code is p.Resolution.COMMITTED


def test_commit_lost_on_the_way_then_resolve_not_committed() -> None:
    """The connection resets before COMMIT reaches the server: it releases; the read can be redone."""
    net = new_net()
    client = net.client(0)
    srv, _, commit = fetch_until_commit(net, client)
    assert commit is not None
    drive(srv, srv.on_error("connection reset"), net.ring, [])
    client.on_error(ConnectionResetError())
    assert client.state is p.ClientState.IN_DOUBT
    answer = resolve(net, client)
    assert answer.code is p.Resolution.NOT_COMMITTED
    with pytest.raises(ConnectionLostError) as info:
        client.on_resolved(answer)
    assert client.state is p.ClientState.FAILED and info.value.retryable
    retry = net.client(0)
    srv2, _, commit2 = fetch_until_commit(net, retry)
    assert commit2 is not None
    drive(srv2, srv2.on_commit(p.encode(commit2)), net.ring, [])
    assert net.ring.meta[0].state is SlotState.FREE


def test_resolve_fences_a_commit_still_in_flight() -> None:
    """RESOLVE overtakes a slow COMMIT: it releases the read, so the late COMMIT cannot commit."""
    net = new_net()
    client = net.client(0)
    srv, _, commit = fetch_until_commit(net, client)  # handler A waits for COMMIT
    assert commit is not None
    client.on_error(TimeoutError())
    answer = resolve(net, client)  # handler B, another endpoint
    assert answer.code is p.Resolution.NOT_COMMITTED
    assert net.ring.meta[0].state is SlotState.READY
    wire: list[bytes] = []
    action = drive(srv, srv.on_commit(p.encode(commit)), net.ring, wire)  # the COMMIT arrives late
    assert isinstance(action, p.Done) and not srv.committed
    refused = p.decode(wire[0])
    assert refused.type is p.MsgType.COMMITTED and refused.code is p.Status.ERROR
    assert net.ring.meta[0].state is SlotState.READY and net.ring.late_finalise == 1


def test_another_reader_committed_it_then_resolve_not_committed() -> None:
    net = new_net()
    client = net.client(0)
    srv, _, _ = fetch_until_commit(net, client)
    drive(srv, srv.on_error("reset"), net.ring, [])
    client.on_error(ConnectionResetError())
    other = net.client(0)  # a duplicated descriptor: a second consumer reads and commits it
    srv2, _, commit = fetch_until_commit(net, other)
    assert commit is not None
    drive(srv2, srv2.on_commit(p.encode(commit)), net.ring, [])
    assert resolve(net, client).code is p.Resolution.NOT_COMMITTED


def test_resolve_unknown_when_neither_ring_nor_log_can_tell() -> None:
    net = new_net()
    client = commit_then_lose_reply(net)
    net.ring.write(0, b"next generation")  # the ring moved on
    net.log = p.CommitLog(64)  # and the server restarted
    answer = resolve(net, client)
    assert answer.code is p.Resolution.UNKNOWN
    with pytest.raises(InDoubtError):
        client.on_resolved(answer)
    assert client.state is p.ClientState.IN_DOUBT and client.resolution is p.Resolution.UNKNOWN
    assert not client.error.retryable  # type: ignore[union-attr]


def test_resolve_unknown_after_eviction() -> None:
    net = new_net(capacity=1)
    client = commit_then_lose_reply(net, slot=0)
    net.ring.write(0, b"next generation")
    other = net.client(1)
    srv, _, commit = fetch_until_commit(net, other)
    assert commit is not None
    drive(srv, srv.on_commit(p.encode(commit)), net.ring, [])  # evicts slot 0's entry
    assert resolve(net, client).code is p.Resolution.UNKNOWN


def test_resolve_after_overwrite_drop_is_not_committed_when_covered() -> None:
    net = new_net()
    client = net.client(0)
    srv, _, _ = fetch_until_commit(net, client)  # this server saw generation 1 uncommitted
    drive(srv, srv.on_error("reset"), net.ring, [])
    client.on_error(ConnectionResetError())
    net.ring.write(0, b"overwritten")  # `overwrite` recycled it: generation 1 was dropped
    assert resolve(net, client).code is p.Resolution.NOT_COMMITTED


def test_resolve_gets_unauthorized_stays_in_doubt() -> None:
    net = new_net()
    client = commit_then_lose_reply(net)
    _, action, wire = net.serve(client.resolve_frame()._replace(capability=OTHER_SECRET))
    assert isinstance(action, p.Close)
    with pytest.raises(InDoubtError) as info:
        client.on_resolved(wire[0])
    assert isinstance(info.value.__cause__, UnauthorizedError)
    assert client.state is p.ClientState.IN_DOUBT  # another endpoint may still answer
    client.resolve_frame()
    assert client.state is p.ClientState.AWAIT_RESOLVED


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage",
        p.encode(p.status(p.Status.OK)),
        p.encode(p.committed(0, 1, 12345)),  # someone else's COMMITTED
    ],
)
def test_unrecognisable_commit_reply_is_in_doubt(reply: bytes) -> None:
    net = new_net()
    client = net.client(0)
    fetch_until_commit(net, client)
    with pytest.raises(InDoubtError):
        client.on_committed(reply)
    assert client.state is p.ClientState.IN_DOUBT


def test_resolved_for_another_read_is_not_trusted() -> None:
    net = new_net()
    client = commit_then_lose_reply(net)
    client.resolve_frame()
    with pytest.raises(InDoubtError):
        client.on_resolved(p.resolved(p.Resolution.COMMITTED, 0, client.generation, client.token + 1))
    assert client.state is p.ClientState.IN_DOUBT


# -- single-chunk -------------------------------------------------------------------------------------


def test_single_chunk_single_chunk_flow() -> None:
    net = new_net("single-chunk")
    client = net.client(0, token=0)
    request_frame = client.request_frame()
    assert request_frame.type is p.MsgType.LEGACY_REQUEST
    assert (request_frame.generation, request_frame.token) == (0, 0)
    srv, action, wire = net.serve(request_frame)
    assert isinstance(action, p.Done) and srv.committed  # finalised on its own send completion
    assert net.ring.meta[0].state is SlotState.FREE
    nbytes = client.on_status(wire[0])
    assert client.on_payload(checksum(wire[1])) is None
    assert nbytes == len(wire[1]) and client.state is p.ClientState.DONE and client.checksum_ok


def test_single_chunk_serves_a_slot_already_being_read() -> None:
    net = new_net("single-chunk")
    net.ring.begin_read_single_chunk(0, 30.0)  # a first handler is still mid-send
    _, action, wire = net.serve(p.single_chunk_request(0, KEY.single_chunk_capability(0)))
    assert isinstance(action, p.Done) and p.decode(wire[0]).code is p.Status.OK


def test_single_chunk_delivers_whatever_the_slot_holds() -> None:
    """The ABA loss the commit protocol fixes: the slot was rewritten, the single-chunk read returns it."""
    net = new_net("single-chunk")
    client = net.client(0, token=0)
    net.ring.write(0, b"a newer payload")
    _, _, wire = net.serve(client.request_frame())
    client.on_status(wire[0])
    client.on_payload(checksum(wire[1]))
    assert client.state is p.ClientState.DONE and client.checksum_ok is False


def test_single_chunk_send_failure_does_not_finalise() -> None:
    net = new_net("single-chunk")
    srv = net.server()
    action = srv.on_request(p.encode(p.single_chunk_request(0, KEY.single_chunk_capability(0))))
    action = drive(srv, action, net.ring, [])
    assert isinstance(action, p.Done)
    srv = net.server()
    net.ring.write(2, b"abc")
    action = srv.on_request(p.encode(p.single_chunk_request(2, KEY.single_chunk_capability(2))))
    assert isinstance(action, p.BeginRead) and action.single_chunk
    code, info = net.ring.begin_read_single_chunk(2, 30.0)
    action = srv.on_begin_read(code, info.generation, info.nbytes, info.checksum)
    assert isinstance(action, p.SendStatus)
    assert isinstance(srv.on_error("reset"), p.Close)
    assert net.ring.meta[2].state is SlotState.READING  # left for the lease reclaim, as before


def test_protocol_mismatch_is_a_bad_request() -> None:
    net = new_net("single-chunk")
    _, action, wire = net.serve(p.request(0, 1, 2, KEY.capability(0, 1)))
    assert isinstance(action, p.Close) and p.decode(wire[0]).code is p.Status.BAD_REQUEST


# -- machine misuse and error paths -------------------------------------------------------------------


def _states_of(machine: Any) -> list[Any]:
    """Every state `machine` moves through from now on (its moves all go through `_move`)."""
    seen = [machine.state]
    move = machine._move

    def recording(event: str, to: Any) -> None:
        move(event, to)
        seen.append(to)

    machine._move = recording
    return seen


def test_a_committed_read_walks_the_protocol_list_in_both_tables() -> None:
    """REQUEST -> CAS -> STATUS + PAYLOAD -> COMMIT -> CAS -> COMMITTED, as README.md lists it."""
    net = new_net()
    client, srv, wire = net.client(0), net.server(), []
    client_seen, server_seen = _states_of(client), _states_of(srv)
    drive(srv, srv.on_request(p.encode(client.request_frame())), net.ring, wire)
    client.on_status(wire[0])
    commit = client.on_payload(checksum(wire[1]))
    action = drive(srv, srv.on_commit(p.encode(commit)), net.ring, wire)
    client.on_committed(wire[-1])
    S, C = p.ServerState, p.ClientState
    assert isinstance(action, p.Done)
    assert server_seen[:5] == [S.IDLE, S.BEGIN_READ, S.SEND_STATUS, S.AWAIT_COMMIT, S.COMMITTING]
    assert server_seen[5:] == [S.SEND_REPLY, S.DONE]
    assert client_seen == [C.IDLE, C.AWAIT_STATUS, C.AWAIT_PAYLOAD, C.AWAIT_COMMITTED, C.DONE]


@pytest.mark.parametrize(
    ("table", "start", "ends"),
    [
        (p.SERVER_TRANSITIONS, p.ServerState.IDLE, {p.ServerState.DONE, p.ServerState.CLOSED}),
        (p.SINGLE_CHUNK_SERVER_TRANSITIONS, p.ServerState.IDLE, {p.ServerState.DONE, p.ServerState.CLOSED}),
        (p.CLIENT_TRANSITIONS, p.ClientState.IDLE, {p.ClientState.DONE, p.ClientState.FAILED}),
        (p.SINGLE_CHUNK_CLIENT_TRANSITIONS, p.ClientState.IDLE, {p.ClientState.DONE, p.ClientState.FAILED}),
    ],
    ids=["server", "single-chunk-server", "client", "single-chunk-client"],
)
def test_every_state_a_table_reaches_moves_on_or_ends(table: Any, start: Any, ends: set[Any]) -> None:
    """No dead end: a state reached without an error has an event out of it, unless the read is over."""
    reached, todo = {start}, [start]
    while todo:
        state = todo.pop()
        for (at, event), targets in table.items():
            if at is state and event != "error":
                todo.extend(targets - reached)
                reached |= targets
    for state in reached - ends:
        assert any(at is state and event != "error" for at, event in table), state
    assert ends <= reached


def test_a_move_its_table_lacks_is_refused() -> None:
    srv = p.ServerRead(KEY, p.CommitLog())
    with pytest.raises(ProtocolError, match="sent -> done not valid in state idle"):
        srv._move("sent", p.ServerState.DONE)
    client = p.SingleChunkClientRead(0, 1, 0, SECRET, 3, 4)
    client.request_frame()
    with pytest.raises(ProtocolError, match="client read 0:1: status -> done not valid"):
        client._move("status", p.ClientState.DONE)


def test_server_events_in_the_wrong_state_raise() -> None:
    srv = p.ServerRead(KEY, p.CommitLog())
    for call in (srv.on_sent, lambda: srv.on_commit(b""), lambda: srv.on_finalised(True)):
        with pytest.raises(ProtocolError, match="state idle"):
            call()
    with pytest.raises(ProtocolError):
        srv.on_fenced(1, 2)
    srv.on_request(p.request(0, 1, 2, KEY.capability(0, 1)))
    with pytest.raises(ProtocolError, match="ReadCode"):
        srv.on_begin_read(9, 1, 0, 0)
    with pytest.raises(ConfigError):
        p.server_machine("tcp")


def test_client_events_in_the_wrong_state_raise() -> None:
    client = p.ClientRead(0, 1, 2, SECRET, 3, 4)
    for call in (
        lambda: client.on_status(b""),
        lambda: client.on_payload(0),
        client.commit_frame,
        lambda: client.on_committed(b""),
        client.resolve_frame,
        lambda: client.on_resolved(b""),
    ):
        with pytest.raises(ProtocolError, match="state idle"):
            call()
    assert client.state is p.ClientState.IDLE
    client.request_frame()
    with pytest.raises(ProtocolError):
        client.request_frame()
    with pytest.raises(ConfigError):
        p.ClientRead(0, 1, 0, SECRET, 3, 4)  # commit reads need a token
    with pytest.raises(ConfigError):
        p.ClientRead(0, 1, 2, b"x", 3, 4)


@pytest.mark.parametrize("stage", ["begin_read", "status", "await_commit", "committed"])
def test_server_error_at_every_stage_releases_iff_held(stage: str) -> None:
    net = new_net()
    client = net.client(0)
    srv = net.server()
    action = srv.on_request(p.encode(client.request_frame()))
    steps = {"begin_read": 0, "status": 1, "await_commit": 2, "committed": 4}[stage]
    for _ in range(steps):
        match action:
            case p.BeginRead(slot, generation, token, _):
                code, info = net.ring.begin_read(slot, generation, token, 30.0)
                action = srv.on_begin_read(code, info.generation, info.nbytes, info.checksum)
            case p.SendFrame() | p.SendStatus():
                action = srv.on_sent()
            case p.AwaitCommit():
                action = srv.on_commit(
                    p.commit(0, client.generation, client.token, KEY.capability(0, client.generation))
                )
            case p.Finalise("commit", slot, generation, token):
                action = srv.on_finalised(net.ring.commit_read(slot, generation, token))
    held = srv.holds_slot
    action = drive(srv, srv.on_error("boom"), net.ring, [])
    assert isinstance(action, p.Close) and srv.state is p.ServerState.CLOSED and not srv.holds_slot
    expected = {"begin_read": SlotState.READY, "committed": SlotState.FREE}.get(stage, SlotState.READY)
    assert net.ring.meta[0].state is expected
    assert held is (stage in ("status", "payload", "await_commit"))
    assert isinstance(srv.on_error("again"), p.Close)  # idempotent


def test_slot_too_large_for_the_wire_is_refused_and_released() -> None:
    net = new_net()
    srv = net.server()
    srv.on_request(p.request(0, 1, 2, KEY.capability(0, 1)))
    net.ring.begin_read(0, 1, 2, 30.0)
    action = drive(srv, srv.on_begin_read(0, 1, p.MAX_PAYLOAD + 1, 0), net.ring, wire := [])
    assert isinstance(action, p.Close) and net.ring.meta[0].state is SlotState.READY
    assert p.decode(wire[0]).code is p.Status.ERROR


def test_resolve_of_a_generation_never_written_is_not_committed() -> None:
    net = new_net()
    srv, action, wire = net.serve(p.resolve(0, 99, 5, KEY.capability(0, 99)))
    assert isinstance(action, p.Done) and srv.key == "0:99"
    assert p.decode(wire[0]).code is p.Resolution.NOT_COMMITTED


def test_client_rejects_a_reply_that_is_not_a_status() -> None:
    client = p.ClientRead(0, 1, 2, SECRET, 3, 4)
    client.request_frame()
    with pytest.raises(ProtocolError, match="expected STATUS, got COMMITTED"):
        client.on_status(p.committed(0, 1, 2))
    assert client.state is p.ClientState.FAILED and client.key == "0:1"
    with pytest.raises(ConfigError):
        p.client_machine("tcp")


def test_client_on_error_keeps_transport_errors() -> None:
    client = p.ClientRead(0, 1, 2, SECRET, 3, 4)
    client.request_frame()
    lost = ConnectionLostError("reset")
    assert client.on_error(lost) is lost and client.error is lost
    with pytest.raises(ProtocolError):
        client.on_error(lost)  # FAILED is final


@pytest.mark.parametrize(("history", "expected"), [(77, "COMMITTED"), (78, "NOT_COMMITTED"), (0, "UNKNOWN")])
def test_resolve_of_a_rewritten_slot_reads_the_ring_history(history: int, expected: str) -> None:
    """The slot moved on two generations and this server process never saw it (a restart): only the
    ring's commit history can answer, and without it the answer is UNKNOWN, never a guess."""
    key = p.RingKey(b"s" * 16, RING_ID)
    srv = p.ServerRead(key, p.CommitLog(), slots=4)
    action = srv.on_request(p.encode(p.resolve(1, 5, 77, key.capability(1, 5))))
    assert isinstance(action, p.Fence)
    reply = srv.on_fenced(7, SlotState.READY, last_commit_token=0, committed_token=history)
    assert isinstance(reply, p.SendFrame)
    assert p.decode(reply.data).code == p.Resolution[expected]


# -- inline payloads --------------------------------------------------------------------------------


def _inline_exchange(
    net: Net, client: p.ClientRead, room: int
) -> tuple[p.ServerRead, p.ServerAction, list[bytes]]:
    srv, wire = net.server(), []
    action = drive(srv, srv.on_request(p.encode(client.request_frame(room))), net.ring, wire)
    return srv, action, wire


def test_small_payload_rides_inside_the_status_when_the_client_has_room() -> None:
    net = new_net()
    client = net.client(0)  # 1200 bytes
    room = client.inline_room()
    assert room == 1200
    srv, action, wire = _inline_exchange(net, client, room)
    assert isinstance(action, p.AwaitCommit) and srv.inline and len(wire) == 1, "one message, no PAYLOAD"
    msg = wire[0]
    assert len(msg) == p.FRAME_SIZE + 1200 + len(p.TRAILER)
    assert client.on_status(msg[: p.FRAME_SIZE]) == 1200 and client.inline
    payload = client.inline_payload(msg)
    assert bytes(payload) == net.ring.data[0]
    commit = client.on_payload(checksum(payload))
    assert commit is not None and client.state is p.ClientState.AWAIT_COMMITTED


def test_no_room_or_too_large_keeps_the_separate_payload() -> None:
    net = new_net()
    for room in (0, 1199):  # no room asked, or less room than the payload
        client = net.client(0)
        srv, _, wire = _inline_exchange(net, client, room)
        assert not srv.inline and len(wire) == 2 and len(wire[0]) == p.FRAME_SIZE
        assert client.on_status(wire[0]) == 1200 and not client.inline
        drive(srv, srv.on_error("test over"), net.ring, [])
    client = p.ClientRead(0, 1, 5, SECRET, p.INLINE_MAX + 1, 0)
    assert client.inline_room() == 0, "over INLINE_MAX never asks for room"
    assert p.SingleChunkClientRead(0, 1, 5, SECRET, 10, 0).inline_room() == 0


@pytest.mark.parametrize("cut", [1, 600, p.FRAME_SIZE + 1200])
def test_short_inline_message_is_truncated_and_not_committed(cut: int) -> None:
    """A message cut anywhere after the frame (even keeping every payload byte) fails on the
    closing trailer, in a zeroed receive buffer as the client posts it."""
    net = new_net()
    client = net.client(0)
    _, _, wire = _inline_exchange(net, client, client.inline_room())
    received = bytearray(len(wire[0]))  # the client's zeroed receive buffer
    short = wire[0][: p.FRAME_SIZE + cut - 1] if cut < p.FRAME_SIZE + 1200 else wire[0][:-1]
    received[: len(short)] = short
    assert client.on_status(bytes(received[: p.FRAME_SIZE])) == 1200
    with pytest.raises(TruncatedError):
        client.inline_payload(received)
    assert client.state is p.ClientState.FAILED and client.error is not None and client.error.retryable


# -- batched reads --------------------------------------------------------------------------------


def drive_batch(
    srv: p.ServerBatch, action: p.BatchAction, ring: FakeRing, wire: list[bytes]
) -> p.BatchAction:
    """Perform server batch actions until it waits for the client (AwaitCommitBatch) or is over."""
    while True:
        match action:
            case p.BeginBatch(entries, token):
                results = []
                for e in entries:
                    if e is None:
                        results.append(None)
                        continue
                    code, info = ring.begin_read(e.slot, e.generation, token, lease=30.0)
                    results.append((code, info.generation, info.nbytes, info.checksum))
                action = srv.on_begun(results)
            case p.SendStatusBatch():
                wire.append(bytes(p.fill_inline(action, ring.payload_view)))
                action = srv.on_sent()
            case p.SendPayloads(items):
                wire.extend(bytes(ring.payload_view(slot, n)) for slot, n in items)
                action = srv.on_sent()
            case p.FinaliseBatch(items):
                oks = [
                    (ring.commit_read if kind == "commit" else ring.release_read)(slot, gen, token)
                    for kind, slot, gen, token in items
                ]
                action = srv.on_finalised(oks)
            case p.SendBatchReply(data):
                wire.append(bytes(data))
                action = srv.on_sent()
            case _:
                return action


def _batch_net() -> Net:
    ring = FakeRing(slots=8)
    ring.write(0, b"payload-zero" * 100)
    ring.write(1, b"one")
    net = Net(ring, p.CommitLog(64))
    net.ring.write(2, b"x" * 40_000)  # too big to inline
    net.ring.write(3, b"")
    return net


def _batch_slots(net: Net, slots: list[int], forged: bool = False) -> list[p.BatchSlot]:
    out = []
    for s in slots:
        m = net.ring.meta[s]
        proof = OTHER_SECRET if forged else KEY.capability(s, m.generation)
        out.append(p.BatchSlot(s, m.generation, m.nbytes, m.checksum, proof))
    return out


def _run_batch(
    net: Net, cb: p.ClientBatch, corrupt: int | None = None
) -> tuple[p.ServerBatch, p.BatchAction, list[bytes]]:
    """Client and server machines through one batch on a perfect wire (slot `corrupt`'s separate
    payload arrives short)."""
    srv, wire = p.ServerBatch(KEY, net.log, slots=net.ring.slots), []
    action = drive_batch(srv, srv.on_request(bytes(cb.request_message())), net.ring, wire)
    status = bytearray(cb.status_size())
    status[: len(wire[0])] = wire[0]
    sizes = cb.on_status(status)
    if cb.state is p.BatchState.DONE:
        return srv, action, wire
    received = dict(zip(cb.pending, wire[1 : 1 + len(sizes)], strict=True))
    checksums = {}
    for i, held in enumerate(cb.ok):
        if held:
            place = cb.inline[i]
            data = status[place[0] : place[0] + place[1]] if place else received.get(i, b"")
            if i == corrupt:
                data = data[: len(data) // 2]
            checksums[i] = checksum(bytes(data))
    commit = cb.on_payloads(checksums)
    assert isinstance(action, p.AwaitCommitBatch) and action.size >= len(commit)
    before = len(wire)
    action = drive_batch(srv, srv.on_commit(bytes(commit)), net.ring, wire)
    reply = bytearray(cb.committed_size())
    reply[: len(wire[before])] = wire[before]
    cb.on_committed(reply)
    return srv, action, wire


def test_batch_commits_each_slot_and_fails_bad_ones_alone() -> None:
    net = _batch_net()
    net.ring.write(4, b"four")
    good = _batch_slots(net, [0, 1, 2, 3, 4])
    stale = p.BatchSlot(5, 9, 1, 1, KEY.capability(5, 9))  # never written: STALE
    forged = _batch_slots(net, [4])[0]._replace(slot=6)  # slot 4's capability used for slot 6
    cb = p.ClientBatch([*good[:2], stale, *good[2:4], forged, good[4]], p.new_token())
    srv, action, wire = _run_batch(net, cb)
    assert isinstance(action, p.Done) and cb.state is p.BatchState.DONE
    assert [type(e).__name__ if e else None for e in cb.errors] == [
        None, None, "StaleSlotError", None, None, "UnauthorizedError", None,
    ]  # fmt: skip
    assert all(net.ring.meta[s].state is SlotState.FREE for s in (0, 1, 2, 3, 4))
    assert len(wire) == 1 + 1 + 1, "status (3 inline), one separate payload (40 kB), COMMITTED_BATCH"
    assert sorted(e.slot for e in srv.committed) == [0, 1, 2, 3, 4]
    for s in (0, 1, 2, 3, 4):
        m = net.ring.meta[s]
        assert net.log.lookup(s, m.generation, cb.token) is p.Resolution.COMMITTED


def test_a_truncated_payload_releases_that_slot_only() -> None:
    net = _batch_net()
    cb = p.ClientBatch(_batch_slots(net, [0, 1, 2]), p.new_token())
    _run_batch(net, cb, corrupt=2)
    assert cb.errors[0] is None and cb.errors[1] is None
    assert isinstance(cb.errors[2], TruncatedError) and cb.errors[2].retryable
    assert net.ring.meta[2].state is SlotState.READY, "released for the next attempt"
    assert net.ring.meta[0].state is SlotState.FREE and net.ring.meta[1].state is SlotState.FREE


def test_lost_committed_batch_leaves_asked_slots_in_doubt_and_resolve_settles_each() -> None:
    net = _batch_net()
    cb = p.ClientBatch(_batch_slots(net, [0, 1]), p.new_token())
    srv, wire = p.ServerBatch(KEY, net.log, slots=net.ring.slots), []
    drive_batch(srv, srv.on_request(bytes(cb.request_message())), net.ring, wire)
    status = bytearray(cb.status_size())
    status[: len(wire[0])] = wire[0]
    assert cb.on_status(status) == []
    sums = {i: checksum(bytes(status[o : o + n])) for i, (o, n) in enumerate(pl for pl in cb.inline if pl)}
    drive_batch(srv, srv.on_commit(bytes(cb.on_payloads(sums))), net.ring, [])  # reply never arrives
    cb.on_error(ConnectionResetError("COMMITTED_BATCH lost"))
    assert all(isinstance(e, InDoubtError) for e in cb.errors)
    for i in range(2):
        cr = cb.resolve_read(i)
        _, _, answer = net.serve(cr.resolve_frame())
        cr.on_resolved(answer[0])
        assert cr.state is p.ClientState.DONE and cr.resolution is p.Resolution.COMMITTED


def test_error_before_commit_releases_every_held_slot() -> None:
    net = _batch_net()
    cb = p.ClientBatch(_batch_slots(net, [0, 2]), p.new_token())
    srv, wire = p.ServerBatch(KEY, net.log, slots=net.ring.slots), []
    action = drive_batch(srv, srv.on_request(bytes(cb.request_message())), net.ring, wire)
    assert isinstance(action, p.AwaitCommitBatch) and len(srv.held) == 2
    release = srv.on_error("reset")
    assert isinstance(release, p.FinaliseBatch) and srv.state is p.BatchState.RELEASING_ON_ERROR
    action = drive_batch(srv, release, net.ring, [])
    assert isinstance(action, p.Close) and action.reason == "reset" and not srv.held
    assert srv.state is p.BatchState.CLOSED
    assert net.ring.meta[0].state is SlotState.READY and net.ring.meta[2].state is SlotState.READY


@pytest.mark.parametrize("cut", [1, 64, 200])
def test_short_status_batch_fails_every_slot_retryably(cut: int) -> None:
    net = _batch_net()
    cb = p.ClientBatch(_batch_slots(net, [0, 1]), p.new_token())
    srv, wire = p.ServerBatch(KEY, net.log, slots=net.ring.slots), []
    drive_batch(srv, srv.on_request(bytes(cb.request_message())), net.ring, wire)
    status = bytearray(cb.status_size())
    status[: len(wire[0]) - cut] = wire[0][:-cut]
    with pytest.raises((TruncatedError, ProtocolError)):
        cb.on_status(status)
    assert all(e is not None and e.retryable for e in cb.errors)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m[:100],
        lambda m: m[: p.FRAME_SIZE] + m[p.FRAME_SIZE + 3 :],
        lambda m: bytes(m[:8]) + b"\xff\xff\xff\xff" + bytes(m[12:]),  # entry count 2**32-1
        lambda m: bytes(m[:8]) + b"\0\0\0\0" + bytes(m[12:]),  # no entries
    ],
)
def test_malformed_batch_request_is_refused_holding_nothing(mutate: Any) -> None:
    net = _batch_net()
    cb = p.ClientBatch(_batch_slots(net, [0, 1]), p.new_token())
    srv = p.ServerBatch(KEY, net.log, slots=net.ring.slots)
    wire: list[bytes] = []
    action = drive_batch(srv, srv.on_request(bytes(mutate(bytes(cb.request_message())))), net.ring, wire)
    assert isinstance(action, p.Close) and not srv.held
    assert p.decode(wire[0]).code is p.Status.BAD_REQUEST
    assert net.ring.meta[0].state is SlotState.READY


def test_batch_transitions_outside_the_table_are_driver_bugs() -> None:
    net = _batch_net()
    srv = p.ServerBatch(KEY, net.log)
    with pytest.raises(ProtocolError):
        srv.on_begun([])
    cb = p.ClientBatch(_batch_slots(net, [0]), p.new_token())
    with pytest.raises(ProtocolError):
        cb.on_payloads({})
    assert (p.BatchState.IDLE, "request") in p.SERVER_BATCH_TRANSITIONS
    assert (p.BatchState.IDLE, "request") not in p.CLIENT_BATCH_TRANSITIONS  # one table per machine
