"""The trainer's own consumer code as the role, judged by the same checker, on both channels.

The example trainer (examples/trainer/train.py) runs under the shipped combined-storm; the same
storm catches a planted bug in it (XACK before the fetch) as `lost`, and shows the planted code ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from chaos.history import read_history
from chaos.runner.orchestrator import Outcome, run_scenario
from chaos.scenario import Scenario, load_scenario

pytestmark = [pytest.mark.timeout(170), pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = "examples.trainer.train:consume"
PLANTED = "tests.trainer_bugs:consume_ack_first"


def storm(channel: str, entrypoint: str) -> Scenario:
    """The shipped combined-storm with the trainer's loop as the consumer role on `channel`."""
    data = load_scenario(ROOT / "scenarios" / "combined-storm.yaml").to_dict()
    data["channel"] = channel
    data["consumers"]["entrypoint"] = entrypoint
    return Scenario.from_dict(data)


def run(scenario: Scenario, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Outcome, list[Any]]:
    monkeypatch.chdir(ROOT)  # the entry points are importable from the project, as from a trainer's repo
    outcome = run_scenario(scenario, tmp_path / scenario.name)
    return outcome, read_history(outcome.run_dir).events


@pytest.mark.parametrize("channel", ["memory", "redis"])
def test_example_trainer_passes_the_storm(
    channel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome, events = run(storm(channel, EXAMPLE), tmp_path, monkeypatch)
    assert outcome.status == "passed", (outcome.error, outcome.verdict and outcome.verdict.failures)
    assert outcome.verdict is not None and outcome.verdict.counts["delivered"] > 100
    claimed = [e for e in events if e["type"] == "claimed"]
    assert claimed and outcome.verdict.latency["claim"]["count"] == len(claimed)
    assert not any(e["type"] == "mutant" for e in events)
    if channel == "redis":
        assert (outcome.run_dir / "redis" / "appendonly.aof").exists(), "the run had its own Redis"


def test_planted_ack_before_fetch_is_caught_as_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, events = run(storm("redis", PLANTED), tmp_path, monkeypatch)
    consumers = {e["proc"] for e in events if e["type"] == "mutant" and e["name"] == "ack_before_fetch"}
    assert consumers, "the planted trainer ran"
    assert outcome.status == "failed", outcome.error
    assert outcome.verdict is not None and outcome.verdict.counts["lost"] > 0
    assert any(f.startswith("lost") for f in outcome.verdict.failures), outcome.verdict.failures
    lost = outcome.verdict.anomalies["lost"][0]["key"]
    # a lost key was handed to a trainer, which acked it and never reported its payload
    assert any(e["type"] == "claimed" and e["key"] == lost for e in events)
    assert not any(e["type"] == "delivered" and e["key"] == lost for e in events)


def test_entrypoint_that_cannot_be_imported_is_a_harness_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = load_scenario(ROOT / "scenarios" / "baseline-no-faults.yaml").to_dict()
    data.update(duration=2.0, drain_timeout=3.0, deadline=30.0)
    data["consumers"].update(entrypoint="no_such_trainer_pkg.train:consume", count=1)
    data["expect"].update(min_throughput=None, max_recovery=None)
    monkeypatch.chdir(ROOT)
    outcome = run_scenario(Scenario.from_dict(data), tmp_path / "bad-entrypoint")
    assert outcome.status == "error"
    assert "no_such_trainer_pkg.train:consume" in (outcome.error or ""), outcome.error
    assert not (outcome.run_dir / "logs" / "consumer-0.log").exists(), "no process was started"
