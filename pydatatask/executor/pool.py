"""Function calls in a :class:`concurrent.futures.Executor` (threads, processes) or a Dask
``distributed.Client``.

:class:`PoolExecutor` carries :class:`~pydatatask.executor.base.FunctionCall` work of plain
(sync) functions. Its handles know when a call really *starts*, not when it was submitted
(a job's time limit counts from there):

* a thread pool: the call itself tells the event loop, from its worker thread, just before
  it runs (and does not run at all if the job was given up meanwhile);
* a Dask ``distributed`` client: the call logs an event on its worker, which the client
  receives (``Client.subscribe_topic``);
* a process pool: the future's ``running()`` state. A pool marks a call running when it
  hands it to its workers' queue, ahead of a free worker, so a process pool executor has,
  by default, as many slots as the pool has workers: calls are submitted only while one is
  free;
* any other executor: the future's ``running()`` state.

A call that has not started when its job is given up is cancelled and never runs. A call
that has started cannot be interrupted (neither threads, nor processes of a pool, nor Dask
tasks can be): its handle is not :attr:`~PoolHandle.interruptible`, a cancelled job says
so, and whatever the call returns later is discarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError
from .base import CallExecutor, JobHandle, Outcome, Slot, Work

__all__ = ("PoolExecutor", "PoolHandle")

log = logging.getLogger("pydatatask.executor")

#: how often a future's running() state is looked at while the call waits to start
_POLL_MIN, _POLL_MAX = 0.005, 0.05


class _Gate:
    """Between the event loop and a thread pool's worker: the call starts only if the job
    still wants it, and the loop learns when it starts."""

    def __init__(self, loop: asyncio.AbstractEventLoop, started: asyncio.Event) -> None:
        self._lock = threading.Lock()
        self._loop = loop
        self._started_event = started
        self.started = False
        self.given_up = False

    def enter(self) -> bool:
        with self._lock:
            if self.given_up:
                return False
            try:
                self._loop.call_soon_threadsafe(self._started_event.set)
            except RuntimeError:  # the loop is closed: nobody is waiting for the result
                self.given_up = True
                return False
            self.started = True
            return True

    def give_up(self) -> bool:
        """Make sure the call never starts; return whether it had started already."""
        with self._lock:
            self.given_up = True
            return self.started


class _NotRun:
    pass


_NOT_RUN = _NotRun()


def _gated(call: Callable[[], Any], gate: _Gate) -> Any:
    if not gate.enter():
        return _NOT_RUN
    return call()


@dataclass(frozen=True)
class _DaskStarted:
    """Runs on a Dask worker: tells the client that the call with ``token`` starts."""

    topic: str
    token: str

    def __call__(self) -> None:
        import distributed

        distributed.get_worker().log_event(self.topic, self.token)


def _notifying(call: Callable[[], Any], notify: _DaskStarted) -> Any:
    notify()
    return call()


class _DaskStartEvents:
    """The client side of :class:`_DaskStarted`: one topic subscription per executor,
    dispatching each start to the handle waiting for it."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.topic = f"pydatatask-start-{uuid.uuid4().hex}"
        self._waiting: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
        self._subscribed = False

    def expect(self, loop: asyncio.AbstractEventLoop, started: asyncio.Event) -> _DaskStarted:
        if not self._subscribed:
            self.client.subscribe_topic(self.topic, self._on_event)
            self._subscribed = True
        token = uuid.uuid4().hex
        self._waiting[token] = (loop, started)
        return _DaskStarted(self.topic, token)

    def forget(self, notify: _DaskStarted) -> None:
        self._waiting.pop(notify.token, None)

    def _on_event(self, event: Any) -> None:  # on the client's own event loop thread
        msg = event[1] if isinstance(event, tuple) and len(event) == 2 else event
        waiting = self._waiting.pop(msg, None) if isinstance(msg, str) else None
        if waiting is not None:
            loop, started = waiting
            try:
                loop.call_soon_threadsafe(started.set)
            except RuntimeError:  # that run's loop is closed
                pass

    def close(self) -> None:
        if self._subscribed:
            self._subscribed = False
            try:
                self.client.unsubscribe_topic(self.topic)
            except Exception as exc:  # the client may be closed already
                log.debug("could not unsubscribe from %s: %s", self.topic, exc)


