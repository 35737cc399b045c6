"""What the page and ``/api`` show: the keys of every task by state, read either from a
running scheduler (its live state, no listing of its own) or from one listing of every
repository, as ``status`` makes it.

A :class:`Snapshot` holds the keys of each task and state unsorted; a state's keys are
sorted the first time a page of them is asked for, and a search's matches are kept for
the next pages, so paging through a million keys sorts them once per snapshot.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import CorruptValueError
from ..pipeline.metrics import LISTING_BUCKETS, Histogram
from ..pipeline.pipeline import STATUS_COLUMNS
from ..pipeline.record_index import RecordIndex, corrupt_info, warn_corrupt
from ..pipeline.scheduler import Scheduler, TaskFigures, compute_figures
from ..repository.listing import listing_scope
from ..task.records import JobState, utcnow_iso

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline
    from ..task.base import Task

__all__ = ("Monitor", "Snapshot", "TaskState", "STATES", "MAX_PAGE")

log = logging.getLogger("pydatatask.web")

#: the job states shown, in order (the columns of ``status``)
STATES: tuple[str, ...] = tuple(STATUS_COLUMNS)
#: the states read as they are from the TaskFigures of the same name (sets, or dicts by key)
_FIGURE_STATES = ("held", "stale")
#: the most keys one page holds
MAX_PAGE = 1000
#: job records read in one go; more are read after the first snapshot, a chunk at a time
_READ_AT_ONCE = 20_000
#: job records read in one go in the background
_READ_IN_BACKGROUND = 2_000
#: seconds the background reading of the records waits, for the first answer to go out
_FIRST_ANSWER = 0.05
#: a snapshot of a running scheduler is taken again only after this many times as long as
#: the last one took to make: the keys of an open page, asked for again at every change of
#: the counts, cost the run at most about 1/20 of its loop whatever the number of keys
_SNAPSHOT_SHARE = 20


@dataclass
class TaskState:
    """The keys of one task per state, and the details of some states."""

    keys: dict[str, Collection[str]]
    #: retrying key -> time of its next attempt (ISO 8601 UTC)
    next_attempt: dict[str, str] = field(default_factory=dict)
    #: corrupt key -> what is corrupt, where and why
    corrupt_details: dict[str, dict[str, str]] = field(default_factory=dict)
    #: jobs ended per second lately (None when not known)
    throughput: float | None = None
    _sorted: dict[str, list[str]] = field(default_factory=dict)
    #: the same task in the snapshot before, whose sorted keys are reused where unchanged
    previous: TaskState | None = None
    _matches: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """``{state: number of keys}``, in the order of :data:`STATES`."""
        return _ordered({state: len(keys) for state, keys in self.keys.items()})

    def sorted_keys(self, state: str) -> list[str]:
        """The keys in ``state``, sorted: computed once per snapshot, from the sorted keys
        of the snapshot before where it has them (a few keys added or removed cost a merge
        of two sorted runs, not a sort of a million keys)."""
        done = self._sorted.get(state)
        if done is None:
            keys = self.keys.get(state, ())
            before = self.previous
            old = before._sorted.get(state) if before is not None else None
            if before is None or old is None:
                done = sorted(keys)
            else:
                done = _resorted(old, before.keys.get(state, ()), keys)
            self._sorted[state] = done
        return done

    def page(self, state: str, query: str = "", offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """One page of the sorted keys in ``state`` that contain ``query`` (case-insensitive)."""
        keys = self.sorted_keys(state)
        if query:
            matches = self._matches.get((state, query))
            if matches is None:
                if len(self._matches) > 16:
                    self._matches.clear()
                folded = query.casefold()
                matches = self._matches[(state, query)] = [k for k in keys if folded in k.casefold()]
        else:
            matches = keys
        limit = max(1, min(limit, MAX_PAGE))
        offset = max(0, offset)
        return {
            "state": state,
            "query": query,
            "total": len(keys),
            "matched": len(matches),
            "offset": offset,
            "limit": limit,
            "keys": matches[offset : offset + limit],
        }

    def state_of(self, key: str) -> str | None:
        """The first state ``key`` is in (``None`` when in none)."""
        for state, keys in self.keys.items():
            if key in keys:
                return state
        return None


@dataclass
class Snapshot:
    """The state of every task at one moment."""

    tasks: dict[str, TaskState]
    #: when it was taken (ISO 8601 UTC)
    taken_at: str
    #: ``"scheduler"`` (a running scheduler's live state) or ``"listing"``
    source: str
    monotonic: float = field(default_factory=time.monotonic)
    #: job records not read yet (``serve`` reads them after the first paint)
    records_pending: int = 0

    def states(self) -> list[str]:
        """The states shown, in order (those of :data:`STATES` first)."""
        seen: dict[str, None] = dict.fromkeys(STATES)
        for task in self.tasks.values():
            seen.update(dict.fromkeys(task.keys))
        return list(seen)

    def status(self) -> dict[str, Any]:
        """Counts per task and state, as ``status --json`` gives them (without the keys)."""
        return {
            "taken_at": self.taken_at,
            "source": self.source,
            "records_pending": self.records_pending,
            "states": self.states(),
            "tasks": {
                name: {
                    "counts": t.counts(),
                    "throughput": t.throughput,
                    "eta_seconds": _eta(t),
                    "next_attempt": dict(sorted(t.next_attempt.items())[:100]),
                }
                for name, t in self.tasks.items()
            },
        }


def _eta(t: TaskState) -> float | None:
    if not t.throughput:
        return None
    left = sum(len(t.keys.get(s, ())) for s in ("ready", "running", "retrying"))
    return round(left / t.throughput, 1) if left else 0.0


class Monitor:
    """Takes :class:`Snapshot` s of ``pipeline`` for the page.

    While ``pipeline.run`` goes on in this process (``run --serve``), a snapshot comes from
    the scheduler's live state, at most once per ``interval`` or 20 times as long as the
    last one took to make (the counts of :meth:`counts` and :meth:`status` are read from the
    scheduler without a snapshot); otherwise from one listing
    of every repository (the records read once and kept), at most once per ``interval``
    or ten times as long as the last listing took. Call inside ``async with pipeline``.
    """

    def __init__(self, pipeline: Pipeline, *, interval: float = 1.0, live: bool = False) -> None:
        self.pipeline = pipeline
        self.interval = interval
        #: take snapshots from a scheduler only (``run --serve``): never list on its behalf
        self.live = live
        self._records = {name: RecordIndex(t.done) for name, t in pipeline.tasks.items()}
        self._snapshot: Snapshot | None = None
        self._version: object = None
        #: bumped by :meth:`invalidate`: a snapshot taken across a bump is not kept as fresh
        self._generation = 0
        self._lock = asyncio.Lock()
        self._listing_seconds = 0.0
        #: how long the last snapshot from the scheduler took to make
        self._snapshot_seconds = 0.0
        #: the durations of this monitor's own listings
        self.listings = Histogram(LISTING_BUCKETS)
        self._failures: dict[tuple[str, str], dict[str, Any]] = {}
        self._before = getattr(pipeline, "scheduler", None)
        self._loader: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._loaded = False

    @property
    def scheduler(self) -> Scheduler | None:
        """The scheduler of the run going on in this process, once it has listed the
        repositories (before, it knows nothing yet)."""
        s = getattr(self.pipeline, "scheduler", None)
        return s if isinstance(s, Scheduler) and s is not self._before and s.ticks else None

    @property
    def listing_seconds(self) -> float:
        """How long the last listing took (the scheduler's, or this monitor's own)."""
        s = self.scheduler
        return s.last_listing_seconds if s is not None else self._listing_seconds

    def version(self) -> object:
        """Changes whenever a new snapshot would differ (cheap; for the live updates)."""
        s = self.scheduler
        if s is not None:
            return (id(s), s.metrics.version, s.ticks)
        return self._snapshot.monotonic if self._snapshot is not None else None

    def invalidate(self) -> None:
        """Take the next snapshot anew (the repositories were changed from here)."""
        if self._snapshot is not None:
            self._snapshot.monotonic = -math.inf
        self._version = None
        self._generation += 1

    async def snapshot(self) -> Snapshot:
        """The latest snapshot, taken anew when the one kept is older than the interval.

        From the listing (``serve``), a snapshot kept is answered at once and the next one
        is taken in the background (its sorted keys made before it replaces the one kept),
        so that no request waits for a listing of a million keys but the first, and those
        after a change made from here (:meth:`invalidate`)."""
        kept = self._snapshot
        if kept is not None and kept.source == "listing" and kept.monotonic > -math.inf and not self.live:
            if self.scheduler is None:
                if time.monotonic() - kept.monotonic >= max(self.interval, 10 * self._listing_seconds):
                    self._refresh_soon()
                return kept
        async with self._lock:
            generation = self._generation
            try:
                return await self._snapshot_locked()
            finally:
                if self._generation != generation and self._snapshot is not None:
                    # changed while it was being taken: what it listed may predate the change
                    self._snapshot.monotonic = -math.inf
                    self._version = None

    async def _snapshot_locked(self) -> Snapshot:
        """:meth:`snapshot`, its lock held."""
        kept = self._snapshot
        s = self.scheduler
        now = time.monotonic()
        if s is not None:
            version = (id(s), s.metrics.version, s.ticks)
            wait = max(self.interval, _SNAPSHOT_SHARE * self._snapshot_seconds)
            if kept is None or (version != self._version and now - kept.monotonic >= wait):
                t0 = time.perf_counter()
                self._snapshot = await self._from_scheduler(s)
                self._snapshot_seconds = time.perf_counter() - t0
                self._version = version
        elif self.live and (kept is None or kept.source != "scheduler"):
            self._snapshot = _empty(self.pipeline, "starting")
        elif not self.live:
            wait = max(self.interval, 10 * self._listing_seconds)
            if kept is None or now - kept.monotonic >= wait:
                self._snapshot = await self._from_listing()
        assert self._snapshot is not None
        return self._snapshot

    async def status(self) -> dict[str, Any]:
        """What ``/api/status`` answers (see :meth:`Snapshot.status`). From a running
        scheduler it is made of :meth:`counts` and the run's metrics, with no snapshot: an
        open page asking for it every few seconds costs the run next to nothing."""
        s = self.scheduler
        if s is None:
            return (await self.snapshot()).status()
        counts = await self.counts()
        retrying: dict[str, set[str]] = {}
        for (name, key), state in list(s.states.items()):
            if state is JobState.RETRYING:
                retrying.setdefault(name, set()).add(key)
        tasks: dict[str, Any] = {}
        for name, task in s.all_tasks.items():
            c = counts[name]
            rate = (
                round(s.metrics.throughput(name), 3) if name in s.metrics.tasks or name in s.queues else None
            )
            left = c.get("ready", 0) + c.get("running", 0) + c.get("retrying", 0)
            tasks[name] = {
                "counts": c,
                "throughput": rate,
                "eta_seconds": (round(left / rate, 1) if left else 0.0) if rate else None,
                "next_attempt": await _next_attempts(task, retrying[name]) if name in retrying else {},
            }
        return {
            "taken_at": utcnow_iso(),
            "source": "scheduler",
            "records_pending": 0,
            "states": list(dict.fromkeys([*STATES, *(k for c in counts.values() for k in c)])),
            "tasks": tasks,
        }

    async def counts(self) -> dict[str, dict[str, int]]:
        """``{task: {state: count}}``, now. From a running scheduler this costs a few
        operations per task and per running job (no snapshot is taken), so the live
        updates of an open page do not slow the run down."""
        s = self.scheduler
        if s is None:
            return {name: t.counts() for name, t in (await self.snapshot()).tasks.items()}
        out: dict[str, dict[str, int]] = {}
        running: dict[str, list[int]] = {name: [0, 0] for name in s.all_tasks}
        for (name, _), state in list(s.states.items()):
            running[name][state is JobState.RETRYING] += 1
        for name in s.all_tasks:
            fig = s.figures.get(name) or TaskFigures(name)
            queue = s.queues.get(name)
            ok, failed = s.metrics.done(name)
            ours = running[name][0] + running[name][1]
            counts = {
                "ready": len(queue) if queue is not None else len(fig.ready - fig.live),
                "running": running[name][0] + max(0, len(fig.live) - len(fig.corrupt) - ours)
                if queue is None
                else running[name][0],
                "retrying": running[name][1],
                "succeeded": ok,
                "failed": failed,
                "blocked": len(fig.blocked),
                "corrupt": len(fig.corrupt),
            }
            counts.update({k: len(v) for k, v in _other_states(fig).items()})
            out[name] = _ordered(counts)
        return out

    # ---------------------------------------------------------------- the two sources
    async def _from_scheduler(self, s: Scheduler) -> Snapshot:
        tasks: dict[str, TaskState] = {}
        ours: dict[str, dict[str, JobState]] = {name: {} for name in s.all_tasks}
        for (name, key), job_state in list(s.states.items()):
            ours[name][key] = job_state
        for name, task in s.all_tasks.items():
            fig = s.figures.get(name) or TaskFigures(name)
            index = s.records[name]
            await index.load()  # the records the scheduler has not needed to read
            mine = ours[name]
            retrying = {k for k, st in mine.items() if st is JobState.RETRYING}
            running = set(mine) - retrying
            recorded = index.success.keys() | index.corrupt.keys()
            # claims of other schedulers, as last listed (those ended since have a record)
            running |= fig.live - recorded - fig.corrupt.keys() - set(mine)
            queue = s.queues.get(name)
            ready = set(queue) if queue is not None else fig.ready - fig.live
            keys: dict[str, Collection[str]] = {
                "ready": ready,
                "running": running,
                "retrying": retrying,
                "succeeded": index.succeeded(),
                "failed": index.failed(),
                "blocked": fig.blocked,
                "corrupt": fig.corrupt.keys(),
            }
            keys.update(_other_states(fig))
            kept = self._kept(name)
            state = TaskState(keys, corrupt_details=dict(fig.corrupt), previous=kept)
            if retrying:
                state.next_attempt = await _next_attempts(task, retrying)
            if name in s.metrics.tasks or name in s.queues:
                state.throughput = round(s.metrics.throughput(name), 3)
            tasks[name] = state
        return Snapshot(tasks, utcnow_iso(), "scheduler")

    async def _from_listing(self) -> Snapshot:
        t0 = time.perf_counter()
        tasks_ = self.pipeline.tasks
        with listing_scope():
            # the versions of the inputs only serve to find stale keys, which needs every
            # record read: a first look lists the keys alone (a million versions cost more
            # than the keys themselves)
            figures = await compute_figures(
                tasks_, self.pipeline, self._records, full=self._loaded, list_versions=self._loaded
            )
            pending = sum(len(i.listed) - len(i.success) - len(i.corrupt) for i in self._records.values())
            if not self._loaded and self._loader is None:
                if pending <= _READ_AT_ONCE:  # few: read them now (the listing is reused)
                    figures = await compute_figures(tasks_, self.pipeline, self._records, full=True)
                    self._loaded, pending = True, 0
                else:  # paint first; read the records in the background, a chunk at a time
                    self._loader = asyncio.create_task(self._load_records())
        tasks: dict[str, TaskState] = {}
        for name, fig in figures.items():
            task = self.pipeline.tasks[name]
            claims = await _claims(task, fig)
            retrying = {k for k, c in claims.items() if isinstance(c, dict) and c.get("state") == "retrying"}
            keys: dict[str, Collection[str]] = {
                "ready": fig.ready - fig.live if fig.live else fig.ready,  # no copy of a million
                "running": fig.live - retrying - fig.corrupt.keys(),
                "retrying": retrying,
                "succeeded": fig.succeeded,
                "failed": fig.failed,
                "blocked": fig.blocked,
                "corrupt": fig.corrupt.keys(),
            }
            keys.update(_other_states(fig))
            kept = self._kept(name)
            state = TaskState(keys, corrupt_details=dict(fig.corrupt), previous=kept)
            state.next_attempt = {k: _iso(claims[k].get("retry_at")) for k in retrying}
            if kept is not None and self._snapshot is not None:
                ended = len(fig.succeeded) + len(fig.failed)
                before = len(kept.keys["succeeded"]) + len(kept.keys["failed"])
                span = time.monotonic() - self._snapshot.monotonic
                state.throughput = round(max(0, ended - before) / span, 3) if span > 0 else None
            tasks[name] = state
        self._listing_seconds = time.perf_counter() - t0
        self.listings.observe(self._listing_seconds)
        return Snapshot(tasks, utcnow_iso(), "listing", records_pending=pending)

    def _refresh_soon(self) -> None:
        """Take the next snapshot from the listing in the background (once at a time)."""
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh())

    async def _refresh(self) -> None:
        async with self._lock:
            generation = self._generation
            kept = self._snapshot
            try:
                snap = await self._from_listing()
            except Exception as exc:  # a backend down: the page keeps the snapshot it has
                log.warning("the page's listing of the repositories failed: %s", exc)
                if kept is not None:
                    kept.monotonic = time.monotonic()  # tried again after the interval
                return
            if kept is not None:  # the states paged before are sorted before they are shown
                for name, task in snap.tasks.items():
                    before = kept.tasks.get(name)
                    for state in before._sorted if before is not None else ():
                        task.sorted_keys(state)
                        await asyncio.sleep(0)
            if self._generation != generation:
                snap.monotonic = -math.inf  # a change made from here meanwhile: take it anew
            if self._snapshot is kept:  # not replaced meanwhile (the records read, ...)
                self._snapshot = snap

    def _kept(self, name: str) -> TaskState | None:
        """The state of task ``name`` in the snapshot kept, whose sorted keys the next one
        reuses (one snapshot back, never a chain of them)."""
        kept = self._snapshot.tasks.get(name) if self._snapshot is not None else None
        if kept is not None:
            kept.previous = None
        return kept

    async def _load_records(self) -> None:
        # started by the first snapshot: that snapshot's answer goes out first
        await asyncio.sleep(_FIRST_ANSWER)
        for index in self._records.values():
            listed = list(index.listed)
            for start in range(0, len(listed), _READ_IN_BACKGROUND):
                await index.load(listed[start : start + _READ_IN_BACKGROUND])
                await asyncio.sleep(0.005)  # requests are served in between
        self._loaded = True
        # the complete snapshot, its keys sorted before it is shown (so that the first page
        # of a million keys does not wait for their sort)
        async with self._lock:
            snap = await self._from_listing()
        for task in snap.tasks.values():
            for state in task.keys:
                task.sorted_keys(state)
                await asyncio.sleep(0)
        self._snapshot = snap

    async def aclose(self) -> None:
        """Stop reading records and taking snapshots in the background."""
        for task in (self._loader, self._refresher):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.wait([task])

    # ---------------------------------------------------------------- failures
    async def failures(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest failed jobs across tasks, newest first (their records read once)."""
        s = self.scheduler
        if s is not None:  # now, not as of the last snapshot
            for index in s.records.values():
                await index.load()  # the records the scheduler has not needed to read
            failed_of = {name: index.failed() for name, index in s.records.items()}
        else:
            snap = await self.snapshot()
            failed_of = {name: set(t.keys.get("failed", ())) for name, t in snap.tasks.items()}
        wanted: dict[str, list[str]] = {}
        for name, failed in failed_of.items():
            missing = [k for k in failed if (name, k) not in self._failures]
            if missing:
                wanted[name] = missing
        for name, keys in wanted.items():
            done = self.pipeline.tasks[name].done
            for start in range(0, len(keys), 1000):
                values = await done.get_many(keys[start : start + 1000], on_corrupt=lambda err: None)
                for key, record in values.items():
                    if isinstance(record, dict):
                        self._failures[(name, key)] = _failure(name, key, record)
        current = {(name, k) for name, failed in failed_of.items() for k in failed}
        for ident in [i for i in self._failures if i not in current]:
            del self._failures[ident]  # removed (rm) since: it runs again
        rows = sorted(self._failures.values(), key=lambda f: (f["end_time"] or "", f["key"]), reverse=True)
        return rows[:limit]


