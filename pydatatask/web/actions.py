"""The actions of the page (``--allow-actions``): redo keys, stop launching, resume.

``redo`` removes the outputs, records and logs of the keys (``rm`` does the same), so they
are ready again: a scheduler running with ``--forever`` (or the next ``run``) does them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, InvalidKeyError, PydatataskError
from ..keys import validate_key
from .state import Monitor

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline

__all__ = ("ActionError", "run_action", "ACTIONS", "MAX_REDO")

ACTIONS = ("redo", "stop", "resume")
#: the most keys one redo removes
MAX_REDO = 100_000


class ActionError(Exception):
    """An action refused, with the HTTP status to answer and a one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def run_action(pipeline: Pipeline, monitor: Monitor, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """Do the action ``name`` with the JSON ``body``; return what was done."""
    if name == "redo":
        return await _redo(pipeline, monitor, body)
    if name in ("stop", "resume"):
        scheduler = monitor.scheduler
        if scheduler is None:
            raise ActionError(409, f"no run in this process to {name} (start it with `run --serve`)")
        scheduler.pause(name == "stop")
        return {"action": name, "paused": scheduler.paused}
    raise ActionError(404, f"no action {name!r}; actions: {', '.join(ACTIONS)}")


async def _redo(pipeline: Pipeline, monitor: Monitor, body: dict[str, Any]) -> dict[str, Any]:
    task = body.get("task")
    if not isinstance(task, str) or task not in pipeline.tasks:
        raise ActionError(404, f"no task named {task!r}; tasks: {', '.join(pipeline.tasks)}")
    keys = body.get("keys")
    state = body.get("state")
    if (keys is None) == (state is None):
        raise ActionError(400, 'redo takes either keys (a list) or state ("failed")')
    if state is not None:
        if state != "failed":
            raise ActionError(
                400, f'redo of the keys in state {state!r}: only "failed" can be redone as a set'
            )
        snap = await monitor.snapshot()
        wanted = sorted(snap.tasks[task].keys.get("failed", ()))
    else:
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise ActionError(400, "keys must be a list of strings")
        try:
            wanted = [validate_key(k) for k in keys]
        except InvalidKeyError as exc:
            raise ActionError(400, str(exc)) from None
    if not wanted:
        return {"action": "redo", "task": task, "removed": 0}
    if len(wanted) > MAX_REDO:
        raise ActionError(400, f"redo of {len(wanted)} keys at once: at most {MAX_REDO}; use `rm` for more")
    try:
        removed = await pipeline.remove(task, wanted)
    except (ConfigurationError, PydatataskError) as exc:
        raise ActionError(409, " ".join(str(exc).split())) from exc
    monitor.invalidate()
    scheduler = monitor.scheduler
    if scheduler is not None:
        scheduler.errored.difference_update({(task, k) for k in wanted})
        scheduler.wake()
    return {"action": "redo", "task": task, "removed": len({k for _, _, k in removed})}
