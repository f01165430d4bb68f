"""One `chaos explore` session: run generated scenarios until the budget is spent, shrink the first finding.

The I/O half of explore (the generator and the shrinker are pure). Every run goes through the runner
`chaos run` uses (`chaos.runner.orchestrator.run_scenario` in a spawned worker, as `chaos run -j` does)
and the same checker; each generated scenario is written to `<out>/scenarios/<name>.yaml` first, so
every run in the report has a working reproduce command.

Bounds: no run starts after the budget (exploration) or the shrink deadline (budget end + shrink
budget); each run is bounded by its scenario's own deadline (the watchdog in the orchestrator) and,
from here, by a hard kill at deadline + start-up + teardown allowance, which is reported as a harness
error for that run. Ctrl-C or SIGTERM (as KeyboardInterrupt) stops the workers, ends shrinking with
the best scenario so far and still lets the caller write the report.
"""

from __future__ import annotations

import queue
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from chaos.atomic import write_atomic
from chaos.checker import failure_kind
from chaos.explore.classify import FindingClass, finding_class, finding_kinds, reproduces
from chaos.explore.generate import Space, scenarios
from chaos.explore.shrink import Interrupted, ShrinkResult, rerun, shrink, summary
from chaos.report import ScenarioResult
from chaos.runner.cleanup import shielded
from chaos.runner.cli import SPAWN, WORKER_CLEANUP_S, Job, Servers, _job_worker, _stop_workers, _to_result
from chaos.runner.orchestrator import STARTUP_BUDGET_S
from chaos.scenario.model import Scenario

POLL_S = 0.5
VERIFY_RUNS = 2  # the shrunk result is judged this many more times: flaky unless every one fails
VERIFY_RESERVE_S = 60.0  # shrink steps stop this long before the shrink deadline, to leave room for them
MINIMAL_YAML = "minimal.yaml"
REPRODUCE_SH = "reproduce.sh"


@dataclass(frozen=True)
class Options:
    """What the command line asked for (times in seconds)."""

    seed: int
    budget_s: float
    shrink_budget_s: float
    parallel: int = 1
    reruns: int = 2
    safety_only: bool = False
    space: Space = field(default_factory=Space)
    servers: Servers = field(default_factory=Servers)


@dataclass
class Status:
    """What the progress line shows; updated as the session goes."""

    phase: str = "exploring"
    runs: int = 0
    running: int = 0
    findings: int = 0
    errors: int = 0
    vacuous: int = 0  # runs that published nothing (on an overloaded box the fault phase can pass first)
    shrink_step: str = ""
    deadline: float = 0.0

    def time_left(self) -> float:
        return max(self.deadline - time.monotonic(), 0.0)


@dataclass
class Finding:
    """The first run whose verdict explore counts (chaos.explore.classify)."""

    result: ScenarioResult
    scenario: dict[str, Any]
    cls: FindingClass
    kinds: frozenset[str]
    runs_to_find: int
    seconds_to_find: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.result.name,
            "class": self.cls,
            "kinds": sorted(self.kinds),
            "failures": list((self.result.verdict or {}).get("failures") or []),
            "runs_to_find": self.runs_to_find,
            "seconds_to_find": round(self.seconds_to_find, 1),
            "summary": summary(self.scenario),
        }


@dataclass
class Explored:
    results: list[ScenarioResult] = field(default_factory=list)
    finding: Finding | None = None
    shrunk: ShrinkResult | None = None
    minimal: Path | None = None
    reproduce: str | None = None
    interrupted: bool = False
    error: str | None = None  # the session itself failed (a harness error)


