"""pytest plugin: collect chaos scenarios as test items, judged by the same runner and checker.

Installed through the `pytest11` entry point, so `pytest scenarios/` (or `pytest -n auto scenarios/`
with pytest-xdist) runs each YAML scenario as one test. A YAML file is collected when it sits in a
directory named `scenarios`, or anywhere with `--chaos-all-yaml`. Options: `--chaos-seed N` overrides
every seed, `--chaos-out DIR` keeps the run directories (default: pytest's tmp dir).

Fixture `chaos_world` (for a trainer's own tests): a `chaos.testing.ChaosWorld` on the scenario named
by the test's `@pytest.mark.chaos_scenario("path.yaml")` (relative paths: from the test's directory,
then the rootdir), or `--chaos-world-scenario`. The world is judged when the test ends; a failed
verdict fails the test with the scenario's failures and the history's path.

`--chaos-explore 2m` adds one test item, `chaos-explore`, that runs `chaos explore` for that budget
(`--chaos-seed` as its seed, else a random one; `--chaos-explore-protocol`, `--chaos-explore-safety-only`)
and fails with the finding's failures, the shrunk scenario and its reproduce command, so a team can put
a bounded explore in its own CI. The item is the same on every xdist worker, so it runs once.
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
        "--chaos-explore",
        default=None,
        metavar="BUDGET",
        help="add a test item that runs `chaos explore --budget BUDGET` (e.g. 2m)",
    )
    group.addoption("--chaos-explore-protocol", default="commit", choices=("commit", "single-chunk"))
    group.addoption("--chaos-explore-safety-only", action="store_true", help="ignore liveness failures")
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


EXPLORE_SHRINK_FRACTION = 1.0  # shrinking may take as long again as the exploring budget


class ExploreItem(pytest.Item):
    """`chaos explore` for `--chaos-explore BUDGET`: passes when nothing is found (exit 0)."""

    def runtest(self) -> None:
        import secrets

        from chaos.explore.cli import run_explore
        from chaos.explore.generate import Space
        from chaos.explore.session import Options
        from chaos.runner.cli import EXIT_OK, Servers
        from chaos.scenario.units import parse_duration

        config = self.config
        budget = parse_duration(config.getoption("chaos_explore"))
        seed = config.getoption("chaos_seed")
        opts = Options(
            seed=secrets.randbelow(2**31) if seed is None else seed,
            budget_s=budget,
            shrink_budget_s=budget * EXPLORE_SHRINK_FRACTION,
            safety_only=config.getoption("chaos_explore_safety_only"),
            space=Space(protocol=config.getoption("chaos_explore_protocol")),
            servers=Servers(config.getoption("chaos_toxiproxy"), config.getoption("chaos_redis")),
        )
        out = config.getoption("chaos_out")
        base = Path(out) if out else Path(config._tmp_path_factory.mktemp("chaos"))  # type: ignore[attr-defined]
        out_dir = base / "explore"
        code = run_explore(opts, str(out_dir))
        self.user_properties.append(("seed", opts.seed))
        self.user_properties.append(("run_dir", str(out_dir)))
        if code != EXIT_OK:
            raise ScenarioFailed(_explore_failure(out_dir, code, opts.seed))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, ScenarioFailed):
            return str(excinfo.value)
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return Path("chaos-explore"), 0, f"chaos explore --budget {self.config.getoption('chaos_explore')}"


def _explore_failure(out_dir: Path, code: int, seed: int) -> str:
    """What the explore found (from its results.json): the failures, the minimal file, how to rerun."""
    import json

    lines = [f"chaos explore --seed {seed} exited {code}; run directory: {out_dir}"]
    try:
        explore = json.loads((out_dir / "results.json").read_text())["explore"]
    except (OSError, ValueError, KeyError) as exc:
        return "\n".join([*lines, f"no explore results: {exc}"])
    finding, minimal = explore.get("finding"), explore.get("minimal")
    if explore.get("error"):
        lines.append(f"harness error: {explore['error']}")
    if finding:
        lines.append(f"{finding['class']} finding in {finding['scenario']}:")
        lines += [f"  {f}" for f in finding["failures"]]
    if minimal:
        lines += [f"minimal scenario ({minimal['faults']} faults): {minimal['file']}", minimal["yaml"]]
        lines.append(f"reproduce: {minimal['reproduce']}")
    return "\n".join(lines)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[Any]) -> None:
    budget = config.getoption("chaos_explore")
    if not budget:
        return
    from chaos.scenario.units import parse_duration

    try:
        if parse_duration(budget) <= 0:
            raise ValueError("the budget must be above 0")
    except ValueError as exc:
        raise pytest.UsageError(f"--chaos-explore {budget!r}: {exc}") from None
    items.append(ExploreItem.from_parent(session, name="chaos-explore"))


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
