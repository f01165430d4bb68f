"""Descriptor validation: a bad descriptor fails at construction, never inside a read as a link fault."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from transport import ConfigError, Consumer, Producer, TransportError
from transport.descriptor import SlotDescriptor
from transport.errors import DescriptorError, LocalProtocolError, ProtocolError

pytestmark = pytest.mark.timeout(120)

GOOD: dict[str, Any] = {
    "host": "127.0.0.1",
    "ports": [5000, 5001],
    "ring_id": "ab" * 16,
    "ring_slots": 8,
    "slot": 3,
    "generation": 7,
    "nbytes": 100,
    "checksum": 42,
    "capability": "cd" * 16,
}


def test_a_sound_descriptor_round_trips_and_hides_its_capability() -> None:
    desc = SlotDescriptor.from_dict(GOOD)
    assert SlotDescriptor.from_dict(desc.to_dict()) == desc
    # to_dict is spelled out (asdict was a third of a 4 KiB put): it must still name every field.
    assert desc.to_dict() == {**dataclasses.asdict(desc), "ports": [5000, 5001]}
    assert type(desc.to_dict()["ports"]) is list
    assert "cd" * 16 not in repr(desc) and "capability" not in repr(desc)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("slot", -1, "slot=-1"),
        ("slot", 1 << 32, "slot="),
        ("slot", 8, "past the ring's 8 slots"),
        ("slot", "3", "slot="),
        ("slot", True, "slot="),
        ("ring_slots", 0, "ring_slots"),
        ("generation", 1 << 64, "generation"),
        ("generation", -1, "generation"),
        ("nbytes", -5, "nbytes"),
        ("nbytes", (1 << 31) + 1, "nbytes"),
        ("checksum", 1 << 64, "checksum"),
        ("ports", [0], "ports"),
        ("ports", [70000], "ports"),
        ("ports", [], "ports"),
        ("ports", "5000", "ports"),
        ("host", "", "host"),
        ("ring_id", "xyz", "ring_id"),
        ("capability", "00" * 15, "capability"),
        ("capability", "zz" * 16, "capability"),
    ],
)
def test_out_of_range_fields_are_refused_at_construction(field: str, value: Any, words: str) -> None:
    with pytest.raises(DescriptorError, match=words) as caught:
        SlotDescriptor.from_dict({**GOOD, field: value})
    err = caught.value
    assert isinstance(err, ValueError) and isinstance(err, ConfigError) and isinstance(err, TransportError)
    assert not err.retryable
    if field == "capability":
        assert str(value) not in str(err), "a capability is never echoed, even a bad one"


def test_missing_and_unknown_fields_are_descriptor_errors() -> None:
    with pytest.raises(DescriptorError, match="missing fields"):
        SlotDescriptor.from_dict({k: v for k, v in GOOD.items() if k != "slot"})
    with pytest.raises(DescriptorError, match="unknown fields"):
        SlotDescriptor.from_dict({**GOOD, "secret": "00" * 16})


@pytest.fixture(scope="module")
def producer() -> Iterator[Producer]:
    with Producer(slots=4, slot_bytes=4096, ports=3) as p:
        yield p


def test_local_protocol_misuse_is_not_retried_and_quarantines_nothing(producer: Producer) -> None:
    """A descriptor mangled after construction cannot be encoded: our bug, not the link's. Before,
    encode raised a retryable ProtocolError that quarantined every healthy port in turn."""
    desc = producer.put(b"payload")
    mangled = SlotDescriptor.from_dict(desc.to_dict())
    object.__setattr__(mangled, "slot", 1 << 40)  # bypasses validation, as a buggy caller could
    c = Consumer(read_timeout=1.0, quarantine=30.0, max_attempts=4, local=False)
    try:
        with pytest.raises(LocalProtocolError) as caught:
            c.get(mangled)
        assert isinstance(caught.value, ProtocolError) and not caught.value.retryable
        assert c.client.stats.reads == 1, "not retried"
        assert c.client.stats.quarantines == 0 and not c.client.stats.per_port_errors
        assert bytes(c.get(desc)) == b"payload", "every port still healthy"
    finally:
        c.close()


def test_for_slot_equals_the_constructor_and_refuses_what_it_refuses() -> None:
    """A producer's per-put shortcut builds the same value the constructor builds, and a bad
    per-read field still fails with the constructor's named error."""
    template = SlotDescriptor.from_dict(GOOD)
    made = template.for_slot(5, 9, 4096, 77, "ef" * 16)
    assert made == SlotDescriptor.from_dict(
        {**GOOD, "slot": 5, "generation": 9, "nbytes": 4096, "checksum": 77, "capability": "ef" * 16}
    )
    assert type(made) is SlotDescriptor and made.ports == template.ports
    from transport.descriptor import _PER_READ, _PER_READ_CHECKS

    assert len(_PER_READ_CHECKS) == len(_PER_READ) == 5  # every per-read field has its rule
    for args, words in [
        ((8, 9, 1, 1, "ef" * 16), "past the ring's 8 slots"),
        ((-1, 9, 1, 1, "ef" * 16), "slot=-1"),
        ((1, 1 << 64, 1, 1, "ef" * 16), "generation"),
        ((1, 1, -1, 1, "ef" * 16), "nbytes"),
        ((1, 1, 1, 1, "EF" * 16), "capability"),
        ((1, 1, 1, 1 << 64, "ef" * 16), "checksum"),
    ]:
        with pytest.raises(DescriptorError, match=words):
            template.for_slot(*args)
