"""The asyncio TCP proxy: per accepted connection, an upstream and a downstream link.

Link = reader task -> chain of toxic stages (a hidden noop first, as in Toxiproxy) -> writer task.
Stages pass chunks through unbounded queues and look their successor up at send time, so a toxic can
be added to or removed from live connections without reordering or losing bytes. Backpressure is a
per-link byte budget: the reader pauses while more than `READ_BUDGET` bytes are inside the chain.

Closing follows Toxiproxy: when a link's stream ends, its destination socket is closed (fully, not
half-closed); the other link then reads EOF from that socket, and its end flows through its own chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from chaos.proxy.toxics import STREAMS, Chunk, Noop, Stub, Toxic, ToxicMeter, ToxicSpec

READ_SIZE = 32 * 1024
READ_BUDGET = 1 << 20
DIAL_TIMEOUT = 10.0
CLOSE_TIMEOUT = 5.0
NOOP = Noop()


class AlreadyStarted(Exception):
    """Start on an enabled proxy (Toxiproxy's ErrProxyAlreadyStarted)."""


def parse_addr(addr: str) -> tuple[str | None, int]:
    """'host:port' (or '[v6]:port', ':port', '') -> (host or None for all interfaces, port)."""
    if addr == "":
        return None, 0
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError(f"address {addr}: missing port in address")
    try:
        number = int(port) if port else 0
    except ValueError:
        raise ValueError(f"address {addr}: invalid port") from None
    return (host.strip("[]") or None), number


def format_addr(sockname: tuple[object, ...]) -> str:
    host, port = str(sockname[0]), int(str(sockname[1]))
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass
class Stage:
    spec: ToxicSpec | None  # None: the hidden noop that heads every chain
    stub: Stub
    roll: random.Random  # toxicity draws, separate from the toxic's own randomness
    task: asyncio.Task[None] | None = None
    active: bool = False
    counted: bool = False

    @property
    def toxic(self) -> Toxic:
        return self.spec.toxic if self.spec is not None else NOOP


class Link:
    """One direction of one connection."""

    def __init__(
        self,
        conn: Connection,
        direction: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.conn = conn
        self.direction = direction
        self.reader = reader
        self.writer = writer
        self.out: asyncio.Queue[Chunk | None] = asyncio.Queue()
        self.stages: list[Stage] = [self._stage(None)]
        self.inflight = 0
        self._room = asyncio.Event()
        self._room.set()
        self.tasks: set[asyncio.Task[None]] = set()

    def _stage(self, spec: ToxicSpec | None) -> Stage:
        key = f"{self.conn.key}:{self.direction}:{spec.name if spec else ''}"
        stage = Stage(spec, Stub(self, random.Random(f"{key}:data")), random.Random(f"{key}:toxicity"))
        stage.stub.state = stage.toxic.new_state()
        return stage

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    def _run(self, stage: Stage) -> None:
        """Run the stage's toxic, or a noop for this link when the toxicity draw says so."""
        stage.active = stage.spec is None or stage.roll.random() < stage.spec.toxicity
        toxic = stage.toxic if stage.active else NOOP
        if stage.spec is not None and stage.active:
            stage.stub.meter = stage.spec.meter
            if not stage.counted:
                stage.counted = True
                stage.spec.meter.connections += 1
        else:
            stage.stub.meter = None
        stage.task = self._spawn(toxic.pipe(stage.stub))

    def start(self, chain: list[ToxicSpec]) -> None:
        self.stages += [self._stage(spec) for spec in chain]
        for stage in self.stages:
            self._run(stage)
        self._spawn(self._read())
        self._spawn(self._write())

    # -- LinkPort, used by stubs --
    def output_of(self, stub: Stub) -> asyncio.Queue[Chunk | None]:
        for i, stage in enumerate(self.stages):
            if stage.stub is stub:
                return self.stages[i + 1].stub.input if i + 1 < len(self.stages) else self.out
        return self.out  # a stage already removed (only its final flush gets here)

    def discard(self, nbytes: int) -> None:
        self.inflight -= nbytes
        if self.inflight < READ_BUDGET:
            self._room.set()

    def reset(self) -> None:
        self.conn.abort(rst=True)

    # -- live toxic changes --
    def add(self, spec: ToxicSpec) -> None:
        stage = self._stage(spec)
        self.stages.append(stage)
        self._run(stage)

    async def _interrupt(self, stage: Stage) -> None:
        if stage.task is not None:
            stage.task.cancel()
            await asyncio.gather(stage.task, return_exceptions=True)

    async def remove(self, spec: ToxicSpec) -> None:
        stage = next((s for s in self.stages if s.spec is spec), None)
        if stage is None:
            return
        await self._interrupt(stage)
        if stage.active:
            stage.toxic.cleanup(stage.stub)
        successor = self.output_of(stage.stub)
        while not stage.stub.input.empty():  # no await from here on: the rewiring is atomic
            successor.put_nowait(stage.stub.input.get_nowait())
        self.stages.remove(stage)

    async def update(self, spec: ToxicSpec) -> None:
        stage = next((s for s in self.stages if s.spec is spec), None)
        if stage is not None and not stage.stub.closed:
            await self._interrupt(stage)
            self._run(stage)

    # -- socket ends --
    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self.inflight >= READ_BUDGET:
                    self._room.clear()
                    await self._room.wait()
                data = await self.reader.read(self.conn.read_size)
                if not data:
                    break
                self.inflight += len(data)
                self.stages[0].stub.input.put_nowait(Chunk(data, loop.time()))
        except OSError:
            pass
        finally:
            self.stages[0].stub.input.put_nowait(None)

    async def _write(self) -> None:
        try:
            while (chunk := await self.out.get()) is not None:
                self.writer.write(chunk.data)
                await self.writer.drain()
                self.discard(len(chunk.data))
        except OSError:
            pass
        finally:
            self.conn.link_done(self)


class Connection:
    """A client connection and its upstream connection, joined by two links."""

    read_size = READ_SIZE

    def __init__(
        self,
        proxy: Proxy,
        index: int,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.proxy = proxy
        self.key = f"{proxy.seed}:{proxy.name}:{index}"
        self.links = {
            "upstream": Link(self, "upstream", client[0], upstream[1]),
            "downstream": Link(self, "downstream", upstream[0], client[1]),
        }
        self._writers = (client[1], upstream[1])
        self._done = 0

    def start(self, chains: dict[str, list[ToxicSpec]]) -> None:
        for direction, link in self.links.items():
            link.start(list(chains[direction]))

    def link_done(self, link: Link) -> None:
        link.writer.close()
        self._done += 1
        if self._done == len(self.links):
            self.proxy.forget(self)

    def abort(self, rst: bool = False) -> None:
        """Close both sockets now; with `rst`, SO_LINGER 0 makes the kernel send RST instead of FIN."""
        for writer in self._writers:
            sock = writer.get_extra_info("socket")
            if rst and sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for link in self.links.values():
            for task in list(link.tasks):
                if task is not asyncio.current_task():
                    task.cancel()

    async def wait(self) -> None:
        tasks = [t for link in self.links.values() for t in link.tasks if t is not asyncio.current_task()]
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT)


class Proxy:
    """A named listener that forwards each connection to `upstream` through the toxic chains."""

    def __init__(self, name: str, listen: str, upstream: str, seed: int) -> None:
        self.meters: dict[str, ToxicMeter] = {}  # per toxic name, kept after the toxic is removed
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.seed = seed
        self.enabled = False
        self.chains: dict[str, list[ToxicSpec]] = {stream: [] for stream in STREAMS}
        self._server: asyncio.Server | None = None
        self._connections: set[Connection] = set()
        self._accepted = 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [spec.to_json() for spec in self.toxics()],
        }

    # -- lifecycle --
    async def start(self) -> None:
        if self.enabled:
            raise AlreadyStarted(self.name)
        host, port = parse_addr(self.listen)
        self._server = await asyncio.start_server(self._accept, host, port)
        self.listen = format_addr(self._server.sockets[0].getsockname())
        self.enabled = True

    async def stop(self) -> None:
        """Stop listening and close every connection (Toxiproxy's `enabled: false`)."""
        if not self.enabled:
            return
        self.enabled = False
        server, self._server = self._server, None
        if server is not None:
            server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.abort()
        await asyncio.gather(*(conn.wait() for conn in connections))
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT)

    async def update(self, listen: str, upstream: str, enabled: bool) -> None:
        if listen != self.listen or upstream != self.upstream:
            await self.stop()
            self.listen, self.upstream = listen, upstream
        if enabled and not self.enabled:
            await self.start()
        elif not enabled:
            await self.stop()

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            host, port = parse_addr(self.upstream)
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), DIAL_TIMEOUT)
        except (OSError, ValueError, TimeoutError):
            pass
        if upstream is None or not self.enabled:
            writer.transport.abort()
            if upstream is not None:
                upstream[1].transport.abort()
            return
        conn = Connection(self, self._accepted, (reader, writer), upstream)
        self._accepted += 1
        self._connections.add(conn)
        conn.start(self.chains)

    # -- toxics --
    def toxics(self) -> list[ToxicSpec]:
        return [spec for stream in STREAMS for spec in self.chains[stream]]

    def find_toxic(self, name: str) -> ToxicSpec | None:
        return next((spec for spec in self.toxics() if spec.name == name), None)

    def _links(self, direction: str) -> list[Link]:
        return [conn.links[direction] for conn in self._connections]

    def add_toxic(self, spec: ToxicSpec) -> None:
        spec.meter = self.meters.setdefault(spec.name, spec.meter)
        self.chains[spec.direction].append(spec)
        for link in self._links(spec.direction):
            link.add(spec)

    async def remove_toxic(self, spec: ToxicSpec) -> None:
        self.chains[spec.direction].remove(spec)
        await asyncio.gather(*(link.remove(spec) for link in self._links(spec.direction)))

    async def update_toxic(self, spec: ToxicSpec, toxic: Toxic, toxicity: float) -> None:
        spec.toxic, spec.toxicity = toxic, toxicity
        await asyncio.gather(*(link.update(spec) for link in self._links(spec.direction)))

    async def reset_toxics(self) -> None:
        for spec in self.toxics():
            await self.remove_toxic(spec)
