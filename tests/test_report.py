"""Run reports: results.json schema, junit.xml, summary.md, report.html (in headless Chromium), compare
and history, and the `chaos report` command. Verdicts come from `chaos.checker.check` on synthetic
histories and configs from `Scenario.from_dict`, so every shape rendered here is a real one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from PIL import Image
from pydantic import ValidationError

from chaos.checker import CheckSpec, Expectations, FaultRef, check
from chaos.cli import cli
from chaos.report import (
    RESULTS_JSON,
    ResultsError,
    RunResults,
    ScenarioResult,
    Thresholds,
    collect_host,
    collect_versions,
    compare,
    history,
    junit,
    reproduce_command,
    summary,
    write_reports,
)
from chaos.report import html as html_report
from chaos.scenario import Scenario

T0 = 1_700_000_000.0
STARTED = datetime(2025, 3, 1, 2, 0, tzinfo=UTC)

# -- building realistic results --------------------------------------------------------------------

PASSING = {
    "name": "transport-reset-payload",
    "description": "20% resets mid-payload on ports 0-1, a reset_peer burst on port 3, one server kill",
    "seed": 7,
    "duration": "12s",
    "server": {"ports": 4},
    "producer": {"rate": "100/s"},
    "faults": [
        {"kind": "reset", "ports": [0, 1], "probability": 0.2, "phase": "payload"},
        {
            "kind": "toxic",
            "ports": [3],
            "toxic": {"type": "reset_peer", "attributes": {"timeout": 50}},
            "window": {"start": "5s", "end": "8s"},
        },
        {"kind": "kill", "target": "server", "at": "9s"},
    ],
    "expect": {"min_throughput": "40/s", "max_recovery": "5s"},
}
FAILING = {
    "name": "legacy-drop-commit",
    "description": "the single-chunk protocol under lost commits and duplicated descriptors",
    "seed": 3,
    "duration": "8s",
    "protocol": "single-chunk",
    "server": {"ports": 4},
    "faults": [
        {"kind": "stall", "ports": [2], "probability": 0.05, "delay": "1s"},
        {"kind": "drop_commit", "ports": [0, 1, 2, 3], "probability": 0.1},
        {"kind": "duplicate_descriptor", "window": {"start": "2s", "end": "6s"}},
    ],
    "expect": {"faults_fired": "all"},
}
ERRORED = {"name": "process-restart-server", "seed": 11, "duration": "10s"}


def spec_for(config: dict[str, Any]) -> CheckSpec:
    """What the runner does: a CheckSpec from the normalised scenario."""
    faults = []
    for i, f in enumerate(config["faults"]):
        window = f.get("window")
        faults.append(
            FaultRef(
                index=i,
                kind=f["kind"],
                ports=tuple(f["ports"]) if f.get("ports") is not None else None,
                target=f.get("target"),
                window=(window["start"], window["end"]) if window else None,
                at_s=f.get("at"),
            )
        )
    ex = config["expect"]
    return CheckSpec(
        duration_s=config["duration"],
        ports=config["server"]["ports"],
        faults=tuple(faults),
        expect=Expectations(
            lost=ex["lost"],
            duplicated=ex["duplicated"],
            corrupted=ex["corrupted"],
            in_doubt=ex["in_doubt"],
            faults_fired=ex["faults_fired"],
            faults_effective="none",  # synthetic histories: the effect rules have tests of their own
            min_throughput=ex["min_throughput"],
            max_recovery_s=ex["max_recovery"],
        ),
        protocol=config["protocol"],
    )


class SyntheticHistory:
    """Synthetic merged event history; `t` is seconds after the fault phase began."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.events: list[dict[str, Any]] = [{"t": T0, "proc": "runner", "type": "phase", "name": "faults"}]

    def add(self, t: float, proc: str, type: str, **fields: Any) -> None:
        self.events.append({"t": T0 + t, "proc": proc, "type": type, **fields})

    def publish(self, t: float, key: str) -> None:
        slot, gen = (int(x) for x in key.split(":"))
        self.add(t, "producer", "published", key=key, slot=slot, generation=gen, nbytes=4096, checksum=99)

    def deliver(self, t: float, key: str, port: int, latency: float, proc: str = "consumer-0") -> None:
        slot, gen = (int(x) for x in key.split(":"))
        self.add(t, "server", "committed", key=key, port=port, token=slot + 1)
        fields = {"checksum_ok": True, "content_ok": True, "latency_s": latency, "attempts": 1}
        self.add(
            t + 0.0005,
            proc,
            "delivered",
            key=key,
            slot=slot,
            generation=gen,
            port=port,
            nbytes=4096,
            token=slot + 1,
            **fields,
        )

    def fault(
        self, t: float, index: int, kind: str, port: int | None = None, target: str | None = None
    ) -> None:
        self.add(t, "chaos", "fault", fault=index, kind=kind, port=port, phase=None, target=target)

    def retry(self, t: float, key: str, port: int) -> None:
        self.add(t, "consumer-0", "retry", key=key, port=port, reason="reset")
        self.add(t, "consumer-0", "quarantine", port=port, reason="reset", seconds=2.0)


