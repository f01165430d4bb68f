"""Batch fetch for trainers: per-slot retries, several rounds over what failed, failures as data.

A trainer wants a batch, not an exception: `fetch_batch` returns every payload it could commit and,
for the rest, one `SlotFailure` each with its reason. STALE, UNAUTHORIZED and NOT_READY (consumed)
are final at once;
an in-doubt read is final too (retrying could deliver the slot twice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from transport.client import ReadResult, SlotClient
from transport.descriptor import SlotDescriptor
from transport.errors import (
    AttemptsExhaustedError,
    BusyError,
    ConfigError,
    TransportError,
)
from transport.protocol import BATCH_MAX

T = TypeVar("T")


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
    """A failed slot's reason: the error class's `reason` (the policy table in transport.errors)."""
    return exc.reason if isinstance(exc, TransportError) else "error"


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
    batch_size: int = 32,
) -> BatchResult:
    """Fetch every descriptor, then retry failed retryable slots for up to `rounds` rounds.

    Descriptors the client reads from this host's shared memory go one by one (no wire). The rest
    are grouped by producer (host, ports, ring) and read `batch_size` at a time with one batched
    exchange each (`SlotClient.read_batch`), `concurrency` exchanges in flight, each on the next
    healthy port; a slot that failed retryably is read again in a later batch (up to `max_attempts`
    per round). `batch_size=0` (or the single-chunk protocol) reads every slot on its own.

    Round r > 0 starts after `min(read_timeout, round_pause * 2**r)`: a slot whose `max_attempts`
    were all used up (every port failed it just now) gets a fresh set of attempts once the ports had
    time to recover. `attempts` counts every attempt over all rounds.
    """
    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: must be >= 1")
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency}: must be >= 1")
    if not 0 <= batch_size <= BATCH_MAX:
        raise ConfigError(f"batch_size={batch_size}: must be in 0..{BATCH_MAX}")
    n = len(descriptors)
    state = _BatchState(n)
    batched = batch_size > 0 and client.protocol == "commit"
    local = client.local
    singles = [
        i
        for i in range(n)
        if not batched or (local is not None and local.ring_for(descriptors[i]) is not None)
    ]
    grouped = sorted(set(range(n)) - set(singles))
    for round_no in range(rounds):
        todo_single = [i for i in singles if state.open(i)]
        todo_batch = [i for i in grouped if state.open(i)]
        if not todo_single and not todo_batch:
            break
        if round_no:
            await asyncio.sleep(min(client.read_timeout, round_pause * 2**round_no))
        await _singles(client, descriptors, todo_single, state, max_attempts, concurrency)
        await _batches(client, descriptors, todo_batch, state, max_attempts, concurrency, batch_size)
    failures = [
        SlotFailure(i, descriptors[i], failure_reason(state.last_error[i]), state.last_error[i])
        for i in range(n)
        if state.payloads[i] is None
    ]
    return BatchResult(state.payloads, failures, state.attempts, state.ports, state.seconds, state.tokens)


class _BatchState:
    """Per-slot outcome of a fetch_batch call, filled by both the single and the batched path."""

    def __init__(self, n: int) -> None:
        self.payloads: list[np.ndarray | None] = [None] * n
        self.attempts = [0] * n
        self.ports: list[int | None] = [None] * n
        self.seconds = [0.0] * n
        self.tokens = [0] * n  # the committing read's token (0 if none)
        self.last_error: dict[int, TransportError] = {}
        self.final: set[int] = set()

    def open(self, i: int) -> bool:
        return self.payloads[i] is None and i not in self.final

    def done(self, i: int, result: ReadResult) -> None:
        self.payloads[i] = result.payload
        self.ports[i] = result.port
        self.tokens[i] = result.token
        self.last_error.pop(i, None)

    def failed(self, i: int, exc: TransportError) -> None:
        self.last_error[i] = exc
        # A slot that used up its attempts goes to the next round (after that round's back-off);
        # only a failure no attempt can change (STALE, UNAUTHORIZED, consumed, in doubt) is final.
        if not exc.retryable and not isinstance(exc, AttemptsExhaustedError):
            self.final.add(i)


async def _drain(items: Sequence[T], concurrency: int, fn: Callable[[T], Awaitable[None]]) -> None:
    """`fn` over `items` with `concurrency` workers sharing one iterator (fewer tasks than one each).

    The workers run in a TaskGroup: `fn` turns every TransportError into per-slot data, so anything
    that escapes it is a bug or an outside failure, and the siblings are cancelled at once instead of
    going on reading (and committing) slots whose payloads nobody would receive. The first such
    error is raised as itself, not wrapped in an ExceptionGroup, so callers see what `gather` gave.
    """

    async def worker(queue: Iterator[T]) -> None:
        for item in queue:  # shared iterator: each item is taken by exactly one worker
            await fn(item)

    if not items:
        return
    queue = iter(items)
    first: BaseException | None = None
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(items))):
                group.create_task(worker(queue))
    except BaseExceptionGroup as failed:
        first = failed.exceptions[0]
    if first is not None:
        raise first  # outside the handler: its own __cause__/__context__ stay as they were


async def _singles(
    client: SlotClient,
    descriptors: Sequence[SlotDescriptor],
    todo: list[int],
    state: _BatchState,
    max_attempts: int,
    concurrency: int,
) -> None:
    async def one(i: int) -> None:
        started = time.perf_counter()
        try:
            result, used = await fetch_one(client, descriptors[i], max_attempts=max_attempts)
        except TransportError as exc:
            state.attempts[i] += len(getattr(exc, "causes", ())) or 1
            state.failed(i, exc)
        else:
            state.attempts[i] += used
            state.done(i, result)
        state.seconds[i] += time.perf_counter() - started

    await _drain(todo, concurrency, one)


async def _batches(
    client: SlotClient,
    descriptors: Sequence[SlotDescriptor],
    todo: list[int],
    state: _BatchState,
    max_attempts: int,
    concurrency: int,
    batch_size: int,
) -> None:
    """Up to `max_attempts` passes; each groups what is still open by producer into batches."""
    started = time.perf_counter()
    for attempt in range(1, max_attempts + 1):
        open_now = [i for i in todo if state.open(i)]
        if not open_now:
            break
        groups: dict[tuple[str, tuple[int, ...], str], list[int]] = {}
        for i in open_now:
            d = descriptors[i]
            groups.setdefault((d.host, d.ports, d.ring_id), []).append(i)
        # A retry goes in smaller batches (halved per attempt): a batch holds all its slots until its
        # slowest payload is through, so a port that stalls or resets would fail every slot again.
        size = max(1, batch_size >> (attempt - 1))
        chunks = [chunk for g in groups.values() for chunk in _chunks(g, descriptors, size)]
        busy = False

        async def run(chunk: list[int]) -> None:
            nonlocal busy
            results = await client.read_batch([descriptors[i] for i in chunk])
            for i, res in zip(chunk, results, strict=True):
                state.attempts[i] += 1
                if isinstance(res, ReadResult):
                    state.done(i, res)
                    continue
                state.failed(i, res)
                if res.retryable:
                    busy = busy or isinstance(res, BusyError)
                    d = descriptors[i]
                    port = getattr(res, "port", None)
                    client.events.emit(
                        "retry",
                        key=d.key,
                        port=d.ports.index(port) if port in d.ports else None,
                        reason=type(res).__name__,
                    )

        await _drain(chunks, concurrency, run)
        if attempt < max_attempts and any(state.open(i) for i in todo):
            pause = 0.01 * attempt * (5 * 2 ** (attempt - 1) if busy else 1)
            await asyncio.sleep(min(client.read_timeout, pause))
    elapsed = time.perf_counter() - started
    for i in todo:
        state.seconds[i] += elapsed


def _chunks(group: list[int], descriptors: Sequence[SlotDescriptor], size: int) -> list[list[int]]:
    """Split one producer's indexes into batches of at most `size`, never naming a slot twice in one
    batch (the same descriptor handed over twice goes to a later batch, where it meets NOT_READY)."""
    chunks: list[list[int]] = []
    slots: list[set[int]] = []
    for i in group:
        slot = descriptors[i].slot
        for chunk, seen in zip(chunks, slots, strict=True):
            if len(chunk) < size and slot not in seen:
                chunk.append(i)
                seen.add(slot)
                break
        else:
            chunks.append([i])
            slots.append({slot})
    return chunks


class DataPackerMixin:
    """Mixin for trainer data packers: `self.slot_client` must be a SlotClient.

    Gives the class `fetch_slots` (async) that turns descriptors into payloads with retry rounds,
    plus timing of the last batch for the trainer's own metrics.
    """

    slot_client: SlotClient
    fetch_max_attempts: int = 4
    fetch_rounds: int = 3
    fetch_concurrency: int = 8
    fetch_batch_size: int = 32
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
                batch_size=self.fetch_batch_size,
            )
        finally:
            self.last_fetch_seconds = time.perf_counter() - started
