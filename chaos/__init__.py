"""Chaos harness: per-port fault injection and an exactly-once checker for the slot transport."""
