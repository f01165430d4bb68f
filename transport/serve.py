"""Run a SlotServer in its own spawned process, attached to an existing ring by name.

Extensions that must live in the server process (the chaos link wrapper, an event log) are passed
as picklable descriptions (`"module:function"` plus keyword arguments) because a spawned child
cannot receive closures.
"""

from __future__ import annotations

import asyncio
import faulthandler
import importlib
import logging
import multiprocessing as mp
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from transport.errors import ConfigError, TransportError

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    ring_name: str
    ports: list[int]
    protocol: str = "commit"
    idle_evict: float = 10.0
    step_timeout: float = 5.0
    lease: float = 30.0
    max_endpoints: int = 256
    first_frame_timeout: float = 2.0
    events_path: str | None = None
    events_proc: str = "server"
    link_wrapper: str | None = None  # "module:function", called with link_wrapper_args plus events
    link_wrapper_args: dict[str, Any] = field(default_factory=dict)


def load_callable(spec: str) -> Any:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ConfigError(f"{spec!r}: expected 'module:function'")
    return getattr(importlib.import_module(module), name)


async def _serve(config: ServerConfig, conn: Any) -> None:
    from transport.events import JsonlSink, NullSink
    from transport.ring import SharedRing
    from transport.server import SlotServer

    ring = SharedRing.attach(config.ring_name)
    events = JsonlSink(config.events_path, config.events_proc) if config.events_path else NullSink()
    wrapper = None
    if config.link_wrapper:
        wrapper = load_callable(config.link_wrapper)(events=events, **config.link_wrapper_args)
    server = SlotServer(
        ring,
        config.ports,
        protocol=config.protocol,
        idle_evict=config.idle_evict,
        step_timeout=config.step_timeout,
        lease=config.lease,
        max_endpoints=config.max_endpoints,
        first_frame_timeout=config.first_frame_timeout,
        link_wrapper=wrapper,
        events=events,
    )
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        ports = await server.start()
        if wrapper is not None and hasattr(wrapper, "bind_ports"):
            wrapper.bind_ports(ports)
        conn.send(("ready", ports))
        # The parent's pipe closing (parent died) also stops us: nothing leaks.
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()
    finally:
        await server.stop()
        ring.close()
        if hasattr(events, "close"):
            events.close()


def server_main(config: ServerConfig, conn: Any) -> None:
    """Entry point of the server process."""
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        asyncio.run(_serve(config, conn))
    except BaseException as exc:
        try:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        except Exception:
            pass
        raise


class ServerProcess:
    """Owns one spawned server process: start (wait for its ports), stop (bounded), kill.

    `target(*target_args, config, conn)` is the process entry point: `server_main`, or a wrapper
    around it (the chaos harness adds log redirection and stack dumps).
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        target: Callable[..., None] = server_main,
        target_args: tuple[Any, ...] = (),
    ) -> None:
        self.config = config
        self.target = target
        self.target_args = target_args
        self.process: mp.process.BaseProcess | None = None
        self._conn: Any = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 60.0) -> list[int]:
        self.kill()  # reap a previous (killed) process and close its pipe before starting again
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.process = ctx.Process(
            target=self.target, args=(*self.target_args, self.config, child), name="slotwire-server"
        )
        self.process.start()
        child.close()
        self._conn = parent
        if not parent.poll(timeout):
            self.kill()
            raise TransportError(f"server process did not report its ports within {timeout:.0f}s")
        try:
            kind, value = parent.recv()
        except EOFError:
            code = self.process.exitcode
            self.kill()
            raise TransportError(f"server process exited during start (exit code {code})") from None
        if kind != "ready":
            self.kill()
            raise TransportError(f"server process failed to start: {value}")
        ports = list(value)
        # A restart must come back on the same ports.
        self.config.ports = ports
        return ports

    def stop(self, timeout: float = 5.0) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGCONT)  # a paused server cannot handle SIGTERM
            self.process.terminate()
            self.process.join(timeout)
        self.kill()

    def kill(self) -> None:
        if self.process is None:
            return
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5.0)
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.process = None
