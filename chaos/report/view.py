"""Display values derived from a `ScenarioResult`, shared by junit, summary and HTML.

Why a module of its own: the three renderers must agree on what "faults covered", "p99" or a fault's
label mean, and reading the verdict/config dicts defensively belongs in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chaos.checker import failure_kind
from chaos.report.results import ScenarioResult

# Config keys already shown elsewhere in a fault label (kind first, time last).
_LABEL_SKIP = frozenset({"kind", "window", "at", "toxic"})


def fmt_seconds(value: float | None) -> str:
    """`12s`, `1.5s`: compact seconds for labels."""
    if value is None:
        return "-"
    return f"{value:g}s"


def fmt_latency(seconds: float | None) -> str:
    """Latency in ms (the unit people compare p99s in)."""
    if seconds is None:
        return "-"
    ms = seconds * 1000
    return f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def fmt_rate(per_s: float | None) -> str:
    return "-" if per_s is None else f"{per_s:.1f}/s"


def fault_label(fault: dict[str, Any]) -> str:
    """`reset ports=0,1 probability=0.2 phase=payload window=5s-8s`, from a config fault entry."""
    kind = str(fault.get("kind", "?"))
    parts = [kind]
    toxic = fault.get("toxic")
    if isinstance(toxic, dict):
        attrs = toxic.get("attributes") or {}
        inner = ",".join(f"{k}={v}" for k, v in attrs.items())
        parts.append(f"{toxic.get('type', '?')}({inner})")
    for key, value in fault.items():
        if key in _LABEL_SKIP or value is None or (key == "side" and value == "server"):
            continue  # side: server is the default every transport fault had before side existed
        if key == "ports" and isinstance(value, list):
            value = ",".join(str(p) for p in value)
        elif key in ("delay", "duration") and isinstance(value, int | float):
            value = fmt_seconds(float(value))
        parts.append(f"{key}={value}")
    window = fault.get("window")
    if isinstance(window, dict):
        parts.append(f"window={fmt_seconds(window.get('start'))}-{fmt_seconds(window.get('end'))}")
    if fault.get("at") is not None:
        parts.append(f"at={fmt_seconds(fault['at'])}")
    return " ".join(parts)


def config_faults(result: ScenarioResult) -> list[dict[str, Any]]:
    faults = result.config.get("faults")
    return [f for f in faults if isinstance(f, dict)] if isinstance(faults, list) else []


@dataclass(frozen=True)
class FaultSpan:
    """When fault `index` was active, in seconds from the start of the fault phase.

    `end` is None for a one-shot fault (`at`, drawn as a line); `always` marks a fault with neither
    window nor at, active for the whole fault phase (drawn as one band, not one colour each).
    """

    index: int
    kind: str
    start: float
    end: float | None
    always: bool = False


def fault_spans(result: ScenarioResult) -> list[FaultSpan]:
    duration = result.config.get("duration")
    spans = []
    for i, fault in enumerate(config_faults(result)):
        kind = str(fault.get("kind", "?"))
        window = fault.get("window")
        if isinstance(window, dict) and window.get("start") is not None and window.get("end") is not None:
            spans.append(FaultSpan(i, kind, float(window["start"]), float(window["end"])))
        elif fault.get("at") is not None:
            at = float(fault["at"])
            pause = fault.get("duration")  # a pause at `at` lasts `duration`
            spans.append(FaultSpan(i, kind, at, at + float(pause) if pause else None))
        elif isinstance(duration, int | float):
            spans.append(FaultSpan(i, kind, 0.0, float(duration), always=True))
    return spans


def num_ports(result: ScenarioResult) -> int:
    """Server ports from the config, or from the verdict's per-port table."""
    server = result.config.get("server")
    if isinstance(server, dict) and isinstance(server.get("ports"), int):
        return server["ports"]
    per_port = (result.verdict or {}).get("per_port") or {}
    return max((int(p) + 1 for p in per_port), default=0)


@dataclass(frozen=True)
class CoverageCell:
    """One fault x port cell. `targeted` = the fault lists this port; `count` = times it fired there."""

    targeted: bool
    count: int

    @property
    def state(self) -> str:
        """`covered`, `missed` (targeted, never fired) or `idle` (not targeted)."""
        if not self.targeted:
            return "idle" if self.count == 0 else "covered"
        return "covered" if self.count else "missed"


@dataclass(frozen=True)
class CoverageRow:
    index: int
    kind: str
    label: str
    count: int
    covered: bool
    per_port: bool  # False for process/control faults: one count, no port cells
    cells: list[CoverageCell]
    effect: str = "-"  # effective / ineffective / not_judged (chaos/effects.py); "-" for old results
    effective: int = 0  # firings an outcome matched
    effect_detail: str = ""


def coverage_rows(result: ScenarioResult) -> list[CoverageRow]:
    """The fault x port map: from `verdict.coverage`, labelled from the config."""
    verdict = result.verdict or {}
    faults = config_faults(result)
    ports = num_ports(result)
    rows = []
    for entry in verdict.get("coverage") or []:
        index = int(entry.get("index", len(rows)))
        fired = {int(p): int(n) for p, n in (entry.get("fired_ports") or {}).items()}
        listed = entry.get("ports")
        per_port = listed is not None
        targets = set(listed or [])
        cells = [CoverageCell(p in targets, fired.get(p, 0)) for p in range(ports)] if per_port else []
        label = fault_label(faults[index]) if index < len(faults) else str(entry.get("kind", "?"))
        rows.append(
            CoverageRow(
                index=index,
                kind=str(entry.get("kind", "?")),
                label=label,
                count=int(entry.get("count", 0)),
                covered=bool(entry.get("covered")),
                per_port=per_port,
                cells=cells,
                effect=str(entry.get("effect", "-")),
                effective=int(entry.get("effective", 0)),
                effect_detail=str(entry.get("effect_detail", "")),
            )
        )
    return rows


def faults_covered(result: ScenarioResult) -> str:
    """`2/3`: configured faults that fired everywhere they were meant to."""
    rows = coverage_rows(result)
    if not result.verdict:
        return "-"
    if not rows:
        return "no faults"
    return f"{sum(r.covered for r in rows)}/{len(rows)}"


def counts(result: ScenarioResult) -> dict[str, int]:
    return dict((result.verdict or {}).get("counts") or {})


def throughput(result: ScenarioResult) -> float | None:
    value = ((result.verdict or {}).get("throughput") or {}).get("per_s")
    return float(value) if isinstance(value, int | float) else None


def p99(result: ScenarioResult) -> float | None:
    value = ((result.verdict or {}).get("latency") or {}).get("p99")
    return float(value) if isinstance(value, int | float) else None


def failure_lines(result: ScenarioResult) -> list[str]:
    """What went wrong, one line each: the verdict's failures or the harness error."""
    if result.status == "error":
        return [f"harness error: {result.error}"]
    return list((result.verdict or {}).get("failures") or [])


def offending_times(result: ScenarioResult) -> list[tuple[str, float]]:
    """(anomaly kind, seconds from t0 of the slot's first event) for each offending slot shown."""
    verdict = result.verdict or {}
    t0 = float(verdict.get("t0") or 0.0)
    out = []
    for kind, entries in (verdict.get("anomalies") or {}).items():
        for entry in entries or []:
            times = [e["t"] for e in entry.get("events") or [] if isinstance(e.get("t"), int | float)]
            if times:
                out.append((kind, float(min(times)) - t0))
    return out


def anomaly_kind(failure: str) -> str:
    """`lost` from `lost: 3 > 0 (slots ...)`: the checker's failures start with what failed."""
    return failure_kind(failure)
