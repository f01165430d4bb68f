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
    ConfigError,
    ConnectionLostError,
    InDoubtError,
    ProtocolError,
    ReadTimeoutError,
    TransportError,
    TruncatedError,
)
from transport.events import EventSink, NullSink
from transport.link import Link, LinkWrapper, Phase, UcxLink, discard, identity, post_recv
from transport.ucx import init_in_loop

log = logging.getLogger(__name__)

# Errors after which a port is quarantined: the link itself misbehaved (a non-retryable error, e.g.
# a LocalProtocolError, is this process's own fault and never blames the port).
_LINK_FAULTS = (ConnectionLostError, ReadTimeoutError, TruncatedError, ProtocolError)


@dataclass
class _PooledLink:
    link: Link
    idle_since: float  # when it was returned to the pool


@dataclass
class ReadResult:
    """A committed read: the payload and where it came from."""

    payload: np.ndarray
    port: int
    generation: int
    resolved: bool = False  # COMMITTED was lost and RESOLVE confirmed the commit


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
    if "Truncated" in name:
        return TruncatedError(f"{what}: {name}: {exc}")
    return ConnectionLostError(f"{what}: {name}: {exc}")


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
    ) -> None:
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
        self.connect_timeout = connect_timeout
        self.quarantine_s = quarantine
        self.max_age = max_age
        self.resolve_timeout = resolve_timeout if resolve_timeout is not None else 4 * read_timeout
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
        return self.link_wrapper(UcxLink(endpoint, port, "client"))

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
            link.abort()
            if isinstance(exc, TransportError):
                self._link_failed(port, exc)
            raise
        self._checkin(desc.host, port, link)
        return result

    def _link_failed(self, port: int, exc: TransportError) -> None:
        exc.port = port  # type: ignore[attr-defined]
        if isinstance(exc, _LINK_FAULTS) and exc.retryable:  # not our own misuse (LocalProtocolError)
            self.stats.per_port_errors[port] = self.stats.per_port_errors.get(port, 0) + 1
            self.quarantine(port, type(exc).__name__)

    def _buffer(self, nbytes: int, out: np.ndarray | None) -> np.ndarray:
        if out is None:
            return self._buffers.take(nbytes)
        if out.dtype != np.uint8 or out.ndim != 1 or out.nbytes < nbytes or not out.flags.c_contiguous:
            raise ConfigError(f"out: need a contiguous 1-d uint8 array of at least {nbytes} bytes")
        return out[:nbytes]

    async def _attempt(
        self, link: Link, desc: SlotDescriptor, port: int, out: np.ndarray | None
    ) -> ReadResult:
        """Drive one `ClientRead`; a lost COMMITTED goes to RESOLVE, never to a blind retry."""
        legacy = self.protocol == "single-chunk"
        cr = proto.ClientRead(
            desc.slot,
            desc.generation,
            0 if legacy else proto.new_token(),
            desc.capability,
            desc.nbytes,
            desc.checksum,
            self.protocol,  # type: ignore[arg-type]
        )
        generation = desc.generation
        bound = StepDeadline(self.read_timeout)  # one reusable timer for every step of this attempt
        payload: np.ndarray | None = None
        payload_recv: asyncio.Future[None] | None = None
        committed: asyncio.Future[None] | None = None
        bare = hasattr(link, "post_recv")  # a bare UcxLink: receives can be posted ahead, in order
        try:
            # One block bounds the whole exchange; `restart()` gives each step its own read_timeout.
            async with bound:
                await link.send(proto.encode(cr.request_frame()), Phase.REQUEST)
                bound.restart()
                buf = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
                status_recv = post_recv(link, buf, Phase.STATUS) if bare else link.recv(buf, Phase.STATUS)
                if not legacy and desc.nbytes:
                    # Post the payload receive right behind the status one (the descriptor says its
                    # size): a large payload's rendezvous then starts without waiting for us to read
                    # the status. Order holds: a bare link posts both now; on a wrapped link the
                    # status receive starts when awaited below and this task a loop step later.
                    payload = self._buffer(desc.nbytes, out)
                    payload_recv = post_recv(link, payload, Phase.PAYLOAD)
                await status_recv
                nbytes = cr.on_status(buf)
                if legacy:
                    generation = proto.decode(buf).generation  # the legacy server serves whatever is there
                bound.restart()
                if payload_recv is not None:
                    await payload_recv
                else:
                    payload = self._buffer(nbytes, out)
                    if nbytes:
                        await link.recv(payload, Phase.PAYLOAD)
                assert payload is not None
                commit = cr.on_payload(checksum(payload))
                if commit is None:
                    return ReadResult(payload, port, generation)
                buf = np.zeros(proto.FRAME_SIZE, dtype=np.uint8)
                if bare:
                    committed = post_recv(link, buf, Phase.COMMITTED)  # posted before COMMIT is answered
                bound.restart()
                await link.send(proto.encode(commit), Phase.COMMIT)
                bound.restart()
                await (committed or link.recv(buf, Phase.COMMITTED))
                cr.on_committed(buf)
                return ReadResult(payload, port, generation)
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
            raise cr.error
        link.abort()
        self.quarantine(port, "commit-unconfirmed")
        assert payload is not None
        await self._resolve(desc, cr)
        return ReadResult(payload, port, generation, resolved=True)

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
        pooled = [p.link for idle in self._pool.values() for p in idle]
        self._pool.clear()
        for link in pooled:
            try:
                await asyncio.wait_for(link.close(), self.read_timeout)
            except (Exception, asyncio.CancelledError):
                link.abort()
        if self._ucx_acquired and release_ucx:
            self._ucx_acquired = False
            ucx.release()

    async def __aenter__(self) -> SlotClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
