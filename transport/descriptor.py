"""The descriptor a producer publishes and a trainer hands to a consumer."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from transport.errors import DescriptorError
from transport.protocol import MAX_PAYLOAD

_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
_HEX16 = re.compile(r"[0-9a-f]{32}")


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

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise DescriptorError("bad descriptor: " + "; ".join(problems))

    @property
    def key(self) -> str:
        """Identity of the payload in histories and logs."""
        return f"{self.slot}:{self.generation}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ports"] = list(self.ports)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlotDescriptor:
        if not isinstance(data, dict):
            raise DescriptorError(f"bad descriptor: expected a mapping, got {type(data).__name__}")
        names = {f.name for f in fields(cls)}
        missing = names - data.keys()
        unknown = data.keys() - names
        if missing or unknown:
            raise DescriptorError(
                f"bad descriptor: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}"
            )
        ports = data["ports"]
        if not isinstance(ports, list | tuple):
            raise DescriptorError(f"bad descriptor: ports must be a list, got {type(ports).__name__}")
        return cls(**{**data, "ports": tuple(ports)})


def _int_in(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _problems(d: SlotDescriptor) -> list[str]:
    """Every out-of-range or malformed field, named (empty when the descriptor is sound)."""
    out: list[str] = []
    if not isinstance(d.host, str) or not d.host or len(d.host) > 255:
        out.append(f"host={d.host!r}: a non-empty host name or address")
    if not isinstance(d.ports, tuple) or not d.ports or len(d.ports) > 1024:
        out.append(f"ports={d.ports!r}: 1 to 1024 ports")
    elif not all(_int_in(p, 1, 65535) for p in d.ports):
        out.append(f"ports={list(d.ports)!r}: every port in 1..65535")
    if not isinstance(d.ring_id, str) or not _HEX16.fullmatch(d.ring_id):
        out.append(f"ring_id={d.ring_id!r}: 32 lowercase hex digits")
    if not _int_in(d.ring_slots, 1, _U32 + 1):
        out.append(f"ring_slots={d.ring_slots!r}: in 1..2**32")
    if not _int_in(d.slot, 0, _U32):
        out.append(f"slot={d.slot!r}: a u32")
    elif _int_in(d.ring_slots, 1, _U32 + 1) and d.slot >= d.ring_slots:
        out.append(f"slot={d.slot}: past the ring's {d.ring_slots} slots")
    if not _int_in(d.generation, 0, _U64):
        out.append(f"generation={d.generation!r}: a u64")
    if not _int_in(d.nbytes, 0, MAX_PAYLOAD):
        out.append(f"nbytes={d.nbytes!r}: in 0..{MAX_PAYLOAD}")
    if not _int_in(d.checksum, 0, _U64):
        out.append(f"checksum={d.checksum!r}: a u64")
    if not isinstance(d.capability, str) or not _HEX16.fullmatch(d.capability):
        out.append("capability: 32 lowercase hex digits (value not shown)")
    return out
