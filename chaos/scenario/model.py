"""The scenario model: what one chaos run does, validated once and stored normalised.

DESIGN.md §3 is the source. After validation every size is an int of bytes, every duration a float
of seconds and every rate a float per second, so the runner, the checker and a replay never parse
units again; `Scenario.to_dict()` is that normalised form (JSON-safe, recorded with each run) and
`Scenario.from_dict()` reads it back. Models are strict (no "3" for 3, no `yes` for 1) and forbid
unknown keys, so a typo is an error rather than a silently ignored setting.

Decisions where DESIGN.md is silent:
- Only `name` and `duration` are required; the defaults match the transport's own defaults
  (read_timeout 2 s, quarantine 5 s, max_attempts 4, rounds 3, idle_evict 10 s).
- `deadline` defaults to duration + drain_timeout + 60 s and must leave room for both phases.
- Port indexes are 0-based, unique and < `server.ports`. Omitted `ports` on a transport or network
  fault is stored as the explicit list of every port, so a recorded run says exactly where it hit.
- `window` is `[start, end)` inside the fault phase (`end <= duration`); `at` is a one-shot time in
  `[0, duration)`; a fault has at most one of them and neither means the whole fault phase. Process
  faults need one of them: a process fault with no time would fire at the start, before any traffic.
- `probability` (default 1) is per request for transport faults, per descriptor for control faults
  and per opportunity for process faults. Network faults have no `probability`: their chance is the
  toxic's own `toxicity` (per connection, as in Toxiproxy), and `down` is all or nothing.
- `reset.phase` is required (where the reset happens is the point of the fault; `resolve` aborts before
  the RESOLVED reply). `truncate` and `corrupt` (bytes flipped, same length) take a `phase`, `status`
  or `payload` (default `payload`): the fault layer can cut or garble either message.
- Transport faults take `side: server` (default: the server's link misbehaves) or `side: client` (the
  consumer's own link: only `reset`, `timeout` and `stall`, which a client can do to itself; a
  client-side `stall` names the send it holds, `phase: request | commit | resolve`, while a server-side
  stall always holds the payload and takes no phase). See chaos/faults/transport.py.
- `timeout.delay` defaults to 1.5x `consumers.read_timeout` and must exceed it: a shorter hold is a
  `stall`, not a timeout. Keep it and `stall.delay` below the server's step timeout (5 s).
- `pause.duration` is required; with `at`, the pause must end inside the fault phase.
- `target` is `producer`, `server`, `redis` (only with `channel: redis`), `consumer` (one consumer,
  chosen by the run's seed) or `consumer-N` (0-based, N < `consumers.count`). `restart` starts the
  target again (killing it first if it runs); the server comes back on the same ports, Redis on the
  same port with its append-only file, so the stream survives.
- `channel` is the descriptor bus: `memory` (default, the runner's in-process consumer group, fastest
  to start) or `redis` (a real Redis stream and consumer group: XADD, XREADGROUP, XACK, XAUTOCLAIM).
- Toxic attributes are Toxiproxy's integers in Toxiproxy's units (ms; slicer `delay` in us, bandwidth
  `rate` in KB/s), checked per toxic type; `stream` defaults to `downstream`, `toxicity` to 1.
- `expect` counts are upper bounds (0 = none allowed). `faults_effective` is `all` (default: every
  fault changed an outcome its kind is meant to change, see chaos/effects.py), `none`, or the list of
  fault indexes that must be effective. `faults_fired` takes the same values (default `none`) and only
  asks that a fault fired on every port it lists. `consumed_by_dead_consumer` (default unset: at most
  what killed consumers held) bounds commits lost with a killed consumer; `slot_leak` (default 0)
  READING/WRITING slots and `drain_incomplete` (default false) descriptors left after the drain.
  `faults_quarantined`
  takes the same values (default `none`): every port on which such a fault fired must have been
  quarantined by a client at least once. `min_throughput` (rate), `max_recovery` and
  `max_p99_latency` (durations) are optional.
- `server.lease` (optional duration) is how long a read may hold its slot before the server's
  reclaim hands it back; leave it unset (30 s) unless the scenario is about reads outliving it.
  Same-host consumers (`consumers.transport: local`) hold their slots under the same lease.
- `name` is a slug (letters, digits, `.`, `_`, `-`): it names report files and JUnit test cases.
- `hosts` (simulated hosts, DESIGN.md §3): absent = single-host mode (everything on loopback);
  `default` = server and producer on host `server`, each consumer on a host named after it; or a
  mapping host -> roles (`server`, `producer`, `consumer-N`; every role placed once, producer with the
  server since they share the ring's memory). Host names: lower-case letters and digits, optionally `-N`.
- Network faults in host mode name what they cut: `toxic` and `down` a host link, `between: [a, b]`
  (the Toxiproxy proxy `a->b`: `upstream` is what a sends to b, `downstream` what b sends back);
  the kernel-level kinds `partition`, `loss` (`probability`), `reject`, `bandwidth` (`rate`, bytes per
  second like `64KiB/s`) and `flap` (`period`, default 1 s) take `between: [a, b]` or `isolate: host`.
  In single-host mode `toxic` and `down` act on listener proxies (`ports`), which reach only UCX's
  connection setup: `warnings()` flags a data-shaping toxic there.
- Every size, count and time has an upper bound (the `MAX_*` constants below), so a typo such as
  `slots: 6400000` is refused as bad input (exit 2) instead of failing late; whether the ring fits in
  the free space of /dev/shm is checked when a file is loaded (`chaos.scenario.resources`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from chaos.scenario.errors import (
    Loc,
    LocatedErrors,
    Problem,
    ScenarioError,
    format_loc,
    line_for,
    problems_from_validation,
)
from chaos.scenario.units import (
    format_duration,
    format_size,
    parse_byte_rate,
    parse_duration,
    parse_rate,
    parse_size,
)
from transport.protocol import MAX_PAYLOAD

KiB = 1024
MiB = 1024 * KiB
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
TIMEOUT_DELAY_FACTOR = 1.5  # default `timeout.delay` = this x consumers.read_timeout
DEADLINE_SLACK_S = 60.0  # default `deadline` = duration + drain_timeout + this
HOST_NAME = re.compile(r"^[a-z][a-z0-9]*(-[0-9]+)?$")
DATA_SHAPING = frozenset({"latency", "bandwidth", "slicer", "slow_close", "limit_data", "timeout"})

# Upper bounds: far above any useful run on one machine, low enough that a typo is caught as bad input.
MAX_DURATION_S = 7 * 24 * 3600.0  # every duration, delay and time in a scenario
MAX_RATE = 1_000_000.0  # payloads (or anything else) per second
MAX_SLOTS = 65536
MAX_CONSUMERS = 64
MAX_BATCH = 4096
MAX_ATTEMPTS = 1000  # consumers.max_attempts and consumers.rounds
MAX_FAULTS = 256
MAX_COUNT = 10**9  # producer.count and the expect counts
MAX_TOXIC_INT = 2**31 - 1  # Toxiproxy attributes (ms, us, bytes, KB/s)
MAX_TEXT = 10_000  # description length

Size = Annotated[int, BeforeValidator(parse_size), Field(le=MAX_PAYLOAD)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(le=MAX_DURATION_S)]
PositiveDuration = Annotated[float, BeforeValidator(parse_duration), Field(gt=0, le=MAX_DURATION_S)]
Rate = Annotated[float, BeforeValidator(parse_rate), Field(le=MAX_RATE)]
ByteRate = Annotated[float, BeforeValidator(parse_byte_rate), Field(gt=0, le=MAX_PAYLOAD)]
Probability = Annotated[float, Field(ge=0, le=1)]
PortIndex = Annotated[int, Field(ge=0, le=63)]
ToxicInt = Annotated[int, Field(ge=0, le=MAX_TOXIC_INT)]


def _check_target(value: str) -> str:
    head, _, index = value.partition("-")
    if value in ("producer", "server", "redis", "consumer") or (head == "consumer" and index.isdigit()):
        return value
    raise ValueError(f"expected producer, server, redis, consumer or consumer-N, got {value!r}")


Target = Annotated[str, AfterValidator(_check_target)]


class _Model(BaseModel):
    """Strict, closed: unknown keys and loosely typed values are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Ring(_Model):
    """Shared-memory ring geometry. `slot_bytes` in bytes."""

    slots: int = Field(64, ge=1, le=MAX_SLOTS)
    slot_bytes: Size = Field(1 * MiB, ge=1)
    policy: Literal["block", "overwrite"] = "block"