def _failure(task: str, key: str, record: dict[str, Any]) -> dict[str, Any]:
    error = record.get("error")
    error = error if isinstance(error, dict) else {}
    return {
        "task": task,
        "key": key,
        "end_time": str(record.get("end_time") or ""),
        "attempts": record.get("attempts"),
        "exit_code": record.get("exit_code"),
        "error_type": error.get("type"),
        "message": str(error.get("message") or "")[:500],
    }


def _resorted(old: list[str], old_keys: Collection[str], keys: Collection[str]) -> list[str]:
    """``sorted(keys)``, given ``old``, the sorted ``old_keys``."""
    if len(keys) == len(old_keys) and keys == old_keys:
        return old  # comparing sets is cheaper than sorting them
    new, gone = _as_set(keys), _as_set(old_keys)
    added, removed = new - gone, gone - new
    if len(added) + len(removed) > len(new) // 4:
        return sorted(new)
    if not removed:
        kept = list(old)
    elif len(removed) <= 64:  # a few: found by bisection, each removal one move in C
        kept = list(old)
        for key in removed:
            del kept[bisect.bisect_left(kept, key)]
    else:
        kept = [k for k in old if k not in removed]
    if added:
        kept += sorted(added)
        kept.sort()  # two sorted runs: Timsort merges them in one pass
    return kept