def passing_history() -> list[dict[str, Any]]:
    h = SyntheticHistory(1)
    n = 0
    for i in range(1150):  # ~96/s for 12 s, a dip after the server kill at 9 s
        t = i * 0.0104
        key = f"{i % 64}:{i // 64 + 1}"
        h.publish(t, key)
        port = h.rng.randrange(4)
        delay = 0.004 + h.rng.random() * 0.02 + (0.8 if 9.0 <= t < 9.6 else 0.0)
        if port in (0, 1) and h.rng.random() < 0.2:
            h.fault(t + 0.001, 0, "reset", port=port)
            h.retry(t + 0.002, key, port)
            port = 2
        if port == 3 and 5.0 <= t < 8.0 and h.rng.random() < 0.3:
            h.fault(t + 0.001, 1, "toxic", port=3)
            h.retry(t + 0.002, key, 3)
            port = 1
        h.deliver(t + delay, key, port, latency=delay)
        n += 1
    h.fault(9.0, 2, "kill", target="server")
    h.add(12.0, "runner", "phase", name="heal")
    return h.events


def failing_history() -> list[dict[str, Any]]:
    h = SyntheticHistory(2)
    for i in range(500):
        t = i * 0.016
        key = f"{i % 32}:{i // 32 + 1}"
        h.publish(t, key)
        port = i % 3  # port 3 never serves; drop_commit hits only ports 1 and 2
        if i in (40, 41):  # the server committed, the COMMITTED reply was dropped, nobody delivered
            h.fault(t + 0.001, 1, "drop_commit", port=port)
            h.add(t + 0.002, "server", "committed", key=key, port=port, token=7)
            continue
        if i == 70:  # a duplicated descriptor: two consumers both deliver the same slot
            h.fault(t, 2, "duplicate_descriptor")
            h.deliver(t + 0.01, key, 0, latency=0.01, proc="consumer-1")
        if port == 2 and i % 20 == 2:
            h.fault(t + 0.001, 0, "stall", port=2)
            h.retry(t + 0.002, key, 2)
        h.deliver(t + 0.012, key, port, latency=0.012 + (i % 7) * 0.003)
    return h.events


def scenario_result(
    config_in: dict[str, Any], events: list[dict[str, Any]] | None, minutes: int
) -> ScenarioResult:
    scenario = Scenario.from_dict(config_in)
    file = f"scenarios/{scenario.name}.yaml"
    started = STARTED + timedelta(minutes=minutes)
    run_dir = f"scenarios/{scenario.name}"
    if events is None:
        error = "server process exited with code 1 before the fault phase:\nOSError: [Errno 98] <in use>"
        return ScenarioResult.errored(
            scenario, error, file=file, started=started, duration_s=4.2, run_dir=run_dir
        )
    verdict = check(events, spec_for(scenario.to_dict()))
    return ScenarioResult.judged(
        scenario, verdict, file=file, started=started, duration_s=verdict.end_s + 3.0, run_dir=run_dir
    )


