"""`chaos bench`: raw ucxx vs the slot transport in one run (chaos/bench/core.py); the benchmark's one CLI.

Exit codes: 0 every target met (or `--quick`), 1 a target missed, 2 invalid input, 3 harness error.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from chaos.bench.core import (
    DEFAULT_MODES,
    EXIT_HARNESS_ERROR,
    RAW_MODES,
    BenchConfig,
    BenchError,
    parse_modes,
    parse_sizes,
    run_and_report,
)
from transport.ucx import PROGRESS_MODES

EXIT_INVALID = 2


def _parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback: bad input is a usage error (exit code 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc

    return callback


def chaos_off_options() -> dict[str, object]:
    """Server options installing the chaos link wrapper with every transport fault at probability 0:
    the price of the seam and the per-request draw when chaos is configured but quiet."""
    from chaos.faults.base import FaultSpec

    kinds = [
        {"kind": "reset", "phase": "payload"},
        {"kind": "truncate", "phase": "payload"},
        {"kind": "timeout"},
        {"kind": "stall", "delay": 1.0},
        {"kind": "evict"},
        {"kind": "drop_commit"},
    ]
    faults = [FaultSpec.parse(i, probability=0.0, **fields) for i, fields in enumerate(kinds)]
    return {
        "link_wrapper": "chaos.faults.transport:make_link_wrapper",
        "link_wrapper_args": {"faults": faults, "seed": 0, "run_start": 0.0},
    }


@click.command("bench")
@click.option(
    "--sizes",
    callback=_parsed(parse_sizes),
    help="Comma-separated payload sizes, e.g. 4KiB,1MiB (default: 4KiB,64KiB,1MiB,16MiB,64MiB).",
)
@click.option(
    "--modes",
    callback=_parsed(parse_modes),
    help=f"Raw ucxx progress modes (default: {','.join(DEFAULT_MODES)}; any of {', '.join(RAW_MODES)}).",
)
@click.option("--quick", is_flag=True, help="Few iterations: a smoke test, not a measurement.")
@click.option("--reps", type=click.IntRange(min=1), help="Timed repetitions per cell and round (default 2).")
@click.option(
    "--rounds",
    type=click.IntRange(min=1),
    help="Alternate raw and stack measurements this many times (default 2; the machine drifts).",
)
@click.option(
    "--cell-seconds", type=click.FloatRange(min=0, min_open=True), help="Length of one timed repetition."
)
@click.option("--stack-mode", type=click.Choice(PROGRESS_MODES), help="SLOTWIRE_PROGRESS_MODE for the stack.")
@click.option("--ports", type=click.IntRange(min=1), help="Server ports of the stack's producer (default 4).")
@click.option(
    "--pipeline/--no-pipeline",
    default=None,
    help="Measure the live pipeline and Producer.put rows (default on; sizes up to 16 MiB).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Where to write the JSON (default reports/bench-<timestamp>.json).",
)
@click.option(
    "--chaos-overhead",
    is_flag=True,
    help="Also measure the stack with the chaos link wrapper installed, every fault at probability 0.",
)
@click.option(
    "--paths",
    is_flag=True,
    help="Instead: issue 13's rows (batches, inline, same-host get/borrow, memcpy) with raw ucxx, "
    "--rounds interleaved (chaos.bench.paths).",
)
@click.option(
    "--ab",
    "ab_tree",
    metavar="TREE",
    type=click.Path(file_okay=False, exists=True),
    help="Instead: the pipeline row only, this tree against TREE (a checkout of another commit with "
    "chaos/bench/ copied into it), --rounds interleaved (chaos.bench.pipeline).",
)
@click.option("--put", is_flag=True, help="With --ab: also time Producer.put against memcpy + xxh3.")
@click.pass_context
def bench(
    ctx: click.Context,
    sizes: tuple[int, ...] | None,
    modes: tuple[str, ...] | None,
    quick: bool,
    reps: int | None,
    rounds: int | None,
    cell_seconds: float | None,
    stack_mode: str | None,
    ports: int | None,
    pipeline: bool | None,
    json_path: Path | None,
    chaos_overhead: bool,
    paths: bool,
    ab_tree: str | None,
    put: bool,
) -> None:
    """Benchmark the best raw ucxx progress mode against Consumer.get through the full stack.

    Prints GiB/s, slots/s and the ratio stack/raw per payload size, get_many vs sequential gets and the
    idle CPU of a server and a consumer; writes every measurement as JSON. Takes a few minutes.
    """
    if paths:
        from chaos.bench.paths import run_and_print

        ctx.exit(run_and_print(rounds or 2, json_path))
    if ab_tree is not None:
        from chaos.bench.pipeline import PIPELINE_SIZES, AbCell, ab_and_print

        cell = AbCell(size=0, reps=reps or 2, cell_seconds=cell_seconds or 1.0, ports=ports or 4, put=put)
        json_out = str(json_path) if json_path else None
        ctx.exit(ab_and_print(ab_tree, sizes or PIPELINE_SIZES, rounds or 2, cell, json_out))
    try:
        cfg = BenchConfig.make(
            quick=quick,
            sizes=sizes,
            modes=modes,
            reps=reps,
            rounds=rounds,
            cell_seconds=cell_seconds,
            stack_mode=stack_mode,
            ports=ports,
            pipeline=pipeline,
            json_path=str(json_path) if json_path else None,
            compare_server_options=chaos_off_options() if chaos_overhead else None,
            compare_label="chaos p=0",
        )
    except ValueError as exc:
        click.echo(f"Error: {exc}", err=True)
        ctx.exit(EXIT_INVALID)
    try:
        _, _, code = run_and_report(cfg)
    except BenchError as exc:
        click.echo(f"bench: harness error: {exc}", err=True)
        ctx.exit(EXIT_HARNESS_ERROR)
    ctx.exit(code)