def write_scenario(data: dict[str, Any], path: Path, header: str) -> Path:
    """The scenario as YAML (validated first: a file explore writes always passes `chaos validate`)."""
    Scenario.from_dict(data, source=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return write_atomic(path, comment + yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def is_vacuous(result: ScenarioResult) -> bool:
    """The run checked nothing: explore counts these apart, they are budget spent on no evidence."""
    return any(failure_kind(f) == "vacuous" for f in (result.verdict or {}).get("failures") or [])


def valid(data: dict[str, Any]) -> bool:
    try:
        Scenario.from_dict(data)
    except Exception:
        return False
    return True


class Pool:
    """Spawned run workers (at most `parallel`), each bounded by its scenario's deadline."""

    def __init__(self, out_dir: Path, parallel: int, servers: Servers) -> None:
        self.out_dir = out_dir
        self.parallel = parallel
        self.servers = servers
        self.channel = SPAWN.Queue()
        self.running: dict[str, tuple[Job, Any, float]] = {}

    def free(self) -> int:
        return self.parallel - len(self.running)

    def submit(self, job: Job) -> None:
        name = job.scenario.name
        proc = SPAWN.Process(
            target=_job_worker, args=(job, str(self.out_dir / name), self.servers, self.channel), name=name
        )
        proc.start()
        assert job.scenario.deadline is not None
        hard = time.monotonic() + job.scenario.deadline + STARTUP_BUDGET_S + WORKER_CLEANUP_S
        self.running[name] = (job, proc, hard)

    def poll(self, timeout: float = POLL_S) -> list[ScenarioResult]:
        """Results of the runs that ended (a worker that died or overran is a harness error)."""
        done: list[ScenarioResult] = []
        try:
            name, outcome = self.channel.get(timeout=timeout)
        except queue.Empty:
            name = None
        if name is not None and name in self.running:
            job, proc, _ = self.running.pop(name)
            proc.join(WORKER_CLEANUP_S)
            done.append(_to_result(job, outcome, self.out_dir))
        for name, (job, proc, hard) in list(self.running.items()):
            overran = time.monotonic() > hard
            if overran:
                _stop_workers([proc])
            if overran or not proc.is_alive():
                self.running.pop(name)
                why = "overran its deadline" if overran else f"exited with {proc.exitcode}"
                done.append(_to_result(job, f"scenario process {why}", self.out_dir))
        return done

    def stop(self) -> None:
        with shielded():
            _stop_workers([proc for _, proc, _ in self.running.values()])
        self.running.clear()


class Session:
    """See the module docstring. `run()` returns what happened; the caller writes the report."""

    def __init__(
        self,
        opts: Options,
        out_dir: Path,
        on_status: Callable[[Status], None],
        on_result: Callable[[ScenarioResult], None] = lambda _: None,
    ) -> None:
        self.opts = opts
        self.out_dir = out_dir
        self.on_status = on_status
        self.on_result = on_result
        self.status = Status()
        self.outcome = Explored()
        self.pool = Pool(out_dir, opts.parallel, opts.servers)
        self.t0 = time.monotonic()
        self.explore_end = self.t0 + opts.budget_s
        self.shrink_end = self.explore_end + opts.shrink_budget_s

    # -- running one scenario ----------------------------------------------------------------------

    def _job(self, data: dict[str, Any], note: str) -> Job:
        path = self.out_dir / "scenarios" / f"{data['name']}.yaml"
        write_scenario(data, path, f"{note}\nchaos explore --seed {self.opts.seed}")
        scenario = Scenario.from_dict(data, source=str(path))
        return Job(scenario, str(path), scenario.seed)

    def _record(self, result: ScenarioResult) -> None:
        self.on_result(result)
        self.outcome.results.append(result)
        self.status.runs += 1
        self.status.errors += result.status == "error"
        self.status.vacuous += is_vacuous(result)

    def _tick(self) -> None:
        self.status.running = len(self.pool.running)
        self.on_status(self.status)

    # -- exploring ------------------------------------------------------------------------------

    def run(self) -> Explored:
        try:
            self._explore(scenarios(self.opts.seed, self.opts.space))
            if self.outcome.finding is not None:
                self._shrink(self.outcome.finding)
        except KeyboardInterrupt:
            self.outcome.interrupted = True
        except Exception as exc:  # a bug of the harness: still write what ran, exit 3
            self.outcome.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:
            self.pool.stop()
        return self.outcome

    def _explore(self, generated: Iterator[dict[str, Any]]) -> None:
        self.status.deadline = self.explore_end
        pending: dict[str, dict[str, Any]] = {}
        while self.outcome.finding is None:
            while self.pool.free() > 0 and time.monotonic() < self.explore_end:
                data = next(generated)
                pending[data["name"]] = data
                self.pool.submit(self._job(data, "generated by chaos explore"))
            if not self.pool.running:
                return
            self._tick()
            for result in self.pool.poll():
                self._record(result)
                self._judge(result, pending.pop(result.name))
            self._tick()

    def _judge(self, result: ScenarioResult, data: dict[str, Any]) -> None:
        failures = (result.verdict or {}).get("failures") or []
        cls = finding_class(failures, self.opts.safety_only) if result.status == "failed" else None
        if cls is None or self.outcome.finding is not None:
            return
        self.status.findings += 1
        kinds = finding_kinds(failures, self.opts.safety_only)
        elapsed = time.monotonic() - self.t0
        self.outcome.finding = Finding(result, data, cls, kinds, self.status.runs, elapsed)

    # -- shrinking -----------------------------------------------------------------------------------

    def _shrink(self, finding: Finding) -> None:
        self.pool.stop()  # runs still exploring would only slow the shrink down
        self.status.phase = "shrinking"
        self.status.deadline = self.shrink_end
        count = iter(range(1, 10**6))

        def run_once(candidate: dict[str, Any]) -> bool:
            data = {**candidate, "name": f"{finding.result.name}-shrink-{next(count)}"}
            self.status.shrink_step = summary(candidate)
            try:
                result = self._run_alone(self._job(data, f"shrink candidate of {finding.result.name}"))
            except KeyboardInterrupt:
                self.outcome.interrupted = True
                raise Interrupted from None
            failures = (result.verdict or {}).get("failures") or []
            return result.status == "failed" and reproduces(finding.kinds, failures, self.opts.safety_only)

        shrunk = shrink(
            finding.scenario,
            rerun(run_once, self.opts.reruns),
            valid=valid,
            stop=lambda: time.monotonic() >= self.shrink_end - VERIFY_RESERVE_S,
            verify=VERIFY_RUNS,
        )
        self.outcome.shrunk = shrunk
        self._write_minimal(finding, shrunk)

    def _run_alone(self, job: Job) -> ScenarioResult:
        self.pool.submit(job)
        while True:
            self._tick()
            for result in self.pool.poll():
                self._record(result)
                return result

    def _write_minimal(self, finding: Finding, shrunk: ShrinkResult) -> None:
        data = {**shrunk.scenario, "name": f"{finding.result.name}-min"}
        data["description"] = f"shrunk by chaos explore --seed {self.opts.seed} from {finding.result.name}"
        path = self.out_dir / MINIMAL_YAML
        kinds = ", ".join(sorted(finding.kinds))
        header = (
            f"chaos explore --seed {self.opts.seed}: {finding.cls} finding ({kinds})\n"
            f"{'flaky' if shrunk.flaky else 'reproducible'}; {summary(shrunk.scenario)}"
        )
        write_scenario(data, path, header)
        self.outcome.minimal = path
        self.outcome.reproduce = f"chaos run {path}"
        write_atomic(self.out_dir / REPRODUCE_SH, f"#!/bin/sh\n{self.outcome.reproduce}\n")


def explore_section(opts: Options, outcome: Explored, started: datetime) -> dict[str, Any]:
    """The `explore` entry of results.json (docs/results-schema.md)."""
    shrunk = outcome.shrunk
    return {
        "seed": opts.seed,
        "budget_s": opts.budget_s,
        "shrink_budget_s": opts.shrink_budget_s,
        "protocol": opts.space.protocol,
        "hosts": opts.space.hosts,
        "safety_only": opts.safety_only,
        "reruns": opts.reruns,
        "jobs": opts.parallel,
        "runs": len(outcome.results),
        "errors": sum(1 for r in outcome.results if r.status == "error"),
        "vacuous": sum(1 for r in outcome.results if is_vacuous(r)),
        "interrupted": outcome.interrupted,
        "error": outcome.error,
        "seconds": round((datetime.now(UTC) - started).total_seconds(), 1),
        "finding": outcome.finding.to_dict() if outcome.finding else None,
        "shrink": shrunk.to_dict() if shrunk else None,
        "minimal": None
        if outcome.minimal is None
        else {
            "file": outcome.minimal.name,
            "reproduce": outcome.reproduce,
            "faults": len((shrunk.scenario if shrunk else {}).get("faults") or []),
            "yaml": outcome.minimal.read_text(encoding="utf-8"),
        },
    }
