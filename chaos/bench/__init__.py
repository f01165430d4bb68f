"""The benchmark behind `chaos bench`: raw ucxx against the slot transport (`core`), issue 13's paths
(`paths`) and the live pipeline (`pipeline`); `cli` is its one command line.

It lives in the harness, not in `transport`, so a trainer's `import transport` never loads it. Nothing
is imported here: the processes the bench spawns import `chaos.bench.core`/`chaos.bench.pipeline` by
name, and must not pull click or rich in with them.
"""