class Payload(_Model):
    """Payload size range in bytes, drawn per payload by the producer (inclusive)."""

    min: Size = Field(4 * KiB, ge=1)
    max: Size = Field(64 * KiB, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Payload:
        if self.min > self.max:
            raise LocatedErrors(
                [(("min",), f"min {format_size(self.min)} is above max {format_size(self.max)}")]
            )
        return self


class Producer(_Model):
    """`rate` in payloads/s; `count` caps the total (None: unlimited during the fault phase)."""

    rate: Rate = Field(100.0, gt=0)
    payload: Payload = Payload()
    count: int | None = Field(None, ge=1, le=MAX_COUNT)


class Server(_Model):
    """`ports` is how many listener ports (indexes 0..ports-1); `idle_evict` in seconds.

    `lease`: how long a read may hold its slot before the server's reclaim returns it to READY
    (None: the runner's default, 30 s, longer than any fault holds a read).
    """

    ports: int = Field(4, ge=1, le=64)
    idle_evict: PositiveDuration = 10.0
    lease: PositiveDuration | None = None


ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_]*$"


class Consumers(_Model):
    """Consumer processes and their client settings (seconds for times).

    `entrypoint` (`"package.module:function"`) runs a trainer's own consumer code as the role
    (`chaos.trainer` documents what it is called with); None runs the harness's built-in consumer.
    `transport: local` reads every slot from the producer's shared segment (same host, no UCX); the
    consumer then `borrow`s each slot (a zero-copy view, checked in place) when `borrow` is true and
    holds it `hold` seconds before the commit (what a trainer's compute on the view looks like); a
    copying consumer (`borrow: false`, over UCX or local) holds each fetched batch `hold` seconds before
    its ack, so a consumer killed mid-run holds claimed, un-acked descriptors.
    Local reads hold their slots under the server's lease (`server.lease`).
    """

    entrypoint: str | None = Field(None, pattern=ENTRYPOINT_PATTERN)
    count: int = Field(2, ge=1, le=MAX_CONSUMERS)
    batch: int = Field(8, ge=1, le=MAX_BATCH)
    read_timeout: PositiveDuration = 2.0
    quarantine: Duration = 5.0
    max_attempts: int = Field(4, ge=1, le=MAX_ATTEMPTS)
    rounds: int = Field(3, ge=1, le=MAX_ATTEMPTS)
    transport: Literal["ucx", "local"] = "ucx"
    borrow: bool = False
    hold: Duration = 0.0

    @model_validator(mode="after")
    def _local_only(self) -> Consumers:
        if self.transport != "local" and self.borrow:
            raise ValueError("borrow needs transport: local (a zero-copy view of the producer's segment)")
        return self


