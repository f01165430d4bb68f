"""summary.md: the run at a glance for CI step summaries ($GITHUB_STEP_SUMMARY, GitLab job pages).

Order: a headline, regressions against the baseline (what a reviewer must act on first), the
per-scenario table, then every failure with the command that reproduces it.
"""

from __future__ import annotations

import re
from pathlib import Path

from chaos.atomic import write_atomic
from chaos.report import view
from chaos.report.compare import Regressions
from chaos.report.results import RunResults, ScenarioResult

STATUS_MARK = {"passed": "✅ passed", "failed": "❌ failed", "error": "⚠️ error"}
COLUMNS = (
    "scenario",
    "verdict",
    "delivered",
    "lost",
    "duplicated",
    "corrupted",
    "in-doubt",
    "throughput",
    "p99",
    "faults covered",
)


def cell(text: object) -> str:
    """Table-safe: one line, pipes escaped, no HTML tags (GitHub renders some inline)."""
    value = " ".join(str(text).split())
    value = value.replace("\\", "\\\\").replace("|", "\\|")
    return value.replace("<", "&lt;")


def code_block(text: str, lang: str = "") -> str:
    """A fenced block whose fence is longer than any backtick run inside (so nothing escapes it)."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _row(s: ScenarioResult) -> str:
    c = view.counts(s)

    def n(key: str) -> str:
        return str(c[key]) if key in c else "-"

    values = [
        s.name,
        STATUS_MARK[s.status],
        n("delivered"),
        n("lost"),
        n("duplicated"),
        n("corrupted"),
        n("in_doubt"),
        view.fmt_rate(view.throughput(s)),
        view.fmt_latency(view.p99(s)),
        view.faults_covered(s),
    ]
    return "| " + " | ".join(cell(v) for v in values) + " |"


def _regressions(regressions: Regressions) -> list[str]:
    th = regressions.thresholds
    out = [
        f"### Regressions vs baseline `{cell(regressions.baseline_run_id)}`",
        "",
        f"Thresholds: throughput -{th.throughput_drop:.0%}, p99 +{th.p99_rise:.0%}.",
        "",
    ]
    if regressions.items:
        out += [
            f"- ❌ **{cell(r.scenario)}** ({r.kind.replace('_', ' ')}): {cell(r.message)}"
            for r in regressions.items
        ]
    else:
        out.append("No regressions.")
    if regressions.fixed:
        out += ["", *[f"- ✅ **{cell(f.scenario)}** fixed (was {f.baseline})" for f in regressions.fixed]]
    if regressions.new_scenarios:
        out += ["", "New scenarios: " + ", ".join(cell(n) for n in regressions.new_scenarios)]
    if regressions.missing_scenarios:
        out += ["", "Not run this time: " + ", ".join(cell(n) for n in regressions.missing_scenarios)]
    return [*out, ""]


def _failure(s: ScenarioResult) -> list[str]:
    out = [f"#### {STATUS_MARK[s.status]}: {cell(s.name)}", ""]
    if s.status == "error":
        out += ["Harness error (the run could not be judged):", "", code_block(s.error or ""), ""]
    else:
        out += [f"- {cell(line)}" for line in view.failure_lines(s)] + [""]
    out += ["Reproduce:", "", code_block(s.reproduce, "sh"), "", f"Artifacts: `{cell(s.run_dir)}`", ""]
    return out


def render(results: RunResults, regressions: Regressions | None = None) -> str:
    totals = results.status_counts()
    head = ", ".join(f"{n} {k}" for k, n in totals.items() if n) or "no scenarios"
    lines = [
        f"## Chaos run `{cell(results.run_id)}`: {head}",
        "",
        f"{results.started:%Y-%m-%d %H:%M:%S %Z}, {results.duration_s:.0f} s on "
        f"{cell(results.host.hostname)}; slotwire {results.versions.slotwire}, ucxx {results.versions.ucxx}.",
        "",
    ]
    if regressions is not None:
        lines += _regressions(regressions)
    lines += [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|",
        *(_row(s) for s in results.scenarios),
        "",
    ]
    failing = [s for s in results.scenarios if s.status != "passed"]
    if failing:
        lines += ["### Failures", ""]
        for s in failing:
            lines += _failure(s)
    return "\n".join(lines).rstrip() + "\n"


def write(results: RunResults, path: str | Path, regressions: Regressions | None = None) -> Path:
    path = Path(path)
    write_atomic(path, render(results, regressions))
    return path
