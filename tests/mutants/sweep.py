"""Issue 12's acceptance sweep: `chaos explore` against each transport mutant, no hand-written scenario.

For each mutant: `chaos explore --budget B --seed S` with the mutant switched on in every process;
if it found something, the minimal YAML is replayed once with the mutant (it must fail again with a
kind of the finding) and once without it (the control: it must pass, or the finding was not the
mutant's). One row per mutant goes to a JSON file as soon as it is known, so a sweep cut short keeps
what it measured. `problems(rows)` is the verdict (pure): at least `FOUND_SHARE` found, every found
one shrunk to at most `MAX_FAULTS` faults, replayed failing and its control passing.

Which mutants are swept: the transport's (ring, protocol, server, client, packer). Not swept, and why:
the two checker mutants make the checker lax, which a correct transport never shows (their catch is a
unit test); `reset_fault_inert` breaks the harness's own fault, which only the coverage rule
(`ineffective`) can see, and explore by design never counts coverage (a random fault need not change
anything).

    python -m tests.mutants.sweep --budget 5m --shrink-budget 2m --seed 1 --parallel 2 --out DIR \\
        [--json F] [MUTANT...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MUTANTS_DIR = ROOT / "tests" / "mutants"
TRANSPORT_MUTANTS = (
    "no_generation_check",
    "orphan_finalise_no_token",
    "ready_count_writes",
    "history_ignores_generation",
    "generation_reused",
    "checksum_skipped",
    "resolve_says_not_committed",
    "resolve_says_committed",
    "refused_commit_taken_as_success",
    "finalise_on_send",
    "release_missing_on_error",
    "truncation_not_quarantined",
    "quarantine_never_expires",
    "resolve_not_asked",
    "not_ready_retried",
    "stale_is_exhausted",
)
FOUND_SHARE = 0.8
MAX_FAULTS = 3
REPLAY_TIMEOUT_S = 400.0  # a scenario's deadline (<= 70 s) plus start-up and teardown on a loaded box


@dataclass
class Row:
    """One mutant's sweep result. `found` = explore's exit 1 with a finding; `replay_failed` /
    `control_passed` are None when nothing was found (nothing to replay)."""

    mutant: str
    found: bool
    runs: int
    vacuous: int
    seconds_to_find: float | None
    kinds: list[str]
    cls: str | None
    faults_before: int | None
    faults_after: int | None
    shrink_steps: int
    flaky: bool | None
    minimal: str | None
    replay_failed: bool | None
    control_passed: bool | None
    mutant_ran: bool
    seconds: float
    exit_code: int
    commit: str = ""  # the tree explored (the generator changes what a seed draws)


def mutant_env(mutant: str | None, ran_dir: Path | None = None, broken: bool = False) -> dict[str, str]:
    """The environment of a run with `mutant` switched on in every process (tests/mutants/sitecustomize);
    `broken`: the mutant raises where it should mutate (the self-check of tests/test_mutants.py)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(MUTANTS_DIR), str(ROOT), env.get("PYTHONPATH")) if p)
    for name in ("SLOTWIRE_MUTANT", "SLOTWIRE_MUTANT_RAN", "SLOTWIRE_MUTANT_BREAK"):
        env.pop(name, None)
    if mutant is not None:
        env["SLOTWIRE_MUTANT"] = mutant
    if ran_dir is not None:
        env["SLOTWIRE_MUTANT_RAN"] = str(ran_dir)
    if broken:
        env["SLOTWIRE_MUTANT_BREAK"] = "raise"
    return env


