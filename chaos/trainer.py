"""The consumer role's interface: what the harness hands a trainer's own consumer code.

A scenario may name the consumer role's entry point, `consumers: {entrypoint: "mypkg.train:consume"}`.
Each consumer process then imports it and awaits `consume(ctx)` (a plain function returning a
coroutine works too) with one `TrainerContext`:

- `ctx.source`: the descriptor bus, like a Redis Streams consumer group. `await source.read(n, timeout)`
  returns up to `n` `Message`s (`.descriptor` is a `SlotDescriptor`); `await source.ack(messages)`
  (XACK: done with them, never again) and `await source.nack(messages)` (give them back now). An
  un-acked message of a consumer that dies or stalls past the visibility timeout is handed to another.
- `ctx.packer`: a `transport.DataPackerMixin` instance (`await ctx.packer.fetch_slots(descriptors)`)
  and `ctx.consumer`: the `AsyncConsumer` it shares its client with; both carry the scenario's client
  settings (read timeout, quarantine, attempts, rounds, batch as concurrency) and log the client's
  retries and quarantines to the run's history.
- `ctx.sink`: where the trainer reports what it trains on. `sink.delivered(descriptor, payload)` per
  payload (or `sink.record(descriptors, batch_result)` for a whole `BatchResult`). The checker judges
  exactly these reports: a message acked and never reported is `lost`, one reported twice is
  `duplicated`, a payload that does not match what was published is `corrupted`.
- `ctx.stopping()`: True once the run is over; return soon after (un-acked messages are fine).
- `ctx.batch`: the scenario's `consumers.batch`; `ctx.name`: `consumer-N`.

The harness's own consumer (`builtin_consume`) is written against the same interface, so the only
difference between a nightly run and a run of a trainer's code is which function is called.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from chaos.channel import Delivery
from chaos.content import verify_payload
from transport.checksum import checksum
from transport.descriptor import SlotDescriptor
from transport.errors import TransportError
from transport.events import EventSink
from transport.facade import AsyncConsumer
from transport.packer import BatchResult, DataPackerMixin, SlotFailure, failure_reason

# Failures that another attempt cannot change: acked. Anything else goes back for another attempt.
FINAL_REASONS = frozenset({"stale", "unauthorized", "consumed", "in_doubt"})


class ChannelEnd(Protocol):
    """A process's blocking end of the channel: `chaos.channel.ChannelClient` or
    `chaos.redis_channel.RedisChannelClient`."""

    def claim(self, n: int = 1, timeout: float = 1.0) -> list[Delivery]: ...
    def ack(self, keys: Iterable[str]) -> int: ...
    def nack(self, keys: Iterable[str]) -> int: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Message:
    """One descriptor handed to this consumer; `delivery` > 1 means it was handed out before."""

    id: int | str
    key: str
    descriptor: SlotDescriptor
    delivery: int
    duplicate: bool
    published_at: float
    seq: int | None


class DescriptorSource:
    """Async reads and acks over a blocking `ChannelEnd` (calls serialised: a pipe end serves one
    thread at a time). Logs one `claimed` event per message with its publish-to-claim latency."""

    def __init__(self, end: ChannelEnd, events: EventSink) -> None:
        self.end = end
        self.events = events
        self._lock = threading.Lock()
        self.seqs: dict[str, int | None] = {}

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self._lock:
            return fn(*args)

    async def read(self, n: int, timeout: float = 0.5) -> list[Message]:
        deliveries: list[Delivery] = await asyncio.to_thread(self._call, self.end.claim, n, timeout)
        now = time.time()
        out = []
        for d in deliveries:
            raw = dict(d.descriptor)
            seq = raw.pop("seq", None)
            self.seqs[d.key] = seq
            self.events.emit(
                "claimed",
                key=d.key,
                delivery=d.delivery,
                duplicate=d.duplicate,
                claim_latency_s=round(now - d.published_at, 6) if d.published_at else None,
            )
            out.append(
                Message(
                    d.id, d.key, SlotDescriptor.from_dict(raw), d.delivery, d.duplicate, d.published_at, seq
                )
            )
        return out

    async def ack(self, messages: Iterable[Message]) -> int:
        keys = [m.key for m in messages]
        return await asyncio.to_thread(self._call, self.end.ack, keys) if keys else 0

    async def nack(self, messages: Iterable[Message]) -> int:
        keys = [m.key for m in messages]
        return await asyncio.to_thread(self._call, self.end.nack, keys) if keys else 0


class DeliverySink:
    """What the trainer trained on, as `delivered` / `failed` events for the checker. Content is
    verified against the producer's seeded payload (`seqs` from the source) and the checksum."""

    def __init__(self, events: EventSink, seed: int, seqs: dict[str, int | None]) -> None:
        self.events = events
        self.seed = seed
        self.seqs = seqs

    def verify(self, descriptor: SlotDescriptor, payload: np.ndarray) -> tuple[bool, bool]:
        """(checksum ok, content ok) of a payload against its descriptor and the producer's seed."""
        seq = self.seqs.get(descriptor.key)
        return (
            checksum(payload) == descriptor.checksum,
            seq is None or verify_payload(payload, self.seed, seq, descriptor.nbytes),
        )

    def delivered(
        self,
        descriptor: SlotDescriptor,
        payload: np.ndarray,
        *,
        port: int | None = None,
        latency_s: float | None = None,
        attempts: int | None = None,
        verified: tuple[bool, bool] | None = None,
        **extra: Any,
    ) -> None:
        """`verified`: the payload was checked earlier with `verify` (a borrowed view is checked while
        its slot is held, and reported only once the commit succeeded). `extra` fields go into the
        event as they are (e.g. the read's fencing `token`)."""
        checksum_ok, content_ok = verified if verified is not None else self.verify(descriptor, payload)
        self.events.emit(
            "delivered",
            key=descriptor.key,
            slot=descriptor.slot,
            generation=descriptor.generation,
            port=descriptor.ports.index(port) if port in descriptor.ports else None,
            nbytes=int(payload.nbytes),
            checksum_ok=checksum_ok,
            content_ok=content_ok,
            latency_s=None if latency_s is None else round(latency_s, 6),
            attempts=attempts,
            **extra,
        )

    def failed(self, failure: SlotFailure) -> None:
        desc = failure.descriptor
        self.events.emit(
            "failed",
            key=desc.key,
            slot=desc.slot,
            generation=desc.generation,
            reason=failure.reason,
            error=str(failure.error)[:300],
        )

    def record(self, descriptors: Sequence[SlotDescriptor], batch: BatchResult) -> None:
        """`delivered` for every payload of a `BatchResult`, `failed` for every failure."""
        tokens = getattr(batch, "tokens", None)  # the committing read's token, where the client keeps it
        for i, desc in enumerate(descriptors):
            payload = batch.payloads[i]
            if payload is not None:
                extra = {"token": tokens[i]} if tokens else {}
                self.delivered(
                    desc,
                    payload,
                    port=batch.ports[i],
                    latency_s=batch.seconds[i],
                    attempts=batch.attempts[i],
                    **extra,
                )
        for failure in batch.failures:
            self.failed(failure)


