"""Scenario files: the YAML format a chaos run is described in, validated into normalised models.

`load_scenario(path)` / `load_scenarios(paths)` return `Scenario`s (sizes in bytes, durations in
seconds, rates per second) or raise `ScenarioError`, whose message lists `file:line: field: problem`.
"""

from chaos.scenario.errors import Problem, ScenarioError
from chaos.scenario.loader import expand_paths, load_scenario, load_scenarios, parse_scenario
from chaos.scenario.model import FAULT_KINDS, Fault, Scenario
from chaos.scenario.units import parse_duration, parse_rate, parse_size

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "Problem",
    "Scenario",
    "ScenarioError",
    "expand_paths",
    "load_scenario",
    "load_scenarios",
    "parse_duration",
    "parse_rate",
    "parse_scenario",
    "parse_size",
]