def make_run(run_id: str = "20250301T020000Z-abcd", started: datetime = STARTED) -> RunResults:
    scenarios = [
        scenario_result(PASSING, passing_history(), 0),
        scenario_result(FAILING, failing_history(), 1),
        scenario_result(ERRORED, None, 2),
    ]
    return RunResults.create(
        scenarios,
        started=started,
        finished=started + timedelta(minutes=3),
        run_id=run_id,
        command=["chaos", "run", "scenarios/", "--out", "reports/x"],
    )


@pytest.fixture(scope="module")
def run() -> RunResults:
    return make_run()


def variant(run: RunResults, run_id: str, started: datetime, **changes: Any) -> RunResults:
    """A copy of `run` with another id/start and per-scenario edits: name -> fn(ScenarioResult dict)."""
    data = run.model_dump(mode="json")
    data["run_id"] = run_id
    data["started"] = started.isoformat()
    data["finished"] = (started + timedelta(minutes=3)).isoformat()
    for s in data["scenarios"]:
        edit = changes.get(s["name"].replace("-", "_"))
        if edit:
            edit(s)
    return RunResults.model_validate(data)


def scale_perf(throughput: float = 1.0, p99: float = 1.0):
    def edit(s: dict[str, Any]) -> None:
        s["verdict"]["throughput"]["per_s"] *= throughput
        s["verdict"]["latency"]["p99"] *= p99

    return edit


def make_passed(s: dict[str, Any]) -> None:
    s["status"] = "passed"
    s["verdict"]["passed"] = True
    s["verdict"]["failures"] = []


# -- results.json ----------------------------------------------------------------------------------


def test_sample_run_is_realistic(run: RunResults) -> None:
    passed, failed, errored = run.scenarios
    assert [s.status for s in run.scenarios] == ["passed", "failed", "error"]
    assert passed.verdict["counts"]["delivered"] == 1150 and passed.verdict["counts"]["lost"] == 0
    assert all(c["covered"] for c in passed.verdict["coverage"])
    assert failed.verdict["counts"]["lost"] == 2 and failed.verdict["counts"]["duplicated"] == 1
    assert any("never fired on ports [0, 3]" in f for f in failed.verdict["failures"])
    assert errored.verdict is None and "Errno 98" in errored.error
    assert passed.reproduce == "chaos run scenarios/transport-reset-payload.yaml --seed 7"
    assert failed.protocol == "single-chunk" and failed.config["protocol"] == "single-chunk"


def test_results_round_trip(run: RunResults, tmp_path: Path) -> None:
    path = run.save(tmp_path / "deep" / RESULTS_JSON)
    data = json.loads(path.read_text())
    assert data["schema_version"] == "1"
    assert data["started"] == "2025-03-01T02:00:00Z"
    assert set(data["host"]) == {"hostname", "platform", "python", "cpus", "memory_gb"}
    assert set(data["versions"]) == {"slotwire", "ucxx", "numpy", "python"}
    loaded = RunResults.load(path)
    assert loaded == run
    assert loaded.model_dump(mode="json") == data


def test_host_and_versions() -> None:
    host, versions = collect_host(), collect_versions()
    assert host.hostname and host.cpus and host.cpus >= 1 and host.memory_gb and host.memory_gb > 0
    assert versions.slotwire == "0.1.0" and versions.numpy and versions.python.count(".") == 2


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / RESULTS_JSON
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: "{not json", r"not valid JSON: line 1 column 2"),
        (lambda d: [1, 2], r"expected a JSON object, got list"),
        (lambda d: {k: v for k, v in d.items() if k != "schema_version"}, r"no schema_version"),
        (lambda d: {**d, "schema_version": "0"}, r"schema_version '0' is not supported .*reads '1'"),
        (lambda d: {**d, "run_id": ""}, r"run_id: String should have at least 1 character"),
        (
            lambda d: {**d, "scenarios": [d["scenarios"][0], {**d["scenarios"][1], "status": "flaky"}]},
            r"scenarios\[1\] \(legacy-drop-commit\)\.status: Input should be 'passed', 'failed' or 'error'",
        ),
        (
            lambda d: {**d, "scenarios": [{**d["scenarios"][1], "verdict": None}]},
            r"scenarios\[0\] \(legacy-drop-commit\): status is failed but `verdict` is null",
        ),
        (
            lambda d: {**d, "scenarios": [{**d["scenarios"][0], "status": "failed"}]},
            r"status is failed but verdict.passed is True",
        ),
        (lambda d: {**d, "extra_field": 1}, r"extra_field: Extra inputs are not permitted"),
        (lambda d: {**d, "started": "2025-03-01T02:00:00"}, r"started: Input should have timezone info"),
    ],
)
def test_load_names_file_and_problem(run: RunResults, tmp_path: Path, mutate: Any, expected: str) -> None:
    path = _write(tmp_path, mutate(run.model_dump(mode="json")))
    with pytest.raises(ResultsError) as info:
        RunResults.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert re.search(expected, message), message


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match=r"results.json: no such file"):
        RunResults.load(tmp_path / RESULTS_JSON)


