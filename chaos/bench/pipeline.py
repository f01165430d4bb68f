"""Pipeline bench: a producer writing live while a consumer reads, the way a trainer runs (issue 15).

Three processes per cell, as in production: a producer process (`Producer.put` in a loop), its server
process, and a consumer process that takes each descriptor from a queue (a pipe carrying the
descriptor's JSON, as a trainer would read it from its stream) and fetches it with `Consumer.get`.
The same processes measure two modes, alternately:

* **pre-filled**: the consumer asks for a stretch of descriptors, waits until the producer has written
  them all (untimed), then times its gets while the producer is idle (what `chaos bench`'s stack row
  measures);
* **live**: the consumer asks for a stretch and starts at once; the producer writes while the consumer
  reads, blocking on the full ring when it is ahead. Descriptor decoding is timed: a trainer pays it.

CPU per process per slot (psutil, user + system) is sampled over the timed repetitions of each mode.

Only the public API of `transport` is used, plus `chaos.bench.core`'s helpers (which import
`transport.ucx` and `transport.protocol.FRAME_SIZE`), so `chaos/bench/` copied into a checkout of an
older commit measures it in the same run, interleaved (`chaos bench --ab TREE`): the A/B of
docs/decisions.md.
"""

from __future__ import annotations

import json
import multiprocessing.connection as mpc
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

PIPELINE_SIZES = (4 * KiB, 64 * KiB, MiB, 16 * MiB)
MODES = ("prefilled", "live")
RING_SLOTS = 64  # the trainer setup of issue 15: a 64-slot ring on 4 ports ...
RING_BUDGET = 512 * MiB  # ... capped in memory for the large sizes (16 MiB: 32 slots)
# Targets of issue 15 (live / pre-filled, same run) and issue 13 item 4 (put / (memcpy + xxh3)).
PIPELINE_TARGETS = {"live_ratio": 0.7, "live_ratio_large": 0.85, "large_min_size": MiB}
PUT_TARGET = 0.7
PUT_MIN_SIZE = 64 * KiB  # issue 13 sets the put target from 64 KiB up; 4 KiB is informational


