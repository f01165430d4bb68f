"""Bench rows for issue 13's paths, in one run with raw ucxx: inline payloads and the same-host path.

Kept apart from `chaos.bench.core` (whose rows other work edits) and built from its parts: the raw
ucxx baseline (`bench_raw_mode`, polling, single request/reply), the spawned `ProducerHost`, and the
same timed-get loop. Every round measures every row once, rounds interleaved, so a ratio compares
rows measured minutes apart at most; the report keeps each round's numbers and the range over rounds.

Rows: raw ucxx 4 KiB; `get` 4 KiB over UCX with inline payloads on and off; same-host `get` and
`borrow` at each size; a plain memcpy of each size into a warm buffer (the local ceiling).

    chaos bench --paths [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from chaos.bench.core import (
    BenchConfig,
    KiB,
    MiB,
    ProducerHost,
    _timed_gets,
    bench_raw_mode,
    gib_s,
    human_size,
    machine_info,
    ring_slots,
)

LOCAL_SIZES = (4 * KiB, 1 * MiB, 16 * MiB, 64 * MiB)
BATCH_SIZES = (4 * KiB, 64 * KiB)
BATCH_KS = (8, 32, 128)
INLINE_SIZE = 4 * KiB
TARGETS = {
    "batch32_4k_vs_raw_slots": 1.0,
    "batch32_64k_vs_raw_gib": 0.9,
    "inline_get_4k_vs_raw": 0.25,
    "local_get_16m_vs_memcpy": 0.7,
    "local_get_4k_slots_s": 50_000,
    "borrow_4k_slots_s": 150_000,
}


def _rate(size: int, n: int, seconds: float) -> dict[str, float]:
    return {"gib_s": gib_s(size * n, seconds), "slots_s": n / seconds}


def _calibrated(timed: Callable[[int], float], seconds: float) -> tuple[int, float]:
    """(iterations, seconds) for one timed stretch of about `seconds`."""
    n = 1
    while True:
        elapsed = timed(n)
        if elapsed >= seconds / 4 or n >= 1_000_000:
            break
        n *= 2
    n = max(5, int(n * seconds / max(elapsed, 1e-9)))
    return n, timed(n)


def _memcpy(size: int, seconds: float) -> dict[str, float]:
    src = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    dst = np.empty_like(src)
    dst[:] = src  # warm: pages mapped

    def timed(n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            np.copyto(dst, src)
        return time.perf_counter() - t0

    n, s = _calibrated(timed, seconds)
    return _rate(size, n, s)


class LocalRing:
    """A ring written in this process (untimed, between timed stretches) for the same-host rows:
    the local path never touches a server, so none runs; a descriptor it could not read locally
    would go to a dead port and fail, and the row checks that no UCX connection was made."""

    def __init__(self, size: int, slots: int) -> None:
        from transport.ring import SharedRing

        self.size, self.slots = size, slots
        self.ring = SharedRing.create(slots, size)
        self.data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)

    def fill(self, n: int) -> list[Any]:
        from transport.descriptor import SlotDescriptor
        from transport.local import boot_id
        from transport.protocol import RingKey

        key = RingKey(self.ring.secret, self.ring.ring_id)
        out = []
        for _ in range(n):
            w = self.ring.write(self.data, timeout=30.0)
            out.append(
                SlotDescriptor(
                    host="127.0.0.1", ports=(1,), ring_id=self.ring.ring_id, ring_slots=self.ring.slots,
                    slot=w.slot, generation=w.generation, nbytes=w.nbytes, checksum=w.checksum,
                    capability=key.capability(w.slot, w.generation).hex(), segment=self.ring.name,
                    boot_id=boot_id(),
                )
            )  # fmt: skip
        return out

    def close(self) -> None:
        self.ring.close()


def _gets(consumer: Any, host: LocalRing, n: int) -> float:
    return _timed_gets(consumer, host, n)  # type: ignore[arg-type]


def _gets_out(consumer: Any, host: LocalRing, n: int) -> float:
    """Like _gets, into one caller-owned array (`out=`): the copy without a fresh allocation."""
    out = np.empty(host.size, dtype=np.uint8)
    out[:] = 0
    total, done = 0.0, 0
    while done < n:
        descs = host.fill(min(host.slots, n - done))
        t0 = time.perf_counter()
        for d in descs:
            consumer.get(d, out=out)
        total += time.perf_counter() - t0
        done += len(descs)
    return total


def _borrows(consumer: Any, host: LocalRing, n: int) -> float:
    total, done = 0.0, 0
    while done < n:
        descs = host.fill(min(host.slots, n - done))
        t0 = time.perf_counter()
        for d in descs:
            with consumer.borrow(d) as view:
                if view.nbytes != d.nbytes:
                    raise RuntimeError("borrow lent the wrong size")
        total += time.perf_counter() - t0
        done += len(descs)
    return total


def _local(size: int, cfg: BenchConfig) -> dict[str, Any]:
    from transport.facade import Consumer

    host = LocalRing(size, max(4, min(1024, cfg.ring_budget // size)))
    consumer = Consumer(connect_timeout=0.5, max_attempts=1)
    try:
        row: dict[str, Any] = {}
        for name, fn in (("get", _gets), ("get_out", _gets_out), ("borrow", _borrows)):
            fn(consumer, host, 4)  # attach the segment
            n, s = _calibrated(lambda n, fn=fn: fn(consumer, host, n), cfg.cell_seconds)  # type: ignore[misc]
            row[name] = _rate(size, n, s)
        if consumer.client.stats.connects:
            raise RuntimeError("same-host rows went over UCX")
        return row
    finally:
        consumer.close()
        host.close()


def _batched_gets(consumer: Any, host: ProducerHost, n: int, k: int) -> float:
    """Seconds spent in `get_many` of k descriptors at a time, n slots in all (fills untimed)."""
    total, done = 0.0, 0
    while done < n:
        descs = host.fill(min(host.slots, n - done))
        for at in range(0, len(descs), k):
            chunk = descs[at : at + k]
            t0 = time.perf_counter()
            result = consumer.get_many(chunk)
            total += time.perf_counter() - t0
            if result.failures:
                raise RuntimeError(f"batch bench: {result.failures[0]}")
        done += len(descs)
    return total


def _batch(size: int, cfg: BenchConfig) -> dict[str, Any]:
    """get_many over UCX of k slots (one batched exchange each; k = 128 fills one batch too)."""
    from transport.facade import Consumer

    host = ProducerHost(size, max(256, ring_slots(cfg, size)), cfg.ports)
    try:
        row: dict[str, Any] = {}
        for k in BATCH_KS:
            consumer = Consumer(local=False, batch_size=k, concurrency=1)
            try:
                _batched_gets(consumer, host, 2 * k, k)  # connect
                n, s = _calibrated(
                    lambda n, c=consumer, k=k: _batched_gets(c, host, max(n, k), k), cfg.cell_seconds
                )  # type: ignore[misc]
                row[str(k)] = _rate(size, max(n, k), s)
            finally:
                consumer.close()
        return row
    finally:
        host.close()
        host.reap()


def _inline(cfg: BenchConfig) -> dict[str, Any]:
    from transport.facade import Consumer

    host = ProducerHost(INLINE_SIZE, ring_slots(cfg, INLINE_SIZE), cfg.ports)
    on, off = Consumer(local=False), Consumer(local=False, inline_max=0)
    try:
        row = {}
        for name, consumer in (("inline", on), ("no_inline", off), ("inline_again", on)):
            _timed_gets(consumer, host, 2 * cfg.ports)
            n, s = _calibrated(lambda n, c=consumer: _timed_gets(c, host, n), cfg.cell_seconds)  # type: ignore[misc]
            row[name] = _rate(INLINE_SIZE, n, s)
        return row
    finally:
        on.close()
        off.close()
        host.close()
        host.reap()


def run(rounds: int, log: Callable[[str], None] = print, json_path: Path | None = None) -> dict[str, Any]:
    cfg = BenchConfig.make(sizes=BATCH_SIZES, reps=2, cell_seconds=0.5, ring_budget=256 * MiB)
    out: dict[str, Any] = {"machine": machine_info(), "rounds": []}
    for r in range(rounds):
        raw_cells = bench_raw_mode(cfg, "polling", log)["cells"]
        raw = raw_cells[str(INLINE_SIZE)]
        inline = _inline(cfg)
        log(f"  inline 4 KiB: {inline}")
        batch = {str(size): _batch(size, cfg) for size in BATCH_SIZES}
        log(f"  batch: {batch}")
        local = {}
        for size in LOCAL_SIZES:
            local[str(size)] = _local(size, cfg)
            log(f"  same-host {human_size(size)}: {local[str(size)]}")
        memcpy = {str(size): _memcpy(size, cfg.cell_seconds) for size in LOCAL_SIZES}
        rnd = {
            "raw_4k_slots_s": raw["median_slots_s"],
            "raw_64k_gib_s": raw_cells[str(64 * KiB)]["median_gib_s"],
            "inline": inline,
            "batch": batch,
            "local": local,
            "memcpy": memcpy,
        }
        out["rounds"].append(rnd)
        log(f"round {r + 1}: raw 4 KiB {raw['median_slots_s']:,.0f} slots/s; {summary(rnd)}")
        if json_path is not None:  # every round on disk: a long run cut short keeps what it measured
            out["ratios"] = ratios(out["rounds"])
            json_path.write_text(json.dumps(out, indent=1))
    out["ratios"] = ratios(out["rounds"])
    out["targets"] = TARGETS
    if json_path is not None:
        json_path.write_text(json.dumps(out, indent=1))
    return out


def round_ratios(rnd: dict[str, Any]) -> dict[str, float]:
    inl = rnd["inline"]
    best_inline = max(inl["inline"]["slots_s"], inl["inline_again"]["slots_s"])
    m16, l16 = rnd["memcpy"][str(16 * MiB)], rnd["local"][str(16 * MiB)]
    batch = rnd["batch"]
    return {
        **{
            f"batch{k}_4k_vs_raw_slots": batch[str(4 * KiB)][str(k)]["slots_s"] / rnd["raw_4k_slots_s"]
            for k in BATCH_KS
        },
        **{
            f"batch{k}_64k_vs_raw_gib": batch[str(64 * KiB)][str(k)]["gib_s"] / rnd["raw_64k_gib_s"]
            for k in BATCH_KS
        },
        "inline_get_4k_vs_raw": best_inline / rnd["raw_4k_slots_s"],
        "no_inline_get_4k_vs_raw": inl["no_inline"]["slots_s"] / rnd["raw_4k_slots_s"],
        "inline_vs_no_inline": best_inline / inl["no_inline"]["slots_s"],
        "local_get_16m_vs_memcpy": l16["get"]["gib_s"] / m16["gib_s"],
        "local_get_out_16m_vs_memcpy": l16["get_out"]["gib_s"] / m16["gib_s"],
        "local_get_4k_slots_s": rnd["local"][str(4 * KiB)]["get"]["slots_s"],
        "borrow_4k_slots_s": rnd["local"][str(4 * KiB)]["borrow"]["slots_s"],
        **{
            f"local_get_{human_size(s)}_vs_memcpy": rnd["local"][str(s)]["get"]["gib_s"]
            / rnd["memcpy"][str(s)]["gib_s"]
            for s in LOCAL_SIZES
        },
    }


def ratios(rounds: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    per = [round_ratios(r) for r in rounds]
    return {
        k: {
            "min": min(p[k] for p in per),
            "median": statistics.median(p[k] for p in per),
            "max": max(p[k] for p in per),
        }
        for k in per[0]
    }


def summary(rnd: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.3g}" for k, v in round_ratios(rnd).items())


def run_and_print(rounds: int, json_path: Path | None = None) -> int:
    """`chaos bench --paths`: run, then one line per ratio with its range over rounds and its target."""
    report = run(rounds, json_path=json_path)
    for k, v in report["ratios"].items():
        target = TARGETS.get(k)
        print(f"{k:32} {v['min']:>12.3f} .. {v['max']:<12.3f} target {target if target else '-'}")
    if json_path:
        print(f"wrote {json_path}")
    return 0
