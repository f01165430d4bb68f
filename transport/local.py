"""Same-host path: read a slot straight from the producer's shared segment, no UCX, no server hop.

A consumer on the producer's host (same kernel boot id, and the segment named by the descriptor can
be opened) takes the slot with the ring's own fenced transitions: `begin_read(slot, generation, token,
lease)` -> copy (or lend a view) -> `commit_read(token)`; any failure before the commit releases the
slot (`release_read`), and a reader that dies or outlives its lease is reclaimed by the server's
`ring.reclaim()` like any remote read. So generations, fencing tokens and leases mean exactly what
they mean over UCX, and the harness's checker judges both paths with the same invariants.

Access: on one host the segment's 0600 mode is the boundary (only the producer's user can open it);
the descriptor's per-slot capability is still checked (against the key in the segment's header), so
a descriptor for another slot, generation or ring, or a forged one, is refused as the server refuses it.

No checksum pass on this path: the bytes never cross a wire (the writer hashed them in place and the
slot cannot change while READING). The ring's size and checksum must still match the descriptor.
"""

from __future__ import annotations

import hmac
import logging
import time
from functools import cache

import numpy as np

from transport.descriptor import SlotDescriptor
from transport.errors import (
    BusyError,
    ConfigError,
    LeaseExpiredError,
    NotReadyError,
    ProtocolError,
    RingError,
    StaleSlotError,
    TransportError,
    UnauthorizedError,
)
from transport.events import EventSink, NullSink
from transport.protocol import RingKey, new_token
from transport.ring import ReadCode, SharedRing

log = logging.getLogger(__name__)

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
# How long a failed attach is remembered: a segment that cannot be opened is not retried per read.
NEGATIVE_TTL_S = 5.0

_CODE_ERRORS: dict[int, type[TransportError]] = {
    ReadCode.STALE: StaleSlotError,
    ReadCode.NOT_READY: NotReadyError,
    ReadCode.BUSY: BusyError,
}


@cache
def boot_id() -> str:
    """This kernel's boot id: two processes with the same one share /dev/shm's machine."""
    try:
        with open(BOOT_ID_PATH) as f:
            return f.read().strip()
    except OSError:
        return ""


