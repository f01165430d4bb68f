"""`chaos run` and `chaos replay`: run scenarios, show live progress, write the reports, exit 0/1/2/3.

Exit codes: 0 every scenario passed; 1 an expectation failed (or, with --fail-on-regression, a
regression against --baseline); 2 invalid input; 3 the harness could not judge a scenario (it wins
over 1, since an unjudged run proves nothing).

Interrupts: the first Ctrl-C or SIGTERM ends the run; everything after it (each scenario's teardown,
the `-j` parent stopping its workers) runs with further SIGINT/SIGTERM held off, and what is printed
about the cleanup is what was checked afterwards (`chaos.runner.cleanup`), never assumed. Every run
starts by sweeping what an earlier, SIGKILLed run of this user left behind.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shlex
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from chaos.atomic import write_atomic
from chaos.checker import failures_line
from chaos.hosts import userns
from chaos.hosts.fabric import sweep as sweep_hosts
from chaos.report import RunResults, ScenarioResult, Thresholds, write_reports
from chaos.report.results import ResultsError, new_run_id
from chaos.runner.cleanup import SHIELDED_SIGNALS, shielded, state_dir, sweep_stale
from chaos.runner.orchestrator import Outcome, Progress, run_scenario
from chaos.scenario import ScenarioError, load_scenarios
from chaos.scenario.errors import Problem
from chaos.scenario.model import Scenario
from chaos.scenario.resources import resource_problems

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_HARNESS = 0, 1, 2, 3
SPAWN = mp.get_context("spawn")
# Soft wrap: a reproduce command must stay on one line to be copy-pasted from a CI log.
console = Console(stderr=True, soft_wrap=True)


def _stdout_console() -> Console:
    return Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)


@dataclass(frozen=True)
class Servers:
    """External servers given on the command line (None: the run starts its own)."""

    toxiproxy: str | None = None
    redis: str | None = None


@dataclass(frozen=True)
class Job:
    scenario: Scenario
    file: str
    seed: int


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` cleans up its processes and segments."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


def _progress_line(p: Progress) -> str:
    return (
        f"[bold]{p.scenario}[/] {p.phase} {min(p.elapsed, p.duration):5.1f}/{p.duration:.0f}s  "
        f"published {p.published}  acked {p.acked}  in flight {p.pending}"
    )


PLAIN_PROGRESS_EVERY_S = 5.0  # a CI log gets a progress line this often (no live status there)


def _run_job(job: Job, run_dir: Path, servers: Servers, live: Any | None) -> Outcome:
    last = {"t": 0.0, "phase": ""}

    def progress(p: Progress) -> None:
        if live is None:
            return
        if console.is_terminal:
            live.update(_progress_line(p))
        elif p.phase != last["phase"] or time.monotonic() - last["t"] >= PLAIN_PROGRESS_EVERY_S:
            last.update(t=time.monotonic(), phase=p.phase)
            console.print(_progress_line(p), markup=True)

    return run_scenario(
        job.scenario.with_seed(job.seed),
        run_dir,
        toxiproxy_url=servers.toxiproxy,
        redis_url=servers.redis,
        progress=progress,
    )


def _job_worker(job: Job, run_dir: str, servers: Servers, results: Any) -> None:
    _terminate_on_sigterm()
    try:
        outcome = _run_job(job, Path(run_dir), servers, None)
        results.put((job.scenario.name, outcome))
    except BaseException as exc:
        results.put((job.scenario.name, f"{type(exc).__name__}: {exc}"))


def _to_result(job: Job, outcome: Outcome | str, out_dir: Path) -> ScenarioResult:
    scenario = job.scenario.with_seed(job.seed)
    run_dir = Path(scenario.name)
    if isinstance(outcome, str):
        return ScenarioResult.errored(
            scenario, outcome, file=job.file, started=datetime.now(UTC), duration_s=0.0, run_dir=run_dir
        )
    started = datetime.fromtimestamp(outcome.started, UTC)
    if outcome.verdict is None:
        return ScenarioResult.errored(
            scenario,
            outcome.error or "no verdict",
            file=job.file,
            started=started,
            duration_s=outcome.duration_s,
            run_dir=run_dir,
        )
    return ScenarioResult.judged(
        scenario,
        outcome.verdict,
        file=job.file,
        started=started,
        duration_s=outcome.duration_s,
        run_dir=run_dir,
    )


def _execute(jobs: list[Job], out_dir: Path, parallel: int, servers: Servers) -> list[ScenarioResult]:
    results: list[ScenarioResult] = []
    if parallel <= 1:
        for job in jobs:
            with console.status(f"[bold]{job.scenario.name}[/] starting") as live:
                outcome = _run_job(job, out_dir / job.scenario.name, servers, live)
            result = _to_result(job, outcome, out_dir)
            _print_done(result)
            results.append(result)
        return results
    pending = list(jobs)
    running: dict[str, tuple[Job, Any]] = {}
    done: dict[str, ScenarioResult] = {}
    channel = SPAWN.Queue()
    try:
        while pending or running:
            while pending and len(running) < parallel:
                job = pending.pop(0)
                proc = SPAWN.Process(
                    target=_job_worker,
                    args=(job, str(out_dir / job.scenario.name), servers, channel),
                    name=f"chaos-run-{job.scenario.name}",
                )
                proc.start()
                _OWNERS.add(str(proc.pid))  # its run-state record is checked after an interrupt
                running[job.scenario.name] = (job, proc)
                console.print(f"started {job.scenario.name}")
            try:
                name, outcome = channel.get(timeout=1.0)
            except queue.Empty:
                for name, (job, proc) in list(running.items()):
                    if not proc.is_alive():  # died without a word: a harness error
                        running.pop(name)
                        done[name] = _to_result(job, f"scenario process exited with {proc.exitcode}", out_dir)
                        _print_done(done[name])
                continue
            job, proc = running.pop(name)
            proc.join(30)
            done[name] = _to_result(job, outcome, out_dir)
            _print_done(done[name])
    finally:
        with shielded():
            _stop_workers([proc for _, proc in running.values()])
    return [done[j.scenario.name] for j in jobs if j.scenario.name in done]


WORKER_CLEANUP_S = 60.0  # a worker's own teardown (server stop, joins) fits well inside this


def _stop_workers(procs: list[Any]) -> None:
    """SIGTERM every worker at once (each tears its scenario down, shielded), wait, SIGKILL the rest;
    then sweep whatever a SIGKILLed worker could not remove."""
    for proc in procs:
        proc.terminate()
    deadline = time.monotonic() + WORKER_CLEANUP_S
    for proc in procs:
        proc.join(max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    if procs:
        sweep_stale()


def _verified_cleanup() -> str:
    """What a check of the run-state records says after an interrupt (not what we hope happened)."""
    sweep_stale()  # runs whose owner is gone: a killed worker's leftovers
    left = sorted(p.name for p in state_dir().glob("*.json") if _owned_by_us(p.name))
    if left:
        return f"[red]interrupted: cleanup could not verify everything; records left: {', '.join(left)}[/]"
    return "[red]interrupted[/]: cleanup verified: no process, segment or proxy port of this run left"


def _owned_by_us(record: str) -> bool:
    """Run-state records are named `<run>-<owner pid>.json`; ours or our (dead) workers'."""
    return record.removesuffix(".json").rpartition("-")[2] in _OWNERS


