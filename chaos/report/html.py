"""report.html: one self-contained page (inline CSS, PNG plots as data URIs, no scripts).

A Content-Security-Policy in the page forbids every fetch except `data:` images, so a report that
tried to load anything from the network would show it as a console error instead of silently
working only online. jinja2 autoescape is on: names, errors and event fields are untrusted text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from chaos.atomic import write_atomic
from chaos.report import plots, view
from chaos.report.compare import History, Regressions
from chaos.report.results import RunResults, ScenarioResult
from chaos.report.summary import COLUMNS

TEMPLATE = "report.html.j2"
EVENTS_PER_SLOT = 60  # event rows shown per offending slot
# Event fields already shown in their own columns or in the slot heading.
_EVENT_SKIP = frozenset({"t", "proc", "type", "key", "slot", "generation"})
COUNTER_ORDER = (
    "published",
    "delivered",
    "lost",
    "duplicated",
    "corrupted",
    "in_doubt",
    "unexpected",
    "delivered_to_dead_consumer",
    "wrong_generation",
    "fencing",
    "dropped",
    "stale_rejected",
    "retries",
    "failed",
)
COUNTER_LABELS = {"failed": "failed reads", "retries": "retried reads"}
BAD_COUNTERS = frozenset(
    {"lost", "duplicated", "corrupted", "in_doubt", "unexpected", "wrong_generation", "fencing"}
)


@dataclass(frozen=True)
class EventRow:
    t: str
    proc: str
    type: str
    fields: str


@dataclass(frozen=True)
class OffendingSlot:
    kind: str
    key: str
    note: str
    events: list[EventRow]
    hidden: int  # events not shown (over EVENTS_PER_SLOT)


@dataclass(frozen=True)
class ScenarioView:
    result: ScenarioResult
    anchor: str
    description: str
    row: list[str]
    counters: list[tuple[str, int, bool]]  # label, value, bad (non-zero anomaly)
    coverage: list[view.CoverageRow]
    ports: int
    faults: list[str]
    recovery: list[dict[str, Any]]
    failures: list[str]
    offending: list[OffendingSlot]
    timeline_png: str | None
    latency_png: str | None
    ports_png: str | None


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("chaos.report", "templates"),
        autoescape=True,  # the .j2 suffix defeats select_autoescape; escape everything
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["latency"] = view.fmt_latency
    env.filters["rate"] = view.fmt_rate
    env.filters["seconds"] = lambda v: "-" if v is None else f"{float(v):.2f} s"
    return env


def _fields(event: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in event.items() if k not in _EVENT_SKIP)


def _offending(result: ScenarioResult) -> list[OffendingSlot]:
    verdict = result.verdict or {}
    t0 = float(verdict.get("t0") or 0.0)
    out = []
    for kind, entries in (verdict.get("anomalies") or {}).items():
        for entry in entries or []:
            events = list(entry.get("events") or [])
            rows = [
                EventRow(
                    t=f"{float(e['t']) - t0:+.3f}" if isinstance(e.get("t"), int | float) else "?",
                    proc=str(e.get("proc", "")),
                    type=str(e.get("type", "")),
                    fields=_fields(e),
                )
                for e in events[:EVENTS_PER_SLOT]
            ]
            out.append(
                OffendingSlot(
                    kind=kind,
                    key=str(entry.get("key", "?")),
                    note=str(entry.get("note", "")),
                    events=rows,
                    hidden=max(len(events) - EVENTS_PER_SLOT, 0),
                )
            )
    return out


def overview_row(s: ScenarioResult) -> list[str]:
    """Cells of the overview table (same columns as summary.md)."""
    c = view.counts(s)
    return [
        s.name,
        s.status,
        *(str(c.get(k, "-")) for k in ("delivered", "lost", "duplicated", "corrupted", "in_doubt")),
        view.fmt_rate(view.throughput(s)),
        view.fmt_latency(view.p99(s)),
        view.faults_covered(s),
    ]


def scenario_view(s: ScenarioResult, index: int) -> ScenarioView:
    c = view.counts(s)
    return ScenarioView(
        result=s,
        anchor=f"scenario-{index}",
        description=str(s.config.get("description") or ""),
        row=overview_row(s),
        counters=[
            (COUNTER_LABELS.get(k, k.replace("_", " ")), c[k], k in BAD_COUNTERS and c[k] > 0)
            for k in COUNTER_ORDER
            if k in c
        ],
        coverage=view.coverage_rows(s),
        ports=view.num_ports(s),
        faults=[view.fault_label(f) for f in view.config_faults(s)],
        recovery=list((s.verdict or {}).get("recovery") or []),
        failures=view.failure_lines(s) if s.status == "failed" else [],
        offending=_offending(s),
        timeline_png=plots.timeline(s),
        latency_png=plots.latency(s),
        ports_png=plots.per_port(s),
    )


def render(
    results: RunResults,
    regressions: Regressions | None = None,
    history: History | None = None,
) -> str:
    trends: list[tuple[str, int, str | None]] = []
    if history is not None:
        for name, points in sorted(history.trends().items()):
            if results.scenario(name) is not None:
                trends.append((name, len(points), plots.trend(name, points)))
    template = _environment().get_template(TEMPLATE)
    return template.render(
        results=results,
        totals=results.status_counts(),
        columns=COLUMNS,
        scenarios=[scenario_view(s, i) for i, s in enumerate(results.scenarios)],
        regressions=regressions,
        history=history,
        trends=trends,
    )


def write(
    results: RunResults,
    path: str | Path,
    regressions: Regressions | None = None,
    history: History | None = None,
) -> Path:
    path = Path(path)
    write_atomic(path, render(results, regressions, history))
    return path
