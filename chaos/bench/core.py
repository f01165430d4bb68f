"""Benchmark: raw ucxx vs the full slot transport, in one run (`chaos bench`; its CLI is chaos/bench/cli.py).

What one run measures (issue 2, acceptance point 6):

* **raw**: two spawned processes per progress mode. The client sends an 8-byte request (the size),
  the server replies with that many bytes from a preallocated buffer, the client receives into a
  preallocated buffer. Modes: `polling`, `blocking`, `thread`, `thread+futures` (python futures, enabled
  by `ucxx.init(..., enable_python_future=True)` inside the running loop), and `hybrid` (this package's
  engine on the same pattern, reported but never the baseline). The best stock mode per size is "raw".
* **floor** (`polling/design`, `hybrid/design`): raw ucxx exchanging DESIGN §2's five messages per read
  (REQUEST; STATUS and PAYLOAD; the payload's checksum; COMMIT; COMMITTED) from preallocated buffers,
  with nothing of the stack in between. floor/raw is the highest ratio any implementation of the design
  can reach on this machine, which puts each target in context; never the baseline either.
* **stack**: a `Producer` (ring + its server process) in its own spawned process; `Consumer.get` in this
  process. The producer fills the ring between timed stretches and is idle while the consumer fetches,
  so only the consumer's fetch rate is timed (never the producer's write speed); a ring bigger than the
  memory budget is not needed because a cell refills as often as it must, untimed.
* **get_many** of 32 small slots vs 32 sequential `get`s, and the **idle CPU** of the server process
  and of a consumer process holding pooled connections (psutil, percent of one core).
* **pipeline** (issue 15, `chaos.bench.pipeline`): a producer process putting live while a consumer
  process gets each descriptor from a queue, against the same processes with the ring pre-filled, at the
  sizes up to 16 MiB, measured in every round; CPU per process per slot. And **put**: `Producer.put`
  against a memcpy + xxh3 of the same payload (issue 13 item 4).

Each cell: an untimed warm-up that also calibrates the iteration count (so one timed repetition takes
about `cell_seconds`), then `reps` timed repetitions. Raw and stack are measured in alternation
`rounds` times (this machine drifts within a run) and the median over all repetitions is reported,
with each round's own ratio beside it. The stack runs in the
progress mode of `SLOTWIRE_PROGRESS_MODE` (default `hybrid`, see transport/progress.py);
`--stack-mode` sets it for this run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from transport import ucx
from transport.protocol import FRAME_SIZE  # every control message of the design is one frame
from transport.ucx import PROGRESS_MODES, setup_env

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

DEFAULT_SIZES = (4 * KiB, 64 * KiB, MiB, 16 * MiB, 64 * MiB)
# name -> (ucxx progress_mode, enable_python_future)
RAW_MODES: dict[str, tuple[str, bool]] = {
    "polling": ("polling", False),
    "blocking": ("blocking", False),
    "thread": ("thread", False),
    "thread+futures": ("thread", True),
    "thread-polling": ("thread-polling", False),  # not in the default set
    # This package's own engine driving the same raw pattern: separates the stack's protocol cost from
    # the progress-mode choice. Not a stock ucxx mode, so never the "best raw" baseline.
    "hybrid": ("hybrid", False),
    # The protocol floor: raw ucxx exchanging DESIGN §2's five messages (see `_raw_client`), nothing else.
    "polling/design": ("polling", False),
    "hybrid/design": ("hybrid", False),
}
DESIGN_MODES = ("polling/design", "hybrid/design")
DEFAULT_MODES = ("polling", "blocking", "thread", "thread+futures", "hybrid", *DESIGN_MODES)
OWN_MODES = ("hybrid", *DESIGN_MODES)  # reported, never the raw baseline

# Targets of issue 2, acceptance point 6 (ratio = stack GiB/s / raw GiB/s in the same run).
TARGETS = {
    "ratio_large": 0.85,  # sizes >= 1 MiB
    "ratio_large_min_size": MiB,
    "ratio_small": 0.5,  # sizes <= 4 KiB
    "ratio_small_max_size": 4 * KiB,
    "get_many_speedup": 2.0,  # get_many(32 x 4 KiB) slots/s over 32 sequential gets
    "idle_cpu_percent": 5.0,  # idle server process and idle consumer process, each, % of one core
}

GET_MANY_SLOTS = 32
GET_MANY_SIZE = 4 * KiB
SCHEMA = "slotwire-bench/1"
EXIT_TARGET_MISSED = 1
EXIT_HARNESS_ERROR = 3


class BenchError(RuntimeError):
    """The benchmark could not run (a child failed or did not answer in time)."""


@dataclass
class BenchConfig:
    sizes: tuple[int, ...] = DEFAULT_SIZES
    modes: tuple[str, ...] = DEFAULT_MODES
    quick: bool = False
    reps: int = 2
    # raw and stack are measured in alternation this many times: the machine drifts by up to 30 %
    # within a run, and a raw phase measured minutes before the stack phase skews their ratio
    rounds: int = 2
    cell_seconds: float = 1.0  # one timed repetition
    warmup_seconds: float = 0.25  # calibration batch length (untimed)
    idle_seconds: float = 3.0
    stack_mode: str | None = None  # SLOTWIRE_PROGRESS_MODE for the stack; None = environment/default
    ports: int = 4
    ring_budget: int = GiB  # shared memory per stack ring; cells refill it as often as needed
    max_ring_slots: int = 4096
    json_path: str | None = None
    # Measure the stack a second time with these server options (e.g. a link wrapper) and report the
    # throughput ratio: what an installed wrapper costs. `chaos bench --chaos-overhead` fills it in.
    compare_server_options: dict[str, Any] | None = None
    compare_label: str = "compare"
    pipeline: bool = True  # the pipeline and put rows (issue 15), at the sizes up to 16 MiB

    @classmethod
    def make(cls, quick: bool = False, **overrides: Any) -> BenchConfig:
        """Defaults, or the smoke-test settings with `quick`; explicit overrides (not None) win."""
        base: dict[str, Any] = {}
        if quick:
            base = dict(
                quick=True, reps=1, rounds=1, cell_seconds=0.15, warmup_seconds=0.05, idle_seconds=1.0,
                ring_budget=256 * MiB,
            )  # fmt: skip
        base.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**base)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.sizes or any(s <= 0 for s in self.sizes):
            raise ValueError("sizes: need at least one positive size")
        unknown = [m for m in self.modes if m not in RAW_MODES]
        if unknown or not self.modes:
            raise ValueError(f"modes: unknown {unknown}; choose from {', '.join(RAW_MODES)}")
        if self.stack_mode is not None and self.stack_mode not in PROGRESS_MODES:
            raise ValueError(f"stack mode {self.stack_mode!r}: expected one of {', '.join(PROGRESS_MODES)}")
        if self.reps < 1 or self.rounds < 1 or self.cell_seconds <= 0 or self.ports < 1:
            raise ValueError("reps, rounds and ports must be >= 1, cell_seconds > 0")


# ----------------------------------------------------------------------------------------- helpers

_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB, "g": GiB}
_UNITS |= {"gb": GiB, "gib": GiB}


def parse_size(text: str) -> int:
    """`4KiB`, `64k`, `1MiB`, `16M`, `4096` -> bytes (binary units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 4KiB, 1MiB, 4096")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise ValueError(f"bad size {text!r}: must be a whole number of bytes >= 1")
    return int(value)


def parse_sizes(text: str) -> tuple[int, ...]:
    return tuple(parse_size(part) for part in text.split(",") if part.strip())


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(",") if m.strip())
    unknown = [m for m in modes if m not in RAW_MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; choose from {', '.join(RAW_MODES)}")
    return modes


def human_size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n} B"


