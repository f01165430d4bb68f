"""What counts as a finding of `chaos explore`: one pure function over the checker's failure strings.

The checker already sorts every failure into safety, coverage or liveness (`chaos.checker.failure_class`);
this module only decides what explore does with each class, in one place:
- safety (lost, duplicated, corrupted, in_doubt and every invariant): always a finding;
- liveness (throughput, recovery, p99 latency): a finding unless `--safety-only`;
- coverage (ineffective, faults_fired, vacuous, ...): never. A generated fault is not claimed to change
  anything (the generator asks `faults_effective: none`), and a vacuous run (nothing published) proved
  nothing either way.
A candidate reproduces a finding when it fails with a failure *kind* the original finding had, so the
shrinker cannot slip from one bug to another (from `lost` to a slow recovery, say).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

from chaos.checker import failure_class, failure_kind

FindingClass = Literal["safety", "liveness"]


def finding_failures(failures: Iterable[str], safety_only: bool) -> list[str]:
    """The failures explore counts: safety ones, plus liveness ones unless `safety_only`."""
    wanted = {"safety"} if safety_only else {"safety", "liveness"}
    return [f for f in failures if failure_class(f) in wanted]


def finding_class(failures: Iterable[str], safety_only: bool) -> FindingClass | None:
    """`safety` if any safety failure, else `liveness` if counted and present, else None (no finding)."""
    classes = {failure_class(f) for f in finding_failures(failures, safety_only)}
    if "safety" in classes:
        return "safety"
    return "liveness" if classes else None


def finding_kinds(failures: Iterable[str], safety_only: bool) -> frozenset[str]:
    """The failure kinds of the finding's own class (`lost`, `fencing`, ...), what a shrunk candidate
    must show again."""
    counted = finding_failures(failures, safety_only)
    cls = finding_class(counted, safety_only)
    return frozenset(failure_kind(f) for f in counted if failure_class(f) == cls)


def reproduces(kinds: frozenset[str], failures: Sequence[str], safety_only: bool) -> bool:
    """True when a candidate's failures show one of the original finding's `kinds` again."""
    return bool(kinds & finding_kinds(failures, safety_only))
