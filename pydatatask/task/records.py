"""Job states, job records and job claims.

A **job record** is written to the task's ``done`` repository when a job ends::

    {"task": "count", "key": "moby-dick", "state": "succeeded", "success": True,
     "attempts": 1, "start_time": "2026-11-23T01:02:03.123456+00:00", "end_time": ...,
     "duration": 0.012, "host": "worker-3", "runner": "in-process", "exit_code": None,
     "error": None}

``error`` is ``{"type": ..., "message": ..., "traceback": ...}`` for a failed job. A record
made by the scheduler also names what the job read, for finding *stale* keys later (see
:mod:`pydatatask.pipeline.staleness`): ``"version"`` (the task's), ``"inputs"``
(``{link: version of the value read}``), ``"upstream"`` (``{link: end time of the upstream
success record read after}``, where another task writes the input) and ``"outputs"`` (the
outputs the job wrote its key to, when not all of them). A **claim**
is written to the task's ``live`` repository (atomically, create-if-absent) before a job
starts and removed after its record is written. Besides the owner and the lease it names
the process that holds it: ``host``, ``pid``, ``pid_start`` (the process start time), and
``boot_id`` and ``pid_namespace``, without which a pid means nothing to another process
(two containers on one host can both have a scheduler at pid 1). See
:func:`pid_is_comparable`.
"""

from __future__ import annotations

import datetime
import os
import socket
import time
import traceback
from enum import StrEnum
from typing import Any

from .._procfs import boot_id, pid_namespace, process_start_time
from ..errors import CorruptValueError
from ..repository._packed import TIMES_MADE, time_noted, times_made

__all__ = (
    "JobState",
    "make_record",
    "error_info",
    "make_claim",
    "utcnow_iso",
    "process_start_time",
    "boot_id",
    "pid_namespace",
    "pid_is_comparable",
    "HOSTNAME",
)

HOSTNAME = socket.gethostname()


class JobState(StrEnum):
    """The life of a job: pending -> running -> (retrying -> running)* -> succeeded | failed."""

    PENDING = "pending"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# the last whole second formatted, its text and whether a record packed in memory spells
# it back the same, and the last moment formatted and its text: each replaced as one tuple
# (a thread formatting at the same time never mixes one moment's text with another's)
_iso_second: list[tuple[int, str, bool]] = [(-1, "", False)]
_iso_last: list[tuple[float, str]] = [(-1.0, "")]


def utcnow_iso(ts: float | None = None) -> str:
    """An ISO-8601 UTC timestamp with microseconds (now, or of the epoch seconds ``ts``),
    e.g. ``2026-11-23T01:02:03.123456+00:00``."""
    if ts is None:
        ts = time.time()
    else:
        last = _iso_last[0]
        if ts == last[0]:  # a job's record starts when its claim did: formatted once
            return last[1]
    second, micro = divmod(round(ts * 1_000_000), 1_000_000)
    whole = _iso_second[0]
    if whole[0] != second:  # jobs ending within one second share the formatting
        head = datetime.datetime.fromtimestamp(second, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
        whole = _iso_second[0] = (second, head, time_noted(second, head))
    text = f"{whole[1]}.{micro:06d}+00:00"
    _iso_last[0] = (ts, text)
    if whole[2]:
        # noted with its number, which a record stored in memory keeps instead of the text
        # (what note_time does, without a call per text)
        if len(times_made) >= TIMES_MADE:
            times_made.clear()
        times_made[text] = second * 1e6 + micro
    return text


def error_info(exc: BaseException) -> dict[str, str]:
    """Type, message and formatted traceback of ``exc`` (and, for a value that does not
    decode, its ``repository``, ``location`` and ``reason``)."""
    info = {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins."),
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)),
    }
    if isinstance(exc, CorruptValueError):
        info.update(repository=exc.repository, location=exc.location, reason=exc.reason)
    return info


def make_record(
    *,
    task: str,
    key: str,
    success: bool,
    attempts: int,
    start: float,
    end: float,
    runner: str,
    host: str = HOSTNAME,
    exit_code: int | None = None,
    error: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a job record (see the module docstring)."""
    record: dict[str, Any] = {
        "task": task,
        "key": key,
        "state": JobState.SUCCEEDED.value if success else JobState.FAILED.value,
        "success": success,
        "attempts": attempts,
        "start_time": utcnow_iso(start),
        "end_time": utcnow_iso(end),
        "duration": round(end - start, 6),
        "host": host,
        "runner": runner,
        "exit_code": exit_code,
        "error": error,
    }
    if extra:
        record.update(extra)
    return record


# The identity of this process, computed once (and again in a forked child, whose pid and
# start time differ; the boot and the namespace a process is in never change under it).
_self: dict[str, Any] = {}


def _identity() -> dict[str, Any]:
    if not _self:
        pid = os.getpid()
        _self.update(
            pid=pid, pid_start=process_start_time(pid), boot_id=boot_id(), pid_namespace=pid_namespace()
        )
    return _self


os.register_at_fork(after_in_child=_self.clear)


def pid_is_comparable(claim: dict[str, Any]) -> bool:
    """Whether the ``pid`` of ``claim`` names a process this process can look up.

    True only when the claim records the same boot id and the same PID namespace as this
    process has (and both are known). A claim made in another container, on another host,
    before a reboot or by a version that did not record them can only be judged by its
    lease: its pid may belong to an unrelated live process here, or to none.
    """
    me = _identity()
    for field in ("boot_id", "pid_namespace"):
        if me[field] is None or claim.get(field) != me[field]:
            return False
    return True


def make_claim(owner: str, task: str, key: str, now: float, lease: float = 60.0) -> dict[str, Any]:
    """A claim for the live repository: who runs the job, where (host, process, boot and
    PID namespace), since when, and for how long it stays valid without a heartbeat
    (``lease`` seconds)."""
    me = _self or _identity()
    return {
        "owner": owner,
        "task": task,
        "key": key,
        "host": HOSTNAME,
        "pid": me["pid"],
        "pid_start": me["pid_start"],
        "boot_id": me["boot_id"],
        "pid_namespace": me["pid_namespace"],
        "start_time": utcnow_iso(now),
        "started": now,
        "heartbeat": now,
        "lease": lease,
    }
