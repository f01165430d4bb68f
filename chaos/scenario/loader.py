"""Scenario files -> `Scenario`s, with every error pointing at `file:line: field.path`.

PyYAML's plain `safe_load` forgets where values came from, so the loader composes the node tree
first, records the line of every key and sequence item under its field path, then constructs the
data from that same tree and hands it to pydantic. A pydantic error location is a field path, so
its line is the line of the longest recorded prefix (a missing field points at its parent).
Duplicate keys, which PyYAML silently resolves to the last one, are reported as errors.

Input is bounded before anything walks it: a file larger than `MAX_FILE_BYTES` is refused unread, and
a document whose node tree, with every alias expanded, exceeds `MAX_NODES` is refused before it is
constructed ("billion laughs": a few lines of nested aliases that expand to 10**9 nodes). Sizes are
counted once per distinct node (memoised), so the check itself is linear in the file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from chaos.scenario.errors import Loc, Problem, ScenarioError, format_loc, line_for, problems_from_validation
from chaos.scenario.model import Scenario
from chaos.scenario.resources import resource_problems

SCENARIO_SUFFIXES = (".yaml", ".yml")
MERGE_TAG = "tag:yaml.org,2002:merge"
MAX_FILE_BYTES = 1 << 20  # a scenario is a few KiB; a MiB is already absurd
MAX_NODES = 50_000  # YAML nodes after alias expansion (a scenario with 256 faults has ~5,000)


class _TooBig(Exception):
    """The expanded node tree passed the budget, or an alias refers to itself."""


def _expanded_size(node: yaml.Node, memo: dict[int, int], stack: set[int]) -> int:
    """Nodes in the tree below `node` with every alias expanded; memoised, so linear in the file."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in stack:
        raise _TooBig("an alias refers to a node that contains it (recursive alias)")
    stack.add(key)
    size = 1
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, stack) + _expanded_size(v, memo, stack)
            if size > MAX_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, memo, stack)
            if size > MAX_NODES:
                break
    stack.discard(key)
    if size > MAX_NODES:
        raise _TooBig(
            f"the document expands to more than {MAX_NODES} YAML nodes (aliases referring to "
            "aliases?); refused before it is built"
        )
    memo[key] = size
    return size


def _index_lines(node: yaml.Node, loc: Loc, line: int, out: dict[Loc, int], stack: set[int]) -> None:
    """Record `line` for `loc`, then the line of every key / item below it (aliases followed once)."""
    out[loc] = line
    if id(node) in stack:
        return
    stack.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                _index_lines(value, (*loc, key.value), key.start_mark.line + 1, out, stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*loc, i), item.start_mark.line + 1, out, stack)
    stack.discard(id(node))


def _duplicate_keys(node: yaml.Node, loc: Loc, stack: set[int]) -> list[tuple[Loc, int, str]]:
    """(path, line, message) for every key given twice in one mapping (`<<` merges excepted)."""
    if id(node) in stack:
        return []
    stack.add(id(node))
    found: list[tuple[Loc, int, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
                continue
            line = key.start_mark.line + 1
            if key.value in seen:
                found.append(
                    ((*loc, key.value), line, f"duplicate key (first given on line {seen[key.value]})")
                )
            else:
                seen[key.value] = line
            found += _duplicate_keys(value, (*loc, key.value), stack)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            found += _duplicate_keys(item, (*loc, i), stack)
    stack.discard(id(node))
    return found


def _compose(text: str, source: str) -> tuple[Any, dict[Loc, int], list[Problem]]:
    """Parse YAML: (data, line index, problems). Syntax errors come back as problems, never raised."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, {}, [Problem(source, 1, None, "empty file: expected a scenario mapping")]
        try:
            _expanded_size(node, {}, set())
        except _TooBig as exc:
            return None, {}, [Problem(source, node.start_mark.line + 1, None, str(exc))]
        problems = [
            Problem(source, line, format_loc(loc), msg) for loc, line, msg in _duplicate_keys(node, (), set())
        ]
        data = loader.construct_document(node)  # also resolves `<<` merges in the node tree
        lines: dict[Loc, int] = {}
        _index_lines(node, (), node.start_mark.line + 1, lines, set())
        return data, lines, problems
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        what = f"{exc.problem} ({exc.context})" if exc.context else str(exc.problem)
        return (
            None,
            {},
            [Problem(source, mark.line + 1 if mark else None, None, f"YAML syntax error: {what}")],
        )
    except yaml.YAMLError as exc:
        return None, {}, [Problem(source, None, None, f"YAML error: {exc}")]
    finally:
        loader.dispose()


def parse_scenario(text: str, source: str = "<string>") -> Scenario:
    """Validate one scenario given as YAML text; `source` is the file name used in errors."""
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError([Problem(source, None, None, f"larger than {MAX_FILE_BYTES} bytes: refused")])
    data, lines, problems = _compose(text, source)
    if not isinstance(data, dict):
        if not problems:  # no syntax error, just not a mapping
            problems.append(
                Problem(source, lines.get(()), None, "expected a scenario mapping at the top level")
            )
        raise ScenarioError(problems)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        for loc, msg in problems_from_validation(exc, Scenario):
            problems.append(Problem(source, line_for(lines, loc), format_loc(loc) or None, msg))
        raise ScenarioError(sorted(problems, key=lambda p: p.line or 0)) from None
    if problems:
        raise ScenarioError(problems)
    scenario._lines = lines
    return scenario


def load_scenario(path: str | Path) -> Scenario:
    """Load and validate one scenario file, and check that its ring fits in /dev/shm now.
    Raises `ScenarioError` (also for an unreadable or oversized file)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)  # never more, whatever the file's size
        if len(raw) > MAX_FILE_BYTES:
            raise ScenarioError(
                [Problem(str(path), None, None, f"larger than {MAX_FILE_BYTES} bytes: refused")]
            )
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([Problem(str(path), None, None, f"cannot read: {exc}")]) from None
    scenario = parse_scenario(text, str(path))
    scenario._source = path
    problems = resource_problems(scenario, str(path))
    if problems:
        raise ScenarioError(problems)
    return scenario


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given; a directory stands for its `*.yaml` / `*.yml` files, sorted by name."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix in SCENARIO_SUFFIXES and f.is_file())
        else:
            out.append(p)
    return out


def duplicate_names(scenarios: Iterable[Scenario]) -> list[Problem]:
    """Names must be unique across a run: they name report files and JUnit test cases."""
    first: dict[str, Scenario] = {}
    problems: list[Problem] = []
    for scenario in scenarios:
        other = first.setdefault(scenario.name, scenario)
        if other is not scenario:
            problems.append(
                Problem(
                    str(scenario.source or "<scenario>"),
                    scenario.line_of(("name",)),
                    "name",
                    f"duplicate scenario name {scenario.name!r} (also in {other.source or '<scenario>'})",
                )
            )
    return problems


def load_scenarios(paths: Iterable[str | Path]) -> list[Scenario]:
    """Load every file (directories expanded); all problems of all files in one `ScenarioError`."""
    scenarios: list[Scenario] = []
    problems: list[Problem] = []
    for path in expand_paths(paths):
        try:
            scenarios.append(load_scenario(path))
        except ScenarioError as exc:
            problems += exc.problems
    problems += duplicate_names(scenarios)
    if problems:
        raise ScenarioError(problems)
    return scenarios
