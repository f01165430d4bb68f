"""Run reports: results.json (the record), junit.xml, summary.md and report.html rendered from it.

`write_reports(results, out_dir, baseline=..., history_dir=...)` is what `chaos run` calls at the end
of a run and `chaos report` calls to regenerate; both get the same files and the same regressions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from chaos.report import junit, summary
from chaos.report.compare import (
    Fixed,
    History,
    Regression,
    Regressions,
    Thresholds,
    TrendPoint,
    compare,
    history,
)
from chaos.report.results import (
    SCHEMA_VERSION,
    Host,
    ResultsError,
    RunResults,
    ScenarioResult,
    Versions,
    collect_host,
    collect_versions,
    new_run_id,
    reproduce_command,
)

RESULTS_JSON = "results.json"
JUNIT_XML = "junit.xml"
SUMMARY_MD = "summary.md"
REPORT_HTML = "report.html"
HISTORY_RUNS = 10  # default number of runs plotted in the History section


@dataclass(frozen=True)
class ReportPaths:
    """Where the reports went, and the comparison with the baseline (None without one)."""

    results_json: Path
    junit_xml: Path
    summary_md: Path
    report_html: Path
    regressions: Regressions | None
    history: History | None = field(default=None, repr=False)


def write_reports(
    results: RunResults,
    out_dir: str | Path,
    baseline: RunResults | None = None,
    history_dir: str | Path | None = None,
    thresholds: Thresholds | None = None,
    history_last: int = HISTORY_RUNS,
) -> ReportPaths:
    """Write results.json, junit.xml, summary.md and report.html into `out_dir`.

    `history_dir`: a folder of earlier runs (each with a results.json, e.g. `reports/`); the
    current run is added to it (once, by run_id) and the last `history_last` runs are plotted.
    """
    from chaos.report import html  # matplotlib: imported when a report is written, not with the CLI

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    regressions = compare(results, baseline, thresholds) if baseline is not None else None
    past = history(history_dir, history_last).with_run(results, history_last) if history_dir else None
    return ReportPaths(
        results_json=results.save(out / RESULTS_JSON),
        junit_xml=junit.write(results, out / JUNIT_XML),
        summary_md=summary.write(results, out / SUMMARY_MD, regressions),
        report_html=html.write(results, out / REPORT_HTML, regressions, past),
        regressions=regressions,
        history=past,
    )


__all__ = [
    "JUNIT_XML",
    "REPORT_HTML",
    "RESULTS_JSON",
    "SCHEMA_VERSION",
    "SUMMARY_MD",
    "Fixed",
    "History",
    "Host",
    "Regression",
    "Regressions",
    "ReportPaths",
    "ResultsError",
    "RunResults",
    "ScenarioResult",
    "Thresholds",
    "TrendPoint",
    "Versions",
    "collect_host",
    "collect_versions",
    "compare",
    "history",
    "new_run_id",
    "reproduce_command",
    "write_reports",
]