class LocalReader:
    """Reads descriptors whose ring lives on this host; one per consumer (rings are attached lazily).

    `lease` bounds how long one local read (or one `borrow`) may hold its slot: past it the server's
    reclaim hands the slot to another reader and this read's commit is refused (LeaseExpiredError).
    """

    def __init__(self, lease: float = 30.0, events: EventSink | None = None) -> None:
        if not lease > 0:
            raise ConfigError(f"lease={lease!r}: must be > 0 seconds")
        self.lease = lease
        self.events = events or NullSink()
        self.reads = 0
        self._rings: dict[str, SharedRing] = {}
        self._keys: dict[str, RingKey] = {}  # segment -> the ring's key, read from its header
        self._unreachable: dict[str, float] = {}  # segment -> monotonic time to retry attaching

    # -- which descriptors are local ----------------------------------------------------------------

    def ring_for(self, desc: SlotDescriptor) -> SharedRing | None:
        """The attached ring `desc` names, or None when the descriptor is not for this host."""
        segment = desc.segment
        if not segment or desc.boot_id != boot_id():
            return None
        ring = self._rings.get(segment)
        if ring is not None and not ring.closed:
            return ring if ring.ring_id == desc.ring_id else None
        if self._unreachable.get(segment, 0.0) > time.monotonic():
            return None
        try:
            ring = SharedRing.attach(segment)
        except (RingError, ConfigError) as exc:
            log.info("same-host path off for segment %s: %s", segment, exc)
            self._unreachable[segment] = time.monotonic() + NEGATIVE_TTL_S
            return None
        self._rings[segment] = ring
        return ring if ring.ring_id == desc.ring_id else None

    # -- reads ---------------------------------------------------------------------------------------

    def read(self, ring: SharedRing, desc: SlotDescriptor, out: np.ndarray | None = None) -> np.ndarray:
        """Copy the slot into `out` (or a new array) and commit; raises a TransportError otherwise."""
        return self.read_committed(ring, desc, out)[1]

    def read_committed(
        self, ring: SharedRing, desc: SlotDescriptor, out: np.ndarray | None = None
    ) -> tuple[int, np.ndarray]:
        """`read`, also returning the token that committed it (the history names a delivery by it)."""
        token = self._begin(ring, desc)
        try:
            payload = np.empty(desc.nbytes, dtype=np.uint8) if out is None else _check_out(out, desc.nbytes)
            payload.data[:] = ring.payload_view(desc.slot, desc.nbytes)  # one memcpy, no array view
        except BaseException:
            self.end(ring, desc, token, commit=False)
            raise
        self.end(ring, desc, token, commit=True)
        return token, payload

    def borrow(self, ring: SharedRing, desc: SlotDescriptor) -> Borrow:
        """A context manager lending a read-only view of the slot; committed on clean exit, released
        on an exception. The view points into the ring: do not keep it past the block."""
        return Borrow(self, ring, desc)

    def _admits(self, ring: SharedRing, desc: SlotDescriptor) -> bool:
        """The descriptor's capability is the one the ring key issues for (slot, generation)."""
        key = self._keys.get(ring.name)
        if key is None:
            key = self._keys[ring.name] = RingKey(ring.secret, ring.ring_id)
        try:
            given = bytes.fromhex(desc.capability)
            expected = key.capability(desc.slot, desc.generation)
        except (ValueError, ConfigError):  # not hex, or a slot/generation no capability can name
            return False
        return hmac.compare_digest(given, expected)

    def begin(self, ring: SharedRing, desc: SlotDescriptor) -> tuple[int, np.ndarray]:
        """begin_read with a fresh token -> (token, read-only view of the payload); the caller owes
        exactly one `end` for it."""
        token = self._begin(ring, desc)
        # A read-only array straight from a read-only view (setting `flags.writeable` costs more).
        return token, np.frombuffer(ring.payload_view(desc.slot, desc.nbytes).toreadonly(), dtype=np.uint8)

    def _begin(self, ring: SharedRing, desc: SlotDescriptor) -> int:
        """Check the capability, begin_read with a fresh token, check size and checksum: the token."""
        if not self._admits(ring, desc):
            raise UnauthorizedError(f"{desc.key}: capability does not open this slot of ring {ring.ring_id}")
        token = new_token()
        code, info = ring.begin_read(desc.slot, desc.generation, token, self.lease)
        if code != ReadCode.OK:
            raise _CODE_ERRORS[code](f"{desc.key}: {ReadCode(code).name} (same-host read)")
        events = self.events
        if type(events) is not NullSink:  # building the event costs ~1 us per read on this path
            events.emit(
                "served", key=desc.key, port=None, token=token, protocol="commit", requested=desc.generation
            )
        if (info.nbytes, info.checksum) != (desc.nbytes, desc.checksum):
            ring.release_read(desc.slot, desc.generation, token)
            raise ProtocolError(
                f"{desc.key}: ring holds {info.nbytes} bytes / checksum {info.checksum:#x}, "
                f"the descriptor {desc.nbytes} / {desc.checksum:#x}"
            )
        return token

    def end(self, ring: SharedRing, desc: SlotDescriptor, token: int, commit: bool) -> None:
        """commit_read (LeaseExpiredError if the token lost the slot meanwhile) or release_read."""
        if not commit:
            ring.release_read(desc.slot, desc.generation, token)
            return
        if not ring.commit_read(desc.slot, desc.generation, token):
            raise LeaseExpiredError(
                f"{desc.key}: the read outlived its {self.lease:g}s lease and was reclaimed; "
                "not committed, the slot may be delivered to another reader"
            )
        self.reads += 1
        events = self.events
        if type(events) is not NullSink:
            events.emit("committed", key=desc.key, port=None, token=token)

    def close(self) -> None:
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()


def _check_out(out: np.ndarray, nbytes: int) -> np.ndarray:
    flags = out.flags
    if out.dtype != np.uint8 or out.ndim != 1 or out.nbytes < nbytes or not flags.c_contiguous:
        raise ConfigError(f"out: need a contiguous 1-d uint8 array of at least {nbytes} bytes")
    if not flags.writeable:
        raise ConfigError("out: the array is read-only")
    return out[:nbytes]


class Borrow:
    """`with reader.borrow(ring, desc) as view:` (a class, not @contextmanager: a borrow is on the
    4 KiB hot path and a generator-based manager costs several microseconds more)."""

    __slots__ = ("_desc", "_reader", "_ring", "_token")

    def __init__(self, reader: LocalReader, ring: SharedRing, desc: SlotDescriptor) -> None:
        self._reader, self._ring, self._desc = reader, ring, desc
        self._token = 0

    def __enter__(self) -> np.ndarray:
        self._token, view = self._reader.begin(self._ring, self._desc)
        return view

    @property
    def token(self) -> int:
        """The fencing token of this borrow's read (0 before `__enter__`)."""
        return self._token

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._reader.end(self._ring, self._desc, self._token, commit=exc_type is None)