_OWNERS: set[str] = set()


def _print_done(result: ScenarioResult) -> None:
    style = {"passed": "green", "failed": "red", "error": "magenta"}[result.status]
    console.print(f"[{style}]{result.status.upper():6}[/] {result.name} ({result.duration_s:.0f}s)")


def _summary_table(results: RunResults) -> Table:
    table = Table(title=f"chaos run {results.run_id}")
    for col in (
        "scenario",
        "verdict",
        "published",
        "delivered",
        "lost",
        "dup",
        "corrupt",
        "in-doubt",
        "thr/s",
        "p99",
        "claim p50",
    ):
        table.add_column(col, justify="left" if col in ("scenario", "verdict") else "right")
    for s in results.scenarios:
        v = s.verdict or {}
        c = v.get("counts", {})
        lat = (v.get("latency") or {}).get("p99")
        claim = ((v.get("latency") or {}).get("claim") or {}).get("p50")
        thr = (v.get("throughput") or {}).get("per_s")
        style = {"passed": "green", "failed": "red", "error": "magenta"}[s.status]
        table.add_row(
            s.name,
            f"[{style}]{s.status}[/]",
            *(
                str(c.get(k, "-"))
                for k in ("published", "delivered", "lost", "duplicated", "corrupted", "in_doubt")
            ),
            f"{thr:.0f}" if thr is not None else "-",
            f"{lat * 1000:.0f} ms" if lat is not None else "-",
            f"{claim * 1000:.1f} ms" if claim is not None else "-",
        )
    return table


@dataclass(frozen=True)
class ReportOptions:
    junit: str | None
    baseline: RunResults | None
    history: str | None
    thresholds: Thresholds
    fail_on_regression: bool


