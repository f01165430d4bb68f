"""The harness's descriptor channel: at-least-once, like one Redis Streams consumer group.

Semantics (`DescriptorQueue`, the pure core):
- `publish(descriptor)` appends one entry per copy the control faults ask for (normally one); an
  entry is claimable from `publish time + delay`.
- `claim(consumer, n)` hands out up to `n` claimable entries in publish order and records the
  consumer as owner (Redis: XREADGROUP, the entry enters the consumer's pending list).
- `ack(consumer, keys)` deletes the entries with those descriptor keys the consumer owns, or owned
  last before they were returned for redelivery (XACK). An acked entry is never handed out again.
- Un-acked entries go back to the front of the line, with `delivery` + 1, when the runner reports
  the consumer dead (`consumer_died`) or the claim is older than `visibility_timeout` (XAUTOCLAIM).
- Copies made by `duplicate_descriptor` are handed to a consumer that holds no other copy, unless
  they wait longer than `twin_grace` (so a run with one consumer still drains).
Every descriptor is delivered at least once while some consumer keeps claiming, so a slot that is
lost is the transport's fault, never the channel's. Duplicates are expected; the transport must
turn them into one delivery.

Sharing across processes (`ChannelServer`): the runner process owns the queue and serves it from a
thread; every other process (spawn context) gets a `ChannelClient`, one end of a `multiprocessing`
Pipe, as a `Process` argument. No Manager process, nothing to leak: closing the server ends it.

If the serving thread fails (a bug in the queue, a broken pipe it did not expect), it records the
error in `ChannelServer.error`, closes every client pipe (clients then get `ChannelClosedError` at
once instead of waiting out their timeout) and stops. `check()` raises `ChannelFailedError`, which
the runner turns into a harness error (exit 3): slots the channel failed to hand out are the
harness's fault, and must never be counted as lost by the transport.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import threading
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from chaos.faults.base import Clock
from chaos.faults.control import ControlFaults, Handout

SPAWN = multiprocessing.get_context("spawn")


class ChannelClosedError(ConnectionError):
    """The channel server is gone (stopped, or the runner died)."""


class ChannelFailedError(RuntimeError):
    """The channel's serving thread died; `__cause__` is what killed it."""


def descriptor_key(descriptor: dict[str, Any]) -> str:
    """`slot:generation`, the same identity as `SlotDescriptor.key`."""
    return f"{descriptor['slot']}:{descriptor['generation']}"


@dataclass(frozen=True)
class Delivery:
    """One handout: `delivery` counts how often this entry was handed out (1 = first time)."""

    id: int
    key: str
    descriptor: dict[str, Any]
    delivery: int
    duplicate: bool


@dataclass
class _Entry:
    id: int
    key: str
    descriptor: dict[str, Any]
    group: int  # id of the original entry: copies of one publish share it
    visible_at: float
    duplicate: bool
    owner: str | None = None
    last_owner: str | None = None
    claimed_at: float = 0.0
    deliveries: int = 0


@dataclass
class ChannelStats:
    published: int = 0
    entries: int = 0
    handed_out: int = 0
    acked: int = 0
    redelivered: int = 0
    duplicated: int = 0
    delayed: int = 0
    pending: int = 0
    in_flight: int = 0