def test_scenario_result_rules(run: RunResults) -> None:
    data = run.scenarios[2].model_dump()
    with pytest.raises(ValidationError, match="status is error but `error` is empty"):
        ScenarioResult(**{**data, "error": None})
    with pytest.raises(ValidationError, match="run_dir must be relative"):
        ScenarioResult(**{**data, "run_dir": "/abs/dir"})
    verdict = {**run.scenarios[0].verdict}
    del verdict["throughput"]
    with pytest.raises(ValidationError, match=r"verdict lacks throughput"):
        ScenarioResult(**{**run.scenarios[0].model_dump(), "verdict": verdict})
    twice = run.model_dump()
    twice["scenarios"].append(twice["scenarios"][0])
    with pytest.raises(ValidationError, match="scenario names must be unique"):
        RunResults(**twice)


def test_reproduce_command_quotes() -> None:
    assert reproduce_command("scenarios/a b.yaml", 5) == "chaos run 'scenarios/a b.yaml' --seed 5"
    assert reproduce_command("x.yaml", 0, ["--toxiproxy", "http://h:8474"]).endswith(
        "--toxiproxy http://h:8474"
    )


# -- junit.xml -------------------------------------------------------------------------------------

# The structure of the common JUnit XSD (windyroad JUnit.xsd; Jenkins' junit-10.xsd accepts a superset):
# element -> (required attributes, allowed attributes, children in order as (name, min, max)).
UNBOUNDED = 10**9
JUNIT_SCHEMA: dict[str, tuple[set[str], set[str], list[tuple[str, int, int]]]] = {
    "testsuites": (
        set(),
        {"name", "tests", "failures", "errors", "time", "disabled"},
        [("testsuite", 0, UNBOUNDED)],
    ),
    "testsuite": (
        {"name", "timestamp", "hostname", "tests", "failures", "errors", "time", "id", "package"},
        {"name", "timestamp", "hostname", "tests", "failures", "errors", "time", "id", "package"},
        [("properties", 1, 1), ("testcase", 0, UNBOUNDED), ("system-out", 1, 1), ("system-err", 1, 1)],
    ),
    "properties": (set(), set(), [("property", 0, UNBOUNDED)]),
    "property": ({"name", "value"}, {"name", "value"}, []),
    "testcase": ({"name", "classname", "time"}, {"name", "classname", "time"}, [("error|failure", 0, 1)]),
    "failure": ({"type"}, {"type", "message"}, []),
    "error": ({"type"}, {"type", "message"}, []),
    "system-out": (set(), set(), []),
    "system-err": (set(), set(), []),
}


def check_junit_structure(el: ET.Element, path: str = "") -> None:
    """Assert `el` (and its subtree) follows JUNIT_SCHEMA: attributes, child names, order, counts."""
    path = f"{path}/{el.tag}"
    assert el.tag in JUNIT_SCHEMA, f"{path}: unknown element"
    required, allowed, children = JUNIT_SCHEMA[el.tag]
    assert required <= set(el.attrib), f"{path}: missing attributes {required - set(el.attrib)}"
    assert set(el.attrib) <= allowed, f"{path}: unexpected attributes {set(el.attrib) - allowed}"
    for name in ("tests", "failures", "errors", "id"):
        if name in el.attrib:
            assert el.attrib[name].isdigit(), f"{path}@{name}={el.attrib[name]!r} is not a count"
    if "time" in el.attrib:
        assert float(el.attrib["time"]) >= 0
    if "timestamp" in el.attrib:
        datetime.strptime(el.attrib["timestamp"], "%Y-%m-%dT%H:%M:%S")
    kids = list(el)
    pos = 0
    for names, low, high in children:
        n = 0
        while pos < len(kids) and kids[pos].tag in names.split("|"):
            pos, n = pos + 1, n + 1
        assert low <= n <= high, f"{path}: {n} <{names}> children, expected {low}..{high}"
    assert pos == len(kids), f"{path}: unexpected child <{kids[pos].tag}> at position {pos}"
    for kid in kids:
        check_junit_structure(kid, path)


