"""Start-up hook for mutant runs: with `SLOTWIRE_MUTANT=<name>` set, patch the transport (tests only).

Python imports `sitecustomize` at start-up from the first `sys.path` entry that has one, so a test
puts this directory first on PYTHONPATH and every process it spawns (and theirs, which inherit the
environment) runs this. Without `SLOTWIRE_MUTANT` it does nothing beyond chaining: any other
`sitecustomize` further down `sys.path` (which this file shadows) is still run.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _chain() -> None:
    """Run the `sitecustomize` this one shadows, if there is one."""
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_chain()

if os.environ.get("SLOTWIRE_MUTANT"):
    if _HERE not in sys.path:
        sys.path.insert(0, _HERE)
    import mutants

    mutants.activate(os.environ["SLOTWIRE_MUTANT"])
