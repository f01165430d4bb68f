"""results.json: the versioned record of one `chaos run`, the input of every other report.

Every other file (junit.xml, summary.md, report.html) and every comparison is rendered from this
model alone, so `chaos report` can regenerate them later and a baseline is just an older file.
The schema is documented field by field in docs/results-schema.md; change both together and bump
`SCHEMA_VERSION` on any change a version-1 reader would misread (models forbid unknown fields).

The runner builds `ScenarioResult`s directly (or through `ScenarioResult.judged` / `.errored`) and
wraps them in `RunResults.create(...)`, which fills in host, versions and timing.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import secrets
import shlex
import socket
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

import psutil
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from chaos.atomic import write_atomic

SCHEMA_VERSION = "1"  # what `chaos run` writes
EXPLORE_SCHEMA_VERSION = "2"  # version 1 plus the `explore` section, written by `chaos explore` only
SUPPORTED_VERSIONS = (SCHEMA_VERSION, EXPLORE_SCHEMA_VERSION)
Status = Literal["passed", "failed", "error"]
# The verdict keys the reports read; a verdict without them cannot be rendered.
VERDICT_KEYS = ("passed", "failures", "counts", "per_port", "coverage", "throughput", "latency", "anomalies")
UCXX_DISTRIBUTIONS = ("ucxx-cu12", "ucxx-cu13", "ucxx-cu11", "ucxx")


class ResultsError(ValueError):
    """A results.json that cannot be used; the message names the file and what is wrong."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Host(_Model):
    """Where the run happened: a throughput number means little without it."""

    hostname: str
    platform: str
    python: str
    cpus: int | None
    memory_gb: float | None


class Versions(_Model):
    """Package versions under test (None = not installed)."""

    slotwire: str | None
    ucxx: str | None
    numpy: str | None
    python: str


class ScenarioSource(Protocol):
    """What `ScenarioResult.judged/errored` need of a `chaos.scenario.Scenario`."""

    name: str
    seed: int
    protocol: str

    def to_dict(self) -> dict[str, Any]: ...


class VerdictSource(Protocol):
    """What `ScenarioResult.judged` needs of a `chaos.checker.Verdict`."""

    passed: bool

    def to_dict(self) -> dict[str, Any]: ...


class ScenarioResult(_Model):
    """One scenario's outcome. `verdict` is `Verdict.to_dict()`; None only when status is error."""

    name: str
    file: str
    status: Status
    seed: int
    protocol: str
    config: dict[str, Any]
    verdict: dict[str, Any] | None
    error: str | None = None
    reproduce: str
    started: AwareDatetime
    duration_s: float = Field(ge=0)
    run_dir: str

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioResult:
        if self.status == "error":
            if not self.error:
                raise ValueError("status is error but `error` is empty: say what went wrong")
        elif self.verdict is None:
            raise ValueError(f"status is {self.status} but `verdict` is null (only an error has no verdict)")
        if self.verdict is not None:
            missing = [k for k in VERDICT_KEYS if k not in self.verdict]
            if missing:
                raise ValueError(f"verdict lacks {', '.join(missing)} (expected Verdict.to_dict())")
            if self.status != "error" and bool(self.verdict["passed"]) != (self.status == "passed"):
                raise ValueError(f"status is {self.status} but verdict.passed is {self.verdict['passed']}")
        if Path(self.run_dir).is_absolute():
            raise ValueError(f"run_dir must be relative to the run directory, got {self.run_dir!r}")
        return self

    @classmethod
    def judged(
        cls,
        scenario: ScenarioSource,
        verdict: VerdictSource,
        *,
        file: str | Path,
        started: datetime,
        duration_s: float,
        run_dir: str | Path,
        reproduce: str | None = None,
    ) -> ScenarioResult:
        """A scenario the checker judged: status follows `verdict.passed`."""
        status: Status = "passed" if verdict.passed else "failed"
        return cls._of(
            scenario, status, verdict.to_dict(), None, file, started, duration_s, run_dir, reproduce
        )

    @classmethod
    def errored(
        cls,
        scenario: ScenarioSource,
        error: str,
        *,
        file: str | Path,
        started: datetime,
        duration_s: float,
        run_dir: str | Path,
        reproduce: str | None = None,
    ) -> ScenarioResult:
        """A scenario the harness could not judge (exit code 3): no verdict, `error` says why."""
        return cls._of(scenario, "error", None, error, file, started, duration_s, run_dir, reproduce)

    @classmethod
    def _of(
        cls,
        scenario: ScenarioSource,
        status: Status,
        verdict: dict[str, Any] | None,
        error: str | None,
        file: str | Path,
        started: datetime,
        duration_s: float,
        run_dir: str | Path,
        reproduce: str | None,
    ) -> ScenarioResult:
        return cls(
            name=scenario.name,
            file=str(file),
            status=status,
            seed=scenario.seed,
            protocol=scenario.protocol,
            config=scenario.to_dict(),
            verdict=verdict,
            error=error,
            reproduce=reproduce or reproduce_command(file, scenario.seed),
            started=started,
            duration_s=duration_s,
            run_dir=str(run_dir),
        )


