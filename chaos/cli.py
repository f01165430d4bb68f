"""`chaos` console script. Exit codes: 0 passed, 1 expectation failed, 2 invalid input, 3 harness error."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="slotwire")
def cli() -> None:
    """Chaos harness for the slot transport."""


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
