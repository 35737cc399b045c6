"""Lifecycle hooks: callbacks on job and pipeline events."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError

__all__ = ("Hooks", "Event", "EVENTS")

log = logging.getLogger("pydatatask.hooks")

EVENTS = (
    "job_started",
    "job_succeeded",
    "job_failed",
    "job_retrying",
    "pipeline_started",
    "pipeline_finished",
)


@dataclass(frozen=True)
class Event:
    """What a hook receives. ``task``/``key``/``attempt``/``record`` are set for job events;
    ``delay`` for ``job_retrying``; ``summary`` for ``pipeline_finished``."""

    name: str
    task: str | None = None
    key: str | None = None
    attempt: int | None = None
    record: dict[str, Any] | None = None
    error: BaseException | None = None
    delay: float | None = None
    summary: dict[str, Any] | None = field(default=None)


Callback = Callable[[Event], None | Awaitable[None]]


class Hooks:
    """A registry of callbacks. ``hooks.on("job_failed", fn)`` or ``@hooks.on("job_failed")``.

    Callbacks may be plain or async functions. A callback that raises is logged on one line
    (task, key, hook, event, error; with the traceback when the ``pydatatask`` log is at
    INFO or lower, as with ``-v``) and never stops the run.
    """

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callback]] = {name: [] for name in EVENTS}

    def on(self, event: str, callback: Callback | None = None) -> Any:
        """Subscribe ``callback`` to ``event`` (usable as a decorator)."""
        if event not in self._callbacks:
            raise ConfigurationError(f"unknown hook event {event!r}; known events: {', '.join(EVENTS)}")

        def register(fn: Callback) -> Callback:
            self._callbacks[event].append(fn)
            return fn

        return register(callback) if callback is not None else register

    def __bool__(self) -> bool:
        return any(self._callbacks.values())

    def wants(self, event: str) -> bool:
        """Whether any callback listens to ``event`` (lets callers skip building events)."""
        return bool(self._callbacks.get(event))

    async def emit(self, event: Event) -> None:
        """Call every callback of ``event.name``; log (never raise) their errors."""
        for callback in self._callbacks.get(event.name, ()):
            try:
                result = callback(event)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                # one line; the traceback too when the log is verbose (-v) - a hook's bug
                # must not bury the run's output
                job = f"task {event.task} key {event.key!r}: " if event.task is not None else ""
                log.warning(
                    "%shook %s on %s raised %s: %s; the run goes on",
                    job,
                    _hook_name(callback),
                    event.name,
                    type(exc).__name__,
                    " ".join(str(exc).split()),
                    exc_info=log.isEnabledFor(logging.INFO),
                )


def _hook_name(callback: Callback) -> str:
    """``module.qualname`` of a callback (its repr for objects without one)."""
    qualname = getattr(callback, "__qualname__", None)
    if qualname is None:
        return repr(callback)
    module = getattr(callback, "__module__", None)
    return f"{module}.{qualname}" if module else str(qualname)
