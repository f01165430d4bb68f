"""Batch fetch for trainers: per-slot retries, several rounds over what failed, failures as data.

A trainer wants a batch, not an exception: `fetch_batch` returns every payload it could commit and,
for the rest, one `SlotFailure` each with its reason. STALE, UNAUTHORIZED and NOT_READY (consumed)
are final at once;
an in-doubt read is final too (retrying could deliver the slot twice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from transport.client import ReadResult, SlotClient
from transport.descriptor import SlotDescriptor
from transport.errors import (
    AttemptsExhaustedError,
    BusyError,
    ConfigError,
    InDoubtError,
    NotReadyError,
    StaleSlotError,
    TransportError,
    UnauthorizedError,
)


@dataclass(frozen=True)
class SlotFailure:
    """Why one descriptor of a batch was not delivered."""

    index: int
    descriptor: SlotDescriptor
    reason: str  # stale | unauthorized | consumed | in_doubt | exhausted | error
    error: TransportError


@dataclass
class BatchResult:
    """Payloads in descriptor order (None where the slot failed) and the failures."""

    payloads: list[np.ndarray | None]
    failures: list[SlotFailure] = field(default_factory=list)
    attempts: list[int] = field(default_factory=list)
    ports: list[int | None] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # per slot: first attempt to commit (or giving up)
    tokens: list[int] = field(default_factory=list)  # per slot: the committing read's token (0 if none)

    @property
    def ok(self) -> bool:
        return not self.failures

    def delivered(self) -> list[np.ndarray]:
        return [p for p in self.payloads if p is not None]


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, StaleSlotError):
        return "stale"
    if isinstance(exc, UnauthorizedError):
        return "unauthorized"
    if isinstance(exc, InDoubtError):
        return "in_doubt"
    if isinstance(exc, NotReadyError):
        return "consumed"
    if isinstance(exc, AttemptsExhaustedError):
        return "exhausted"
    return "error"


def retry_delay(exc: TransportError, attempt: int, backoff: float, cap: float) -> float:
    """How long to wait before the next attempt.

    A BUSY slot is held by another read (maybe one stalled on another port, which
    holds it until its step times out), so those back off exponentially up to `cap`; a link
    failure already moved to another port, so it retries almost at once.
    """
    if isinstance(exc, BusyError):
        return min(cap, backoff * 5 * 2 ** (attempt - 1))
    return backoff * attempt


async def fetch_one(
    client: SlotClient,
    desc: SlotDescriptor,
    *,
    max_attempts: int = 4,
    backoff: float = 0.01,
    out: np.ndarray | None = None,
) -> tuple[ReadResult, int]:
    """Fresh-call retries over rotating ports; returns (result, attempts used)."""
    if max_attempts < 1:
        raise ConfigError(f"max_attempts={max_attempts}: must be >= 1")
    causes: list[BaseException] = []
    for attempt in range(1, max_attempts + 1):
        try:
            return await client.read(desc, out=out), attempt
        except TransportError as exc:
            if not exc.retryable:
                raise
            causes.append(exc)
            port = getattr(exc, "port", None)
            client.events.emit(
                "retry",
                key=desc.key,
                port=desc.ports.index(port) if port in desc.ports else None,
                reason=type(exc).__name__,
            )
            if attempt < max_attempts:
                await asyncio.sleep(retry_delay(exc, attempt, backoff, client.read_timeout))
    raise AttemptsExhaustedError(
        f"slot {desc.key}: {max_attempts} attempts failed; last: {causes[-1]}", causes
    )


async def fetch_batch(
    client: SlotClient,
    descriptors: Sequence[SlotDescriptor],
    *,
    max_attempts: int = 4,
    rounds: int = 3,
    concurrency: int = 8,
    round_pause: float = 0.1,
) -> BatchResult:
    """Fetch concurrently (bounded), then retry failed retryable slots for up to `rounds` rounds.

    Round r > 0 starts after `min(read_timeout, round_pause * 2**r)`: a slot whose `max_attempts`
    were all used up (every port failed it just now) gets a fresh set of attempts once the ports had
    time to recover. `attempts` counts every attempt over all rounds.
    """
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: must be >= 1")
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency}: must be >= 1")
    n = len(descriptors)
    payloads: list[np.ndarray | None] = [None] * n
    attempts = [0] * n
    ports: list[int | None] = [None] * n
    seconds = [0.0] * n
    tokens = [0] * n
    last_error: dict[int, TransportError] = {}
    final: set[int] = set()

    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            result, used = await fetch_one(client, descriptors[i], max_attempts=max_attempts)
        except TransportError as exc:
            seconds[i] += time.perf_counter() - started
            attempts[i] += len(getattr(exc, "causes", ())) or 1
            last_error[i] = exc
            # A slot that used up its attempts goes to the next round (after that round's back-off);
            # only a failure no attempt can change (STALE, UNAUTHORIZED, consumed, in doubt) is final.
            if not exc.retryable and not isinstance(exc, AttemptsExhaustedError):
                final.add(i)
            return
        attempts[i] += used
        seconds[i] += time.perf_counter() - started
        payloads[i] = result.payload
        ports[i] = result.port
        tokens[i] = result.token
        last_error.pop(i, None)

    async def worker(queue: Iterator[int]) -> None:
        for i in queue:  # shared iterator: each index is taken by exactly one worker
            await one(i)

    todo = list(range(n))
    for round_no in range(rounds):
        if not todo:
            break
        if round_no:
            await asyncio.sleep(min(client.read_timeout, round_pause * 2**round_no))
        # `concurrency` workers over one queue: fewer tasks and no semaphore per slot than one task each.
        queue = iter(todo)
        await asyncio.gather(*(worker(queue) for _ in range(min(concurrency, len(todo)))))
        todo = [i for i in todo if payloads[i] is None and i not in final]

    failures = [
        SlotFailure(i, descriptors[i], failure_reason(last_error[i]), last_error[i])
        for i in range(n)
        if payloads[i] is None
    ]
    return BatchResult(payloads, failures, attempts, ports, seconds, tokens)


class DataPackerMixin:
    """Mixin for trainer data packers: `self.slot_client` must be a SlotClient.

    Gives the class `fetch_slots` (async) that turns descriptors into payloads with retry rounds,
    plus timing of the last batch for the trainer's own metrics.
    """

    slot_client: SlotClient
    fetch_max_attempts: int = 4
    fetch_rounds: int = 3
    fetch_concurrency: int = 8
    last_fetch_seconds: float = 0.0

    async def fetch_slots(self, descriptors: Sequence[SlotDescriptor]) -> BatchResult:
        started = time.perf_counter()
        try:
            return await fetch_batch(
                self.slot_client,
                descriptors,
                max_attempts=self.fetch_max_attempts,
                rounds=self.fetch_rounds,
                concurrency=self.fetch_concurrency,
            )
        finally:
            self.last_fetch_seconds = time.perf_counter() - started
