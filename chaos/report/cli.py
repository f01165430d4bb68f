"""`chaos report RUN_DIR`: regenerate a run's reports from its results.json and compare with a baseline.

Exit codes (DESIGN.md §3): 0 done, 1 a regression and --fail-on-regression, 2 invalid input.
"""

from __future__ import annotations

from pathlib import Path

import click

from chaos.report import HISTORY_RUNS, RESULTS_JSON, write_reports
from chaos.report.compare import Thresholds
from chaos.report.results import ResultsError, RunResults

EXIT_REGRESSION = 1
EXIT_INVALID = 2


def results_path(path: Path) -> Path:
    """A run directory or a results.json file -> the results.json path."""
    return path / RESULTS_JSON if path.is_dir() else path


def load_run(path: Path, what: str) -> RunResults:
    """Load the results of RUN_DIR or a results.json, or exit 2 saying which input is bad."""
    if not path.exists():
        click.echo(
            f"chaos report: {what}: {path}: no such file or directory (expected a run directory)", err=True
        )
        raise SystemExit(EXIT_INVALID)
    try:
        return RunResults.load(results_path(path))
    except ResultsError as exc:
        click.echo(f"chaos report: {what}: {exc}", err=True)
        raise SystemExit(EXIT_INVALID) from None


@click.command("report")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--baseline",
    type=click.Path(path_type=Path),
    help="An earlier run (its directory or results.json) to compare against.",
)
@click.option(
    "--history",
    "history_dir",
    type=click.Path(path_type=Path),
    help="A folder of earlier runs (e.g. reports/); plots per-scenario trends.",
)
@click.option(
    "--last",
    "last_n",
    type=click.IntRange(min=1),
    default=HISTORY_RUNS,
    show_default=True,
    help="How many runs --history plots.",
)
@click.option(
    "--throughput-drop",
    type=click.FloatRange(0, 1, min_open=True),
    default=0.2,
    show_default=True,
    help="Relative throughput drop that counts as a regression.",
)
@click.option(
    "--p99-rise",
    type=click.FloatRange(0, min_open=True),
    default=0.5,
    show_default=True,
    help="Relative p99 latency rise that counts as a regression.",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), help="Write the reports here instead of RUN_DIR."
)
@click.option("--fail-on-regression", is_flag=True, help="Exit 1 when anything regressed.")
def report(
    run_dir: Path,
    baseline: Path | None,
    history_dir: Path | None,
    last_n: int,
    throughput_drop: float,
    p99_rise: float,
    out_dir: Path | None,
    fail_on_regression: bool,
) -> None:
    """Regenerate junit.xml, summary.md and report.html of RUN_DIR (a run directory or its results.json)."""
    current = load_run(run_dir, "RUN_DIR")
    base = load_run(baseline, "--baseline") if baseline is not None else None
    if history_dir is not None and not history_dir.is_dir():
        click.echo(f"chaos report: --history: {history_dir}: not a directory", err=True)
        raise SystemExit(EXIT_INVALID)
    target = out_dir or results_path(run_dir).parent
    thresholds = Thresholds(throughput_drop=throughput_drop, p99_rise=p99_rise)
    paths = write_reports(current, target, base, history_dir, thresholds, history_last=last_n)

    regressions = paths.regressions
    if regressions is not None:
        click.echo(f"Compared with baseline {regressions.baseline_run_id}:")
        for line in regressions.lines() or ["no regressions"]:
            click.echo(f"  {line}")
        for item in regressions.items:
            click.echo(f"  reproduce {item.scenario}: {item.reproduce}")
    if paths.history is not None:
        for line in paths.history.skipped:
            click.echo(f"warning: history: skipped {line}", err=True)
    totals = current.status_counts()
    counts = ", ".join(f"{n} {status}" for status, n in totals.items())
    click.echo(f"Run {current.run_id}: {counts}")
    for path in (paths.results_json, paths.junit_xml, paths.summary_md, paths.report_html):
        click.echo(f"  wrote {path}")
    if fail_on_regression and regressions:
        raise SystemExit(EXIT_REGRESSION)
