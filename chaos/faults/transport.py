"""Transport-layer faults: a `Link` decorator that misbehaves at one protocol step, per port, seeded.

Installed through the transport's one seam (`link_wrapper=`), so it depends on the `Link` protocol
only, never on ucxx. Faults act on the **server** side of a link: the wrapper hands client links
back unchanged, because every kind here is something a server (or the path back from it) does to a
client, and one side is enough to make each failure the client must survive.

Per request: when a request (REQUEST or RESOLVE) has arrived on a server link, every transport fault
that applies to the port draws once from its (seed, fault, port) stream; the ones that hit act at
their step of that attempt. A fault that hits but never reaches its step (e.g. `stall` when the
status was NOT_READY) has not fired and emits nothing. Each firing emits one `fault` event.

Where each kind acts, on the server side of the link:
- `reset`: at `phase` it aborts the endpoint and raises `InjectedFaultError`: `request` just after
  the request arrived (it is never processed), `commit` before receiving the commit, `status`,
  `payload` or `committed` before sending it.
- `truncate`: sends half of the `status` frame or of the `payload` (`phase`, default payload).
- `corrupt`: sends the `status` frame or the `payload` with bytes flipped, same length (UCX cannot
  tell; only the frame check or the payload checksum can).
- `reset` at `resolve`: aborts before sending the RESOLVED reply (the client asks another endpoint).
Batches (REQUEST_BATCH ... COMMITTED_BATCH): the draw happens when the batch request arrives, the
status/commit/committed faults act on the batch's one message of that step, and every PAYLOAD after
the first draws the payload-step faults (`reset` at payload, `truncate` of payload, `stall`) again,
so they hit slots of a batch one by one. An inline STATUS (a small payload inside the status
message) is both steps: status and payload faults
act on that one message (a truncated inline payload is half the message).
- `timeout`: holds the status for `delay` (default 1.5x the client's read timeout), then sends it.
- `stall`: sends the status, holds the payload for `delay`, then sends it.
- `evict`: closes the endpoint after a fully served read (COMMITTED sent after a COMMIT, or the
  payload sent in single-chunk), when the handler goes back to wait for the next request.
- `drop_commit`: swallows the COMMITTED reply to a COMMIT (the commit is already recorded) and
  aborts the endpoint, so the client must RESOLVE on another endpoint.

Keep `delay` below the server's `step_timeout` (5 s by default), or the server's own bound cancels
the hold and aborts the endpoint, which looks like a reset instead of a slow reply.

Client-side faults (`side: client`, built with `ChaosLinkWrapper(side="client")` in each consumer,
its RNG stream keyed by the consumer's name) act on the consumer's **own** link, the failures a
client meets on its side (its NIC, its endpoint, its process), which the server cannot fake: the
server did everything right. The draw happens when the client sends a request (REQUEST, a batch's
REQUEST, or RESOLVE); every firing's `fault` event carries `side: client`, the port index and the
keys (`slot:generation`) the exchange names, decoded from the request, so an effect rule can follow
the very reads it touched.
- `reset`: aborts the client's endpoint and raises `InjectedFaultError` into the client: `request`,
  `commit` and `resolve` before sending that message; `status` right after the request went out
  (before the reply is received: the request may well be served, the client never sees it);
  `payload` before receiving a (non-inline) payload.
- `timeout`: the status reply arrived, but the client's receive of it is held for `delay` (default
  1.5x the read timeout): the client's own step bound fires, so its read-timeout path runs
  (ReadTimeoutError, endpoint aborted, never reused) although the server answered in time.
- `stall`: holds the client for `delay` before it sends at `phase` (request, commit or resolve): a
  paused consumer. Past the client's read timeout the client's own bound fires, as for `timeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chaos.faults.base import SIDES, Clock, FaultSpec, HealSwitch, Trigger
from transport import protocol as proto
from transport.events import EventSink
from transport.link import Link, Phase, SteppedLink

HOLD_STEP_S = 0.05  # a held reply notices a heal within this


class InjectedFaultError(ConnectionResetError):
    """Raised into the server when a fault aborted or closed its link: what a peer reset looks like."""


@dataclass
class _Drawn:
    """The faults drawn for one request (server or client side), each acting at most once."""

    pending: list[FaultSpec]

    def take(self, kind: str, phase: Phase | None = None) -> FaultSpec | None:
        """The first drawn fault of `kind` (at `phase`), removed: each acts at most once per attempt."""
        for i, spec in enumerate(self.pending):
            if spec.kind == kind and (phase is None or spec.phase == phase):
                return self.pending.pop(i)
        return None


@dataclass
class _Attempt(_Drawn):
    """The faults drawn for one request and how far its exchange got."""

    saw_commit: bool = False
    sent_payload: bool = False
    sent_committed: bool = False

    @property
    def served(self) -> bool:
        """A full read went out: COMMITTED after a COMMIT, or a single-chunk payload (no COMMIT)."""
        return self.sent_committed if self.saw_commit else self.sent_payload


class ChaosLinkWrapper:
    """The `LinkWrapper` the server receives: shares triggers and the heal switch across its links.

    `faults` may hold every layer's specs; only transport kinds are used (client links pass through
    unchanged). `run_start` and `heal_at` are `clock()` (wall-clock) times so every process of a run
    agrees on the windows. `port_index` maps a real port to its index in the server's list (what
    events report and what keys the seeded streams; the real port if absent); `transport.serve` also
    sets it through `bind_ports` once the listeners are up. `ports_by_index=True` reads
    `FaultSpec.ports` as indexes into the server's port list instead of real port numbers (what a
    scenario with ephemeral ports needs). `stream` names the process in the RNG key: give a
    restarted server a new one (`server#2`) so it does not replay the same decisions.
    `side="client"` makes it the wrapper a consumer installs on its own links instead: it keeps only
    the faults with `side: client` and wraps client links (`ClientChaosLink`); give it the consumer's
    name as `stream` and the advertised port -> index mapping as `port_index`.
    """

    def __init__(
        self,
        faults: Iterable[FaultSpec],
        seed: int,
        events: EventSink,
        run_start: float,
        *,
        port_index: dict[int, int] | None = None,
        ports_by_index: bool = False,
        read_timeout: float = 2.0,
        heal_at: float | None = None,
        stream: str = "server",
        clock: Clock = time.time,
        side: str = "server",
    ) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be server or client, got {side!r}")
        self.side = side
        self.ports_by_index = ports_by_index
        self.faults = [f for f in faults if f.layer == "transport" and f.side == side]
        self.seed = seed
        self.events = events
        self.run_start = run_start
        self.port_index = dict(port_index or {})
        self.default_delay_s = 1.5 * read_timeout
        self.stream = stream
        self.clock = clock
        self.switch = HealSwitch(heal_at, clock)
        self.fired: Counter[tuple[int, int]] = Counter()  # (fault index, port index) -> firings
        self._triggers: dict[tuple[int, int], Trigger] = {}

    def __call__(self, link: Link) -> Link:
        if link.role != self.side or not self.faults:
            return link
        return ChaosLink(link, self) if self.side == "server" else ClientChaosLink(link, self)

    def bind_ports(self, ports: list[int]) -> None:
        """Called by the server process once its listeners have their real (maybe ephemeral) ports."""
        self.port_index = {port: index for index, port in enumerate(ports)}

    def heal(self) -> None:
        """Turn every transport fault off, including drawn ones not yet acted and holds in progress."""
        self.switch.heal()

    @property
    def healed(self) -> bool:
        return self.switch.healed()

    def draw(self, port: int) -> list[FaultSpec]:
        """One decision per applicable fault for a request that just arrived on `port`."""
        now = self.clock()
        index = self.port_index.get(port, port)
        hits: list[FaultSpec] = []
        for spec in self.faults:
            if not spec.applies_to_port(index if self.ports_by_index else port):
                continue
            # Keyed by port index, not number: ephemeral port numbers change from run to run.
            trigger = self._triggers.get((spec.index, index))
            if trigger is None:
                trigger = Trigger(spec, self.seed, index, self.stream, self.run_start, self.switch)
                self._triggers[(spec.index, index)] = trigger
            if trigger.decide(now):
                hits.append(spec)
        return hits

    def record(self, spec: FaultSpec, port: int, phase: Phase | None, keys: list[str] | None = None) -> None:
        """One `fault` event per firing; a client firing also names the keys its exchange carried."""
        index = self.port_index.get(port, port)
        self.fired[(spec.index, index)] += 1
        extra: dict[str, Any] = {} if keys is None else {"keys": keys}
        self.events.emit(
            "fault",
            fault=spec.index,
            kind=spec.kind,
            port=index,
            phase=None if phase is None else str(phase),
            target=None,
            side=self.side,
            **extra,
        )

    def delay_for(self, spec: FaultSpec) -> float:
        return self.default_delay_s if spec.delay_s is None else spec.delay_s

    async def hold(self, seconds: float) -> None:
        """Sleep `seconds`, cut short by a heal."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not self.healed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            await asyncio.sleep(min(HOLD_STEP_S, remaining))


