"""A minimal trainer loop, run by the chaos harness as the consumer role.

The loop a trainer runs in production: read a batch of descriptors from the stream (XREADGROUP),
fetch the slots (`DataPackerMixin.fetch_slots`), train on what arrived, then XACK what is done and
give back what may succeed on another attempt. Acknowledging only after the payload is in hand is
what makes the bus at-least-once: a trainer killed mid-batch leaves its entries pending, and the
consumer group hands them to another trainer.

Run it under the storm on either channel:
    chaos run examples/trainer/combined-storm-redis.yaml
or point any scenario at it with `consumers: {entrypoint: "examples.trainer.train:consume"}`.
"""

from __future__ import annotations

import numpy as np

from chaos.trainer import TrainerContext, settle


def train_step(payloads: list[np.ndarray]) -> float:
    """Stand-in for a gradient step: a number that depends on every byte of the batch."""
    return float(sum(int(p.sum(dtype=np.uint64)) for p in payloads))


async def consume(ctx: TrainerContext) -> None:
    while not ctx.stopping():
        messages = await ctx.source.read(ctx.batch, timeout=0.5)  # XREADGROUP (+ XAUTOCLAIM)
        if not messages:
            continue
        descriptors = [m.descriptor for m in messages]
        batch = await ctx.packer.fetch_slots(descriptors)
        train_step(batch.delivered())
        ctx.sink.record(descriptors, batch)  # what the harness judges: exactly what was trained on
        done, retry = settle(messages, batch)
        await ctx.source.ack(done)  # XACK only after the payloads are in hand
        await ctx.source.nack(retry)