def run_chaos(args: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`python -m chaos.cli ARGS` from the project root, output captured, bounded by `timeout`."""
    cmd = [sys.executable, "-m", "chaos.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def failure_kinds_of(results: Path, safety_only: bool = False) -> set[str]:
    """The finding kinds of the one scenario in a `chaos run` results.json (as explore counts them)."""
    from chaos.explore.classify import finding_kinds

    (scenario,) = json.loads(results.read_text())["scenarios"]
    failures = (scenario.get("verdict") or {}).get("failures") or []
    return set(finding_kinds(failures, safety_only=safety_only))


def sweep_one(mutant: str, seed: int, budget: str, shrink_budget: str, out: Path) -> Row:
    """Explore with `mutant` on; replay the minimal scenario with and without it."""
    started, commit = time.monotonic(), _head()  # the tree as it is when this mutant starts
    ran = out / "ran"
    env = mutant_env(mutant, ran)
    args = ["explore", "--budget", budget, "--shrink-budget", shrink_budget, "--seed", str(seed)]
    limit = _seconds(budget) + _seconds(shrink_budget) + 2 * REPLAY_TIMEOUT_S
    proc = run_chaos([*args, "--out", str(out / "explore")], env, limit)
    (out / "explore.log").write_text(proc.stdout + proc.stderr)
    explore = json.loads((out / "explore" / "results.json").read_text())["explore"]
    finding, shrink, minimal = explore["finding"], explore["shrink"], explore["minimal"]
    row = Row(
        mutant=mutant,
        found=proc.returncode == 1 and finding is not None,
        runs=explore["runs"],
        vacuous=explore["vacuous"],
        seconds_to_find=finding["seconds_to_find"] if finding else None,
        kinds=finding["kinds"] if finding else [],
        cls=finding["class"] if finding else None,
        faults_before=len(_faults(finding["summary"])) if finding else None,
        faults_after=minimal["faults"] if minimal else None,
        shrink_steps=len(shrink["trail"]) if shrink else 0,
        flaky=shrink["flaky"] if shrink else None,
        minimal=minimal["summary"] if minimal and "summary" in minimal else (shrink or {}).get("summary"),
        replay_failed=None,
        control_passed=None,
        mutant_ran=any(ran.glob(f"{mutant}.*")),
        seconds=0.0,
        exit_code=proc.returncode,
    )
    if minimal:
        path = out / "explore" / minimal["file"]
        replay = run_chaos(["run", str(path), "--out", str(out / "replay")], env, REPLAY_TIMEOUT_S)
        again = failure_kinds_of(out / "replay" / "results.json") if replay.returncode == 1 else set()
        row.replay_failed = bool(again & set(row.kinds))
        control = run_chaos(
            ["run", str(path), "--out", str(out / "control")], mutant_env(None), REPLAY_TIMEOUT_S
        )
        row.control_passed = control.returncode == 0
    row.seconds = round(time.monotonic() - started, 1)
    row.commit = commit
    return row


def _head() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip()


def _faults(summary: str) -> list[str]:
    """The fault labels of a `chaos.explore.shrink.summary` line (`N fault(s) [a; b] ...`)."""
    inside = summary.split("[", 1)[1].rsplit("]", 1)[0] if "[" in summary else ""
    return [part for part in inside.split("; ") if part]


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def problems(rows: list[Row], expected: tuple[str, ...] = TRANSPORT_MUTANTS) -> list[str]:
    """What keeps the sweep from meeting issue 12's acceptance (empty = met). Pure."""
    out = [f"{m}: not swept" for m in expected if m not in {r.mutant for r in rows}]
    found = [r for r in rows if r.found]
    if len(found) < FOUND_SHARE * len(expected):
        out.append(f"found {len(found)} of {len(expected)} mutants, want >= {FOUND_SHARE:.0%}")
    for r in found:
        if not r.mutant_ran:
            out.append(f"{r.mutant}: found without the mutated branch running")
        if r.faults_after is None or r.faults_after > MAX_FAULTS:
            out.append(f"{r.mutant}: shrunk to {r.faults_after} faults, want <= {MAX_FAULTS}")
        if r.replay_failed is not True:
            out.append(f"{r.mutant}: the minimal scenario did not fail when replayed with the mutant")
        if r.control_passed is not True:
            out.append(f"{r.mutant}: the minimal scenario failed without the mutant (not its finding)")
    return out


def table(rows: list[Row]) -> str:
    """The Markdown table for the closing note and docs."""
    head = "| mutant | found | runs (vacuous) | s to find | kinds | faults -> shrunk | replay / control | s |"
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shrunk = f"{r.faults_before} -> {r.faults_after}" if r.found else "-"
        replay = f"{_yes(r.replay_failed)} / {_yes(r.control_passed)}" if r.found else "-"
        find = f"{r.seconds_to_find:g}" if r.seconds_to_find is not None else "-"
        kinds = ", ".join(r.kinds) or "-"
        cells = [r.mutant, _yes(r.found), f"{r.runs} ({r.vacuous})", find, kinds, shrunk, replay]
        lines.append("| " + " | ".join([*cells, f"{r.seconds:g}"]) + " |")
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "no")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mutants", nargs="*", default=list(TRANSPORT_MUTANTS))
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--shrink-budget", default="2m")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1, help="Mutants explored at once.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--json", type=Path, help="Rows as JSON, rewritten after each mutant; rows already in it are kept."
    )
    args = parser.parse_args(argv)
    unknown = sorted(set(args.mutants) - set(TRANSPORT_MUTANTS))
    if unknown:
        parser.error(f"not a transport mutant: {', '.join(unknown)}")
    rows = _earlier_rows(args.json, args.seed) if args.json else []
    todo = [m for m in args.mutants if m not in {r.mutant for r in rows}]
    lock = threading.Lock()

    def one(mutant: str) -> None:
        out = args.out / mutant
        out.mkdir(parents=True, exist_ok=False)  # a directory left by another sweep: refuse, never mix
        row = sweep_one(mutant, args.seed, args.budget, args.shrink_budget, out)
        with lock:
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)
            if args.json:
                args.json.write_text(json.dumps(_document(args, rows), indent=1) + "\n")

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        for done in [pool.submit(one, m) for m in todo]:
            done.result()
    rows.sort(key=lambda r: args.mutants.index(r.mutant) if r.mutant in args.mutants else len(args.mutants))
    print(table(rows))
    found = problems(rows, tuple(args.mutants))
    print("\n".join(found) or "acceptance met")
    return 1 if found else 0


def _earlier_rows(path: Path, seed: int) -> list[Row]:
    """Rows of an interrupted sweep with the same seed (so it can go on where it stopped)."""
    if not path.exists():
        return []
    doc = json.loads(path.read_text())
    if doc.get("seed") != seed:
        raise SystemExit(f"{path}: rows of seed {doc.get('seed')}, not {seed}; use another --json")
    return [Row(**r) for r in doc["rows"]]


def _document(args: argparse.Namespace, rows: list[Row]) -> dict[str, Any]:
    return {
        "seed": args.seed,
        "budget": args.budget,
        "shrink_budget": args.shrink_budget,
        "rows": [asdict(r) for r in rows],
        "problems": problems(rows, tuple(args.mutants)),
    }


if __name__ == "__main__":
    sys.exit(main())
