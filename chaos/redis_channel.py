"""The descriptor channel on a real Redis stream: what a trainer's data path runs in production.

One stream per run, one consumer group, every consumer a member of it:
- publish: XADD of one entry per copy the control faults ask for (`duplicate_descriptor` = the entry
  added twice, `delay_descriptor` = added late). The runner publishes (its `RedisQueue`, behind the
  same `ChannelServer` as the in-process queue): the `published` event is logged where the channel
  accepts a descriptor, in one code path for both channels. Accepted entries wait in an outbox
  while Redis is down, paused or restarting, and go out in publish order once it answers.
- claim: XAUTOCLAIM of entries idle longer than the visibility timeout (a dead or stuck consumer's),
  then XREADGROUP `>` for new ones (`RedisChannelClient.claim`).
- ack: XACK and XDEL in one MULTI, so the stream's length is exactly what is not acknowledged yet.
- nack (reads failed, try again) and a consumer the runner saw die: XCLAIM ... IDLE <visibility>
  JUSTID, which makes the entries claimable by the next XAUTOCLAIM at once instead of after the
  visibility timeout.
Entry fields: `d` the descriptor as JSON, `k` its key, `p` the publish time (for publish-to-claim
latency), `c` the copy number (0 = original).

A Redis that is down or paused costs time, never entries: a consumer's failed claim returns [] after
a short pause, a failed ack leaves the entry pending, so it is redelivered and the transport refuses
the second read (NOT_READY: already consumed).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from chaos.channel import ChannelStats, Delivery, descriptor_key
from chaos.faults.base import Clock
from chaos.faults.control import ControlFaults, Handout

log = logging.getLogger(__name__)
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError)
GROUP = "slotwire"


@dataclass(frozen=True)
class StreamRef:
    """Where a run's descriptors live: server URL, stream key, group, visibility timeout (s)."""

    url: str
    stream: str
    group: str = GROUP
    visibility_timeout: float = 10.0
    socket_timeout: float = 2.0

    @classmethod
    def for_run(cls, url: str, run_id: str | None = None, visibility_timeout: float = 10.0) -> StreamRef:
        return cls(url, f"slotwire:{run_id or uuid.uuid4().hex[:12]}:descriptors", GROUP, visibility_timeout)

    def connect(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, socket_timeout=self.socket_timeout, socket_connect_timeout=self.socket_timeout
        )

    def ensure_group(self, client: redis.Redis) -> None:
        try:
            client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def make_idle(self, client: redis.Redis, owner: str, ids: list[Any]) -> int:
        """XCLAIM the entries back to `owner` marked idle for the visibility timeout, so the next
        XAUTOCLAIM (by any consumer) takes them. JUSTID: the delivery counter is not bumped."""
        if not ids:
            return 0
        idle_ms = int(self.visibility_timeout * 1000) + 1
        return len(client.xclaim(self.stream, self.group, owner, 0, ids, idle=idle_ms, justid=True))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisChannelClient:
    """A consumer's end on the stream, with `ChannelClient`'s claim/ack/nack (picklable to a spawned
    process: the connection is opened on first use)."""

    def __init__(self, name: str, ref: StreamRef) -> None:
        self.name = name
        self.ref = ref
        self._client: redis.Redis | None = None
        self._held: dict[str, list[str]] = {}  # key -> entry ids this consumer claimed, not acked
        self._cursor = "0-0"

    def __getstate__(self) -> dict[str, Any]:
        return {"name": self.name, "ref": self.ref}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["name"], state["ref"])  # type: ignore[misc]

    @property
    def redis(self) -> redis.Redis:
        if self._client is None:
            self._client = self.ref.connect()
        return self._client

    def _deliveries(self, entries: Iterable[Any], delivery: int) -> list[Delivery]:
        out = []
        for entry_id, fields in entries:
            if not fields:  # deleted while pending (XAUTOCLAIM on 6.2 returns nil fields)
                continue
            fields = {_text(k): _text(v) for k, v in fields.items()}
            key = fields["k"]
            self._held.setdefault(key, []).append(_text(entry_id))
            out.append(
                Delivery(
                    id=_text(entry_id),
                    key=key,
                    descriptor=json.loads(fields["d"]),
                    delivery=delivery,
                    duplicate=fields.get("c", "0") != "0",
                    published_at=float(fields.get("p", 0.0)),
                )
            )
        return out

    def claim(self, n: int = 1, timeout: float = 1.0) -> list[Delivery]:
        """Up to `n` entries: first those idle past the visibility timeout, then new ones (waits up
        to `timeout` for them). [] when Redis does not answer."""
        ref = self.ref
        try:
            idle_ms = int(ref.visibility_timeout * 1000)
            reply = self.redis.xautoclaim(ref.stream, ref.group, self.name, idle_ms, self._cursor, count=n)
            self._cursor = _text(reply[0])
            got = self._deliveries(reply[1], delivery=2)
            if got:
                return got
            block_ms = max(1, int(min(timeout, ref.socket_timeout / 2) * 1000))
            reply = self.redis.xreadgroup(ref.group, self.name, {ref.stream: ">"}, count=n, block=block_ms)
            return self._deliveries(reply[0][1], delivery=1) if reply else []
        except REDIS_ERRORS as exc:
            log.warning("claim: redis unavailable (%s)", exc)
            time.sleep(min(timeout, 0.2))
            return []

    def _take(self, keys: Iterable[str]) -> list[str]:
        ids: list[str] = []
        for key in keys:
            ids.extend(self._held.pop(key, ()))
        return ids

    def ack(self, keys: Iterable[str]) -> int:
        """XACK + XDEL; an entry whose ack did not reach Redis stays pending and is redelivered."""
        ids = self._take(keys)
        if not ids:
            return 0
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.xack(self.ref.stream, self.ref.group, *ids)
            pipe.xdel(self.ref.stream, *ids)
            acked, _ = pipe.execute()
            return int(acked)
        except REDIS_ERRORS as exc:
            log.warning("ack of %d entries lost: redis unavailable (%s)", len(ids), exc)
            return 0

    def nack(self, keys: Iterable[str]) -> int:
        ids = self._take(keys)
        try:
            return self.ref.make_idle(self.redis, self.name, ids)
        except REDIS_ERRORS as exc:
            log.warning("nack: redis unavailable (%s); entries redeliver after the visibility timeout", exc)
            return 0

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


