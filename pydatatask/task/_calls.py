"""One function call in a :class:`concurrent.futures.Executor`, with a time limit that
counts from when the call *starts*, not from when it was submitted.

How the start is seen depends on the executor:

* a thread pool: the call itself tells the event loop, from its worker thread, just before
  it runs (and does not run at all if the job was given up meanwhile);
* a Dask ``distributed`` client: the call logs an event on its worker, which the client
  receives (``Client.subscribe_topic``);
* a process pool: the future's ``running()`` state. A pool marks a call running when it
  hands it to its workers' queue, ahead of a free worker, so calls are submitted to a
  process pool only while one of its workers is free (the wait for one is not counted);
* any other executor: the future's ``running()`` state.

A call that has not started when the job is given up is cancelled and never runs. A call
that runs past its time limit cannot be interrupted (neither threads, nor processes of a
pool, nor Dask tasks can be): the job fails with :class:`~pydatatask.errors.JobTimeoutError`
saying so, a warning names the task and key, and whatever the call returns later is
discarded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import JobTimeoutError

__all__ = ("run_call", "DaskStartEvents")

log = logging.getLogger("pydatatask.task")

#: how often a future's running() state is looked at while the call waits to start
_POLL_MIN, _POLL_MAX = 0.005, 0.05


_free_workers: weakref.WeakKeyDictionary[
    concurrent.futures.Executor, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]
] = weakref.WeakKeyDictionary()


def _process_slots(executor: concurrent.futures.Executor) -> asyncio.Semaphore | None:
    """For a process pool: a semaphore of its worker count, shared by every task using it
    (in this event loop)."""
    if not isinstance(executor, concurrent.futures.ProcessPoolExecutor):
        return None
    loop = asyncio.get_running_loop()
    per_loop = _free_workers.get(executor)
    if per_loop is None:
        per_loop = _free_workers[executor] = weakref.WeakKeyDictionary()
    slots = per_loop.get(loop)
    if slots is None:
        workers = getattr(executor, "_max_workers", None)
        slots = per_loop[loop] = asyncio.Semaphore(
            workers if isinstance(workers, int) else os.cpu_count() or 1
        )
    return slots


def _release_later(loop: asyncio.AbstractEventLoop, slots: asyncio.Semaphore) -> Callable[[Any], None]:
    def release(_: Any) -> None:  # in the pool's thread, when the call has ended
        try:
            loop.call_soon_threadsafe(slots.release)
        except RuntimeError:  # the loop is closed, and its semaphore with it
            pass

    return release


class _Gate:
    """Between the event loop and a thread pool's worker: the call starts only if the
    job still wants it, and the loop learns when it starts."""

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


class DaskStartEvents:
    """The client side of :class:`_DaskStarted`: one topic subscription per task and client,
    dispatching each start to the job waiting for it."""

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


async def _wait_start(
    future: asyncio.Future[Any], cfut: concurrent.futures.Future[Any], started: asyncio.Event | None
) -> None:
    """Return when the call has started (or already ended)."""
    if started is not None:
        waiter = asyncio.ensure_future(started.wait())
        try:
            await asyncio.wait({waiter, future}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        return
    poll = _POLL_MIN
    while not (cfut.running() or cfut.done()):
        await asyncio.wait({future}, timeout=poll)
        poll = min(poll * 2, _POLL_MAX)


async def run_call(
    call: Callable[[], Any],
    executor: concurrent.futures.Executor,
    *,
    limit: float | None,
    what: str,
    dask: DaskStartEvents | None = None,
) -> tuple[Any, float | None]:
    """Run ``call`` in ``executor``; return its result and the event-loop time by which the
    job must end (``None`` without a ``limit``), ``limit`` seconds after the call started.

    ``what`` names the job in messages (``"task T: job 'k'"``).
    """
    loop = asyncio.get_running_loop()
    started: asyncio.Event | None = None
    gate: _Gate | None = None
    notify: _DaskStarted | None = None
    fn: Callable[[], Any] = call
    if isinstance(executor, concurrent.futures.ThreadPoolExecutor):
        started = asyncio.Event()
        gate = _Gate(loop, started)
        fn = functools.partial(_gated, call, gate)
    elif dask is not None:
        started = asyncio.Event()
        notify = dask.expect(loop, started)
        fn = functools.partial(_notifying, call, notify)
    slots = _process_slots(executor)
    if slots is not None:
        await slots.acquire()  # held until the call ends, even after a timeout
        try:
            cfut = executor.submit(fn)
        except BaseException:
            slots.release()
            raise
        cfut.add_done_callback(_release_later(loop, slots))
    else:
        cfut = executor.submit(fn)
    future = asyncio.wrap_future(cfut)
    deadline: float | None = None
    try:
        if limit is None:
            result = await asyncio.shield(future)
        else:
            await _wait_start(future, cfut, started)
            deadline = loop.time() + limit
            done, _ = await asyncio.wait({future}, timeout=limit)
            if not done:
                raise JobTimeoutError(
                    f"{what} timed out after {limit:g}s; the call cannot be interrupted and may still "
                    f"be running in {type(executor).__name__}: whatever it returns is discarded"
                )
            result = future.result()
    except BaseException as exc:
        if cfut.done() and not cfut.cancelled():
            raise  # the call's own outcome
        # timed out or cancelled: the call must not start now, and if it runs, its result
        # goes nowhere
        cancelled = cfut.cancel()
        running = gate.give_up() if gate is not None else not cancelled
        future.cancel()
        if running:
            if isinstance(exc, JobTimeoutError):
                log.warning("%s: %s", what, str(exc).removeprefix(what + " "))
            else:
                log.warning(
                    "%s was stopped while its call runs in %s, which cannot interrupt it: "
                    "whatever it returns is discarded",
                    what,
                    type(executor).__name__,
                )
        raise
    finally:
        if notify is not None and dask is not None:
            dask.forget(notify)
    if result is _NOT_RUN:  # only when the job was given up: not awaited any more
        raise RuntimeError(f"{what}: the call was given up before it started")
    return result, deadline
