"""Transport-, process- and control-layer faults, each a small type behind one seeded interface.

What a fault is (its kind, fields, rules and layer) is its class in `chaos.scenario.model`; this package
decides when it fires (`Trigger`) and makes it act. The network layer (a Toxiproxy-compatible proxy
per port) lives in `chaos.proxy`, the kernel faults between simulated hosts in `chaos.hosts`.
"""

from chaos.faults.base import FaultSpec, HealSwitch, Trigger, derive_rng, derive_seed
from chaos.faults.control import ControlFaults, Handout
from chaos.faults.process import ProcessFaults, ProcessHandle
from chaos.faults.transport import ChaosLink, ChaosLinkWrapper, InjectedFaultError, make_link_wrapper

__all__ = [
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
    "make_link_wrapper",
]
