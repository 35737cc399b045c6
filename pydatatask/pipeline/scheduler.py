"""The scheduler: list, compute ready sets, launch within limits, reap; until done or forever.

One *tick* takes one listing of every repository the selected tasks depend on (shared
through :func:`~pydatatask.repository.listing.listing_scope`, even across views and
tasks): listed in the tick when it is due (first tick, refresh interval passed, changed
in a way not learnt exactly), otherwise known from an earlier listing and this
scheduler's own writes since (see :mod:`~pydatatask.pipeline.known`). It then computes
for each task::

    ready = ⋂ required-for-start − ⋃ inhibits-start − blocked-by-upstream − running

where *blocked-by-upstream* holds the keys an upstream task (one writing a repository
this task reads) could work on but has no success record for. Jobs are then launched
from the ready queues as slots free up; the next tick comes when the queues run dry or
when one is due, never once per job. When what is known leaves nothing to do, every
repository is listed before the run ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._taskgroups import first_error
from ..errors import CorruptValueError
from ..executor.base import Slot
from ..repository.base import Repository
from ..repository.clock import ClockRepository
from ..repository.journal import visible_keys
from ..repository.listing import cached_keys, cached_versions, listing_scope
from ..repository.view import RepositoryView, stored_repositories
from ..task.base import Task
from ..task.hooks import Event, Hooks
from ..task.lifecycle import Adoption, DirectLane, direct_lane, execute_batch, execute_direct
from ..task.lifecycle import execute as execute_job
from ..task.records import HOSTNAME, JobState
from ..task.recovery import adopt_orphans, recover
from .groups import (
    fan_out_ancestors,
    fan_out_blocked,
    fan_out_separators,
    group_keys,
    held_groups,
    waiting_upstream,
)
from .known import KnownListings
from .metrics import RunMetrics
from .record_index import RecordFacts, RecordIndex, corrupt_info, warn_corrupt
from .staleness import (
    UPSTREAM_STALE,
    InputSource,
    StaleReason,
    orphan_reasons,
    record_fields,
    redo,
    remove_orphan,
    stale_reasons,
)

if TYPE_CHECKING:
    from ..task.claims import Claim
    from .pipeline import Pipeline

__all__ = ("Scheduler", "RunSummary", "TaskFigures", "until_next_window")

log = logging.getLogger("pydatatask.scheduler")
_job_log = logging.getLogger("pydatatask.jobs")


@dataclass
class TaskFigures:
    """Per-task figures of one tick (for status output and progress)."""

    name: str
    ready: set[str] = field(default_factory=set)
    running: dict[str, JobState] = field(default_factory=dict)
    succeeded: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    blocked: set[str] = field(default_factory=set)
    universe: set[str] = field(default_factory=set)
    live: set[str] = field(default_factory=set)
    #: keys with a job record, whatever its outcome
    recorded: set[str] = field(default_factory=set)
    #: keys whose job record, claim or input value does not decode:
    #: ``{key: corrupt_info(...)}`` (see :func:`~pydatatask.pipeline.record_index.corrupt_info`)
    corrupt: dict[str, dict[str, str]] = field(default_factory=dict)
    #: the groups of a fan-in task held back, and by what, as
    #: ``{group: (upstream task, member key)}`` (the task is ``""`` when the member is held
    #: by the gating of its own key)
    held: dict[str, tuple[str, str]] = field(default_factory=dict)
    #: recorded keys whose inputs, version or outputs changed, with the reasons (computed
    #: for status, and for the tasks a run redoes stale keys of; see
    #: :mod:`~pydatatask.pipeline.staleness`)
    stale: dict[str, list[StaleReason]] = field(default_factory=dict)
    #: the stale keys this tick redoes (part of ``ready``)
    redo: set[str] = field(default_factory=set)
    #: this tick's listing of each input link, ``{link: {key: version}}``
    versions: dict[str, dict[str, str | None]] = field(default_factory=dict)


@dataclass
class RunSummary:
    """What a run did."""

    succeeded: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    timed_out: bool = False
    elapsed: float = 0.0
    per_task: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No job failed, no scheduler error, not interrupted."""
        return not (self.failed or self.errors or self.interrupted or self.timed_out)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "ok": self.ok,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "errors": list(self.errors),
            "interrupted": self.interrupted,
            "timed_out": self.timed_out,
            "elapsed": round(self.elapsed, 3),
            "per_task": self.per_task,
        }