def _finish(results_list: list[ScenarioResult], started: datetime, out_dir: Path, opts: ReportOptions) -> int:
    results = RunResults.create(results_list, started=started, run_id=out_dir.name)
    paths = write_reports(
        results, out_dir, baseline=opts.baseline, history_dir=opts.history, thresholds=opts.thresholds
    )
    if opts.junit:
        write_atomic(opts.junit, paths.junit_xml.read_bytes())
    if paths.regressions is not None:  # regressions first: they are what a nightly reader looks for
        lines = paths.regressions.lines() or [f"no regression against {paths.regressions.baseline_run_id}"]
        for line in lines:
            console.print(line)
    _stdout_console().print(_summary_table(results))
    for s in results.scenarios:
        if s.status != "passed":
            failures = (s.verdict or {}).get("failures") or []
            reason = failures_line(failures) if failures else (s.error or "")
            console.print(f"[red]{s.name}[/]: {reason}\n  reproduce: {s.reproduce}")
    console.print(f"reports: {paths.report_html}  {paths.summary_md}  {paths.results_json}")
    statuses = {s.status for s in results.scenarios}
    if "error" in statuses:
        return EXIT_HARNESS
    if "failed" in statuses or (opts.fail_on_regression and paths.regressions):
        return EXIT_FAILED
    return EXIT_OK


def _results_path(path: Path) -> Path:
    return path / "results.json" if path.is_dir() else path


def _out_dir(out: str | None, started: datetime) -> Path:
    return Path(out) if out else Path("reports") / new_run_id(started)


_common = [
    click.option("--out", type=click.Path(file_okay=False), help="Run directory (default reports/<run-id>)."),
    click.option("--junit", type=click.Path(dir_okay=False), help="Also write junit.xml here."),
    click.option(
        "--baseline", type=click.Path(exists=True), help="Compare with an earlier run (dir or results.json)."
    ),
    click.option(
        "--fail-on-regression", is_flag=True, help="Exit 1 when the baseline comparison finds a regression."
    ),
    click.option(
        "--history", type=click.Path(file_okay=False), help="Plot trends over the runs in this folder."
    ),
    click.option(
        "--throughput-drop", type=float, default=0.2, show_default=True, help="Regression threshold."
    ),
    click.option("--p99-rise", type=float, default=0.5, show_default=True, help="Regression threshold."),
    click.option(
        "-j", "--jobs", "parallel", type=click.IntRange(1, 16), default=1, help="Scenarios run in parallel."
    ),
    click.option(
        "--toxiproxy", "toxiproxy", metavar="URL", help="Use this Toxiproxy server for network faults."
    ),
    click.option(
        "--redis",
        "redis_url",
        metavar="URL",
        help="Use this Redis server for `channel: redis` scenarios (default: start one per run).",
    ),
]


def _with_common(fn: Any) -> Any:
    for option in reversed(_common):
        fn = option(fn)
    return fn


@click.command("run")
@click.argument("scenarios", nargs=-1, required=True, type=click.Path())
@click.option("--seed", type=int, help="Override every scenario's seed.")
@_with_common
def run(
    scenarios: tuple[str, ...],
    seed: int | None,
    out: str | None,
    junit: str | None,
    baseline: str | None,
    fail_on_regression: bool,
    history: str | None,
    throughput_drop: float,
    p99_rise: float,
    parallel: int,
    toxiproxy: str | None,
    redis_url: str | None,
) -> None:
    """Run SCENARIO files (or directories of them) and judge each one."""
    _terminate_on_sigterm()
    try:
        loaded = load_scenarios(list(scenarios))
    except ScenarioError as exc:
        console.print(f"[red]invalid scenario input[/]\n{exc}")
        sys.exit(EXIT_INVALID)
    jobs = [Job(s, str(s.source or s.name), s.seed if seed is None else seed) for s in loaded]
    opts = _report_options(junit, baseline, history, throughput_drop, p99_rise, fail_on_regression)
    sys.exit(_run_jobs(jobs, out, opts, parallel, Servers(toxiproxy, redis_url)))


