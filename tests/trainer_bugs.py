"""A planted bug in the example trainer, run by tests as the consumer role.

`consume_ack_first` is `examples.trainer.train.consume` with XACK moved before the fetch: a batch
whose reads fail (a server outage, a killed trainer) has already been acknowledged, so nobody is
ever handed it again. It logs one `mutant` event, so a test can show the planted code ran.
"""

from __future__ import annotations

from chaos.trainer import TrainerContext
from examples.trainer.train import train_step


async def consume_ack_first(ctx: TrainerContext) -> None:
    ctx.events.emit("mutant", name="ack_before_fetch")
    while not ctx.stopping():
        messages = await ctx.source.read(ctx.batch, timeout=0.5)
        if not messages:
            continue
        await ctx.source.ack(messages)  # the bug: acknowledged before the payloads are in hand
        descriptors = [m.descriptor for m in messages]
        batch = await ctx.packer.fetch_slots(descriptors)
        train_step(batch.delivered())
        ctx.sink.record(descriptors, batch)