def test_junit_structure_and_content(run: RunResults, tmp_path: Path) -> None:
    path = junit.write(run, tmp_path / "junit.xml")
    assert path.read_text().startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ET.parse(path).getroot()
    check_junit_structure(root)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    cases = root.findall("testsuite/testcase")
    assert [c.get("name") for c in cases] == [s.name for s in run.scenarios]
    assert [c.get("classname") for c in cases] == [f"chaos.{s.name}" for s in run.scenarios]
    passed, failed, errored = cases
    assert list(passed) == []

    failure = failed.find("failure")
    assert failure is not None and failure.get("type") == "lost"
    message = failure.get("message")
    assert message.startswith("lost: 2 > 0 (slots ") and "duplicated: 1 > 0" in message
    assert "faults_fired: fault 1 (drop_commit) never fired on ports [0, 3]" in message
    assert message.endswith("| reproduce: chaos run scenarios/legacy-drop-commit.yaml --seed 3")
    assert "reproduce: chaos run scenarios/legacy-drop-commit.yaml --seed 3" in failure.text

    error = errored.find("error")
    assert error is not None and error.get("type") == "HarnessError"
    assert error.get("message").startswith(
        "harness error: server process exited with code 1 before the fault phase: ... OSError: [Errno 98]"
    )
    assert "Errno 98" in error.text and "--seed 11" in error.get("message")

    suite = root.findall("testsuite")[1]
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props["seed"] == "3" and props["protocol"] == "single-chunk" and props["faults"] == "3"
    assert props["fault.0"] == "stall ports=2 probability=0.05 delay=1s"
    assert props["fault.2"] == "duplicate_descriptor probability=1.0 window=2s-6s"
    assert props["reproduce"] == "chaos run scenarios/legacy-drop-commit.yaml --seed 3"


def test_junit_survives_hostile_text(run: RunResults) -> None:
    data = run.scenarios[2].model_dump()
    data["error"] = 'bad \x00\x1b[31m bytes <&> "quoted" ]]>'
    hostile = run.model_copy(update={"scenarios": [ScenarioResult(**data)]})
    root = ET.fromstring(junit.render(hostile))
    check_junit_structure(root)
    assert '<&> "quoted" ]]>' in root.find("testsuite/testcase/error").text


# -- summary.md ------------------------------------------------------------------------------------


def test_summary_content(run: RunResults) -> None:
    text = summary.render(run)
    assert text.startswith("## Chaos run `20250301T020000Z-abcd`: 1 passed, 1 failed, 1 error")
    header = (
        "| scenario | verdict | delivered | lost | duplicated | corrupted | in-doubt | throughput | p99 "
        "| faults covered |"
    )
    assert header in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == 3
    assert rows[0].startswith("| transport-reset-payload | ✅ passed | 1150 | 0 | 0 | 0 | 0 | ")
    assert rows[0].endswith(" | 3/3 |")
    assert rows[1].startswith("| legacy-drop-commit | ❌ failed | ") and rows[1].endswith(" | 2/3 |")
    assert rows[2] == "| process-restart-server | ⚠️ error | - | - | - | - | - | - | - | - |"
    assert "Regressions" not in text
    failures = text.split("### Failures", 1)[1]
    assert "#### ❌ failed: legacy-drop-commit" in failures and "- lost: 2 > 0 (slots " in failures
    assert "```sh\nchaos run scenarios/legacy-drop-commit.yaml --seed 3\n```" in failures
    assert "#### ⚠️ error: process-restart-server" in failures and "OSError: [Errno 98] <in use>" in failures


