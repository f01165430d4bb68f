"""Scenario files: unit parsing, the shipped set, errors that name file:line:field, `chaos validate`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, get_args

import pytest
from click.testing import CliRunner

from chaos.cli import cli
from chaos.scenario import (
    FAULT_KINDS,
    Scenario,
    ScenarioError,
    load_scenario,
    load_scenarios,
    parse_duration,
    parse_rate,
    parse_scenario,
    parse_size,
)
from chaos.scenario.model import Toxic

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "scenarios").glob("*.yaml"))

# --- units ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("4KiB", 4096),
        ("1MiB", 1024**2),
        ("64MiB", 64 * 1024**2),
        ("1GiB", 1024**3),
        ("64B", 64),
        ("10KB", 10_000),
        ("1.5MB", 1_500_000),
        ("0.5KiB", 512),
        ("4 kib", 4096),
        ("512", 512),
        (512, 512),
        (0, 0),
        (4096.0, 4096),
    ],
)
def test_parse_size(text: object, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("20s", 20.0),
        ("500ms", 0.5),
        ("2m", 120.0),
        ("2min", 120.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        ("3", 3.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "per_second"),
    [
        ("200/s", 200.0),
        ("1000/s", 1000.0),
        ("30/m", 0.5),
        ("30/min", 0.5),
        ("360/h", 0.1),
        ("50", 50.0),
        (50, 50.0),
    ],
)
def test_parse_rate(text: object, per_second: float) -> None:
    assert parse_rate(text) == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("parse", "value"),
    [
        (parse_size, "4KX"),
        (parse_size, "KiB"),
        (parse_size, "-1"),
        (parse_size, -1),
        (parse_size, "1.5B"),
        (parse_size, True),
        (parse_size, [4]),
        (parse_duration, "20x"),
        (parse_duration, "s"),
        (parse_duration, ""),
        (parse_duration, "-1s"),
        (parse_duration, float("inf")),
        (parse_duration, False),
        (parse_rate, "200/x"),
        (parse_rate, "/s"),
        (parse_rate, "200 per second"),
    ],
)
def test_bad_units_raise_value_error(parse: object, value: object) -> None:
    with pytest.raises(ValueError):
        parse(value)  # type: ignore[operator]


# --- the shipped scenarios ------------------------------------------------------------------------


def test_shipped_set_is_present() -> None:
    assert len(SHIPPED) >= 20
    assert (ROOT / "scenarios" / "README.md").is_file()


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_scenario_loads_and_round_trips(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    assert scenario.source == path
    assert scenario.description
    # fast enough for CI: the whole run fits in the hard deadline, which stays under a minute
    assert scenario.deadline is not None and scenario.deadline <= 90  # room for a loaded CI box
    assert scenario.duration + scenario.drain_timeout <= scenario.deadline
    data = json.loads(json.dumps(scenario.to_dict()))  # JSON-safe
    again = Scenario.from_dict(data)
    assert again == scenario
    assert again.to_dict() == data


def test_shipped_set_covers_every_fault_kind_and_toxic() -> None:
    scenarios = load_scenarios(SHIPPED)
    faults = [f for s in scenarios for f in s.faults]
    assert {f.kind for f in faults} == set(FAULT_KINDS)
    phases = {f.phase for f in faults if f.kind == "reset"}
    assert phases == {"request", "status", "payload", "commit", "resolve"}
    toxic_types = {get_args(cls.model_fields["type"].annotation)[0] for cls in get_args(get_args(Toxic)[0])}
    assert {f.toxic.type for f in faults if f.kind == "toxic"} == toxic_types
    by_name = {s.name: s for s in scenarios}
    small = by_name["load-200-slots-small-payload"]
    assert (small.ring.slots, small.producer.payload.min, small.producer.payload.max) == (200, 64, 4096)
    assert small.producer.rate == 1000.0
    assert by_name["load-64mib-large-payload"].ring.slot_bytes == 64 * 1024**2


def test_readme_lists_every_shipped_file() -> None:
    readme = (ROOT / "scenarios" / "README.md").read_text()
    for path in SHIPPED:
        assert f"`{path.name}`" in readme


# --- normalisation and defaults -------------------------------------------------------------------

MINIMAL = "name: tiny\nduration: 10s\n"


def test_minimal_scenario_gets_documented_defaults() -> None:
    scenario = parse_scenario(MINIMAL)
    assert scenario.duration == 10.0
    assert scenario.drain_timeout == 30.0
    assert scenario.deadline == 10.0 + 30.0 + 60.0
    assert scenario.protocol == "commit"
    assert scenario.ring.policy == "block"
    assert scenario.expect.faults_fired == "none" and scenario.expect.faults_effective == "all"
    assert scenario.expect.faults_quarantined == "none"
    assert scenario.server.lease is None  # the runner's default lease
    assert scenario.faults == []


def test_server_lease_and_faults_quarantined() -> None:
    scenario = parse_scenario(
        MINIMAL
        + "server: {lease: 250ms}\n"
        + "faults:\n  - {kind: truncate}\n  - {kind: evict}\n"
        + "expect: {faults_quarantined: [0]}\n"
    )
    assert scenario.server.lease == 0.25
    assert scenario.expect.faults_quarantined == [0]
    assert Scenario.from_dict(scenario.to_dict()) == scenario
    assert parse_scenario(MINIMAL + "expect: {faults_quarantined: all}\n").expect.faults_quarantined == "all"


def test_values_are_normalised() -> None:
    scenario = parse_scenario(
        textwrap.dedent(
            """
            name: norm
            duration: 1m
            drain_timeout: 500ms
            ring: {slots: 8, slot_bytes: 1MiB}
            producer: {rate: 120/m, payload: {min: 1KB, max: 1MiB}}
            server: {ports: 3}
            consumers: {read_timeout: 2s}
            faults:
              - {kind: timeout, ports: [2]}
              - {kind: evict}
              - {kind: toxic, toxic: {type: bandwidth, attributes: {rate: 16}}, window: {start: 1s, end: 2s}}
            expect: {min_throughput: 50/s, max_recovery: 1m30s, max_p99_latency: 250ms}
            """
        )
    )
    assert scenario.duration == 60.0 and scenario.drain_timeout == 0.5
    assert scenario.ring.slot_bytes == 1024**2
    assert (scenario.producer.rate, scenario.producer.payload.min) == (2.0, 1000)
    timeout, evict, toxic = scenario.faults
    assert timeout.delay == 3.0  # default: 1.5x read_timeout
    assert evict.ports == [0, 1, 2]  # default: every port, stored explicitly
    assert toxic.toxic.stream == "downstream" and toxic.toxic.toxicity == 1.0
    assert toxic.window is not None and (toxic.window.start, toxic.window.end) == (1.0, 2.0)
    assert (scenario.expect.min_throughput, scenario.expect.max_recovery) == (50.0, 90.0)
    assert scenario.expect.max_p99_latency == 0.25
    assert {type(f).layer for f in scenario.faults} == {"transport", "network"}


def test_with_seed_keeps_everything_else() -> None:
    scenario = parse_scenario(MINIMAL)
    other = scenario.with_seed(99)
    assert other.seed == 99 and scenario.seed == 0
    assert other.to_dict() | {"seed": 0} == scenario.to_dict()


def test_line_of_points_into_the_file() -> None:
    scenario = parse_scenario(
        "name: x\nduration: 10s\nfaults:\n  - {kind: evict}\n  - {kind: reset, phase: request}\n"
    )
    assert scenario.line_of(("faults", 1)) == 5
    assert scenario.line_of(("faults", 1, "probability")) == 5  # defaulted: its fault's line
    assert scenario.line_of(("name",)) == 1


# --- errors name file:line:field ------------------------------------------------------------------

HEAD = "name: bad\nduration: 10s\nserver: {ports: 2}\n"  # lines 1-3


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        # bad YAML syntax
        ("ring: {slots: 4\n", 5, None, "YAML syntax error"),
        ("ring:\n  slots: 4\n   policy: block\n", 6, None, "YAML syntax error"),
        # unknown keys, top level, nested, per fault kind, per toxic type
        ("colour: red\n", 4, "colour", "unknown field"),
        ("ring: {slots: 4, slot_size: 4KiB}\n", 4, "ring.slot_size", "slot_bytes"),
        ("faults:\n  - {kind: evict, phase: payload}\n", 5, "faults[0].phase", "kind 'evict'"),
        (
            "faults:\n  - {kind: kill, target: server, at: 1s, ports: [0]}\n",
            5,
            "faults[0].ports",
            "kind 'kill'",
        ),
        ("faults:\n  - {kind: down, probability: 0.5}\n", 5, "faults[0].probability", "kind 'down'"),
        (
            "faults:\n  - kind: toxic\n    toxic: {type: latency, attributes: {jiter: 5}}\n",
            6,
            "faults[0].toxic.attributes.jiter",
            "jitter",
        ),
        ("faults:\n  - {kind: bogus}\n", 5, "faults[0]", "unknown kind 'bogus'"),
        ("faults:\n  - {kind: toxic, toxic: {type: nope}}\n", 5, "faults[0].toxic", "unknown type 'nope'"),
        # wrong types and missing fields
        ("ring: {slots: '4'}\n", 4, "ring.slots", "valid integer"),
        ("ring: {slots: yes}\n", 4, "ring.slots", "valid integer"),
        ("ring: [4]\n", 4, "ring", "expected a mapping"),
        ("protocol: udp\n", 4, "protocol", "'commit' or 'single-chunk'"),
        ("faults:\n  - {kind: reset}\n", 5, "faults[0].phase", "required field is missing"),
        ("faults:\n  - {ports: [0]}\n", 5, "faults[0]", "'kind' is missing"),
        ("faults:\n  - {kind: kill, target: everyone, at: 1s}\n", 5, "faults[0].target", "consumer-N"),
        ("expect: {faults_fired: some}\n", 4, "expect.faults_fired", "all, none or a list"),
        # bad units
        ("drain_timeout: 20x\n", 4, "drain_timeout", "bad duration '20x'"),
        ("ring: {slot_bytes: 4KX}\n", 4, "ring.slot_bytes", "bad size '4KX'"),
        ("producer:\n  rate: 200/x\n", 5, "producer.rate", "bad rate '200/x'"),
        # ports out of range, probabilities outside [0, 1]
        ("faults:\n  - {kind: evict, ports: [0, 2]}\n", 5, "faults[0].ports[1]", "server.ports is 2"),
        ("faults:\n  - {kind: evict, ports: [1, 1]}\n", 5, "faults[0].ports", "unique"),
        (
            "faults:\n  - {kind: evict, probability: 1.5}\n",
            5,
            "faults[0].probability",
            "less than or equal to 1",
        ),
        (
            "faults:\n  - {kind: evict, probability: -0.1}\n",
            5,
            "faults[0].probability",
            "greater than or equal",
        ),
        (
            "faults:\n  - {kind: toxic, toxic: {type: latency, toxicity: 2}}\n",
            5,
            "faults[0].toxic.toxicity",
            "less than or equal to 1",
        ),
        # windows and times outside the fault phase
        (
            "faults:\n  - kind: evict\n    window: {start: 5s, end: 11s}\n",
            6,
            "faults[0].window.end",
            "past the end of the fault phase",
        ),
        (
            "faults:\n  - {kind: evict, window: {start: 5s, end: 2s}}\n",
            5,
            "faults[0].window.end",
            "after start",
        ),
        (
            "faults:\n  - {kind: kill, target: server, at: 10s}\n",
            5,
            "faults[0].at",
            "not within the fault phase",
        ),
        (
            "faults:\n  - {kind: evict, at: 1s, window: {start: 2s, end: 3s}}\n",
            5,
            "faults[0].at",
            "either at or window",
        ),
        ("faults:\n  - {kind: restart, target: server}\n", 5, "faults[0]", "needs `at` or `window`"),
        (
            "faults:\n  - {kind: pause, target: server, at: 8s, duration: 5s}\n",
            5,
            "faults[0].duration",
            "ends after the fault phase",
        ),
        # impossible values
        ("ring: {slots: 0}\n", 4, "ring.slots", "greater than or equal to 1"),
        (
            "ring: {slot_bytes: 4KiB}\nproducer: {payload: {min: 1KiB, max: 8KiB}}\n",
            5,
            "producer.payload.max",
            "does not fit in a slot",
        ),
        ("producer:\n  payload: {min: 8KiB, max: 4KiB}\n", 5, "producer.payload.min", "above max 4KiB"),
        ("producer: {rate: 0/s}\n", 4, "producer.rate", "greater than 0"),
        (
            "consumers: {count: 2}\nfaults:\n  - {kind: kill, target: consumer-2, at: 1s}\n",
            6,
            "faults[0].target",
            "no consumer-2",
        ),
        (
            "consumers: {read_timeout: 2s}\nfaults:\n  - {kind: timeout, delay: 1s}\n",
            6,
            "faults[0].delay",
            "stall",
        ),
        ("drain_timeout: 20s\ndeadline: 25s\n", 5, "deadline", "no room"),
        (
            "faults:\n  - {kind: evict}\nexpect:\n  faults_fired: [0, 3]\n",
            7,
            "expect.faults_fired[1]",
            "no fault 3",
        ),
        (
            "faults:\n  - {kind: evict}\nexpect:\n  faults_quarantined: [1]\n",
            7,
            "expect.faults_quarantined[0]",
            "no fault 1",
        ),
        ("expect: {faults_quarantined: some}\n", 4, "expect.faults_quarantined", "all, none or a list"),
        ("server: {lease: 0s}\n", 4, "server.lease", "greater than 0"),
        ("expect: {lost: -1}\n", 4, "expect.lost", "greater than or equal to 0"),
        # client-side transport faults: only reset, timeout and stall; a client stall names its send
        ("faults:\n  - {kind: truncate, side: client}\n", 5, "faults[0].side", "reset, timeout and stall"),
        ("faults:\n  - {kind: stall, delay: 1s, side: client}\n", 5, "faults[0].phase", "needs phase"),
        ("faults:\n  - {kind: stall, delay: 1s, phase: commit}\n", 5, "faults[0].phase", "side client"),
        (
            "faults:\n  - {kind: reset, phase: commit, side: peer}\n",
            5,
            "faults[0].side",
            "'server' or 'client'",
        ),
        # duplicate keys (PyYAML alone would keep the last one silently)
        ("ring: {slots: 4}\nring: {slots: 8}\n", 5, "ring", "duplicate key (first given on line 4)"),
    ],
)
def test_error_names_file_line_and_field(
    tmp_path: Path, body: str, line: int, field: str | None, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + body)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    expected = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
    matching = [p for p in str(info.value).splitlines() if p.startswith(expected)]
    assert matching, f"no line starting {expected!r} in:\n{info.value}"
    assert any(words in p for p in matching), f"{words!r} not in {matching}"
    assert isinstance(info.value, ValueError)
    problem = next(p for p in info.value.problems if str(p) in matching)
    assert (problem.file, problem.line, problem.field) == (str(path), line, field)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty file"),
        ("- a\n- b\n", "expected a scenario mapping"),
        ("a: b\n---\nc: d\n", "single document"),
    ],
)
def test_file_level_errors(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ScenarioError, match=words) as info:
        load_scenario(path)
    assert str(info.value).startswith(f"{path}:")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read") as info:
        load_scenario(tmp_path / "missing.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'missing.yaml'}: ")


def test_several_errors_one_per_line_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("name: many\nduration: 10s\nring: {slots: 0}\nconsumers: {batch: 0}\nbogus: 1\n")
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert str(info.value).splitlines() == [
        f"{path}:3: ring.slots: input should be greater than or equal to 1, got 0",
        f"{path}:4: consumers.batch: input should be greater than or equal to 1, got 0",
        f"{path}:5: bogus: unknown field; expected one of: {', '.join(Scenario.model_fields)}",
    ]


def test_from_dict_errors_name_the_field() -> None:
    data = parse_scenario(MINIMAL).to_dict()
    data["faults"] = [{"kind": "stall"}]
    with pytest.raises(ScenarioError) as info:
        Scenario.from_dict(data, source="results.json")
    assert str(info.value) == "results.json: faults[0].delay: required field is missing"


def test_load_scenarios_collects_every_file_and_rejects_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("name: same\nduration: 10s\n")
    (tmp_path / "b.yaml").write_text("name: same\nduration: 5s\n")
    (tmp_path / "c.yaml").write_text("name: other\nduration: nope\n")
    with pytest.raises(ScenarioError) as info:
        load_scenarios([tmp_path])
    assert str(info.value).splitlines() == [
        f"{tmp_path / 'c.yaml'}:2: duration: bad duration 'nope': use e.g. 500ms, 20s, 2m, 1m30s",
        f"{tmp_path / 'b.yaml'}:1: name: duplicate scenario name 'same' (also in {tmp_path / 'a.yaml'})",
    ]
    assert [s.name for s in load_scenarios([tmp_path / "a.yaml", tmp_path / "c.yaml"][:1])] == ["same"]


def test_fault_kinds_match_the_fault_layer() -> None:
    """Each kind's layer is its model class's (DESIGN.md's table), the one table every layer reads."""
    from chaos.scenario.model import kinds_of

    assert kinds_of("transport") == {
        "reset",
        "truncate",
        "corrupt",
        "timeout",
        "stall",
        "evict",
        "drop_commit",
    }
    assert kinds_of("process") == {"kill", "pause", "restart"}
    assert kinds_of("control") == {"duplicate_descriptor", "delay_descriptor"}
    network = {"toxic", "down", "partition", "loss", "reject", "bandwidth", "flap"}
    assert kinds_of("network") == network
    assert {k for k in network if FAULT_KINDS[k].by_kernel} == network - {"toxic", "down"}
    assert {k for k, cls in FAULT_KINDS.items() if cls.client_side} == {"reset", "timeout", "stall"}


def test_toxic_attributes_match_the_proxy() -> None:
    """Attribute names per toxic type are the ones the embedded proxy (Toxiproxy's API) accepts."""
    toxics = pytest.importorskip("chaos.proxy.toxics")
    for cls in get_args(get_args(Toxic)[0]):
        type_name = get_args(cls.model_fields["type"].annotation)[0]
        attributes = cls.model_fields["attributes"].annotation
        assert set(attributes.model_fields) == set(toxics.REGISTRY[type_name]().attributes()), type_name


# --- chaos validate -------------------------------------------------------------------------------


def test_validate_ok(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("name: ok\nduration: 10s\nfaults:\n  - {kind: evict}\n  - {kind: reset, phase: commit}\n")
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output == f"OK {path} (ok, 2 faults)\n"


def test_validate_shipped_directory() -> None:
    result = CliRunner().invoke(cli, ["validate", str(ROOT / "scenarios")])
    assert result.exit_code == 0, result.output
    assert result.output.count("OK ") == len(SHIPPED)


def test_validate_invalid_exits_2_and_names_line(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("name: good\nduration: 10s\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nduration: 10s\nring: {slots: 0}\n")
    result = CliRunner().invoke(cli, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert f"OK {good} (good, 0 faults)" in result.output
    assert f"{bad}:3: ring.slots: input should be greater than or equal to 1, got 0" in result.output


def test_validate_missing_file_and_no_args_exit_2(tmp_path: Path) -> None:
    assert CliRunner().invoke(cli, ["validate", str(tmp_path / "nope.yaml")]).exit_code == 2
    assert CliRunner().invoke(cli, ["validate"]).exit_code == 2


def test_validate_as_a_real_process(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nduration: 10s\nfaults:\n  - {kind: evict, ports: [7]}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "validate", str(SHIPPED[0])],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith(f"OK {SHIPPED[0]} (")
    failed = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 2
    assert f"{bad}:4: faults[0].ports[0]: port index 7 out of range: server.ports is 4" in failed.stderr


# -- simulated hosts --------------------------------------------------------------------------------


def _hosted(**extra: Any) -> dict[str, Any]:
    return {"name": "h", "duration": "5s", "hosts": "default", "consumers": {"count": 2}, **extra}


def test_default_placement_puts_each_consumer_on_its_own_host() -> None:
    sc = Scenario.from_dict(_hosted())
    assert sc.placement() == {
        "server": "server",
        "producer": "server",
        "consumer-0": "consumer-0",
        "consumer-1": "consumer-1",
    }
    assert sc.host_names() == ["server", "consumer-0", "consumer-1"]


def test_host_faults_name_existing_hosts_and_need_host_mode() -> None:
    ok = _hosted(
        faults=[
            {"kind": "partition", "isolate": "server"},
            {"kind": "loss", "between": ["consumer-0", "server"], "probability": 0.1},
        ]
    )
    assert [f.kind for f in Scenario.from_dict(ok).faults] == ["partition", "loss"]
    with pytest.raises(ScenarioError, match="no host 'nowhere'"):
        Scenario.from_dict(_hosted(faults=[{"kind": "partition", "isolate": "nowhere"}]))
    with pytest.raises(ScenarioError, match="exactly one of between or isolate"):
        Scenario.from_dict(_hosted(faults=[{"kind": "reject"}]))
    with pytest.raises(ScenarioError, match="needs `hosts:`"):
        Scenario.from_dict(
            {"name": "s", "duration": "5s", "faults": [{"kind": "partition", "isolate": "server"}]}
        )
    toxic = {"kind": "toxic", "toxic": {"type": "latency", "attributes": {"latency": 10}}}
    with pytest.raises(ScenarioError, match="names a host link"):
        Scenario.from_dict(_hosted(faults=[toxic]))
    assert (
        Scenario.from_dict(_hosted(faults=[{**toxic, "between": ["consumer-1", "server"]}])).faults[0].ports
        is None
    )


def test_explicit_placement_must_place_every_role_once_with_the_producer_beside_the_server() -> None:
    hosts = {"a": ["server", "producer", "consumer-0"], "b": ["consumer-1"]}
    assert Scenario.from_dict(_hosted(hosts=hosts)).placement()["consumer-0"] == "a"
    with pytest.raises(ScenarioError, match="not placed on any host: consumer-1"):
        Scenario.from_dict(_hosted(hosts={"a": ["server", "producer", "consumer-0"]}))
    with pytest.raises(ScenarioError, match="place them on one host"):
        Scenario.from_dict(_hosted(hosts={"a": ["server", "consumer-0"], "b": ["producer", "consumer-1"]}))


def test_a_data_shaping_toxic_on_a_listener_proxy_is_warned_about() -> None:
    faults = [
        {"kind": "toxic", "ports": [0], "toxic": {"type": "bandwidth", "attributes": {"rate": 16}}},
        {"kind": "toxic", "ports": [1], "toxic": {"type": "reset_peer"}},
    ]
    warnings = Scenario.from_dict({"name": "s", "duration": "5s", "faults": faults}).warnings()
    assert len(warnings) == 1 and "faults[0]" in warnings[0] and "connection setup" in warnings[0]


def test_kernel_bandwidth_rate_takes_bytes_per_second() -> None:
    sc = Scenario.from_dict(
        _hosted(faults=[{"kind": "bandwidth", "isolate": "consumer-0", "rate": "64KiB/s"}])
    )
    assert sc.faults[0].rate == 64 * 1024


def test_client_side_transport_faults_are_stored_with_their_side(tmp_path: Path) -> None:
    """`side` defaults to server; client-side reset, timeout and stall validate and round-trip."""
    text = MINIMAL + (
        "faults:\n"
        "  - {kind: reset, phase: commit}\n"
        "  - {kind: reset, phase: status, side: client}\n"
        "  - {kind: timeout, side: client}\n"
        "  - {kind: stall, delay: 500ms, phase: resolve, side: client}\n"
    )
    path = tmp_path / "client.yaml"
    path.write_text(text)
    sc = load_scenario(path)
    assert [f.side for f in sc.faults] == ["server", "client", "client", "client"]  # type: ignore[union-attr]
    assert sc.faults[3].phase == "resolve"  # type: ignore[union-attr]
    assert Scenario.from_dict(sc.to_dict()) == sc


def test_redis_channel_with_hosts_is_refused_naming_the_field() -> None:
    """Redis runs in the runner's namespace, out of reach of consumers inside hosts: say so up front."""
    Scenario.from_dict(_hosted())  # control: the same scenario on the memory channel is valid
    with pytest.raises(ScenarioError, match="channel: redis cannot be combined with `hosts:`") as caught:
        Scenario.from_dict(_hosted(channel="redis"))
    assert caught.value.problems[0].field == "channel", caught.value.problems


def test_hold_works_on_any_transport_but_borrow_needs_local() -> None:
    """A copying consumer holds its batch before the ack over UCX too (a kill then meets claimed
    descriptors); a borrow is a view of the producer's segment, so only local reads can lend one."""
    base = {"name": "h", "duration": "5s"}
    held = Scenario.from_dict({**base, "consumers": {"hold": "100ms"}})
    assert held.consumers.hold == 0.1 and held.consumers.transport == "ucx"
    with pytest.raises(ScenarioError, match="borrow needs transport: local"):
        Scenario.from_dict({**base, "consumers": {"borrow": True}})
    assert Scenario.from_dict({**base, "consumers": {"borrow": True, "transport": "local"}}).consumers.borrow
