"""Batch rounds are real: a slot whose attempts ran out goes to the next round, after its back-off.

Pure retry logic over a scripted client (no UCX): the client fails each slot a set number of times,
then reads it. Before this was fixed `AttemptsExhaustedError` was final and no slot ever reached a
second round.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from transport.client import ReadResult
from transport.descriptor import SlotDescriptor
from transport.errors import ConnectionLostError, StaleSlotError
from transport.events import NullSink
from transport.packer import fetch_batch


class ScriptedClient:
    """Fails slot s `fails[s]` times (ConnectionLost, or `error` if given), then reads it.

    Per-slot reads only: the tests call fetch_batch with batch_size=0."""

    def __init__(self, fails: dict[int, int], error: type[Exception] = ConnectionLostError) -> None:
        self.fails = dict(fails)
        self.error = error
        self.read_timeout = 1.0
        self.protocol = "commit"
        self.local = None  # no same-host path: every slot goes over the (scripted) wire
        self.events = NullSink()
        self.calls: list[tuple[int, float]] = []

    async def read(self, desc: SlotDescriptor, out: Any = None) -> ReadResult:
        self.calls.append((desc.slot, time.monotonic()))
        await asyncio.sleep(0)
        if self.fails.get(desc.slot, 0) > 0:
            self.fails[desc.slot] -= 1
            exc = self.error(f"slot {desc.slot}: scripted failure")
            exc.port = desc.ports[0]  # type: ignore[attr-defined]
            raise exc
        return ReadResult(np.zeros(4, np.uint8), desc.ports[0], desc.generation, token=7)


def desc(slot: int) -> SlotDescriptor:
    return SlotDescriptor(
        host="h",
        ports=(1,),
        ring_id="0" * 32,
        ring_slots=8,
        slot=slot,
        generation=1,
        nbytes=4,
        checksum=0,
        capability="00" * 16,
    )


def test_exhausted_slot_is_delivered_in_a_later_round() -> None:
    client = ScriptedClient({0: 5})  # 2 attempts per round: fails rounds 1 and 2, reads in round 3
    batch = asyncio.run(
        fetch_batch(client, [desc(0), desc(1)], max_attempts=2, rounds=3, round_pause=0.05, batch_size=0)  # type: ignore[arg-type]
    )
    assert batch.ok, batch.failures
    assert batch.attempts == [6, 1] and batch.tokens == [7, 7]
    times = [t for slot, t in client.calls if slot == 0]
    assert times[2] - times[1] >= 0.05 * 2 * 0.9  # round 2's back-off (round_pause * 2**1)
    assert times[4] - times[3] >= 0.05 * 4 * 0.9  # round 3's back-off (round_pause * 2**2)


def test_slot_still_exhausted_after_the_last_round_is_a_failure() -> None:
    client = ScriptedClient({0: 99})
    batch = asyncio.run(
        fetch_batch(client, [desc(0)], max_attempts=2, rounds=2, round_pause=0.01, batch_size=0)
    )  # type: ignore[arg-type]
    (failure,) = batch.failures
    assert failure.reason == "exhausted" and batch.attempts == [4]


def test_final_failure_does_not_take_more_rounds() -> None:
    client = ScriptedClient({0: 99}, error=StaleSlotError)
    batch = asyncio.run(
        fetch_batch(client, [desc(0)], max_attempts=2, rounds=3, round_pause=0.01, batch_size=0)
    )  # type: ignore[arg-type]
    (failure,) = batch.failures
    assert failure.reason == "stale" and len(client.calls) == 1
