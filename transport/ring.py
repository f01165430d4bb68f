"""Shared-memory slot ring: the one place a payload lives between producer write and reader commit.

Every slot moves `FREE -> WRITING -> READY -> READING -> FREE` (commit) or `READING -> READY` (release).
Each transition is a compare-and-set done under a per-slot `F_OFD_SETLKW` byte-range lock on the segment
file. OFD locks belong to an open file description, so the kernel drops them when the holder dies (a
killed process can never leave a slot locked) and two descriptions exclude each other even inside one
process. Each `SharedRing` opens its own description; a `threading.Lock` makes one instance safe to share
between threads too.

The generation (+1 at every write) makes an old descriptor STALE instead of handing out a newer payload,
and the fencing token makes a late commit/release from an orphaned handler a counted no-op.

Layout: a 256-byte header, a table of 64-byte slot records (numpy structured array), then the payload
area (page aligned), one slot every `round_up(slot_bytes, 64)` bytes.

Start helper processes with `spawn`, never `fork`, while a ring is open: a forked child shares this
instance's open file description, so its locks would not exclude the parent's.

Payload views returned by `payload_view` point straight into the mapping: drop them before `close`.
If some are still alive, `close` keeps the mapping (it is freed when the last view goes) but still
closes the file and unlinks the segment.
"""

from __future__ import annotations

import enum
import fcntl
import logging
import mmap
import os
import secrets
import struct
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import psutil

from transport import futex
from transport.checksum import copy_with_checksum
from transport.errors import ConfigError, PayloadTooLargeError, RingError, RingFullError

__all__ = [
    "LAYOUT_VERSION",
    "MAGIC",
    "ReadCode",
    "ReclaimReport",
    "SharedRing",
    "SlotInfo",
    "SlotState",
    "WriteResult",
]

log = logging.getLogger(__name__)

MAGIC = b"SLOTRING"
LAYOUT_VERSION = 4  # 2: per-slot last_commit_token; 3: per-slot commit history; 4: free-slot futex
# Each slot remembers the tokens that committed its last COMMIT_HISTORY generations, in shared memory,
# so RESOLVE can answer for a read whose slot was rewritten since, even from a restarted server.
COMMIT_HISTORY = 16
HISTORY_DTYPE = np.dtype([("generation", "<u8"), ("token", "<u8")])
SHM_DIR = "/dev/shm"
HEADER_SIZE = 256
SLOT_ALIGN = 64
PAYLOAD_ALIGN = 4096
# Slot i is locked on byte [i, i+1); slots are u32, so this offset never collides with a slot.
HEADER_LOCK = 1 << 32
MAX_POLL_SLEEP = 0.001  # polling backoff cap where futexes are unavailable
# A writer waiting for a FREE slot is woken by the freer (futex); it also re-scans this often anyway.
FREE_WAIT_POLL_S = 0.05

_POLICIES = {"block": 0, "overwrite": 1}
_POLICY_NAMES = {v: k for k, v in _POLICIES.items()}

HEADER_DTYPE = np.dtype(
    {
        "names": [
            "magic",
            "version",
            "slots",
            "slot_bytes",
            "policy",
            "ring_id",
            "secret",
            "meta_offset",
            "payload_offset",
            "slot_stride",
            "total_size",
            "seq",
            "writes",
            "drops",
            "late_finalise",
            "reclaimed_reading",
            "reclaimed_writing",
            "free_word",
            "free_waiters",
            "free_target",
        ],
        "formats": ["S8", "<u4", "<u4", "<u8", "u1", ("u1", 16), ("u1", 16)] + ["<u8"] * 10 + ["<u4"] * 3,
        "offsets": [0, 8, 12, 16, 24, 32, 48, 64, 72, 80, 88, 96, 104, 112, 120, 128, 136, 144, 148, 152],
        "itemsize": HEADER_SIZE,
    }
)

META_DTYPE = np.dtype(
    {
        "names": [
            "state",
            "owner_pid",
            "generation",
            "nbytes",
            "checksum",
            "token",
            "lease_deadline",
            "seq",
            "last_commit_token",
        ],
        "formats": ["<u4", "<i4", "<u8", "<u8", "<u8", "<u8", "<f8", "<u8", "<u8"],
        "offsets": [0, 4, 8, 16, 24, 32, 40, 48, 56],
        "itemsize": 64,
    }
)

