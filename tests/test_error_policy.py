"""The error policy lives on the error classes (transport.errors): the table in its docstring is checked
against the classes, so the documentation cannot drift from what the client and packer do."""

from __future__ import annotations

import inspect

import pytest

import transport.errors as errors
from transport.errors import TransportError
from transport.packer import failure_reason


def _table() -> dict[str, tuple[bool, bool, str]]:
    rows: dict[str, tuple[bool, bool, str]] = {}
    for line in (errors.__doc__ or "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in ("error", "---"):
            continue
        for name in cells[0].split(", "):
            rows[name] = (cells[1] == "yes", cells[2] == "yes", cells[3])
    return rows


def test_the_documented_table_covers_every_error_class_and_matches_it() -> None:
    table = _table()
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, TransportError) and cls is not TransportError
    }
    assert set(table) == set(classes), set(table) ^ set(classes)
    for name, (retryable, quarantines, reason) in table.items():
        cls = classes[name]
        assert (cls.retryable, cls.quarantines, cls.reason) == (retryable, quarantines, reason), name


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (errors.StaleSlotError("x"), "stale"),
        (errors.NotReadyError("x"), "consumed"),
        (errors.InDoubtError("x"), "in_doubt"),
        (errors.AttemptsExhaustedError("x"), "exhausted"),
        (errors.ReadTimeoutError("x"), "error"),
        (RuntimeError("not ours"), "error"),
    ],
)
def test_a_batch_failure_reason_comes_from_the_error_class(error: BaseException, reason: str) -> None:
    assert failure_reason(error) == reason


def test_our_own_protocol_misuse_never_blames_a_port() -> None:
    assert errors.ProtocolError("wire").quarantines
    assert not errors.LocalProtocolError("ours").quarantines
    assert errors.TransportError("x").port is None


def test_a_ucx_truncation_maps_to_truncated_by_class_not_by_name() -> None:
    import ucxx.exceptions as ucx_errors

    from transport.client import _as_transport_error

    short = _as_transport_error(ucx_errors.UCXMessageTruncatedError("short message"), "read")
    assert isinstance(short, errors.TruncatedError) and short.quarantines

    class TruncatedLookalike(Exception):
        """Not a UCX truncation, whatever its name says."""

    assert isinstance(_as_transport_error(TruncatedLookalike(), "read"), errors.ConnectionLostError)


def test_resolve_outlasts_a_short_outage_by_default_and_an_explicit_window_is_kept() -> None:
    """An in-doubt read is an anomaly, so RESOLVE keeps asking at least RESOLVE_MIN_S by default
    (explore found a read left in doubt after 4 x a 0.5 s read timeout); the harness's host-fault
    judge allows the same window (`default_resolve_timeout`, one definition)."""
    from transport.client import RESOLVE_MIN_S, SlotClient, default_resolve_timeout

    assert SlotClient(read_timeout=0.5).resolve_timeout == default_resolve_timeout(0.5) == RESOLVE_MIN_S == 15
    assert SlotClient(read_timeout=5.0).resolve_timeout == 20.0
    assert SlotClient(read_timeout=0.5, resolve_timeout=1.0).resolve_timeout == 1.0