def settle(messages: Sequence[Message], batch: BatchResult) -> tuple[list[Message], list[Message]]:
    """(to ack, to give back) after `fetch_slots(descriptors of messages)`: delivered slots and final
    failures are done; a retryable failure goes back for another attempt."""
    retry = {f.index for f in batch.failures if f.reason not in FINAL_REASONS}
    return [m for i, m in enumerate(messages) if i not in retry], [messages[i] for i in sorted(retry)]


class _Packer(DataPackerMixin):
    def __init__(self, consumer: AsyncConsumer) -> None:
        self.slot_client = consumer.client
        self.fetch_max_attempts = consumer.max_attempts
        self.fetch_rounds = consumer.rounds
        self.fetch_concurrency = consumer.concurrency


@dataclass
class TrainerContext:
    """Everything `consume(ctx)` gets (see the module docstring)."""

    name: str
    batch: int
    source: DescriptorSource
    consumer: AsyncConsumer
    packer: DataPackerMixin
    sink: DeliverySink
    events: EventSink
    stop: Any  # an Event-like object with is_set()

    def stopping(self) -> bool:
        return bool(self.stop.is_set())

    @classmethod
    def build(
        cls,
        name: str,
        batch: int,
        seed: int,
        end: ChannelEnd,
        consumer: AsyncConsumer,
        events: EventSink,
        stop: Any,
    ) -> TrainerContext:
        source = DescriptorSource(end, events)
        return cls(
            name,
            batch,
            source,
            consumer,
            _Packer(consumer),
            DeliverySink(events, seed, source.seqs),
            events,
            stop,
        )


