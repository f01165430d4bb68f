"""Multi-port UCX server over a SharedRing: one listener per port, one handler task per endpoint.

The server owns no retry policy: it answers each request, enforces the ring's state machine and
releases whatever a failed read held. Every await is bounded (`step_timeout` for a protocol step,
`idle_evict` for a quiet endpoint), so a stalled or vanished client can hold a slot for at most one
step timeout before the handler's `finally` releases it.

Limits against endpoints that connect and never speak (ucxx listeners bind every interface): at most
`max_endpoints` handlers live at once (a new endpoint beyond that is aborted on arrival and counted in
`stats["refused"]`), and a new endpoint must send its first frame within `first_frame_timeout`
(`stats["silent"]` counts those closed for not doing so). A client that already holds an endpoint
keeps it, so a flood of silent connections costs real consumers nothing but new connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from transport import protocol as proto
from transport import ucx
from transport.deadline import StepDeadline
from transport.errors import ConfigError
from transport.events import EventSink, NullSink
from transport.link import Link, LinkWrapper, Phase, UcxLink, discard, identity
from transport.ring import ReadCode, SharedRing
from transport.ucx import init_in_loop

log = logging.getLogger(__name__)

PROTOCOLS = ("commit", "single-chunk")


class SlotServer:
    """Serves the slots of one ring on N ports (0 = ephemeral) from a running asyncio loop."""

    def __init__(
        self,
        ring: SharedRing,
        ports: Sequence[int] = (0,),
        *,
        protocol: str = "commit",
        idle_evict: float = 10.0,
        step_timeout: float = 5.0,
        lease: float = 30.0,
        reclaim_interval: float = 1.0,
        commit_log: int = 65536,
        link_wrapper: LinkWrapper | None = None,
        events: EventSink | None = None,
        max_endpoints: int = 256,
        first_frame_timeout: float = 2.0,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol={protocol!r}: expected one of {', '.join(PROTOCOLS)}")
        if not ports:
            raise ConfigError("ports: at least one port is needed")
        if not isinstance(max_endpoints, int) or max_endpoints < 1:
            raise ConfigError(f"max_endpoints={max_endpoints!r}: must be a positive integer")
        for name, value in (
            ("idle_evict", idle_evict),
            ("step_timeout", step_timeout),
            ("lease", lease),
            ("first_frame_timeout", first_frame_timeout),
        ):
            if not value > 0:
                raise ConfigError(f"{name}={value!r}: must be > 0 seconds")
        self.ring = ring
        self.requested_ports = list(ports)
        self.protocol = protocol
        self.idle_evict = idle_evict
        self.step_timeout = step_timeout
        self.lease = lease
        self.reclaim_interval = reclaim_interval
        self.max_endpoints = max_endpoints
        self.first_frame_timeout = first_frame_timeout
        self.commit_log = proto.CommitLog(commit_log)
        self.link_wrapper = link_wrapper or identity
        self.events = events or NullSink()
        self.ports: list[int] = []
        self.stats: dict[str, int] = {
            "served": 0,
            "committed": 0,
            "released": 0,
            "resolved": 0,
            "bad_requests": 0,
            "unauthorized": 0,
            "evicted": 0,
            "silent": 0,
            "refused": 0,
            "late_finalise": 0,
            "errors": 0,
        }
        self._listeners: list[Any] = []
        self._handlers: set[asyncio.Task[None]] = set()
        self._reclaimer: asyncio.Task[None] | None = None
        self._stopping = False
        self._ucx_acquired = False
        self._ring_key = proto.RingKey(ring.secret, ring.ring_id)  # checks capabilities; never sent

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> list[int]:
        """Listen on every port; returns the real port numbers in order."""
        init_in_loop()
        ucx.acquire()
        self._ucx_acquired = True
        import ucxx

        for index, port in enumerate(self.requested_ports):
            listener = ucxx.create_listener(self._callback_for(index), port)
            self._listeners.append(listener)
            self.ports.append(listener.port)
        self._reclaimer = asyncio.get_running_loop().create_task(self._reclaim_loop())
        log.info("slot server on ports %s (protocol %s)", self.ports, self.protocol)
        return list(self.ports)

    async def stop(self, timeout: float = 5.0) -> None:
        """Close listeners, abort live endpoints (their handlers release held slots), within `timeout`."""
        self._stopping = True  # from here new endpoints are aborted on arrival
        if self._reclaimer is not None:
            self._reclaimer.cancel()
        for task in list(self._handlers):
            task.cancel()
        pending = [t for t in (*self._handlers, self._reclaimer) if t is not None]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        self._handlers.clear()
        # Listeners last, a loop turn after their handlers ended: ucxx warns about a listener
        # destroyed while its handlers are still tracked.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for listener in self._listeners:
            listener.close()
        self._listeners.clear()
        if self._ucx_acquired:
            self._ucx_acquired = False
            ucx.release()

    async def __aenter__(self) -> SlotServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _callback_for(self, index: int) -> Any:
        async def on_connect(endpoint: Any) -> None:
            if self._stopping or len(self._handlers) >= self.max_endpoints:
                if not self._stopping:
                    self.stats["refused"] += 1
                endpoint.abort()
                return
            task = asyncio.current_task()
            assert task is not None
            self._handlers.add(task)
            try:
                await self._handle(endpoint, index)
            finally:
                self._handlers.discard(task)

        return on_connect

    async def _reclaim_loop(self) -> None:
        while True:
            await asyncio.sleep(self.reclaim_interval)
            try:
                report = self.ring.reclaim()
                if report:  # evidence for the harness: a dead reader's or writer's slot came back
                    self.events.emit("reclaimed", reading=list(report.reading), writing=list(report.writing))
            except Exception:  # a reclaim failure must not stop serving
                log.exception("ring reclaim failed")

    # -- per-endpoint handler ----------------------------------------------------------------------

    @property
    def live_endpoints(self) -> int:
        """Handlers running now (each owns one endpoint)."""
        return len(self._handlers)

    async def _handle(self, endpoint: Any, index: int) -> None:
        port = self.ports[index]
        link = self.link_wrapper(UcxLink(endpoint, port, "server"))
        # One reusable timer each for the idle wait and the protocol steps of this handler's task;
        # the first wait is short: a new endpoint that says nothing is closed quickly.
        idle, step = StepDeadline(self.idle_evict), StepDeadline(self.step_timeout)
        first = StepDeadline(min(self.first_frame_timeout, self.idle_evict))
        wait, quiet = first, "silent"
        try:
            while not self._stopping:
                # Room for the largest REQUEST_BATCH; a plain REQUEST is shorter (UCX accepts that).
                buf = np.zeros(proto.REQUEST_MAX, dtype=np.uint8)
                try:
                    async with wait:
                        await link.recv(buf, Phase.REQUEST)
                except TimeoutError:
                    self.stats[quiet] += 1
                    break
                wait, quiet = idle, "evicted"
                if buf[4] == proto.MsgType.REQUEST_BATCH and self.protocol == "commit":
                    if not await self._serve_batch(link, buf, index, step):
                        break
                elif not await self._serve_one(link, buf[: proto.FRAME_SIZE], index, step):
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reset, cancel, truncation: the client retries elsewhere
            self.stats["errors"] += 1
            log.debug("endpoint on port %s ended: %r", port, exc)
        finally:
            idle.close()
            step.close()
            first.close()
            if not link.closed:
                link.abort()

    async def _serve_one(self, link: Link, request: np.ndarray, index: int, step: StepDeadline) -> bool:
        """Drive one `ServerRead` from the request to Done (True: keep the endpoint) or Close."""
        ring = self.ring
        srv = proto.server_machine(self.protocol)(self._ring_key, self.commit_log, slots=ring.slots)
        try:
            action = await self._drive(srv, srv.on_request(request), self._perform, link, index, step)
        finally:
            if srv.holds_slot and ring.release_read(srv.slot, srv.generation, srv.token):
                self.stats["released"] += 1
        return isinstance(action, proto.Done)

    async def _serve_batch(self, link: Link, request: np.ndarray, index: int, step: StepDeadline) -> bool:
        """Drive one `ServerBatch` from REQUEST_BATCH to Done (True: keep the endpoint) or Close."""
        ring = self.ring
        srv = proto.ServerBatch(self._ring_key, self.commit_log, slots=ring.slots)
        try:
            action = await self._drive(srv, srv.on_request(request), self._perform_batch, link, index, step)
        finally:
            for e in list(srv.held.values()):
                if ring.release_read(e.slot, e.generation, srv.token):
                    self.stats["released"] += 1
            srv.held.clear()
        return isinstance(action, proto.Done)

    @staticmethod
    async def _drive(srv: Any, action: Any, perform: Any, link: Link, index: int, step: StepDeadline) -> Any:
        """Perform a machine's actions until Done or Close; a failed step goes to `srv.on_error`."""
        while not isinstance(action, proto.Done | proto.Close):
            try:
                action = await perform(link, srv, action, index, step)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # reset, timeout, cancel of one step
                action = srv.on_error(repr(exc))
        return action

    async def _perform_batch(
        self, link: Link, srv: proto.ServerBatch, action: proto.BatchAction, index: int, step: StepDeadline
    ) -> proto.BatchAction:
        ring = self.ring
        match action:
            case proto.BeginBatch(entries=entries, token=token):
                results: list[tuple[int, int, int, int] | None] = []
                for e in entries:
                    if e is None:
                        results.append(None)
                        continue
                    code, info = ring.begin_read(e.slot, e.generation, token, self.lease)
                    if code == ReadCode.OK:
                        self.stats["served"] += 1
                        self.events.emit(
                            "served",
                            key=f"{e.slot}:{info.generation}",
                            port=index,
                            token=token,
                            protocol=self.protocol,
                            requested=e.generation,
                        )
                    results.append((int(code), info.generation, info.nbytes, info.checksum))
                return srv.on_begun(results)
            case proto.SendStatusBatch(inline=inline):
                msg = proto.fill_inline(action, ring.payload_view)
                async with step:  # with payloads inside, it is their payload step too (chaos faults)
                    await link.send(msg, Phase.INLINE if inline else Phase.STATUS)
                return srv.on_sent()
            case proto.SendPayloads(items=items):
                for slot, nbytes in items:  # one message per slot, so faults can hit any one of them
                    await self._send_payload(link, slot, nbytes, step)
                return srv.on_sent()
            case proto.AwaitCommitBatch(size=size):
                buf = np.zeros(size, dtype=np.uint8)
                async with step:
                    await link.recv(buf, Phase.COMMIT)
                return srv.on_commit(buf)
            case proto.FinaliseBatch(items=items):
                oks = [self._finalise(kind, slot, gen, token, index) for kind, slot, gen, token in items]
                return srv.on_finalised(oks)
            case proto.SendBatchReply(data=data):
                async with step:
                    await link.send(data, Phase.COMMITTED)
                return srv.on_sent()
        raise AssertionError(f"unhandled batch action {action!r}")

    # Long: one match arm per ServerAction, in the machine's order (the protocol split may shorten it).
    async def _perform(
        self,
        link: Link,
        srv: proto.ServerRead | proto.SingleChunkServerRead,
        action: proto.ServerAction,
        index: int,
        step: StepDeadline,
    ) -> proto.ServerAction:
        ring = self.ring
        match action:
            case proto.BeginRead(slot=slot, generation=generation, token=token, single_chunk=single_chunk):
                if single_chunk:
                    code, info = ring.begin_read_single_chunk(slot, self.lease)
                else:
                    code, info = ring.begin_read(slot, generation, token, self.lease)
                if code == ReadCode.OK:
                    self.stats["served"] += 1
                    key = f"{slot}:{info.generation}"
                    # `requested`: the generation the request named (0 in single-chunk), so the
                    # history shows a read served a generation other than the one asked for.
                    self.events.emit(
                        "served",
                        key=key,
                        port=index,
                        token=token,
                        protocol=self.protocol,
                        requested=generation,
                    )
                return srv.on_begin_read(int(code), info.generation, info.nbytes, info.checksum)
            case proto.SendFrame(data=data, frame=frame):
                if frame.code == proto.Status.UNAUTHORIZED and frame.type == proto.MsgType.STATUS:
                    self.stats["unauthorized"] += 1
                elif frame.code == proto.Status.BAD_REQUEST and frame.type == proto.MsgType.STATUS:
                    self.stats["bad_requests"] += 1
                phase = _REPLY_PHASE.get(frame.type, Phase.STATUS)
                sent = link.post_send(data, phase)
                async with step:
                    await (sent or link.send(data, phase))
                return srv.on_sent()
            case proto.SendStatus(data=data, slot=slot, nbytes=nbytes, inline=True):
                msg = proto.inline_message(data, ring.payload_view(slot, nbytes))
                async with step:
                    await link.send(msg, Phase.INLINE)
                return srv.on_sent()
            case proto.SendStatus(data=data, slot=slot, nbytes=nbytes):
                await self._send_status(link, data, slot, nbytes, step)
                return srv.on_sent()
            case proto.AwaitCommit():
                buf = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
                async with step:
                    await link.recv(buf, Phase.COMMIT)
                return srv.on_commit(buf)
            case proto.Finalise(kind=kind, slot=slot, generation=generation, token=token):
                return srv.on_finalised(self._finalise(kind, slot, generation, token, index))
            case proto.Fence(slot=slot, generation=generation, token=token):
                ring.release_read(slot, generation, token)
                info = ring.info(slot)
                next_action = srv.on_fenced(
                    info.generation,
                    int(info.state),
                    info.last_commit_token,
                    ring.committed_token(slot, generation),
                )
                self.stats["resolved"] += 1
                assert srv.resolution is not None
                self.events.emit(
                    "resolved",
                    key=f"{slot}:{generation}",
                    port=index,
                    token=token,
                    resolution=srv.resolution.name,
                )
                return next_action
        raise AssertionError(f"unhandled server action {action!r}")

    async def _send_status(self, link: Link, data: bytes, slot: int, nbytes: int, step: StepDeadline) -> None:
        """STATUS OK, then its PAYLOAD (if any). A wrapped link sends one step at a time, as its faults
        expect; on a bare link the payload is posted right behind the status and both are awaited at
        once (a completed send never meant the peer had it, so nothing is lost by not waiting)."""
        status_sent = link.post_send(data, Phase.STATUS)
        if status_sent is None:
            async with step:
                await link.send(data, Phase.STATUS)
            if nbytes:
                await self._send_payload(link, slot, nbytes, step)
            return
        if not nbytes:
            async with step:
                await status_sent
            return
        view = np.frombuffer(self.ring.payload_view(slot, nbytes), dtype=np.uint8)
        payload_sent = link.post_send(view, Phase.PAYLOAD)
        try:
            async with step:
                await status_sent
                await (payload_sent or link.send(view, Phase.PAYLOAD))
        finally:
            del view
            discard(payload_sent)

    async def _send_payload(self, link: Link, slot: int, nbytes: int, step: StepDeadline) -> None:
        """One PAYLOAD straight from the ring's memory (no copy), bounded by the step timeout."""
        view = np.frombuffer(self.ring.payload_view(slot, nbytes), dtype=np.uint8)
        try:
            async with step:
                await link.send(view, Phase.PAYLOAD)
        finally:
            del view

    def _finalise(self, kind: str, slot: int, generation: int, token: int, index: int) -> bool:
        """The ring call for a Finalise action; no await here (the commit log must see it atomically)."""
        ring = self.ring
        key = f"{slot}:{generation}"
        if kind == "commit":
            ok = ring.commit_read(slot, generation, token)
            if ok:
                self.stats["committed"] += 1
                self.events.emit("committed", key=key, port=index, token=token)
            else:
                self.stats["late_finalise"] += 1
                self.events.emit("late_finalise", key=key, port=index, token=token)
            return ok
        if kind == "single-chunk":
            ok = ring.finalise_single_chunk(slot)
            if ok:
                self.stats["committed"] += 1
                self.events.emit("committed", key=key, port=index, token=0)
            return ok
        ok = ring.release_read(slot, generation, token)
        if ok:
            self.stats["released"] += 1
        return ok


_REPLY_PHASE = {
    proto.MsgType.STATUS: Phase.STATUS,
    proto.MsgType.COMMITTED: Phase.COMMITTED,
    proto.MsgType.RESOLVED: Phase.RESOLVE,
}
