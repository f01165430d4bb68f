"""`chaos proxy`: the embedded Toxiproxy-compatible server, standalone, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import click

from chaos.proxy.server import serve


async def _run(host: str, port: int, seed: int | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(url: str, used_seed: int) -> None:
        click.echo(f"toxiproxy API listening on {url} (seed {used_seed})")

    await serve(host, port, seed, stop, ready)


@click.command("proxy")
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address.")
@click.option("--port", default=8474, show_default=True, type=click.IntRange(0, 65535), help="API port.")
@click.option("--seed", type=int, default=None, help="Seed for toxicity draws (random if omitted).")
def proxy(host: str, port: int, seed: int | None) -> None:
    """Run the Toxiproxy-compatible proxy server (HTTP API on HOST:PORT) until interrupted."""
    try:
        asyncio.run(_run(host, port, seed))
    except OSError as exc:
        error = click.ClickException(f"cannot listen on {host}:{port}: {exc}")
        error.exit_code = 3  # harness error, as for every `chaos` command
        raise error from exc
