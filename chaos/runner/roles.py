"""Entry points of the processes a scenario runs: producer, server, consumers (all spawned).

Each role redirects its stdout/stderr to `logs/<proc>.log` and registers faulthandler on SIGUSR1,
so the runner can dump every process's stacks on a hang. Roles stop when their stop event is set
or the runner's pipe closes, so nothing outlives a runner that died.
"""

from __future__ import annotations

import asyncio
import faulthandler
import logging
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chaos.channel import ChannelClient, ChannelClosedError
from chaos.content import make_payload, verify_payload
from transport.checksum import checksum
from transport.errors import RingFullError


def setup_process(run_dir: str, proc: str) -> None:
    """Send this process's output to its log and let SIGUSR1 dump its stacks there."""
    log_path = Path(run_dir) / "logs" / f"{proc}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    faulthandler.enable(all_threads=True)  # a crash in native code (UCX) leaves its stacks in the log
    logging.basicConfig(
        level=logging.WARNING, format=f"%(asctime)s {proc} %(name)s %(levelname)s %(message)s"
    )


# -- producer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProducerConfig:
    run_dir: str
    ring_name: str
    host: str
    ports: tuple[int, ...]  # what descriptors advertise (proxy ports under network faults)
    seed: int
    rate: float
    min_bytes: int
    max_bytes: int
    count: int | None
    write_timeout: float = 0.5
    protocol: str = "commit"  # which capability descriptors carry


def producer_main(cfg: ProducerConfig, channel: ChannelClient, stop: Any) -> None:
    """Write payloads at `rate` until `stop` is set (or `count` is reached) and publish them."""
    setup_process(cfg.run_dir, "producer")
    from transport.events import JsonlSink
    from transport.protocol import RingKey
    from transport.ring import SharedRing

    ring = SharedRing.attach(cfg.ring_name)
    ring_key = RingKey(ring.secret, ring.ring_id)
    events = JsonlSink(Path(cfg.run_dir) / "events" / "producer.jsonl", "producer")
    rng = random.Random(cfg.seed)
    interval = 1.0 / cfg.rate
    next_at = time.monotonic()
    seq = 0
    try:
        while not stop.is_set() and (cfg.count is None or seq < cfg.count):
            delay = next_at - time.monotonic()
            if delay > 0:
                stop.wait(delay)
                continue
            next_at = max(next_at + interval, time.monotonic() - 1.0)  # catch up at most 1 s
            nbytes = rng.randint(cfg.min_bytes, cfg.max_bytes)
            payload = make_payload(cfg.seed, seq, nbytes)
            while not stop.is_set():
                try:
                    written = ring.write(payload, timeout=cfg.write_timeout)
                    break
                except RingFullError:
                    continue  # block policy: consumers are behind (or faulted); keep trying
            else:
                break
            if written.dropped is not None:
                d = written.dropped
                events.emit("dropped", key=f"{d.slot}:{d.generation}", slot=d.slot, generation=d.generation)
            channel.publish(
                {
                    "host": cfg.host,
                    "ports": list(cfg.ports),
                    "ring_id": ring.ring_id,
                    "ring_slots": ring.slots,
                    "slot": written.slot,
                    "generation": written.generation,
                    "nbytes": written.nbytes,
                    "checksum": written.checksum,
                    "capability": ring_key.issue(written.slot, written.generation, cfg.protocol).hex(),
                    "seq": seq,
                }
            )
            seq += 1
    except ChannelClosedError:
        pass
    finally:
        events.close()
        ring.close()


# -- consumer ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerConfig:
    run_dir: str
    name: str
    seed: int
    protocol: str
    batch: int
    read_timeout: float
    quarantine: float
    max_attempts: int
    rounds: int


# Failures that another attempt cannot change; anything else stays un-acked and is redelivered.
FINAL_REASONS = frozenset({"stale", "unauthorized", "consumed", "in_doubt"})


def consumer_main(cfg: ConsumerConfig, channel: ChannelClient, stop: Any) -> None:
    setup_process(cfg.run_dir, cfg.name)
    asyncio.run(_consume(cfg, channel, stop))


async def _consume(cfg: ConsumerConfig, channel: ChannelClient, stop: Any) -> None:
    from transport.descriptor import SlotDescriptor
    from transport.events import JsonlSink
    from transport.facade import AsyncConsumer

    events = JsonlSink(Path(cfg.run_dir) / "events" / f"{cfg.name}.jsonl", cfg.name)
    consumer = AsyncConsumer(
        read_timeout=cfg.read_timeout,
        quarantine=cfg.quarantine,
        max_attempts=cfg.max_attempts,
        rounds=cfg.rounds,
        concurrency=cfg.batch,
        protocol=cfg.protocol,
        events=events,
    )
    loop = asyncio.get_running_loop()
    try:
        while not stop.is_set():
            try:
                deliveries = await loop.run_in_executor(None, channel.claim, cfg.batch, 0.5)
            except ChannelClosedError:
                break
            if not deliveries:
                continue
            raws = [dict(d.descriptor) for d in deliveries]
            seqs = [raw.pop("seq") for raw in raws]
            descs = [SlotDescriptor.from_dict(raw) for raw in raws]
            batch = await consumer.get_many(descs)
            done: list[str] = []
            retry: list[str] = []
            for i, desc in enumerate(descs):
                payload = batch.payloads[i]
                if payload is not None:
                    port = batch.ports[i]
                    events.emit(
                        "delivered",
                        key=desc.key,
                        slot=desc.slot,
                        generation=desc.generation,
                        port=desc.ports.index(port) if port in desc.ports else None,
                        nbytes=int(payload.nbytes),
                        checksum_ok=checksum(payload) == desc.checksum,
                        content_ok=verify_payload(payload, cfg.seed, seqs[i], desc.nbytes),
                        latency_s=round(batch.seconds[i], 6),
                        attempts=batch.attempts[i],
                    )
                    done.append(desc.key)
            for failure in batch.failures:
                desc = failure.descriptor
                events.emit(
                    "failed",
                    key=desc.key,
                    slot=desc.slot,
                    generation=desc.generation,
                    reason=failure.reason,
                    error=str(failure.error)[:300],
                )
                # Final failures are reported and acked; the rest goes back for another attempt.
                (done if failure.reason in FINAL_REASONS else retry).append(desc.key)
            try:
                await loop.run_in_executor(None, channel.ack, done)
                if retry:
                    await loop.run_in_executor(None, channel.nack, retry)
            except ChannelClosedError:
                break
    finally:
        await consumer.close()
        events.close()


# -- server --------------------------------------------------------------------------------------


def server_role(run_dir: str, config: Any, conn: Any) -> None:
    """`transport.serve.server_main` with the harness's logging and stack dumps."""
    setup_process(run_dir, "server")
    from transport.serve import server_main

    server_main(config, conn)
