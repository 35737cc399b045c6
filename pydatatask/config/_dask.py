"""The ``dask`` executor of pipeline files: function calls on a Dask cluster whose client is
a session resource.

A :class:`~pydatatask.executor.pool.PoolExecutor` needs a live ``distributed.Client``
when it is made, and a client connects as it is made: built while the file loads, it would
connect when the file is only checked or drawn. :class:`SessionDaskExecutor` holds the
session accessor instead; its quota is its own, and the first job it starts in an open
session wraps the session's client in a ``PoolExecutor`` (made again when the session has
been reopened, its client a new one), which runs every job of that session.
"""

from __future__ import annotations

from typing import Any

from ..executor.base import CallExecutor, JobHandle, Slot, Work
from ..executor.pool import PoolExecutor
from ..session import ResourceAccessor

__all__ = ("SessionDaskExecutor",)


class SessionDaskExecutor(CallExecutor):
    """Plain function calls on the Dask cluster of the session resource ``client`` (an
    accessor of a ``distributed.Client``).

    :param max_jobs: calls at once (default: unlimited; Dask queues them, and a job's time
        limit counts from the start of its call on a worker); ``cpu`` and ``memory``
        (bytes): the quota handed out to jobs' resources, as for
        :class:`~pydatatask.executor.pool.PoolExecutor`.
    """

    def __init__(
        self,
        client: ResourceAccessor[Any],
        *,
        name: str,
        max_jobs: int | None = None,
        cpu: float | None = None,
        memory: int | None = None,
    ) -> None:
        super().__init__(name, max_jobs=max_jobs, cpu=cpu, memory=memory)
        self.client = client
        self._pool: PoolExecutor | None = None
        self._pool_client: Any = None

    def describe(self) -> str:
        return f"Dask executor {self.name}"

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        work = self._call(work)
        client = self.client()  # SessionClosedError outside an open session
        if self._pool is not None and self._pool_client is not client:
            await self.aclose()
        if self._pool is None:
            self._pool = PoolExecutor(client, name=self.name)
            self._pool_client = client
        return await self._pool.start(work, slot)

    async def aclose(self) -> None:
        """Stop listening for the client's start events (the client is the session's)."""
        pool, self._pool, self._pool_client = self._pool, None, None
        if pool is not None:
            await pool.aclose()
