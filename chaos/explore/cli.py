"""`chaos explore`: generated fault schedules (swarm testing) judged by the checker; the first finding shrunk.

Exit codes as `chaos run`: 0 nothing found, 1 a finding (shrunk, or reported flaky when it did not
reproduce), 2 bad input, 3 harness error: no run could be judged, or interrupted before any finding
(an interrupted search proves nothing). Ctrl-C / SIGTERM stops the runs, keeps the best shrunk
scenario so far and still writes reports/<run-id>/ (results.json with an `explore` section, report.html).
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import click
from rich.markup import escape

from chaos.checker import failures_line
from chaos.explore.generate import Space
from chaos.explore.session import Explored, Options, Session, Status, explore_section
from chaos.report import RunResults, ScenarioResult, write_reports
from chaos.runner.cleanup import SHIELDED_SIGNALS, shielded, sweep_stale
from chaos.runner.cli import (
    EXIT_FAILED,
    EXIT_HARNESS,
    EXIT_INVALID,
    EXIT_OK,
    PLAIN_PROGRESS_EVERY_S,
    Servers,
    _out_dir,
    _terminate_on_sigterm,
    console,
)
from chaos.scenario.units import parse_duration

MAX_BUDGET_S = 7 * 24 * 3600.0


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not 0 < seconds <= MAX_BUDGET_S:
        raise click.BadParameter(f"{value!r} must be above 0 and at most 7 days")
    return seconds


def _status_line(s: Status) -> str:
    left = s.time_left()
    line = (
        f"[bold]explore[/] {s.phase}: {s.runs} run(s) done, {s.running} running, "
        f"{s.findings} finding(s), {s.errors} error(s), {s.vacuous} vacuous, "
        f"{int(left // 60)}:{int(left % 60):02d} left"
    )
    return line + (f"  step: {escape(s.shrink_step)}" if s.phase == "shrinking" else "")


@click.command("explore")
@click.option("--budget", default="10m", show_default=True, callback=_duration, help="Time to explore.")
@click.option(
    "--shrink-budget", default="10m", show_default=True, callback=_duration, help="Extra time to shrink."
)
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), help="Generator seed (default: a random one).")
@click.option("-j", "--jobs", "parallel", type=click.IntRange(1, 8), default=1, help="Runs in parallel.")
@click.option(
    "--protocol", type=click.Choice(["commit", "single-chunk"]), default="commit", show_default=True
)
@click.option("--hosts", is_flag=True, help="Also generate simulated hosts and kernel faults (needs root).")
@click.option("--safety-only", is_flag=True, help="Ignore liveness failures (throughput, recovery).")
@click.option(
    "--reruns", type=click.IntRange(1, 10), default=2, show_default=True, help="Runs per candidate."
)
@click.option("--out", type=click.Path(file_okay=False), help="Run directory (default reports/<run-id>).")
@click.option("--toxiproxy", metavar="URL", help="Use this Toxiproxy server for network faults.")
def explore(
    budget: float,
    shrink_budget: float,
    seed: int | None,
    parallel: int,
    protocol: str,
    hosts: bool,
    safety_only: bool,
    reruns: int,
    out: str | None,
    toxiproxy: str | None,
) -> None:
    """Run generated scenarios until BUDGET is spent; shrink the first failure to a minimal YAML."""
    _terminate_on_sigterm()
    if hosts and os.geteuid() != 0:
        console.print("[red]invalid input[/]: --hosts builds network namespaces and needs root")
        sys.exit(EXIT_INVALID)
    opts = Options(
        seed=secrets.randbelow(2**31) if seed is None else seed,
        budget_s=budget,
        shrink_budget_s=shrink_budget,
        parallel=parallel,
        reruns=reruns,
        safety_only=safety_only,
        space=Space(protocol=protocol, hosts=hosts),
        servers=Servers(toxiproxy=toxiproxy),
    )
    sys.exit(run_explore(opts, out))


def run_explore(opts: Options, out: str | None) -> int:
    started = datetime.now(UTC)
    out_dir = _out_dir(out, started)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"run directory: {out_dir}  (explore --seed {opts.seed}, -j {opts.parallel})")
    for line in sweep_stale():
        console.print(f"swept leftovers of a killed run: {line}")
    outcome = _session(opts, out_dir)
    with shielded():
        for sig in SHIELDED_SIGNALS if outcome.interrupted else ():
            signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not lose the report
        try:
            return _finish(opts, outcome, started, out_dir)
        except Exception as exc:  # an uncaught exception would exit 1, which here means "finding"
            console.print(
                f"[magenta]harness error[/]: writing the report failed: {type(exc).__name__}: {exc}"
            )
            return EXIT_HARNESS


def _session(opts: Options, out_dir: Path) -> Explored:
    last = {"t": 0.0, "phase": ""}
    with console.status("explore starting") as live:

        def show(status: Status) -> None:
            if console.is_terminal:
                live.update(_status_line(status))
            elif status.phase != last["phase"] or time.monotonic() - last["t"] >= PLAIN_PROGRESS_EVERY_S:
                last.update(t=time.monotonic(), phase=status.phase)
                console.print(_status_line(status), markup=True)

        return Session(opts, out_dir, show, _print_done).run()


def _print_done(result: ScenarioResult) -> None:
    """One line per finished run, so a CI log shows every run and what failed in it."""
    style = {"passed": "green", "failed": "red", "error": "magenta"}[result.status]
    failures = (result.verdict or {}).get("failures") or []
    why = failures_line(failures) if failures else (result.error or "")
    line = f"[{style}]{result.status.upper():6}[/] {escape(result.name)} ({result.duration_s:.0f}s)"
    console.print(line + (f"  {escape(why)}" if why else ""))


def _finish(opts: Options, outcome: Explored, started: datetime, out_dir: Path) -> int:
    results = RunResults.create(outcome.results, started=started, run_id=out_dir.name)
    results = results.with_explore(explore_section(opts, outcome, started))
    paths = write_reports(results, out_dir)
    finding, shrunk = outcome.finding, outcome.shrunk
    console.print(f"{len(outcome.results)} run(s); command: {shlex.join(['chaos', *sys.argv[1:]])}")
    if finding is not None:
        console.print(f"[red]finding[/] ({finding.cls}) in run {finding.runs_to_find}: {finding.result.name}")
        for failure in (finding.result.verdict or {}).get("failures") or []:
            console.print(f"  {failure}")
    if shrunk is not None:
        how = "flaky" if shrunk.flaky else "reproducible"
        stopped = f", stopped early: {shrunk.stopped}" if shrunk.stopped else ""
        console.print(f"shrunk in {len(shrunk.trail)} step(s) ({how}{stopped}) to {outcome.minimal}")
        console.print(f"  reproduce: {outcome.reproduce}")
    if outcome.error is not None:
        console.print(f"[magenta]harness error[/]: {outcome.error}")
    console.print(f"reports: {paths.report_html}  {paths.results_json}")
    return exit_code(outcome)


def exit_code(outcome: Explored) -> int:
    """1 a finding; 3 the session failed, nothing was judged, or interrupted before a finding; else 0."""
    if outcome.finding is not None:
        return EXIT_FAILED
    if outcome.error is not None or outcome.interrupted or not outcome.results:
        return EXIT_HARNESS
    if all(r.status == "error" for r in outcome.results):
        return EXIT_HARNESS
    return EXIT_OK
