"""Which of the harness's own libraries (the `slotwire[chaos]` extra) are missing from this environment.

`pip install slotwire` installs only what a trainer needs to import `transport`; the harness's
libraries are the `chaos` extra. The list is read from the installed package's metadata, so
pyproject.toml stays the one place that names them.
"""

from __future__ import annotations

import re
from importlib import metadata

DISTRIBUTION = "slotwire"
EXTRA = "chaos"
INSTALL_HINT = f"pip install '{DISTRIBUTION}[{EXTRA}]'  (from a checkout: pip install -e '.[{EXTRA}]')"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_EXTRA_MARKER = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def extra_requirements(extra: str = EXTRA) -> list[str]:
    """Distribution names the extra asks for (empty when slotwire itself is not installed)."""
    try:
        requires = metadata.requires(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        return []
    names = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        found = _EXTRA_MARKER.search(marker)
        name = _NAME.match(spec.strip())
        if found and found.group(1) == extra and name:
            names.append(name.group(0))
    return names


def missing(extra: str = EXTRA) -> list[str]:
    """The extra's distributions that are not installed."""
    absent = []
    for name in extra_requirements(extra):
        if name == DISTRIBUTION:
            continue
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            absent.append(name)
    return absent
