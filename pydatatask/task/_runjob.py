"""Transition adapter: tasks that still implement ``run_job(job)`` run through the lifecycle.

Task kinds not yet expressed as :meth:`~pydatatask.task.base.Task.prepare` /
:meth:`~pydatatask.task.base.Task.finish` over a real executor (they do their own
placement, claims and recovery inside ``run_job``) get this private executor: its work item
is the task's own ``run_job`` coroutine, run as an asyncio task in the scheduler's loop.
Cancelling the handle cancels that coroutine, exactly as the time limit and Ctrl-C did
before. It goes once every task kind prepares real work items.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigurationError
from ..executor.base import Executor, JobHandle, Outcome, Slot, Work

__all__ = ("RunJobWork", "RunJobExecutor")


@dataclass(frozen=True)
class RunJobWork(Work):
    """One call of a task's ``run_job`` (returns a ``JobOutcome`` or None)."""

    kind: ClassVar[str] = "run_job"

    run: Callable[[], Awaitable[Any]]


class _RunJobHandle(JobHandle):
    def __init__(self, work: RunJobWork) -> None:
        self.info: dict[str, Any] = {}
        # made here, inside the lifecycle's context: the write journal (a context variable)
        # follows the coroutine
        self._task: asyncio.Task[Any] = asyncio.ensure_future(work.run())

    async def wait(self) -> Outcome:
        try:
            # awaited directly: cancelling the waiter (a time limit, Ctrl-C) cancels run_job
            # and waits for its own cleanup, as when run_job was awaited by the lifecycle
            result = await self._task
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Outcome(error=exc)
        return Outcome(result=result)

    async def cancel(self, grace: float) -> None:
        if not self._task.done():
            self._task.cancel()
        await asyncio.wait({self._task})
        if self._task.done() and not self._task.cancelled():
            self._task.exception()  # retrieved: an error while stopping is not "never retrieved"


class RunJobExecutor(Executor):
    """Runs :class:`RunJobWork` in the event loop; no quota (the task keeps its own)."""

    carries = frozenset({RunJobWork})

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        if not isinstance(work, RunJobWork):
            raise ConfigurationError(f"{self.describe()} cannot run {work.kind} work")
        return _RunJobHandle(work)


#: shared by every task still on ``run_job``
RUN_JOB_EXECUTOR = RunJobExecutor("run_job")