class Scheduler:
    """Runs the jobs of a pipeline. Made by :meth:`~pydatatask.pipeline.pipeline.Pipeline.run`; not reusable."""

    def __init__(
        self,
        pipeline: Pipeline,
        *,
        tasks: list[str] | None = None,
        forever: bool = False,
        max_jobs: int | None = None,
        timeout: float | None = None,
        grace: float = 10.0,
        on_progress: Callable[[Scheduler], None] | None = None,
        rerun_stale: bool = False,
        refresh: float | None = None,
    ) -> None:
        self.pipeline = pipeline
        self.all_tasks = pipeline.tasks
        names = tasks or list(self.all_tasks)
        self.selected = [self.all_tasks[n] for n in names]
        self.forever = forever
        self.max_jobs = max_jobs if max_jobs is not None else pipeline.max_jobs
        self.poll_interval = pipeline.poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.grace = grace
        self.on_progress = on_progress
        self.hooks: Hooks = pipeline.hooks
        self.owner = f"{HOSTNAME}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.records = record_indexes(self.all_tasks)
        #: the tasks whose stale keys this run redoes (``rerun_stale``, or ``on_change="rerun"``)
        self.redo_tasks = {t.name for t in self.selected if rerun_stale or t.on_change == "rerun"}
        for name, index in self.records.items():  # no tick looks for the stale keys of the others
            index.noted_facts = name in self.redo_tasks
        # stale keys queued for a redo, with the record judged stale
        self._redo: dict[str, dict[str, RecordFacts]] = {t.name: {} for t in self.selected}
        self._sources: dict[str, list[InputSource]] = {}
        # per task, the versions its record fields were made from, and the function
        self._fields_of: dict[str, tuple[object, Callable[[str], dict[str, Any]]]] = {}
        # stale keys queued for a redo that are orphans: removed, not run
        self._orphans: dict[str, set[str]] = {t.name: set() for t in self.selected}
        self.running: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: per task, the records this run removed to redo a stale key or to drop an orphan,
        #: as [succeeded, failed] counts (the progress display subtracts them from the
        #: counts of the first tick, to which this run's outcomes are added)
        self.replaced: dict[str, list[int]] = {}
        self.states: dict[tuple[str, str], JobState] = {}
        self.queues: dict[str, list[str]] = {t.name: [] for t in self.selected}
        self._workers: dict[str, int] = {t.name: 0 for t in self.selected}
        self.figures: dict[str, TaskFigures] = {}
        self.summary = RunSummary(per_task={t.name: {"succeeded": 0, "failed": 0} for t in self.selected})
        self.errored: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        # foreign claims found live: key -> when to judge it again (when its lease runs out)
        self._checked_claims: dict[str, dict[str, float]] = {t.name: {} for t in self.selected}
        #: the claims found corrupt, as ``{task: {key: corrupt_info(...)}}``
        self.corrupt_claims: dict[str, dict[str, dict[str, str]]] = {t.name: {} for t in self.selected}
        self._last_claim_check = 0.0
        #: work of interrupted jobs taken over, waiting to be launched (``{task: {key: ...}}``)
        self.adoptions: dict[str, dict[str, Adoption]] = {t.name: {} for t in self.selected}
        self.ticks = 0
        self.last_listing_seconds = 0.0
        self._finished = 0  # jobs ended so far (to detect endings during a listing)
        #: counters for ``/metrics``, the live page and the per-job log events
        self.metrics = RunMetrics()
        #: no new job starts while set (see :meth:`pause`)
        self.paused = False
        self._relist = False
        #: the listings known between two listings of each repository (see :mod:`~pydatatask.pipeline.known`)
        self.known = KnownListings(
            self.all_tasks.values(), refresh if refresh is not None else pipeline.refresh
        )
        # jobs ended when the last listing of every repository started
        self._finished_at_listing = -1
        # keys of running batches beyond one per batch (max_jobs counts execution units)
        self._batched_extra = 0
        # when a batched task's queue was first held back to let a batch fill (batch_wait)
        self._batch_held: dict[str, float] = {}

    # ---------------------------------------------------------------- control
    def request_stop(self) -> None:
        """Stop launching; running jobs get ``grace`` seconds, then are cancelled."""
        if not self._stop.is_set():
            log.warning(
                "stopping: no new jobs; waiting up to %gs for %d running job(s)",
                self.grace,
                len(self.running),
            )
        self.summary.interrupted = True
        self._stop.set()
        self._wake.set()

    def pause(self, on: bool = True) -> None:
        """Stop launching jobs (running ones go on), or with ``on=False`` launch again."""
        self.paused = on
        self._wake.set()

    def wake(self) -> None:
        """List the repositories again soon (something outside the run changed them)."""
        self.known.relist()
        self._relist = True
        self._wake.set()

    # ---------------------------------------------------------------- the tick
    async def refresh(self, relist: bool = False) -> None:
        """Recompute all ready queues, from one listing of each repository that is due
        for one (every repository at the first tick, or with ``relist``) and the known
        listings of the others (see :mod:`~pydatatask.pipeline.known`)."""
        t0 = time.perf_counter()
        if self.ticks == 0:
            await self._adopt_orphans()
        relist = relist or self.ticks == 0
        if relist:
            self._finished_at_listing = self._finished
        with listing_scope() as cache:
            self.known.fill(cache, full=relist)
            figures = await compute_figures(
                self.all_tasks,
                self.pipeline,
                self.records,
                self.running,
                full=self.ticks == 0 and self.on_progress is not None,  # exact counts to show
                redo_for=self.redo_tasks,
            )
            self._hold_learned(figures, self.known.take(cache))
        self.figures = figures
        now = time.monotonic()
        if now - self._last_claim_check >= self.pipeline.claim_check_interval or self.ticks == 0:
            self._last_claim_check = now
            if await self._check_claims():
                self._finished_at_listing = self._finished
                with listing_scope() as cache:
                    self.known.fill(cache, full=True)  # the recovery removed what it found
                    self.figures = figures = await compute_figures(
                        self.all_tasks, self.pipeline, self.records, self.running, redo_for=self.redo_tasks
                    )
                    self._hold_learned(figures, self.known.take(cache))
        for name, claims in self.corrupt_claims.items():
            fig = figures[name]
            for key in [k for k in claims if k not in fig.live]:
                del claims[key]  # removed (or fixed and released) meanwhile
            fig.corrupt.update(claims)
        for task in self.selected:
            fig = figures[task.name]
            ready = fig.ready - {k for (t, k) in self.errored if t == task.name}
            self.queues[task.name] = _requeue(self.queues[task.name], ready)  # pop() from the end: ascending
            if task.name in self.redo_tasks:
                self._note_redo(task.name, fig)
            self._queue_adoptions(task)
        self.ticks += 1
        self.last_listing_seconds = time.perf_counter() - t0
        self.metrics.on_listing(self.last_listing_seconds, self.figures)

    def _hold_learned(self, figures: dict[str, TaskFigures], learned: dict[int, set[str]]) -> None:
        """Hold back from this tick the keys that jobs ending during it wrote (see
        :meth:`~pydatatask.pipeline.known.KnownListings.take`); the next tick has them.
        A key whose own job ended meanwhile (its record learnt) is not ready at all."""
        self._hold_changed_groups(figures, self.known.changed_during)
        if not learned:
            return
        for name, task in self.all_tasks.items():
            fig = figures.get(name)
            if fig is None or not fig.ready:
                continue
            for link in task.inhibiting_links:
                ended = fig.ready & visible_keys(link.repository, learned)
                fig.ready -= ended
                fig.redo -= ended
            for link in task.required_links:
                visible = visible_keys(link.repository, learned)
                if not visible:
                    continue
                if task.group_by is not None:
                    members = task._tick_members
                    held = {g for g in fig.ready if visible.intersection(members.get(g, ()))}
                else:
                    held = fig.ready & visible
                if held:
                    fig.ready -= held
                    fig.redo -= held
                    fig.blocked |= held

    def _hold_changed_groups(self, figures: dict[str, TaskFigures], changed: set[int]) -> None:
        """Hold back the ready groups of fan-in tasks whose inputs changed during the tick in
        ways not learnt exactly (an orphan's record and outputs removed, a failed job's
        cleanup): the tick's listings of the records and of the members may have been made
        on either side of the change, so the members it found, or their being done
        upstream, may be wrong. The next tick lists those repositories again."""
        if not changed:
            return
        for name, task in self.all_tasks.items():
            fig = figures.get(name)
            if task.group_by is None or fig is None or not fig.ready:
                continue
            repos = [link.repository for link in task.required_links]
            if any(id(s) in changed for r in repos for s in stored_repositories(r)):
                fig.blocked |= fig.ready
                fig.redo = set()
                fig.ready = set()

    def _note_redo(self, name: str, fig: TaskFigures) -> None:
        """Remember the records judged stale of the keys queued for a redo (a key already
        running keeps the judgement it was launched with)."""
        index = self.records[name]
        kept = {k: f for k, f in self._redo[name].items() if (name, k) in self.running}
        orphans = {k for k in self._orphans[name] if k in kept}
        for key in fig.redo:
            facts = index.facts(key)
            if facts is not None and (name, key) not in self.running:
                kept[key] = facts
                if any(r.kind == "orphan" for r in fig.stale.get(key, ())):
                    orphans.add(key)
        self._redo[name] = kept
        self._orphans[name] = orphans

    async def _remove_orphan(self, task: Task, key: str, judged: RecordFacts) -> bool:
        """Remove the record and outputs of an orphaned key (see
        :func:`~pydatatask.pipeline.staleness.orphan_reasons`); False when another
        scheduler holds it or has changed its record."""
        self._orphans[task.name].discard(key)
        index = self.records[task.name]
        if await remove_orphan(task, key, judged=judged, index=index, owner=self.owner):
            log.info(
                "task %s: removed the record and outputs of %r, a child no longer written", task.name, key
            )
            return True
        return False

    def _replaced(self, task: Task, judged: RecordFacts) -> None:
        counts = self.replaced.setdefault(task.name, [0, 0])
        counts[0 if judged.success else 1] += 1

    def _record_fields(self, task: Task) -> Callable[[str], dict[str, Any]]:
        # made once per listing of the inputs' versions, not once per job
        fig = self.figures.get(task.name)
        versions = fig.versions if fig is not None else None
        made = self._fields_of.get(task.name)
        if made is not None and made[0] is versions:
            return made[1]
        fields_of = self._make_record_fields(task)
        self._fields_of[task.name] = (versions, fields_of)
        return fields_of

    def _make_record_fields(self, task: Task) -> Callable[[str], dict[str, Any]]:
        sources = self._sources.get(task.name)
        if sources is None:
            sources = self._sources[task.name] = input_sources(self.pipeline, self.all_tasks, task.name)
        fig = self.figures.get(task.name)
        versions = fig.versions if fig is not None else {}
        if task.group_by is not None:
            # the members the job gets (kept while it runs); none known (adopted work): the
            # record gets no digest, and only its members are compared later
            return lambda key: record_fields(
                key, sources, versions, self.records, task._tick_members.get(key)
            )
        return lambda key: record_fields(key, sources, versions, self.records)

    def _queue_adoptions(self, task: Task) -> None:
        """Adopted work goes first in the task's queue (its work runs already); it is
        launched like a job, within the task's concurrency and the executor's capacity."""
        adopted = self.adoptions[task.name]
        if adopted:
            queue = self.queues[task.name]
            queue[:] = [k for k in queue if k not in adopted]
            queue.extend(sorted((k for k in adopted if (task.name, k) not in self.running), reverse=True))

    async def _adopt_orphans(self) -> None:
        """Before the first listing: work an executor still runs for a task that no claim
        names (its scheduler died with its claims in memory) is adopted or cleaned up."""
        for task in self.selected:
            for adoption in await adopt_orphans(task, self.owner):
                self.adoptions[task.name][adoption.key] = adoption

    async def _check_claims(self) -> bool:
        """Clean up after jobs whose claims are stale, taking over what can be adopted;
        return whether any was found."""
        any_recovered = False
        for task in self.selected:
            fig = self.figures[task.name]
            adopted = self.adoptions[task.name]
            foreign = [k for k in fig.live if (task.name, k) not in self.running and k not in adopted]
            checked = self._checked_claims[task.name]
            for key in [k for k in checked if k not in fig.live]:
                del checked[key]  # released: a new claim on it is judged afresh
            now = time.time()
            todo = [k for k in foreign if checked.get(k, 0.0) <= now]
            if not todo:
                continue

            def corrupt(
                err: CorruptValueError, name: str = task.name, checked: dict[str, float] = checked
            ) -> None:
                # nobody can tell whether its job runs: never taken over, never overwritten
                warn_corrupt(err, f"task {name} does not run {err.key!r} until the claim is fixed or removed")
                self.corrupt_claims[name][str(err.key)] = corrupt_info("claim", err)
                checked[str(err.key)] = math.inf  # judged again only once it is removed

            claims = await task.live.get_many(todo, on_corrupt=corrupt)
            recovered = False
            for key, claim in claims.items():
                if task.claims.is_stale(claim, owner=self.owner):
                    taken = await recover(task, key, claim)
                    if taken is not None:
                        adopted[key] = taken
                    self.metrics.on_takeover(task.name)
                    recovered = True
                else:
                    expires = task.claims.expires(claim)
                    checked[key] = math.inf if expires is None else expires  # None: no heartbeat
            any_recovered |= recovered
        return any_recovered

    def _free_slots(self) -> int:
        if self.max_jobs is None:
            return 1 << 30
        return self.max_jobs - len(self.running) + self._batched_extra

    def launch(self, tg: asyncio.TaskGroup) -> int:
        """Start workers for the ready queues within the limits; return how many jobs started.

        A worker runs one job after another from its task's queue while the limits allow,
        so a busy task costs no scheduler round trip per job.
        """
        if self._stop.is_set() or self.paused:
            return 0
        started = 0
        for task in self.pipeline.launch_order(self.selected):
            queue = self.queues[task.name]
            while queue and self._free_slots() > 0 and self._workers[task.name] < task.concurrency:
                if task.batch > 1 and self._batch_filling(task):
                    break
                slot = task.acquire_slot()
                if slot is None:
                    break
                if task.batch > 1:
                    started += self._start_batch(tg, task, slot)
                    continue
                key = queue.pop()
                if (task.name, key) in self.running:
                    task.release_slot(slot)
                    continue
                self._workers[task.name] += 1
                self._start(tg, task, key, slot)
                started += 1
        return started

    def _start(self, tg: asyncio.TaskGroup, task: Task, key: str, slot: object) -> None:
        ident = (task.name, key)
        self.states[ident] = JobState.PENDING
        self.running[ident] = tg.create_task(self._worker(task, key, slot), name=f"{task.name}:{key}")

    # ---------------------------------------------------------------- batches
    def _batch_filling(self, task: Task) -> bool:
        """Whether a batched task's queue, shorter than a batch, is held back to fill (for
        up to ``batch_wait`` seconds from when it was first held)."""
        if task.batch_wait is None or len(self.queues[task.name]) >= task.batch:
            self._batch_held.pop(task.name, None)
            return False
        now = time.monotonic()
        since = self._batch_held.setdefault(task.name, now)
        if now - since < task.batch_wait:
            return True
        self._batch_held.pop(task.name, None)
        return False

    def _pop_batch(self, task: Task) -> list[str]:
        """Up to ``task.batch`` keys from the task's queue, not running. Adopted work and
        keys to redo run on their own (a list of one)."""
        queue = self.queues[task.name]
        single = self.adoptions.get(task.name, {}).keys() | self._redo.get(task.name, {}).keys()
        keys: list[str] = []
        skipped: list[str] = []
        while queue and len(keys) < task.batch:
            key = queue.pop()
            if (task.name, key) in self.running:
                continue
            if key in single:
                if not keys:
                    return [key]
                skipped.append(key)
                continue
            keys.append(key)
        queue.extend(reversed(skipped))
        return keys

    def _start_batch(self, tg: asyncio.TaskGroup, task: Task, slot: object) -> int:
        """Start a worker of a batched task on the next batch; return how many keys it took."""
        keys = self._pop_batch(task)
        if not keys:
            task.release_slot(slot)
            return 0
        self._workers[task.name] += 1
        self._mark_batch(task, keys, None)
        unit = tg.create_task(
            self._batch_worker(task, keys, slot), name=f"{task.name}:{keys[0]}+{len(keys) - 1}"
        )
        for key in keys:
            self.running[(task.name, key)] = unit
        return len(keys)

    def _mark_batch(self, task: Task, keys: list[str], unit: asyncio.Task[None] | None) -> None:
        for key in keys:
            ident = (task.name, key)
            self.states[ident] = JobState.PENDING
            if unit is not None:
                self.running[ident] = unit
        self._batched_extra += len(keys) - 1

    async def _batch_worker(self, task: Task, keys: list[str], slot: object) -> None:
        try:
            while True:
                await self._run_batch(task, keys, slot)
                if self._batch_filling(task):
                    break
                nxt = self._next_for(task, batch=True)
                if nxt is None:
                    break
                slot = nxt[1]
                keys = self._pop_batch(task)
                if not keys:
                    task.release_slot(slot)
                    break
                self._mark_batch(task, keys, asyncio.current_task())
        finally:
            self._workers[task.name] -= 1
            self._wake.set()

    async def _run_batch(self, task: Task, keys: list[str], slot: object) -> None:
        """Run one batch (or, for a key of adopted work or to redo, its job alone) and
        note each key's record."""
        if len(keys) == 1 and (
            keys[0] in self.adoptions.get(task.name, {}) or keys[0] in self._redo.get(task.name, {})
        ):
            await self._job(task, keys[0], slot)
            return
        try:
            fields_of = self._record_fields(task)
            records = await execute_batch(
                task,
                keys,
                owner=self.owner,
                hooks=self.hooks,
                on_state=self._on_state,
                slot=slot,
                record_fields={k: fields_of(k) for k in keys},
                on_records=self._records_stored,
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error(
                "task %s: batch of %d key(s) from %r could not run: %s: %s",
                task.name,
                len(keys),
                keys[0],
                type(exc).__name__,
                exc,
            )
            for key in keys:
                self.summary.errors.append(f"{task.name} {key}: {type(exc).__name__}: {exc}")
                self.errored.add((task.name, key))
            self.metrics.on_error(task.name)
            self.known.task_changed(task)
        else:
            for key in keys:
                record = records.get(key)
                self.known.job_ended(task, key, record)
                if record is None:
                    log.info("task %s: %r is claimed by another scheduler or done", task.name, key)
                else:
                    self._note_record(task, key, record)
        finally:
            task.release_slot(slot)
            self._finished += 1
            self._batched_extra -= len(keys) - 1
            for key in keys:
                self.running.pop((task.name, key), None)
                self.states.pop((task.name, key), None)
            if self.on_progress:
                self.on_progress(self)

    def _next_for(self, task: Task, *, batch: bool = False) -> tuple[str, object] | None:
        """The next job a worker of ``task`` may run at once, or None (then it ends). With
        ``batch``, only the slot: the caller pops the keys."""
        if self._stop.is_set() or self.paused:
            return None
        queue = self.queues[task.name]
        if not queue:
            return None
        if self.max_jobs is not None:
            # under a global limit, hand the freed slot back when a task that launches
            # before this one is waiting
            for other in self.pipeline.launch_order(self.selected):
                if other is task:
                    break
                if self.queues[other.name] and self._workers[other.name] < other.concurrency:
                    return None
        slot = task.acquire_slot()
        if slot is None:
            return None
        if batch:
            return "", slot
        while queue:
            key = queue.pop()
            if (task.name, key) not in self.running:
                return key, slot
        task.release_slot(slot)
        return None

    async def _worker(self, task: Task, key: str, slot: object) -> None:
        current = asyncio.current_task()
        assert current is not None
        if (
            direct_lane(task, self.hooks)
            and isinstance(slot, Slot)
            and slot.executor is task.executor
            and not _job_log.isEnabledFor(logging.INFO)
        ):
            # claims and records in this process's memory, a direct call: the short path
            # (the task's links and the hooks are fixed by now)
            await self._lean_worker(task, key, slot, current)
            return
        turn = time.monotonic()
        jobs = 0
        try:
            while True:
                await self._job(task, key, slot)
                # jobs that never suspend (in-memory ones) would hold the event loop for the
                # whole queue: give it a turn every few milliseconds or _YIELD_JOBS jobs
                jobs += 1
                now = time.monotonic()
                if jobs >= _YIELD_JOBS or now - turn > _YIELD_SECONDS:
                    await asyncio.sleep(0)
                    turn, jobs = time.monotonic(), 0
                nxt = self._next_for(task)
                if nxt is None:
                    break
                key, slot = nxt
                ident = (task.name, key)
                self.states[ident] = JobState.PENDING
                self.running[ident] = current
        finally:
            self._workers[task.name] -= 1
            self._wake.set()

    async def _lean_worker(self, task: Task, key: str, slot: Slot | None, current: asyncio.Task[Any]) -> None:
        """:meth:`_worker` for a task on the short path of
        :func:`~pydatatask.task.lifecycle.execute_direct`: the worker keeps its slot from
        one job to the next, and what the scheduler learns of a success (the known
        listings, the records index, metrics, the summary, the end of the job in
        :attr:`running`) is told for the jobs ended so far at once, before each turn given
        to the event loop (every ``_YIELD_JOBS`` jobs or ``_YIELD_SECONDS``, and whenever a
        job ends otherwise) and when the worker stops. No tick and no other task runs in
        between (the loop runs them at a turn only), and a key stays in :attr:`running`
        until it is told, so nothing launches it twice."""
        name = task.name
        running, states, queues = self.running, self.states, self.queues
        ended: list[tuple[str, dict[str, Any]]] = []
        lane = DirectLane()
        # what _tell reads of a success is all the index reads of it too (no facts kept)
        slim = not self.records[name].noted_facts
        turn = time.monotonic()
        jobs = 0
        try:
            while True:
                states[(name, key)] = JobState.RUNNING
                adopted, redo_of = self.adoptions.get(name), self._redo.get(name)
                if slot is None or (adopted and key in adopted) or (redo_of and key in redo_of):
                    # a key to adopt or redo: the general path
                    self._tell(task, ended)
                    lane.close()
                    if slot is None:
                        slot = self._next_slot(task)
                        if slot is None:
                            running.pop((name, key), None)
                            states.pop((name, key), None)
                            queues[name].append(key)
                            break
                    await self._job(task, key, slot)
                    slot = None
                else:
                    try:
                        record = await execute_direct(
                            task,
                            key,
                            self.owner,
                            lane,
                            slot,
                            self._record_fields(task)(key),
                            self._on_state,
                            slim=slim,
                        )
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self._tell(task, ended)
                        self._job_failed_to_run(task, key, exc)
                        self._job_done(task, key, slot)
                        slot = None
                    else:
                        if record is not None and record["success"] and record["attempts"] == 1:
                            ended.append((key, record))
                        else:
                            self._tell(task, ended)
                            self._job_ended_with(task, key, record)
                            self._job_done(task, key, slot)
                            slot = None
                jobs += 1
                now = time.monotonic()
                if jobs >= _YIELD_JOBS or now - turn > _YIELD_SECONDS:
                    self._tell(task, ended)
                    await asyncio.sleep(0)
                    turn, jobs = time.monotonic(), 0
                # (a tick replaces the queue: the one of now, never one held from before)
                queue = queues[name]
                if self._stop.is_set() or self.paused or not queue:
                    break
                if self.max_jobs is not None and slot is not None:
                    # the slot goes back to the pool: another task may come first
                    task.release_slot(slot)
                    slot = None
                if slot is None:
                    nxt = self._next_for(task)
                    if nxt is None:
                        break
                    key = nxt[0]
                    slot = nxt[1]  # type: ignore[assignment]
                else:
                    while queue:
                        key = queue.pop()
                        if (name, key) not in running:
                            break
                    else:
                        break
                running[(name, key)] = current
        finally:
            lane.close()
            self._tell(task, ended)
            if slot is not None:
                task.release_slot(slot)
            self._workers[name] -= 1
            self._wake.set()

    def _next_slot(self, task: Task) -> Slot | None:
        got = task.acquire_slot()
        return got if isinstance(got, Slot) else None

    def _tell(self, task: Task, ended: list[tuple[str, dict[str, Any]]]) -> None:
        """What the scheduler learns of the successes in ``ended`` (then emptied): as
        :meth:`_ended` and the end of :meth:`_job` for each."""
        if not ended:
            return
        name = task.name
        known, index, metrics = self.known, self.records[name], self.metrics
        running, states = self.running, self.states
        for key, record in ended:
            known.job_ended(task, key, record)
            index.note(key, record)
            metrics.on_end(name, key, record)
            ident = (name, key)
            running.pop(ident, None)
            states.pop(ident, None)
        metrics.version += len(ended)  # (on_end counts one; running and succeeded each one)
        summary = self.summary
        summary.succeeded += len(ended)
        summary.per_task[name]["succeeded"] += len(ended)
        self._finished += len(ended)
        ended.clear()
        if self.on_progress:
            self.on_progress(self)

    def _records_stored(self, task: Task, records: Mapping[str, dict[str, Any]]) -> None:
        """Records of a batch are stored (its claims not yet released): the records index
        knows them at once, so a tick listing ``done`` meanwhile does not read them back
        (metrics and the summary take them when the batch returns)."""
        index = self.records[task.name]
        for key, record in records.items():
            index.note(key, record)

    def _on_state(self, task: Task, key: str, state: JobState, attempt: int) -> None:
        self.states[(task.name, key)] = state
        self.metrics.on_state(task.name, key, state, attempt)

    async def _job(self, task: Task, key: str, slot: object) -> None:
        try:
            fields = self._record_fields(task)(key)
            adopted = self.adoptions.get(task.name)
            adopt = adopted.pop(key, None) if adopted else None
            redo_of = self._redo.get(task.name)
            judged = redo_of.pop(key, None) if redo_of else None
            if judged is not None and adopt is None and key in self._orphans.get(task.name, ()):
                self.known.task_changed(task)
                try:
                    if await self._remove_orphan(task, key, judged):
                        self._replaced(task, judged)
                finally:
                    # and again once it is gone: a listing that started during the removal
                    # may still show the record or the outputs
                    self.known.task_changed(task)
                return
            if judged is not None and adopt is None:
                record = await redo(
                    task,
                    key,
                    judged=judged,
                    index=self.records[task.name],
                    owner=self.owner,
                    hooks=self.hooks,
                    on_state=self._on_state,
                    slot=slot,
                    fields=fields,
                )
                if record is not None:
                    self._replaced(task, judged)
            else:
                record = await execute_job(
                    task,
                    key,
                    owner=self.owner,
                    hooks=self.hooks,
                    on_state=self._on_state,
                    slot=slot,
                    record_fields=fields,
                    adopt=adopt,
                )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._job_failed_to_run(task, key, exc)
        else:
            self._job_ended_with(task, key, record)
        finally:
            self._job_done(task, key, slot)

    def _job_failed_to_run(self, task: Task, key: str, exc: Exception) -> None:
        log.error("task %s: job %r could not run: %s: %s", task.name, key, type(exc).__name__, exc)
        self.summary.errors.append(f"{task.name} {key}: {type(exc).__name__}: {exc}")
        self.errored.add((task.name, key))
        self.metrics.on_error(task.name)
        self.known.task_changed(task)

    def _job_ended_with(self, task: Task, key: str, record: dict[str, Any] | None) -> None:
        if record is None:
            self.known.job_ended(task, key, record)
            log.info("task %s: %r is claimed by another scheduler", task.name, key)
        else:
            self._ended(task, key, record)

    def _job_done(self, task: Task, key: str, slot: object) -> None:
        task.release_slot(slot)
        self._finished += 1
        ident = (task.name, key)
        self.running.pop(ident, None)
        self.states.pop(ident, None)
        if self.on_progress:
            self.on_progress(self)

    def _ended(self, task: Task, key: str, record: dict[str, Any]) -> None:
        """A job ended with ``record``: what the known listings learn, the records index,
        metrics and the summary, in one call (a success is counted here directly)."""
        self.known.job_ended(task, key, record)
        if not record["success"]:
            self._note_record(task, key, record)
            return
        self.records[task.name].note(key, record)
        self.metrics.on_end(task.name, key, record)
        summary = self.summary
        summary.succeeded += 1
        summary.per_task[task.name]["succeeded"] += 1

    def _note_record(self, task: Task, key: str, record: dict[str, Any]) -> None:
        """A job ended with ``record``: the records index, metrics and the summary."""
        self.records[task.name].note(key, record)
        self.metrics.on_end(task.name, key, record)
        if record["success"]:
            self.summary.succeeded += 1
            self.summary.per_task[task.name]["succeeded"] += 1
        else:
            self.summary.failed += 1
            self.summary.per_task[task.name]["failed"] += 1
            err = record.get("error") or {}
            log.warning(
                "task %s: job %r failed after %d attempt(s): %s",
                task.name,
                key,
                record["attempts"],
                err.get("message") or f"exit code {record.get('exit_code')}",
            )

    async def _wait(self, seconds: float) -> None:
        if self.deadline is not None:
            seconds = min(seconds, max(0.0, self.deadline - time.monotonic()))
        try:
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()
        if self.deadline is not None and time.monotonic() >= self.deadline and not self._stop.is_set():
            log.warning("run timeout reached")
            self.summary.timed_out = True
            self._stop.set()

    def _chained(self) -> bool:
        """Whether a selected task reads the outputs of another selected task."""
        names = {t.name for t in self.selected}
        return any(up in names for t in self.selected for up in self.pipeline.graph.upstream[t.name])

    def _queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    # ---------------------------------------------------------------- main loop
    async def run(self) -> RunSummary:
        """Run until nothing is ready and nothing is running (or forever, or stopped)."""
        t0 = time.monotonic()
        await self.hooks.emit(Event("pipeline_started"))
        try:
            async with asyncio.TaskGroup() as tg:
                stopper = tg.create_task(self._stopper())
                beater = tg.create_task(self._heartbeats())
                await self._loop(tg)
                stopper.cancel()
                beater.cancel()
        except BaseExceptionGroup as group:
            error = first_error(group)  # callers get the error itself, never the group
            raise error from error.__cause__
        finally:
            self.summary.elapsed = time.monotonic() - t0
            await self.hooks.emit(Event("pipeline_finished", summary=self.summary.as_dict()))
        return self.summary

    async def _loop(self, tg: asyncio.TaskGroup) -> None:
        relist = True
        while not self._stop.is_set():
            finished_before = self._finished
            await self.refresh(relist=relist)
            relist = False
            self.launch(tg)
            if self.on_progress:
                self.on_progress(self)
            if not self.running and not self._queued():
                if self._finished != finished_before:
                    continue  # a job ended during the listing: what it enabled may be missing
                if self._finished != self._finished_at_listing:
                    # nothing left by what is known: list everything before believing it
                    relist = True
                    continue
                if not self.forever:
                    return
                await self._wait(until_next_window(self.selected, self.poll_interval))
                continue
            # keep launching from the queues as jobs finish; list again when the queues
            # are dry, or when a re-listing is due so downstream tasks start early (only
            # when a selected task reads another's outputs: otherwise a re-listing while
            # work is queued finds nothing to start and costs every backend a listing)
            chained = self._chained()
            relist_every = max(0.05, min(self.poll_interval, 20 * self.last_listing_seconds))
            relist_at = time.monotonic() + relist_every if chained else math.inf
            while not self._stop.is_set():
                blocked = any(self.queues[t.name] for t in self.selected) and self._free_slots() > 0
                await self._wait(min(relist_at - time.monotonic(), 0.1 if blocked else self.poll_interval))
                self.launch(tg)
                if time.monotonic() >= relist_at or self._relist:
                    self._relist = False
                    break
                if not self._queued():
                    if chained or not self.running:
                        break
                    # unchained: the last jobs are running and nothing they finish can
                    # make work ready; list again when they are done, or after
                    # poll_interval for inputs that arrived meanwhile
                    relist_at = min(
                        relist_at, time.monotonic() + until_next_window(self.selected, self.poll_interval)
                    )
        # stopping
        await self._drain()
        await self._abandon_adoptions()

    async def _abandon_adoptions(self) -> None:
        """Adopted work not launched before the stop: its claim is handed to nobody (stale at
        once), so that the next run adopts it again."""
        for name, adopted in self.adoptions.items():
            task = self.all_tasks[name]
            while adopted:
                _, adoption = adopted.popitem()
                try:
                    await task.claims.abandon(adoption.claim)
                except Exception as exc:  # stale by its lease instead
                    log.warning("task %s: could not hand on the adopted job %r: %s", name, adoption.key, exc)

    async def _drain(self) -> None:
        if not self.running:
            return
        try:
            async with asyncio.timeout(self.grace):
                while self.running:
                    await asyncio.wait(list(self.running.values()))
        except TimeoutError:
            log.warning("cancelling %d job(s) still running after %gs", len(self.running), self.grace)
            for job in list(self.running.values()):
                job.cancel()
            if self.running:
                await asyncio.wait(list(self.running.values()))

    async def _heartbeats(self) -> None:
        """Renew the claims of running jobs; cancel a job whose claim was taken over."""
        interval = max(0.05, self.pipeline.claim_lease / 3)
        while True:
            await asyncio.sleep(interval)
            await self._adoption_heartbeats()
            await self._job_heartbeats()

    async def _job_heartbeats(self) -> None:
        """Renew the claims of the running jobs, each task's together (Claims.update_many:
        one request per batch, or a bulk write, where the backend allows)."""
        by_task: dict[str, list[tuple[Claim, asyncio.Task[None]]]] = {}
        for (task_name, key), job in list(self.running.items()):
            claim = self.all_tasks[task_name].claims.get(key)
            if claim is not None:
                by_task.setdefault(task_name, []).append((claim, job))
        for task_name, held in by_task.items():
            task = self.all_tasks[task_name]
            try:
                lost = await task.claims.update_many([claim for claim, _job in held])
            except Exception as exc:  # the live repository is unreachable: try again later
                log.warning("task %s: heartbeat for %d claim(s) failed: %s", task_name, len(held), exc)
                self.metrics.on_error(task_name)
                continue
            jobs = {claim.key: job for claim, job in held}
            for claim in lost:
                key, job = claim.key, jobs[claim.key]
                if self.running.get((task_name, key)) is job and not job.done():
                    log.error(
                        "task %s: the claim on %r was taken over by another scheduler; stopping this job",
                        task_name,
                        key,
                    )
                    self.summary.errors.append(f"{task_name} {key}: claim lost")
                    job.cancel()

    async def _adoption_heartbeats(self) -> None:
        """Renew the claims of adopted work waiting for a slot; one lost meanwhile is not
        ours any more (its new holder deals with the work)."""
        for name, adopted in self.adoptions.items():
            task = self.all_tasks[name]
            for key, adoption in list(adopted.items()):
                if (name, key) in self.running:
                    continue
                try:
                    kept = await task.claims.heartbeat(adoption.claim)
                except Exception as exc:
                    log.warning("task %s: heartbeat for %r failed: %s", name, key, exc)
                    continue
                if not kept and adopted.get(key) is adoption:
                    log.error("task %s: the claim on the adopted job %r was taken over", name, key)
                    del adopted[key]

    async def _stopper(self) -> None:
        await self._stop.wait()
        self._wake.set()


#: woken this long after a window's start, so that the listing made then includes it
_CLOCK_MARGIN = 0.005
#: keys of a long computation over keys (the stale keys of a million) between two turns of
#: the event loop given to whatever else runs on it (a web page served from it)
_KEYS_PER_TURN = 1000
#: a worker whose jobs do not suspend gives the event loop a turn after this many jobs or
#: this long, whichever comes first (the web page, heartbeats and the ticks run meanwhile)
_YIELD_JOBS = 256
_YIELD_SECONDS = 0.005


def _requeue(queue: list[str], ready: set[str]) -> list[str]:
    """``sorted(ready, reverse=True)``, given ``queue``, the queue of the tick before (sorted
    the same way, but for keys put back or in front): the keys still ready keep their
    order and the new ones are merged in, so that a tick over a million ready keys, most of
    them queued already, costs a pass over them and a merge (Timsort finds the sorted runs)
    instead of a sort of a million strings."""
    if len(queue) < 1024 or len(ready) < 1024:
        return sorted(ready, reverse=True)
    kept = [k for k in queue if k in ready]
    added = ready.difference(kept)
    if len(kept) + len(added) != len(ready) or len(added) > len(ready) // 2:
        return sorted(ready, reverse=True)  # keys queued twice, or mostly new ones
    if added:
        kept += sorted(added, reverse=True)
    kept.sort(reverse=True)
    return kept


def until_next_window(tasks: list[Task], seconds: float) -> float:
    """``seconds``, or less: the time until the next window of a
    :class:`~pydatatask.repository.clock.ClockRepository` that ``tasks`` read (directly or
    under a view) comes due. With ``run --forever`` the idle scheduler sleeps this long, so
    a periodic job starts when its window comes, not at the next poll."""
    for task in tasks:
        for link in task.required_links:
            for repo in stored_repositories(link.repository):
                if isinstance(repo, ClockRepository):
                    seconds = min(seconds, repo.seconds_until_next() + _CLOCK_MARGIN)
    return seconds


async def compute_figures(
    tasks: dict[str, Task],
    pipeline: Pipeline,
    records: dict[str, RecordIndex],
    running: dict[tuple[str, str], Any] | None = None,
    *,
    full: bool = False,
    redo_for: Collection[str] = (),
    list_versions: bool = True,
) -> dict[str, TaskFigures]:
    """One listing of every repository, then each task's ready set (see the module doc).

    Job records are read only where a decision needs them (upstream records of keys a
    downstream task could start); with ``full`` every record is read so that
    ``succeeded``/``failed`` are complete (status output). Must be called inside a
    :func:`listing_scope`. The inputs are listed with their versions (for the job
    records). Stale keys are found with ``full`` (every task) and for the tasks in
    ``redo_for``, whose stale keys are made ready (see :mod:`~pydatatask.pipeline.staleness`).
    Without ``list_versions`` (and without ``full`` or ``redo_for``, which need them) the
    inputs are listed as keys only, and ``TaskFigures.versions`` is empty: the cheaper
    listing of a first look (the web page's first paint).
    """
    listed_since = time.monotonic()  # for the writes of running jobs, subtracted at the end
    repos: dict[int, Repository] = {}
    versioned: dict[int, Repository] = {}
    for task in tasks.values():
        for link in task.links.values():
            if link.required_for_start:
                versioned[id(link.repository)] = link.repository
            elif link.inhibits_start or link.name == "done":
                repos[id(link.repository)] = link.repository
    if not (list_versions or full or redo_for):
        repos.update(versioned)
        versioned = {}
    for repo_id in versioned:
        repos.pop(repo_id, None)
    for index in records.values():
        index.listing_started()  # what jobs record while the listings run stays known
    # the versioned first: a view listing a child for its keys then reuses its versions
    listed_versions = await asyncio.gather(
        *(cached_versions(r) for r in versioned.values()), *(cached_keys(r) for r in repos.values())
    )
    versions_of: dict[int, dict[str, str | None]] = {}
    keys_of: dict[int, set[str]] = {}
    for repo_id, value in zip([*versioned, *repos], listed_versions, strict=True):
        if isinstance(value, dict):
            versions_of[repo_id] = value
            keys_of[repo_id] = await cached_keys(versioned[repo_id])
        else:
            assert isinstance(value, set)
            keys_of[repo_id] = value
    for name, task in tasks.items():
        records[name].sync(keys_of[id(task.done)])
    if full:
        await asyncio.gather(*(index.load() for index in records.values()))

    universes: dict[str, set[str]] = {}
    grouped: dict[str, dict[str, list[str]]] = {}
    for name, task in tasks.items():
        required = [keys_of[id(link.repository)] for link in task.required_links]
        if len(required) == 1:
            universe = required[0]  # shared with the listing: never modified
        elif required:
            smallest = min(required, key=len)
            universe = smallest.intersection(*[r for r in required if r is not smallest])
        else:
            universe = set()
        if task.group_by is not None:  # fan-in: the keys are the groups of the members
            grouped[name] = group_keys(task, universe)
            universe = set(grouped[name])
        universes[name] = universe
    stale_of = await _find_stale(
        tasks, pipeline, records, keys_of, versions_of, universes, tasks if full else redo_for, grouped
    )
    _add_stale_upstream(pipeline, tasks, stale_of, records, universes, grouped)
    running_keys: dict[str, set[str]] = {name: set() for name in tasks}
    for task_name, k in running or {}:
        running_keys[task_name].add(k)
    # what upstream is about to change: stale keys to redo, and jobs running anywhere
    pending = {
        n: (set(stale_of.get(n, ())) if n in redo_for else set()) | keys_of[id(t.live)] | running_keys[n]
        for n, t in tasks.items()
    }
    figures: dict[str, TaskFigures] = {}
    for name, task in tasks.items():
        fig = TaskFigures(name)
        fig.universe = universes[name]
        fig.live = set(keys_of[id(task.live)])
        fig.recorded = keys_of[id(task.done)]
        fig.versions = {link.name: versions_of.get(id(link.repository), {}) for link in task.required_links}
        ready = fig.universe.difference(*[keys_of[id(link.repository)] for link in task.inhibiting_links])
        orphans: set[str] = set()
        if name in stale_of:
            fig.stale = stale_of[name]
            if name in redo_for:
                fig.redo = _redo_keys(pipeline, name, fig, pending, universes, grouped, running_keys[name])
                # an orphan is removed, not run: no gating applies (its parent no longer has it)
                orphans = {k for k in fig.redo if any(r.kind == "orphan" for r in fig.stale[k])}
                ready |= fig.redo - orphans
        if name in grouped:
            fig.blocked = await _held_groups(
                tasks, name, ready, pipeline, universes, records, keys_of, grouped[name], fig
            )
        else:
            fig.blocked = await _blocked_by_upstream(tasks, name, ready, pipeline, universes, records)
            fig.blocked |= await fan_out_blocked(
                tasks, name, ready - fig.blocked, pipeline, universes, records, keys_of
            )
        ready -= fig.blocked
        ready |= orphans
        ready -= running_keys[name]
        fig.redo &= ready
        fig.ready = ready
        figures[name] = fig
    for name, fig in figures.items():
        fig.succeeded = records[name].succeeded()
        fig.failed = records[name].failed()
        fig.corrupt = dict(records[name].corrupt)
    # keys that running jobs of this process wrote beyond their own (or that a job which
    # failed during the listing has removed again) are not ready downstream
    in_flight: dict[int, set[str]] = {}
    for task in tasks.values():
        for repo_id, written in task.in_flight_writes(since=listed_since).items():
            in_flight.setdefault(repo_id, set()).update(written)
    if in_flight:
        for name, task in tasks.items():
            for link in task.required_links:
                visible = visible_keys(link.repository, in_flight)
                if name in grouped:  # a member written by a running job holds its group
                    held = {g for g in figures[name].ready if visible.intersection(grouped[name][g])}
                else:
                    held = figures[name].ready & visible
                figures[name].ready -= held
                figures[name].blocked |= held
    for name in grouped:
        # a group's job keeps the members it was launched with (its record's digest is of them)
        before = tasks[name]._tick_members
        # the jobs running now, not when the tick began: one started during the tick fixed
        # its members (and its record's digest) from the members before it
        now_running = {k for t, k in running or {} if t == name} | running_keys[name]
        kept = {g: before[g] for g in now_running if g in before}
        tasks[name]._tick_members = {g: sorted(grouped[name][g]) for g in figures[name].ready} | kept
    return figures


async def _held_groups(
    tasks: dict[str, Task],
    name: str,
    ready: set[str],
    pipeline: Pipeline,
    universes: dict[str, set[str]],
    records: dict[str, RecordIndex],
    keys_of: dict[int, set[str]],
    groups: dict[str, list[str]],
    fig: TaskFigures,
) -> set[str]:
    """The groups of ``ready`` (fan-in task ``name``) that a member or an upstream key holds
    (see :mod:`pydatatask.pipeline.groups`); ``fig.held`` says by what."""
    members = {m for g in ready for m in groups[g]}
    blocked = await _blocked_by_upstream(tasks, name, members, pipeline, universes, records)
    blocked |= await fan_out_blocked(tasks, name, members - blocked, pipeline, universes, records, keys_of)
    held = await held_groups(tasks, name, ready, pipeline, universes, records)
    for group in ready:
        if group not in held:
            stuck = sorted(blocked.intersection(groups[group]))
            if stuck:
                held[group] = ("", stuck[0])
    fig.held = held
    return set(held)


async def _blocked_by_upstream(
    tasks: dict[str, Task],
    name: str,
    ready: set[str],
    pipeline: Pipeline,
    universes: dict[str, set[str]],
    records: dict[str, RecordIndex],
) -> set[str]:
    """Those of ``ready`` that read what an upstream job could work on but has no
    success record for (a failed, running or half-done job's outputs are never read).

    Keys are compared in the upstream task's own key space: through views that translate
    keys, a key of this task maps to the upstream keys whose outputs it reads.
    """
    blocked: set[str] = set()
    for up in pipeline.graph.upstream[name]:
        to_upstream = _upstream_keys(tasks[name], tasks[up])
        index = records[up]
        if to_upstream is None:  # the same keys on both sides
            candidates = (ready - blocked) & universes[up]
            if candidates:
                await index.load(candidates)
                blocked |= candidates - index.succeeded_among(candidates)
            continue
        wanted: dict[str, set[str]] = {}
        for key in ready - blocked:
            ups = to_upstream(key) & universes[up]
            if ups:
                wanted[key] = ups
        if not wanted:
            continue
        needed = set().union(*wanted.values())
        await index.load(needed)
        succeeded = index.succeeded_among(needed)
        blocked |= {key for key, ups in wanted.items() if not ups <= succeeded}
    return blocked


def _upstream_keys(task: Task, up: Task) -> Callable[[str], set[str]] | None:
    """For a key of ``task``, the keys of ``up`` whose outputs the inputs of ``task`` read
    under it; None when every path between them keeps keys as they are."""
    paths: list[tuple[Repository, Repository]] = []
    for link in task.required_links:
        reads = stored_repositories(link.repository)
        for out in up.output_links:
            if any(r is w for r in reads for w in stored_repositories(out.repository)):
                paths.append((link.repository, out.repository))
    if all(_keeps_keys(a) and _keeps_keys(b) for a, b in paths):
        return None

    def to_upstream(key: str) -> set[str]:
        keys: set[str] = set()
        for read, written in paths:
            pairs = read.underlying(key) if isinstance(read, RepositoryView) else [(read, key)]
            for repo, stored_key in pairs:
                if isinstance(written, RepositoryView):
                    keys |= written.view_keys(repo, stored_key)
                elif written is repo:
                    keys.add(stored_key)
        return keys

    return to_upstream


def _keeps_keys(repo: Repository) -> bool:
    return not isinstance(repo, RepositoryView) or repo.keeps_keys


def record_indexes(tasks: dict[str, Task]) -> dict[str, RecordIndex]:
    """A :class:`RecordIndex` per task, keeping what each task's :meth:`~pydatatask.task.base.Task.stale_facts` wants."""
    return {
        name: RecordIndex(t.done, keep=t.stale_facts if type(t).stale_facts is not Task.stale_facts else None)
        for name, t in tasks.items()
    }


def input_sources(pipeline: Pipeline, tasks: dict[str, Task], name: str) -> list[InputSource]:
    """The input links of task ``name`` and the upstream tasks writing what each reads."""
    task = tasks[name]
    sources: list[InputSource] = []
    for link in task.required_links:
        ups: list[tuple[str, Callable[[str], set[str]] | None]] = []
        for edge in pipeline.graph.edges:
            if edge.downstream == name and edge.in_link == link.name and edge.upstream in tasks:
                if all(up != edge.upstream for up, _ in ups):
                    ups.append((edge.upstream, _upstream_keys(task, tasks[edge.upstream])))
        parents = {up: fan_out_separators(task, tasks[up]) for up, _ in ups}
        sources.append(
            InputSource(link.name, link.repository, tuple(ups), {u: p for u, p in parents.items() if p})
        )
    return sources


async def _find_stale(
    tasks: dict[str, Task],
    pipeline: Pipeline,
    records: dict[str, RecordIndex],
    keys_of: dict[int, set[str]],
    versions_of: dict[int, dict[str, str | None]],
    universes: dict[str, set[str]],
    names: Collection[str],
    grouped: dict[str, dict[str, list[str]]],
) -> dict[str, dict[str, list[StaleReason]]]:
    """The stale keys of the tasks ``names``, with their reasons (their records, and those
    of their upstream tasks, are read first: once, then cached)."""
    if not names:
        return {}
    wanted = set(names) | {up for n in names for up in pipeline.graph.upstream[n] if up in tasks}
    await asyncio.gather(*(records[n].load() for n in wanted))
    out: dict[str, dict[str, list[StaleReason]]] = {}
    for name in names:
        task = tasks[name]
        sources = input_sources(pipeline, tasks, name)
        versions = {link.name: versions_of[id(link.repository)] for link in task.required_links}
        outputs = {link.name: keys_of[id(link.repository)] for link in task.inhibiting_links}
        index, universe, live = records[name], universes[name], keys_of[id(task.live)]
        members = grouped.get(name)
        found: dict[str, list[StaleReason]] = {}
        gone: list[str] = []
        for n, key in enumerate(index.recorded(), 1):
            if n % _KEYS_PER_TURN == 0:  # a million keys: what else runs on the loop goes on
                await asyncio.sleep(0)
            if key in live or key in index.corrupt or key not in index.listed:
                continue
            if key not in universe:
                gone.append(key)
                continue
            facts = index.facts(key)
            if facts is None:  # its record removed meanwhile (while the loop ran something else)
                continue
            reasons = stale_reasons(
                task,
                key,
                facts,
                sources,
                versions,
                records,
                outputs,
                members=None if members is None else members.get(key, []),
                children=index.children.get(key) if task.fan_out else None,
            )
            if reasons:
                found[key] = reasons
        if gone and task.group_by is None:
            ancestors = fan_out_ancestors(pipeline, tasks, name)
            for key, reason in (await orphan_reasons(gone, ancestors, records)).items():
                found[key] = [reason]
        out[name] = found
    return out


def _add_stale_upstream(
    pipeline: Pipeline,
    tasks: dict[str, Task],
    stale_of: dict[str, dict[str, list[StaleReason]]],
    records: dict[str, RecordIndex],
    universes: dict[str, set[str]],
    grouped: dict[str, dict[str, list[str]]],
) -> None:
    """Mark as stale, in ``stale_of``, the recorded keys that read (directly, or through
    the tasks in between: the same key, a fan-out parent, a fan-in member) a key that is
    stale upstream: what they were made from is to be redone, so they will be too. Their
    reason is of kind :data:`~pydatatask.pipeline.staleness.UPSTREAM_STALE`."""
    if not any(stale_of.values()):
        return
    pending = {name: set(found) for name, found in stale_of.items()}
    for name in pipeline.graph.order():
        if name not in stale_of or name not in tasks:
            continue
        index = records[name]
        found = stale_of[name]
        candidates = [k for k in index.recorded() if k not in found and k in universes[name]]
        if not candidates:
            continue
        waiting = waiting_upstream(
            pipeline, tasks, name, candidates, pending, universes, grouped, _upstream_keys
        )
        ups = [up for up in pipeline.graph.upstream[name] if pending.get(up)]
        reason = StaleReason(
            UPSTREAM_STALE,
            f"what it reads is stale upstream (task {', '.join(map(repr, ups)) or '?'}): "
            "it is redone after that",
        )
        for key in waiting:
            found[key] = [reason]
        pending[name] |= waiting


def _redo_keys(
    pipeline: Pipeline,
    name: str,
    fig: TaskFigures,
    pending: dict[str, set[str]],
    universes: dict[str, set[str]],
    grouped: dict[str, dict[str, list[str]]],
    running: set[str],
) -> set[str]:
    """The stale keys of ``name`` to redo now: not running, and not reading (directly or
    through tasks in between) what an upstream task is about to redo or is running (they
    are redone after it, once). Orphans are removed at once."""
    # a key stale only because what it reads is stale upstream is redone once that is
    # (it is then stale by its own record), never before
    keys = {k for k, reasons in fig.stale.items() if any(r.kind != UPSTREAM_STALE for r in reasons)}
    keys -= fig.live | running
    orphans = {k for k in keys if any(r.kind == "orphan" for r in fig.stale[k])}
    waiting = waiting_upstream(
        pipeline, pipeline.tasks, name, keys - orphans, pending, universes, grouped, _upstream_keys
    )
    return keys - waiting
