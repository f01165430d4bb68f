"""The descriptor a producer publishes and a trainer hands to a consumer."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from transport.errors import ConfigError

_OPTIONAL = frozenset({"segment", "boot_id"})


@dataclass(frozen=True, slots=True)
class SlotDescriptor:
    """Names one payload: `(ring_id, slot, generation)` plus where and how to fetch it.

    `secret` is the ring's access secret (hex); every request carries it because ucxx listeners
    bind 0.0.0.0 and cannot be restricted to loopback. `segment` (the ring's /dev/shm name) and
    `boot_id` (its host's kernel boot id) let a consumer on the same host read the slot from shared
    memory (`transport.local`); both are optional (empty: UCX only).
    """

    host: str
    ports: tuple[int, ...]
    ring_id: str
    slot: int
    generation: int
    nbytes: int
    checksum: int
    secret: str
    segment: str = ""
    boot_id: str = ""

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
        names = {f.name for f in fields(cls)}
        missing = names - data.keys() - _OPTIONAL
        unknown = data.keys() - names
        if missing or unknown:
            raise ConfigError(
                f"bad descriptor: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}"
            )
        try:
            return cls(
                host=str(data["host"]),
                ports=tuple(int(p) for p in data["ports"]),
                ring_id=str(data["ring_id"]),
                slot=int(data["slot"]),
                generation=int(data["generation"]),
                nbytes=int(data["nbytes"]),
                checksum=int(data["checksum"]),
                secret=str(data["secret"]),
                segment=str(data.get("segment", "")),
                boot_id=str(data.get("boot_id", "")),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad descriptor field: {exc}") from exc
