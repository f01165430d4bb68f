"""Transport-layer faults: a `Link` decorator that misbehaves at one protocol step, per port, seeded.

Installed through the transport's one seam (`link_wrapper=`), so it depends on the `Link` protocol
only, never on ucxx. Faults act on the **server** side of a link: the wrapper hands client links
back unchanged, because every kind here is something a server (or the path back from it) does to a
client, and one side is enough to make each failure the client must survive.

Per request: when a request (REQUEST or RESOLVE) has arrived on a server link, every transport fault
that applies to the port draws once from its (seed, fault, port) stream; the ones that hit act at
their step of that attempt. A fault that hits but never reaches its step (e.g. `stall` when the
status was NOT_READY) has not fired and emits nothing. Each firing emits one `fault` event.

Shape (Toxiproxy's toxics, and `chaos/proxy/toxics.py`): whether a fault fires is decided once, by the
wrapper's `draw` (probability, window, one-shot, port; `side` chose the wrapper); what it then does is
one small class per kind below (`TransportFault`: `acts` says at which hook and step, `act` does
it), and `ChaosLink` / `ClientChaosLink` are loops that offer each hook of a message to the drawn
faults in their side's kind order (`SERVER_KINDS`, `CLIENT_KINDS`).

Where each kind acts, on the server side of the link:
- `reset`: at `phase` it aborts the endpoint and raises `InjectedFaultError`: `request` just after
  the request arrived (it is never processed), `commit` before receiving the commit, `status` or
  `payload` before sending it.
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
from enum import Enum
from typing import Any, ClassVar

import numpy as np

from chaos.faults.base import SIDES, Clock, FaultSpec, HealSwitch, Trigger, read_start
from transport import protocol as proto
from transport.events import EventSink
from transport.link import Link, Phase, SteppedLink

HOLD_STEP_S = 0.05  # a held reply notices a heal within this


class InjectedFaultError(ConnectionResetError):
    """Raised into the server when a fault aborted or closed its link: what a peer reset looks like."""


class Hook(Enum):
    """Where in one message's passage through a fault link a drawn fault may act."""

    BEFORE_SEND = "before_send"  # abort or hold before the message leaves
    RESHAPE = "reshape"  # change the bytes that leave (at most one fault of a kind per message)
    AFTER_SEND = "after_send"  # the message is out: abort before its reply
    BEFORE_RECV = "before_recv"  # abort before receiving
    AFTER_RECV = "after_recv"  # the message is in: abort or hold before the caller sees it


@dataclass(slots=True)
class Exchange:
    """One request's exchange on one link: the faults drawn for it, each acting at most once, and how
    far it got (what `evict` and `drop_commit` ask)."""

    pending: list[TransportFault]
    keys: list[str] = field(default_factory=list)  # client side: the `slot:generation`s it names
    saw_commit: bool = False
    sent_payload: bool = False
    sent_committed: bool = False

    @property
    def served(self) -> bool:
        """A full read went out: COMMITTED after a COMMIT, or a single-chunk payload (no COMMIT)."""
        return self.sent_committed if self.saw_commit else self.sent_payload

    def take(self, kind: str, hook: Hook, step: Phase) -> TransportFault | None:
        """The first drawn fault of `kind` that acts at `hook` of `step`, removed (it acts once)."""
        for i, fault in enumerate(self.pending):
            if fault.kind == kind and fault.acts(hook, step, self):
                return self.pending.pop(i)
        return None

    def sent(self, phase: Phase) -> None:
        """Bookkeeping after a message went out, by `send` or `post_send` alike."""
        if phase in (Phase.PAYLOAD, Phase.INLINE):
            self.sent_payload = True
        elif phase == Phase.COMMITTED:
            self.sent_committed = True


# -- the kinds ------------------------------------------------------------------------------------------


