"""Retrying UCX client: endpoint pool, port rotation, quarantine, commit and RESOLVE.

`SlotClient.read` makes one attempt on the next healthy port; retries across attempts and rounds
belong to `transport.packer`. Every await is bounded by `read_timeout` (per protocol step) or
`connect_timeout`; an endpoint that timed out is aborted and never reused, because ucxx can later
deliver a late message into whatever buffer is posted next on it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from transport import protocol as proto
from transport import ucx
from transport.buffers import ReceiveBuffers
from transport.checksum import checksum
from transport.deadline import StepDeadline
from transport.descriptor import SlotDescriptor
from transport.errors import (
    BusyError,
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    NotReadyError,
    ReadTimeoutError,
    StaleSlotError,
    TransportError,
    TruncatedError,
)
from transport.events import EventSink, NullSink
from transport.link import Link, LinkWrapper, Phase, UcxLink, discard, identity, start_recv
from transport.local import LocalReader
from transport.ring import SharedRing
from transport.ucx import init_in_loop

log = logging.getLogger(__name__)

# Refusals the server answers with a STATUS and then waits for the next request on the same endpoint.
_CLEAN_REFUSALS = (StaleSlotError, NotReadyError, BusyError)
# The payload receive is posted ahead of the status only from this size up. Below it the payload is
# an eager message UCX holds until the receive is posted, and a refusal (STALE on an overwrite ring)
# leaves no receive behind, so the endpoint goes back to the pool instead of being aborted: a new
# connect costs ~75 ms here, and a consumer that reconnects after every STALE falls further behind
# its producer until it sees nothing but STALE.
PREPOST_MIN_BYTES = 64 * 1024


@dataclass
class _PooledLink:
    link: Link
    idle_since: float  # when it was returned to the pool


@dataclass
class ReadResult:
    """A committed read: the payload and where it came from."""

    payload: np.ndarray
    port: int | None  # None: read on the same host from shared memory (no port involved)
    generation: int
    resolved: bool = False  # COMMITTED was lost and RESOLVE confirmed the commit
    token: int = 0  # the fencing token of the read that committed it (0 in single-chunk)


@dataclass
class ClientStats:
    reads: int = 0
    connects: int = 0
    quarantines: int = 0
    resolves: int = 0
    in_doubt: int = 0
    per_port_errors: dict[int, int] = field(default_factory=dict)


def _as_transport_error(exc: BaseException, what: str) -> TransportError:
    """Map ucxx/asyncio failures onto the transport hierarchy (quarantine-worthy ones)."""
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError):
        return ReadTimeoutError(f"{what}: timed out")
    name = type(exc).__name__
    ucxx_errors = sys.modules.get("ucxx.exceptions")  # loaded whenever a UCX endpoint could fail
    if ucxx_errors is not None and isinstance(exc, ucxx_errors.UCXMessageTruncatedError):
        return TruncatedError(f"{what}: {name}: {exc}")
    return ConnectionLostError(f"{what}: {name}: {exc}")


def _with_port(exc: TransportError, port: int) -> TransportError:
    exc.port = port
    return exc


# The shortest default RESOLVE window. Found by `chaos explore` on the unmutated transport: a
# one-port server whose port went down 5 ms after it served a read (the COMMIT never arrived) for
# 1.8 s left that read in doubt, because 4 x a 0.5 s read timeout of RESOLVE had passed 0.3 s after
# the port came back (scenarios/explore-resolve-outlasts-a-down-port.yaml).
RESOLVE_MIN_S = 15.0


def default_resolve_timeout(read_timeout: float) -> float:
    """How long RESOLVE keeps asking unless told otherwise: 4 read timeouts, at least RESOLVE_MIN_S.
    RESOLVE is the one wait where giving up leaves an anomaly (the slot is in doubt) and waiting costs
    one slot's latency: it must outlast a port that is down for a few seconds."""
    return max(4 * read_timeout, RESOLVE_MIN_S)


