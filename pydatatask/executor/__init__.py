"""Executors: where jobs run. The contract is :mod:`pydatatask.executor.base`; function
calls run in the event loop (:class:`InLoopExecutor`) or a pool (:class:`PoolExecutor`:
threads, processes, Dask); processes on this machine (:class:`LocalHost`) or SSH hosts
(:class:`SSHHost`), and :class:`Hosts` spreads them over several hosts.

:class:`SSHHost` is imported lazily so that ``import pydatatask.executor`` does not load
asyncssh (which is itself imported only when a connection is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..quantities import format_memory, parse_memory
from .base import (
    CallExecutor,
    Capacity,
    Executor,
    FunctionCall,
    JobHandle,
    Outcome,
    PodWork,
    ProcessWork,
    Resources,
    Slot,
    Work,
)
from .hosts import Host, HostUnavailableError
from .inloop import InLoopExecutor
from .local import LocalHost
from .multihost import Hosts
from .pool import PoolExecutor

if TYPE_CHECKING:
    from .ssh import SSHHost

__all__ = (
    "Executor",
    "Resources",
    "Slot",
    "Work",
    "FunctionCall",
    "ProcessWork",
    "PodWork",
    "Outcome",
    "JobHandle",
    "Capacity",
    "CallExecutor",
    "InLoopExecutor",
    "PoolExecutor",
    "Host",
    "Hosts",
    "LocalHost",
    "SSHHost",
    "HostUnavailableError",
    "parse_memory",
    "format_memory",
)


def __getattr__(name: str) -> Any:
    if name == "SSHHost":
        value = getattr(importlib.import_module(".ssh", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