class Window(_Model):
    """`[start, end)` in seconds from the start of the fault phase."""

    start: Duration
    end: Duration

    @model_validator(mode="after")
    def _ordered(self) -> Window:
        if self.start >= self.end:
            msg = f"end {format_duration(self.end)} must be after start {format_duration(self.start)}"
            raise LocatedErrors([(("end",), msg)])
        return self


# --- toxics (network layer): Toxiproxy's attribute names and integer units ------------------------


class LatencyAttributes(_Model):
    latency: ToxicInt = 0  # ms
    jitter: ToxicInt = 0  # ms


class BandwidthAttributes(_Model):
    rate: ToxicInt = 0  # KB/s


class SlowCloseAttributes(_Model):
    delay: ToxicInt = 0  # ms


class TimeoutAttributes(_Model):
    timeout: ToxicInt = 0  # ms; 0 = hold the data until the toxic is removed


class ResetPeerAttributes(_Model):
    timeout: ToxicInt = 0  # ms before the RST


class SlicerAttributes(_Model):
    average_size: ToxicInt = 0  # bytes
    size_variation: ToxicInt = 0  # bytes
    delay: ToxicInt = 0  # us between slices


class LimitDataAttributes(_Model):
    bytes: ToxicInt = 0


class _Toxic(_Model):
    type: str
    stream: Literal["upstream", "downstream"] = "downstream"
    toxicity: Probability = 1.0