class TransportFault:
    """One transport fault kind on one side, bound to its spec: where it acts and what it does there.

    Nothing here decides whether it fires (the wrapper's draw did), and a kind holds no state of its
    own (the `Exchange` does), so one instance per configured fault serves every link and request.
    Where it acts is `hook` of `step` (None: the fault's own `phase`); a kind with a further condition
    overrides `acts`.
    """

    kind: ClassVar[str]
    hook: ClassVar[Hook]
    step: ClassVar[Phase | None] = None

    def __init__(self, spec: FaultSpec) -> None:
        self.spec = spec

    def acts(self, hook: Hook, step: Phase, exchange: Exchange) -> bool:
        """Whether this drawn fault acts at `hook` of the message step `step`."""
        return hook == self.hook and step == (self.step or self.spec.phase)

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        """Do it (after its `fault` event): raise, hold, or return the bytes to send instead of `buf`."""
        return buf

    def event_phase(self, step: Phase) -> Phase:
        """The phase its `fault` event names: the step it acted at."""
        return step

    @property
    def payload_step(self) -> bool:
        """Whether it acts on a PAYLOAD, so a later PAYLOAD of the same batch draws it again."""
        return (self.step or self.spec.phase) == Phase.PAYLOAD


class Reset(TransportFault):
    """Server: abort the endpoint at `phase`: just after the REQUEST arrived, before receiving a COMMIT,
    or before sending the message of that step."""

    kind = "reset"

    def acts(self, hook: Hook, step: Phase, exchange: Exchange) -> bool:
        if step != self.spec.phase:
            return False
        if step == Phase.REQUEST:
            return hook == Hook.AFTER_RECV
        return hook in (Hook.BEFORE_SEND, Hook.BEFORE_RECV)

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        link.abort()
        raise InjectedFaultError(f"chaos fault {self.spec.index}: reset at {step} on port {link.port}")


class Hold(TransportFault):
    """Base of the kinds that hold a message for `delay` (cut short by a heal)."""

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        await link.chaos.hold(link.chaos.delay_for(self.spec))
        return buf


class Timeout(Hold):
    """Server: hold the STATUS past the client's read timeout, then send it."""

    kind, hook, step = "timeout", Hook.BEFORE_SEND, Phase.STATUS


class Stall(Hold):
    """Server: send the STATUS, hold the PAYLOAD, then send it."""

    kind, hook, step = "stall", Hook.BEFORE_SEND, Phase.PAYLOAD


class DropCommit(TransportFault):
    """Server: swallow the COMMITTED reply to a COMMIT (recorded already) and abort the endpoint; a
    RESOLVED reply (no COMMIT before it) is spared."""

    kind, hook, step = "drop_commit", Hook.BEFORE_SEND, Phase.COMMITTED

    def acts(self, hook: Hook, step: Phase, exchange: Exchange) -> bool:
        return super().acts(hook, step, exchange) and exchange.saw_commit

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        link.abort()
        raise InjectedFaultError(f"chaos fault {self.spec.index}: COMMITTED dropped on port {link.port}")


class Truncate(TransportFault):
    """Server: send half of the `phase` message (UCX delivers a wrong-size message)."""

    kind, hook = "truncate", Hook.RESHAPE

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        return wrong_size(buf)


class Corrupt(TransportFault):
    """Server: send the `phase` message with bytes flipped, same length (only a checksum can tell)."""

    kind, hook = "corrupt", Hook.RESHAPE

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        return flipped(buf)


class Evict(TransportFault):
    """Server: close the endpoint after a fully served read, when the next request is awaited."""

    kind, hook, step = "evict", Hook.BEFORE_RECV, Phase.REQUEST

    def acts(self, hook: Hook, step: Phase, exchange: Exchange) -> bool:
        return super().acts(hook, step, exchange) and exchange.served

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        try:
            await asyncio.wait_for(link.inner.close(), 1.0)
        except Exception:
            link.abort()
        raise InjectedFaultError(f"chaos fault {self.spec.index}: evicted on port {link.port}")


