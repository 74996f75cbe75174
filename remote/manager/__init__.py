"""Orchestration on one host: containers with a lifecycle, their resources and the record.

* :mod:`.lifecycle`: :class:`ContainerManager`, the states a container moves through;
* :mod:`.record`: the SQLite record every process of a user on a host shares;
* :mod:`.allocator`: CPUs, memory and GPUs handed to containers, across processes;
* :mod:`.ports`: TCP ports leased to containers, across processes.
"""

from .lifecycle import ContainerManager, ContainerStatus, State, stop_recorded

__all__ = ["ContainerManager", "ContainerStatus", "State", "stop_recorded"]
