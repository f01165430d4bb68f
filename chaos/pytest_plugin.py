"""pytest plugin: collect chaos scenarios as test items, judged by the same runner and checker.

Installed through the `pytest11` entry point, so `pytest scenarios/` (or `pytest -n auto scenarios/`
with pytest-xdist) runs each YAML scenario as one test. A YAML file is collected when it sits in a
directory named `scenarios`, or anywhere with `--chaos-all-yaml`. Options: `--chaos-seed N` overrides
every seed, `--chaos-out DIR` keeps the run directories (default: pytest's tmp dir).

Fixture `chaos_world` (for a trainer's own tests): a `chaos.testing.ChaosWorld` on the scenario named
by the test's `@pytest.mark.chaos_scenario("path.yaml")` (relative paths: from the test's directory,
then the rootdir), or `--chaos-world-scenario`. The world is judged when the test ends; a failed
verdict fails the test with the scenario's failures and the history's path.
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
    group.addoption(
        "--chaos-redis", default=None, help="use this Redis server for `channel: redis` scenarios"
    )
    group.addoption(
        "--chaos-world-scenario",
        default=None,
        help="scenario of the chaos_world fixture (default: the marker)",
    )


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
            self.scenario.with_seed(seed),
            run_dir,
            toxiproxy_url=config.getoption("chaos_toxiproxy"),
            redis_url=config.getoption("chaos_redis"),
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
    config.addinivalue_line("markers", "chaos_scenario(path): the scenario of the chaos_world fixture")


def _world_scenario(request: pytest.FixtureRequest) -> Path:
    marker = request.node.get_closest_marker("chaos_scenario")
    name = marker.args[0] if marker and marker.args else request.config.getoption("chaos_world_scenario")
    if not name:
        raise pytest.UsageError(
            f"{request.node.nodeid}: chaos_world needs @pytest.mark.chaos_scenario(path) "
            "or --chaos-world-scenario"
        )
    path = Path(name)
    if path.is_absolute():
        return path
    for base in (request.path.parent, request.config.rootpath, Path.cwd()):
        if (base / path).exists():
            return base / path
    raise pytest.UsageError(f"{request.node.nodeid}: chaos scenario {name} not found")


@pytest.fixture
def chaos_world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """A `ChaosWorld` (see `chaos.testing`), judged when the test body returns."""
    from chaos.testing import ChaosWorld

    seed = request.config.getoption("chaos_seed")
    world = ChaosWorld(_world_scenario(request), run_dir=tmp_path / "chaos-world", seed=seed, strict=False)
    with world:
        yield world


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    """Judge a test's `chaos_world` as part of the test, so a failed verdict is a test failure (not
    an error in teardown). A test body that raised keeps its own failure."""
    result = yield
    world = getattr(item, "funcargs", {}).get("chaos_world")
    if world is not None and not world.close().passed:
        pytest.fail(world.explain(), pytrace=False)
    return result