class LatencyToxic(_Toxic):
    type: Literal["latency"]
    attributes: LatencyAttributes = LatencyAttributes()


class BandwidthToxic(_Toxic):
    type: Literal["bandwidth"]
    attributes: BandwidthAttributes = BandwidthAttributes()


class SlowCloseToxic(_Toxic):
    type: Literal["slow_close"]
    attributes: SlowCloseAttributes = SlowCloseAttributes()


class TimeoutToxic(_Toxic):
    type: Literal["timeout"]
    attributes: TimeoutAttributes = TimeoutAttributes()


class ResetPeerToxic(_Toxic):
    type: Literal["reset_peer"]
    attributes: ResetPeerAttributes = ResetPeerAttributes()


class SlicerToxic(_Toxic):
    type: Literal["slicer"]
    attributes: SlicerAttributes = SlicerAttributes()


class LimitDataToxic(_Toxic):
    type: Literal["limit_data"]
    attributes: LimitDataAttributes = LimitDataAttributes()


Toxic = Annotated[
    LatencyToxic
    | BandwidthToxic
    | SlowCloseToxic
    | TimeoutToxic
    | ResetPeerToxic
    | SlicerToxic
    | LimitDataToxic,
    Field(discriminator="type"),
]


# --- faults ------------------------------------------------------------------------------------------


class _Fault(_Model):
    """What every fault has: its `kind` and when it is active (`window`, `at`, or neither = always).

    The class is the one definition of a kind: its fields and rules here, its `layer` (which part of
    the harness runs it: transport, network, process or control) as a class attribute read by the
    runner, the fault layers and the reports through `layer_of`. `by_kernel` marks the network kinds the
    simulated hosts' kernel runs (not a proxy); `client_side` the transport kinds a consumer can do to
    its own link (`side: client`).
    """

    layer: ClassVar[str]
    by_kernel: ClassVar[bool] = False
    client_side: ClassVar[bool] = False
    kind: str

    @model_validator(mode="after")
    def _one_time(self) -> _Fault:
        if getattr(self, "window", None) is not None and getattr(self, "at", None) is not None:
            raise LocatedErrors([(("at",), "give either at or window, not both")])
        return self


class _PortFault(_Fault):
    """Base of per-port faults. `ports` is None only before `Scenario` fills in every port."""

    ports: list[PortIndex] | None = Field(None, min_length=1, max_length=64)

    @field_validator("ports")
    @classmethod
    def _unique(cls, ports: list[int] | None) -> list[int] | None:
        if ports is not None and len(set(ports)) != len(ports):
            raise ValueError(f"port indexes must be unique, got {ports}")
        return ports


class _TransportFault(_PortFault):
    """`side`: whose link the fault acts on, the server's (default) or the consumer's own (`client`:
    reset, timeout and stall only; see chaos/faults/transport.py)."""

    layer: ClassVar[str] = "transport"
    probability: Probability = 1.0
    window: Window | None = None
    at: Duration | None = None
    side: Literal["server", "client"] = "server"

    @model_validator(mode="after")
    def _client_side(self) -> _TransportFault:
        if self.side == "client" and not self.client_side:
            kinds = "reset, timeout and stall"  # the kinds with client_side = True, in the docs' order
            raise LocatedErrors([(("side",), f"side client applies to {kinds}, not {self.kind}")])
        return self


class ResetFault(_TransportFault):
    """Abort the endpoint at `phase`."""

    client_side: ClassVar[bool] = True
    kind: Literal["reset"]
    phase: Literal["request", "status", "payload", "commit", "resolve"]


class TruncateFault(_TransportFault):
    """Send a wrong-size `status` or `payload` message."""

    kind: Literal["truncate"]
    phase: Literal["status", "payload"] = "payload"


class CorruptFault(_TransportFault):
    """Send the `status` or `payload` message with bytes flipped, same length."""

    kind: Literal["corrupt"]
    phase: Literal["status", "payload"] = "payload"