@dataclass(order=True)
class _Outgoing:
    visible_at: float
    order: int
    fields: dict[str, str] = field(compare=False)


class RedisQueue:
    """The runner's side of the Redis channel, with `DescriptorQueue`'s runner-facing methods (not
    thread-safe: `ChannelServer` serialises access, and calls `tick()` to flush the outbox).

    Never blocks the runner for long on a Redis that is down or paused (SIGSTOP): its commands time
    out after `runner_timeout`, and `snapshot()` / `empty()` answer from counts refreshed by `tick()`.
    A stalled runner would be worse than slow: its main loop is what sends the paused Redis SIGCONT.
    XADD uses explicit ids `<n>-1`, so re-sending an entry whose reply timed out cannot add it twice:
    Redis refuses an id that is not above the last one, which tells the entry is already in.
    """

    def __init__(
        self,
        ref: StreamRef,
        *,
        control: ControlFaults | None = None,
        clock: Clock = time.time,
        retry_s: float = 0.1,
        refresh_s: float = 0.2,
        runner_timeout: float = 0.25,
    ) -> None:
        self.ref = ref
        self.control = control
        self.clock = clock
        self.retry_s = retry_s
        self.refresh_s = refresh_s
        self.client = redis.Redis.from_url(
            ref.url, socket_timeout=runner_timeout, socket_connect_timeout=runner_timeout
        )
        ref.ensure_group(self.client)
        self._outbox: list[_Outgoing] = []
        self._order = 0
        self._last_id = 0  # ms part of the last entry id known to be in the stream
        self._next_try = 0.0
        self._last_xadd = 0.0
        self._counted_at = -1.0  # when length / in_flight were read from Redis
        self._length = 0
        self._in_flight = 0
        self.stats = ChannelStats()

    def consumer_client(self, name: str) -> RedisChannelClient:
        return RedisChannelClient(name, self.ref)

    def publish(self, descriptor: dict[str, Any], now: float | None = None) -> list[int]:
        now = self.clock() if now is None else now
        key = descriptor_key(descriptor)
        handout = self.control.decide(key, now) if self.control is not None else Handout()
        body = json.dumps(descriptor)
        for copy, delay in enumerate(handout.delays):
            fields = {"d": body, "k": key, "p": repr(now), "c": str(copy)}
            self._order += 1
            self._outbox.append(_Outgoing(now + delay, self._order, fields))
        self._outbox.sort()
        self.stats.published += 1
        self.stats.entries += handout.copies
        self.stats.duplicated += handout.copies - 1
        self.stats.delayed += handout.delays[0] > 0
        self._flush(now)
        return list(range(self._order - handout.copies + 1, self._order + 1))

    def _flush(self, now: float) -> bool:
        """XADD every due entry in order; False while Redis does not answer (retried later)."""
        if not self._outbox or now < self._next_try:
            return True
        try:
            while self._outbox and self._outbox[0].visible_at <= now:
                entry_id = f"{self._last_id + 1}-1"
                try:
                    self.client.xadd(self.ref.stream, self._outbox[0].fields, id=entry_id)
                except redis.ResponseError as exc:
                    if "equal or smaller" not in str(exc):
                        raise
                self._last_id += 1
                self._last_xadd = time.monotonic()
                self._outbox.pop(0)
        except REDIS_ERRORS as exc:
            log.warning("publish: redis unavailable (%s); %d entries wait", exc, len(self._outbox))
            self._next_try = now + self.retry_s
            return False
        return True

    def tick(self, now: float | None = None) -> bool:
        """Flush the outbox and refresh the counts (called by the serving thread)."""
        now = self.clock() if now is None else now
        flushed = self._flush(now)
        if time.monotonic() - self._counted_at >= self.refresh_s:
            self._count()
        return flushed

    def _count(self) -> None:
        try:
            length = int(self.client.xlen(self.ref.stream))
            groups = self.client.xinfo_groups(self.ref.stream)
        except REDIS_ERRORS:
            return
        self._length = length
        self._in_flight = int(next((g["pending"] for g in groups if _text(g["name"]) == self.ref.group), 0))
        self._counted_at = time.monotonic()

    def busy(self) -> bool:
        """Entries wait in the outbox: the serving thread must tick soon."""
        return bool(self._outbox)

    def consumer_died(self, consumer: str) -> int:
        return len(self.return_held(consumer))

    def return_held(self, consumer: str) -> list[str]:
        """Make a dead consumer's pending entries claimable now; the descriptor keys it held."""
        try:
            pending = self.client.xpending_range(
                self.ref.stream, self.ref.group, "-", "+", 10_000, consumername=consumer
            )
            ids = [p["message_id"] for p in pending]
            keys = []
            for entry_id in ids:
                for _, fields in self.client.xrange(self.ref.stream, entry_id, entry_id):
                    key = fields.get(b"k", fields.get("k"))
                    if key is not None:
                        keys.append(_text(key))
            self.ref.make_idle(self.client, consumer, ids)
            return keys
        except REDIS_ERRORS:
            return []  # XAUTOCLAIM hands them out after the visibility timeout anyway

    def release_held(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for out in self._outbox:
            out.visible_at = min(out.visible_at, now)
        self._outbox.sort()
        self._next_try = 0.0
        self._flush(now)

    def heal(self) -> None:
        if self.control is not None:
            self.control.heal()
        self.release_held()

    def snapshot(self) -> ChannelStats:
        """Counts as of the last refresh (no Redis round trip here)."""
        added = self.stats.entries - len(self._outbox)
        return replace(
            self.stats,
            acked=max(0, added - self._length),
            pending=len(self._outbox) + max(0, self._length - self._in_flight),
            in_flight=self._in_flight,
        )

    def empty(self) -> bool:
        """Nothing waits to be added and the stream was empty when counted after the last XADD."""
        if self._outbox or self._counted_at <= self._last_xadd:
            return False
        return self._length == 0

    def close(self, delete: bool = True) -> None:
        """Delete the run's stream (a shared `--redis` server keeps nothing of the run)."""
        try:
            if delete:
                self.client.delete(self.ref.stream)
        except REDIS_ERRORS:
            pass
        finally:
            self.client.close()
