"""Fuzz a live server with 10,000 random and mutated frames over real ucxx endpoints.

Hypothesis draws frame recipes (valid requests and commits, one field changed, one byte flipped, a
wrong capability, truncated, oversized, random bytes); they are made concrete against the ring's state
at send time, so "valid" means valid right now. Frames are sent back to back on one endpoint for as
long as the server keeps it open. Every frame must be answered with a well-formed frame or the
endpoint closed by the server; a real consumer reads a payload after every batch; afterwards no
handler is left and no slot is held.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_server import HOST, LiveServer, live_server, run

from transport import protocol as proto
from transport.client import SlotClient
from transport.errors import RingFullError
from transport.ring import SlotState

pytestmark = pytest.mark.timeout(600)

BATCHES, PER_BATCH = 100, 100  # 10,000 frames
LANES = 10  # attacker endpoints working a batch at once (connects overlap)
REPLY_TIMEOUT = 10.0  # generous: only a server that neither answers nor closes ever reaches it
SLOTS = 8
_REFUSALS = (proto.Status.UNAUTHORIZED, proto.Status.BAD_REQUEST, proto.Status.ERROR)

# Offsets and struct formats of the frame's fields (see transport.protocol's layout).
FIELDS = {
    "type": (4, "<B"),
    "code": (5, "<B"),
    "flags": (6, "<H"),
    "slot": (8, "<I"),
    "generation": (16, "<Q"),
    "token": (24, "<Q"),
    "nbytes": (32, "<Q"),
    "checksum": (40, "<Q"),
}
_FIELD_MAX = {"<B": 0xFF, "<H": 0xFFFF, "<I": (1 << 32) - 1, "<Q": (1 << 64) - 1}

slot_index = st.integers(0, SLOTS + 2)  # a few past the ring
recipes = st.one_of(
    st.tuples(st.just("valid"), slot_index, st.sampled_from(["request", "resolve"])),
    st.tuples(st.just("commit"), slot_index),
    st.sampled_from(sorted(FIELDS)).flatmap(
        lambda name: st.tuples(
            st.just("field"), slot_index, st.just(name), st.integers(0, _FIELD_MAX[FIELDS[name][1]])
        )
    ),
    st.tuples(st.just("flip"), slot_index, st.integers(0, proto.FRAME_SIZE - 1), st.integers(1, 255)),
    st.tuples(st.just("capability"), slot_index, st.binary(min_size=16, max_size=16)),
    st.tuples(st.just("truncate"), slot_index, st.integers(1, proto.FRAME_SIZE - 1)),
    st.tuples(st.just("oversize"), slot_index, st.integers(1, 4096)),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=300)),
)


class Fuzzer:
    """One attacker endpoint at a time; turns recipes into bytes against the current ring state."""

    def __init__(self, live: LiveServer, outcomes: Counter[str]) -> None:
        self.live = live
        self.ep: Any = None
        self.read: tuple[int, int, int, bytes] | None = None  # an OK read awaiting its COMMIT
        self.outcomes = outcomes

    def _valid(self, index: int, kind: str) -> bytes:
        slot = index % SLOTS if index < SLOTS else index
        generation = self.live.ring.info(slot).generation if slot < SLOTS else 1
        token = proto.new_token()
        cap = self.live.key.capability(slot, generation) if slot < (1 << 32) else bytes(16)
        make = proto.resolve if kind == "resolve" else proto.request
        return proto.encode(make(slot, generation, token, cap))

    def materialise(self, recipe: tuple[Any, ...]) -> bytes:
        kind = recipe[0]
        if kind == "bytes":
            return bytes(recipe[1])
        if kind == "valid":
            return self._valid(recipe[1], recipe[2])
        if kind == "commit":
            if self.read is not None:
                return proto.encode(proto.commit(*self.read))
            return proto.encode(proto.commit(1, 1, 1, bytes(16)))
        data = bytearray(self._valid(recipe[1], "request"))
        if kind == "field":
            offset, fmt = FIELDS[recipe[2]]
            struct.pack_into(fmt, data, offset, recipe[3])
        elif kind == "flip":
            data[recipe[2]] ^= recipe[3]
        elif kind == "capability":
            data[48:64] = recipe[2]
        elif kind == "truncate":
            del data[recipe[2] :]
        elif kind == "oversize":
            data += bytes(recipe[2])
        return bytes(data)

    async def _connect(self) -> None:
        import ucxx

        self.ep = await asyncio.wait_for(ucxx.create_endpoint(HOST, self.live.port), 10)

    def _drop(self) -> None:
        if self.ep is not None:
            self.ep.abort()
        self.ep, self.read = None, None

    async def send(self, recipe: tuple[Any, ...]) -> None:
        if self.ep is None:
            await self._connect()
        message = np.frombuffer(self.materialise(recipe), dtype=np.uint8)
        reply = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
        awaiting_commit = self.read is not None
        try:
            await asyncio.wait_for(self.ep.send(message), REPLY_TIMEOUT)
            await asyncio.wait_for(self.ep.recv(reply), REPLY_TIMEOUT)
        except TimeoutError:
            self.outcomes["neither answered nor closed"] += 1
            self._drop()
            return
        except Exception:  # the server closed (or reset) the endpoint
            self.outcomes["closed"] += 1
            self._drop()
            return
        frame = proto.decode(reply)  # a ProtocolError here: the server sent garbage, fails the test
        self.outcomes["answered"] += 1
        self.read = None
        if frame.type is proto.MsgType.STATUS and frame.code is proto.Status.OK and not awaiting_commit:
            payload = np.zeros(frame.nbytes, dtype=np.uint8)
            if frame.nbytes:
                await asyncio.wait_for(self.ep.recv(payload), REPLY_TIMEOUT)
            cap = self.live.key.capability(frame.slot, frame.generation)
            self.read = (frame.slot, frame.generation, frame.token, cap)
            self.outcomes["payloads"] += 1
        elif frame.code in _REFUSALS and frame.type is proto.MsgType.STATUS:
            self._drop()  # a refusal closes the endpoint: start the next frame on a new one


def _top_up(live: LiveServer) -> None:
    """Keep slots READY for the fuzzer's valid requests, leaving two FREE for the real consumer's put.

    Counted as FREE slots, not READY ones: a slot a fuzzed read still holds (READING) goes back to READY
    when that read is released, and counting it as taken would let the ring fill up to 8 READY."""
    while sum(info.state == SlotState.FREE for info in live.ring.snapshot()) > 2:
        try:
            live.ring.write(b"fuzz" * 16, timeout=0.001)
        except RingFullError:
            return


def test_fuzzed_frames_are_answered_or_closed_and_leak_nothing() -> None:
    with live_server(slots=SLOTS, step_timeout=1.0, max_endpoints=64, idle_evict=60.0) as live:
        outcomes = Counter[str]()
        fuzzers = [Fuzzer(live, outcomes) for _ in range(LANES)]
        consumer = SlotClient(read_timeout=2.0, quarantine=0.0, max_age=120.0)
        real = Counter[str]()

        async def lane(fuzzer: Fuzzer, recipes: list[tuple[Any, ...]]) -> None:
            for recipe in recipes:
                outcomes["frames"] += 1
                await fuzzer.send(recipe)

        async def one_batch(batch: list[tuple[Any, ...]]) -> None:
            _top_up(live)
            await asyncio.gather(*(lane(f, batch[i::LANES]) for i, f in enumerate(fuzzers)))
            desc = await live.aput(b"real %d" % real["reads"])
            assert bytes((await consumer.read(desc)).payload) == b"real %d" % real["reads"]
            real["reads"] += 1

        @settings(
            max_examples=BATCHES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(recipes, min_size=PER_BATCH, max_size=PER_BATCH))
        def fuzz(batch: list[tuple[Any, ...]]) -> None:
            run(one_batch(batch), 300)

        try:
            fuzz()
        finally:
            for fuzzer in fuzzers:
                fuzzer._drop()
            run(consumer.close(), 30)
        left = run(live.wait_for_handlers(at_most=0, timeout=30.0), 60)
        held = [i for i in live.ring.snapshot() if i.state in (SlotState.READING, SlotState.WRITING)]
        stats = dict(live.server.stats)
    assert outcomes["frames"] >= BATCHES * PER_BATCH, outcomes
    assert outcomes["neither answered nor closed"] == 0, outcomes
    assert outcomes["answered"] + outcomes["closed"] == outcomes["frames"], outcomes
    assert outcomes["payloads"] > 0 and outcomes["closed"] > 0, f"both paths were exercised: {outcomes}"
    assert stats["unauthorized"] > 0 and stats["bad_requests"] > 0, stats
    assert real["reads"] >= BATCHES, "the real consumer read after every batch"
    assert left == 0, f"{left} handlers leaked"
    assert not held, f"slots left held: {held}"