def test_summary_lists_regressions_first(run: RunResults) -> None:
    base = variant(run, "base", STARTED - timedelta(days=1), legacy_drop_commit=make_passed)
    text = summary.render(run, compare(run, base))
    assert text.index("### Regressions vs baseline `base`") < text.index("| scenario |")
    assert "- ❌ **legacy-drop-commit** (new failure): fails (passed in the baseline): lost: 2 > 0" in text
    assert "- ❌ **process-restart-server** (new failure): errored" not in text  # errored in both


def test_summary_escapes_table_cells() -> None:
    assert summary.cell("a|b\nc <x> 2 > 1") == "a\\|b c &lt;x> 2 > 1"
    assert summary.code_block("x ``` y").startswith("````\n")


# -- compare and history ---------------------------------------------------------------------------


def test_compare_identical_runs_is_clean(run: RunResults) -> None:
    result = compare(run, variant(run, "base", STARTED - timedelta(days=1)))
    assert not result and result.items == [] and result.fixed == [] and result.lines() == []


def test_compare_new_failure_and_fixed(run: RunResults) -> None:
    base = variant(run, "base", STARTED, legacy_drop_commit=make_passed)
    result = compare(run, base)
    assert [(r.kind, r.scenario) for r in result.items] == [("new_failure", "legacy-drop-commit")]
    assert result.items[0].reproduce == "chaos run scenarios/legacy-drop-commit.yaml --seed 3"
    assert result.items[0].baseline == "passed" and result.items[0].current == "failed"
    assert result.lines()[0].startswith(
        "REGRESSION legacy-drop-commit: fails (passed in the baseline): lost: 2"
    )
    back = compare(base, run)  # the other way round: the scenario got fixed
    assert not back and [(f.scenario, f.baseline) for f in back.fixed] == [("legacy-drop-commit", "failed")]


def test_compare_new_error_and_new_scenario(run: RunResults) -> None:
    def errored_before_passes_now(s: dict[str, Any]) -> None:
        s["status"], s["verdict"], s["error"] = "error", None, "boom"

    base = variant(run, "base", STARTED, transport_reset_payload=errored_before_passes_now)
    base = base.model_copy(update={"scenarios": base.scenarios[:2]})  # process-restart-server is new
    result = compare(run, base)
    assert [(r.kind, r.scenario) for r in result.items] == [("new_failure", "process-restart-server")]
    assert "errored (not in the baseline): harness error: server process exited" in result.items[0].message
    assert [f.scenario for f in result.fixed] == ["transport-reset-payload"]
    assert result.new_scenarios == ["process-restart-server"]
    assert compare(base, run).missing_scenarios == ["process-restart-server"]


def test_compare_throughput_drop(run: RunResults) -> None:
    base = variant(run, "base", STARTED, transport_reset_payload=scale_perf(throughput=1 / 0.7))
    result = compare(run, base)
    [item] = result.items
    assert item.kind == "throughput_drop" and item.scenario == "transport-reset-payload"
    assert item.current == pytest.approx(item.baseline * 0.7)
    assert "(-30%, threshold -20%)" in item.message
    assert not compare(run, base, Thresholds(throughput_drop=0.35))  # within a looser threshold


def test_compare_p99_rise(run: RunResults) -> None:
    base = variant(run, "base", STARTED, legacy_drop_commit=scale_perf(p99=1 / 1.8))
    [item] = compare(run, base).of_kind("p99_rise")
    assert item.scenario == "legacy-drop-commit" and "(+80%, threshold +50%)" in item.message
    assert item.message.startswith("p99 latency ")
    assert not compare(run, base, Thresholds(p99_rise=0.9))


def test_compare_within_thresholds(run: RunResults) -> None:
    base = variant(
        run,
        "base",
        STARTED,
        transport_reset_payload=scale_perf(throughput=1 / 0.85, p99=1 / 1.4),  # -15 %, +40 %
        legacy_drop_commit=scale_perf(throughput=0.5, p99=2.0),  # faster and better now
    )
    result = compare(run, base)
    assert not result and result.items == []


