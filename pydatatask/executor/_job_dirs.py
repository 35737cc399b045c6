"""Removing the job directories of a :class:`~pydatatask.executor.local.LocalHost`.

A job directory is removed by the names that were put there (:func:`remove_known`: one
``unlink`` or ``rmdir`` each, no listing), or by a listing when the command left more
(:func:`remove_small_tree`, :func:`shutil.rmtree`).

:class:`Remover` removes them in the background: one thread fed by a queue, which the
event loop hands a directory to without waiting for anything (no future, no wake-up of the
loop when it is done). On a journalling file system each of these calls is a journal
entry, a millisecond for a job directory on a busy disk, in which the loop would start
nothing; and a job whose directory goes in the background frees its slot at once.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import queue
import shutil
import threading
from collections.abc import Sequence

from .base import ProcessWork
from .hosts import job_dir_entries

__all__ = ("Remover", "remove_job_dir", "remove_known", "remove_small_tree")

#: a job directory with at most this many entries is removed on the event loop
SMALL_TREE = 64
#: seconds the removing thread waits for more work before it ends (a new one starts on demand)
IDLE = 2.0
#: directories handed to the thread at once, and the longest a directory waits for more
BATCH = 16
DELAY = 0.02


def remove_small_tree(path: str) -> bool:
    """Remove ``path`` on the spot if it has at most :data:`SMALL_TREE` entries.

    True when it is gone; False when it is bigger (what was removed so far is gone, the
    rest is left for :func:`shutil.rmtree` in a thread)."""
    budget = SMALL_TREE
    dirs: list[str] = []
    stack = [path]
    try:
        while stack:
            top = stack.pop()
            dirs.append(top)
            with os.scandir(top) as it:
                for entry in it:
                    budget -= 1
                    if budget < 0:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        os.unlink(entry.path)
        for d in reversed(dirs):
            os.rmdir(d)
    except FileNotFoundError:
        return not os.path.lexists(path)
    except OSError:
        return False
    return True


def remove_known(path: str, files: Sequence[str], dirs: Sequence[str]) -> bool:
    """Remove the job directory ``path`` holding at most ``files`` in ``dirs`` (relative
    paths, parents first): an unlink per file, an rmdir per directory, no listing. True
    when it is gone; False when the command left something else there."""
    try:
        for rel in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}/{rel}")
        for rel in reversed(dirs):
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(f"{path}/{rel}")
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:  # not empty, or a file where a directory was expected
        return False
    return True


def remove_job_dir(path: str, files: Sequence[str], dirs: Sequence[str]) -> None:
    """Remove the job directory ``path``: what was put there (:func:`remove_known`), or
    whatever is there."""
    if not remove_known(path, files, dirs):
        shutil.rmtree(path, ignore_errors=True)


#: what the removing thread is handed: job directories with their work, or a future to
#: complete once everything handed before it is done
_Item = list[tuple[str, ProcessWork]] | concurrent.futures.Future[None]


class Remover:
    """Removes job directories in one background thread, in the order they are handed in.

    :meth:`remove` returns at once: directories are handed to the thread :data:`BATCH` at
    a time, or :data:`DELAY` seconds after the first of fewer (a wake-up of the thread per
    directory cost more than removing it); the thread starts on demand and ends after
    :data:`IDLE` seconds without work. :meth:`drain` waits until every directory handed
    in before it is gone. At the interpreter's exit what is still queued is removed first.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._running = False
        self._exit_hook = False
        #: directories not handed to the thread yet (touched on event loops only)
        self._pending: list[tuple[str, ProcessWork]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def remove(self, path: str, work: ProcessWork) -> None:
        """Remove the job directory ``path`` of ``work`` (see :func:`remove_job_dir`) in the
        background. Called on an event loop."""
        pending = self._pending
        pending.append((path, work))
        loop = asyncio.get_running_loop()
        if len(pending) >= BATCH or (self._timer is not None and self._timer_loop is not loop):
            self._flush()  # (another loop's timer may never fire: that loop may be closed)
        elif self._timer is None:
            self._timer = loop.call_later(DELAY, self._flush)
            self._timer_loop = loop

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._put(batch)

    async def drain(self) -> None:
        """Return once every directory handed in so far is removed."""
        self._flush()
        if not self._running:
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put(done)
        await asyncio.wrap_future(done)

    def drain_now(self) -> None:
        """:meth:`drain`, blocking (at the interpreter's exit)."""
        if self._pending:  # (a loop that closed before its timer fired)
            batch, self._pending, self._timer = self._pending, [], None
            self._put(batch)
        if not self._running:
            return
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._put(done)
        with contextlib.suppress(concurrent.futures.TimeoutError):
            done.result(timeout=60)

    def _put(self, item: _Item) -> None:
        # under the lock, so that a thread about to end for want of work sees the item, or
        # this call sees that it ended and starts another
        with self._lock:
            self._queue.put(item)
            if not self._running:
                self._running = True
                if not self._exit_hook:
                    self._exit_hook = True
                    atexit.register(self.drain_now)
                threading.Thread(target=self._run, name="pdt-job-dir-removal", daemon=True).start()

    def _run(self) -> None:
        get = self._queue.get
        while True:
            try:
                item = get(timeout=IDLE)
            except queue.Empty:
                with self._lock:
                    if self._queue.empty():
                        self._running = False
                        return
                continue
            if isinstance(item, concurrent.futures.Future):
                item.set_result(None)
                continue
            for path, work in item:
                try:
                    files, dirs = job_dir_entries(work)
                    remove_job_dir(path, files, dirs)
                except Exception:  # noqa: S112 - what cannot be removed is left, as rmtree(ignore_errors) does
                    continue
