"""Entry points of the processes a scenario runs: producer, server, consumers (all spawned).

Each role redirects its stdout/stderr to `logs/<proc>.log` and registers faulthandler on SIGUSR1,
so the runner can dump every process's stacks on a hang. Roles stop when their stop event is set
or the runner's pipe closes, so nothing outlives a runner that died.
"""

from __future__ import annotations

import asyncio
import faulthandler
import functools
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
from chaos.content import make_payload
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


def mark_ready(run_dir: str, proc: str) -> None:
    """This role has imported its stack: the runner starts the fault phase only after every role did."""
    ready = Path(run_dir) / "ready"
    ready.mkdir(parents=True, exist_ok=True)
    (ready / proc).touch()


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


PAUSE_STEP_S = 0.05  # how late a pausing producer may notice `stop`


def pause(stop: Any, seconds: float) -> None:
    """Sleep up to `seconds`, returning early (within PAUSE_STEP_S) once `stop` is set.

    Never `stop.wait()`: a multiprocessing.Event waiter that is SIGKILLed (a `kill` fault on the
    producer) stays counted as asleep in the Event's condition, and the runner's `stop.set()` then
    blocks forever waiting for it to wake. `chaos explore` found this: a generated `kill producer`
    hung the runner past its watchdog. `is_set()` holds the condition's lock only for a moment."""
    end = time.monotonic() + seconds
    while not stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, PAUSE_STEP_S))


def producer_main(cfg: ProducerConfig, channel: ChannelClient, stop: Any) -> None:
    """Write payloads at `rate` until `stop` is set (or `count` is reached) and publish them."""
    setup_process(cfg.run_dir, "producer")
    from transport.events import JsonlSink
    from transport.local import boot_id
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
                pause(stop, delay)
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
                    "segment": ring.name,
                    "boot_id": boot_id(),
                    "seq": seq,
                }
            )
            seq += 1
    except ChannelClosedError:
        pass
    finally:
        events.close()
        ring.close()


def delayed_producer_main(
    cfg_and_start: tuple[ProducerConfig, Any], channel: ChannelClient, stop: Any
) -> None:
    """The producer waits for the fault phase so every payload is published under the faults.

    `start_at` is a shared double: 0 until the runner knows when the fault phase starts (it waits for
    every role to be up first, when the scenario allows it). Lives here, not in the orchestrator: a
    spawned child imports the module of its target, and the orchestrator's imports (pydantic, aiohttp,
    the checker, ...) cost ~1.4 s of a loaded machine's start-up before the first publish."""
    cfg, start_at = cfg_and_start
    setup_process(cfg.run_dir, "producer")  # its log file tells the runner this role is up
    while not stop.is_set():
        run_start = start_at.value
        delay = run_start - time.time()
        if run_start > 0 and delay <= 0:
            break
        pause(stop, min(delay, 0.2) if run_start > 0 else 0.05)
    else:
        return
    producer_main(cfg, channel, stop)


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
    entrypoint: str | None = None
    warm: tuple[str, tuple[int, ...]] | None = None  # (host, ports) to connect before the first claim
    transport: str = "ucx"  # "local": same-host reads from the shared segment
    borrow: bool = False  # local only: borrow each slot (zero copy) instead of copying it
    hold: float = 0.0  # seconds a borrowed slot is held before its commit (a copied batch: before its ack)
    lease: float = 30.0  # how long a local read may hold its slot
    # Client-side transport faults: `ChaosLinkWrapper(side="client")` arguments, None = no wrapper.
    link_wrapper_args: dict[str, Any] | None = None


def consumer_main(cfg: ConsumerConfig, channel: Any, stop: Any) -> None:
    """`channel` is this consumer's end of the bus: a `ChannelClient` (in process) or a
    `RedisChannelClient`; the role is `cfg.entrypoint`, else the built-in consumer."""
    setup_process(cfg.run_dir, cfg.name)
    asyncio.run(_consume(cfg, channel, stop))


async def _consume(cfg: ConsumerConfig, channel: Any, stop: Any) -> None:
    from chaos.trainer import (
        TrainerContext,
        borrow_consume,
        builtin_consume,
        load_entrypoint,
        run_entrypoint,
    )
    from transport.events import JsonlSink
    from transport.facade import AsyncConsumer

    if cfg.entrypoint:
        consume = load_entrypoint(cfg.entrypoint)
    elif cfg.borrow:
        consume = functools.partial(borrow_consume, hold=cfg.hold, max_attempts=cfg.max_attempts)
    else:
        consume = functools.partial(builtin_consume, hold=cfg.hold)
    events = JsonlSink(Path(cfg.run_dir) / "events" / f"{cfg.name}.jsonl", cfg.name)
    link_wrapper = None
    if cfg.link_wrapper_args is not None:
        from chaos.faults.transport import ChaosLinkWrapper

        # Keyed by the consumer's name: consumers must not replay each other's firing decisions.
        link_wrapper = ChaosLinkWrapper(events=events, stream=cfg.name, **cfg.link_wrapper_args)
    consumer = AsyncConsumer(
        read_timeout=cfg.read_timeout,
        quarantine=cfg.quarantine,
        max_attempts=cfg.max_attempts,
        rounds=cfg.rounds,
        concurrency=cfg.batch,
        protocol=cfg.protocol,
        events=events,
        local=cfg.transport == "local",
        local_lease=cfg.lease,
        link_wrapper=link_wrapper,
    )
    mark_ready(cfg.run_dir, cfg.name)
    if cfg.warm is not None:
        await consumer.client.warm(*cfg.warm)
    ctx = TrainerContext.build(cfg.name, cfg.batch, cfg.seed, channel, consumer, events, stop)
    try:
        await run_entrypoint(consume, ctx)
    except ChannelClosedError:
        pass
    finally:
        await consumer.close()
        channel.close()
        events.close()


# -- server --------------------------------------------------------------------------------------


def server_role(run_dir: str, config: Any, conn: Any) -> None:
    """`transport.serve.server_main` with the harness's logging and stack dumps."""
    setup_process(run_dir, "server")
    from transport.serve import server_main

    server_main(config, conn)