class RunResults(_Model):
    """One `chaos run`: what ran, where, with which versions, and each scenario's result."""

    schema_version: Literal["1", "2"] = SCHEMA_VERSION
    run_id: str = Field(min_length=1)
    started: AwareDatetime
    finished: AwareDatetime
    duration_s: float = Field(ge=0)
    command: list[str]
    host: Host
    versions: Versions
    scenarios: list[ScenarioResult]
    # `chaos explore` only, schema version 2 (docs/results-schema.md): seed, budget, the finding, the
    # shrink trail and the minimal scenario. Left out when None: a `chaos run` file is still version 1.
    explore: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _explore_is_version_2(self) -> RunResults:
        if (self.explore is not None) != (self.schema_version == EXPLORE_SCHEMA_VERSION):
            raise ValueError(f"schema_version {EXPLORE_SCHEMA_VERSION} is exactly the files with `explore`")
        return self

    @model_serializer(mode="wrap")
    def _without_empty_explore(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A run without `explore` serialises exactly as version 1 did (no `explore: null`)."""
        data: dict[str, Any] = handler(self)
        if self.explore is None:
            data.pop("explore", None)
        return data

    def with_explore(self, explore: dict[str, Any]) -> RunResults:
        """This run as `chaos explore` records it: schema version 2 with its `explore` section."""
        return self.model_validate(
            {**self.model_dump(), "schema_version": EXPLORE_SCHEMA_VERSION, "explore": explore}
        )

    @model_validator(mode="after")
    def _unique_names(self) -> RunResults:
        names = [s.name for s in self.scenarios]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"scenario names must be unique (baselines match by name): {dupes}")
        return self

    @classmethod
    def create(
        cls,
        scenarios: Sequence[ScenarioResult],
        *,
        started: datetime,
        finished: datetime | None = None,
        run_id: str | None = None,
        command: Sequence[str] | None = None,
    ) -> RunResults:
        """Wrap a run's results, collecting host and versions; `command` defaults to this process's argv."""
        finished = finished or datetime.now(UTC)
        return cls(
            run_id=run_id or new_run_id(started),
            started=started,
            finished=finished,
            duration_s=max((finished - started).total_seconds(), 0.0),
            command=list(command) if command is not None else ["chaos", *sys.argv[1:]],
            host=collect_host(),
            versions=collect_versions(),
            scenarios=list(scenarios),
        )

    def scenario(self, name: str) -> ScenarioResult | None:
        return next((s for s in self.scenarios if s.name == name), None)

    def status_counts(self) -> dict[str, int]:
        """{passed, failed, error} -> how many scenarios."""
        counts = {"passed": 0, "failed": 0, "error": 0}
        for s in self.scenarios:
            counts[s.status] += 1
        return counts

    def save(self, path: str | Path) -> Path:
        """Write as indented JSON (atomically: a reader never sees half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, self.model_dump_json(indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RunResults:
        """Read a results.json; `ResultsError` names the file and every problem in it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ResultsError(f"{path}: no such file (expected a chaos run's results.json)") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ResultsError(f"{path}: cannot read: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultsError(
                f"{path}: not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return cls.from_data(data, source=str(path))

    @classmethod
    def from_data(cls, data: Any, source: str = "<data>") -> RunResults:
        """Validate parsed JSON; checks `schema_version` first so an old file gets one clear message."""
        if not isinstance(data, Mapping):
            raise ResultsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version is None:
            raise ResultsError(f"{source}: no schema_version: not a chaos results.json")
        if version not in SUPPORTED_VERSIONS:
            readable = " or ".join(repr(v) for v in SUPPORTED_VERSIONS)
            raise ResultsError(
                f"{source}: schema_version {version!r} is not supported (this chaos reads "
                f"{readable}); regenerate it with the chaos version that wrote it"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ResultsError(f"{source}: invalid results:\n{_describe(exc, data)}") from None


def _describe(exc: ValidationError, data: Mapping[str, Any]) -> str:
    """One line per problem, `scenarios[1] (name).verdict: ...`, naming the scenario when known."""
    lines = []
    for err in exc.errors():
        parts: list[str] = []
        loc = err["loc"]
        for i, part in enumerate(loc):
            if isinstance(part, int):
                label = f"[{part}]"
                if loc[:i] == ("scenarios",):
                    name = _scenario_name(data, part)
                    label += f" ({name})" if name else ""
                parts.append(label)
            else:
                parts.append(("." if parts else "") + str(part))
        where = "".join(parts) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def _scenario_name(data: Mapping[str, Any], index: int) -> str | None:
    scenarios = data.get("scenarios")
    if isinstance(scenarios, list) and index < len(scenarios) and isinstance(scenarios[index], Mapping):
        name = scenarios[index].get("name")
        return name if isinstance(name, str) else None
    return None


# -- helpers for the runner ------------------------------------------------------------------------


def reproduce_command(file: str | Path, seed: int, extra: Sequence[str] = ()) -> str:
    """The shell command that re-runs one scenario with its seed (quoted for a POSIX shell)."""
    return shlex.join(["chaos", "run", str(file), "--seed", str(seed), *extra])


def new_run_id(started: datetime | None = None) -> str:
    """`20250101T120000Z-1a2b`: sorts by time, unique enough for runs started in the same second."""
    started = (started or datetime.now(UTC)).astimezone(UTC)
    return f"{started:%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"


def collect_host() -> Host:
    """This machine, as recorded with a run."""
    try:
        memory_gb: float | None = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # an exotic platform without it: record the run anyway
        memory_gb = None
    return Host(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python=f"{platform.python_implementation()} {platform.python_version()}",
        cpus=os.cpu_count(),
        memory_gb=memory_gb,
    )


def _version(*distributions: str) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def collect_versions() -> Versions:
    """Installed versions, from package metadata (importing ucxx would initialise UCX)."""
    return Versions(
        slotwire=_version("slotwire"),
        ucxx=_version(*UCXX_DISTRIBUTIONS),
        numpy=_version("numpy"),
        python=platform.python_version(),
    )