def _as_set(keys: Collection[str]) -> set[str] | frozenset[str]:
    return keys if isinstance(keys, (set, frozenset)) else set(keys)


def _ordered(counts: dict[str, int]) -> dict[str, int]:
    """``counts`` in the order of :data:`STATES` (the columns of ``status``)."""
    return {s: counts[s] for s in STATES if s in counts} | counts


def _other_states(fig: TaskFigures) -> dict[str, Collection[str]]:
    """The states read from the TaskFigures field of the same name (``held``, ``stale``)."""
    out: dict[str, Collection[str]] = {}
    for name in _FIGURE_STATES:
        value = getattr(fig, name)
        out[name] = value.keys() if isinstance(value, dict) else value
    return out


def _empty(pipeline: Pipeline, source: str) -> Snapshot:
    tasks = {name: TaskState({state: set() for state in STATES}) for name in pipeline.tasks}
    return Snapshot(tasks, utcnow_iso(), source)


def _iso(ts: Any) -> str:
    return utcnow_iso(float(ts)) if isinstance(ts, (int, float)) else "?"


async def _claims(task: Task, fig: TaskFigures) -> dict[str, Any]:
    """The claims of ``fig.live``; corrupt ones go to ``fig.corrupt`` (logged once)."""
    if not fig.live:
        return {}

    def bad(err: CorruptValueError) -> None:
        warn_corrupt(err, f"task {task.name} does not run {err.key!r} until the claim is fixed or removed")
        fig.corrupt[str(err.key)] = corrupt_info("claim", err)

    return await task.live.get_many(fig.live, on_corrupt=bad)


async def _next_attempts(task: Task, keys: set[str]) -> dict[str, str]:
    claims = await task.live.get_many(sorted(keys)[:100], on_corrupt=lambda err: None)
    return {k: _iso(c.get("retry_at")) for k, c in claims.items() if isinstance(c, dict)}