# The factory a server gets by name (`link_wrapper="chaos.faults.transport:make_link_wrapper"`).
make_link_wrapper = ChaosLinkWrapper


def _acts_on_payload(spec: FaultSpec) -> bool:
    return spec.kind == "stall" or (
        spec.kind in ("reset", "truncate", "corrupt") and spec.phase == Phase.PAYLOAD
    )


def flipped(buf: Any) -> np.ndarray:
    """A copy of the message with every byte of its middle quarter inverted (same length; the shared
    memory view itself is never written)."""
    data = np.frombuffer(buf, dtype=np.uint8).copy()
    if data.nbytes:
        start, end = data.nbytes * 3 // 8, max(data.nbytes * 5 // 8, data.nbytes * 3 // 8 + 1)
        data[start:end] ^= 0xFF
    return data


def wrong_size(buf: Any) -> np.ndarray:
    """Half the message (a message too short to halve becomes one byte too long)."""
    data = np.frombuffer(buf, dtype=np.uint8)
    if data.nbytes >= 2:
        return data[: data.nbytes // 2]
    return np.zeros(data.nbytes + 1, dtype=np.uint8)


class _FaultLink(SteppedLink):
    """What a server and a client fault link share: delegation to the wrapped link, and the faults
    drawn for the exchange in progress (none once the run healed)."""

    _attempt: _Drawn | None

    def __init__(self, inner: Link, chaos: ChaosLinkWrapper) -> None:
        self.inner = inner
        self.port = inner.port
        self.role = inner.role
        self.chaos = chaos
        self._attempt = None

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def _take(self, kind: str, phase: Phase | None = None) -> FaultSpec | None:
        if self._attempt is None or self.chaos.healed:
            return None
        return self._attempt.take(kind, phase)


class ChaosLink(_FaultLink):
    """A server `Link` that applies the faults drawn for the current request, then delegates."""

    _attempt: _Attempt | None

    def _fire(self, spec: FaultSpec, phase: Phase | None) -> None:
        self.chaos.record(spec, self.port, phase)

    def _reset(self, spec: FaultSpec, phase: Phase) -> None:
        self._fire(spec, phase)
        self.inner.abort()
        raise InjectedFaultError(f"chaos fault {spec.index}: {spec.kind} at {phase} on port {self.port}")

    async def _evict(self, spec: FaultSpec) -> None:
        self._fire(spec, Phase.REQUEST)
        try:
            await asyncio.wait_for(self.inner.close(), 1.0)
        except Exception:
            self.inner.abort()
        raise InjectedFaultError(f"chaos fault {spec.index}: evicted on port {self.port}")

    async def recv(self, buf: Any, phase: Phase) -> None:
        if phase == Phase.REQUEST:
            previous, self._attempt = self._attempt, None
            if previous is not None and previous.served and not self.chaos.healed:
                spec = previous.take("evict")
                if spec is not None:
                    await self._evict(spec)
            await self.inner.recv(buf, phase)
            self._attempt = _Attempt(self.chaos.draw(self.port))
            spec = self._take("reset", Phase.REQUEST)
            if spec is not None:
                self._reset(spec, phase)
            return
        if phase == Phase.COMMIT and self._attempt is not None:
            self._attempt.saw_commit = True
        spec = self._take("reset", phase)
        if spec is not None:
            self._reset(spec, phase)
        await self.inner.recv(buf, phase)

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None:
        """Post straight through when this attempt drew no fault (None otherwise: send step by step).

        What keeps chaos at probability 0 as cheap as the plain transport, which posts ahead.
        """
        attempt = self._attempt
        if attempt is None or attempt.pending:
            return None
        future = self.inner.post_send(buf, phase)  # None: the inner link goes step by step too
        if future is None:
            return None
        if phase == Phase.PAYLOAD:
            attempt.sent_payload = True
        elif phase == Phase.COMMITTED:
            attempt.sent_committed = True
        return future

    def _redraw_for_next_payload(self, phase: Phase) -> None:
        """A batch sends one PAYLOAD per slot: from the second one on, the payload-step faults draw
        again, so each slot of a batch meets them as a single read would (a truncated third payload,
        a reset mid-batch, a stall of one slot)."""
        attempt = self._attempt
        if phase != Phase.PAYLOAD or attempt is None or not attempt.sent_payload or self.chaos.healed:
            return
        attempt.pending.extend(spec for spec in self.chaos.draw(self.port) if _acts_on_payload(spec))

    async def send(self, buf: Any, phase: Phase) -> None:
        self._redraw_for_next_payload(phase)
        # An inline STATUS carries the payload too: the faults of both steps act on it, in order.
        steps = (Phase.STATUS, Phase.PAYLOAD) if phase == Phase.INLINE else (phase,)
        for step in steps:
            spec = self._take("reset", step)
            if spec is not None:
                self._reset(spec, step)
            if step == Phase.STATUS and (spec := self._take("timeout")) is not None:
                self._fire(spec, step)
                await self.chaos.hold(self.chaos.delay_for(spec))
            if step == Phase.PAYLOAD and (spec := self._take("stall")) is not None:
                self._fire(spec, step)
                await self.chaos.hold(self.chaos.delay_for(spec))
        attempt = self._attempt
        if phase == Phase.COMMITTED and attempt is not None and attempt.saw_commit:
            spec = self._take("drop_commit")
            if spec is not None:
                self._fire(spec, phase)
                self.inner.abort()
                raise InjectedFaultError(f"chaos fault {spec.index}: COMMITTED dropped on port {self.port}")
        for step in steps:
            spec = self._take("truncate", step)
            if spec is not None:
                self._fire(spec, step)
                buf = wrong_size(buf)
                break
        for step in steps:
            spec = self._take("corrupt", step)
            if spec is not None:
                self._fire(spec, step)
                buf = flipped(buf)
                break
        await self.inner.send(buf, phase)
        if attempt is not None:
            if phase in (Phase.PAYLOAD, Phase.INLINE):
                attempt.sent_payload = True
            elif phase == Phase.COMMITTED:
                attempt.sent_committed = True


def request_keys(buf: Any) -> list[str]:
    """The `slot:generation` keys a client request names (REQUEST, RESOLVE or a REQUEST_BATCH), for
    the fault event; [] if it does not decode (the fault acts all the same)."""
    try:
        data = np.frombuffer(buf, dtype=np.uint8)
        if data.nbytes == proto.FRAME_SIZE:
            frame = proto.decode(data)
            return [f"{frame.slot}:{frame.generation}"]
        _, entries = proto.decode_batch(data, proto.MsgType.REQUEST_BATCH)
        return [f"{e.slot}:{e.generation}" for e in entries]
    except Exception:  # a chaos wrapper never breaks the exchange it decorates
        return []


@dataclass
class _ClientAttempt(_Drawn):
    """The faults drawn for one client request and the keys it names."""

    keys: list[str] = field(default_factory=list)


class ClientChaosLink(_FaultLink):
    """A client `Link` that misbehaves on the consumer's own side (see the module docstring).

    It posts nothing ahead (`SteppedLink`), so the client steps every transfer through it
    (receives start as tasks, in the order they are posted: `transport.link.start_recv`). One link
    carries one exchange at a time (the client's pool checks it out), so the current attempt is the
    one every step of that exchange sees.
    """

    _attempt: _ClientAttempt | None

    def _fire(self, spec: FaultSpec, phase: Phase) -> None:
        assert self._attempt is not None
        self.chaos.record(spec, self.port, phase, self._attempt.keys)

    def _reset(self, spec: FaultSpec, phase: Phase) -> None:
        self._fire(spec, phase)
        self.inner.abort()
        raise InjectedFaultError(f"chaos fault {spec.index}: client reset at {phase} on port {self.port}")

    async def _stall(self, phase: Phase) -> None:
        spec = self._take("stall", phase)
        if spec is not None:
            self._fire(spec, phase)
            await self.chaos.hold(self.chaos.delay_for(spec))

    async def send(self, buf: Any, phase: Phase) -> None:
        if phase in (Phase.REQUEST, Phase.RESOLVE):  # a new request: one decision per fault
            self._attempt = _ClientAttempt(self.chaos.draw(self.port), request_keys(buf))
        if phase in (Phase.REQUEST, Phase.COMMIT, Phase.RESOLVE):
            await self._stall(phase)
            spec = self._take("reset", phase)
            if spec is not None:
                self._reset(spec, phase)
        await self.inner.send(buf, phase)
        if phase == Phase.REQUEST and (spec := self._take("reset", Phase.STATUS)) is not None:
            self._reset(spec, Phase.STATUS)  # the request went out; its reply will never be seen

    async def recv(self, buf: Any, phase: Phase) -> None:
        if phase == Phase.PAYLOAD and (spec := self._take("reset", Phase.PAYLOAD)) is not None:
            self._reset(spec, phase)
        await self.inner.recv(buf, phase)
        # The reply is here (so the request went out and was drawn): hold it past the client's bound.
        if phase == Phase.STATUS and (spec := self._take("timeout")) is not None:
            self._fire(spec, phase)
            await self.chaos.hold(self.chaos.delay_for(spec))


__all__ = [
    "ChaosLink",
    "ChaosLinkWrapper",
    "ClientChaosLink",
    "InjectedFaultError",
    "flipped",
    "make_link_wrapper",
    "wrong_size",
]
