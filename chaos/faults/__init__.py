"""Transport-, process- and control-layer faults, each a small type behind one seeded interface.

The network layer (a Toxiproxy-compatible proxy per port) lives in `chaos.proxy`.
"""

from chaos.faults.base import (
    CONTROL_KINDS,
    NETWORK_KINDS,
    PROCESS_KINDS,
    TRANSPORT_KINDS,
    FaultSpec,
    HealSwitch,
    Trigger,
    derive_rng,
    derive_seed,
    layer_of,
)
from chaos.faults.control import ControlFaults, Handout
from chaos.faults.process import ProcessFaults, ProcessHandle
from chaos.faults.transport import ChaosLink, ChaosLinkWrapper, InjectedFaultError, make_link_wrapper

__all__ = [
    "CONTROL_KINDS",
    "NETWORK_KINDS",
    "PROCESS_KINDS",
    "TRANSPORT_KINDS",
    "ChaosLink",
    "ChaosLinkWrapper",
    "ControlFaults",
    "FaultSpec",
    "Handout",
    "HealSwitch",
    "InjectedFaultError",
    "ProcessFaults",
    "ProcessHandle",
    "Trigger",
    "derive_rng",
    "derive_seed",
    "layer_of",
    "make_link_wrapper",
]