def test_thresholds_validated() -> None:
    with pytest.raises(ValueError, match="throughput_drop"):
        Thresholds(throughput_drop=0)
    with pytest.raises(ValueError, match="p99_rise"):
        Thresholds(p99_rise=-0.1)


def test_history_loads_last_n_by_start(run: RunResults, tmp_path: Path) -> None:
    for day in range(5):  # written in shuffled order; history sorts by `started`
        started = STARTED - timedelta(days=(day * 3) % 5)
        variant(run, f"run-{day}", started).save(tmp_path / f"dir-{day}" / RESULTS_JSON)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / RESULTS_JSON).write_text("{}")
    past = history(tmp_path, last_n=3)
    assert [r.started for r in past.runs] == sorted(r.started for r in past.runs)
    assert [r.run_id for r in past.runs] == ["run-4", "run-2", "run-0"]
    assert len(past.skipped) == 1 and "broken" in past.skipped[0] and "no schema_version" in past.skipped[0]
    trends = past.with_run(run, last_n=3).trends()
    assert [p.run_id for p in trends["legacy-drop-commit"]] == ["run-2", "run-0", run.run_id]
    with pytest.raises(ResultsError, match="not a directory"):
        history(tmp_path / "nope")


# -- report.html -----------------------------------------------------------------------------------


def test_html_sections_and_escaping(run: RunResults) -> None:
    data = run.scenarios[2].model_dump()
    data["error"] = "<script>alert(1)</script> & <img src=x onerror=alert(2)>"
    hostile = run.model_copy(update={"scenarios": [*run.scenarios[:2], ScenarioResult(**data)]})
    page = html_report.render(hostile)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img" in page
    assert "img-src data:" in page and "script-src 'none'" in page
    srcs = re.findall(r'<img src="([^"]*)"', page)
    assert len(srcs) == 6 and all(
        s.startswith("data:image/png;base64,") for s in srcs
    )  # 3 + 3, none for error
    assert not re.search(r'(src|href)="(https?:)?//', page)
    for text in ("Overview", "Fault coverage per port", "First offending slots", "committed by the server"):
        assert text in page
    assert "delivered 2 times by consumer-0, consumer-1" in page


def test_write_reports_with_baseline_and_history(run: RunResults, tmp_path: Path) -> None:
    base = variant(run, "base", STARTED - timedelta(days=1), legacy_drop_commit=make_passed)
    base.save(tmp_path / "reports" / "base" / RESULTS_JSON)
    paths = write_reports(
        run, tmp_path / "reports" / run.run_id, baseline=base, history_dir=tmp_path / "reports"
    )
    for p in (paths.results_json, paths.junit_xml, paths.summary_md, paths.report_html):
        assert p.is_file() and p.stat().st_size > 0
    assert paths.regressions and paths.regressions.items[0].scenario == "legacy-drop-commit"
    assert [r.run_id for r in paths.history.runs] == ["base", run.run_id]
    page = paths.report_html.read_text()
    assert page.index('id="regressions"') < page.index('id="overview"') < page.index('id="history"')
    # + one trend per judged scenario; the one that only ever errored gets a line of text instead
    assert len(re.findall(r'<img src="data:image/png', page)) == 6 + 2
    assert "process-restart-server: no throughput or latency in 2 runs (never judged)" in page
    assert RunResults.load(paths.results_json) == run


# -- chaos report ----------------------------------------------------------------------------------


@pytest.fixture
def run_dir(run: RunResults, tmp_path: Path) -> Path:
    path = tmp_path / "reports" / run.run_id
    run.save(path / RESULTS_JSON)
    return path