class TimeoutFault(_TransportFault):
    """Reply only after `delay` seconds (filled in by `Scenario`: past the consumers' read timeout)."""

    client_side: ClassVar[bool] = True
    kind: Literal["timeout"]
    delay: PositiveDuration | None = None


class StallFault(_TransportFault):
    """Server side: send the status, then hold the payload for `delay` seconds. Client side: hold the
    client before it sends at `phase` (request, commit or resolve), a paused consumer."""

    client_side: ClassVar[bool] = True
    kind: Literal["stall"]
    delay: PositiveDuration
    phase: Literal["request", "commit", "resolve"] | None = None

    @model_validator(mode="after")
    def _phase_by_side(self) -> StallFault:
        if self.side == "client" and self.phase is None:
            raise LocatedErrors([(("phase",), "a client-side stall needs phase: request, commit or resolve")])
        if self.side == "server" and self.phase is not None:
            raise LocatedErrors(
                [(("phase",), "a server-side stall holds the payload: phase needs side client")]
            )
        return self


class EvictFault(_TransportFault):
    """Close the endpoint after serving it, as idle eviction does."""

    kind: Literal["evict"]


class DropCommitFault(_TransportFault):
    """Record the commit, lose the COMMITTED reply: the client must RESOLVE."""

    kind: Literal["drop_commit"]


class _NetworkFault(_PortFault):
    """On listener proxies (`ports`, single-host mode) or on a host link (`between: [a, b]`, host mode)."""

    layer: ClassVar[str] = "network"
    window: Window | None = None
    at: Duration | None = None
    between: list[str] | None = Field(None, min_length=2, max_length=2)


class ToxicFault(_NetworkFault):
    """A Toxiproxy toxic on the proxies in front of `ports`, or on host link `between[0]->between[1]`."""

    kind: Literal["toxic"]
    toxic: Toxic


class DownFault(_NetworkFault):
    """The proxies in front of `ports` (or host link `between`) are disabled."""

    kind: Literal["down"]


class _KernelFault(_Fault):
    """A fault in the fabric's kernel, on every packet `between` two hosts or to and from `isolate`."""

    layer: ClassVar[str] = "network"
    by_kernel: ClassVar[bool] = True
    window: Window | None = None
    at: Duration | None = None
    between: list[str] | None = Field(None, min_length=2, max_length=2)
    isolate: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> _KernelFault:
        if (self.between is None) == (self.isolate is None):
            raise LocatedErrors([((), f"a {self.kind} fault needs exactly one of between or isolate")])
        return self


class PartitionFault(_KernelFault):
    """Every packet dropped, both ways."""

    kind: Literal["partition"]


class LossFault(_KernelFault):
    """A `probability` of the packets dropped, both ways (TCP retransmits them)."""

    kind: Literal["loss"]
    probability: Annotated[float, Field(gt=0, le=1)]


class RejectFault(_KernelFault):
    """Every TCP segment answered with a reset."""

    kind: Literal["reject"]


class BandwidthFault(_KernelFault):
    """A token bucket of `rate` (bytes per second, e.g. `64KiB/s`) per direction."""

    kind: Literal["bandwidth"]
    rate: ByteRate


class FlapFault(_KernelFault):
    """The link goes down and comes back up every `period`, starting down."""

    kind: Literal["flap"]
    period: PositiveDuration = 1.0


class _ProcessFault(_Fault):
    layer: ClassVar[str] = "process"
    target: Target
    probability: Probability = 1.0
    window: Window | None = None
    at: Duration | None = None


class KillFault(_ProcessFault):
    """SIGKILL the target."""

    kind: Literal["kill"]


class PauseFault(_ProcessFault):
    """SIGSTOP the target, SIGCONT after `duration` seconds."""

    kind: Literal["pause"]
    duration: PositiveDuration


class RestartFault(_ProcessFault):
    """Start the target again (killing it first if it is running)."""

    kind: Literal["restart"]


class _ControlFault(_Fault):
    layer: ClassVar[str] = "control"
    probability: Probability = 1.0
    window: Window | None = None
    at: Duration | None = None


class DuplicateDescriptorFault(_ControlFault):
    """Hand one descriptor to two consumers, which then race for the slot."""

    kind: Literal["duplicate_descriptor"]


