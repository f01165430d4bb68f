"""Smoke test of the benchmark (`chaos bench --quick`): it runs end to end and writes a
JSON report of the documented shape with sane numbers. No timing is asserted: that is the benchmark's job."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chaos.bench.core import (
    DEFAULT_SIZES,
    SCHEMA,
    TARGETS,
    cpu_bound_ratio,
    parse_size,
    parse_sizes,
    size_target,
)
from chaos.bench.pipeline import PIPELINE_TARGETS, pipeline_target


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def test_parse_sizes() -> None:
    assert parse_sizes("4KiB,64k, 1MiB,16M,64MiB") == DEFAULT_SIZES
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("4 parsecs")
    assert size_target(4096) == TARGETS["ratio_small"]
    assert size_target(1 << 20) == TARGETS["ratio_large"]
    assert size_target(64 << 10) is None
    assert pipeline_target(4096) == PIPELINE_TARGETS["live_ratio"] == pipeline_target(64 << 10)
    assert pipeline_target(1 << 20) == PIPELINE_TARGETS["live_ratio_large"] == pipeline_target(16 << 20)
    assert cpu_bound_ratio({"producer": 100.0, "server": 100.0, "consumer": 200.0}) == pytest.approx(0.75)


@pytest.mark.timeout(330)
def test_quick_bench_writes_sane_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "chaos.cli", "bench", "--quick", "--sizes", "4KiB", "--modes", "polling"]
    proc = subprocess.run(
        [*cmd, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,  # the pipeline row adds three processes per mode; the machine is shared
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "ratio stack/raw" in proc.stdout and "get_many" in proc.stdout

    report = json.loads(out.read_text())
    assert report["schema"] == SCHEMA
    assert report["config"]["quick"] is True and report["config"]["sizes"] == [4096]
    assert report["targets"] == json.loads(json.dumps(TARGETS))
    machine = report["machine"]
    assert machine["cpus"] >= 1 and machine["python"] and machine["ucxx"]

    raw = report["raw"]["polling"]
    cell = raw["cells"]["4096"]
    assert cell["iterations"] >= 1 and all(_positive(x) for x in cell["gib_s"] + [cell["median_gib_s"]])
    assert all(v is None or v >= 0 for v in raw["idle_cpu_percent"].values())

    stack = report["stack"]["4096"]
    assert stack["iterations"] >= 1 and stack["ring_slots"] >= 1
    assert all(
        _positive(x) for x in [*stack["gib_s"], stack["median_slots_s"], *stack["latency_us"].values()]
    )

    (row,) = report["rows"]
    assert row["size"] == 4096 and row["raw_mode"] == "polling"
    assert all(_positive(row[k]) for k in ("raw_gib_s", "stack_gib_s", "stack_slots_s", "ratio"))
    assert row["target"] == TARGETS["ratio_small"] and isinstance(row["pass"], bool)

    gm = report["get_many"]
    assert gm["slots"] == 32 and gm["reps"] >= 1
    assert all(_positive(gm[k]) for k in ("get_many_slots_s", "sequential_slots_s", "speedup"))
    assert isinstance(gm["pass"], bool)

    idle = report["idle_cpu"]
    for key in ("server_percent", "consumer_percent"):
        assert isinstance(idle[key], int | float) and math.isfinite(idle[key]) and idle[key] >= 0
    assert idle["consumer_pooled_endpoints"] >= 1 and isinstance(idle["pass"], bool)
    assert set(idle["per_thread_percent"]) >= {"server", "consumer"}
    assert isinstance(report["passed"], bool) and report["duration_s"] > 0

    # The pipeline row: both modes ran on three real processes, each of which spent CPU on the slots.
    (pipe,) = report["pipeline"]
    assert pipe["size"] == 4096 and pipe["target"] == PIPELINE_TARGETS["live_ratio"]
    assert all(_positive(pipe[k]) for k in ("prefilled_slots_s", "live_slots_s", "ratio", "live_over_raw"))
    assert len(pipe["ratio_by_round"]) == 1 and isinstance(pipe["pass"], bool)
    assert 0 < pipe["cpu_bound_ratio"] <= 1  # 1 when a quick cell is shorter than psutil's 10 ms tick
    for mode in ("prefilled", "live"):
        cell = pipe["cells"][0][mode]
        assert cell["iterations"] >= 1 and all(_positive(x) for x in cell["gib_s"])
        assert set(cell["cpu_us_per_slot"]) == {"producer", "server", "consumer"}
        cpu = cell["cpu_us_per_slot"]
        # A quick cell can be shorter than psutil's 10 ms tick for one process; the reads took CPU somewhere.
        assert all(math.isfinite(v) and v >= 0 for v in cpu.values()) and cpu["server"] + cpu["consumer"] > 0
    assert "pipeline: producer putting live" in proc.stdout
    (put,) = report["put"]
    assert put["size"] == 4096 and put["target"] is None and put["pass"] is None  # no put target at 4 KiB
    assert all(_positive(put[k]) for k in ("put_us", "memcpy_xxh3_us", "ratio"))


@pytest.mark.timeout(330)
def test_chaos_overhead_compares_the_stack_with_a_quiet_chaos_wrapper(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "chaos.cli",
            "bench",
            "--quick",
            "--sizes",
            "4KiB",
            "--modes",
            "polling",
            "--chaos-overhead",
            "--no-pipeline",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,  # at load 20+ on this shared machine it took 160-190 s, at 7ff5c48 too
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    compare = json.loads(out.read_text())["compare"]
    assert compare["label"] == "chaos p=0"
    (row,) = compare["rows"]
    assert row["size"] == 4096 and all(_positive(row[k]) for k in ("plain_gib_s", "with_gib_s", "ratio"))
    assert "chaos p=0" in proc.stdout


def test_ab_cell_travels_as_json_to_the_child() -> None:
    """`run_ab` hands each tree's interpreter one AbCell as JSON (`python -m chaos.bench.pipeline`)."""
    from dataclasses import asdict

    from chaos.bench.pipeline import AbCell

    cell = AbCell(size=4096, order="lp", reps=3, cell_seconds=0.5, ports=2, put=True)
    assert AbCell(**json.loads(json.dumps(asdict(cell)))) == cell


