"""Scenario input bounds: alias bombs, huge files, absurd sizes and counts, rings bigger than /dev/shm."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from chaos.scenario import ScenarioError, load_scenario, parse_scenario
from chaos.scenario.loader import MAX_FILE_BYTES
from chaos.scenario.resources import resource_problems

pytestmark = pytest.mark.timeout(120)

# Nine references per level, nine levels: 9**9 = 387,420,489 leaves once expanded.
LAUGHS = "name: lol\nduration: 10s\nl0: &l0 [lol]\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 10)
)


def test_a_billion_laughs_is_refused_fast_without_expanding() -> None:
    started = time.monotonic()
    with pytest.raises(ScenarioError, match="expands to more than") as info:
        parse_scenario(LAUGHS, "lol.yaml")
    assert time.monotonic() - started < 10.0, "refused before the tree was walked"
    assert str(info.value).startswith("lol.yaml:1: ")


def test_billion_laughs_exits_2_from_chaos_validate(tmp_path: Path) -> None:
    bomb = tmp_path / "lol.yaml"
    bomb.write_text(LAUGHS)
    done = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "validate", str(bomb)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert f"{bomb}:1: the document expands to more than" in done.stderr


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ScenarioError, match="recursive alias"):
        parse_scenario("name: loop\nduration: 10s\nx: &a [1, *a]\n", "loop.yaml")


def test_modest_aliases_still_work() -> None:
    text = "name: aliases\nduration: 10s\nx-timing: &w {start: 1s, end: 2s}\nfaults:\n" + "".join(
        "  - {kind: evict, window: *w}\n" for _ in range(5)
    )
    with pytest.raises(ScenarioError, match="x-timing: unknown field"):
        parse_scenario(text, "a.yaml")  # only the unknown top-level key is wrong, aliases resolved


def test_an_oversized_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("name: big\nduration: 10s\ndescription: " + "x" * MAX_FILE_BYTES + "\n")
    with pytest.raises(ScenarioError, match=f"larger than {MAX_FILE_BYTES} bytes") as info:
        load_scenario(big)
    assert str(info.value).startswith(f"{big}: ")


@pytest.mark.parametrize(
    ("body", "line", "field", "words"),
    [
        ("ring: {slots: 1000000}\n", 3, "ring.slots", "less than or equal to 65536"),
        ("ring: {slot_bytes: 4GiB}\n", 3, "ring.slot_bytes", "less than or equal to 2147483648"),
        ("consumers: {count: 500}\n", 3, "consumers.count", "less than or equal to 64"),
        ("consumers: {batch: 100000}\n", 3, "consumers.batch", "less than or equal to 4096"),
        ("consumers: {max_attempts: 10000}\n", 3, "consumers.max_attempts", "less than or equal"),
        ("producer: {rate: 5000000/s}\n", 3, "producer.rate", "less than or equal"),
        ("producer: {count: 100000000000}\n", 3, "producer.count", "less than or equal"),
        ("drain_timeout: 30d\n", 3, "drain_timeout", "bad duration"),
        ("drain_timeout: 9999h\n", 3, "drain_timeout", "less than or equal"),
        (
            "faults:\n  - {kind: toxic, toxic: {type: latency, attributes: {latency: 99999999999}}}\n",
            4,
            "faults[0].toxic.attributes.latency",
            "less than or equal",
        ),
        ("faults: [" + ", ".join(["{kind: evict}"] * 300) + "]\n", 3, "faults", "at most 256"),
    ],
)
def test_every_size_and_count_has_an_upper_bound(
    tmp_path: Path, body: str, line: int, field: str, words: str
) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: big\nduration: 10s\n" + body)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{path}:{line}: {field}: "), first
    assert words in first, first


def test_a_ring_larger_than_free_shm_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("name: huge\nduration: 10s\n\nring: {slots: 65536, slot_bytes: 2GiB}\n")
    scenario = parse_scenario(path.read_text(), str(path))  # valid by itself
    [problem] = resource_problems(scenario, str(path), free=1 << 30)
    assert (problem.line, problem.field) == (4, "ring") and "1GiB free" in problem.message
    done = subprocess.run(
        [sys.executable, "-m", "chaos.cli", "run", str(path), "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{path}:4: ring: needs " in done.stderr and "/dev/shm has" in done.stderr
    assert not (tmp_path / "run").exists(), "nothing ran"
