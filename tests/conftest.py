"""Shared test setup: UCX environment for every process, and a guard against leaked segments."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("UCX_NET_DEVICES", "lo")
os.environ.setdefault("UCX_TCP_CM_REUSEADDR", "y")
os.environ.setdefault("UCX_WARN_UNUSED_ENV_VARS", "n")

SHM = Path("/dev/shm")


# Segments are named `slotwire-<SLOTWIRE_SHM_TAG>-...`; spawned children inherit the tag, so each xdist
# worker checks only the segments its own tests (and their child processes) created.
TAG = f"t{os.getpid()}"
os.environ["SLOTWIRE_SHM_TAG"] = TAG


def _sweep_dead_workers() -> list[str]:
    """Remove segments of test processes that no longer run.

    The per-test guard below unlinks what a test leaves, but a worker killed outright (a hard timeout, a
    SIGKILL from an impatient `timeout`) never reaches it; its `t<pid>` tag says whose they were.
    """
    removed = []
    for path in SHM.glob("slotwire-t*-*"):
        owner = path.name.split("-")[1][1:]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


_sweep_dead_workers()


def _segments() -> set[str]:
    return {p.name for p in SHM.glob(f"slotwire-{TAG}-*")}


@pytest.fixture(autouse=True)
def no_leaked_segments() -> Iterator[None]:
    """Fail a test that leaves a `slotwire-*` segment it created in /dev/shm."""
    before = _segments()
    yield
    leaked = _segments() - before
    for name in leaked:
        (SHM / name).unlink(missing_ok=True)
    assert not leaked, f"test leaked shared-memory segments: {sorted(leaked)}"
