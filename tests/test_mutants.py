"""The harness tests itself: each mutant proves it ran, leaves a control green, and is caught.

A mutant (tests/mutants/mutants.py) removes one guarantee. It is switched on in every process of a
real `chaos run` (runner, server, producer, consumers) by putting tests/mutants first on PYTHONPATH,
where its `sitecustomize` reads `SLOTWIRE_MUTANT`; production code has no hook for it.

Each case is validated three ways (`case_problems`, a pure function of what the runs produced):
(a) the patch site exists with the same signature (checked at start-up, exit 2 otherwise) and the
    mutated branch executed: a marker file written by `mutants.ran()` in some process of the run;
(b) a control run where the bug cannot show passes with the mutant on;
(c) a **shipped** scenario (`scenarios/*.yaml`, the nightly suite) fails with the named *safety*
    anomaly (chaos.checker.failure_class), not with a throughput or recovery bound.
Checker mutants make the checker lax, which a correct transport can never show; their catch is a
unit test of tests/test_checker.py failing, their control another one passing.
`test_validation_fails_when_the_mutant_raises_instead_of_mutating` runs finalise_on_send with
`SLOTWIRE_MUTANT_BREAK=raise` and shows the validation then reports problems.

Catch table, measured 2026-12-01 (seed 1, this 2-core box shared with five other jobs, load average
~20; control: tests/mutants/controls/quiet.yaml unless noted; s = catch + control run, wall clock):

| mutant | module | anomaly named (observed) | shipped scenario | s |
|---|---|---|---|---|
| no_generation_check | ring | wrong_generation | control-delay-descriptor | 95 |
| orphan_finalise_no_token | ring | fencing: 7 | transport-stall-past-lease | 192 |
| ready_count_writes (no control: every run audits) | ring | ring_audit | baseline-no-faults | 109 |
| history_ignores_generation (12-02, load 3) | ring | lost: 16 | transport-commit-history-overflow | 32 |
| generation_reused | ring | republished: 64 (+ duplicated, double_commit) | baseline-no-faults | 189 |
| checksum_skipped | protocol | corrupted: 29 | transport-truncate | 148 |
| resolve_says_not_committed | protocol | lost: 15 | transport-drop-commit | 163 |
| resolve_says_committed | protocol | uncommitted_delivery: 20 | transport-reset-phases | 188 |
| refused_commit_taken_as_success | protocol | uncommitted_delivery: 43 | transport-stall-past-lease | 195 |
| finalise_on_send | server | lost: 9 | transport-truncate | 145 |
| release_missing_on_error | server | slot_leak / drain_incomplete | transport-reset-payload | 94 |
| truncation_not_quarantined | client | ineffective (truncate) | transport-truncate | 119 |
| quarantine_never_expires | client | port_abandoned: ports 0, 1 | transport-reset-payload | 109 |
| resolve_not_asked | client | lost: 16 | transport-drop-commit | 102 |
| not_ready_retried | packer | drain_incomplete | control-duplicate-descriptor | 170 |
| stale_is_exhausted | packer | drain_incomplete (+ lost) | control-delay-descriptor | 110 |
| reset_fault_inert | chaos faults | ineffective (reset, 114 firings) | transport-reset-payload | 124 |
| checker_ignores_double_commit | checker | unit test fails | (test_checker; control test_lost) | 41 |
| checker_excuses_every_kill | checker | unit test fails | (test_checker; control test_lost) | 47 |

The finalise_on_send-raises check took 162 s. All 19 slow tests: ~2,900 s of runs, ~25 minutes with
`-n 2` on this loaded box.

`truncation_not_quarantined` and `reset_fault_inert` are the catches in the coverage class: exactly-once
still holds; what breaks is the port-health guarantee (a truncating port must leave the rotation) and
the harness's own fault (it fires but is off the data path), each named by the fault's effect rule.
`reset_fault_inert` is the acceptance case "a scenario whose fault is removed from the data path fails
as `ineffective`".
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from chaos.checker import failure_class, failure_kind
from tests.mutants.sweep import mutant_env  # one definition: the sweep runs mutants the same way

ROOT = Path(__file__).resolve().parents[1]
MUTANTS_DIR = ROOT / "tests" / "mutants"
CONTROLS = MUTANTS_DIR / "controls"
SCENARIOS = ROOT / "scenarios"
RUN_TIMEOUT_S = 300  # a scenario's deadline is 90 s (+ start-up under load); this bounds a hung run


@dataclass(frozen=True)
class Case:
    mutant: str
    catch: str  # a shipped scenario name, or a tests/test_checker.py test for checker mutants
    anomalies: tuple[str, ...]  # failure kinds naming the bug (any of them)
    control: str | None = "quiet"  # tests/mutants/controls/<name>.yaml, a test name, or None

    def __str__(self) -> str:
        return self.mutant

    @property
    def unit(self) -> bool:
        return self.catch.startswith("test_")


CASES = [
    Case("no_generation_check", "control-delay-descriptor", ("wrong_generation",)),
    Case("orphan_finalise_no_token", "transport-stall-past-lease", ("fencing",)),
    Case("ready_count_writes", "baseline-no-faults", ("ring_audit",), control=None),
    Case("history_ignores_generation", "transport-commit-history-overflow", ("lost",)),
    Case("generation_reused", "baseline-no-faults", ("republished",)),
    Case("checksum_skipped", "transport-truncate", ("corrupted",)),
    Case("resolve_says_not_committed", "transport-drop-commit", ("lost",)),
    Case("resolve_says_committed", "transport-reset-phases", ("uncommitted_delivery",)),
    Case("refused_commit_taken_as_success", "transport-stall-past-lease", ("uncommitted_delivery",)),
    Case("finalise_on_send", "transport-truncate", ("lost",)),
    Case("release_missing_on_error", "transport-reset-payload", ("slot_leak", "drain_incomplete")),
    Case("truncation_not_quarantined", "transport-truncate", ("ineffective",)),
    Case("quarantine_never_expires", "transport-reset-payload", ("port_abandoned",)),
    Case("resolve_not_asked", "transport-drop-commit", ("lost",)),
    Case("not_ready_retried", "control-duplicate-descriptor", ("drain_incomplete",)),
    Case("stale_is_exhausted", "control-delay-descriptor", ("drain_incomplete",)),
    Case("reset_fault_inert", "transport-reset-payload", ("ineffective",)),
    Case(
        "checker_ignores_double_commit",
        "test_second_server_commit_of_a_key_is_double_commit",
        ("unit",),
        control="test_lost",
    ),
    Case(
        "checker_excuses_every_kill",
        "test_kill_excuses_only_keys_the_killed_consumer_held",
        ("unit",),
        control="test_lost",
    ),
]
# Kinds a catch may be named by: every safety kind, and the one port-health coverage rule.
CATCH_CLASSES = ("safety",)
COVERAGE_CATCHES = frozenset({"ineffective"})


def _mutants_module():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(MUTANTS_DIR))
    try:
        import mutants
    finally:
        sys.path.remove(str(MUTANTS_DIR))
    return mutants


def test_every_mutant_has_a_case_with_a_shipped_scenario_and_a_control() -> None:
    mutants = _mutants_module()
    assert {c.mutant for c in CASES} == set(mutants.MUTANTS)
    assert len(CASES) >= 15
    for c in CASES:
        if c.unit:
            continue
        assert (SCENARIOS / f"{c.catch}.yaml").is_file(), c
        assert c.control is None or (CONTROLS / f"{c.control}.yaml").is_file(), c


# -- running a case -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    exit_code: int
    failures: tuple[str, ...]
    log: str


def run_scenario(path: Path, env: dict[str, str], out: Path) -> RunOutcome:
    cmd = [sys.executable, "-m", "chaos.cli", "run", str(path), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    failures: tuple[str, ...] = ()
    results = out / "results.json"
    if results.is_file():
        (result,) = json.loads(results.read_text())["scenarios"]
        failures = tuple((result.get("verdict") or {}).get("failures") or ())
    return RunOutcome(proc.returncode, failures, proc.stdout[-2000:] + proc.stderr[-2000:])


def run_unit(test: str, env: dict[str, str]) -> RunOutcome:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
    cmd += [f"{ROOT / 'tests' / 'test_checker.py'}::{test}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, cwd=ROOT)
    return RunOutcome(proc.returncode, ("unit: failed",) if proc.returncode else (), proc.stdout[-2000:])


def case_problems(case: Case, catch: RunOutcome, control: RunOutcome | None, markers: list[str]) -> list[str]:
    """Why this mutant's proof does not hold (empty: it ran, the control passed, it was caught)."""
    problems: list[str] = []
    if not markers:
        problems.append("(a) the mutated code never ran: no marker from mutants.ran()")
    if control is not None and control.exit_code != 0:
        problems.append(f"(b) control failed (exit {control.exit_code}): {list(control.failures)}")
    named = [f for f in catch.failures if failure_kind(f) in case.anomalies]
    if catch.exit_code != 1 or not named:
        problems.append(
            f"(c) not caught with {case.anomalies} (exit {catch.exit_code}): {list(catch.failures)}"
        )
    elif not case.unit and not any(
        failure_class(f) in CATCH_CLASSES or failure_kind(f) in COVERAGE_CATCHES for f in named
    ):
        problems.append(f"(c) caught only by liveness bounds: {named}")
    return problems


