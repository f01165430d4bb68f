"""`chaos.world` and the `chaos_world` fixture used exactly as a trainer's repository uses them: a
project of its own in a tmp dir (outside this repository), importing the installed `transport` and
`chaos`, run by pytest in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(170)
ROOT = Path(__file__).resolve().parents[1]

SCENARIO = """
name: my-packer-resets
seed: 3
duration: 60s
protocol: commit
ring: {slots: 64, slot_bytes: 64KiB, policy: block}
server: {ports: 3}
consumers: {count: 1, batch: 8, read_timeout: 1s, quarantine: 1s, max_attempts: 4, rounds: 3}
faults:
  - {kind: reset, ports: [0, 1], probability: 0.3, phase: payload}
  - {kind: kill, target: server, at: 5s}
expect:
  faults_fired: all
  min_throughput: 1000/s
"""

PACKER = '''
"""The trainer's own packer: fetch a batch of descriptors with the library's retry rounds."""
import asyncio

from transport import DataPackerMixin


class MyPacker(DataPackerMixin):
    def __init__(self, slot_client, drop_last=False):
        self.slot_client = slot_client
        self.drop_last = drop_last

    def fetch(self, descriptors):
        batch = asyncio.run(self.fetch_slots(descriptors))
        if self.drop_last:  # a packer bug: the last payload of every batch never reaches training
            batch.payloads[-1] = None
        return batch
'''

TESTS = """
import asyncio

import numpy as np
import pytest

import chaos
from mypacker import MyPacker


def rollouts(n):
    return [np.full(1000 + i, i % 251, dtype=np.uint8) for i in range(n)]


async def fetch(world, descriptors, drop_last=False):
    consumer = world.async_consumer()
    try:
        packer = MyPacker(consumer.client, drop_last)
        return await packer.fetch_slots(descriptors), packer
    finally:
        await consumer.close()


@pytest.mark.chaos_scenario("scenarios/my-packer-resets.yaml")
def test_my_packer_delivers_every_rollout(chaos_world):
    descriptors = [chaos_world.publish(r) for r in rollouts(40)]
    batch, _ = asyncio.run(fetch(chaos_world, descriptors))
    chaos_world.record(descriptors, batch)


@pytest.mark.chaos_scenario("scenarios/my-packer-resets.yaml")
def test_my_buggy_packer(chaos_world):
    descriptors = [chaos_world.publish(r) for r in rollouts(40)]
    batch, _ = asyncio.run(fetch(chaos_world, descriptors))
    batch.payloads[-1] = None  # the bug: one rollout dropped on the floor
    chaos_world.record(descriptors, batch)


def test_context_manager(tmp_path):
    with chaos.world("scenarios/my-packer-resets.yaml", run_dir=tmp_path / "w") as world:
        descriptors = [world.publish(r) for r in rollouts(20)]
        consumer = world.consumer()
        batch = consumer.get_many(descriptors)
        world.record(descriptors, batch)
    assert world.verdict.passed, world.explain()
    assert world.verdict.counts["delivered"] == 20
    assert any(n.startswith("fault 1 (kill) left out") for n in world.notes)
    fired = {f["index"] for f in world.verdict.faults_fired}
    assert fired == {0}, "the reset fired in the server the world started"
"""


def test_fixture_and_context_manager_in_a_trainers_own_project(tmp_path: Path) -> None:
    project = tmp_path / "trainer-repo"
    (project / "scenarios").mkdir(parents=True)
    (project / "scenarios" / "my-packer-resets.yaml").write_text(SCENARIO)
    (project / "mypacker.py").write_text(PACKER)
    (project / "tests").mkdir()
    (project / "tests" / "test_packer.py").write_text(TESTS)
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
    env["PYTHONPATH"] = str(project)  # the trainer's own code; slotwire comes from the environment
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", f"--junitxml={report}"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=160,
    )
    out = proc.stdout + proc.stderr
    assert str(ROOT) not in env["PYTHONPATH"] and not (project / "chaos").exists()
    assert "1 failed, 2 passed" in out, out[-4000:]
    assert "PASSED tests/test_packer.py::test_my_packer_delivers_every_rollout" in out, out[-4000:]
    assert "PASSED tests/test_packer.py::test_context_manager" in out, out[-4000:]
    assert "FAILED tests/test_packer.py::test_my_buggy_packer" in out, out[-4000:]
    assert "lost: 1 > 0 (slots 39:1)" in out, out[-4000:]  # the last rollout, named by its slot
    assert proc.returncode == 1