class DelayDescriptorFault(_ControlFault):
    """Hold a descriptor back for `delay` seconds before handing it out."""

    kind: Literal["delay_descriptor"]
    delay: PositiveDuration


Fault = Annotated[
    ResetFault
    | TruncateFault
    | CorruptFault
    | TimeoutFault
    | StallFault
    | EvictFault
    | DropCommitFault
    | ToxicFault
    | DownFault
    | PartitionFault
    | LossFault
    | RejectFault
    | BandwidthFault
    | FlapFault
    | KillFault
    | PauseFault
    | RestartFault
    | DuplicateDescriptorFault
    | DelayDescriptorFault,
    Field(discriminator="kind"),
]
FAULT_KINDS: dict[str, type[_Fault]] = {
    get_args(cls.model_fields["kind"].annotation)[0]: cls for cls in get_args(get_args(Fault)[0])
}
"""Fault class per `kind`; `FAULT_KINDS[kind].layer` is transport, network, process or control."""


def layer_of(kind: str) -> str:
    """`transport`, `network`, `process` or `control`: the part of the harness that runs `kind`."""
    cls = FAULT_KINDS.get(kind)
    if cls is None:
        raise ValueError(f"unknown fault kind {kind!r}")
    return cls.layer


def kinds_of(layer: str) -> frozenset[str]:
    """Every kind of one layer (see `layer_of`)."""
    return frozenset(kind for kind, cls in FAULT_KINDS.items() if cls.layer == layer)


def _faults_fired(value: Any) -> Any:
    if value in ("all", "none"):
        return value
    if isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value
    ):
        if len(set(value)) != len(value):
            raise ValueError(f"fault indexes must be unique, got {value}")
        return value
    raise ValueError(f"expected all, none or a list of fault indexes, got {value!r}")


class Expect(_Model):
    """Pass criteria. Counts are upper bounds; `min_throughput` per second, the others in seconds."""

    lost: int = Field(0, ge=0, le=MAX_COUNT)
    duplicated: int = Field(0, ge=0, le=MAX_COUNT)
    corrupted: int = Field(0, ge=0, le=MAX_COUNT)
    in_doubt: int = Field(0, ge=0, le=MAX_COUNT)
    consumed_by_dead_consumer: int | None = Field(None, ge=0, le=MAX_COUNT)
    slot_leak: int = Field(0, ge=0, le=MAX_COUNT)
    drain_incomplete: bool = False
    faults_effective: Annotated[Literal["all", "none"] | list[int], BeforeValidator(_faults_fired)] = "all"
    faults_fired: Annotated[Literal["all", "none"] | list[int], BeforeValidator(_faults_fired)] = "none"
    faults_quarantined: Annotated[Literal["all", "none"] | list[int], BeforeValidator(_faults_fired)] = "none"
    min_throughput: Rate | None = None
    max_recovery: Duration | None = None
    max_p99_latency: PositiveDuration | None = None