def size_target(size: int) -> float | None:
    if size >= TARGETS["ratio_large_min_size"]:
        return TARGETS["ratio_large"]
    if size <= TARGETS["ratio_small_max_size"]:
        return TARGETS["ratio_small"]
    return None  # the issue sets no target between 4 KiB and 1 MiB


def gib_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / GiB


def stack_mode_label(env_mode: str) -> str:
    return "thread+futures" if env_mode == "thread" else env_mode


def iterations_for(per_op: float, cell_seconds: float, lo: int = 5, hi: int = 1_000_000) -> int:
    return max(lo, min(hi, math.ceil(cell_seconds / max(per_op, 1e-9))))


def _recv(conn: Any, timeout: float, what: str) -> Any:
    """A bounded wait for a child's answer on a pipe."""
    if not conn.poll(timeout):
        raise BenchError(f"{what}: no answer within {timeout:.0f}s")
    try:
        msg = conn.recv()
    except EOFError:
        raise BenchError(f"{what}: the process exited") from None
    if isinstance(msg, tuple) and msg and msg[0] == "error":
        raise BenchError(f"{what}: {msg[1]}")
    return msg


def _spawn(target: Callable[..., None], *args: Any, name: str) -> tuple[mp.process.BaseProcess, Any]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(*args, child), name=name, daemon=False)
    proc.start()
    child.close()
    return proc, parent


def _reap(proc: mp.process.BaseProcess | None, timeout: float = 10.0) -> None:
    if proc is None:
        return
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        proc.join(5.0)


def _child_error(conn: Any, exc: BaseException) -> None:
    with contextlib.suppress(Exception):
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


async def _wait_parent(conn: Any) -> None:
    """Wait, without blocking the loop (polling mode progresses inside it), for the parent's next word."""
    loop = asyncio.get_running_loop()
    ready = asyncio.Event()
    loop.add_reader(conn.fileno(), ready.set)
    try:
        await ready.wait()
    finally:
        loop.remove_reader(conn.fileno())


def _stop_ucxx() -> None:
    """Stop the notifier thread of a loop run in the main thread: it is not a daemon and would hang exit.

    In `hybrid` mode, release ucxx instead (that also stops the engine while the loop still runs).
    """
    if ucx.engine() is not None:
        ucx.release()
        return
    import ucxx

    with contextlib.suppress(Exception):
        ucxx.stop_notifier_thread()


def cpu_percent(pids: dict[str, int | None], seconds: float) -> dict[str, float | None]:
    """CPU of each process over the same `seconds` window, in percent of one core (psutil)."""
    return cpu_sample(pids, seconds)[0]


def _thread_label(pid: int, tid: int) -> str:
    import threading

    if pid == os.getpid():
        names = {t.native_id: t.name for t in threading.enumerate()}
        return names.get(tid, f"native-{tid}")  # threads Python did not start (UCX progress thread)
    return "main" if tid == pid else f"tid-{tid}"


def cpu_sample(
    pids: dict[str, int | None], seconds: float
) -> tuple[dict[str, float | None], dict[str, dict[str, float]]]:
    """Per process and per thread CPU over one `seconds` window, in percent of one core."""
    import psutil

    procs: dict[str, Any] = {}
    before: dict[str, dict[int, float]] = {}
    for key, pid in pids.items():
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            p.cpu_percent(None)
            before[key] = {t.id: t.user_time + t.system_time for t in p.threads()}
            procs[key] = p
    t0 = time.monotonic()
    time.sleep(seconds)
    out: dict[str, float | None] = dict.fromkeys(pids)
    threads: dict[str, dict[str, float]] = {}
    for key, p in procs.items():
        with contextlib.suppress(psutil.Error):
            out[key] = p.cpu_percent(None)
            elapsed = time.monotonic() - t0
            per = {}
            for t in p.threads():
                used = t.user_time + t.system_time - before[key].get(t.id, 0.0)
                if used > 0:
                    per[_thread_label(p.pid, t.id)] = round(100 * used / elapsed, 2)
            threads[key] = per
    return out, threads


# ----------------------------------------------------------------------------------------- raw ucxx