class ClientReset(TransportFault):
    """Client: abort its own endpoint before sending at `phase` (request, commit, resolve), right after
    the REQUEST went out (`status`: its reply is never seen) or before receiving the `payload`."""

    kind, hook = "reset", Hook.BEFORE_SEND
    _ELSEWHERE: ClassVar[dict[Phase, tuple[Hook, Phase]]] = {
        Phase.STATUS: (Hook.AFTER_SEND, Phase.REQUEST),
        Phase.PAYLOAD: (Hook.BEFORE_RECV, Phase.PAYLOAD),
    }

    def acts(self, hook: Hook, step: Phase, exchange: Exchange) -> bool:
        phase = self.spec.phase
        assert phase is not None
        return (hook, step) == self._ELSEWHERE.get(phase, (self.hook, phase))

    def event_phase(self, step: Phase) -> Phase:
        """Its own phase: a reset at `status` acts once the REQUEST is out, but names the reply it loses."""
        assert self.spec.phase is not None
        return self.spec.phase

    async def act(self, link: _FaultLink, step: Phase, buf: Any) -> Any:
        link.abort()
        phase = self.event_phase(step)
        raise InjectedFaultError(
            f"chaos fault {self.spec.index}: client reset at {phase} on port {link.port}"
        )


class ClientTimeout(Hold):
    """Client: the STATUS arrived, but the client's receive of it is held past its own read timeout."""

    kind, hook, step = "timeout", Hook.AFTER_RECV, Phase.STATUS


class ClientStall(Hold):
    """Client: hold the client before it sends at `phase` (request, commit or resolve)."""

    kind, hook = "stall", Hook.BEFORE_SEND


# Each side's kinds in the order they are offered a hook: on the server a reset comes before a hold and
# a truncate before a corrupt; on the client a stall holds the send that a reset would then abort.
SERVER_KINDS: dict[str, type[TransportFault]] = {
    cls.kind: cls for cls in (Reset, Timeout, Stall, DropCommit, Truncate, Corrupt, Evict)
}
CLIENT_KINDS: dict[str, type[TransportFault]] = {
    cls.kind: cls for cls in (ClientStall, ClientReset, ClientTimeout)
}
KINDS_BY_SIDE = {"server": SERVER_KINDS, "client": CLIENT_KINDS}


