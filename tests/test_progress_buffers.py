"""A receive its caller gave up on keeps its buffer alive until UCX completes or cancels it.

Why: a step that times out mid-transfer drops its buffer, and UCX would go on writing the late
message into freed memory (seen as consumers crashing with SIGSEGV under a kernel bandwidth fault,
losing the slots they held). Real ucxx endpoints, in a fresh interpreter (ucxx binds one loop per
process).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(60)

SCRIPT = r"""
import asyncio, gc, json, weakref
import numpy as np
from transport import ucx
from transport.link import UcxLink, discard

async def main():
    ucx.init_in_loop()
    import ucxx
    engine = ucx.engine()
    accepted = []
    listener = ucxx.create_listener(lambda ep: accepted.append(ep))
    endpoint = await ucxx.create_endpoint("127.0.0.1", listener.port)
    while not accepted:
        await asyncio.sleep(0.01)
    link = UcxLink(endpoint, listener.port, "client")
    buf = np.empty(1 << 20, np.uint8)
    alive = weakref.ref(buf)
    future = link.post_recv(buf, "payload")
    await asyncio.sleep(0.05)
    discard(future)  # the step gave up: the caller drops its buffer
    del buf
    engine._complete()
    gc.collect()
    held_while_posted = alive() is not None
    orphans_while_posted = getattr(engine, "orphans", 0)
    link.abort()  # UCX cancels the receive: only now may the buffer go
    for _ in range(100):
        engine.poll()
        engine._complete()
        gc.collect()
        if alive() is None:
            break
        await asyncio.sleep(0.02)
    print(json.dumps({"held": held_while_posted, "orphans": orphans_while_posted,
                      "freed_after_abort": alive() is None, "orphans_after": getattr(engine, "orphans", 0)}))
    listener.close()
    for ep in accepted:
        ep.abort()
    ucx.release()

asyncio.run(main())
"""


def test_a_given_up_receive_keeps_its_buffer_until_ucx_cancels_it() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=45)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["held"], "the buffer was freed while UCX still had the receive posted"
    assert result["orphans"] == 1
    assert result["freed_after_abort"] and result["orphans_after"] == 0, result