def raw_server_main(mode: str, futures: bool, max_size: int, design: bool, conn: Any) -> None:
    setup_env()
    try:
        asyncio.run(_raw_server(mode, futures, max_size, conn, design))
    except BaseException as exc:
        _child_error(conn, exc)
        raise


RawIO = tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]


def _raw_io(mode: str, futures: bool) -> RawIO:
    """Initialise ucxx for `mode` inside the running loop; (send, recv, post_recv), each taking
    (endpoint, buffer). `post_recv` starts a receive now and returns something to await later."""
    if mode == "hybrid":
        os.environ["SLOTWIRE_PROGRESS_MODE"] = "hybrid"
        ucx.init_in_loop()
        ucx.acquire()  # released by _stop_ucxx
        engine = ucx.engine()
        assert engine is not None
        return engine.send, engine.recv, engine.post_recv
    import ucxx

    ucxx.init(progress_mode=mode, enable_python_future=futures)
    # A stock endpoint posts a receive when its coroutine first runs: a task per receive, started
    # in creation order, posts them in order.
    return (
        (lambda ep, buf: ep.send(buf)),
        (lambda ep, buf: ep.recv(buf)),
        (lambda ep, buf: asyncio.ensure_future(ep.recv(buf))),
    )


async def _raw_server(mode: str, futures: bool, max_size: int, conn: Any, design: bool = False) -> None:
    """Reply with the payload; with `design`, DESIGN §2's messages around it (STATUS, then COMMITTED
    for the client's COMMIT), all fixed frames from preallocated buffers: no ring, no checks."""
    import ucxx

    send, recv, _ = _raw_io(mode, futures)
    payload = np.random.default_rng(1).integers(0, 256, max_size, dtype=np.uint8)  # preallocated, touched
    status = np.ones(FRAME_SIZE, dtype=np.uint8)
    committed = np.ones(FRAME_SIZE, dtype=np.uint8)

    async def handle(endpoint: Any) -> None:
        # The request: the size to send back, in 8 bytes (a whole frame under the design pattern).
        request = np.zeros(FRAME_SIZE // 8 if design else 1, dtype=np.uint64)
        commit = np.zeros(FRAME_SIZE, dtype=np.uint8)
        try:
            while True:
                await recv(endpoint, request)
                n = int(request[0])
                if n == 0 or n > max_size:
                    break
                if design:
                    await send(endpoint, status)
                await send(endpoint, payload[:n])
                if design:
                    await recv(endpoint, commit)
                    await send(endpoint, committed)
        except Exception:
            pass  # the client went away; the benchmark sees that on its side
        finally:
            with contextlib.suppress(Exception):
                endpoint.abort()

    listener = ucxx.create_listener(handle, 0)
    try:
        conn.send(("ready", listener.port, os.getpid()))
        await _wait_parent(conn)
    finally:
        listener.close()
        _stop_ucxx()


def raw_client_main(
    mode: str, futures: bool, port: int, plan: dict[str, Any], design: bool, conn: Any
) -> None:
    setup_env()
    try:
        asyncio.run(_raw_client(mode, futures, port, plan, conn, design))
    except BaseException as exc:
        _child_error(conn, exc)
        raise


async def _raw_client(
    mode: str, futures: bool, port: int, plan: dict[str, Any], conn: Any, design: bool = False
) -> None:
    """Request and receive; with `design`, the least any implementation of DESIGN §2 must do per read:
    REQUEST, STATUS and PAYLOAD receives posted together, the checksum of the payload, COMMIT, then
    COMMITTED (five messages, two round trips) with no Python of the stack in between."""
    import ucxx

    from transport.checksum import checksum

    send, recv, post_recv = _raw_io(mode, futures)
    sizes: list[int] = plan["sizes"]
    request = np.zeros(FRAME_SIZE // 8 if design else 1, dtype=np.uint64)
    recv_buf = np.zeros(max(sizes), dtype=np.uint8)  # preallocated and touched
    status = np.zeros(FRAME_SIZE, dtype=np.uint8)
    commit = np.ones(FRAME_SIZE, dtype=np.uint8)
    committed = np.zeros(FRAME_SIZE, dtype=np.uint8)
    endpoint = await asyncio.wait_for(ucxx.create_endpoint("127.0.0.1", port), 30)
    try:

        async def run(size: int, n: int) -> float:
            view = recv_buf[:size]
            request[0] = size
            t0 = time.perf_counter()
            for _ in range(n):
                await send(endpoint, request)
                if not design:
                    await recv(endpoint, view)
                    continue
                got_status = post_recv(endpoint, status)  # both receives posted, in order, at once
                got_payload = post_recv(endpoint, view)
                await got_status
                await got_payload
                checksum(view)
                await send(endpoint, commit)
                await recv(endpoint, committed)
            return time.perf_counter() - t0

        results: dict[int, dict[str, Any]] = {}
        for size in sizes:
            await run(size, 3)  # first rendezvous / lanes for this size
            n, elapsed = 1, 0.0
            while True:  # calibration (autorange), untimed
                elapsed = await run(size, n)
                if elapsed >= plan["warmup_seconds"]:
                    break
                n *= 2
            iters = iterations_for(elapsed / n, plan["cell_seconds"])
            times = [await run(size, iters) for _ in range(plan["reps"])]
            results[size] = {"iterations": iters, "seconds": times}
        conn.send(("results", results, os.getpid()))
        await _wait_parent(conn)  # the parent samples idle CPU while this endpoint is held
        conn.recv()
        request[0] = 0
        with contextlib.suppress(Exception):
            await asyncio.wait_for(send(endpoint, request), 5)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(endpoint.close(), 5)
        _stop_ucxx()


def bench_raw_mode(cfg: BenchConfig, mode_name: str, log: Callable[[str], None]) -> dict[str, Any]:
    """One server/client pair in `mode_name`; every size; then idle CPU of both with the endpoint held."""
    mode, futures = RAW_MODES[mode_name]
    design = mode_name in DESIGN_MODES
    plan = {
        "sizes": list(cfg.sizes),
        "reps": cfg.reps,
        "cell_seconds": cfg.cell_seconds,
        "warmup_seconds": cfg.warmup_seconds,
    }
    budget = 60 + len(cfg.sizes) * (cfg.reps * cfg.cell_seconds * 4 + 30)
    server = client = None
    server_conn = client_conn = None
    try:
        server, server_conn = _spawn(
            raw_server_main, mode, futures, max(cfg.sizes), design, name="bench-raw-server"
        )
        _, port, server_pid = _recv(server_conn, 60, f"raw server ({mode_name})")
        client, client_conn = _spawn(
            raw_client_main, mode, futures, port, plan, design, name="bench-raw-client"
        )
        _, results, client_pid = _recv(client_conn, budget, f"raw client ({mode_name})")
        idle = cpu_percent({"server": server_pid, "client": client_pid}, min(cfg.idle_seconds, 2.0))
        client_conn.send("done")
        _reap(client)  # first the client, so the server's handler has ended when its listener closes
        server_conn.send("stop")
        _reap(server)
    finally:
        for proc in (client, server):
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(5)
        for c in (client_conn, server_conn):
            if c is not None:
                c.close()
    cells = {}
    for size, r in results.items():
        rates = [gib_s(size * r["iterations"], s) for s in r["seconds"]]
        cells[str(size)] = {
            "size": size,
            "iterations": r["iterations"],
            "seconds": r["seconds"],
            "gib_s": rates,
            "median_gib_s": statistics.median(rates),
            "median_slots_s": statistics.median(r["iterations"] / s for s in r["seconds"]),
        }
        log(f"raw {mode_name:>14} {human_size(size):>7}: {cells[str(size)]['median_gib_s']:.3f} GiB/s")
    return {"mode": mode, "python_futures": futures, "cells": cells, "idle_cpu_percent": idle}


# ----------------------------------------------------------------------------------------- the stack


def producer_main(
    size: int, slots: int, ports: int, server_options: dict[str, Any] | None, conn: Any
) -> None:
    """Owns a `Producer` (ring + server process); writes `fill` batches on request, idle otherwise."""
    setup_env()
    try:
        from transport.facade import Producer

        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        with Producer(slots=slots, slot_bytes=size, ports=ports, server_options=server_options) as producer:
            conn.send(("ready", producer.server.pid, producer.ring.name, os.getpid()))
            while True:
                cmd, arg = conn.recv()
                if cmd == "fill":
                    conn.send([producer.put(data, timeout=30.0) for _ in range(arg)])
                elif cmd == "close":
                    break
    except BaseException as exc:
        _child_error(conn, exc)
        raise


class ProducerHost:
    """A spawned process holding a Producer; `fill(n)` returns n fresh descriptors."""

    def __init__(
        self, size: int, slots: int, ports: int, server_options: dict[str, Any] | None = None
    ) -> None:
        self.size = size
        self.slots = slots
        self.proc, self.conn = _spawn(
            producer_main, size, slots, ports, server_options, name="bench-producer"
        )
        try:
            _, self.server_pid, self.ring_name, self.pid = _recv(self.conn, 90, "producer start")
        except BaseException:
            self.kill()
            raise

    def fill(self, n: int) -> list[Any]:
        self.conn.send(("fill", n))
        return _recv(self.conn, 60 + n * self.size / (100 * MiB), "producer fill")

    def close(self) -> None:
        """Ask it to close; do not wait (its server may take a while to exit). `reap` waits."""
        with contextlib.suppress(Exception):
            self.conn.send(("close", None))

    def reap(self, timeout: float = 15.0) -> None:
        _reap(self.proc, timeout)
        self.conn.close()
        # A producer killed before its close leaves its segment behind: remove it.
        with contextlib.suppress(FileNotFoundError, AttributeError):
            os.unlink(f"/dev/shm/{self.ring_name}")

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.reap(5)


def _timed_gets(consumer: Any, host: ProducerHost, n: int, latencies: list[float] | None = None) -> float:
    """Seconds spent in n `Consumer.get` calls; the ring is refilled between stretches, untimed."""
    total = 0.0
    done = 0
    perf = time.perf_counter
    get = consumer.get
    while done < n:
        descs = host.fill(min(host.slots, n - done))
        t0 = perf()
        for d in descs:
            a = perf()
            payload = get(d)
            if latencies is not None:
                latencies.append(perf() - a)
            if payload.nbytes != d.nbytes:
                raise BenchError(f"get returned {payload.nbytes} bytes, expected {d.nbytes}")
            del payload
        total += perf() - t0
        done += len(descs)
    return total


def ring_slots(cfg: BenchConfig, size: int) -> int:
    return max(2 * cfg.ports, min(cfg.max_ring_slots, cfg.ring_budget // size))


def bench_stack_size(
    cfg: BenchConfig,
    size: int,
    hosts: list[ProducerHost],
    log: Callable[[str], None],
    server_options: dict[str, Any] | None = None,
    label: str = "stack",
) -> dict[str, Any]:
    from transport.facade import Consumer

    host = ProducerHost(size, ring_slots(cfg, size), cfg.ports, server_options)
    hosts.append(host)
    consumer = Consumer(local=False)
    try:
        _timed_gets(consumer, host, 2 * cfg.ports)  # connect to every port
        n, elapsed = 1, 0.0
        while True:  # calibration (autorange), untimed
            elapsed = _timed_gets(consumer, host, n)
            if elapsed >= cfg.warmup_seconds:
                break
            n *= 2
        iters = iterations_for(elapsed / n, cfg.cell_seconds)
        latencies: list[float] = []
        times = [_timed_gets(consumer, host, iters, latencies) for _ in range(cfg.reps)]
        stats = consumer.client.stats
        client_stats = {"reads": stats.reads, "connects": stats.connects, "quarantines": stats.quarantines}
    finally:
        consumer.close()
        host.close()
    rates = [gib_s(size * iters, s) for s in times]
    lat = np.array(latencies) * 1e6
    cell = {
        "size": size,
        "iterations": iters,
        "ring_slots": host.slots,
        "seconds": times,
        "gib_s": rates,
        "median_gib_s": statistics.median(rates),
        "median_slots_s": statistics.median(iters / s for s in times),
        "latency_us": {
            "p50": float(np.percentile(lat, 50)),
            "p90": float(np.percentile(lat, 90)),
            "p99": float(np.percentile(lat, 99)),
            "max": float(lat.max()),
        },
        "client": client_stats,
    }
    log(
        f"{label} {human_size(size):>7}: {cell['median_gib_s']:.3f} GiB/s, "
        f"{cell['median_slots_s']:.0f} slots/s"
    )
    return cell


def bench_get_many_and_idle(
    cfg: BenchConfig, hosts: list[ProducerHost], log: Callable[[str], None]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """get_many(32 x 4 KiB) vs 32 sequential gets; then idle CPU with the pooled connections held."""
    from transport.facade import Consumer

    n = GET_MANY_SLOTS
    host = ProducerHost(GET_MANY_SIZE, 4 * n, cfg.ports)
    hosts.append(host)
    consumer = Consumer(local=False)
    try:

        def batch() -> float:
            descs = host.fill(n)
            t0 = time.perf_counter()
            result = consumer.get_many(descs)
            elapsed = time.perf_counter() - t0
            if not result.ok or len(result.payloads) != n:
                raise BenchError(f"get_many failed: {[f.reason for f in result.failures]}")
            return elapsed

        def sequential() -> float:
            return _timed_gets(consumer, host, n)

        for _ in range(3):  # warm-up: connect every port, both paths
            batch()
            sequential()
        one = batch() + sequential()
        reps = max(5, min(500, math.ceil(2 * cfg.cell_seconds / one)))
        batch_s: list[float] = []
        seq_s: list[float] = []
        for _ in range(reps):  # interleaved, so drift on a shared machine hits both alike
            batch_s.append(batch())
            seq_s.append(sequential())
        batch_rate = statistics.median(n / s for s in batch_s)
        seq_rate = statistics.median(n / s for s in seq_s)
        get_many = {
            "slots": n,
            "size": GET_MANY_SIZE,
            "concurrency": consumer._inner.concurrency,
            "reps": reps,
            "get_many_seconds": batch_s,
            "sequential_seconds": seq_s,
            "get_many_slots_s": batch_rate,
            "sequential_slots_s": seq_rate,
            "speedup": batch_rate / seq_rate,
            "target": TARGETS["get_many_speedup"],
            "pass": batch_rate / seq_rate >= TARGETS["get_many_speedup"],
        }
        log(f"get_many: {batch_rate:.0f} slots/s vs sequential {seq_rate:.0f} slots/s")

        idle = _idle_cpu(cfg, host, log)
    finally:
        consumer.close()
        host.close()
    return get_many, idle


def idle_consumer_main(descriptors: list[Any], conn: Any) -> None:
    """A fresh consumer process: fetch a few slots (get_many and get), then hold the pooled endpoints idle."""
    setup_env()
    try:
        from transport.facade import Consumer

        consumer = Consumer(local=False)
        half = len(descriptors) // 2
        result = consumer.get_many(descriptors[:half])
        if not result.ok:
            raise BenchError(f"get_many failed: {[f.reason for f in result.failures]}")
        for d in descriptors[half:]:
            consumer.get(d)
        pooled = sum(len(v) for v in consumer.client._pool.values())
        conn.send(("ready", os.getpid(), pooled))
        conn.recv()  # the main thread sleeps here; the process holds its pool until told to close
        consumer.close()
        conn.send(("closed",))
    except BaseException as exc:
        _child_error(conn, exc)
        raise


def _idle_cpu(cfg: BenchConfig, host: ProducerHost, log: Callable[[str], None]) -> dict[str, Any]:
    """CPU of the idle server and of a fresh idle consumer process holding pooled endpoints.

    The consumer is a process of its own, so the number is that of a trainer that only fetched, not of
    this process, which has opened and closed a Consumer per size (sampled too, as
    `bench_process_percent`, informational; closed consumers leave nothing running: six opened and
    closed in one process left 3 threads and 0.0 % idle CPU).
    """
    child, conn = _spawn(idle_consumer_main, host.fill(16), name="bench-idle-consumer")
    try:
        _, child_pid, pooled = _recv(conn, 120, "idle consumer")
        time.sleep(0.5)  # let the last replies settle
        sampled, per_thread = cpu_sample(
            {"server": host.server_pid, "consumer": child_pid, "producer": host.pid, "bench": os.getpid()},
            cfg.idle_seconds,
        )
        conn.send("close")
        _recv(conn, 30, "idle consumer close")
        _reap(child)
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        conn.close()
    target = TARGETS["idle_cpu_percent"]
    server_cpu, consumer_cpu = sampled["server"], sampled["consumer"]
    log(f"idle: server {server_cpu}% consumer {consumer_cpu}% of a core ({pooled} pooled endpoints)")
    return {
        "seconds": cfg.idle_seconds,
        "server_percent": server_cpu,
        "consumer_percent": consumer_cpu,
        "consumer_pooled_endpoints": pooled,
        "producer_percent": sampled["producer"],  # informational: not a target
        "bench_process_percent": sampled["bench"],  # informational: see the docstring
        "per_thread_percent": per_thread,  # where idle CPU goes (UCX progress thread, notifier, ...)
        "target": target,
        "pass": server_cpu is not None
        and consumer_cpu is not None
        and server_cpu < target
        and consumer_cpu < target,
    }


# ----------------------------------------------------------------------------------------- the run


def machine_info() -> dict[str, Any]:
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    model = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import psutil

    return {
        "cpus": os.cpu_count(),
        "cpus_physical": psutil.cpu_count(logical=False),
        "cpu_model": model,
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "ucxx": version("ucxx-cu12") or version("ucxx"),
        "libucx": version("libucx-cu12") or version("libucx"),
        "numpy": np.__version__,
        "ucx_env": {k: v for k, v in os.environ.items() if k.startswith(("UCX_", "UCXPY_", "SLOTWIRE_"))},
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def merge_cells(cells: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One cell from the same cell measured in several rounds: medians over every repetition."""
    if len(cells) == 1:
        return cells[0]
    rates = [g for c in cells for g in c["gib_s"]]
    slots = [c["iterations"] / s for c in cells for s in c["seconds"]]
    return {
        **cells[0],
        "seconds": [s for c in cells for s in c["seconds"]],
        "iterations_by_round": [c["iterations"] for c in cells],
        "gib_s": rates,
        "median_gib_s": statistics.median(rates),
        "median_slots_s": statistics.median(slots),
        "rounds": len(cells),
    }


def merge_raw_mode(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    keys = results[0]["cells"]
    merged = {k: merge_cells([r["cells"][k] for r in results]) for k in keys}
    return {**results[-1], "cells": merged}


def build_rows(
    raw: dict[str, Any], stack: dict[str, Any], sizes: Sequence[int], stack_mode: str
) -> list[dict[str, Any]]:
    """One row per size: best raw mode vs the stack; also the ratio against raw in the stack's own mode,
    which separates the stack's overhead from the progress-mode choice."""
    rows = []
    for size in sizes:
        key = str(size)
        stock = {m: r for m, r in raw.items() if m not in OWN_MODES} or raw
        best_mode, best = max(
            ((m, r["cells"][key]["median_gib_s"]) for m, r in stock.items()), key=lambda t: t[1]
        )
        cell = stack[key]
        ratio = cell["median_gib_s"] / best
        target = size_target(size)
        same = raw.get(stack_mode, {}).get("cells", {}).get(key, {}).get("median_gib_s")
        # The protocol floor: DESIGN §2's messages over raw ucxx, the best any implementation can do.
        floors = [(m, raw[m]["cells"][key]["median_gib_s"]) for m in DESIGN_MODES if m in raw]
        floor_mode, floor = max(floors, key=lambda t: t[1]) if floors else (None, None)
        rows.append(
            {
                "size": size,
                "raw_gib_s": best,
                "raw_mode": best_mode,
                "raw_slots_s": raw[best_mode]["cells"][key]["median_slots_s"],
                "stack_gib_s": cell["median_gib_s"],
                "stack_slots_s": cell["median_slots_s"],
                "ratio": ratio,
                "target": target,
                "pass": None if target is None else ratio >= target,
                "raw_same_mode_gib_s": same,
                "ratio_same_mode": None if not same else cell["median_gib_s"] / same,
                "floor_gib_s": floor,
                "floor_mode": floor_mode,
                "floor_ratio": None if not floor else floor / best,  # the ratio a zero-cost stack would get
                "ratio_to_floor": None if not floor else cell["median_gib_s"] / floor,
            }
        )
    return rows


def run(cfg: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every measurement; returns the report (also the JSON document)."""
    log = log or (lambda msg: None)
    setup_env()
    if cfg.stack_mode is not None:
        os.environ["SLOTWIRE_PROGRESS_MODE"] = cfg.stack_mode
    from transport.ucx import progress_mode

    stack_env_mode, _ = progress_mode()
    started = time.time()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "config": {**asdict(cfg), "sizes": list(cfg.sizes), "modes": list(cfg.modes)},
        "machine": machine_info(),
        "targets": TARGETS,
        "stack_mode": stack_mode_label(stack_env_mode),
        "load": {"start": _load()},
    }
    raw_rounds: list[dict[str, Any]] = []
    stack_rounds: list[dict[str, Any]] = []
    pipe_rounds: list[dict[str, Any]] = []
    hosts: list[ProducerHost] = []
    try:
        for round_no in range(1, cfg.rounds + 1):
            if cfg.rounds > 1:
                log(f"round {round_no}/{cfg.rounds}")
            raw_rounds.append({mode_name: bench_raw_mode(cfg, mode_name, log) for mode_name in cfg.modes})
            report["load"][f"after_raw_{round_no}"] = _load()
            stack_rounds.append({str(size): bench_stack_size(cfg, size, hosts, log) for size in cfg.sizes})
            report["load"][f"after_stack_{round_no}"] = _load()
            if cfg.pipeline:
                pipe_rounds.append(bench_pipeline_round(cfg, round_no, log))
                report["load"][f"after_pipeline_{round_no}"] = _load()
        raw = {m: merge_raw_mode([r[m] for r in raw_rounds]) for m in cfg.modes}
        stack = {key: merge_cells([r[key] for r in stack_rounds]) for key in stack_rounds[0]}
        if cfg.compare_server_options is not None:
            report["compare"] = compare_stack(cfg, stack, hosts, log)
        get_many, idle = bench_get_many_and_idle(cfg, hosts, log)
    finally:
        for host in hosts:
            host.close()
        for host in hosts:
            host.reap()
    report["load"]["end"] = _load()
    rows = build_rows(raw, stack, cfg.sizes, report["stack_mode"])
    # The ratio within each round too: how much drift moved it.
    per_round = [
        build_rows(r, st, cfg.sizes, report["stack_mode"])
        for r, st in zip(raw_rounds, stack_rounds, strict=True)
    ]
    for i, row in enumerate(rows):
        row["ratio_by_round"] = [round_rows[i]["ratio"] for round_rows in per_round]
    report.update(raw=raw, stack=stack, rows=rows, get_many=get_many, idle_cpu=idle)
    judged = [r["pass"] for r in rows if r["pass"] is not None] + [get_many["pass"], idle["pass"]]
    if cfg.pipeline:
        report["pipeline"] = pipeline_rows(pipe_rounds, rows)
        report["put"] = [bench_put(cfg, size) for size in pipeline_sizes(cfg)]
        judged += [r["pass"] for r in report["pipeline"] + report["put"] if r["pass"] is not None]
    report["passed"] = all(judged)
    report["duration_s"] = time.time() - started
    return report


def pipeline_sizes(cfg: BenchConfig) -> list[int]:
    from chaos.bench.pipeline import PIPELINE_SIZES

    return [s for s in cfg.sizes if s <= max(PIPELINE_SIZES)]


def bench_pipeline_round(cfg: BenchConfig, round_no: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Every pipeline size once, pre-filled and live on the same processes; the order of the two
    alternates by round so neither always runs first."""
    from chaos.bench.pipeline import MODES, bench_pipeline_size

    order = MODES if round_no % 2 else tuple(reversed(MODES))
    return {
        str(size): bench_pipeline_size(
            size,
            ports=cfg.ports,
            reps=cfg.reps,
            cell_seconds=cfg.cell_seconds,
            warmup_seconds=cfg.warmup_seconds,
            order=order,
            log=log,
        )
        for size in pipeline_sizes(cfg)
    }


def pipeline_rows(rounds: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Live vs pre-filled per size, medians over every repetition of every round, with each round's own
    ratio; live against raw ucxx too (issue 13's pipeline target) when raw ran at that size."""
    from chaos.bench.pipeline import MODES, pipeline_target

    raw = {r["size"]: r["raw_gib_s"] for r in rows}
    out = []
    for key in rounds[0] if rounds else {}:
        size = int(key)
        merged = {m: merge_cells([r[key][m] for r in rounds]) for m in MODES}
        pre, live = merged["prefilled"], merged["live"]
        ratio = live["median_gib_s"] / pre["median_gib_s"]
        target = pipeline_target(size)
        cpu = {
            m: {
                p: statistics.median(r[key][m]["cpu_us_per_slot"][p] for r in rounds)
                for p in pre["cpu_us_per_slot"]
            }
            for m in MODES
        }
        out.append(
            {
                "size": size,
                "prefilled_gib_s": pre["median_gib_s"],
                "prefilled_slots_s": pre["median_slots_s"],
                "live_gib_s": live["median_gib_s"],
                "live_slots_s": live["median_slots_s"],
                "ratio": ratio,
                "target": target,
                "pass": ratio >= target,
                "ratio_by_round": [
                    r[key]["live"]["median_gib_s"] / r[key]["prefilled"]["median_gib_s"] for r in rounds
                ],
                "live_over_raw": live["median_gib_s"] / raw[size] if size in raw else None,
                "cpu_us_per_slot": cpu,
                "cpu_bound_ratio": cpu_bound_ratio(cpu["live"]),
                "cells": [r[key] for r in rounds],
            }
        )
    return out


def cpu_bound_ratio(cpu_us_per_slot: dict[str, float]) -> float:
    """The best live/pre-filled ratio a CPU-bound machine allows: live, every slot costs the producer's
    CPU as well, in the same time; pre-filled, the producer's share is spent outside the timed gets.
    (server + consumer) / (producer + server + consumer), from the live cell's own CPU per slot."""
    readers = cpu_us_per_slot["server"] + cpu_us_per_slot["consumer"]
    return readers / (readers + cpu_us_per_slot["producer"])


def bench_put(cfg: BenchConfig, size: int) -> dict[str, Any]:
    from chaos.bench.pipeline import bench_put_size

    return bench_put_size(size, reps=3 if cfg.quick else 5, cell_seconds=0.05 if cfg.quick else 0.3)


def compare_stack(
    cfg: BenchConfig, stack: dict[str, Any], hosts: list[ProducerHost], log: Callable[[str], None]
) -> dict[str, Any]:
    """The stack again with `compare_server_options`, interleaved with fresh plain cells so load
    drift hits both alike; ratio = with options / plain (1.0 = free)."""
    rows = []
    for size in cfg.sizes:
        plain = [stack[str(size)]["median_gib_s"]]
        other = []
        for _ in range(2):
            other.append(
                bench_stack_size(cfg, size, hosts, log, cfg.compare_server_options, cfg.compare_label)[
                    "median_gib_s"
                ]
            )
            plain.append(bench_stack_size(cfg, size, hosts, log)["median_gib_s"])
        base, with_options = statistics.median(plain), statistics.median(other)
        rows.append(
            {"size": size, "plain_gib_s": base, "with_gib_s": with_options, "ratio": with_options / base}
        )
    return {"label": cfg.compare_label, "rows": rows}


def default_json_path() -> Path:
    return Path("reports") / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"


def write_json(report: dict[str, Any], path: str | Path | None) -> Path:
    target = Path(path) if path else default_json_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    return target


def make_console() -> Any:
    """A rich console; 150 columns when not a terminal (CI logs), so the table is not squeezed."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150)


def print_report(report: dict[str, Any], console: Any = None) -> None:
    """The console report: stack vs raw per size, raw ucxx by mode, then get_many, idle CPU and load."""
    console = console or make_console()
    _print_rows(report, console)
    _print_modes(report, console)
    _print_get_many_and_idle(report, console)


def _print_rows(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    machine = report["machine"]
    table = Table(
        title=f"slot transport vs raw ucxx — {machine['cpus']} CPUs, python {machine['python']}, "
        f"ucxx {machine['ucxx']}, stack mode {report['stack_mode']}"
        + (" (quick: not a measurement)" if report["config"]["quick"] else "")
    )
    for col in (
        "size",
        "raw GiB/s (mode)",
        "stack GiB/s",
        "stack slots/s",
        "ratio stack/raw",
        "target",
        "pass",
    ):
        table.add_column(col, justify="left" if col == "size" else "right")
    table.add_column(f"ratio vs raw {report['stack_mode']}", justify="right")
    table.add_column("ratio by round", justify="right")
    table.add_column("floor/raw", justify="right")
    table.add_column("of floor", justify="right")
    for r in report["rows"]:
        table.add_row(
            human_size(r["size"]),
            f"{r['raw_gib_s']:.3f} ({r['raw_mode']})",
            f"{r['stack_gib_s']:.3f}",
            f"{r['stack_slots_s']:,.0f}",
            f"{r['ratio']:.2f}",
            _target_cell(r["target"]),
            _pass_cell(r["pass"]),
            _ratio(r["ratio_same_mode"]),
            " ".join(f"{x:.2f}" for x in r.get("ratio_by_round", ())),
            _ratio(r.get("floor_ratio")),
            _ratio(r.get("ratio_to_floor")),
        )
    console.print(table)
    if any(r.get("floor_ratio") for r in report["rows"]):
        console.print(
            "floor/raw: raw ucxx exchanging only DESIGN §2's five messages per read (two round trips plus "
            "the checksum), over raw: the highest ratio any implementation of the design can reach here. "
            "of floor: the stack over that floor."
        )


def _print_modes(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    modes = Table(title="raw ucxx by progress mode, GiB/s (median); idle CPU % of a core server/client")
    modes.add_column("mode")
    for size in report["config"]["sizes"]:
        modes.add_column(human_size(size), justify="right")
    modes.add_column("idle CPU", justify="right")
    for name, r in report["raw"].items():
        idle = r["idle_cpu_percent"]
        modes.add_row(
            name,
            *(f"{r['cells'][str(s)]['median_gib_s']:.3f}" for s in report["config"]["sizes"]),
            f"{idle['server']:.0f} / {idle['client']:.0f}",
        )
    console.print(modes)


def _verdict(ok: bool) -> str:
    return "[green]pass[/]" if ok else "[red]FAIL[/]"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f}%"


def _print_get_many_and_idle(report: dict[str, Any], console: Any) -> None:
    g = report["get_many"]
    console.print(
        f"get_many({g['slots']} x {human_size(g['size'])}): {g['get_many_slots_s']:,.0f} slots/s vs "
        f"{g['slots']} sequential gets: {g['sequential_slots_s']:,.0f} slots/s -> "
        f"{g['speedup']:.2f}x (target >= {g['target']:.1f}x) {_verdict(g['pass'])}"
    )
    i = report["idle_cpu"]
    console.print(
        f"idle CPU over {i['seconds']:.0f}s: server {_pct(i['server_percent'])}, consumer "
        f"{_pct(i['consumer_percent'])} ({i['consumer_pooled_endpoints']} pooled endpoints) of one core "
        f"(target < {i['target']:.0f}% each) {_verdict(i['pass'])}; producer {_pct(i['producer_percent'])}, "
        f"this benchmark process {_pct(i.get('bench_process_percent'))}"
    )
    load = report["load"]
    console.print(
        f"load average (1/5/15 min) start {load['start']}, end {load['end']}; "
        f"took {report['duration_s']:.0f}s; overall {_verdict(report['passed'])}"
    )


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _target_cell(target: float | None) -> str:
    return "-" if target is None else f">= {target:.2f}"


def _pass_cell(passed: bool | None) -> str:
    return {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[passed]


def print_pipeline(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    if not report.get("pipeline"):
        return
    table = Table(title="pipeline: producer putting live while the consumer gets (same processes, same run)")
    cols = ("size", "pre-filled slots/s", "live slots/s", "live GiB/s", "live/pre-filled", "target", "pass")
    for col in (*cols, "by round", "CPU bound", "live/raw", "CPU us/slot live: producer / server / consumer"):
        table.add_column(col, justify="left" if col == "size" else "right")
    for r in report["pipeline"]:
        cpu = r["cpu_us_per_slot"]["live"]
        table.add_row(
            human_size(r["size"]),
            f"{r['prefilled_slots_s']:,.0f}",
            f"{r['live_slots_s']:,.0f}",
            f"{r['live_gib_s']:.3f}",
            f"{r['ratio']:.2f}",
            _target_cell(r["target"]),
            _pass_cell(r["pass"]),
            " ".join(f"{x:.2f}" for x in r["ratio_by_round"]),
            f"{r['cpu_bound_ratio']:.2f}",
            _ratio(r["live_over_raw"]),
            f"{cpu['producer']:.0f} / {cpu['server']:.0f} / {cpu['consumer']:.0f}",
        )
    console.print(table)
    console.print(
        "CPU bound: (server + consumer) / (producer + server + consumer) CPU per slot, the best "
        "live/pre-filled ratio when the cores are saturated (live, the producer's CPU is spent during "
        "the timed gets)."
    )
    put = Table(title="Producer.put vs memcpy + xxh3 of the same payload (one process)")
    for col in ("size", "put us", "memcpy+xxh3 us", "put GiB/s", "ratio", "target", "pass"):
        put.add_column(col, justify="left" if col == "size" else "right")
    for r in report["put"]:
        put.add_row(
            human_size(r["size"]),
            f"{r['put_us']:.1f}",
            f"{r['memcpy_xxh3_us']:.1f}",
            f"{r['put_gib_s']:.2f}",
            f"{r['ratio']:.2f}",
            _target_cell(r["target"]),
            _pass_cell(r["pass"]),
        )
    console.print(put)


def print_compare(report: dict[str, Any], console: Any) -> None:
    compare = report.get("compare")
    if not compare:
        return
    from rich.table import Table

    table = Table(title=f"stack with {compare['label']} vs plain stack (same run, medians)")
    for col in ("size", "plain GiB/s", f"{compare['label']} GiB/s", "ratio"):
        table.add_column(col, justify="right")
    for r in compare["rows"]:
        table.add_row(
            human_size(r["size"]), f"{r['plain_gib_s']:.3f}", f"{r['with_gib_s']:.3f}", f"{r['ratio']:.2f}"
        )
    console.print(table)


def run_and_report(cfg: BenchConfig, console: Any = None) -> tuple[dict[str, Any], Path, int]:
    """Run, print, write the JSON; returns (report, json path, exit code)."""
    console = console or make_console()
    report = run(cfg, log=lambda msg: console.print(f"[dim]{msg}[/]"))
    path = write_json(report, cfg.json_path)
    print_report(report, console)
    print_pipeline(report, console)
    print_compare(report, console)
    console.print(f"JSON: {path}")
    code = 0 if report["passed"] or cfg.quick else EXIT_TARGET_MISSED
    return report, path, code
