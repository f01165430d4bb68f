"""Start a spawned process inside a simulated host: enter its namespace before UCX is imported.

`InHost(target, netns, ifname)` is a picklable stand-in for `target`: a spawned child calls it, it moves
the process into the host's network namespace and points UCX at that host's veth (`UCX_NET_DEVICES`),
then runs `target` with the same arguments. The namespace switch happens before anything imports
ucxx, so every UCX thread and socket is created inside the host.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chaos.hosts import netns


def enter_host(ns: str, ifname: str) -> None:
    """Move this process into `ns` and make UCX use `ifname` there."""
    if "ucxx" in __import__("sys").modules:
        raise RuntimeError(f"enter_host({ns}) after ucxx was imported: UCX would keep the old network")
    netns.enter(ns)
    os.environ["UCX_NET_DEVICES"] = ifname
    os.environ["SLOTWIRE_HOST_NETNS"] = ns


@dataclass(frozen=True)
class InHost:
    """`target(*args)` run inside host namespace `netns` (picklable: `target` is a module-level function)."""

    target: Callable[..., Any]
    netns: str
    ifname: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        enter_host(self.netns, self.ifname)
        return self.target(*args, **kwargs)