class SlotClient:
    """Async client; one instance per event loop. Use `transport.Consumer` from sync code."""

    def __init__(
        self,
        *,
        read_timeout: float = 2.0,
        connect_timeout: float = 2.0,
        quarantine: float = 5.0,
        max_age: float = 5.0,
        resolve_timeout: float | None = None,
        protocol: str = "commit",
        link_wrapper: LinkWrapper | None = None,
        events: EventSink | None = None,
        recycle_bytes: int = 256 << 20,
        inline_max: int = proto.INLINE_MAX,
        local: bool = True,
        local_lease: float = 30.0,
    ) -> None:
        """`local=False` turns the same-host path off (every read goes over UCX); `local_lease`
        bounds how long a same-host read or borrow may hold its slot."""
        if recycle_bytes < 0:
            raise ConfigError(f"recycle_bytes={recycle_bytes!r}: must be >= 0 (0 turns recycling off)")
        for name, value in (
            ("read_timeout", read_timeout),
            ("connect_timeout", connect_timeout),
            ("max_age", max_age),
        ):
            if not value > 0:
                raise ConfigError(f"{name}={value!r}: must be > 0 seconds")
        if quarantine < 0:
            raise ConfigError(f"quarantine={quarantine!r}: must be >= 0 seconds")
        if protocol not in ("commit", "single-chunk"):
            raise ConfigError(f"protocol={protocol!r}: expected 'commit' or 'single-chunk'")
        self.read_timeout = read_timeout
        self.inline_max = inline_max  # 0: never ask for inline payloads
        self.connect_timeout = connect_timeout
        self.quarantine_s = quarantine
        self.max_age = max_age
        self.resolve_timeout = (
            resolve_timeout if resolve_timeout is not None else default_resolve_timeout(read_timeout)
        )
        self.protocol = protocol
        self.link_wrapper = link_wrapper or identity
        self.events = events or NullSink()
        self.stats = ClientStats()
        self._pool: dict[tuple[str, int], list[_PooledLink]] = {}
        self._quarantined: dict[int, float] = {}
        self._rotation = itertools.count()
        self._closed = False
        self._ucx_acquired = False
        # Large receive buffers nobody holds any more are reused (see transport.buffers).
        self._buffers = ReceiveBuffers(recycle_bytes)
        self.local = LocalReader(local_lease, self.events) if local and protocol == "commit" else None

    # -- port choice -----------------------------------------------------------------------------

    def healthy_ports(self, ports: tuple[int, ...]) -> list[int]:
        """Ports not in quarantine, in rotation order; all of them if every port is quarantined."""
        now = time.monotonic()
        start = next(self._rotation) % len(ports)
        rotated = list(ports[start:] + ports[:start])
        healthy = [p for p in rotated if self._quarantined.get(p, 0.0) <= now]
        return healthy or rotated

    def quarantine(self, port: int, reason: str) -> None:
        if self.quarantine_s <= 0:
            return
        self._quarantined[port] = time.monotonic() + self.quarantine_s
        self.stats.quarantines += 1
        self.events.emit("quarantine", port=port, reason=reason, seconds=self.quarantine_s)

    # -- endpoint pool -----------------------------------------------------------------------------

    async def _checkout(self, host: str, port: int) -> Link:
        idle = self._pool.get((host, port), [])
        now = time.monotonic()
        engine = ucx.engine()
        if idle and engine is not None and now - idle[-1].idle_since > 0.01:
            # A sync Consumer drives the loop only inside its calls: an eviction that arrived while
            # the caller was elsewhere is only seen once the worker progresses.
            engine.poll()
        while idle:
            pooled = idle.pop()
            if now - pooled.idle_since < self.max_age and not pooled.link.closed:
                return pooled.link
            pooled.link.abort()  # idle as long as the server's eviction may allow: replace it
        init_in_loop()
        if not self._ucx_acquired:
            ucx.acquire()
            self._ucx_acquired = True
        import ucxx

        try:
            endpoint = await asyncio.wait_for(ucxx.create_endpoint(host, port), self.connect_timeout)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise _as_transport_error(exc, f"connect {host}:{port}") from exc
        self.stats.connects += 1
        link = self.link_wrapper(UcxLink(endpoint, port, "client"))
        try:
            self.events.emit("connect", port=port)  # a new endpoint: evidence an old one was replaced
        except BaseException:
            link.abort()  # never leak a live endpoint to the garbage collector's finaliser
            raise
        return link

    async def warm(self, host: str, ports: tuple[int, ...] | list[int]) -> int:
        """Start UCX and pool one endpoint per port ahead of the first read (measured here: the
        first read of a process costs ~0.86 s, UCX start plus connect; each later connect ~75 ms).
        A port that does not answer is skipped. Returns how many endpoints were pooled."""

        async def one(port: int) -> bool:
            try:
                link = await self._checkout(host, port)
            except TransportError:
                return False
            self._checkin(host, port, link)
            return True

        return sum(await asyncio.gather(*(one(p) for p in ports)))

    def _checkin(self, host: str, port: int, link: Link) -> None:
        if self._closed or link.closed:
            link.abort()
            return
        self._pool.setdefault((host, port), []).append(_PooledLink(link, time.monotonic()))

    # -- one read attempt ----------------------------------------------------------------------------

    async def read(self, desc: SlotDescriptor, out: np.ndarray | None = None) -> ReadResult:
        """One attempt on the next healthy port; raises a TransportError on failure.

        The error carries `.port` (the port tried) so retry layers can attribute it.
        """
        if self._closed:
            raise ConfigError("client is closed")
        if self.local is not None and (ring := self.local.ring_for(desc)) is not None:
            self.stats.reads += 1
            token, payload = self.local.read_committed(
                ring, desc, self._buffers.take(desc.nbytes) if out is None else out
            )
            return ReadResult(payload, None, desc.generation, token=token)
        if not desc.ports:
            raise ConfigError("descriptor has no ports")
        port = self.healthy_ports(desc.ports)[0]
        self.stats.reads += 1
        try:
            link = await self._checkout(desc.host, port)
        except TransportError as exc:
            self._link_failed(port, exc)
            raise
        try:
            result = await self._attempt(link, desc, port, out)
        except BaseException as exc:
            if getattr(exc, "link_clean", False):
                self._checkin(desc.host, port, link)
            else:
                link.abort()
            if isinstance(exc, TransportError):
                self._link_failed(port, exc)
            raise
        self._checkin(desc.host, port, link)
        return result

    def read_local(self, ring: SharedRing, desc: SlotDescriptor, out: np.ndarray | None = None) -> np.ndarray:
        """One same-host read (no await: the sync Consumer calls it without a loop turn)."""
        assert self.local is not None
        self.stats.reads += 1
        buf = self._buffers.take(desc.nbytes) if out is None else out  # large ones recycled
        return self.local.read(ring, desc, buf)

    def _link_failed(self, port: int, exc: TransportError) -> None:
        exc.port = port
        if exc.quarantines:  # the link misbehaved (never our own misuse: see transport.errors)
            self.stats.per_port_errors[port] = self.stats.per_port_errors.get(port, 0) + 1
            self.quarantine(port, type(exc).__name__)

    def _buffer(self, nbytes: int, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return self._buffers.take(nbytes)
        if out.dtype != np.uint8 or out.ndim != 1 or out.nbytes < nbytes or not out.flags.c_contiguous:
            raise ConfigError(f"out: need a contiguous 1-d uint8 array of at least {nbytes} bytes")
        return out[:nbytes]

    # Long: a read's five steps in order under one bound and one cleanup, which must see every step.
    async def _attempt(
        self, link: Link, desc: SlotDescriptor, port: int, out: np.ndarray | None
    ) -> ReadResult:
        """Drive one `ClientRead`; a lost COMMITTED goes to RESOLVE, never to a blind retry."""
        single_chunk = self.protocol == "single-chunk"
        cr = proto.client_machine(self.protocol)(
            desc.slot,
            desc.generation,
            0 if single_chunk else proto.new_token(),
            desc.capability,
            desc.nbytes,
            desc.checksum,
        )
        generation = desc.generation
        bound = StepDeadline(self.read_timeout)  # one reusable timer for every step of this attempt
        payload: np.ndarray | None = None
        payload_recv: asyncio.Future[None] | None = None
        committed: asyncio.Future[None] | None = None
        try:
            # One block bounds the whole exchange; `restart()` gives each step its own read_timeout.
            async with bound:
                room = cr.inline_room(self.inline_max)
                await link.send(proto.encode(cr.request_frame(room)), Phase.REQUEST)
                bound.restart()
                # With room, the STATUS receive also takes a small payload (and its closing trailer).
                msg = np.zeros(proto.FRAME_SIZE + (room + len(proto.TRAILER) if room else 0), dtype=np.uint8)
                buf = msg[: proto.FRAME_SIZE]
                # A link that posts ahead starts it now; a stepped one when it is awaited below.
                status_recv = link.post_recv(msg, Phase.STATUS) or link.recv(msg, Phase.STATUS)
                if not single_chunk and not room and desc.nbytes >= PREPOST_MIN_BYTES:
                    # Post the payload receive right behind the status one (the descriptor says its
                    # size): a large payload's rendezvous then starts without waiting for us to read
                    # the status. Order holds: a bare link posts both now; on a wrapped link the
                    # status receive starts when awaited below and this task a loop step later.
                    payload = self._buffer(desc.nbytes, out)
                    payload_recv = start_recv(link, payload, Phase.PAYLOAD)
                await status_recv
                nbytes = cr.on_status(buf)
                if single_chunk:  # the single-chunk server serves whatever generation is there
                    generation = proto.decode(buf).generation
                bound.restart()
                if payload_recv is not None:
                    await payload_recv
                elif cr.inline:
                    inline = np.frombuffer(cr.inline_payload(msg), dtype=np.uint8)
                    payload = inline if out is None else self._buffer(nbytes, out)
                    if out is not None:
                        payload[:] = inline
                else:
                    payload = self._buffer(nbytes, out)
                    if nbytes:
                        await link.recv(payload, Phase.PAYLOAD)
                assert payload is not None
                commit = cr.on_payload(checksum(payload))
                if commit is None:
                    return ReadResult(payload, port, generation, token=cr.token)
                buf = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
                committed = link.post_recv(buf, Phase.COMMITTED)  # posted before COMMIT is answered
                bound.restart()
                await link.send(proto.encode(commit), Phase.COMMIT)
                bound.restart()
                await (committed or link.recv(buf, Phase.COMMITTED))
                cr.on_committed(buf)
                return ReadResult(payload, port, generation, token=cr.token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if cr.state not in (proto.ClientState.FAILED, proto.ClientState.IN_DOUBT) or cr.error is not exc:
                cr.on_error(exc)
        finally:
            if payload is not None and cr.state not in (proto.ClientState.DONE, proto.ClientState.IN_DOUBT):
                self._buffers.forget(payload)  # a failed read's receive may still be live in UCX
            bound.close()
            # The link is aborted on any failure: never leave a posted receive behind.
            discard(payload_recv)
            discard(committed)
        if cr.state is proto.ClientState.FAILED:
            assert cr.error is not None
            if isinstance(cr.error, _CLEAN_REFUSALS) and payload_recv is None and not single_chunk:
                cr.error.link_clean = True  # type: ignore[attr-defined]  # nothing left posted on it
            raise cr.error
        link.abort()
        self.quarantine(port, "commit-unconfirmed")
        assert payload is not None
        await self._resolve(desc, cr)
        return ReadResult(payload, port, generation, resolved=True, token=cr.token)

    # -- one batched attempt --------------------------------------------------------------------------

    async def read_batch(self, descs: list[SlotDescriptor]) -> list[ReadResult | TransportError]:
        """One REQUEST_BATCH for `descs` (one producer: same host and ports) on the next healthy port.

        Per slot: a ReadResult (committed) or the TransportError that slot met (each error carries
        `.port`). Never raises for one slot's failure; a link failure fails (or leaves in doubt, then
        RESOLVEs) every slot of the batch on its own.
        """
        if self._closed:
            raise ConfigError("client is closed")
        first = descs[0]
        if not first.ports:
            raise ConfigError("descriptor has no ports")
        port = self.healthy_ports(first.ports)[0]
        self.stats.reads += len(descs)
        try:
            link = await self._checkout(first.host, port)
        except TransportError as exc:
            self._link_failed(port, exc)
            return [_with_port(exc, port)] * len(descs)
        cb = proto.ClientBatch(
            [
                proto.BatchSlot(d.slot, d.generation, d.nbytes, d.checksum, proto.as_capability(d.capability))
                for d in descs
            ],
            proto.new_token(),
            self.inline_max,
        )
        payloads: list[np.ndarray | None] = [None] * len(descs)
        try:
            await self._batch_exchange(link, cb, payloads)
        except asyncio.CancelledError:
            link.abort()
            raise
        except Exception as exc:
            link.abort()
            cb.on_error(exc)
            self._link_failed(port, _as_transport_error(exc, f"batch on port {port}"))
            for i, payload in enumerate(payloads):
                if payload is not None and not isinstance(cb.errors[i], InDoubtError):
                    self._buffers.forget(payload)  # its receive may still be live in UCX
        else:
            bad = next((e for e in cb.errors if e is not None and e.quarantines), None)
            if bad is not None:  # e.g. one truncated payload: the exchange held, the port misbehaved
                link.abort()
                self._link_failed(port, bad)
            else:
                self._checkin(first.host, port, link)
        out: list[ReadResult | TransportError] = []
        for i, d in enumerate(descs):
            err = cb.errors[i]
            if err is None:
                payload = payloads[i]
                assert payload is not None
                out.append(ReadResult(payload, port, d.generation, token=cb.token))
                continue
            if isinstance(err, InDoubtError):
                try:
                    await self._resolve(d, cb.resolve_read(i))
                    out.append(
                        ReadResult(payloads[i], port, d.generation, resolved=True, token=cb.token)  # type: ignore[arg-type]
                    )
                    continue
                except TransportError as resolved_err:
                    err = resolved_err
            out.append(_with_port(err, port))
        return out

    async def _batch_exchange(
        self, link: Link, cb: proto.ClientBatch, payloads: list[np.ndarray | None]
    ) -> None:
        """REQUEST_BATCH -> STATUS_BATCH -> payloads -> COMMIT_BATCH -> COMMITTED_BATCH, each step bounded."""
        bound = StepDeadline(self.read_timeout)
        status_recv: asyncio.Future[None] | None = None
        try:
            async with bound:
                status = np.zeros(cb.status_size(), dtype=np.uint8)
                status_recv = start_recv(link, status, Phase.STATUS)
                await link.send(cb.request_message(), Phase.REQUEST)
                bound.restart()
                await status_recv
                sizes = cb.on_status(status)
                if cb.state is proto.BatchState.DONE:
                    return
                for i, n in zip(cb.pending, sizes, strict=True):
                    payloads[i] = buf = self._buffers.take(n)
                    bound.restart()
                    await link.recv(buf, Phase.PAYLOAD)
                checksums: dict[int, int] = {}
                for i, held in enumerate(cb.ok):
                    if not held:
                        continue
                    place = cb.inline[i]
                    if place is not None:
                        offset, n = place
                        payloads[i] = status[offset : offset + n]
                    elif payloads[i] is None:
                        payloads[i] = np.empty(0, dtype=np.uint8)
                    checksums[i] = checksum(payloads[i])
                commit = cb.on_payloads(checksums)
                reply = np.zeros(cb.committed_size(), dtype=np.uint8)
                committed = start_recv(link, reply, Phase.COMMITTED)
                try:
                    bound.restart()
                    await link.send(commit, Phase.COMMIT)
                    bound.restart()
                    await committed
                finally:
                    discard(committed)
                cb.on_committed(reply)
        finally:
            bound.close()
            discard(status_recv)

    async def _resolve(self, desc: SlotDescriptor, cr: proto.ClientRead) -> None:
        """RESOLVE on other endpoints until answered or `resolve_timeout` passes (then in-doubt)."""
        self.stats.resolves += 1
        bound = StepDeadline(self.read_timeout)
        deadline = time.monotonic() + self.resolve_timeout
        while time.monotonic() < deadline:
            for port in self.healthy_ports(desc.ports):
                if time.monotonic() >= deadline:
                    break
                try:
                    link = await self._checkout(desc.host, port)
                except TransportError as exc:
                    self._link_failed(port, exc)
                    continue
                try:
                    buf = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
                    async with bound:
                        await link.send(proto.encode(cr.resolve_frame()), Phase.RESOLVE)
                        bound.restart()
                        await link.recv(buf, Phase.RESOLVE)
                    cr.on_resolved(buf)
                    self._checkin(desc.host, port, link)
                    return
                except asyncio.CancelledError:
                    link.abort()
                    raise
                except Exception as exc:
                    link.abort()
                    if cr.state is proto.ClientState.FAILED:  # NOT_COMMITTED: safe to read again
                        assert cr.error is not None
                        raise cr.error from None
                    if cr.resolution is proto.Resolution.UNKNOWN:
                        self.stats.in_doubt += 1
                        assert cr.error is not None
                        raise cr.error from None
                    if not isinstance(exc, TransportError):
                        exc = _as_transport_error(exc, f"resolve on port {port}")
                    self._link_failed(port, exc)
            await asyncio.sleep(min(0.1, self.read_timeout))
        self.stats.in_doubt += 1
        raise InDoubtError(
            f"slot {desc.key}: commit outcome unknown after {self.resolve_timeout:.1f}s of RESOLVE"
        )

    # -- shutdown -------------------------------------------------------------------------------------

    async def close(self, *, release_ucx: bool = True) -> None:
        """Close pooled endpoints (bounded) and let ucxx shut down if this was its last user.

        `release_ucx=False` keeps ucxx up: right for a loop that outlives the client (the sync
        Consumer's shared loop), where a reset would only cost a second per close.
        """
        self._closed = True
        self._buffers.clear()
        if self.local is not None:
            self.local.close()
        pooled = [p.link for idle in self._pool.values() for p in idle]
        self._pool.clear()
        outside_cancel: asyncio.CancelledError | None = None
        for link in pooled:
            if outside_cancel is not None:
                link.abort()  # cancelled: finish without awaiting anything more
                continue
            try:
                await asyncio.wait_for(link.close(), self.read_timeout)
            except asyncio.CancelledError as exc:
                link.abort()
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    outside_cancel = exc  # our caller is being cancelled: re-raised after cleanup
                # else: ucxx cancelled its own close of a broken endpoint; nothing to propagate
            except Exception:
                link.abort()
        if self._ucx_acquired and release_ucx:
            self._ucx_acquired = False
            ucx.release()
        if outside_cancel is not None:
            raise outside_cancel

    async def __aenter__(self) -> SlotClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