def validate(
    case: Case, tmp: Path, *, broken: bool = False
) -> tuple[list[str], RunOutcome, RunOutcome | None]:
    ran = tmp / "ran"
    env = mutant_env(case.mutant, ran, broken)
    if case.unit:
        catch = run_unit(case.catch, env)
        control = run_unit(case.control, env) if case.control else None
    else:
        catch = run_scenario(SCENARIOS / f"{case.catch}.yaml", env, tmp / "catch")
        control = (
            run_scenario(CONTROLS / f"{case.control}.yaml", env, tmp / "control") if case.control else None
        )
    markers = sorted(p.name for p in ran.glob(f"{case.mutant}.*")) if ran.is_dir() else []
    return case_problems(case, catch, control, markers), catch, control


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_mutant_runs_keeps_its_control_green_and_is_caught(case: Case, tmp_path: Path) -> None:
    problems, catch, control = validate(case, tmp_path)
    detail = f"catch: {catch.log}\ncontrol: {control.log if control else '-'}"
    assert problems == [], f"{case.mutant}: {problems}\n{detail}"


@pytest.mark.slow
@pytest.mark.timeout(2 * RUN_TIMEOUT_S + 60)
def test_validation_fails_when_the_mutant_raises_instead_of_mutating(tmp_path: Path) -> None:
    """The old finalise_on_send passed because every server action raised: now that is a failure."""
    case = next(c for c in CASES if c.mutant == "finalise_on_send")
    problems, _, control = validate(case, tmp_path, broken=True)
    assert control is not None and control.exit_code != 0, control  # 1 (anomalies) or 3 (never drained)
    assert any(p.startswith("(b) control failed") for p in problems), problems


