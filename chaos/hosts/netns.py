"""Network namespaces by name: create, remove, enter, run a command in one, find the processes inside.

Names live in iproute2's place (`/run/netns/<name>`), so `ip netns list` and `ip netns exec` see what the
harness made. pyroute2 does the namespace syscalls; commands that only ship as programs (iptables, tc
helpers) run through `ip netns exec`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2 import netns as _netns

T = TypeVar("T")

RUN_DIR = Path("/run/netns")
COMMAND_TIMEOUT_S = 20.0


class NetnsError(RuntimeError):
    """A namespace operation or a command inside one failed; the message names which."""


def exists(name: str) -> bool:
    return (RUN_DIR / name).exists()


def names(prefix: str = "") -> list[str]:
    """Named namespaces starting with `prefix`."""
    if not RUN_DIR.is_dir():
        return []
    return sorted(p.name for p in RUN_DIR.iterdir() if p.name.startswith(prefix))


def create(name: str) -> None:
    """`ip netns add`: iproute2 sets up the shared bind mount of /run/netns that makes the name visible to
    every process (pyroute2's forked helper was seen to leave it invisible to a busy parent)."""
    _ip(["netns", "add", name], f"cannot create network namespace {name}")


def _ip(argv: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(
            ["ip", *argv], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{what}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{what}: {done.stderr.strip()}")


def inode(name: str) -> int | None:
    try:
        return (RUN_DIR / name).stat().st_ino
    except OSError:
        return None


def pids(name: str) -> list[int]:
    """Processes whose network namespace is `name` (read from /proc, so it sees every process)."""
    target = inode(name)
    if target is None:
        return []
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(entry / "ns" / "net").st_ino == target:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def kill_inside(name: str) -> list[int]:
    """SIGKILL every process in the namespace (a stopped one too); returns their pids."""
    killed = []
    for pid in pids(name):
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            continue
    return killed


def remove(name: str) -> None:
    """Kill what runs inside and drop the name; the kernel frees the namespace (and its veths) then."""
    kill_inside(name)
    if exists(name):
        _ip(["netns", "delete", name], f"cannot remove network namespace {name}")


def enter(name: str) -> None:
    """Move the calling thread (and the threads it starts later) into namespace `name`."""
    try:
        _netns.setns(name, flags=0)
    except OSError as exc:
        raise NetnsError(f"cannot enter network namespace {name}: {exc}") from exc


def run(name: str, argv: Sequence[str], *, check: bool = True, input: str | None = None) -> str:
    """Run `argv` inside namespace `name`; returns stdout. A failure names the command and its stderr."""
    cmd = ["ip", "netns", "exec", name, *argv]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, input=input, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)} in {name}: {exc}") from exc
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} in {name} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def netlink(name: str, fn: Callable[[IPRoute], T], timeout: float = COMMAND_TIMEOUT_S) -> T:
    """`fn(ipr)` with an `IPRoute` whose socket lives in namespace `name`.

    The socket is made by a short-lived thread that entered the namespace (setns is per thread), not by
    pyroute2's `netns=` helper: that forks a child which, when it cannot see the name, *creates* a new
    namespace under it (seen under `chaos run`: the veth peer then landed in a stray namespace).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            enter(name)
            with IPRoute() as ipr:
                box["value"] = fn(ipr)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run, name=f"netlink-{name}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise NetnsError(f"netlink call in {name} did not finish within {timeout:g}s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]