def ring_slots(size: int) -> int:
    return max(8, min(RING_SLOTS, RING_BUDGET // size))


def pipeline_target(size: int) -> float:
    t = PIPELINE_TARGETS
    return t["live_ratio_large"] if size >= t["large_min_size"] else t["live_ratio"]


def _encode(descriptor: Any) -> bytes:
    return json.dumps(descriptor.to_dict(), separators=(",", ":")).encode()


# ----------------------------------------------------------------------------------- the processes


def producer_main(size: int, ports: int, requests: Any, descriptors: Any, conn: Any) -> None:
    """Owns a Producer; writes `n` payloads whenever the consumer asks, sending each descriptor."""
    from chaos.bench.core import _child_error
    from transport.ucx import setup_env

    setup_env()
    try:
        from transport.facade import Producer

        data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
        with Producer(slots=ring_slots(size), slot_bytes=size, ports=ports) as producer:
            conn.send(("ready", producer.server.pid, os.getpid(), producer.ring.name))
            put, send = producer.put, descriptors.send_bytes
            while True:
                ready = mpc.wait([conn, requests])
                if conn in ready:
                    conn.recv()  # "close"
                    break
                n = requests.recv()
                for _ in range(n):
                    send(_encode(put(data, timeout=60.0)))
    except BaseException as exc:
        _child_error(conn, exc)
        raise


def consumer_main(plan: dict[str, Any], requests: Any, descriptors: Any, conn: Any) -> None:
    """Fetches every descriptor it asked for; times stretches in the mode the parent names."""
    from chaos.bench.core import _child_error, iterations_for
    from transport.ucx import setup_env

    setup_env()
    try:
        from transport.descriptor import SlotDescriptor
        from transport.facade import Consumer

        consumer = Consumer()
        get, recv = consumer.get, descriptors.recv_bytes
        loads, decode = json.loads, SlotDescriptor.from_dict
        slots, perf = plan["slots"], time.perf_counter

        def check(payload: Any, desc: Any) -> None:
            if payload.nbytes != desc.nbytes:
                raise RuntimeError(f"get returned {payload.nbytes} bytes, expected {desc.nbytes}")

        def prefilled(n: int) -> float:
            total = 0.0
            while n > 0:
                k = min(slots, n)
                requests.send(k)
                batch = [decode(loads(recv())) for _ in range(k)]  # the producer is idle from here
                t0 = perf()
                for d in batch:
                    check(get(d), d)
                total += perf() - t0
                n -= k
            return total

        def live(n: int) -> float:
            requests.send(n)
            t0 = perf()
            for _ in range(n):
                d = decode(loads(recv()))
                check(get(d), d)
            return perf() - t0

        run = {"prefilled": prefilled, "live": live}
        conn.send(("ready", os.getpid()))
        while True:
            cmd = conn.recv()
            if cmd == "close":
                break
            timed = run[cmd]
            timed(2 * plan["ports"])  # connect to every port
            n, elapsed = 1, 0.0
            while True:  # calibration (autorange), untimed
                elapsed = timed(n)
                if elapsed >= plan["warmup_seconds"]:
                    break
                n *= 2
            iters = iterations_for(elapsed / n, plan["cell_seconds"], lo=2 * slots)
            conn.send(("calibrated", iters))
            conn.recv()  # "go": the parent has sampled CPU
            times = [timed(iters) for _ in range(plan["reps"])]
            conn.send(("results", iters, times))
        consumer.close()
    except BaseException as exc:
        _child_error(conn, exc)
        raise


# ----------------------------------------------------------------------------------- one cell


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    import psutil

    out = {}
    for key, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[key] = t.user + t.system
    return out


def _cell(size: int, mode: str, conn: Any, pids: dict[str, int], recv: Callable[..., Any]) -> dict[str, Any]:
    conn.send(mode)
    _, iters = recv(conn, 300, f"pipeline consumer ({mode} calibration)")
    before, t0 = _cpu_seconds(pids), time.monotonic()
    conn.send("go")
    _, iters, times = recv(conn, 600, f"pipeline consumer ({mode})")
    after, wall = _cpu_seconds(pids), time.monotonic() - t0
    slots = iters * len(times)
    rates = [size * iters / s / GiB for s in times]
    return {
        "size": size,
        "mode": mode,
        "iterations": iters,
        "seconds": times,
        "gib_s": rates,
        "median_gib_s": statistics.median(rates),
        "median_slots_s": statistics.median(iters / s for s in times),
        # CPU of each process over the timed repetitions (pre-filled: the untimed refills included)
        "cpu_us_per_slot": {k: 1e6 * (after[k] - before[k]) / slots for k in pids},
        "cpu_percent": {k: 100 * (after[k] - before[k]) / wall for k in pids},
    }


def bench_pipeline_size(
    size: int,
    *,
    ports: int = 4,
    reps: int = 2,
    cell_seconds: float = 1.0,
    warmup_seconds: float = 0.25,
    order: Sequence[str] = MODES,
    log: Callable[[str], None] = lambda msg: None,
) -> dict[str, dict[str, Any]]:
    """Both modes at one size, in `order`, on one producer/server/consumer trio; {mode: cell}."""
    import multiprocessing as mp

    from chaos.bench.core import _reap, _recv, _spawn

    ctx = mp.get_context("spawn")
    req_recv, req_send = ctx.Pipe(duplex=False)
    desc_recv, desc_send = ctx.Pipe(duplex=False)
    slots = ring_slots(size)
    plan = {"slots": slots, "ports": ports, "reps": reps, "cell_seconds": cell_seconds}
    plan["warmup_seconds"] = warmup_seconds
    producer = consumer = pconn = cconn = None
    ring_name = None
    try:
        producer, pconn = _spawn(producer_main, size, ports, req_recv, desc_send, name="bench-pipe-producer")
        _, server_pid, producer_pid, ring_name = _recv(pconn, 120, "pipeline producer start")
        consumer, cconn = _spawn(consumer_main, plan, req_send, desc_recv, name="bench-pipe-consumer")
        _, consumer_pid = _recv(cconn, 120, "pipeline consumer start")
        pids = {"producer": producer_pid, "server": server_pid, "consumer": consumer_pid}
        cells = {}
        for mode in order:
            cells[mode] = cell = _cell(size, mode, cconn, pids, _recv)
            cpu = ", ".join(f"{k} {v:.0f}" for k, v in cell["cpu_us_per_slot"].items())
            log(
                f"pipeline {mode:>9} {size // KiB:>6} KiB: {cell['median_gib_s']:.3f} GiB/s, "
                f"{cell['median_slots_s']:,.0f} slots/s; CPU us/slot {cpu}"
            )
        cconn.send("close")
        _reap(consumer)
        pconn.send(("close", None))
        _reap(producer, 30)
        return cells
    finally:
        for proc in (consumer, producer):
            if proc is not None and proc.is_alive():
                proc.kill()
                proc.join(5)
        for c in (cconn, pconn, req_recv, req_send, desc_recv, desc_send):
            if c is not None:
                c.close()
        if ring_name:  # a producer killed before its close leaves its segment behind
            try:
                os.unlink(f"/dev/shm/{ring_name}")
            except FileNotFoundError:
                pass


# ----------------------------------------------------------------------------------- Producer.put


def bench_put_size(size: int, reps: int = 5, cell_seconds: float = 0.3) -> dict[str, Any]:
    """`Producer.put` vs a memcpy + xxh3 of the same payload into as many touched buffers, interleaved.

    The ring's slots are freed between stretches (untimed) through the ring's own read transitions,
    so every put takes a FREE slot as in a consumer-paced pipeline.
    """
    from transport.checksum import checksum
    from transport.facade import Producer

    slots = max(4, min(64, 256 * MiB // size))
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    ceiling = np.ones((slots, size), dtype=np.uint8)  # touched, like the ring's slots after warm-up
    with Producer(slots=slots, slot_bytes=size, ports=1) as producer:
        ring = producer.ring

        def puts() -> float:
            t0 = time.perf_counter()
            written = [producer.put(data, timeout=5.0) for _ in range(slots)]
            elapsed = time.perf_counter() - t0
            for token, d in enumerate(written, 1):  # free them again, untimed
                ring.begin_read(d.slot, d.generation, token, 30.0)
                ring.commit_read(d.slot, d.generation, token)
            return elapsed

        def copies() -> float:
            t0 = time.perf_counter()
            for row in ceiling:
                row[:] = data
                checksum(row)
            return time.perf_counter() - t0

        puts(), copies()  # warm-up: every slot touched
        rounds = max(3, min(200, int(cell_seconds / max(puts(), 1e-6))))
        put_s, copy_s = [], []
        for _ in range(reps):
            put_s.append(sum(puts() for _ in range(rounds)))
            copy_s.append(sum(copies() for _ in range(rounds)))
    per = slots * rounds
    put_us = statistics.median(s / per * 1e6 for s in put_s)
    copy_us = statistics.median(s / per * 1e6 for s in copy_s)
    ratio = copy_us / put_us  # put speed / (memcpy + xxh3) speed
    return {
        "size": size,
        "puts": per,
        "put_us": put_us,
        "memcpy_xxh3_us": copy_us,
        "put_gib_s": size / put_us / 1e-6 / GiB,
        "memcpy_xxh3_gib_s": size / copy_us / 1e-6 / GiB,
        "ratio": ratio,
        "target": PUT_TARGET if size >= PUT_MIN_SIZE else None,
        "pass": None if size < PUT_MIN_SIZE else ratio >= PUT_TARGET,
    }


# ----------------------------------------------------------------------------------- A/B runner


@dataclass(frozen=True)
class AbCell:
    """One size of an A/B in one tree: what the parent hands the child interpreter (as JSON)."""

    size: int
    order: str = "pl"  # "pl": pre-filled first, "lp": live first
    reps: int = 2
    cell_seconds: float = 1.0
    ports: int = 4
    put: bool = False


def cell_main(cell: AbCell) -> int:
    """One size, both modes, JSON on stdout: what `run_ab` runs in each tree."""
    order = MODES if cell.order == "pl" else tuple(reversed(MODES))
    cells = bench_pipeline_size(
        cell.size, ports=cell.ports, reps=cell.reps, cell_seconds=cell.cell_seconds, order=order,
        log=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    put = bench_put_size(cell.size) if cell.put else None
    print(json.dumps({"cells": cells, "put": put}))
    return 0


def _run_cell(tree: str, cell: AbCell) -> dict[str, Any]:
    """`cell` in a fresh interpreter whose `transport` (and `chaos.bench`) come from `tree`."""
    cmd = [sys.executable, "-m", "chaos.bench.pipeline", json.dumps(asdict(cell))]
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=tree)
    if out.returncode != 0:
        raise RuntimeError(f"{tree} {cell.size}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_ab(
    trees: dict[str, str], sizes: Sequence[int], rounds: int, cell: AbCell, json_path: str | None = None
) -> dict[str, Any]:
    """Each size, each round, each tree in alternating order: the pipeline cell in a fresh interpreter
    whose `transport` comes from that tree (PYTHONPATH). Returns every measurement."""
    runs: list[dict[str, Any]] = []
    names = list(trees)
    for r in range(rounds):
        for size in sizes:
            for i, name in enumerate(names if r % 2 == 0 else reversed(names)):
                order = "pl" if (r + i) % 2 == 0 else "lp"
                load_before = os.getloadavg()[0]
                result = _run_cell(trees[name], replace(cell, size=size, order=order))
                load = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # 1-min load: other users
                runs.append({"tree": name, "round": r, "size": size, "load": load, **result})
                if json_path:  # every finished cell is kept, even if a later one fails
                    _write_json(json_path, {"trees": trees, "runs": runs})
                pre, live = result["cells"]["prefilled"], result["cells"]["live"]
                ratio = live["median_gib_s"] / pre["median_gib_s"]
                print(
                    f"round {r} {name:>5} {size // KiB:>6} KiB: pre-filled {pre['median_slots_s']:,.0f} "
                    f"live {live['median_slots_s']:,.0f} slots/s (live/pre-filled {ratio:.2f})",
                    file=sys.stderr,
                    flush=True,
                )
    return {"trees": trees, "runs": runs, "summary": summarize_ab(runs, names, sizes)}


def summarize_ab(
    runs: list[dict[str, Any]], names: Sequence[str], sizes: Sequence[int]
) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        row: dict[str, Any] = {"size": size}
        for name in names:
            mine = [x for x in runs if x["tree"] == name and x["size"] == size]
            for mode in MODES:
                rates = [x["cells"][mode]["median_slots_s"] for x in mine]
                row[f"{name}_{mode}_slots_s"] = statistics.median(rates)
                row[f"{name}_{mode}_range"] = [min(rates), max(rates)]
            ratios = [
                x["cells"]["live"]["median_gib_s"] / x["cells"]["prefilled"]["median_gib_s"] for x in mine
            ]
            row[f"{name}_live_over_prefilled"] = ratios
        if len(names) == 2:
            a, b = names
            for mode in MODES:
                row[f"{mode}_{b}_over_{a}"] = row[f"{b}_{mode}_slots_s"] / row[f"{a}_{mode}_slots_s"]
        rows.append(row)
    return rows


def _write_json(path: str, report: dict[str, Any]) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(report, indent=2) + "\n")


def ab_and_print(
    base: str | None, sizes: Sequence[int], rounds: int, cell: AbCell, json_path: str | None = None
) -> int:
    """`chaos bench --ab TREE`: this tree against `base` (a checkout of another commit with chaos/bench/
    copied into it), or this tree alone; one JSON summary line per size."""
    here = str(Path(__file__).resolve().parents[2])
    trees = {"base": os.path.abspath(base), "head": here} if base else {"head": here}
    report = run_ab(trees, sizes, rounds, cell, json_path)
    if json_path:
        _write_json(json_path, report)
    for row in report["summary"]:
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    # The child of `run_ab`, not a command: one AbCell as JSON. Re-imported as `chaos.bench.pipeline`
    # so spawned children find the process targets under that name.
    from chaos.bench.pipeline import AbCell as _AbCell
    from chaos.bench.pipeline import cell_main as _cell_main

    sys.exit(_cell_main(_AbCell(**json.loads(sys.argv[1]))))
