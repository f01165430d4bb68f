"""Checks of a valid scenario against this machine: does its ring fit in /dev/shm right now?

Kept apart from the model, which stays a pure function of the file: the same scenario can be valid
on a CI box and too big on a laptop. Run at load time, so a ring that cannot be created is bad input
(exit 2) before anything starts, instead of a harness error (exit 3) minutes into a run.
"""

from __future__ import annotations

import os

from chaos.scenario.errors import Problem
from chaos.scenario.model import Scenario
from chaos.scenario.units import format_size
from transport.ring import segment_bytes

SHM_DIR = "/dev/shm"


def free_shm_bytes(path: str = SHM_DIR) -> int | None:
    """Bytes an unprivileged process may still allocate there (None if it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def resource_problems(scenario: Scenario, source: str, free: int | None = None) -> list[Problem]:
    """A problem at `ring` if the ring's segment is larger than the free space of /dev/shm."""
    free = free_shm_bytes() if free is None else free
    need = segment_bytes(scenario.ring.slots, scenario.ring.slot_bytes)
    if free is None or need <= free:
        return []
    return [
        Problem(
            source,
            scenario.line_of(("ring",)),
            "ring",
            f"needs {format_size(need)} of shared memory ({scenario.ring.slots} slots of "
            f"{format_size(scenario.ring.slot_bytes)}), {SHM_DIR} has {format_size(free)} free",
        )
    ]
