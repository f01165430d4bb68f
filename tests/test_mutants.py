"""The harness is itself tested: each transport mutant makes a shipped scenario fail with the right anomaly.

A mutant (tests/mutants/mutants.py) removes one guarantee of the transport. It is switched on in
every process of a real `chaos run` (runner, server, producer, consumers) by putting tests/mutants
first on PYTHONPATH, where its `sitecustomize` reads `SLOTWIRE_MUTANT`; production code has no hook
for it. Each case runs the cheapest shipped scenario that catches its mutant and asserts exit code 1
with the expected anomaly among the verdict's failures (results.json), so a scenario failing for some
unrelated reason does not count as a catch.

Control: the same scenarios without a mutant are the shipped suite (`pytest scenarios/`, the nightly
`chaos run scenarios/*.yaml`), which must pass; not repeated here. What is checked here is that the
start-up hook itself is inert without `SLOTWIRE_MUTANT` and patches the named function with it.

Catch table (seed 1, this 2-core machine):

| mutant | scenario | exit | anomaly named | run |
|---|---|---|---|---|
| no_generation_check | control-delay-descriptor | 1 | wrong_generation (also lost: slots stuck) | ~40 s |
| finalise_on_send | transport-truncate | 1 | lost | ~20 s |
| orphan_finalise_no_token | transport-stall-past-lease | 1 | fencing | ~20 s |
| truncation_not_quarantined | transport-truncate | 1 | faults_quarantined | ~20 s |
| ready_count_writes | baseline-no-faults | 1 | ring_audit | ~20 s |
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.report.view import anomaly_kind

ROOT = Path(__file__).resolve().parents[1]
MUTANTS_DIR = ROOT / "tests" / "mutants"
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 170  # a scenario's deadline is 55 s; this only bounds a hung subprocess


@dataclass(frozen=True)
class Case:
    mutant: str
    scenario: str
    anomaly: str  # the failure kind the verdict must name (`anomaly_kind` of a failure string)

    def __str__(self) -> str:
        return self.mutant


CASES = [
    Case("no_generation_check", "control-delay-descriptor", "wrong_generation"),
    Case("finalise_on_send", "transport-truncate", "lost"),
    Case("orphan_finalise_no_token", "transport-stall-past-lease", "fencing"),
    Case("truncation_not_quarantined", "transport-truncate", "faults_quarantined"),
    Case("ready_count_writes", "baseline-no-faults", "ring_audit"),
]


def mutant_env(mutant: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(MUTANTS_DIR), env.get("PYTHONPATH")) if p)
    env.pop("SLOTWIRE_MUTANT", None)
    if mutant is not None:
        env["SLOTWIRE_MUTANT"] = mutant
    return env


def test_every_mutant_has_a_case() -> None:
    sys.path.insert(0, str(MUTANTS_DIR))
    try:
        import mutants
    finally:
        sys.path.remove(str(MUTANTS_DIR))
    assert {c.mutant for c in CASES} == set(mutants.MUTANTS)
    assert all((SCENARIOS / f"{c.scenario}.yaml").is_file() for c in CASES)


PATCHED = {
    "no_generation_check": "transport.ring:SharedRing.begin_read",
    "finalise_on_send": "transport.server:SlotServer._perform",
    "orphan_finalise_no_token": "transport.ring:SharedRing._finalise",
    "truncation_not_quarantined": "transport.client:SlotClient.quarantine",
    "ready_count_writes": "transport.ring:SharedRing.ready_count",
}
_WHERE = """
import importlib, json, sys
out = {}
for name, spec in json.loads(sys.argv[1]).items():
    module, _, attr = spec.partition(":")
    owner, _, method = attr.partition(".")
    out[name] = getattr(getattr(importlib.import_module(module), owner), method).__module__
print(json.dumps(out))
"""


@pytest.mark.parametrize("mutant", [None, *PATCHED], ids=lambda m: m or "no-mutant")
def test_startup_hook_patches_only_the_named_function(mutant: str | None) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _WHERE, json.dumps(PATCHED)],
        env=mutant_env(mutant),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    where = json.loads(proc.stdout)
    expected = {
        name: "mutants" if name == mutant else spec.partition(":")[0] for name, spec in PATCHED.items()
    }
    assert where == expected


def test_unknown_mutant_refuses_to_start() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "print('ran')"],
        env=mutant_env("no_such_mutant"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "ran" not in proc.stdout
    assert "unknown mutant" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=str)
def test_shipped_scenario_catches_mutant(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "chaos.cli",
        "run",
        str(SCENARIOS / f"{case.scenario}.yaml"),
        "--out",
        str(out),
    ]
    proc = subprocess.run(
        cmd, env=mutant_env(case.mutant), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    log = f"{case.mutant} on {case.scenario}: exit {proc.returncode}\n{tail}"
    assert proc.returncode == 1, log
    (result,) = json.loads((out / "results.json").read_text())["scenarios"]
    failures = result["verdict"]["failures"]
    assert case.anomaly in {anomaly_kind(f) for f in failures}, f"{failures}\n{log}"