@click.command("replay")
@click.argument("results_file", type=click.Path(exists=True))
@click.option("--scenario", "only", multiple=True, help="Replay only these scenario names.")
@_with_common
def replay(
    results_file: str,
    only: tuple[str, ...],
    out: str | None,
    junit: str | None,
    baseline: str | None,
    fail_on_regression: bool,
    history: str | None,
    throughput_drop: float,
    p99_rise: float,
    parallel: int,
    toxiproxy: str | None,
    redis_url: str | None,
) -> None:
    """Re-run the scenarios of RESULTS_FILE (results.json or its run directory) with their recorded
    seed and configuration."""
    _terminate_on_sigterm()
    try:
        recorded = RunResults.load(_results_path(Path(results_file)))
        jobs = [
            Job(Scenario.from_dict(s.config, source=s.file), s.file, s.seed)
            for s in recorded.scenarios
            if not only or s.name in only
        ]
    except (ResultsError, ScenarioError) as exc:
        console.print(f"[red]cannot replay {results_file}[/]: {exc}")
        sys.exit(EXIT_INVALID)
    if not jobs:
        console.print(f"[red]nothing to replay[/]: no scenario named {', '.join(only)} in {results_file}")
        sys.exit(EXIT_INVALID)
    problems: list[Problem] = [p for j in jobs for p in resource_problems(j.scenario, j.file)]
    if problems:
        console.print(f"[red]cannot replay {results_file}[/]: {ScenarioError(problems)}")
        sys.exit(EXIT_INVALID)
    opts = _report_options(junit, baseline, history, throughput_drop, p99_rise, fail_on_regression)
    sys.exit(_run_jobs(jobs, out, opts, parallel, Servers(toxiproxy, redis_url)))


def _report_options(
    junit: str | None,
    baseline: str | None,
    history: str | None,
    throughput_drop: float,
    p99_rise: float,
    fail_on_regression: bool,
) -> ReportOptions:
    """Checked before anything runs: a bad baseline or threshold is invalid input (exit 2)."""
    try:
        thresholds = Thresholds(throughput_drop=throughput_drop, p99_rise=p99_rise)
        base = RunResults.load(_results_path(Path(baseline))) if baseline else None
    except (ValueError, ResultsError) as exc:
        console.print(f"[red]invalid input[/]: {exc}")
        sys.exit(EXIT_INVALID)
    return ReportOptions(junit, base, history, thresholds, fail_on_regression)


def _host_privileges(jobs: list[Job], servers: Servers) -> None:
    """Without the right to make network namespaces here, re-run in a user namespace of our own if we may.

    Only when a scenario places roles on hosts; otherwise (or when it is impossible) the run goes on here
    and host scenarios say `skipped: needs CAP_NET_ADMIN`.
    """
    if userns.inside() or not any(job.scenario.hosts is not None for job in jobs):
        return
    if userns.can_make_namespaces() is None:
        return
    if servers.toxiproxy or servers.redis:
        why_not = "--toxiproxy/--redis servers outside it would be unreachable"
    else:
        why_not = userns.available()
    if why_not is None:
        console.print("cannot make network namespaces here: re-running in a user namespace of its own")
        sys.stdout.flush()
        userns.reexec(sys.argv[1:])
    console.print(f"[yellow]no CAP_NET_ADMIN, no user namespace[/] ({why_not}): host scenarios are skipped")


def _run_jobs(jobs: list[Job], out: str | None, opts: ReportOptions, parallel: int, servers: Servers) -> int:
    _host_privileges(jobs, servers)
    started = datetime.now(UTC)
    out_dir = _out_dir(out, started)
    out_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"run directory: {out_dir}  ({len(jobs)} scenario(s), -j {parallel})")
    for job in jobs:
        for warning in job.scenario.warnings():
            console.print(f"[yellow]warning[/]: {job.file}: {warning}")
    try:
        swept_hosts = sweep_hosts()
    except OSError:  # not ours to read or remove (no CAP_NET_ADMIN): host scenarios will say so
        swept_hosts = []
    if swept_hosts:
        console.print(f"removed {len(swept_hosts)} stale network namespace(s) of dead runs", soft_wrap=True)
        for name in swept_hosts:
            console.print(f"  {name}", soft_wrap=True, markup=False)
    t0 = time.monotonic()
    swept = sweep_stale()
    for line in swept:
        console.print(f"swept leftovers of a killed run: {line}")
    _OWNERS.add(str(os.getpid()))
    try:
        results_list = _execute(jobs, out_dir, parallel, servers)
    except KeyboardInterrupt:
        # Interrupted once: the teardown has run; a further Ctrl-C / SIGTERM (an impatient user, a CI
        # runner's second signal) must not kill the process on its way out and lose the exit code.
        for sig in SHIELDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        console.print(_verified_cleanup())
        return EXIT_HARNESS
    code = _finish(results_list, started, out_dir, opts)
    console.print(f"{len(jobs)} scenario(s) in {time.monotonic() - t0:.0f}s; command: {shlex.join(sys.argv)}")
    return code