def test_case_problems_rules() -> None:
    """The validation itself, on made-up outcomes: each of (a), (b), (c) can fail it."""
    case = Case("m", "transport-truncate", ("lost",))
    caught = RunOutcome(1, ("lost: 3 > 0 (slots 1:1)", "throughput: 1.0/s < 40/s"), "")
    green = RunOutcome(0, (), "")
    assert case_problems(case, caught, green, ["m.123"]) == []
    assert case_problems(case, caught, green, [])[0].startswith("(a)")
    assert case_problems(case, caught, RunOutcome(1, ("lost: 1 > 0",), ""), ["m.1"])[0].startswith("(b)")
    slow_only = RunOutcome(1, ("throughput: 1.0/s < 40/s",), "")
    assert case_problems(case, slow_only, green, ["m.1"])[0].startswith("(c) not caught")
    liveness_case = Case("m", "x", ("throughput",))
    assert case_problems(liveness_case, slow_only, green, ["m.1"]) == [
        "(c) caught only by liveness bounds: ['throughput: 1.0/s < 40/s']"
    ]


# -- start-up hook --------------------------------------------------------------------------------

_WHERE = """
import importlib, json, sys
import mutants
print(json.dumps({"active": mutants._active}))
"""


@pytest.mark.parametrize("mutant", [c.mutant for c in CASES], ids=str)
def test_startup_hook_patches_a_live_site(mutant: str) -> None:
    """Every mutant's patch site exists with its signature (else `activate` exits 2)."""
    proc = subprocess.run(
        [sys.executable, "-c", _WHERE], env=mutant_env(mutant), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"active": mutant}


def test_startup_hook_is_inert_without_a_mutant() -> None:
    code = "import transport.server as s, sys; print(s.SlotServer._perform.__module__)"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=mutant_env(None), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "transport.server", proc.stderr


def test_stale_patch_site_refuses_to_start() -> None:
    """A mutant whose replacement no longer matches the real signature must not run (the old
    finalise_on_send bug: it turned every server action into a TypeError)."""
    mutants = _mutants_module()

    class Site:
        def f(self, a: int, b: int) -> int:
            return a + b

    def f(self: Site, a: int) -> int:
        return a

    with pytest.raises(mutants.MutantSiteError, match=r"Site.f\['self', 'a', 'b'\] != mutant\['self', 'a'\]"):
        mutants.patch(Site, "f", f)
    assert Site().f(1, 2) == 3


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