class DescriptorQueue:
    """The in-process core; not thread-safe (the server serialises access)."""

    def __init__(
        self,
        *,
        visibility_timeout: float = 30.0,
        twin_grace: float = 2.0,
        control: ControlFaults | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.visibility_timeout = visibility_timeout
        self.twin_grace = twin_grace
        self.control = control
        self.clock = clock
        self._next_id = 1
        self._pending: list[_Entry] = []  # claimable or delayed, in handout order
        self._in_flight: dict[int, _Entry] = {}
        self._group_owners: dict[int, set[str]] = {}  # duplicated groups -> consumers given a copy
        self.stats = ChannelStats()

    def publish(self, descriptor: dict[str, Any], now: float | None = None) -> list[int]:
        now = self.clock() if now is None else now
        key = descriptor_key(descriptor)
        handout = self.control.decide(key, now) if self.control is not None else Handout()
        ids: list[int] = []
        for i, delay in enumerate(handout.delays):
            entry = _Entry(
                id=self._next_id,
                key=key,
                descriptor=descriptor,
                group=ids[0] if ids else self._next_id,
                visible_at=now + delay,
                duplicate=i > 0,
            )
            self._next_id += 1
            ids.append(entry.id)
            self._pending.append(entry)
        if handout.copies > 1:
            self._group_owners[ids[0]] = set()
            self.stats.duplicated += handout.copies - 1
        if handout.delays[0] > 0:
            self.stats.delayed += 1
        self.stats.published += 1
        self.stats.entries += len(ids)
        return ids

    def _claimable(self, entry: _Entry, consumer: str, now: float) -> bool:
        if entry.visible_at > now:
            return False
        owners = self._group_owners.get(entry.group)
        return not owners or consumer not in owners or now >= entry.visible_at + self.twin_grace

    def claim(self, consumer: str, n: int = 1, now: float | None = None) -> list[Delivery]:
        """Up to `n` claimable entries (non-blocking)."""
        now = self.clock() if now is None else now
        self.expire(now)
        out: list[Delivery] = []
        keep: list[_Entry] = []
        for entry in self._pending:
            if len(out) < n and self._claimable(entry, consumer, now):
                entry.owner = consumer
                entry.claimed_at = now
                entry.deliveries += 1
                if entry.deliveries > 1:
                    self.stats.redelivered += 1
                owners = self._group_owners.get(entry.group)
                if owners is not None:
                    owners.add(consumer)
                self._in_flight[entry.id] = entry
                out.append(Delivery(entry.id, entry.key, entry.descriptor, entry.deliveries, entry.duplicate))
            else:
                keep.append(entry)
        self._pending = keep
        self.stats.handed_out += len(out)
        return out

    def ack(self, consumer: str, keys: Iterable[str]) -> int:
        keys = set(keys)
        done = [e.id for e in self._in_flight.values() if e.owner == consumer and e.key in keys]
        for entry_id in done:
            self._forget(self._in_flight.pop(entry_id))
        returned = [e for e in self._pending if e.last_owner == consumer and e.key in keys]
        if returned:
            gone = {e.id for e in returned}
            self._pending = [e for e in self._pending if e.id not in gone]
            for entry in returned:
                self._forget(entry)
        acked = len(done) + len(returned)
        self.stats.acked += acked
        return acked

    def _forget(self, entry: _Entry) -> None:
        group = entry.group
        if group in self._group_owners and not any(
            e.group == group for e in (*self._pending, *self._in_flight.values())
        ):
            del self._group_owners[group]

    def _return(self, entries: list[_Entry]) -> None:
        for entry in entries:
            del self._in_flight[entry.id]
            entry.last_owner, entry.owner = entry.owner, None
        self._pending[:0] = sorted(entries, key=lambda e: e.id)

    def nack(self, consumer: str, keys: Iterable[str]) -> int:
        """The consumer gives these back unprocessed (its reads failed): redeliver them now rather
        than after the visibility timeout (Redis: XCLAIM back to the group). Returns how many."""
        keys = set(keys)
        entries = [e for e in self._in_flight.values() if e.owner == consumer and e.key in keys]
        self._return(entries)
        return len(entries)

    def unclaim(self, ids: Iterable[int]) -> None:
        """Take back a handout that never reached its consumer (its pipe broke)."""
        entries = [self._in_flight[i] for i in ids if i in self._in_flight]
        for entry in entries:
            entry.deliveries -= 1
            if entry.deliveries:
                self.stats.redelivered -= 1
        self.stats.handed_out -= len(entries)
        self._return(entries)

    def consumer_died(self, consumer: str) -> int:
        """Return every entry the consumer holds for redelivery; how many."""
        entries = [e for e in self._in_flight.values() if e.owner == consumer]
        self._return(entries)
        return len(entries)

    def expire(self, now: float | None = None) -> int:
        """Return claims older than the visibility timeout; how many."""
        now = self.clock() if now is None else now
        limit = now - self.visibility_timeout
        entries = [e for e in self._in_flight.values() if e.claimed_at <= limit]
        self._return(entries)
        return len(entries)

    def release_held(self, now: float | None = None) -> None:
        """Make every delayed entry claimable now (at heal: the drain must not wait for holds)."""
        now = self.clock() if now is None else now
        for entry in self._pending:
            entry.visible_at = min(entry.visible_at, now)

    def heal(self) -> None:
        if self.control is not None:
            self.control.heal()
        self.release_held()

    def snapshot(self) -> ChannelStats:
        return replace(self.stats, pending=len(self._pending), in_flight=len(self._in_flight))

    def empty(self) -> bool:
        return not self._pending and not self._in_flight


# -- cross-process sharing ----------------------------------------------------------------------


class ChannelClient:
    """One process's end of the channel (picklable to a spawned child; one thread at a time)."""

    def __init__(self, name: str, conn: multiprocessing.connection.Connection, rpc_timeout: float) -> None:
        self.name = name
        self.conn = conn
        self.rpc_timeout = rpc_timeout

    def _call(self, *request: Any, wait: float = 0.0) -> Any:
        try:
            self.conn.send(request)
            if not self.conn.poll(wait + self.rpc_timeout):
                raise ChannelClosedError(
                    f"channel: no answer to {request[0]} within {wait + self.rpc_timeout}s"
                )
            value = self.conn.recv()
        except (EOFError, OSError) as exc:
            raise ChannelClosedError(f"channel closed: {exc!r}") from exc
        if isinstance(value, Exception):
            raise value
        return value

    def publish(self, descriptor: dict[str, Any]) -> list[int]:
        return self._call("publish", descriptor)

    def claim(self, n: int = 1, timeout: float = 1.0) -> list[Delivery]:
        """Up to `n` descriptors; waits up to `timeout` for the first one, [] if none came."""
        return self._call("claim", n, timeout, wait=timeout)

    def ack(self, keys: Iterable[str]) -> int:
        return self._call("ack", list(keys))

    def nack(self, keys: Iterable[str]) -> int:
        return self._call("nack", list(keys))

    def close(self) -> None:
        self.conn.close()


@dataclass
class _Waiter:
    conn: multiprocessing.connection.Connection
    consumer: str
    n: int
    deadline: float


class ChannelServer:
    """Owns a `DescriptorQueue` in the runner process and serves clients from one thread."""

    def __init__(self, queue: DescriptorQueue, *, poll_s: float = 0.02, rpc_timeout: float = 10.0) -> None:
        self.queue = queue
        self.poll_s = poll_s
        self.rpc_timeout = rpc_timeout
        self._lock = threading.Lock()
        self._conns: dict[multiprocessing.connection.Connection, str] = {}
        self._waiters: list[_Waiter] = []
        self._wake_r, self._wake_w = SPAWN.Pipe(duplex=False)
        self._wake_pending = threading.Event()  # coalesces wakes so the pipe never fills
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.error_trace = ""

    # -- runner-side API (thread-safe) ----------------------------------------------------------

    def connect(self, name: str) -> ChannelClient:
        """A client for one producer or consumer, to pass to its spawned process."""
        ours, theirs = SPAWN.Pipe(duplex=True)
        with self._lock:
            self._conns[ours] = name
        self._wake()
        return ChannelClient(name, theirs, self.rpc_timeout)

    def publish(self, descriptor: dict[str, Any]) -> list[int]:
        with self._lock:
            ids = self.queue.publish(descriptor)
        self._wake()
        return ids

    def consumer_died(self, name: str) -> int:
        with self._lock:
            count = self.queue.consumer_died(name)
        self._wake()
        return count

    def heal(self) -> None:
        with self._lock:
            self.queue.heal()
        self._wake()

    def stats(self) -> ChannelStats:
        with self._lock:
            return self.queue.snapshot()

    def empty(self) -> bool:
        with self._lock:
            return self.queue.empty()

    def check(self) -> None:
        """Raise `ChannelFailedError` if the serving thread has died (call it from the runner's loops)."""
        if self.error is not None:
            err = ChannelFailedError(f"descriptor channel failed: {type(self.error).__name__}: {self.error}")
            raise err from self.error

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ChannelServer:
        self._thread = threading.Thread(target=self._serve, name="descriptor-channel", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> ChannelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the serving thread ----------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_pending.is_set():
            return
        self._wake_pending.set()
        try:
            self._wake_w.send_bytes(b"w")
        except OSError:
            pass

    def _serve(self) -> None:
        try:
            self._serve_loop()
        except BaseException as exc:  # recorded for the runner: a dead channel must fail the run
            self.error = exc
            self.error_trace = traceback.format_exc()
            with self._lock:
                for conn in self._conns:
                    conn.close()
                self._conns.clear()
            self._waiters = []

    def _serve_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                conns = list(self._conns)
            timeout = self.poll_s if self._waiters else 0.2
            for ready in multiprocessing.connection.wait([self._wake_r, *conns], timeout):
                if ready is self._wake_r:
                    while self._wake_r.poll():
                        self._wake_r.recv_bytes()
                    self._wake_pending.clear()  # after draining: a wake after this sends a byte again
                    continue
                self._handle(ready)  # type: ignore[arg-type]
            self._serve_waiters()

    def _drop(self, conn: multiprocessing.connection.Connection) -> None:
        with self._lock:
            self._conns.pop(conn, None)
        self._waiters = [w for w in self._waiters if w.conn is not conn]
        conn.close()

    def _reply(self, conn: multiprocessing.connection.Connection, value: Any) -> bool:
        try:
            conn.send(value)
        except OSError:
            self._drop(conn)
            return False
        return True

    def _handle(self, conn: multiprocessing.connection.Connection) -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            self._drop(conn)
            return
        name = self._conns.get(conn, "?")
        op = request[0]
        with self._lock:
            if op == "publish":
                value: Any = self.queue.publish(request[1])
            elif op == "ack":
                value = self.queue.ack(name, request[1])
            elif op == "nack":
                value = self.queue.nack(name, request[1])
            elif op == "claim":
                _, n, timeout = request
                self._waiters.append(_Waiter(conn, name, int(n), time.monotonic() + float(timeout)))
                return
            else:
                value = ValueError(f"unknown channel request {op!r}")
        self._reply(conn, value)

    def _serve_waiters(self) -> None:
        if not self._waiters:
            return
        now = time.monotonic()
        still: list[_Waiter] = []
        for waiter in self._waiters:
            with self._lock:
                got = self.queue.claim(waiter.consumer, waiter.n)
            if got or now >= waiter.deadline:
                if not self._reply(waiter.conn, got):
                    with self._lock:  # never reached the consumer: hand it to someone else
                        self.queue.unclaim(d.id for d in got)
            else:
                still.append(waiter)
        self._waiters = [w for w in still if w.conn in self._conns]
