"""Orchestration on one host: containers with a lifecycle, their resources and the record.

* :mod:`.lifecycle`: :class:`ContainerManager`, the states a container moves through;
* :mod:`.sessions`: the runner of a managed container, and its sessions on the record;
* :mod:`.processes`: a container's process tree on the host (signals, usage, is it ours);
* :mod:`.orphans`: the orphan sweep, and :func:`stop_recorded` and
  :func:`checkpoint_recorded` from another process;
* :mod:`.record`: the SQLite record every process of a user on a host shares (the only
  module that speaks SQL);
* :mod:`.allocator`: CPUs, memory and GPUs handed to containers, across processes;
* :mod:`.ports`: TCP ports leased to containers, across processes.
"""

from .lifecycle import ContainerManager, ContainerStatus, State
from .orphans import checkpoint_recorded, stop_recorded

__all__ = ["ContainerManager", "ContainerStatus", "State", "checkpoint_recorded", "stop_recorded"]
