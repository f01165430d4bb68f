"""Simulated hosts: network namespaces wired through a fabric namespace, for faults on every byte."""

from chaos.hosts.enter import InHost, enter_host
from chaos.hosts.fabric import Fabric, FabricError, Host, sweep

__all__ = ["Fabric", "FabricError", "Host", "InHost", "enter_host", "sweep"]
