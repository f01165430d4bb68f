"""Toxics: one small type per Toxiproxy toxic, all behind one interface.

A toxic owns no connection state: each link (one direction of one connection) runs it on a `Stub`,
which holds that link's input queue, its per-link state and RNG. Like Toxiproxy's toxics, a pipe
loop reads chunks, delays, slices or drops them, and forwards them; `None` means end of stream.
A toxic is stopped (removed or updated) by cancelling its task; whatever it still holds is forwarded
in a `finally`, so removing a toxic never drops data on the floor (Toxiproxy's interrupt contract).

Attributes are integers with Toxiproxy's units: milliseconds, except slicer `delay` (microseconds)
and bandwidth `rate` (KB/s, 1 KB = 1000 bytes).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol


@dataclass(slots=True)
class Chunk:
    """Bytes read from a socket and when: latency is measured from arrival, so it never caps throughput."""

    data: bytes
    ts: float


class LinkPort(Protocol):
    """What a stub needs from its link: where its output goes, byte accounting and a hard reset."""

    def output_of(self, stub: Stub) -> asyncio.Queue[Chunk | None]: ...

    def discard(self, nbytes: int) -> None: ...

    def reset(self) -> None: ...


@dataclass
class ToxicMeter:
    """What a toxic acted on: links it ran on (not skipped by its toxicity draw) and bytes it was handed.

    The effect evidence for a network fault: a toxic whose meter stays at zero never touched the traffic.
    """

    connections: int = 0
    bytes: int = 0

    def to_json(self) -> dict[str, int]:
        return {"connections": self.connections, "bytes": self.bytes}


class Stub:
    """One toxic's place in one link: its input queue, per-link state and per-link RNG."""

    def __init__(self, link: LinkPort, rng: random.Random) -> None:
        self.link = link
        self.rng = rng
        self.input: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self.state: Any = None
        self.closed = False
        self.meter: ToxicMeter | None = None  # set while a real toxic (not a skipped one) runs here

    async def recv(self) -> Chunk | None:
        chunk = await self.input.get()
        if chunk is not None and self.meter is not None:
            self.meter.bytes += len(chunk.data)
        return chunk

    def send(self, chunk: Chunk) -> None:
        """Forward to the next stage (looked up now, so stages can be added and removed live)."""
        if not self.closed and chunk.data:
            self.link.output_of(self).put_nowait(chunk)

    def drop(self, chunk: Chunk | bytes) -> None:
        """Account for bytes a toxic swallows, so the link's read budget does not leak."""
        self.link.discard(len(chunk.data if isinstance(chunk, Chunk) else chunk))

    def close(self) -> None:
        """End the stream downstream of this stage: the link then closes its destination socket."""
        if not self.closed:
            self.closed = True
            self.link.output_of(self).put_nowait(None)

    def reset(self) -> None:
        """Abort the whole connection with RST on both sockets."""
        self.closed = True
        self.link.reset()


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass(frozen=True)
class Toxic:
    """Base: subclasses declare `type` and integer attribute fields, and implement `pipe`."""

    type: ClassVar[str] = ""

    async def pipe(self, stub: Stub) -> None:
        """Pass everything through (the noop toxic)."""
        while True:
            chunk = await stub.recv()
            if chunk is None:
                stub.close()
                return
            stub.send(chunk)

    def new_state(self) -> Any:
        """Per-link state that survives updates of the toxic (Toxiproxy's StatefulToxic)."""
        return None

    def cleanup(self, stub: Stub) -> None:
        """Called when the toxic is removed from a live link (Toxiproxy's CleanupToxic)."""

    def attributes(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    @classmethod
    def parse(cls, attributes: Any, base: Toxic | None = None) -> Toxic:
        """Build from JSON attributes; unknown keys are ignored and missing ones keep `base` or 0."""
        if attributes is None:
            attributes = {}
        if not isinstance(attributes, dict):
            raise ValueError(f"attributes: expected an object, got {type(attributes).__name__}")
        values = base.attributes() if base is not None else {}
        for f in dataclasses.fields(cls):
            if f.name in attributes:
                value = attributes[f.name]
                if not isinstance(value, int) or isinstance(value, bool):  # Go rejects 1.0 for an int too
                    raise ValueError(
                        f"json: cannot unmarshal {type(value).__name__} into attribute {f.name} of type int"
                    )
                values[f.name] = value
        return cls(**values)


@dataclass(frozen=True)
class Noop(Toxic):
    type: ClassVar[str] = "noop"


@dataclass(frozen=True)
class Latency(Toxic):
    """Delay each chunk by latency +/- jitter ms, counted from when it was read."""

    type: ClassVar[str] = "latency"
    latency: int = 0
    jitter: int = 0

    async def pipe(self, stub: Stub) -> None:
        while True:
            chunk = await stub.recv()
            if chunk is None:
                stub.close()
                return
            delay = self.latency
            if self.jitter > 0:
                delay += stub.rng.randrange(2 * self.jitter) - self.jitter
            try:
                await asyncio.sleep(max(0.0, chunk.ts + delay / 1000 - _loop_time()))
            finally:
                stub.send(chunk)


@dataclass(frozen=True)
class Bandwidth(Toxic):
    """Cap throughput at `rate` KB/s; big chunks go out in 100 ms slices. rate <= 0 means unlimited."""

    type: ClassVar[str] = "bandwidth"
    rate: int = 0

    async def pipe(self, stub: Stub) -> None:
        debt = 0.0  # seconds this link still owes the rate limit (can go negative after oversleeping)
        while True:
            chunk = await stub.recv()
            if chunk is None:
                stub.close()
                return
            if self.rate <= 0:
                stub.send(chunk)
                continue
            debt += len(chunk.data) / (self.rate * 1000)
            slice_bytes = self.rate * 100
            data = chunk.data
            try:
                while len(data) > slice_bytes:
                    await asyncio.sleep(0.1)
                    stub.send(Chunk(data[:slice_bytes], chunk.ts))
                    data = data[slice_bytes:]
                    debt -= 0.1
                start = _loop_time()
                await asyncio.sleep(max(0.0, debt))
                debt -= _loop_time() - start
            finally:
                stub.send(Chunk(data, chunk.ts))


@dataclass(frozen=True)
class SlowClose(Toxic):
    """Hold the end of the stream for `delay` ms before closing."""

    type: ClassVar[str] = "slow_close"
    delay: int = 0

    async def pipe(self, stub: Stub) -> None:
        while True:
            chunk = await stub.recv()
            if chunk is None:
                try:
                    await asyncio.sleep(self.delay / 1000)
                finally:
                    stub.close()
                return
            stub.send(chunk)


@dataclass(frozen=True)
class Timeout(Toxic):
    """Drop all data; close after `timeout` ms without data (0: hold until the toxic is removed)."""

    type: ClassVar[str] = "timeout"
    timeout: int = 0

    async def pipe(self, stub: Stub) -> None:
        while True:
            try:
                async with asyncio.timeout(self.timeout / 1000 if self.timeout > 0 else None):
                    chunk = await stub.recv()
            except TimeoutError:
                stub.close()
                return
            if chunk is None:
                stub.close()
                return
            stub.drop(chunk)

    def cleanup(self, stub: Stub) -> None:
        stub.close()


@dataclass(frozen=True)
class ResetPeer(Toxic):
    """On the first data, wait `timeout` ms, then reset the connection (RST via SO_LINGER 0)."""

    type: ClassVar[str] = "reset_peer"
    timeout: int = 0

    async def pipe(self, stub: Stub) -> None:
        chunk = await stub.recv()
        if chunk is not None:
            stub.drop(chunk)
        await asyncio.sleep(self.timeout / 1000)
        stub.reset()


@dataclass(frozen=True)
class Slicer(Toxic):
    """Split each chunk into pieces of about `average_size` +/- `size_variation` bytes, `delay` us apart."""

    type: ClassVar[str] = "slicer"
    average_size: int = 0
    size_variation: int = 0
    delay: int = 0

    def cuts(self, start: int, end: int, rng: random.Random) -> list[int]:
        """Offsets of the slice boundaries, halving recursively so sizes vary evenly along the chunk."""
        average = max(1, self.average_size)
        variation = max(0, self.size_variation)
        if (end - start) - average <= variation:
            return [end]
        mid = start + (end - start) // 2
        if variation:
            mid += rng.randint(-variation, variation)
        mid = min(max(mid, start + 1), end - 1)
        return self.cuts(start, mid, rng) + self.cuts(mid, end, rng)

    async def pipe(self, stub: Stub) -> None:
        while True:
            chunk = await stub.recv()
            if chunk is None:
                stub.close()
                return
            start = 0
            try:
                for end in self.cuts(0, len(chunk.data), stub.rng):
                    stub.send(Chunk(chunk.data[start:end], chunk.ts))
                    start = end
                    await asyncio.sleep(self.delay / 1_000_000)
            finally:
                stub.send(Chunk(chunk.data[start:], chunk.ts))


@dataclass
class _LimitState:
    sent: int = 0


@dataclass(frozen=True)
class LimitData(Toxic):
    """Close the stream once `bytes` bytes have passed (counted per link, across toxic updates)."""

    type: ClassVar[str] = "limit_data"
    bytes: int = 0

    def new_state(self) -> _LimitState:
        return _LimitState()

    async def pipe(self, stub: Stub) -> None:
        state: _LimitState = stub.state
        while True:
            chunk = await stub.recv()
            if chunk is None:
                stub.close()
                return
            room = max(0, self.bytes - state.sent)
            if room < len(chunk.data):
                stub.drop(chunk.data[room:])
                chunk = Chunk(chunk.data[:room], chunk.ts)
            stub.send(chunk)
            state.sent += len(chunk.data)
            if self.bytes - state.sent <= 0:
                stub.close()
                return


REGISTRY: dict[str, type[Toxic]] = {
    cls.type: cls for cls in (Latency, Bandwidth, SlowClose, Timeout, ResetPeer, Slicer, LimitData)
}
STREAMS = ("upstream", "downstream")


@dataclass
class ToxicSpec:
    """A named toxic on a proxy, as the API shows it (Toxiproxy's ToxicWrapper)."""

    name: str
    type: str
    stream: str
    toxicity: float
    toxic: Toxic
    meter: ToxicMeter = dataclasses.field(default_factory=ToxicMeter)

    @property
    def direction(self) -> str:
        return self.stream.lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": self.toxic.attributes(),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }
