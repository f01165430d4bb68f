"""`pytest scenarios/` collects each YAML scenario as a test item and judges it with the real runner."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

QUICK = """
name: {name}
seed: 3
duration: 3s
drain_timeout: 10s
deadline: 40s
ring: {{slots: 8, slot_bytes: 64KiB}}
producer: {{rate: 50/s, payload: {{min: 1KiB, max: 16KiB}}}}
server: {{ports: 2}}
consumers: {{count: 1, batch: 4, read_timeout: 1s, quarantine: 1s}}
faults: []
expect:
  faults_fired: none
  min_throughput: {throughput}
"""


@pytest.mark.timeout(150)
def test_scenarios_are_collected_and_judged(pytester: pytest.Pytester) -> None:
    scenarios = pytester.mkdir("scenarios")
    (scenarios / "quick-pass.yaml").write_text(QUICK.format(name="quick-pass", throughput="10/s"))
    (scenarios / "quick-fail.yaml").write_text(QUICK.format(name="quick-fail", throughput="100000/s"))
    (scenarios / "broken.yaml").write_text("name: broken\nduration: soon\n")
    # The plugin loads through its pytest11 entry point: no -p needed.
    result = pytester.runpytest_subprocess("scenarios", "-v", "--continue-on-collection-errors")
    result.assert_outcomes(passed=1, failed=1, errors=1)
    out = result.stdout.str()
    assert "throughput" in out and "100000" in out
    assert "reproduce: chaos run" in out and "--seed 3" in out
    assert "broken.yaml:2" in out, "a bad scenario is a collection error naming file and line"