def test_own_engine_is_reported_but_never_the_raw_baseline() -> None:
    from chaos.bench.core import build_rows

    def cells(gib: float) -> dict[str, object]:
        return {"cells": {"4096": {"median_gib_s": gib, "median_slots_s": gib * 1000}}}

    raw = {"polling": cells(0.15), "hybrid": cells(0.30)}  # hybrid faster here: still not the baseline
    stack = {"4096": {"median_gib_s": 0.03, "median_slots_s": 30.0}}
    (row,) = build_rows(raw, stack, [4096], "hybrid")
    assert row["raw_mode"] == "polling" and row["ratio"] == pytest.approx(0.2)
    assert row["ratio_same_mode"] == pytest.approx(0.1)


def test_design_floor_is_reported_beside_the_baseline_never_as_it() -> None:
    """The DESIGN-pattern modes give the floor columns; the stock baseline stays the best stock mode."""
    from chaos.bench.core import DESIGN_MODES, build_rows

    def cells(gib: float) -> dict[str, object]:
        return {"cells": {"4096": {"median_gib_s": gib, "median_slots_s": gib * 1000}}}

    raw = {"polling": cells(0.16), DESIGN_MODES[0]: cells(0.06), DESIGN_MODES[1]: cells(0.08)}
    stack = {"4096": {"median_gib_s": 0.04, "median_slots_s": 40.0}}
    (row,) = build_rows(raw, stack, [4096], "hybrid")
    assert row["raw_mode"] == "polling" and row["ratio"] == pytest.approx(0.25)
    assert row["floor_mode"] == DESIGN_MODES[1] and row["floor_gib_s"] == pytest.approx(0.08)
    assert row["floor_ratio"] == pytest.approx(0.5) and row["ratio_to_floor"] == pytest.approx(0.5)

    (bare,) = build_rows({"polling": cells(0.16)}, stack, [4096], "hybrid")
    assert bare["floor_ratio"] is None and bare["ratio_to_floor"] is None


@pytest.mark.timeout(150)
def test_quick_bench_with_a_design_mode_reports_the_floor(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    cmd = [sys.executable, "-m", "chaos.cli", "bench", "--quick", "--sizes", "64KiB", "--no-pipeline"]
    proc = subprocess.run(
        [*cmd, "--modes", "polling,hybrid/design", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    design = report["raw"]["hybrid/design"]["cells"][str(64 * 1024)]
    assert design["iterations"] >= 1 and _positive(design["median_gib_s"])
    (row,) = report["rows"]
    assert row["raw_mode"] == "polling" and row["floor_mode"] == "hybrid/design"
    assert _positive(row["floor_ratio"]) and _positive(row["ratio_to_floor"])
    assert "floor/raw" in proc.stdout
