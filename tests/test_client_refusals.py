"""A refusal (STALE) keeps the client's endpoint when nothing else is posted on it.

Why it matters: a consumer that reconnected after every STALE (~75 ms here, ~0.9 s for a process's
first read) fell further behind an overwrite ring until it only ever met STALE (issue 14).
"""

from __future__ import annotations

import numpy as np
import pytest

from transport import Consumer, Producer
from transport.client import PREPOST_MIN_BYTES
from transport.errors import StaleSlotError

pytestmark = pytest.mark.timeout(120)


def test_stale_small_slot_keeps_the_endpoint_large_one_replaces_it() -> None:
    with Producer(slots=1, slot_bytes=2 * PREPOST_MIN_BYTES, ports=1, policy="overwrite") as p:
        c = Consumer(read_timeout=2.0, quarantine=0.0, local=False)  # the UCX path, not same-host
        try:
            small = p.put(b"s" * 100)
            p.put(b"newer")  # one slot: `small` is overwritten, its descriptor is STALE
            with pytest.raises(StaleSlotError):
                c.get(small)
            assert c.client.stats.connects == 1
            fresh = p.put(b"fresh")
            assert bytes(c.get(fresh)) == b"fresh"
            assert c.client.stats.connects == 1, "the endpoint survived the STALE and served the next read"

            large = p.put(np.ones(PREPOST_MIN_BYTES, dtype=np.uint8))
            p.put(b"newer")
            with pytest.raises(StaleSlotError):
                c.get(large)  # its payload receive was posted ahead: the endpoint must go
            fresh = p.put(b"again")
            assert bytes(c.get(fresh)) == b"again"
            assert c.client.stats.connects == 2
            assert c.client.stats.quarantines == 0, "a refusal is not a port failure"
        finally:
            c.close()


def test_warm_pools_one_endpoint_per_port_and_skips_a_dead_one() -> None:
    with Producer(slots=4, slot_bytes=4096, ports=2) as p:
        c = Consumer(read_timeout=2.0, connect_timeout=1.0)
        try:
            dead = 1  # nothing listens on port 1
            warmed = c._loop.run(c.client.warm(p.host, [*p.ports, dead]), 30.0)
            assert warmed == 2 and c.client.stats.connects == 2
            assert bytes(c.get(p.put(b"x"))) == b"x"
            assert c.client.stats.connects == 2, "the first read used a pooled endpoint"
        finally:
            c.close()
