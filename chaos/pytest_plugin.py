"""pytest plugin: collect chaos scenarios as test items, judged by the same runner and checker.

Installed through the `pytest11` entry point, so `pytest scenarios/` (or `pytest -n auto scenarios/`
with pytest-xdist) runs each YAML scenario as one test. A YAML file is collected when it sits in a
directory named `scenarios`, or anywhere with `--chaos-all-yaml`. Options: `--chaos-seed N` overrides
every seed, `--chaos-out DIR` keeps the run directories (default: pytest's tmp dir).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chaos.report.results import reproduce_command


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("chaos", "chaos scenarios")
    group.addoption("--chaos-seed", type=int, default=None, help="override every scenario's seed")
    group.addoption("--chaos-out", default=None, help="directory for the scenarios' run directories")
    group.addoption("--chaos-all-yaml", action="store_true", help="collect every *.yaml as a scenario")
    group.addoption("--chaos-toxiproxy", default=None, help="use this Toxiproxy server for network faults")


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Collector | None:
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    if file_path.parent.name != "scenarios" and not parent.config.getoption("chaos_all_yaml"):
        return None
    return ScenarioFile.from_parent(parent, path=file_path)


class ScenarioFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        from chaos.scenario import ScenarioError, load_scenario

        try:
            scenario = load_scenario(self.path)
        except ScenarioError as exc:
            raise self.CollectError(str(exc)) from exc
        yield ScenarioItem.from_parent(self, name=scenario.name, scenario=scenario)


class ScenarioFailed(Exception):
    """A scenario's expectations failed, or the harness could not judge it."""


class ScenarioItem(pytest.Item):
    def __init__(self, *, scenario: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        for fault in scenario.faults:
            self.add_marker(pytest.mark.chaos_fault(fault.kind))

    def runtest(self) -> None:
        from chaos.runner.orchestrator import run_scenario

        config = self.config
        seed = config.getoption("chaos_seed")
        seed = self.scenario.seed if seed is None else seed
        out = config.getoption("chaos_out")
        base = Path(out) if out else Path(config._tmp_path_factory.mktemp("chaos"))  # type: ignore[attr-defined]
        run_dir = base / self.scenario.name
        outcome = run_scenario(
            self.scenario.with_seed(seed), run_dir, toxiproxy_url=config.getoption("chaos_toxiproxy")
        )
        self.user_properties.append(("seed", seed))
        self.user_properties.append(("run_dir", str(run_dir)))
        if outcome.status == "passed":
            return
        why = outcome.error if outcome.verdict is None else "; ".join(outcome.verdict.failures)
        raise ScenarioFailed(
            f"{outcome.status}: {why}\nrun directory: {run_dir}\n"
            f"reproduce: {reproduce_command(self.path, seed)}"
        )

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"scenario {self.name}"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "chaos_fault(kind): the scenario injects this kind of fault")
