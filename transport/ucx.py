"""The one place that configures UCX for this process.

Progress mode, measured on this 2-core machine (ucxx 0.52, two endpoints in one process,
4 KiB request/reply; `/tmp` probe recorded in docs/decisions.md):

| mode | RTT | idle CPU |
|---|---|---|
| blocking | 38 us | 100 % (its arm loop spins) |
| polling | 38 us | 100 % |
| thread | 92 us | 100 % |
| thread + python futures | 106 us | 2 % |

A producer, a server and several consumers share 2 cores in the harness, so an idle process must
not burn a core: the default is this package's `hybrid` engine (`transport.progress`: spin while
busy, sleep on the worker's epoll fd when idle). `SLOTWIRE_PROGRESS_MODE` selects a stock mode
instead, e.g. `polling` for a dedicated box.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transport.progress import HybridProgress

DEFAULT_ENV = {
    # UCX picked TCP over loopback for every lane; keep it off the machine's other addresses.
    "UCX_NET_DEVICES": "lo",
    # Re-listening on a just-closed port (server restart) needs address reuse.
    "UCX_TCP_CM_REUSEADDR": "y",
    "UCX_WARN_UNUSED_ENV_VARS": "n",
}

DEFAULT_MODE = "hybrid"
PROGRESS_MODES = ("thread", "polling", "blocking", "hybrid")

_initialised_loop: asyncio.AbstractEventLoop | None = None
_engine: HybridProgress | None = None


def setup_env() -> None:
    """Set UCX defaults before ucxx is imported (user-set values win)."""
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)


def progress_mode() -> tuple[str, bool]:
    """(progress_mode, enable_python_future) from `SLOTWIRE_PROGRESS_MODE` (default `hybrid`)."""
    mode = os.environ.get("SLOTWIRE_PROGRESS_MODE", DEFAULT_MODE)
    if mode not in PROGRESS_MODES:
        raise ValueError(f"SLOTWIRE_PROGRESS_MODE={mode!r}: expected one of {', '.join(PROGRESS_MODES)}")
    return mode, mode == "thread"


def init_in_loop() -> None:
    """Initialise ucxx once per process, from inside the running loop.

    Python futures only work when ucxx is initialised inside the loop that awaits them.
    """
    global _initialised_loop, _engine
    loop = asyncio.get_running_loop()
    if _initialised_loop is loop:
        return
    if _initialised_loop is not None:
        raise RuntimeError("ucxx is already initialised for another event loop in this process")
    setup_env()
    import ucxx

    mode, futures = progress_mode()
    if mode == "hybrid":
        from transport.progress import HybridProgress

        _engine = HybridProgress()
    else:
        ucxx.init(progress_mode=mode, enable_python_future=futures)
    _initialised_loop = loop


def engine() -> HybridProgress | None:
    """The hybrid progress engine, if this process runs in `hybrid` mode."""
    return _engine


_users = 0


def acquire() -> None:
    """Count one more open client or server using ucxx in this process (after `init_in_loop`)."""
    global _users
    _users += 1


def release() -> None:
    """Count one fewer user; the last one shuts ucxx down so the process can exit.

    ucxx's python-future notifier thread keeps posting to the loop it was started for; if that
    loop closes first, the thread raises and the interpreter hangs at exit. Closing the last
    user stops the thread and resets ucxx while the loop is still running.
    """
    global _users, _initialised_loop, _engine
    _users = max(0, _users - 1)
    if _users or _initialised_loop is None:
        return
    import ucxx

    if _engine is not None:
        _engine.close()
        _engine = None
    try:
        ucxx.stop_notifier_thread()
    except Exception:  # already stopped
        pass
    try:
        ucxx.reset()
    except Exception:  # an endpoint is still referenced somewhere: the notifier is stopped anyway
        pass
    _initialised_loop = None
