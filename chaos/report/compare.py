"""Baselines and trends: what got worse since a previous run, and how runs moved over time.

Scenarios are matched by name (names are unique in a run and stable across runs; files move).
A regression is a scenario that fails now but did not before, or whose throughput fell / p99 rose
by more than a threshold. A fixed scenario is reported but is not a regression.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from chaos.report import view
from chaos.report.results import ResultsError, RunResults, ScenarioResult

RegressionKind = Literal["new_failure", "throughput_drop", "p99_rise"]


@dataclass(frozen=True)
class Thresholds:
    """Relative moves that count as regressions: 0.2 = throughput 20 % lower, 0.5 = p99 50 % higher."""

    throughput_drop: float = 0.2
    p99_rise: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.throughput_drop <= 1:
            raise ValueError(f"throughput_drop must be in (0, 1], got {self.throughput_drop}")
        if self.p99_rise <= 0:
            raise ValueError(f"p99_rise must be > 0, got {self.p99_rise}")


@dataclass(frozen=True)
class Regression:
    """One thing that got worse. `baseline`/`current` are the compared values (status or number)."""

    kind: RegressionKind
    scenario: str
    message: str
    baseline: str | float | None
    current: str | float | None
    reproduce: str


@dataclass(frozen=True)
class Fixed:
    """A scenario that failed in the baseline and passes now."""

    scenario: str
    baseline: str


@dataclass
class Regressions:
    """The comparison of a run with its baseline. Truthy when anything regressed."""

    baseline_run_id: str
    thresholds: Thresholds
    items: list[Regression] = field(default_factory=list)
    fixed: list[Fixed] = field(default_factory=list)
    new_scenarios: list[str] = field(default_factory=list)  # not in the baseline
    missing_scenarios: list[str] = field(default_factory=list)  # in the baseline, not run now

    def __bool__(self) -> bool:
        return bool(self.items)

    def of_kind(self, kind: RegressionKind) -> list[Regression]:
        return [r for r in self.items if r.kind == kind]

    def lines(self) -> list[str]:
        """Plain-text lines for a terminal: regressions first, then what was fixed."""
        out = [f"REGRESSION {r.scenario}: {r.message}" for r in self.items]
        out += [f"fixed {f.scenario} (was {f.baseline})" for f in self.fixed]
        return out


def _relative(current: float, baseline: float) -> float:
    return (current - baseline) / baseline


def compare(current: RunResults, baseline: RunResults, thresholds: Thresholds | None = None) -> Regressions:
    """New failures, fixed scenarios, throughput drops and p99 rises of `current` vs `baseline`."""
    th = thresholds or Thresholds()
    out = Regressions(baseline_run_id=baseline.run_id, thresholds=th)
    names = {s.name for s in current.scenarios}
    out.missing_scenarios = [s.name for s in baseline.scenarios if s.name not in names]
    for cur in current.scenarios:
        base = baseline.scenario(cur.name)
        if base is None:
            out.new_scenarios.append(cur.name)
        _compare_status(cur, base, out)
        if base is not None:
            _compare_perf(cur, base, th, out)
    return out


def _compare_status(cur: ScenarioResult, base: ScenarioResult | None, out: Regressions) -> None:
    failing = cur.status != "passed"
    if failing and (base is None or base.status == "passed"):
        what = "; ".join(view.failure_lines(cur)) or cur.status
        was = "not in the baseline" if base is None else "passed in the baseline"
        out.items.append(
            Regression(
                kind="new_failure",
                scenario=cur.name,
                message=f"{'errored' if cur.status == 'error' else 'fails'} ({was}): {what}",
                baseline=None if base is None else base.status,
                current=cur.status,
                reproduce=cur.reproduce,
            )
        )
    elif not failing and base is not None and base.status != "passed":
        out.fixed.append(Fixed(scenario=cur.name, baseline=base.status))


def _compare_perf(cur: ScenarioResult, base: ScenarioResult, th: Thresholds, out: Regressions) -> None:
    now, before = view.throughput(cur), view.throughput(base)
    if now is not None and before:
        change = _relative(now, before)
        if -change > th.throughput_drop:
            out.items.append(
                Regression(
                    kind="throughput_drop",
                    scenario=cur.name,
                    message=(
                        f"throughput {view.fmt_rate(before)} -> {view.fmt_rate(now)} "
                        f"({change:+.0%}, threshold -{th.throughput_drop:.0%})"
                    ),
                    baseline=before,
                    current=now,
                    reproduce=cur.reproduce,
                )
            )
    now, before = view.p99(cur), view.p99(base)
    if now is not None and before:
        change = _relative(now, before)
        if change > th.p99_rise:
            out.items.append(
                Regression(
                    kind="p99_rise",
                    scenario=cur.name,
                    message=(
                        f"p99 latency {view.fmt_latency(before)} -> {view.fmt_latency(now)} "
                        f"({change:+.0%}, threshold +{th.p99_rise:.0%})"
                    ),
                    baseline=before,
                    current=now,
                    reproduce=cur.reproduce,
                )
            )


# -- history ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrendPoint:
    run_id: str
    started: datetime
    status: str
    throughput: float | None
    p99: float | None


@dataclass
class History:
    """Runs found under a directory, oldest first, and the files that could not be read."""

    runs: list[RunResults] = field(repr=False)
    skipped: list[str] = field(default_factory=list)

    def with_run(self, run: RunResults, last_n: int | None = None) -> History:
        """This history with `run` in it (replacing a copy of the same run_id), still oldest first."""
        runs = sorted([r for r in self.runs if r.run_id != run.run_id] + [run], key=lambda r: r.started)
        if last_n is not None:
            runs = runs[-last_n:]
        return History(runs=runs, skipped=list(self.skipped))

    def trends(self) -> dict[str, list[TrendPoint]]:
        """Scenario name -> one point per run that ran it, oldest first."""
        out: dict[str, list[TrendPoint]] = {}
        for run in self.runs:
            for s in run.scenarios:
                point = TrendPoint(run.run_id, run.started, s.status, view.throughput(s), view.p99(s))
                out.setdefault(s.name, []).append(point)
        return out


def history(directory: str | Path, last_n: int = 10) -> History:
    """Load the last `last_n` runs (by `started`) from every results.json under `directory`.

    An unreadable file is skipped and listed in `History.skipped`, not fatal: one broken old run
    must not take the nightly report down with it.
    """
    if last_n < 1:
        raise ValueError(f"last_n must be >= 1, got {last_n}")
    directory = Path(directory)
    if not directory.is_dir():
        raise ResultsError(f"{directory}: not a directory (expected a folder of runs with results.json)")
    runs: dict[str, RunResults] = {}
    skipped = []
    for path in sorted(directory.rglob("results.json")):
        try:
            run = RunResults.load(path)
        except ResultsError as exc:
            skipped.append(str(exc).splitlines()[0])
            continue
        runs.setdefault(run.run_id, run)  # the same run copied twice counts once
    ordered = sorted(runs.values(), key=lambda r: r.started)
    return History(runs=ordered[-last_n:], skipped=skipped)