class Scenario(_Model):
    """One chaos run. Times in seconds, sizes in bytes, rates per second (see the module docstring)."""

    name: str = Field(pattern=NAME_PATTERN, max_length=200)
    description: str = Field("", max_length=MAX_TEXT)
    seed: int = Field(0, ge=0, le=2**63 - 1)
    duration: PositiveDuration
    drain_timeout: PositiveDuration = 30.0
    deadline: PositiveDuration | None = None  # always set after validation
    protocol: Literal["commit", "single-chunk"] = "commit"
    channel: Literal["memory", "redis"] = "memory"
    ring: Ring = Ring()
    producer: Producer = Producer()
    server: Server = Server()
    consumers: Consumers = Consumers()
    hosts: dict[str, list[str]] | Literal["default"] | None = None
    faults: list[Fault] = Field([], max_length=MAX_FAULTS)
    expect: Expect = Expect()

    _source: Path | None = PrivateAttr(None)
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> Scenario:
        """Checks that span sections; also fills the defaults that depend on other fields."""
        problems: list[tuple[Loc, str]] = []
        if self.deadline is None:
            self.deadline = self.duration + self.drain_timeout + DEADLINE_SLACK_S
        elif self.deadline < self.duration + self.drain_timeout:
            problems.append(
                (
                    ("deadline",),
                    f"{format_duration(self.deadline)} leaves no room for duration + drain_timeout "
                    f"({format_duration(self.duration + self.drain_timeout)})",
                )
            )
        if self.producer.payload.max > self.ring.slot_bytes:
            problems.append(
                (
                    ("producer", "payload", "max"),
                    f"{format_size(self.producer.payload.max)} does not fit in a slot "
                    f"(ring.slot_bytes {format_size(self.ring.slot_bytes)})",
                )
            )
        problems.extend(self._check_hosts())
        for i, fault in enumerate(self.faults):
            problems.extend((("faults", i, *loc), msg) for loc, msg in self._check_fault(fault))
        for field in ("faults_effective", "faults_fired", "faults_quarantined"):
            indexes = getattr(self.expect, field)
            if isinstance(indexes, list):
                for j, index in enumerate(indexes):
                    if index >= len(self.faults):
                        problems.append(
                            (("expect", field, j), f"no fault {index}: there are {len(self.faults)}")
                        )
        if problems:
            raise LocatedErrors(problems)
        return self

    # -- hosts ----------------------------------------------------------------------------------

    def placement(self) -> dict[str, str] | None:
        """Role -> host (None: single-host mode). `default`: server and producer on host `server`,
        each consumer on a host named after it."""
        if self.hosts is None:
            return None
        if self.hosts == "default":
            consumers = {f"consumer-{i}": f"consumer-{i}" for i in range(self.consumers.count)}
            return {"server": "server", "producer": "server", **consumers}
        return {role: host for host, roles in self.hosts.items() for role in roles}

    def host_names(self) -> list[str]:
        placement = self.placement() or {}
        return list(dict.fromkeys(placement.values()))

    def _check_hosts(self) -> list[tuple[Loc, str]]:
        if self.hosts is not None and self.channel == "redis":
            # Redis runs in the runner's namespace: consumers inside hosts could not reach its loopback.
            return [
                (
                    ("channel",),
                    "redis cannot be combined with `hosts:` (the Redis server is not placed on "
                    "a simulated host yet); use channel: memory for host scenarios",
                )
            ]
        if not isinstance(self.hosts, dict):
            return []
        problems: list[tuple[Loc, str]] = []
        roles = {"server", "producer", *(f"consumer-{i}" for i in range(self.consumers.count))}
        seen: dict[str, str] = {}
        for host, placed in self.hosts.items():
            if not HOST_NAME.match(host):
                problems.append(
                    (("hosts", host), "host names are lower-case letters and digits, optionally -N")
                )
            for role in placed:
                if role not in roles:
                    problems.append(
                        (("hosts", host), f"no role {role!r}: roles are {', '.join(sorted(roles))}")
                    )
                elif role in seen:
                    problems.append((("hosts", host), f"{role} is already placed on {seen[role]}"))
                seen[role] = host
        missing = sorted(roles - seen.keys())
        if missing:
            problems.append((("hosts",), f"roles not placed on any host: {', '.join(missing)}"))
        if "server" in seen and seen.get("producer", seen["server"]) != seen["server"]:
            problems.append(
                (("hosts",), "producer and server share the ring's memory: place them on one host")
            )
        return problems

    def _check_network_target(self, fault: _Fault) -> list[tuple[Loc, str]]:
        hosts = self.host_names()
        between: list[str] | None = getattr(fault, "between", None)
        isolate: str | None = getattr(fault, "isolate", None)
        if not hosts:
            if between is not None or isolate is not None or isinstance(fault, _KernelFault):
                return [((), f"a {fault.kind} fault between hosts needs `hosts:` (simulated hosts)")]
            return []
        problems: list[tuple[Loc, str]] = []
        if isinstance(fault, _NetworkFault):
            if between is None:
                return [((), f"in host mode a {fault.kind} fault names a host link: between: [from, to]")]
            fault.ports = None
        for j, name in enumerate(between or []):
            if name not in hosts:
                problems.append((("between", j), f"no host {name!r}: hosts are {', '.join(hosts)}"))
        if between is not None and len(set(between)) != len(between):
            problems.append((("between",), "a link joins two different hosts"))
        if isolate is not None and isolate not in hosts:
            problems.append((("isolate",), f"no host {isolate!r}: hosts are {', '.join(hosts)}"))
        return problems

    def warnings(self) -> list[str]:
        """Settings that run but may not test what they seem to (printed by validate and run)."""
        out = []
        for i, fault in enumerate(self.faults):
            if isinstance(fault, ToxicFault) and fault.between is None and fault.toxic.type in DATA_SHAPING:
                out.append(
                    f"faults[{i}]: a {fault.toxic.type} toxic on a listener proxy (ports) reaches only UCX "
                    "connection setup, never a payload byte; put it on a host link (hosts: + between:)"
                )
        return out

    def _check_fault(self, fault: _Fault) -> list[tuple[Loc, str]]:
        problems: list[tuple[Loc, str]] = []
        if fault.layer == "network":
            problems.extend(self._check_network_target(fault))
        if isinstance(fault, _PortFault) and not (isinstance(fault, _NetworkFault) and fault.between):
            if fault.ports is None:
                fault.ports = list(range(self.server.ports))
            for j, port in enumerate(fault.ports):
                if port >= self.server.ports:
                    problems.append(
                        (("ports", j), f"port index {port} out of range: server.ports is {self.server.ports}")
                    )
        window: Window | None = getattr(fault, "window", None)
        at: float | None = getattr(fault, "at", None)
        phase = f"the fault phase (duration {format_duration(self.duration)})"
        if window is not None and window.end > self.duration:
            problems.append((("window", "end"), f"{format_duration(window.end)} is past the end of {phase}"))
        if at is not None and at >= self.duration:
            problems.append((("at",), f"{format_duration(at)} is not within {phase}"))
        if isinstance(fault, _ProcessFault):
            if window is None and at is None:
                problems.append(((), f"a {fault.kind} fault needs `at` or `window`"))
            if fault.target == "redis" and self.channel != "redis":
                problems.append((("target",), "target redis needs `channel: redis`"))
            head, _, index = fault.target.partition("-")
            if head == "consumer" and index and int(index) >= self.consumers.count:
                problems.append(
                    (("target",), f"no {fault.target}: consumers.count is {self.consumers.count}")
                )
        if isinstance(fault, PauseFault) and at is not None and at + fault.duration > self.duration:
            problems.append(
                (
                    ("duration",),
                    f"pause at {format_duration(at)} for {format_duration(fault.duration)} "
                    f"ends after {phase}",
                )
            )
        if isinstance(fault, TimeoutFault):
            read_timeout = self.consumers.read_timeout
            if fault.delay is None:
                fault.delay = TIMEOUT_DELAY_FACTOR * read_timeout
            elif fault.delay <= read_timeout:
                problems.append(
                    (
                        ("delay",),
                        f"{format_duration(fault.delay)} must exceed consumers.read_timeout "
                        f"({format_duration(read_timeout)}); a shorter hold is a stall",
                    )
                )
        return problems

    @property
    def source(self) -> Path | None:
        """The file this scenario was loaded from, if any (not part of `to_dict`)."""
        return self._source

    def line_of(self, loc: Loc) -> int | None:
        """Line in the source file of a field path like `("faults", 2)` (nearest ancestor if defaulted)."""
        return line_for(self._lines, loc)

    def __eq__(self, other: object) -> bool:
        """Same run settings; where each was loaded from (source file, lines) does not matter."""
        if not isinstance(other, Scenario):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable, like every pydantic model

    def to_dict(self) -> dict[str, Any]:
        """Normalised, JSON-safe form (bytes, seconds, per second) with every default filled in."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "<dict>") -> Scenario:
        """Inverse of `to_dict` (also accepts unit strings). Raises `ScenarioError` naming `source`."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = problems_from_validation(exc, cls)
            raise ScenarioError(
                [Problem(source, None, format_loc(loc) or None, msg) for loc, msg in problems]
            ) from None

    def with_seed(self, seed: int) -> Scenario:
        """A copy with another seed (the CLI's `--seed` override)."""
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        copy = self.model_copy(update={"seed": seed}, deep=True)
        copy._source = self._source
        return copy
