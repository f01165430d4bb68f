"""`chaos` console script. Exit codes: 0 passed, 1 expectation failed, 2 invalid input, 3 harness error."""

from __future__ import annotations

import click

from chaos.bench.cli import bench as bench_command
from chaos.explore.cli import explore as explore_command
from chaos.proxy.cli import proxy as proxy_command
from chaos.report.cli import report as report_command
from chaos.runner.cli import replay as replay_command
from chaos.runner.cli import run as run_command
from chaos.scenario.cli import validate as validate_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slotwire")
def cli() -> None:
    """Chaos harness for the slot transport."""


cli.add_command(bench_command)
cli.add_command(explore_command)
cli.add_command(proxy_command)
cli.add_command(replay_command)
cli.add_command(report_command)
cli.add_command(run_command)
cli.add_command(validate_command)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
