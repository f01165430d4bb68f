"""Process entry points for the simulated-host tests (spawned, so they live in an importable module)."""

from __future__ import annotations

import time
from typing import Any


def timed_reader(descriptors: Any, results: Any, read_timeout: float) -> None:
    """Read each descriptor dict from `descriptors` until None; report (key, seconds, nbytes or error)."""
    from transport import Consumer, SlotDescriptor, TransportError

    consumer = Consumer(read_timeout=read_timeout, max_attempts=1, quarantine=0.0)
    try:
        while (raw := descriptors.get(timeout=120)) is not None:
            desc = SlotDescriptor.from_dict(raw)
            start = time.perf_counter()
            try:
                payload = consumer.get(desc)
                results.put((desc.key, time.perf_counter() - start, int(payload.nbytes), None))
            except TransportError as exc:
                results.put((desc.key, time.perf_counter() - start, None, f"{type(exc).__name__}: {exc}"))
    finally:
        consumer.close()
