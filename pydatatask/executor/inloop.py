"""Function calls in the scheduler's own process: async functions in its event loop, plain
functions in a thread pool of the executor's own.

The thread pool is never asyncio's default executor (the repositories' file work runs
there: a job's call must not wait behind it, nor it behind calls). It is made when the
first plain function runs, of ``threads`` workers (default: ``max_jobs``, else 8), and shut
down by :meth:`InLoopExecutor.aclose`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any

from ..errors import ConfigurationError
from .base import CallExecutor, JobHandle, Outcome, Slot, Work
from .pool import PoolExecutor

__all__ = ("InLoopExecutor",)

_DEFAULT_THREADS = 8


class _LoopHandle(JobHandle):
    """An async function call. The coroutine runs inside :meth:`wait` (no task of its own:
    a job costs the event loop nothing more than the call), so cancelling the waiter, as a
    time limit or Ctrl-C does, cancels the call and waits for its own cleanup."""

    def __init__(self, coro: Coroutine[Any, Any, Any], place: str) -> None:
        self.info: dict[str, Any] = {}
        self._coro: Coroutine[Any, Any, Any] | None = coro
        self._place = place

    async def wait(self) -> Outcome:
        coro, self._coro = self._coro, None
        if coro is None:
            return Outcome(error=RuntimeError("the call was cancelled before it started"), place=self._place)
        try:
            result = await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return Outcome(error=exc, place=self._place)
        return Outcome(result=result, place=self._place)

    async def cancel(self, grace: float) -> None:
        # a call under way was cancelled with its waiter; one never awaited never runs
        coro, self._coro = self._coro, None
        if coro is not None:
            coro.close()

    async def close(self) -> None:
        coro, self._coro = self._coro, None
        if coro is not None:
            coro.close()


class InLoopExecutor(CallExecutor):
    """Runs function calls in this process: coroutine functions in the event loop, plain
    functions in the executor's own thread pool.

    :param max_jobs: calls at once (default: no limit beyond the tasks' ``concurrency``).
    :param threads: worker threads for plain functions (default: ``max_jobs``, else 8).
    :param cpu: CPUs to hand out to jobs' resources (default: no CPU quota); ``memory``
        likewise, in bytes.
    """

    def __init__(
        self,
        name: str = "loop",
        *,
        max_jobs: int | None = None,
        threads: int | None = None,
        cpu: float | None = None,
        memory: int | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ConfigurationError(f"executor {name!r}: threads must be at least 1, not {threads}")
        super().__init__(name, max_jobs=max_jobs, cpu=cpu, memory=memory)
        self.threads = threads or max_jobs or _DEFAULT_THREADS
        self._pool: PoolExecutor | None = None

    def _threads(self) -> PoolExecutor:
        if self._pool is None:
            threads = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.threads, thread_name_prefix=f"pydatatask-{self.name}"
            )
            self._pool = PoolExecutor(threads, name=self.name)
        return self._pool

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        work = self._call(work)
        if work.is_async:
            return _LoopHandle(work.func(**work.kwargs), self.name)
        return await self._threads().start(work, slot)

    def shutdown(self) -> None:
        """Shut the thread pool down (calls still running finish on their own); it is made
        again when needed."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.pool.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        """See :meth:`shutdown`."""
        self.shutdown()