class ChaosLinkWrapper:
    """The `LinkWrapper` the server receives: shares triggers and the heal switch across its links.

    `faults` may hold every layer's specs; only the transport faults of its `side` are used (the other
    side's links pass through unchanged). `run_start` and `heal_at` are `clock()` (wall-clock) times so
    every process of a run agrees on the windows; a runner that fixes the start only once every role is
    up passes `run_start=None` with the `start_file` it will write and the phase's `duration` (nothing
    fires before). `port_index` maps a real port to its index in the
    server's list (what events report, what `FaultSpec.ports` names and what keys the seeded streams;
    the real port if absent); `transport.serve` also sets it through `bind_ports` once the listeners
    are up. `stream` names the process in the RNG key: give a restarted server a new one (`server#2`)
    so it does not replay the same decisions. `side="client"` makes it the wrapper a consumer installs
    on its own links instead: it keeps only the faults with `side: client` and wraps client links
    (`ClientChaosLink`); give it the consumer's name as `stream` and the advertised port -> index
    mapping as `port_index`.
    """

    def __init__(
        self,
        faults: Iterable[FaultSpec],
        seed: int,
        events: EventSink,
        run_start: float | None,
        *,
        port_index: dict[int, int] | None = None,
        read_timeout: float = 2.0,
        heal_at: float | None = None,
        stream: str = "server",
        clock: Clock = time.time,
        side: str = "server",
        start_file: str | None = None,
        duration: float | None = None,
    ) -> None:
        if side not in SIDES:
            raise ValueError(f"side must be server or client, got {side!r}")
        self.side = side
        self.faults = [f for f in faults if f.layer == "transport" and f.side == side]
        self._kinds = [KINDS_BY_SIDE[side][f.kind](f) for f in self.faults]
        self.seed = seed
        self.events = events
        self.run_start = run_start
        if run_start is None and (start_file is None or duration is None):
            raise ValueError("without run_start, give start_file and duration (the runner writes the start)")
        self._start_file = start_file
        self._duration = duration
        self.port_index = dict(port_index or {})
        from chaos.scenario.model import (
            TIMEOUT_DELAY_FACTOR,  # here: importing chaos.faults loads no pydantic
        )

        self.default_delay_s = TIMEOUT_DELAY_FACTOR * read_timeout
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

    def draw(self, port: int) -> list[TransportFault]:
        """The one firing decision: one draw per applicable fault for a request that just arrived on
        `port` (its window, one-shot time and probability); the kinds that hit act on the exchange."""
        if self.run_start is None and not self._learn_start():
            return []  # the fault phase has not started: the runner is still waiting for the roles
        now = self.clock()
        index = self.port_index.get(port, port)
        hits: list[TransportFault] = []
        for fault in self._kinds:
            spec = fault.spec
            if not spec.applies_to_port(index):
                continue
            # Keyed by port index, not number: ephemeral port numbers change from run to run.
            trigger = self._triggers.get((spec.index, index))
            if trigger is None:
                trigger = Trigger(spec, self.seed, index, self.stream, self.run_start, self.switch)
                self._triggers[(spec.index, index)] = trigger
            if trigger.decide(now):
                hits.append(fault)
        return hits

    def _learn_start(self) -> bool:
        """Read the fault phase's start from the runner's file, once it is there (a stat per request
        until then); the heal time follows from the phase's duration."""
        assert self._start_file is not None and self._duration is not None
        start = read_start(self._start_file)
        if start is None:
            return False
        self.switch.heal_at = start + self._duration
        self.run_start = start
        return True

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
    """What a server and a client fault link share: delegation to the wrapped link, the exchange in
    progress, and the one loop that offers a hook of a message to the drawn faults."""

    kinds: ClassVar[Iterable[str]]  # the side's kinds, in the order they are offered a hook

    def __init__(self, inner: Link, chaos: ChaosLinkWrapper) -> None:
        self.inner = inner
        self.port = inner.port
        self.role = inner.role
        self.chaos = chaos
        self._exchange: Exchange | None = None

    @property
    def closed(self) -> bool:
        return self.inner.closed

    async def close(self) -> None:
        await self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    def _drawn(self, exchange: Exchange | None = None) -> bool:
        """Whether the exchange (the current one by default) has a drawn fault left to act."""
        exchange = exchange or self._exchange
        return exchange is not None and bool(exchange.pending)

    def _take(
        self, kind: str, hook: Hook, step: Phase, exchange: Exchange | None = None
    ) -> TransportFault | None:
        """The drawn fault of `kind` due at this hook (none once the run healed)."""
        exchange = exchange or self._exchange
        if exchange is None or self.chaos.healed:
            return None
        return exchange.take(kind, hook, step)

    async def _fire(self, fault: TransportFault, step: Phase, buf: Any = None) -> Any:
        """Its `fault` event, then its act."""
        keys = self._exchange.keys if self.role == "client" and self._exchange is not None else None
        self.chaos.record(fault.spec, self.port, fault.event_phase(step), keys)
        return await fault.act(self, step, buf)

    async def _hook(self, hook: Hook, step: Phase, buf: Any = None, exchange: Exchange | None = None) -> Any:
        """Offer `hook` of `step` to each kind in turn: the first drawn fault of a kind that is due acts."""
        if not self._drawn(exchange):  # the common case, kept cheap: nothing was drawn
            return buf
        for kind in self.kinds:
            fault = self._take(kind, hook, step, exchange)
            if fault is not None:
                buf = await self._fire(fault, step, buf)
        return buf

    async def _reshape(self, buf: Any, steps: tuple[Phase, ...]) -> Any:
        """The bytes that leave: each reshaping kind acts once per message, at the first step that names
        it (an inline status truncated for its status is not truncated again for its payload)."""
        if not self._drawn():
            return buf
        for kind in self.kinds:
            for step in steps:
                fault = self._take(kind, Hook.RESHAPE, step)
                if fault is not None:
                    buf = await self._fire(fault, step, buf)
                    break
        return buf


