"""`chaos proxy`: the embedded Toxiproxy-compatible server, standalone, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import click

from chaos.proxy.policy import is_local
from chaos.proxy.server import serve


async def _run(host: str, port: int, seed: int | None, allow_remote: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    def ready(url: str, used_seed: int) -> None:
        click.echo(f"toxiproxy API listening on {url} (seed {used_seed})")

    await serve(host, port, seed, stop, ready, allow_remote)


@click.command("proxy")
@click.option("--host", default="127.0.0.1", show_default=True, help="API listen address.")
@click.option("--port", default=8474, show_default=True, type=click.IntRange(0, 65535), help="API port.")
@click.option("--seed", type=int, default=None, help="Seed for toxicity draws (random if omitted).")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Let the API, proxy listeners and upstreams use non-loopback addresses (default: loopback "
    "and the simulated hosts' 198.18.0.0/15 only).",
)
def proxy(host: str, port: int, seed: int | None, allow_remote: bool) -> None:
    """Run the Toxiproxy-compatible proxy server (HTTP API on HOST:PORT) until interrupted."""
    if not allow_remote and not is_local(host):
        error = click.UsageError(f"--host {host} is not loopback: add --allow-remote to listen there")
        raise error
    try:
        asyncio.run(_run(host, port, seed, allow_remote))
    except OSError as exc:
        error = click.ClickException(f"cannot listen on {host}:{port}: {exc}")
        error.exit_code = 3  # harness error, as for every `chaos` command
        raise error from exc
