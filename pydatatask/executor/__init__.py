"""Executors: where jobs run (see :mod:`pydatatask.executor.base` for the contract).

Host executors run process jobs on this machine (:class:`LocalHost`) or over SSH
(:class:`SSHHost`); :class:`Hosts` spreads jobs over several of them.

:class:`SSHHost` is imported lazily so that ``import pydatatask.executor`` does not load
asyncssh (which is itself imported only when a connection is used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .hosts import Host, Hosts, HostUnavailableError, format_memory, parse_memory
from .local import LocalHost

if TYPE_CHECKING:
    from .ssh import SSHHost

__all__ = (
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