def _steps(phase: Phase) -> tuple[Phase, ...]:
    """The protocol steps one message carries: an inline STATUS is the status and the payload."""
    return (Phase.STATUS, Phase.PAYLOAD) if phase == Phase.INLINE else (phase,)


class ChaosLink(_FaultLink):
    """A server `Link` that applies the faults drawn for the current request, then delegates."""

    kinds = tuple(SERVER_KINDS)

    async def recv(self, buf: Any, phase: Phase) -> None:
        # Each hook is offered only if something was drawn: at probability 0 a read then costs no
        # extra coroutine here (its sends are posted straight through, see `post_send`).
        if phase == Phase.REQUEST:
            previous, self._exchange = self._exchange, None
            if self._drawn(previous):
                await self._hook(Hook.BEFORE_RECV, phase, exchange=previous)  # evict after a served read
            await self.inner.recv(buf, phase)
            self._exchange = Exchange(self.chaos.draw(self.port))
            if self._drawn():
                await self._hook(Hook.AFTER_RECV, phase)
            return
        if phase == Phase.COMMIT and self._exchange is not None:
            self._exchange.saw_commit = True
        if self._drawn():
            await self._hook(Hook.BEFORE_RECV, phase)
        await self.inner.recv(buf, phase)

    def _redraws(self, phase: Phase) -> bool:
        """A batch sends one PAYLOAD per slot: from the second one on, the payload-step faults draw
        again, so each slot of a batch meets them as a single read would (a truncated third payload,
        a reset mid-batch, a stall of one slot)."""
        exchange = self._exchange
        return (
            phase == Phase.PAYLOAD
            and exchange is not None
            and exchange.sent_payload
            and not self.chaos.healed
        )

    def post_send(self, buf: Any, phase: Phase) -> asyncio.Future[None] | None:
        """Post straight through when this exchange has no fault left to act here (None otherwise:
        send step by step). What keeps chaos at probability 0 as cheap as the plain transport, which
        posts ahead; a payload that would draw again also goes step by step, through `send`."""
        exchange = self._exchange
        if exchange is None or exchange.pending or self._redraws(phase):
            return None
        future = self.inner.post_send(buf, phase)  # None: the inner link goes step by step too
        if future is not None:
            exchange.sent(phase)
        return future

    async def send(self, buf: Any, phase: Phase) -> None:
        exchange = self._exchange
        if self._redraws(phase):
            assert exchange is not None
            exchange.pending.extend(f for f in self.chaos.draw(self.port) if f.payload_step)
        steps = _steps(phase)
        for step in steps:  # aborts and holds, step by step (an inline status: status first)
            await self._hook(Hook.BEFORE_SEND, step)
        buf = await self._reshape(buf, steps)
        await self.inner.send(buf, phase)
        if exchange is not None:
            exchange.sent(phase)


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


class ClientChaosLink(_FaultLink):
    """A client `Link` that misbehaves on the consumer's own side (see the module docstring).

    It posts nothing ahead (`SteppedLink`), so the client steps every transfer through it
    (receives start as tasks, in the order they are posted: `transport.link.start_recv`). One link
    carries one exchange at a time (the client's pool checks it out), so the current exchange is the
    one every step of that exchange sees.
    """

    kinds = tuple(CLIENT_KINDS)

    async def send(self, buf: Any, phase: Phase) -> None:
        if phase in (Phase.REQUEST, Phase.RESOLVE):  # a new request: one decision per fault
            self._exchange = Exchange(self.chaos.draw(self.port), request_keys(buf))
        await self._hook(Hook.BEFORE_SEND, phase)
        await self.inner.send(buf, phase)
        await self._hook(Hook.AFTER_SEND, phase)

    async def recv(self, buf: Any, phase: Phase) -> None:
        await self._hook(Hook.BEFORE_RECV, phase)
        await self.inner.recv(buf, phase)
        await self._hook(Hook.AFTER_RECV, phase)


__all__ = [
    "ChaosLink",
    "ChaosLinkWrapper",
    "ClientChaosLink",
    "InjectedFaultError",
    "TransportFault",
    "flipped",
    "make_link_wrapper",
    "wrong_size",
]