def test_cli_regenerates_reports(run_dir: Path) -> None:
    result = CliRunner().invoke(cli, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "1 passed, 1 failed, 1 error" in result.output
    for name in ("junit.xml", "summary.md", "report.html"):
        assert (run_dir / name).is_file()


def test_cli_regression_exit_codes(run: RunResults, run_dir: Path, tmp_path: Path) -> None:
    base_dir = tmp_path / "reports" / "base"
    variant(run, "base", STARTED - timedelta(days=1), legacy_drop_commit=make_passed).save(
        base_dir / RESULTS_JSON
    )
    args = ["report", str(run_dir), "--baseline", str(base_dir), "--history", str(tmp_path / "reports")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "Compared with baseline base:"
    assert lines[1].startswith("  REGRESSION legacy-drop-commit: fails (passed in the baseline)")
    result = CliRunner().invoke(cli, [*args, "--fail-on-regression"])
    assert result.exit_code == 1, result.output
    # The baseline's results.json path works too, and a loose threshold does not rescue a new failure.
    result = CliRunner().invoke(
        cli,
        [
            "report",
            str(run_dir),
            "--baseline",
            str(base_dir / RESULTS_JSON),
            "--p99-rise",
            "5",
            "--fail-on-regression",
        ],
    )
    assert result.exit_code == 1
    same = CliRunner().invoke(
        cli, ["report", str(run_dir), "--baseline", str(run_dir), "--fail-on-regression"]
    )
    assert same.exit_code == 0 and "no regressions" in same.output


def test_cli_bad_input_exits_2(run_dir: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "RUN_DIR:" in missing.output and "no such file" in missing.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / RESULTS_JSON).write_text('{"schema_version": "9"}')
    old = runner.invoke(cli, ["report", str(bad)])
    assert old.exit_code == 2 and "schema_version '9' is not supported" in old.output
    baseline = runner.invoke(cli, ["report", str(run_dir), "--baseline", str(bad)])
    assert baseline.exit_code == 2 and "--baseline:" in baseline.output
    hist = runner.invoke(cli, ["report", str(run_dir), "--history", str(tmp_path / "none")])
    assert hist.exit_code == 2 and "--history" in hist.output
    threshold = runner.invoke(cli, ["report", str(run_dir), "--throughput-drop", "1.5"])
    assert threshold.exit_code == 2


# -- report.html in headless Chromium --------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Injected by the test only: marks each <img> with whether it decoded (the report itself has no scripts).
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.dataset.rendered = String(img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
  }
  document.body.dataset.probe = "done";
});
</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    cmd = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def _blank(path: Path) -> bool:
    """True when a screenshot is (nearly) one flat colour."""
    with Image.open(path) as img:
        gray = img.convert("L")
        colours = gray.getcolors(maxcolors=256) or []
        return len(colours) < 16 or gray.getextrema()[0] == gray.getextrema()[1]


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (CI installs Debian's chromium in .ci/run)"
)
def test_report_renders_in_chromium(run: RunResults, tmp_path: Path) -> None:
    base = variant(run, "base", STARTED - timedelta(days=1), legacy_drop_commit=make_passed)
    base.save(tmp_path / "reports" / "base" / RESULTS_JSON)
    paths = write_reports(
        run, tmp_path / "reports" / run.run_id, baseline=base, history_dir=tmp_path / "reports"
    )
    page = paths.report_html.read_text()
    n_images = page.count("<img ")
    assert n_images == 8

    # 1. Every plot decodes and nothing logs to the console (a CSP violation from a network fetch,
    #    a broken image or a script error all would).
    probed = tmp_path / "probed.html"
    probed.write_text(
        page.replace("script-src 'none'", "script-src 'unsafe-inline'").replace("</body>", PROBE + "</body>")
    )
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", probed.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    console = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == [], "\n".join(console)
    assert 'data-probe="done"' in dom.stdout, dom.stdout[-2000:]
    assert dom.stdout.count('data-rendered="true"') == n_images, re.findall(
        r'data-rendered="\w+"', dom.stdout
    )

    # 2. The unmodified report (CSP blocks scripts) renders to a non-blank screenshot with no console errors.
    shot = tmp_path / "report.png"
    result = _chromium(
        tmp_path, f"--screenshot={shot}", "--window-size=1400,3000", paths.report_html.as_uri()
    )
    assert result.returncode == 0, result.stderr[-2000:]
    console = [line for line in result.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == [], "\n".join(console)
    assert shot.is_file() and shot.stat().st_size > 20_000
    assert not _blank(shot), "screenshot is blank"
    with Image.open(shot) as img:
        assert img.size == (1400, 3000)
