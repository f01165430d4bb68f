"""The descriptor a producer publishes and a trainer hands to a consumer."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any

from transport.errors import DescriptorError
from transport.protocol import MAX_PAYLOAD

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_HEX16 = re.compile(r"[0-9a-f]{32}")

_OPTIONAL = frozenset({"segment", "boot_id"})
_set = object.__setattr__  # how a frozen dataclass sets its own fields


@dataclass(frozen=True, slots=True)
class SlotDescriptor:
    """Names one payload: `(ring_id, slot, generation)` plus where and how to fetch it.

    `capability` (32 hex digits) is the per-slot access proof, HMAC(ring key, ring id | slot |
    generation) truncated to 16 bytes (see `transport.protocol.RingKey`): it opens this slot at this
    generation and nothing else, and it is left out of `repr` so logs never show it. `ring_slots` is
    the size of the ring the descriptor claims to come from, so a slot index past it is refused here.

    Every field is checked on construction (`DescriptorError`, a `ValueError` of the transport
    hierarchy, never retried): a bad descriptor fails before any read, instead of failing inside the
    read as a link fault that would quarantine healthy ports, and the receive buffer a client posts
    is bounded by `MAX_PAYLOAD`.
    `segment` (the ring's /dev/shm name) and `boot_id` (its host's kernel boot id) let a consumer on
    the same host read the slot from shared memory (`transport.local`); both optional (empty: UCX only).
    """

    host: str
    ports: tuple[int, ...]
    ring_id: str
    ring_slots: int
    slot: int
    generation: int
    nbytes: int
    checksum: int
    capability: str = field(repr=False)
    segment: str = ""
    boot_id: str = ""

    def __post_init__(self) -> None:
        if not _sound(self):  # the checks alone; the messages are built only on failure
            raise DescriptorError("bad descriptor: " + "; ".join(_problems(self)))

    def for_slot(
        self, slot: int, generation: int, nbytes: int, checksum: int, capability: str
    ) -> SlotDescriptor:
        """This descriptor's ring and addresses, naming another read: what a producer issues per put.

        The fields shared with `self` were checked when `self` was made, so only the per-read rules
        run here (`_PER_READ_CHECKS`, from the one rule table); building it this way costs a fraction
        of the constructor (measured: the constructor was a fifth of a 4 KiB put). A bad value takes
        the constructor's path, so the error names the field exactly as there.
        """
        new = object.__new__(SlotDescriptor)
        _set(new, "host", self.host)
        _set(new, "ports", self.ports)
        _set(new, "ring_id", self.ring_id)
        _set(new, "ring_slots", self.ring_slots)
        _set(new, "slot", slot)
        _set(new, "generation", generation)
        _set(new, "nbytes", nbytes)
        _set(new, "checksum", checksum)
        _set(new, "capability", capability)
        _set(new, "segment", self.segment)
        _set(new, "boot_id", self.boot_id)
        if all(holds(new) for holds in _PER_READ_CHECKS):
            return new
        fields_ = {"slot": slot, "generation": generation, "nbytes": nbytes, "checksum": checksum}
        return replace(self, capability=capability, **fields_)  # raises, naming the field

    @property
    def key(self) -> str:
        """Identity of the payload in histories and logs."""
        return f"{self.slot}:{self.generation}"

    def to_dict(self) -> dict[str, Any]:
        """Every field by name, `ports` as a list (JSON-ready). Spelled out: `dataclasses.asdict`
        deep-copies each value and cost 15 us per descriptor, a third of a 4 KiB put (measured)."""
        return {
            "host": self.host,
            "ports": list(self.ports),
            "ring_id": self.ring_id,
            "ring_slots": self.ring_slots,
            "slot": self.slot,
            "generation": self.generation,
            "nbytes": self.nbytes,
            "checksum": self.checksum,
            "capability": self.capability,
            "segment": self.segment,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlotDescriptor:
        if not isinstance(data, dict):
            raise DescriptorError(f"bad descriptor: expected a mapping, got {type(data).__name__}")
        keys = data.keys()
        missing = () if keys == _NAMES else _NAMES - keys - _OPTIONAL  # every field: the usual case
        unknown = () if keys == _NAMES else keys - _NAMES
        if missing or unknown:
            raise DescriptorError(
                f"bad descriptor: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}"
            )
        ports = data["ports"]
        if not isinstance(ports, list | tuple):
            raise DescriptorError(f"bad descriptor: ports must be a list, got {type(ports).__name__}")
        return cls(**{**data, "ports": tuple(ports)})


_NAMES = frozenset(f.name for f in fields(SlotDescriptor))


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _ports_ok(ports: object) -> bool:
    return (
        isinstance(ports, tuple)
        and 0 < len(ports) <= 1024
        and all(type(p) is int and 1 <= p <= 65535 for p in ports)
    )


def _ports_problem(ports: object) -> str:
    if not isinstance(ports, tuple) or not ports or len(ports) > 1024:
        return f"ports={ports!r}: 1 to 1024 ports"
    return f"ports={list(ports)!r}: every port in 1..65535"


def _slot_problem(d: SlotDescriptor) -> str:
    if not _int_in(d.slot, 0, _U32):
        return f"slot={d.slot!r}: a u32"
    return f"slot={d.slot}: past the ring's {d.ring_slots} slots"


def _hex16(value: object) -> bool:
    return isinstance(value, str) and _HEX16.fullmatch(value) is not None


_Rule = tuple[str, Callable[[SlotDescriptor], bool], Callable[[SlotDescriptor], str]]
# The one list of field rules: (field, holds?, what it asks for). `_sound` runs the checks alone (every
# descriptor a consumer decodes), `_problems` names each one that fails, `for_slot` runs the per-read ones.
_RULES: tuple[_Rule, ...] = (
    (
        "host",
        lambda d: isinstance(d.host, str) and 0 < len(d.host) <= 255,
        lambda d: f"host={d.host!r}: a non-empty host name or address",
    ),
    ("ports", lambda d: _ports_ok(d.ports), lambda d: _ports_problem(d.ports)),
    ("ring_id", lambda d: _hex16(d.ring_id), lambda d: f"ring_id={d.ring_id!r}: 32 lowercase hex digits"),
    (
        "ring_slots",
        lambda d: _int_in(d.ring_slots, 1, _U32 + 1),
        lambda d: f"ring_slots={d.ring_slots!r}: in 1..2**32",
    ),
    (
        "slot",
        lambda d: (
            _int_in(d.slot, 0, _U32) and not (_int_in(d.ring_slots, 1, _U32 + 1) and d.slot >= d.ring_slots)
        ),
        _slot_problem,
    ),
    ("generation", lambda d: _int_in(d.generation, 0, _U64), lambda d: f"generation={d.generation!r}: a u64"),
    (
        "nbytes",
        lambda d: _int_in(d.nbytes, 0, MAX_PAYLOAD),
        lambda d: f"nbytes={d.nbytes!r}: in 0..{MAX_PAYLOAD}",
    ),
    ("checksum", lambda d: _int_in(d.checksum, 0, _U64), lambda d: f"checksum={d.checksum!r}: a u64"),
    (
        "capability",
        lambda d: _hex16(d.capability),
        lambda d: "capability: 32 lowercase hex digits (value not shown)",
    ),
    (
        "segment",
        lambda d: isinstance(d.segment, str) and "/" not in d.segment and len(d.segment) <= 255,
        lambda d: f"segment={d.segment!r}: a plain /dev/shm file name (or empty)",
    ),
    (
        "boot_id",
        lambda d: isinstance(d.boot_id, str) and len(d.boot_id) <= 64,
        lambda d: f"boot_id={d.boot_id!r}: a kernel boot id (or empty)",
    ),
)
# What differs between two reads of one producer's ring (`for_slot` checks only these).
_PER_READ = ("slot", "generation", "nbytes", "checksum", "capability")
_PER_READ_CHECKS = tuple(holds for name, holds, _ in _RULES if name in _PER_READ)


def _sound(d: SlotDescriptor) -> bool:
    """Every rule holds (no messages built)."""
    return all(holds(d) for _, holds, _ in _RULES)


def _problems(d: SlotDescriptor) -> list[str]:
    """Every out-of-range or malformed field, named (empty when the descriptor is sound)."""
    return [problem(d) for _, holds, problem in _RULES if not holds(d)]
