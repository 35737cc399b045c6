"""The log of a job while it runs, for ``GET /api/log/live`` (server-sent events).

Only a job under way in this process has one (``run --serve``): its own lines
(:meth:`~pydatatask.task.base.JobContext.log`, kept in memory until the job ends) and, for
processes and pods, the end of what the work has printed so far
(:meth:`~pydatatask.executor.base.JobHandle.output_so_far`). The stream starts with a tail
of the lines, sends each new line as it comes and ends when the job ends, when the page
shows the stored log instead.

Each event is a ``data:`` line of JSON::

    {"attempt": 2, "reset": true, "lines": ["..."], "skipped": 0, "output": "...", "end": false}

The job of a key run in a batch (a task's ``batch``) has the log of the whole batch: the
same lines and output on the page of every key in it, and each ``reset`` event says so
with ``"batch": {"size": N, "keys": [the first keys of the batch]}``. A key that ends
before the others of its batch (recorded after an attempt, the others retried) ends its
stream then; the retried keys go on with the smaller batch of the next attempt.

``reset``: the lines are those of a new attempt (the first event is one too); ``skipped``:
lines left out before them (the tail); ``output``: the work's output so far, replacing the
one sent before (absent when unchanged, ``""`` when there is none any more); ``end``: the
job has ended (``state`` says how, ``why`` when there is no live log at all).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ..errors import PydatataskError

if TYPE_CHECKING:
    from ..task.base import JobContext, Task

__all__ = ("live_log_events", "as_sse", "tail", "TAIL_LINES", "TAIL_BYTES", "BATCH_KEYS", "NO_LIVE_LOG")

log = logging.getLogger("pydatatask.web")

#: the most lines the first event of a stream holds
TAIL_LINES = 1000
#: ... and the most bytes (the output so far is bounded by the executor)
TAIL_BYTES = 64 * 1024
#: the most keys of a batch named in its events
BATCH_KEYS = 20
#: why a job has no live log here
NO_LIVE_LOG = "its live log is only on the page of the scheduler running it (run --serve)"
#: seconds between two looks at the job's lines, and at the work's output
_LINES_EVERY = 0.2
_OUTPUT_EVERY = 1.0


def tail(lines: list[str], max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> list[str]:
    """The last lines of ``lines``, at most ``max_lines`` and about ``max_bytes``."""
    out: list[str] = []
    size = 0
    for line in reversed(lines[-max_lines:]):
        size += len(line) + 1
        if out and size > max_bytes:
            break
        out.append(line[-max_bytes:])
    out.reverse()
    return out


async def live_log_events(task: Task, key: str, closing: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
    """The events of the live log of the job of ``key``, until it ends (or ``closing``)."""
    job = task.running_jobs.get(key)
    if job is None:
        yield {"end": True, "why": NO_LIVE_LOG}
        return
    current: JobContext | None = None
    sent = 0
    output: str | None = None
    next_output = 0.0
    loop = asyncio.get_running_loop()
    while not closing.is_set():
        job = task.running_jobs.get(key)
        if job is None:
            record = await _record(task, key)
            state = None if record is None else ("succeeded" if record.get("success") else "failed")
            yield {"end": True, "state": state}
            return
        event: dict[str, Any] = {}
        if job is not current:
            count = job.log_count
            lines = tail(job.log_lines(max(0, count - TAIL_LINES)))
            event = {"attempt": job.attempt, "reset": True, "lines": lines, "skipped": count - len(lines)}
            if job.batched:  # the log of every key of the batch: the page says so
                event["batch"] = {"size": len(job.keys), "keys": job.keys[:BATCH_KEYS]}
            current, sent = job, count
            next_output = 0.0
        else:
            new = job.log_lines(sent)
            if new:
                event["lines"] = new
                sent += len(new)
        if loop.time() >= next_output:
            next_output = loop.time() + _OUTPUT_EVERY
            now = await _output(job)
            if now != output:
                event["output"] = output = now
        if event:
            event.setdefault("attempt", job.attempt)
            yield event
        try:
            async with asyncio.timeout(_LINES_EVERY):
                await closing.wait()
        except TimeoutError:
            pass


async def _output(job: JobContext) -> str:
    handle = job.handle
    if handle is None:
        return ""
    try:
        data = await handle.output_so_far()
    except Exception as exc:  # a pod not started yet, a host gone: no output to show now
        log.debug("no output so far of %s: %s", handle.describe(), exc)
        return ""
    return data[-TAIL_BYTES:].decode("utf-8", "replace")


async def _record(task: Task, key: str) -> dict[str, Any] | None:
    try:
        record = await task.done.get(key)
    except PydatataskError:  # missing, corrupt, unreachable: the page reads the job anew anyway
        return None
    return record if isinstance(record, dict) else None


def as_sse(event: dict[str, Any]) -> bytes:
    """One server-sent event of ``event``."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
