"""Read a run's per-process event logs (`<run>/events/*.jsonl`) and merge them into one history.

Each process appends to its own file through `transport.events.JsonlSink`, one `os.write` per line.
A process killed mid-write leaves a truncated last line; if the harness restarts it on the same
file, O_APPEND glues the next full line onto that fragment. So a line that does not parse is
skipped, except that its last `{"t": ` suffix is tried first (the full event after a fragment).
Every skipped line is reported, never silently dropped, so a report can show what was lost.

Merge: files in name order, lines in file order, then a stable sort by `t`, so the same files give
the same history on every run (ties keep file-then-line order).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVENT_START = '{"t": '  # how every JsonlSink line begins (json.dumps with default separators)


@dataclass(frozen=True)
class MergedEvents:
    """Merged events plus what could not be read (`"<file>:<line>: <why>"`)."""

    events: list[dict[str, Any]]
    files: list[str]
    skipped: list[str]


def _parse(line: str) -> dict[str, Any] | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or "type" not in event:
        return None
    t = event.get("t")
    if not isinstance(t, int | float) or isinstance(t, bool):
        return None
    return event


def read_events_file(path: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Events of one JSONL file in file order, and the lines skipped (truncated or garbled)."""
    path = Path(path)
    data = path.read_bytes().decode("utf-8", errors="replace")
    events: list[dict[str, Any]] = []
    skipped: list[str] = []
    lines = data.split("\n")
    complete = data.endswith("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        event = _parse(line)
        if event is None:
            start = line.rfind(EVENT_START)
            event = _parse(line[start:]) if start > 0 else None
            last = number == len(lines) and not complete
            why = "truncated last line" if last else "unparsable line"
            skipped.append(f"{path.name}:{number}: {why}" + (" (event after it recovered)" if event else ""))
        if event is not None:
            events.append(event)
    return events, skipped


def merge(streams: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One time-ordered history; stable, so equal times keep stream-then-position order."""
    merged = [event for stream in streams for event in stream]
    merged.sort(key=lambda e: float(e["t"]))
    return merged


def read_history(run_dir: str | os.PathLike[str]) -> MergedEvents:
    """Read `<run_dir>/events/*.jsonl` (or `run_dir/*.jsonl` if it is the events directory)."""
    root = Path(run_dir)
    directory = root / "events" if (root / "events").is_dir() else root
    if not directory.is_dir():
        raise FileNotFoundError(f"no event directory at {directory}")
    files = sorted(directory.glob("*.jsonl"))
    streams: list[list[dict[str, Any]]] = []
    skipped: list[str] = []
    for path in files:
        events, bad = read_events_file(path)
        streams.append(events)
        skipped.extend(bad)
    return MergedEvents(events=merge(streams), files=[p.name for p in files], skipped=skipped)
