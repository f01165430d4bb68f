"""Unit strings of scenario files -> plain numbers: sizes in bytes, durations in seconds, rates per second.

Scenario files are written for people ("4KiB", "500ms", "200/s"); everything downstream wants one
unit per quantity, so parsing happens once, here. Plain numbers (also quoted) mean the base unit (bytes,
seconds, per second). Booleans are rejected even though Python treats them as ints: `yes` in YAML is a bool,
never a size. Every parser raises `ValueError` with the offending text, which pydantic reports
under the field's path.

- size: `B`, decimal `kB`/`KB`, `MB`, `GB`, `TB` (powers of 1000), binary `KiB`, `MiB`, `GiB`, `TiB`
  (powers of 1024); unit letters are case-insensitive, so `kib` = `KiB`; the result must be whole bytes.
- duration: `us`/`µs`, `ms`, `s`, `m`/`min`, `h`, also compound like Go's `1m30s`.
- rate: `N/s`, `N/m` (`N/min`), `N/h`; plain numbers are per second.
"""

from __future__ import annotations

import math
import re

SIZE_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
DURATION_UNITS: dict[str, float] = {
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
}
RATE_UNITS: dict[str, float] = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_SIZE_RE = re.compile(rf"{_NUMBER}\s*([a-z]*)")
_DURATION_PART_RE = re.compile(rf"{_NUMBER}\s*(us|µs|ms|s|min|m|h)")
_RATE_RE = re.compile(rf"{_NUMBER}\s*/\s*([a-z]+)")


def _plain_number(value: object, what: str) -> float | None:
    """A finite, non-negative int/float as a float; None for strings; ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected a {what}, got a boolean ({value!r})")
    if isinstance(value, int | float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
        return float(value)
    if isinstance(value, str):
        return None
    raise ValueError(f"expected a {what} (number or string with a unit), got {type(value).__name__}")


def parse_size(value: object) -> int:
    """`4KiB` -> 4096, `1.5MB` -> 1500000, `512` -> 512 (bytes)."""
    number = _plain_number(value, "size")
    if number is None:
        assert isinstance(value, str)
        match = _SIZE_RE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in SIZE_UNITS:
            raise ValueError(f"bad size {value!r}: use e.g. 512, 4KiB, 1MiB, 64MiB, 10MB")
        number = float(match.group(1)) * SIZE_UNITS[match.group(2)]
    if number != int(number):
        raise ValueError(f"size {value!r} is not a whole number of bytes")
    return int(number)


def parse_duration(value: object) -> float:
    """`500ms` -> 0.5, `2m` -> 120.0, `1m30s` -> 90.0, `3` -> 3.0 (seconds)."""
    number = _plain_number(value, "duration")
    if number is not None:
        return number
    assert isinstance(value, str)
    text = value.strip().lower().replace(" ", "")
    if re.fullmatch(_NUMBER, text):
        return float(text)
    parts = list(_DURATION_PART_RE.finditer(text))
    if not text or "".join(p.group(0) for p in parts) != text:
        raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 20s, 2m, 1m30s")
    return sum(float(p.group(1)) * DURATION_UNITS[p.group(2)] for p in parts)


def parse_rate(value: object) -> float:
    """`200/s` -> 200.0, `30/m` -> 0.5, `50` -> 50.0 (events per second)."""
    number = _plain_number(value, "rate")
    if number is not None:
        return number
    assert isinstance(value, str)
    text = value.strip().lower()
    if re.fullmatch(_NUMBER, text):
        return float(text)
    match = _RATE_RE.fullmatch(text)
    if not match or match.group(2) not in RATE_UNITS:
        raise ValueError(f"bad rate {value!r}: use e.g. 200/s, 30/m, 100/h")
    return float(match.group(1)) / RATE_UNITS[match.group(2)]


def parse_byte_rate(value: object) -> float:
    """`64KiB/s`, `10MB/s`, `1MiB/m` -> bytes per second (a plain number is bytes per second)."""
    plain = _plain_number(value, "byte rate")
    if plain is not None:
        return plain
    text = str(value).strip()
    size, sep, unit = text.rpartition("/")
    if not sep or unit.strip().lower() not in RATE_UNITS:
        raise ValueError(f"expected a byte rate like 64KiB/s or 10MB/s, got {value!r}")
    return parse_size(size.strip()) / RATE_UNITS[unit.strip().lower()]


def format_size(nbytes: int) -> str:
    """Short human form for messages: 4096 -> `4KiB`, 1500 -> `1500B`."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if nbytes >= factor and nbytes % factor == 0:
            return f"{nbytes // factor}{unit}"
    return f"{nbytes}B"


def format_duration(seconds: float) -> str:
    """Short human form for messages: 0.5 -> `500ms`, 20.0 -> `20s`."""
    if seconds < 1 and seconds * 1000 == int(seconds * 1000):
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"
