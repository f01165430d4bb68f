"""The `chaos` console script's entry: says what to install when the harness's extra is missing.

`chaos.cli` imports click and the rest of the harness at module level, so a console script pointing
there would die with a bare ImportError in an environment that has only `pip install slotwire`.
"""

from __future__ import annotations

import sys

from chaos.extra import INSTALL_HINT, missing

EXIT_HARNESS_ERROR = 3  # the run could not start: same code as any other harness error


def main() -> None:
    absent = missing()
    if absent:
        names = ", ".join(absent)
        print(
            f"chaos: the harness needs the 'chaos' extra; missing: {names}\n  install: {INSTALL_HINT}",
            file=sys.stderr,
        )
        sys.exit(EXIT_HARNESS_ERROR)
    try:
        from chaos.cli import main as cli_main
    except ModuleNotFoundError as exc:  # an extra installed but broken, or not from metadata
        print(f"chaos: cannot import {exc.name!r}\n  install: {INSTALL_HINT}", file=sys.stderr)
        sys.exit(EXIT_HARNESS_ERROR)
    cli_main()


if __name__ == "__main__":
    main()
