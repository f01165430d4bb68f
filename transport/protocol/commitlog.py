"""The commit log: which token committed which (slot, generation), so RESOLVE can answer soundly."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from transport.errors import ConfigError
from transport.protocol.frames import Resolution

__all__ = [
    "CommitLog",
]

# transport.ring.SlotState values, kept here so this module imports neither the ring nor numpy.
RING_FREE: Final = 0
RING_READY: Final = 2
RING_READING: Final = 3


class CommitLog:
    """Bounded memory of which token committed which (slot, generation), for RESOLVE.

    Soundness rule: NOT_COMMITTED is only ever answered when no commit of that read can have happened
    and none can happen later; when in doubt the answer is UNKNOWN. `lookup` relies on two facts:

    * commits of one slot happen in generation order (a generation is committed, the slot is FREE, the
      next write bumps the generation), so FIFO eviction evicts a slot's generations oldest first;
    * `observe(slot, g)` is called when this process saw (slot, g) uncommitted (READY or READING):
      any later commit of g or of a newer generation goes through this process, hence this log.

    So an absent (slot, g) was never committed iff g is at or after the slot's oldest observed
    generation ("horizon": before it the server may have been another process) and newer than every
    evicted generation of that slot. The caller must also make sure the token can no longer commit
    (`ServerRead` fences it in the ring first); otherwise a COMMIT still in flight would falsify the
    answer. Memory: `capacity` entries plus two ints per slot seen. One log per server process (and one
    server process per ring at a time), shared by all its handlers; `record` must run right after the
    ring commit with no await in between.
    """

    def __init__(self, capacity: int = 65536) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"commit log capacity={capacity!r}: must be a positive integer")
        self.capacity = capacity
        self._entries: OrderedDict[tuple[int, int], int] = OrderedDict()
        self._evicted: dict[int, int] = {}  # slot -> newest evicted generation
        self._horizon: dict[int, int] = {}  # slot -> oldest generation observed uncommitted

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, slot: int, generation: int, token: int) -> None:
        """`token` committed (slot, generation); evicts the oldest entry when full."""
        key = (slot, generation)
        self._entries[key] = token
        self._entries.move_to_end(key)
        self.observe(slot, generation)  # it was READING, hence uncommitted, just before
        while len(self._entries) > self.capacity:
            (old_slot, old_gen), _ = self._entries.popitem(last=False)
            if old_gen > self._evicted.get(old_slot, -1):
                self._evicted[old_slot] = old_gen

    def observe(self, slot: int, generation: int) -> None:
        """(slot, generation) was READY or READING (uncommitted) in this process just now."""
        if generation < self._horizon.get(slot, generation + 1):
            self._horizon[slot] = generation

    def lookup(self, slot: int, generation: int, token: int) -> Resolution:
        """COMMITTED if `token` committed it; NOT_COMMITTED if another token did, or if the log covers
        (slot, generation) and has no commit for it; UNKNOWN when the log cannot know."""
        committer = self._entries.get((slot, generation))
        if committer is not None:
            return Resolution.COMMITTED if committer == token else Resolution.NOT_COMMITTED
        if generation <= self._evicted.get(slot, -1):
            return Resolution.UNKNOWN
        if generation < self._horizon.get(slot, generation + 1):
            return Resolution.UNKNOWN
        return Resolution.NOT_COMMITTED
