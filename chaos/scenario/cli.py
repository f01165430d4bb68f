"""`chaos validate SCENARIO...`: check scenario files without running them (exit 0 valid, 2 invalid)."""

from __future__ import annotations

from pathlib import Path

import click

from chaos.scenario.errors import ScenarioError
from chaos.scenario.loader import duplicate_names, expand_paths, load_scenario
from chaos.scenario.model import Scenario

EXIT_INVALID = 2  # the CLI's "invalid input" code (DESIGN.md §3, CLI)


@click.command("validate")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Check scenario FILES (a directory means its *.yaml files); print OK or every error with its line."""
    valid: list[Scenario] = []
    failed = False
    for path in expand_paths(files):
        try:
            scenario = load_scenario(path)
        except ScenarioError as exc:
            failed = True
            click.echo(str(exc), err=True)
            continue
        valid.append(scenario)
        n = len(scenario.faults)
        click.echo(f"OK {path} ({scenario.name}, {n} fault{'' if n == 1 else 's'})")
        for warning in scenario.warnings():
            click.echo(f"warning: {path}: {warning}", err=True)
    for problem in duplicate_names(valid):
        failed = True
        click.echo(str(problem), err=True)
    if failed:
        click.get_current_context().exit(EXIT_INVALID)