# struct flock on Linux x86_64/aarch64: short l_type, short l_whence, off_t l_start, off_t l_len,
# pid_t l_pid (must be 0 for OFD locks), padded to 32 bytes.
_FLOCK = struct.Struct("hhqqi4x")
_pack = _FLOCK.pack
_fcntl = fcntl.fcntl
_SETLKW, _SETLK, _WRLCK, _UNLCK = fcntl.F_OFD_SETLKW, fcntl.F_OFD_SETLK, fcntl.F_WRLCK, fcntl.F_UNLCK
_HEADER_WRLCK, _HEADER_UNLCK = _pack(_WRLCK, 0, HEADER_LOCK, 1, 0), _pack(_UNLCK, 0, HEADER_LOCK, 1, 0)
# Header counters, as indexes into a u64 view starting at the `seq` field (faster than field access).
_COUNTERS = ("seq", "writes", "drops", "late_finalise", "reclaimed_reading", "reclaimed_writing")
_SEQ, _WRITES, _DROPS, _LATE, _RECL_READING, _RECL_WRITING = range(len(_COUNTERS))
_STAT_NAMES = _COUNTERS[1:]
# The free-slot futex: [word, waiters, target] as u32 at the header's `free_word`. The word moves by one
# whenever a slot becomes FREE or READY again; `waiters` counts writers sleeping on it (freers skip the
# syscall without them); a freer wakes them once the word reaches `target`, i.e. once a quarter of the
# ring (WAKE_FRACTION) is free again: a full ring's writer then writes a burst per wake-up instead of
# waking for every slot (every wake-up preempts the server or the consumer on two cores).
WAKE_FRACTION = 4
_WAKE_OFFSET = 144
_U32 = 0xFFFFFFFF
# A spent target: the farthest word ahead in wrap-around order, so no freer wakes until a writer
# that goes back to sleep sets its own target again.
_NO_TARGET = (1 << 31) - 1


class SlotState(enum.IntEnum):
    FREE = 0
    WRITING = 1
    READY = 2
    READING = 3


class ReadCode(enum.IntEnum):
    OK = 0
    STALE = 1
    NOT_READY = 2
    BUSY = 3


_FREE, _WRITING, _READY, _READING = (int(s) for s in SlotState)
_STATES = tuple(SlotState)


class SlotInfo(NamedTuple):
    """A snapshot of one slot's metadata; `seq` is the global publish order (0 = never published).

    A NamedTuple: every read's CAS returns one, and a frozen dataclass cost 0.6 us more (measured).
    """

    slot: int
    state: SlotState
    generation: int
    nbytes: int
    checksum: int
    token: int
    owner_pid: int
    lease_deadline: float
    seq: int
    last_commit_token: int = 0  # token that committed this generation (0 = not committed); RESOLVE reads it


@dataclass(frozen=True)
class WriteResult:
    """What a producer publishes; `dropped` is the READY slot `overwrite` recycled (now STALE)."""

    slot: int
    generation: int
    nbytes: int
    checksum: int
    dropped: WriteResult | None = None


@dataclass(frozen=True)
class ReclaimReport:
    """Slots `reclaim` moved: `reading` READING -> READY, `writing` WRITING -> FREE."""

    reading: tuple[int, ...] = ()
    writing: tuple[int, ...] = ()

    @property
    def count(self) -> int:
        return len(self.reading) + len(self.writing)

    def __bool__(self) -> bool:
        return self.count > 0


def _before(a: int, b: int) -> bool:
    """u32 word `a` comes before `b` (wrap-around order, like TCP sequence numbers)."""
    return a != b and ((b - a) & _U32) < (1 << 31)


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


def _geometry(slots: int, slot_bytes: int) -> tuple[int, int, int, int]:
    """(meta_offset, payload_offset, slot_stride, total_size): derived, so attach can recheck them."""
    meta_offset = HEADER_SIZE
    history_end = meta_offset + slots * (META_DTYPE.itemsize + COMMIT_HISTORY * HISTORY_DTYPE.itemsize)
    payload_offset = _round_up(history_end, PAYLOAD_ALIGN)
    stride = _round_up(max(slot_bytes, 1), SLOT_ALIGN)
    return meta_offset, payload_offset, stride, payload_offset + slots * stride


def segment_bytes(slots: int, slot_bytes: int) -> int:
    """Bytes of /dev/shm a ring of this geometry reserves (checked against free space before a run)."""
    return _geometry(slots, slot_bytes)[3]


