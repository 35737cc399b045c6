"""The web page of a pipeline, its JSON API and its Prometheus metrics (the ``web`` extra:
``pip install pydatatask[web]``, which brings aiohttp). See ``docs/web.rst``.

Nothing here is imported by ``import pydatatask``; the command line imports it for
``serve`` and ``run --serve`` only.
"""

from __future__ import annotations

from .server import DEFAULT_PORT, WebServer, is_loopback, parse_address
from .several import MultiWebServer, page_names
from .state import Monitor, Snapshot, TaskState

__all__ = (
    "WebServer",
    "MultiWebServer",
    "page_names",
    "Monitor",
    "Snapshot",
    "TaskState",
    "parse_address",
    "is_loopback",
    "DEFAULT_PORT",
)
