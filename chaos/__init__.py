"""Chaos harness: per-port fault injection and an exactly-once checker for the slot transport.

`chaos.world("scenario.yaml")` (see `chaos.testing`) is the entry point for a trainer's own tests;
it is imported on first use, so `import chaos` stays cheap.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name in ("world", "ChaosWorld", "ChaosVerdictError"):
        from chaos import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'chaos' has no attribute {name!r}")