def _pid_alive(pid: int) -> bool:
    """False for a missing pid or an unreaped zombie (os.kill(pid, 0) succeeds on zombies)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True


def _default_name() -> str:
    tag = os.environ.get("SLOTWIRE_SHM_TAG") or str(os.getpid())
    return f"slotwire-{tag}-{secrets.token_hex(8)}"


def _shm_path(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ConfigError(f"invalid segment name {name!r}: must be a plain file name")
    return os.path.join(SHM_DIR, name)


def _close_segment(fd: int, path: str | None, creator_pid: int) -> None:
    """GC / interpreter-exit safety net: a forgotten creator still removes its segment (a forked
    child never does: the segment is its parent's)."""
    try:
        os.close(fd)
    except OSError:
        pass
    if path is not None and os.getpid() == creator_pid:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class SharedRing:
    """A fixed-geometry ring of payload slots in `/dev/shm`, shared by producer, server and reclaimers.

    Use `create` in the producer (it owns and unlinks the segment) and `attach` everywhere else.
    """

    name: str
    ring_id: str
    secret: bytes
    secret_hex: str
    slots: int
    slot_bytes: int
    policy: str

    def __init__(self, fd: int, path: str, name: str, owner: bool) -> None:
        """Private: map an already validated-or-initialised segment; use `create` / `attach`."""
        self._fd = fd
        self._path = path
        self.name = name
        self._owner = owner
        self._closed = False
        self._tlock = threading.Lock()
        self._cursor = 0
        size = os.fstat(fd).st_size
        if size < HEADER_SIZE:
            raise RingError(f"segment {name!r} is {size} bytes, smaller than the {HEADER_SIZE}-byte header")
        self._mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._hdr: Any = np.ndarray((), dtype=HEADER_DTYPE, buffer=self._mm, offset=0)
        self._size = size
        # Registered last: if anything above raised, the caller still owns (and closes) the fd.
        self._finaliser = weakref.finalize(self, _close_segment, fd, path if owner else None, os.getpid())

    def _bind(self) -> None:
        """Cache per-field numpy views: indexing a field view costs ~100 ns, a structured lookup more."""
        hdr = self._hdr
        self.slots = int(hdr["slots"])
        self.slot_bytes = int(hdr["slot_bytes"])
        self.policy = _POLICY_NAMES[int(hdr["policy"])]
        self.ring_id = bytes(hdr["ring_id"]).hex()
        self.secret = bytes(hdr["secret"])
        self.secret_hex = self.secret.hex()
        self._payload_offset = int(hdr["payload_offset"])
        self._stride = int(hdr["slot_stride"])
        meta = np.ndarray((self.slots,), dtype=META_DTYPE, buffer=self._mm, offset=int(hdr["meta_offset"]))
        self._meta: Any = meta
        self._state: Any = meta["state"]
        self._owner_pid: Any = meta["owner_pid"]
        self._gen: Any = meta["generation"]
        self._nbytes: Any = meta["nbytes"]
        self._csum: Any = meta["checksum"]
        self._token: Any = meta["token"]
        self._lease: Any = meta["lease_deadline"]
        self._seq: Any = meta["seq"]
        self._last_commit: Any = meta["last_commit_token"]
        history: Any = np.ndarray(
            (self.slots, COMMIT_HISTORY),
            dtype=HISTORY_DTYPE,
            buffer=self._mm,
            offset=int(hdr["meta_offset"]) + self.slots * META_DTYPE.itemsize,
        )
        self._hist_gen: Any = history["generation"]
        self._hist_token: Any = history["token"]
        self._payload: Any = np.ndarray(
            (self._size - self._payload_offset,), dtype=np.uint8, buffer=self._mm, offset=self._payload_offset
        )
        self._ctr: Any = np.ndarray(
            (len(_COUNTERS),), dtype="<u8", buffer=self._mm, offset=HEADER_DTYPE.fields["seq"][1]
        )
        self._wake: Any = np.ndarray((3,), dtype="<u4", buffer=self._mm, offset=_WAKE_OFFSET)
        self._wake_batch = max(1, self.slots // WAKE_FRACTION)
        self._wake_addr = self._wake.ctypes.data
        # This instance's free-slot waits (woken / timed out) and the wake-ups it sent; tests read them.
        self.wait_stats = {"woken": 0, "timeouts": 0, "wakes": 0}
        self._mv = memoryview(self._mm)

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def create(
        cls, slots: int, slot_bytes: int, policy: str = "block", name: str | None = None
    ) -> SharedRing:
        """Create a new segment (O_EXCL, mode 0600); its space is reserved now so a full /dev/shm fails
        here with RingError instead of SIGBUS on a later write."""
        if not isinstance(slots, int) or not 0 < slots < (1 << 32):
            raise ConfigError(f"slots must be an int in [1, 2**32), got {slots!r}")
        if not isinstance(slot_bytes, int) or slot_bytes <= 0:
            raise ConfigError(f"slot_bytes must be a positive int, got {slot_bytes!r}")
        if policy not in _POLICIES:
            raise ConfigError(f"policy must be one of {sorted(_POLICIES)}, got {policy!r}")
        name = name or _default_name()
        path = _shm_path(name)
        meta_offset, payload_offset, stride, total = _geometry(slots, slot_bytes)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except FileExistsError:
            raise RingError(f"segment {name!r} already exists") from None
        except OSError as e:
            raise RingError(f"cannot create segment {name!r}: {e}") from e
        try:
            os.fchmod(fd, 0o600)
            os.ftruncate(fd, total)
            os.posix_fallocate(fd, 0, total)
        except OSError as e:
            os.close(fd)
            os.unlink(path)
            raise RingError(f"cannot size segment {name!r} to {total} bytes: {e}") from e
        try:
            ring = cls(fd, path, name, owner=True)
        except BaseException:
            _close_segment(fd, path, os.getpid())
            raise
        hdr = ring._hdr
        hdr["version"] = LAYOUT_VERSION
        hdr["slots"] = slots
        hdr["slot_bytes"] = slot_bytes
        hdr["policy"] = _POLICIES[policy]
        hdr["ring_id"] = np.frombuffer(secrets.token_bytes(16), dtype=np.uint8)
        hdr["secret"] = np.frombuffer(secrets.token_bytes(16), dtype=np.uint8)
        hdr["meta_offset"] = meta_offset
        hdr["payload_offset"] = payload_offset
        hdr["slot_stride"] = stride
        hdr["total_size"] = total
        hdr["magic"] = MAGIC  # last: an attach racing with create sees "bad magic", never half a header
        ring._bind()
        return ring

    @classmethod
    def attach(cls, name: str) -> SharedRing:
        """Map an existing segment after checking magic, layout version and geometry."""
        path = _shm_path(name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            raise RingError(f"no segment named {name!r} in {SHM_DIR}") from None
        except OSError as e:
            raise RingError(f"cannot open segment {name!r}: {e}") from e
        try:
            ring = cls(fd, path, name, owner=False)
        except BaseException:
            _close_segment(fd, None, 0)
            raise
        try:
            ring._validate()
            ring._bind()
        except BaseException:
            ring.close()
            raise
        return ring

    def _validate(self) -> None:
        hdr = self._hdr
        magic = bytes(self._mm[0:8])
        if magic != MAGIC:
            raise RingError(f"segment {self.name!r}: bad magic {magic!r}, expected {MAGIC!r}")
        version = int(hdr["version"])
        if version != LAYOUT_VERSION:
            raise RingError(f"segment {self.name!r}: layout version {version}, expected {LAYOUT_VERSION}")
        slots, slot_bytes, policy = int(hdr["slots"]), int(hdr["slot_bytes"]), int(hdr["policy"])
        if slots <= 0 or slot_bytes <= 0:
            raise RingError(f"segment {self.name!r}: bad geometry slots={slots} slot_bytes={slot_bytes}")
        if policy not in _POLICY_NAMES:
            raise RingError(f"segment {self.name!r}: unknown policy code {policy}")
        expected = _geometry(slots, slot_bytes)
        stored = tuple(int(hdr[k]) for k in ("meta_offset", "payload_offset", "slot_stride", "total_size"))
        if stored != expected:
            raise RingError(
                f"segment {self.name!r}: geometry (meta_offset, payload_offset, slot_stride, total_size)="
                f"{stored}, expected {expected} for slots={slots} slot_bytes={slot_bytes}"
            )
        if self._size != expected[3]:
            raise RingError(
                f"segment {self.name!r}: file size {self._size}, expected {expected[3]} "
                f"for slots={slots} slot_bytes={slot_bytes}"
            )

    # ----------------------------------------------------------------------------- locking

    def _enter(self, slot: int) -> None:
        """Take the slot: this instance's thread lock, then the cross-process OFD lock."""
        self._tlock.acquire()
        try:
            _fcntl(self._fd, _SETLKW, _pack(_WRLCK, 0, slot, 1, 0))
        except BaseException:
            self._tlock.release()
            raise

    def _exit(self, slot: int) -> None:
        try:
            _fcntl(self._fd, _SETLK, _pack(_UNLCK, 0, slot, 1, 0))
        finally:
            self._tlock.release()

    def _lock_header(self) -> None:
        """The header's OFD lock (global counters and the free-slot futex words). Within one instance
        it excludes nothing: callers hold the thread lock (`_enter`, or `with self._tlock`)."""
        _fcntl(self._fd, _SETLKW, _HEADER_WRLCK)

    def _unlock_header(self) -> None:
        _fcntl(self._fd, _SETLK, _HEADER_UNLCK)

    def _bump(self, *counters: int) -> int:
        """+1 on header counters under the header lock; only call inside `_enter`. Returns the seq."""
        self._lock_header()
        try:
            ctr = self._ctr
            for c in counters:
                ctr[c] += 1
            return int(ctr[_SEQ])
        finally:
            self._unlock_header()

    def _check(self, slot: int) -> None:
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        if not 0 <= slot < self.slots:
            raise ConfigError(f"slot {slot} out of range [0, {self.slots})")

    def _info(self, slot: int) -> SlotInfo:
        state, pid, gen, nbytes, csum, token, lease, seq, last = self._meta[slot].item()
        return SlotInfo(slot, _STATES[state], gen, nbytes, csum, token, pid, lease, seq, last)

    # ----------------------------------------------------------------------------- writer

    def write(self, data: Any, timeout: float | None = None) -> WriteResult:
        """Copy `data` (bytes-like or C-contiguous numpy array, raw bytes) into a slot and publish it.

        When no slot is FREE: `block` waits until `timeout` (None = forever) then raises RingFullError;
        `overwrite` recycles the oldest READY slot (its descriptor becomes STALE) and only waits, with the
        same timeout, if every slot is being written or read. The wait sleeps until a reader frees a slot
        (a futex in the header, `_wait_freed`), so a blocked producer costs no CPU.
        """
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        try:
            src = np.frombuffer(data, dtype=np.uint8)
        except (TypeError, ValueError, BufferError) as e:
            raise ConfigError(f"write needs a C-contiguous buffer, got {type(data).__name__}: {e}") from e
        n = src.size
        if n > self.slot_bytes:
            raise PayloadTooLargeError(f"payload of {n} bytes does not fit a {self.slot_bytes}-byte slot")
        slot, gen, dropped = self._reserve(timeout)
        try:
            start = slot * self._stride
            csum = copy_with_checksum(self._payload[start : start + n], src)  # one pass over memory
        except BaseException:
            self._abort_write(slot, gen)
            raise
        self._publish(slot, gen, n, csum)
        return WriteResult(slot, gen, n, csum, dropped)

    def _reserve(self, timeout: float | None) -> tuple[int, int, WriteResult | None]:
        """FREE (or, with `overwrite`, the oldest READY) -> WRITING owned by this pid; generation += 1."""
        deadline = None if timeout is None else time.monotonic() + timeout
        overwrite = self.policy == "overwrite"
        waiting: list[float] | None = (
            None  # [word seen before the last scan, polling backoff s] once registered
        )
        try:
            while True:
                if waiting is not None:
                    waiting[0] = int(self._wake[0])  # read before the scan: a free after it changes it
                got = self._scan(overwrite)
                if got is not None:
                    return got
                if deadline is not None and time.monotonic() >= deadline:
                    raise RingFullError(
                        f"ring {self.name!r}: no FREE slot within {timeout}s ({self.slots} slots, "
                        f"{self.ready_count()} READY, policy {self.policy})"
                    )
                if waiting is None:  # register, then scan once more before the first sleep
                    self._add_waiter(1)
                    waiting = [0, 0.0]
                    continue
                # Before every sleep: wake me when a batch of slots is free (a wake-up spends the
                # target, see `_signal_freed`).
                self._set_target(int(waiting[0]))
                self._wait_freed(waiting, deadline)
        finally:
            if waiting is not None:
                self._add_waiter(-1)

    def _scan(self, overwrite: bool) -> tuple[int, int, WriteResult | None] | None:
        """One attempt to take a slot: the cursor's, any FREE one, or with `overwrite` the oldest READY."""
        while True:
            c = self._cursor
            if c < self.slots and self._state[c] == _FREE:
                got = self._take(c, _FREE, None)
                if got is not None:
                    return c, got, None
            free = np.flatnonzero(self._state == _FREE)
            if free.size:
                # Round-robin from the last slot written so slots are reused evenly, like a ring.
                i = int(free[np.searchsorted(free, self._cursor) % free.size])
                got = self._take(i, _FREE, None)
                if got is not None:
                    return i, got, None
                continue
            if overwrite:
                ready = np.flatnonzero(self._state == _READY)
                if ready.size:
                    i = int(ready[np.argmin(self._seq[ready])])
                    old = WriteResult(i, int(self._gen[i]), int(self._nbytes[i]), int(self._csum[i]))
                    got = self._take(i, _READY, old)
                    if got is not None:
                        log.debug("ring %s: overwrite dropped slot %d gen %d", self.name, i, old.generation)
                        return i, got, old
                    continue
            return None

    def _add_waiter(self, delta: int) -> None:
        """Count a writer in (+1) or out (-1) of the sleepers. The thread lock too: OFD locks of one
        open file description never exclude each other, so threads sharing this instance need it."""
        with self._tlock:
            self._lock_header()
            try:
                waiters = int(self._wake[1])
                if waiters == 0 and delta > 0:
                    self._wake[2] = self._wake[0]  # no target yet: wake at the first free
                self._wake[1] = max(0, waiters + delta)
            finally:
                self._unlock_header()

    def _set_target(self, seen: int) -> None:
        """Ask freers to wake the sleepers `_wake_batch` frees after `seen`, unless another waiter's
        target comes sooner (a writer woken early just sleeps again).

        A target the word has already reached is spent, or about to be (a freer that reached it may
        be waiting for this lock to spend it and wake): it is replaced by ours, and the sleepers that
        asked for it are woken here, since that freer will now find a target ahead and wake nobody.
        Without this a second writer could sleep on a spent target and only wake at the re-scan
        interval (found in review: two writers, a release to READY reaching the first one's target).
        """
        w = self._wake
        with self._tlock:
            self._lock_header()
            try:
                mine = (seen + self._wake_batch) & _U32
                current = int(w[2])
                reached = not _before(int(w[0]), current)
                if int(w[1]) <= 1 or reached or _before(mine, current):
                    w[2] = mine
                wake_others = reached and int(w[1]) > 1
            finally:
                self._unlock_header()
        if wake_others:
            self.wait_stats["wakes"] += 1
            if futex.AVAILABLE:
                futex.wake(self._wake_addr)

    def _wait_freed(self, waiting: list[float], deadline: float | None) -> None:
        """Sleep until the free word moves past `waiting[0]` (a slot was freed), the deadline, or the
        re-scan interval; without futexes, poll with a doubling sleep."""
        bound = FREE_WAIT_POLL_S if deadline is None else min(FREE_WAIT_POLL_S, deadline - time.monotonic())
        waiting[1] = min(MAX_POLL_SLEEP, max(50e-6, waiting[1] * 2))  # the polling backoff
        if not futex.AVAILABLE:
            time.sleep(min(bound, waiting[1]))
            return
        if futex.wait(self._wake_addr, int(waiting[0]), bound):
            self.wait_stats["woken"] += 1
        else:
            self.wait_stats["timeouts"] += 1

    def _signal_freed(self) -> None:
        """A slot became FREE or READY again: move the free word and wake writers sleeping on it.

        Called with the slot's lock held. Two freers of different slots may race on the word and lose an
        increment; it still differs from what any sleeper saw, which is all a futex wait compares.
        A wake-up spends the target (under the header lock, so it cannot undo a target a writer sets
        meanwhile): the frees between it and the woken writer's next sleep make no syscall. Before,
        every one of them woke again; measured in the live 4 KiB pipeline, those wakes were a tenth
        of the consumer's CPU, the process that bounds the rate.
        """
        w = self._wake
        word = (int(w[0]) + 1) & _U32
        w[0] = word
        if not w[1] or _before(word, int(w[2])):
            return
        self._lock_header()
        try:
            if not w[1] or _before(word, int(w[2])):
                return  # another freer spent it, or a writer asked for a later target meanwhile
            w[2] = (word + _NO_TARGET) & _U32
        finally:
            self._unlock_header()
        self.wait_stats["wakes"] += 1
        if futex.AVAILABLE:
            futex.wake(self._wake_addr)

    def _take(self, i: int, expect: int, old: WriteResult | None) -> int | None:
        """CAS `expect` -> WRITING on slot i; for a recycled READY slot, it must still be `old`."""
        self._enter(i)
        try:
            if self._state[i] != expect or (old is not None and self._gen[i] != old.generation):
                return None
            gen = int(self._gen[i]) + 1
            self._gen[i] = gen
            self._last_commit[i] = 0
            self._state[i] = _WRITING
            self._owner_pid[i] = os.getpid()
            self._token[i] = 0
            self._lease[i] = 0.0
            self._nbytes[i] = 0
            if old is not None:
                self._bump(_DROPS)
            self._cursor = (i + 1) % self.slots
            return gen
        finally:
            self._exit(i)

    def _publish(self, slot: int, gen: int, nbytes: int, csum: int) -> None:
        """WRITING(gen, our pid) -> READY with the next global seq."""
        self._enter(slot)
        try:
            mine = self._owner_pid[slot] == os.getpid()
            if self._state[slot] != _WRITING or self._gen[slot] != gen or not mine:
                raise RingError(f"ring {self.name!r}: slot {slot} gen {gen} was taken from its writer")
            self._nbytes[slot] = nbytes
            self._csum[slot] = csum
            self._seq[slot] = self._bump(_SEQ, _WRITES)
            self._owner_pid[slot] = 0
            self._state[slot] = _READY
        finally:
            self._exit(slot)

    def _abort_write(self, slot: int, gen: int) -> None:
        """A failed copy gives the slot back as FREE (the generation stays bumped, so nothing aliases)."""
        self._enter(slot)
        try:
            if self._state[slot] == _WRITING and self._gen[slot] == gen:
                self._state[slot] = _FREE
                self._owner_pid[slot] = 0
                self._signal_freed()
        finally:
            self._exit(slot)

    # ----------------------------------------------------------------------------- readers

    def begin_read(self, slot: int, generation: int, token: int, lease: float) -> tuple[ReadCode, SlotInfo]:
        """CAS READY(generation) -> READING(token); the lease bounds how long a stuck reader keeps it."""
        self._check(slot)
        self._enter(slot)
        try:
            state = self._state[slot]
            if self._gen[slot] != generation:
                code = ReadCode.STALE
            elif state == _READY:
                self._state[slot] = _READING
                self._token[slot] = token
                self._owner_pid[slot] = os.getpid()
                self._lease[slot] = time.monotonic() + lease
                code = ReadCode.OK
            elif state == _READING:
                code = ReadCode.BUSY
            else:
                code = ReadCode.NOT_READY
            return code, self._info(slot)
        finally:
            self._exit(slot)

    def begin_read_single_chunk(self, slot: int, lease: float) -> tuple[ReadCode, SlotInfo]:
        """Single-chunk protocol, kept faithful to the design it replaces: no generation, and a slot
        already READING is served again."""
        self._check(slot)
        self._enter(slot)
        try:
            if self._state[slot] in (_READY, _READING):
                self._state[slot] = _READING
                self._token[slot] = 0
                self._owner_pid[slot] = os.getpid()
                self._lease[slot] = time.monotonic() + lease
                code = ReadCode.OK
            else:
                code = ReadCode.NOT_READY
            return code, self._info(slot)
        finally:
            self._exit(slot)

    def payload_view(self, slot: int, nbytes: int) -> memoryview:
        """Zero-copy view of the first `nbytes` of a slot; release it before `close`."""
        self._check(slot)
        if not 0 <= nbytes <= self.slot_bytes:
            raise ConfigError(f"nbytes {nbytes} out of range [0, {self.slot_bytes}]")
        start = self._payload_offset + slot * self._stride
        return self._mv[start : start + nbytes]

    def commit_read(self, slot: int, generation: int, token: int) -> bool:
        """CAS READING(generation, token) -> FREE; anyone else's finalise is a counted no-op."""
        return self._finalise(slot, generation, token, _FREE, "commit")

    def release_read(self, slot: int, generation: int, token: int) -> bool:
        """CAS READING(generation, token) -> READY, so another reader can take the payload."""
        return self._finalise(slot, generation, token, _READY, "release")

    def _finalise(self, slot: int, generation: int, token: int, to: int, what: str) -> bool:
        self._check(slot)
        self._enter(slot)
        try:
            if self._state[slot] == _READING and self._gen[slot] == generation and self._token[slot] == token:
                self._state[slot] = to
                if to == _FREE:
                    self._last_commit[slot] = token
                    self._hist_gen[slot, generation % COMMIT_HISTORY] = generation
                    self._hist_token[slot, generation % COMMIT_HISTORY] = token
                self._token[slot] = 0
                self._owner_pid[slot] = 0
                self._lease[slot] = 0.0
                self._signal_freed()
                return True
            self._bump(_LATE)
            log.debug(
                "ring %s: late %s ignored: slot %d gen %d token %#x, slot is %s gen %d token %#x",
                self.name,
                what,
                slot,
                generation,
                token,
                _STATES[self._state[slot]].name,
                self._gen[slot],
                self._token[slot],
            )
            return False
        finally:
            self._exit(slot)

    def finalise_single_chunk(self, slot: int) -> bool:
        """Single-chunk: READING -> FREE on send completion, no token check (the bug it demonstrates)."""
        self._check(slot)
        self._enter(slot)
        try:
            if self._state[slot] == _READING:
                self._state[slot] = _FREE
                self._token[slot] = 0
                self._owner_pid[slot] = 0
                self._lease[slot] = 0.0
                self._signal_freed()
                return True
            self._bump(_LATE)
            log.debug("ring %s: late single-chunk finalise ignored: slot %d is not READING", self.name, slot)
            return False
        finally:
            self._exit(slot)

    # ----------------------------------------------------------------------------- inspection

    def ready_count(self) -> int:
        """Number of READY slots (an unlocked scan: exact when the ring is quiescent)."""
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        return int(np.count_nonzero(self._state == _READY))

    def info(self, slot: int) -> SlotInfo:
        self._check(slot)
        self._enter(slot)
        try:
            return self._info(slot)
        finally:
            self._exit(slot)

    def committed_token(self, slot: int, generation: int) -> int:
        """The token that committed (slot, generation), or 0 if not known: never committed, or older
        than the slot's last COMMIT_HISTORY generations."""
        self._check(slot)
        i = generation % COMMIT_HISTORY
        self._enter(slot)
        try:
            if int(self._hist_gen[slot, i]) == generation:
                return int(self._hist_token[slot, i])
            return 0
        finally:
            self._exit(slot)

    def snapshot(self) -> list[SlotInfo]:
        """Every slot's metadata; each record is consistent, the list as a whole is not atomic."""
        return [self.info(i) for i in range(self.slots)]

    def stats(self) -> dict[str, int]:
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        ctr = self._ctr.tolist()
        return {key: ctr[_COUNTERS.index(key)] for key in _STAT_NAMES}

    # ----------------------------------------------------------------------------- crash recovery

    def reclaim(self) -> ReclaimReport:
        """READING with a dead owner or an expired lease -> READY; WRITING with a dead writer -> FREE.

        A reclaimed reader's later commit/release then fails its token check and is a no-op.
        """
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        busy = np.flatnonzero((self._state == _READING) | (self._state == _WRITING))
        reading: list[int] = []
        writing: list[int] = []
        for i in busy.tolist():
            self._enter(i)
            try:
                state, pid = int(self._state[i]), int(self._owner_pid[i])
                if state == _READING:
                    expired = time.monotonic() >= self._lease[i]
                    if expired or not _pid_alive(pid):
                        log.info(
                            "ring %s: reclaimed READING slot %d gen %d (owner pid %d %s)",
                            self.name,
                            i,
                            self._gen[i],
                            pid,
                            "lease expired" if expired else "dead",
                        )
                        self._state[i] = _READY
                        self._token[i] = 0
                        self._owner_pid[i] = 0
                        self._lease[i] = 0.0
                        self._bump(_RECL_READING)
                        self._signal_freed()
                        reading.append(i)
                elif state == _WRITING and not _pid_alive(pid):
                    log.info("ring %s: reclaimed WRITING slot %d (writer pid %d dead)", self.name, i, pid)
                    self._state[i] = _FREE
                    self._owner_pid[i] = 0
                    self._nbytes[i] = 0
                    self._bump(_RECL_WRITING)
                    self._signal_freed()
                    writing.append(i)
            finally:
                self._exit(i)
        return ReclaimReport(tuple(reading), tuple(writing))

    # ----------------------------------------------------------------------------- lifetime

    def close(self) -> None:
        """Unmap and close; the creator also unlinks. Never raises because a payload view is alive."""
        if self._closed:
            return
        self._closed = True
        for attr in (
            "_hdr",
            "_meta",
            "_state",
            "_owner_pid",
            "_gen",
            "_nbytes",
            "_csum",
            "_token",
            "_lease",
            "_seq",
            "_payload",
            "_ctr",
            "_wake",
        ):
            self.__dict__.pop(attr, None)
        mv = self.__dict__.pop("_mv", None)
        if mv is not None:
            mv.release()  # succeeds even while slices of it live; they keep the mmap exported
        try:
            self._mm.close()
        except BufferError:
            log.warning("ring %s: payload views still alive at close; mapping kept until they go", self.name)
        self._finaliser.detach()
        _close_segment(self._fd, self._path if self._owner else None, os.getpid())

    def unlink(self) -> None:
        """Remove the segment name (idempotent); mappings that exist stay valid."""
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> SharedRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.slots}x{self.slot_bytes}B {self.policy}"
        return f"SharedRing({self.name!r}, {state})"