def load_entrypoint(spec: str) -> Callable[[TrainerContext], Any]:
    """`"package.module:function"` -> the function. The module is imported as installed or, like
    `python -m`, from the current directory (the console script's own directory is what `sys.path`
    starts with, not the project the scenario was run from)."""
    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"consumers.entrypoint {spec!r}: {exc}") from exc
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"consumers.entrypoint {spec!r}: {module_name} has no {attr!r}") from None
    if not callable(fn):
        raise TypeError(f"consumers.entrypoint {spec!r} is not callable")
    return fn


async def run_entrypoint(fn: Callable[[TrainerContext], Any], ctx: TrainerContext) -> None:
    result = fn(ctx)
    if inspect.isawaitable(result):
        await result


# -- the harness's own consumer ------------------------------------------------------------------


async def builtin_consume(ctx: TrainerContext, depth: int = 2, hold: float = 0.0) -> None:
    """Claim, fetch, report, ack: the built-in consumer role, pipelined.

    Up to `depth` batches are in flight at once, and the next claim goes out while they are: a batch
    held up by one slow slot (a stall holds its read for seconds) no longer holds up every descriptor
    published behind it, which on an overwrite ring would only ever meet STALE. `hold` seconds pass
    between a batch's fetch and its ack (a trainer computing on its copies before it acks): a consumer
    killed then holds claimed, un-acked descriptors, which is what its kill must be judged by.
    """
    in_flight: set[asyncio.Task[None]] = set()

    async def handle(messages: list[Message]) -> None:
        descs = [m.descriptor for m in messages]
        batch = await ctx.packer.fetch_slots(descs)
        ctx.sink.record(descs, batch)
        if hold:
            await asyncio.sleep(hold)
        done, retry = settle(messages, batch)
        await ctx.source.ack(done)
        await ctx.source.nack(retry)

    try:
        while not ctx.stopping():
            if len(in_flight) >= depth:
                finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in finished:
                    in_flight.discard(task)
                    task.result()
                continue
            messages = await ctx.source.read(ctx.batch, timeout=0.1 if in_flight else 0.5)
            if messages:
                in_flight.add(asyncio.create_task(handle(messages)))
            for task in [t for t in in_flight if t.done()]:
                in_flight.discard(task)
                task.result()
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        for task in in_flight:
            task.cancel()


async def borrow_consume(ctx: TrainerContext, *, hold: float = 0.0, max_attempts: int = 4) -> None:
    """Same-host consumer that borrows each slot (a zero-copy view), checks it in place, holds it
    `hold` seconds (what a trainer's compute on the view looks like) and commits on leaving the block.

    A slot is reported delivered only after its commit succeeded; retryable failures (BUSY, an
    expired lease) get `max_attempts` tries, like the UCX path's per-slot retries.
    """
    while not ctx.stopping():
        messages = await ctx.source.read(ctx.batch, timeout=0.5)
        done: list[Message] = []
        retry: list[Message] = []
        for message in messages:
            final = await _borrow_one(ctx, message.descriptor, hold, max_attempts)
            (done if final else retry).append(message)
        await ctx.source.ack(done)
        await ctx.source.nack(retry)


async def _borrow_one(ctx: TrainerContext, desc: SlotDescriptor, hold: float, max_attempts: int) -> bool:
    """Borrow, check, hold and commit one slot; True when it is settled (delivered or finally failed)."""
    started = time.perf_counter()
    error: TransportError | None = None
    for attempt in range(1, max_attempts + 1):
        try:
            borrow = ctx.consumer.borrow(desc)
            with borrow as view:
                verified = ctx.sink.verify(desc, view)
                nbytes = int(view.nbytes)
                if hold:
                    await asyncio.sleep(hold)
        except TransportError as exc:
            error = exc
            if not exc.retryable:
                break
            ctx.events.emit("retry", key=desc.key, port=None, reason=type(exc).__name__)
            await asyncio.sleep(0.01 * attempt)
            continue
        ctx.sink.delivered(
            desc,
            np.empty(nbytes, dtype=np.uint8),  # the view is gone with the commit; only its size is read
            latency_s=time.perf_counter() - started,
            attempts=attempt,
            verified=verified,
            token=borrow.token,
        )
        return True
    assert error is not None
    failure = SlotFailure(0, desc, failure_reason(error), error)
    ctx.sink.failed(failure)
    return failure.reason in FINAL_REASONS
