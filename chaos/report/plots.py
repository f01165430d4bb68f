"""matplotlib charts for report.html, returned as `data:image/png;base64,...` URIs.

Embedded PNGs keep the report one self-contained file that opens offline. Figures are built with
the object API on an Agg canvas (no pyplot): no global backend state, no display needed, safe in
worker threads.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from chaos.report import view
from chaos.report.compare import TrendPoint
from chaos.report.results import ScenarioResult

DPI = 96
FAULT_COLORS = ("#e4572e", "#8e44ad", "#f3a712", "#29335c", "#17becf", "#669bbc", "#a8c686", "#c0392b")
BAR_COLORS = {"retries": "#f3a712", "quarantines": "#e4572e", "faults": "#8e44ad"}


def _png(fig: Figure) -> str:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float = 7.5, height: float = 2.8) -> Figure:
    return Figure(figsize=(width, height), layout="constrained")


def timeline(result: ScenarioResult) -> str | None:
    """Deliveries per second, fault windows shaded, one-shot faults as lines, offending slots marked.

    Faults active for the whole fault phase share one grey band: a colour each would tint the
    entire chart and hide the windows that matter.
    """
    verdict = result.verdict
    if not verdict:
        return None
    tp = verdict.get("throughput") or {}
    counts = [int(c) for c in tp.get("timeline") or []]
    start = float(tp.get("start_s") or 0)
    bucket = float(tp.get("bucket_s") or 1.0)
    fig = _figure(9.5, 3.0)
    ax = fig.add_subplot()
    spans = view.fault_spans(result)
    always = [s for s in spans if s.always]
    if always:
        names = ", ".join(f"#{s.index} {s.kind}" for s in always)
        ax.axvspan(
            always[0].start, always[0].end or 0.0, color="#8c959f", alpha=0.12, label=f"fault phase: {names}"
        )
    for span in spans:
        if span.always:
            continue
        color = FAULT_COLORS[span.index % len(FAULT_COLORS)]
        label = f"#{span.index} {span.kind}"
        if span.end is None:
            ax.axvline(span.start, color=color, linestyle="--", linewidth=1.6, label=label)
        else:
            ax.axvspan(span.start, span.end, color=color, alpha=0.22, label=label)
    if counts:
        xs = [start + i * bucket for i in range(len(counts) + 1)]
        ys = [*counts, counts[-1]]  # close the last bucket
        ax.step(xs, ys, where="post", color="#1f6feb", linewidth=1.5, label="deliveries/s")
        ax.fill_between(xs, ys, step="post", color="#1f6feb", alpha=0.10)
    else:
        ax.text(0.5, 0.5, "no deliveries", transform=ax.transAxes, ha="center", va="center", color="#a00")
    offending = view.offending_times(result)
    if offending:
        ax.plot(
            [t for _, t in offending],
            [0] * len(offending),
            linestyle="none",
            marker="^",
            markersize=8,
            color="#cf222e",
            clip_on=False,
            zorder=4,
            label="offending slots",
        )
    duration = result.config.get("duration")
    if isinstance(duration, int | float):
        ax.axvline(float(duration), color="#555", linestyle=":", linewidth=1.2, label="heal")
    ax.set_title("deliveries per second", fontsize=9)
    ax.set_xlabel("seconds since the fault phase started")
    ax.set_ylabel("deliveries / s")
    ax.set_ylim(bottom=0, top=max(counts, default=1) * 1.15 or 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return _png(fig)


def latency(result: ScenarioResult) -> str | None:
    """Read-latency quantiles (ms) as bars."""
    lat = (result.verdict or {}).get("latency") or {}
    names = ("p50", "p90", "p99", "max")
    values = [lat.get(n) for n in names]
    if not result.verdict or all(v is None for v in values):
        return None
    ms = [0.0 if v is None else float(v) * 1000 for v in values]
    fig = _figure(4.2, 2.8)
    ax = fig.add_subplot()
    bars = ax.bar(names, ms, color=["#69b3a2", "#4a90a4", "#e4572e", "#8c1c13"])
    ax.bar_label(bars, labels=[view.fmt_latency(v) for v in values], fontsize=8, padding=2)
    ax.set_ylabel("ms")
    ax.set_title(f"read latency quantiles ({lat.get('count', 0)} reads)", fontsize=9)
    ax.set_ylim(0, max(ms) * 1.25 or 1)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def per_port(result: ScenarioResult) -> str | None:
    """Retries, quarantines and faults per port as grouped bars."""
    table = (result.verdict or {}).get("per_port") or {}
    if not result.verdict or not table:
        return None
    ports = sorted(table, key=int)
    fig = _figure(4.8, 2.8)
    ax = fig.add_subplot()
    width = 0.8 / len(BAR_COLORS)
    for j, (name, color) in enumerate(BAR_COLORS.items()):
        xs = [i + (j - 1) * width for i in range(len(ports))]
        ax.bar(xs, [int(table[p].get(name, 0)) for p in ports], width, label=name, color=color)
    ax.set_xticks(range(len(ports)), [f"port {p}" for p in ports])
    ax.set_ylabel("events")
    ax.set_title("retries, quarantines and faults per port", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    return _png(fig)


def trend(name: str, points: Sequence[TrendPoint]) -> str | None:
    """Throughput and p99 of one scenario across runs (failed runs red); None without any numbers."""
    if all(p.throughput is None and p.p99 is None for p in points):
        return None
    fig = _figure(9.5, 2.6)
    ax_tp, ax_p99 = fig.subplots(1, 2)
    labels = [p.started.strftime("%m-%d %H:%M") for p in points]
    xs = list(range(len(points)))
    colors = ["#2da44e" if p.status == "passed" else "#cf222e" for p in points]
    for ax, values, title in (
        (ax_tp, [p.throughput for p in points], "throughput (deliveries/s)"),
        (ax_p99, [None if p.p99 is None else p.p99 * 1000 for p in points], "p99 read latency (ms)"),
    ):
        known = [(x, v, c) for x, v, c in zip(xs, values, colors, strict=True) if v is not None]
        if known:
            ax.plot([k[0] for k in known], [k[1] for k in known], color="#888", linewidth=1)
            ax.scatter([k[0] for k in known], [k[1] for k in known], c=[k[2] for k in known], zorder=3)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(xs, labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle(name, fontsize=10)
    return _png(fig)
