"""Process entry points for the end-to-end tests (spawned, so they live in an importable module)."""

from __future__ import annotations

import queue
import random
import traceback
from typing import Any

from chaos.content import make_payload, verify_payload
from transport import Consumer, Producer, SlotDescriptor, TransportError
from transport.checksum import checksum


def producer_main(cfg: dict[str, Any], descriptors: Any, control: Any, reports: Any) -> None:
    """Write `cfg['count']` payloads, publish (seq, descriptor), then wait for 'close' and report the ring."""
    rng = random.Random(cfg["seed"])
    try:
        with Producer(
            slots=cfg["slots"],
            slot_bytes=cfg["slot_bytes"],
            ports=cfg["ports"],
            protocol=cfg["protocol"],
            server_options=cfg.get("server_options", {}),
        ) as producer:
            for seq in range(cfg["count"]):
                nbytes = rng.randint(cfg["min_bytes"], cfg["max_bytes"])
                desc = producer.put(make_payload(cfg["seed"], seq, nbytes), timeout=60.0)
                descriptors.put((seq, desc.to_dict()))
            try:
                control.get(timeout=cfg["close_after"])
            except queue.Empty:
                pass
            states = [info.state.name for info in producer.ring.snapshot()]
            reports.put(("ring", states, producer.ring.stats()))
    except BaseException:
        reports.put(("error", traceback.format_exc()))
        raise


def consumer_main(name: str, cfg: dict[str, Any], descriptors: Any, results: Any) -> None:
    """Fetch descriptors until a None sentinel; report (name, seq, key, checksum_ok, content_ok, error)."""
    consumer = Consumer(
        read_timeout=cfg.get("read_timeout", 2.0),
        quarantine=cfg.get("quarantine", 0.5),
        max_attempts=cfg.get("max_attempts", 8),
        protocol=cfg["protocol"],
        local=cfg.get("local", False),
    )
    try:
        while True:
            item = descriptors.get(timeout=cfg.get("idle_timeout", 120.0))
            if item is None:
                break
            seq, raw = item
            desc = SlotDescriptor.from_dict(raw)
            try:
                payload = consumer.get(desc)
            except TransportError as exc:
                results.put((name, seq, desc.key, None, None, f"{type(exc).__name__}: {exc}"))
                continue
            results.put(
                (
                    name,
                    seq,
                    desc.key,
                    checksum(payload) == desc.checksum,
                    verify_payload(payload, cfg["seed"], seq, desc.nbytes),
                    None,
                )
            )
    finally:
        consumer.close()
