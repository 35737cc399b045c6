"""Executors: where jobs of process tasks run (this machine, SSH hosts).

:class:`SSHHost` is imported lazily so that ``import pydatatask.executor`` does not load
asyncssh (which is itself imported only when a connection is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .hosts import Host, HostUnavailableError, ProcessSpec, RunningProcess, format_memory, parse_memory
from .local import LocalHost

if TYPE_CHECKING:
    from .ssh import SSHHost

__all__ = (
    "Host",
    "LocalHost",
    "SSHHost",
    "HostUnavailableError",
    "ProcessSpec",
    "RunningProcess",
    "parse_memory",
    "format_memory",
)


def __getattr__(name: str) -> Any:
    if name == "SSHHost":
        value = getattr(importlib.import_module(".ssh", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
