"""One thread that starts the processes of a :class:`~pydatatask.executor.local.LocalHost`.

A start (``posix_spawn``, a ``vfork``) stops its caller until the child has run ``exec``;
on a busy machine the child first waits for a CPU, milliseconds in which an event loop
that started it itself would reap and start nothing. Run in a thread, the start leaves
the loop free for everything else. The thread is fed by a queue and hands each result
back with one ``call_soon_threadsafe``: the loop's default executor (a
``concurrent.futures`` future chained to an asyncio one per call) cost about twice the
Python per start.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ("Starter",)

T = TypeVar("T")

#: seconds the thread waits for more work before it ends (a new one starts on demand)
IDLE = 2.0

_Item = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...], Any]


class Starter:
    """Runs ``fn(*args)`` calls in one background thread, in order, each resolving an
    asyncio future of the caller's loop."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False

    def submit(self, abandon: Callable[[T], None], fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """A future of the running loop for ``fn(*args)``, run in the thread.

        ``abandon(result)`` is called (in the thread, or on the loop) with a result whose
        caller is gone, its future cancelled or its loop closed meanwhile: what was started
        is stopped there. A call not begun when its future is cancelled is not made."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        item: _Item = (loop, future, fn, args, abandon)
        # under the lock, so that a thread about to end for want of work sees the item, or
        # this call sees that it ended and starts another
        with self._lock:
            self._queue.put(item)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name=self._name, daemon=True).start()
        return future

    async def drain(self) -> None:
        """Return once every call submitted so far has ended and handed back its result."""
        if self._running:
            await self.submit(_ignore, _nothing)

    def _run(self) -> None:
        get = self._queue.get
        while True:
            try:
                loop, future, fn, args, abandon = get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            if future.cancelled():  # (read without the loop: at worst the call runs, then is abandoned)
                continue
            error: BaseException | None = None
            result: Any = None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, who raises it
                error = exc
            try:
                loop.call_soon_threadsafe(_resolve, future, result, error, abandon)
            except RuntimeError:  # the loop is closed: nobody waits any more
                if error is None:
                    with contextlib.suppress(Exception):
                        abandon(result)


def _resolve(
    future: asyncio.Future[T], result: T, error: BaseException | None, abandon: Callable[[T], None]
) -> None:
    if future.cancelled():
        if error is None:
            with contextlib.suppress(Exception):
                abandon(result)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _nothing() -> None:
    return None


def _ignore(result: object) -> None:
    return None
