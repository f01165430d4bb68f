"""What the README shows first: `Producer` (ring + server process) and `Consumer` (client).

The producer's server runs in its own spawned process: the producer process never initialises UCX
(so it may fork freely), the server does not fight the producer for the GIL, and the harness can
kill or pause the server on its own. Sync consumers share one event loop per process (ucxx binds
to a single loop), driven by the calling thread itself (`transport.syncloop`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from transport.client import SlotClient
from transport.descriptor import SlotDescriptor
from transport.errors import ConfigError, TransportError
from transport.local import Borrow, boot_id
from transport.packer import BatchResult, fetch_batch, fetch_one
from transport.protocol import RingKey
from transport.ring import SharedRing
from transport.serve import ServerConfig, ServerProcess
from transport.syncloop import SharedLoop

# Steps of one read, each bounded by `read_timeout` (SlotClient._attempt restarts its StepDeadline per
# step): send REQUEST, receive STATUS, receive PAYLOAD, send COMMIT, receive COMMITTED.
READ_STEPS = 5


class Producer:
    """Creates the ring, serves it on `ports` from a child process, and publishes payloads."""

    def __init__(
        self,
        slots: int = 64,
        slot_bytes: int = 1 << 20,
        ports: int | Sequence[int] = 4,
        policy: str = "block",
        name: str | None = None,
        *,
        protocol: str = "commit",
        idle_evict: float = 10.0,
        host: str = "127.0.0.1",
        start_timeout: float = 60.0,
        server_options: dict[str, Any] | None = None,
        same_host: bool = True,
    ) -> None:
        """`server_options` go to `transport.serve.ServerConfig` (step_timeout, lease, events_path,
        link_wrapper, ...). `same_host=False` leaves the segment and boot id out of descriptors, so
        every consumer reads over UCX, also on this host (what a test of the UCX path, or a chaos
        world whose faults act on UCX links, needs)."""
        port_list = [0] * ports if isinstance(ports, int) else list(ports)
        if not port_list:
            raise ConfigError("ports: at least one port is needed")
        self.host = host
        self.protocol = protocol
        self.same_host = same_host
        self.ring = SharedRing.create(slots, slot_bytes, policy=policy, name=name)
        self._ring_key = RingKey(self.ring.secret, self.ring.ring_id)  # never leaves this process
        try:
            # Every descriptor of this producer shares these fields: checked once, before a server
            # starts (a bad host fails here), and each put fills in its read (`SlotDescriptor.for_slot`).
            template = SlotDescriptor(
                host=host,
                ports=(1,),  # the server's ports, once it has bound them
                ring_id=self.ring.ring_id,
                ring_slots=self.ring.slots,
                slot=0,
                generation=0,
                nbytes=0,
                checksum=0,
                capability="0" * 32,
                segment=self.ring.name if same_host else "",
                boot_id=boot_id() if same_host else "",
            )
            config = ServerConfig(
                ring_name=self.ring.name,
                ports=port_list,
                protocol=protocol,
                idle_evict=idle_evict,
                **(server_options or {}),
            )
            self.server = ServerProcess(config)
            self.ports = self.server.start(timeout=start_timeout)
        except BaseException:
            self.ring.close()
            raise
        try:
            self._template = replace(template, ports=tuple(self.ports))
        except BaseException:  # e.g. more ports than a descriptor may name: nothing is left running
            self.close()
            raise

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(self.host, p) for p in self.ports]

    def put(self, data: Any, timeout: float | None = None) -> SlotDescriptor:
        """Write one payload (bytes-like or numpy array) and return its descriptor."""
        written = self.ring.write(data, timeout=timeout)
        return self.descriptor(written.slot, written.generation, written.nbytes, written.checksum)

    def descriptor(self, slot: int, generation: int, nbytes: int, checksum: int) -> SlotDescriptor:
        """The descriptor of one written slot, with the capability that opens exactly that read."""
        capability = self._ring_key.issue(slot, generation, self.protocol).hex()
        return self._template.for_slot(slot, generation, nbytes, checksum, capability)

    def close(self) -> None:
        try:
            self.server.stop()
        finally:
            self.ring.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def borrow_local(client: SlotClient, descriptor: SlotDescriptor) -> Borrow:
    """Lend a read-only view straight into the producer's slot (same host only, zero copy).

    Clean exit commits the read; an exception releases the slot for another reader. The client's
    `local_lease` bounds how long the view may be held: past it the slot is reclaimed and the exit
    raises LeaseExpiredError (not committed). Do not keep the view past the block.
    """
    local = client.local
    if local is None:
        raise ConfigError("borrow: the same-host path is off for this consumer (local=False)")
    ring = local.ring_for(descriptor)
    if ring is None:
        raise ConfigError(
            f"borrow: {descriptor.key} is not readable from this host's shared memory "
            f"(segment {descriptor.segment or '-'!r}); use get()"
        )
    return local.borrow(ring, descriptor)


class AsyncConsumer:
    """Fetches slots from asyncio code: `await get(desc)`, `await get_many(descs)`."""

    def __init__(
        self,
        read_timeout: float = 2.0,
        quarantine: float = 5.0,
        max_attempts: int = 4,
        rounds: int = 3,
        *,
        concurrency: int = 8,
        protocol: str = "commit",
        batch_size: int = 32,
        **client_options: Any,
    ) -> None:
        """`batch_size`: slots per batched exchange in `get_many` (0: one exchange per slot)."""
        if max_attempts < 1 or rounds < 1 or concurrency < 1:
            raise ConfigError("max_attempts, rounds and concurrency must be >= 1")
        self.max_attempts = max_attempts
        self.rounds = rounds
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.client = SlotClient(
            read_timeout=read_timeout, quarantine=quarantine, protocol=protocol, **client_options
        )

    async def get(self, descriptor: SlotDescriptor, out: np.ndarray | None = None) -> np.ndarray:
        """The payload as a uint8 array of exactly `descriptor.nbytes` bytes."""
        result, _ = await fetch_one(self.client, descriptor, max_attempts=self.max_attempts, out=out)
        return result.payload

    def borrow(self, descriptor: SlotDescriptor) -> Borrow:
        """`with consumer.borrow(desc) as view:` (see `borrow_local`)."""
        return borrow_local(self.client, descriptor)

    async def get_many(self, descriptors: Sequence[SlotDescriptor]) -> BatchResult:
        return await fetch_batch(
            self.client,
            descriptors,
            max_attempts=self.max_attempts,
            rounds=self.rounds,
            concurrency=self.concurrency,
            batch_size=self.batch_size,
        )

    async def close(self) -> None:
        await self.client.close()

    async def __aenter__(self) -> AsyncConsumer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Consumer:
    """Sync facade over AsyncConsumer for trainers that are not async."""

    def __init__(
        self,
        read_timeout: float = 2.0,
        quarantine: float = 5.0,
        max_attempts: int = 4,
        rounds: int = 3,
        **options: Any,
    ) -> None:
        self._loop = SharedLoop.get()
        self._inner = AsyncConsumer(read_timeout, quarantine, max_attempts, rounds, **options)
        client = self._inner.client
        # Bound for one slot: every attempt may connect, run its READ_STEPS steps and resolve.
        per_attempt = client.connect_timeout + READ_STEPS * client.read_timeout + client.resolve_timeout
        self._slot_bound = max_attempts * per_attempt + 5.0
        self._rounds = rounds

    @property
    def client(self) -> SlotClient:
        return self._inner.client

    def get(self, descriptor: SlotDescriptor, out: np.ndarray | None = None) -> np.ndarray:
        client = self._inner.client
        if client.local is not None and (ring := client.local.ring_for(descriptor)) is not None:
            # Same host: one try right here, no event loop turn; a retryable miss (BUSY, an expired
            # lease) goes on to the retrying path below.
            try:
                return client.read_local(ring, descriptor, out)
            except TransportError as exc:
                if not exc.retryable:
                    raise
        return self._loop.run(self._inner.get(descriptor, out), self._slot_bound)

    def borrow(self, descriptor: SlotDescriptor) -> Borrow:
        """`with consumer.borrow(desc) as view:` (see `borrow_local`)."""
        return borrow_local(self.client, descriptor)

    def get_many(self, descriptors: Sequence[SlotDescriptor]) -> BatchResult:
        waves = -(-len(descriptors) // self._inner.concurrency) or 1
        return self._loop.run(self._inner.get_many(descriptors), self._slot_bound * waves * self._rounds)

    def close(self) -> None:
        # The shared loop lives on, so ucxx stays up for the next Consumer of this process.
        self._loop.run(self._inner.client.close(release_ucx=False), 10.0)

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