class PoolHandle(JobHandle):
    """A function call submitted to a pool."""

    #: a call that has started runs to its end whatever happens to its job
    interruptible = False

    def __init__(
        self,
        cfut: concurrent.futures.Future[Any],
        started: asyncio.Event | None,
        gate: _Gate | None,
        notify: tuple[_DaskStartEvents, _DaskStarted] | None,
        place: str,
    ) -> None:
        self.info: dict[str, Any] = {}
        self._cfut = cfut
        self._future = asyncio.wrap_future(cfut)
        self._started = started
        self._gate = gate
        self._notify = notify
        self._place = place

    async def started(self) -> None:
        if self._started is not None:
            waiter = asyncio.ensure_future(self._started.wait())
            try:
                await asyncio.wait({waiter, self._future}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            return
        poll = _POLL_MIN
        while not (self._cfut.running() or self._cfut.done()):
            await asyncio.wait({self._future}, timeout=poll)
            poll = min(poll * 2, _POLL_MAX)

    async def wait(self) -> Outcome:
        # shielded: a job given up (time limit, Ctrl-C) calls cancel(), which decides
        # whether the call may still start
        await asyncio.wait({self._future})
        if self._future.cancelled():
            return Outcome(error=RuntimeError("the call was given up before it started"), place=self._place)
        exc = self._future.exception()
        if exc is not None:
            return Outcome(error=exc, place=self._place)
        result = self._future.result()
        if result is _NOT_RUN:  # only when the job was given up
            return Outcome(error=RuntimeError("the call was given up before it started"), place=self._place)
        return Outcome(result=result, place=self._place)

    @property
    def running(self) -> bool:
        """Whether the call has started and not ended."""
        if self._cfut.done():
            return False
        if self._gate is not None:
            return self._gate.started
        return self._cfut.running() or (self._started is not None and self._started.is_set())

    async def cancel(self, grace: float) -> None:
        """Make sure a call that has not started never does; one that runs cannot be
        stopped: its result goes nowhere."""
        if self._cfut.done():
            return
        self._cfut.cancel()  # False when it runs in a worker: nothing can stop it then
        if self._gate is not None:
            self._gate.give_up()
        self._future.cancel()

    async def close(self) -> None:
        if self._notify is not None:
            events, notify = self._notify
            events.forget(notify)
            self._notify = None


class PoolExecutor(CallExecutor):
    """Runs plain functions in ``pool``: a :class:`concurrent.futures.Executor` (threads,
    processes) or a Dask ``distributed.Client`` (or what its ``get_executor()`` returns).

    :param max_jobs: calls at once (default: the worker count of a process pool, so that a
        call is submitted only when a worker is free; unlimited otherwise).
    :param cpu: CPUs to hand out to jobs' :class:`~pydatatask.executor.base.Resources`
        (default: no CPU quota); ``memory`` likewise, in bytes.

    With a process pool (or Dask) the function and its arguments must be picklable (the
    function defined at module level). The pool is the caller's: :meth:`aclose` does not
    shut it down.
    """

    def __init__(
        self,
        pool: Any,
        *,
        name: str | None = None,
        max_jobs: int | None = None,
        cpu: float | None = None,
        memory: int | None = None,
    ) -> None:
        self._dask: _DaskStartEvents | None = None
        if hasattr(pool, "get_executor") and not isinstance(pool, concurrent.futures.Executor):
            self._dask = _DaskStartEvents(pool)  # a distributed.Client
            pool = pool.get_executor()
        elif type(pool).__module__.startswith("distributed") and hasattr(pool, "_client"):
            self._dask = _DaskStartEvents(pool._client)  # Client.get_executor() itself
        if not isinstance(pool, concurrent.futures.Executor):
            raise ConfigurationError(
                f"PoolExecutor needs a concurrent.futures.Executor or a distributed.Client, "
                f"not {type(pool).__name__}"
            )
        self.pool = pool
        if max_jobs is None and isinstance(pool, concurrent.futures.ProcessPoolExecutor):
            workers = getattr(pool, "_max_workers", None)
            max_jobs = workers if isinstance(workers, int) else None
        super().__init__(name or type(pool).__name__, max_jobs=max_jobs, cpu=cpu, memory=memory)

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        work = self._call(work)
        if work.is_async:
            raise ConfigurationError(
                f"{self.describe()} cannot run the coroutine function {getattr(work.func, '__qualname__', work.func)!r}: "
                "async functions run on an InLoopExecutor"
            )
        loop = asyncio.get_running_loop()
        call: Callable[[], Any] = functools.partial(work.func, **work.kwargs)
        started: asyncio.Event | None = None
        gate: _Gate | None = None
        notify: tuple[_DaskStartEvents, _DaskStarted] | None = None
        if isinstance(self.pool, concurrent.futures.ThreadPoolExecutor):
            started = asyncio.Event()
            gate = _Gate(loop, started)
            call = functools.partial(_gated, call, gate)
        elif self._dask is not None:
            started = asyncio.Event()
            token = self._dask.expect(loop, started)
            notify = (self._dask, token)
            call = functools.partial(_notifying, call, token)
        cfut = self.pool.submit(call)
        return PoolHandle(cfut, started, gate, notify, self.name)

    async def aclose(self) -> None:
        """Stop listening for the start events of a Dask client (the pool is the caller's)."""
        if self._dask is not None:
            self._dask.close()
