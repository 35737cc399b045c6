"""The life of one job, written once for every task kind.

:func:`execute` runs the job of one key to its end::

    claim (create-if-absent in ``live``)
    attempts, under the task's retry policy:
        work = await task.prepare(job)              what runs (a Work item)
        handle = await task.executor.start(work, slot)
        the claim notes handle.info under "run"     (what recovery needs after a crash)
        await handle.started()                      the time limit counts from here
        outcome = await handle.wait()
        await task.finish(job, outcome)             commit outputs, or raise: the attempt failed
        a failed attempt: its partial outputs are removed (the write journal names every key
        it wrote); the claim shows "retrying" until the next attempt, and the handle is
        closed just before it
    the log (handle.logs() and the job's own lines), the record in ``done``
    handle.close() of the last attempt, release of the claim, hooks

A handle is closed only once the outputs of its attempt are settled (removed, or recorded
with the job): what the executor holds of the work (a pod kept by its finalizer) is what
tells a scheduler started after a kill that a job was left unfinished, even when the claims
were in memory.

:func:`execute_direct` is the same life for a job whose claims and records are memory of
this process and whose attempts are direct calls (:func:`direct_lane` says which tasks):
a straight line of dict operations around the call, for a worker that runs such jobs one
after another (:class:`DirectLane`); a first call that fails goes on through
:func:`execute`.

A :class:`~pydatatask.errors.ConfigurationError` from an attempt (a template that does not
render, a manifest the cluster refuses) is not the job's failure: it propagates like a
cancellation, with nothing recorded. Cancellation (Ctrl-C, a lost claim) cancels the
running handle with the executor's grace, removes partial outputs, writes no record and
propagates.

An :class:`Adoption` is work a dead scheduler left running that this process takes over
(:mod:`pydatatask.task.recovery` finds it: a stale claim, or a job the executor still
runs that no claim names). ``execute(task, key, adopt=...)`` waits for its handle as the
job's current attempt, on the very path of a launched one: the time limit counted from
when the work was started, the outcome through
:meth:`~pydatatask.task.base.Task.finish`, cleanup of a failure, the next attempts under
the retry policy, the record, hooks and release.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, JobError, JobTimeoutError
from ..executor.base import Executor, JobHandle, Resources, Slot
from ..repository.deferred import DeferredMetadataRepository
from ..repository.journal import WriteJournal, enter_journal, journaling, leave_journal, visible_keys
from ..repository.memory import MemoryMetadataRepository
from . import base as _base
from .base import DirectCall, JobContext, JobOutcome
from .claims import Claim, new_owner, process_memory
from .hooks import Event, Hooks
from .records import HOSTNAME, JobState, error_info, make_claim, make_record, utcnow_iso

if TYPE_CHECKING:
    from .base import Task

__all__ = (
    "execute",
    "execute_direct",
    "direct_lane",
    "DirectLane",
    "execute_batch",
    "run_attempt",
    "Adoption",
    "StateCallback",
    "RecordsCallback",
)

log = logging.getLogger("pydatatask.task")

_NO_HOOKS = Hooks()

#: ``on_state(task, key, state, attempt)``: told of every change of a job's state
StateCallback = Callable[["Task", str, JobState, int], None]
#: ``on_records(task, records)``: records of a batch stored (``{key: record}``)
RecordsCallback = Callable[["Task", Mapping[str, dict[str, Any]]], None]


@dataclass(eq=False)
class Adoption:
    """Work of an interrupted job that this process has taken over, to be waited for as
    the job's current attempt (``execute(task, key, adopt=adoption)``).

    ``claim`` is held by this process (taken over by compare-and-swap, or created for a job
    no claim named); ``handle`` is the executor's adoptable handle on the work.
    """

    key: str
    claim: Claim
    handle: JobHandle
    #: the record's start, when the job began with its first claim (epoch seconds)
    since: float = field(default_factory=time.time)
    #: the moment the adopted attempt's work was started (epoch seconds), from which its
    #: time limit counts
    run_at: float = field(default_factory=time.time)
    #: the number of the adopted attempt
    attempt: int = 1


async def execute(
    task: Task,
    key: str,
    *,
    owner: str | None = None,
    hooks: Hooks | None = None,
    claimed: bool = False,
    on_state: StateCallback | None = None,
    slot: Any = True,
    record_fields: dict[str, Any] | None = None,
    adopt: Adoption | None = None,
    resume: _Failed | None = None,
) -> dict[str, Any] | None:
    """Run the job of ``key`` to its end: claim, attempts, record, release.

    Returns the job record, or None if another scheduler holds the claim. With ``claimed``
    the caller holds the claim already; with ``adopt`` (an :class:`Adoption` of ``key``)
    the claim is the adoption's and its handle is the first attempt waited for.
    Cancellation removes partial outputs and the claim, writes no record, and propagates.
    ``record_fields`` go into the record (the scheduler gives the versions of the inputs
    the job reads, see :mod:`pydatatask.task.records`).
    """
    owner = owner or new_owner()
    hooks = hooks if hooks is not None else _NO_HOOKS
    plan = _plan(task)
    local = plan.local
    claim: Claim | None
    if resume is not None:
        # the first attempt failed on the short path of execute_direct: go on from there
        claim, start = resume.claim, resume.start
    elif adopt is not None:
        if adopt.key != key:
            raise JobError(f"task {task.name}: an adoption of {adopt.key!r} cannot run the job of {key!r}")
        claim = task.claims.get(key)
        if claim is not adopt.claim:
            return None  # its claim was taken over meanwhile: the new holder deals with the work
        start = adopt.since
    elif claimed:
        claim = task.claims.get(key)  # None: a caller that keeps no claim in this task's claims
        start = time.time()
    elif local is not None:
        # this process's own memory: the claim and the check are dict operations
        claim = task.claims.acquire_local(local[0], key, owner)
        if claim is None:
            return None
        if local[1].holds(key):
            task.claims.release_local(local[0], claim)
            return None
        start = claim.value["started"]  # the job began with its claim (one clock reading)
    else:
        claim = await task.claims.acquire(key, owner)
        if claim is None:
            return None
        # the listing this launch came from may be stale: another scheduler may have
        # finished the job (record written, then claim released) since then
        if await task.done.contains(key):
            await _release(task, key)
            return None
        start = time.time()
    attempt = adopt.attempt - 1 if adopt is not None else 0
    adopted = adopt.handle if adopt is not None else None
    record: dict[str, Any]
    job: JobContext | None = None
    # every key the job writes (also beyond its own) is noted, so that a failed attempt
    # removes all of it and downstream waits while the job runs
    if resume is not None:
        journal = resume.journal
    elif plan.bare_journal:
        journal = task._running_journals[key] = WriteJournal()
    else:
        journal = task.start_journal(key)
    succeeded = False
    # the handle of the attempt under way: closed once its outputs are settled
    handles: list[JobHandle] = []
    cleaned = True
    try:
        if not plan.plain:
            await task.begin_job(key)  # fan-out: an earlier run's children go; fan-in: the members
        while True:
            attempt += 1
            if resume is not None and attempt == 1:
                job = resume.job  # its failure is raised below, where the attempt's would be
            else:
                job = JobContext(task, key, attempt, slot=slot)
                task._running_jobs[key] = job  # the attempt under way, for a live view
                if on_state:
                    on_state(task, key, JobState.RUNNING, attempt)
            if attempt > 1:
                await _show_state(task, claim, JobState.RUNNING, attempt=attempt, retry_at=None)
            if hooks.wants("job_started"):
                await hooks.emit(Event("job_started", task.name, key, attempt))
            try:
                if resume is not None and attempt == 1:
                    raise resume.error
                with journaling(journal):
                    if adopted is not None:
                        handle, adopted = adopted, None
                        handles.append(handle)
                        assert adopt is not None
                        outcome = await _follow(task, job, handle, since=adopt.run_at)
                    elif plan.direct and (call := task.direct_call(job)) is not None:
                        outcome = await _call(task, job, call)
                    else:
                        # a claim in this process's memory dies with it: noting the run in
                        # it (for a scheduler started after a crash) would serve nobody
                        outcome = await _attempt(task, job, claim if local is None else None, handles)
            except ConfigurationError:
                # the task's settings are wrong (a manifest the cluster refuses): no attempt
                # can succeed and the job is not to blame; nothing is recorded, the key
                # stays ready for a corrected run
                raise
            except Exception as exc:
                job.log(f"attempt {attempt} failed: {type(exc).__name__}: {exc}")
                cleaned = await task.cleanup_outputs(key, journal)
                if task.retry.should_retry(exc, attempt):
                    delay = task.retry.delay(attempt)
                    if on_state:
                        on_state(task, key, JobState.RETRYING, attempt)
                    await _show_state(
                        task, claim, JobState.RETRYING, attempt=attempt, retry_at=time.time() + delay
                    )
                    await hooks.emit(Event("job_retrying", task.name, key, attempt, error=exc, delay=delay))
                    await task._write_log(job)
                    await asyncio.sleep(delay)
                    # again: the cleanup above fails when the backend is down, and the failed
                    # attempt's debris (e.g. an S3 multipart upload) would stay
                    cleaned = await task.cleanup_outputs(key, journal)
                    # held during the delay (a pod keeps its name), freed for the next attempt
                    await _close(task, handles)
                    continue
                info = getattr(exc, "outcome", None)
                known = info if isinstance(info, JobOutcome) else None
                record = make_record(
                    task=task.name,
                    key=key,
                    success=False,
                    attempts=attempt,
                    start=start,
                    end=time.time(),
                    runner=task.runner,
                    host=(known.host if known and known.host else HOSTNAME),
                    exit_code=known.exit_code if known else None,
                    error=error_info(exc),
                    extra=_fields(task, record_fields, known.extra if known else None),
                )
                job.log(record["error"]["traceback"].rstrip())
                break
            if outcome is None:
                host, exit_code, extra = HOSTNAME, None, None
            else:
                host, exit_code, extra = outcome.host or HOSTNAME, outcome.exit_code, outcome.extra
            own = _own_writes(plan, key, journal)
            if own is None:
                fields = task.record_fields(key, journal)
                if fields:
                    extra = {**extra, **fields} if extra else fields
            record = make_record(
                task=task.name,
                key=key,
                success=True,
                attempts=attempt,
                start=start,
                end=time.time(),
                runner=task.runner,
                host=host,
                exit_code=exit_code,
                extra=_fields(task, record_fields, extra),
            )
            held = own if own is not None else _outputs_written(task, key, journal)
            if held:
                record["outputs"] = held
            break
        if job._log or not plan.plain_log:
            await task._write_log(job)
        if plan.records is not None:
            plan.records.put_now(key, record)
        else:
            await task.done.put(key, record)
        succeeded = record["success"]
    except BaseException:
        # cancelled (Ctrl-C) or the record could not be written: leave no half output, free
        # the key so a later run does the job again
        await asyncio.shield(_abandon(task, key, claim, journal, handles))
        raise
    finally:
        task.end_journal(key, succeeded)
        if job is not None and task._running_jobs.get(key) is job:
            del task._running_jobs[key]
    if not cleaned and claim is not None and task.claims.get(key) is claim:
        # a failure whose partial outputs could not be removed (the backend is down): the
        # record is written, but the key stays held (its claim handed to nobody, its work
        # not let go) until the next claim check removes the debris (see task/recovery.py)
        try:
            await task.claims.abandon(claim)
        except Exception as exc:
            log.warning("task %s: could not mark the claim on %r abandoned: %s", task.name, key, exc)
    else:
        if handles:
            await _close(task, handles)  # recorded: nothing of the job is needed any more
        if claim is None or task.claims.get(key) is claim:
            if local is not None and claim is not None:
                task.claims.release_local(local[0], claim)
            else:
                await _release(task, key)
    if on_state:
        on_state(task, key, JobState.SUCCEEDED if record["success"] else JobState.FAILED, attempt)
    event = "job_succeeded" if record["success"] else "job_failed"
    if hooks.wants(event):
        await hooks.emit(Event(event, task.name, key, attempt, record=record))
    return record


@dataclass(eq=False, slots=True)
class _Failed:
    """A first attempt that failed on the short path of :func:`execute_direct`, handed to
    :func:`execute` to go on with (cleanup, retries, the failure record)."""

    claim: Claim
    start: float
    journal: WriteJournal
    job: JobContext
    error: Exception


def direct_lane(task: Task, hooks: Hooks | None = None) -> bool:
    """Whether the jobs of ``task`` may run on the short path of :func:`execute_direct`:
    claims and records in this process's memory, a plain task whose attempts are direct
    calls without a time limit, no hook listening to a job's events."""
    plan = _plan(task)
    if not plan.lean or task.timeout is not None:
        return False
    if hooks is not None and hooks and any(hooks.wants(e) for e in _JOB_EVENTS):
        return False
    return True


_JOB_EVENTS = ("job_started", "job_succeeded", "job_failed", "job_retrying")


class DirectLane:
    """What :func:`execute_direct` keeps from one job to the next of a worker running
    them one after another: a write journal made current once (cleared for each job;
    replaced after a job that kept it), the claim made once per task and owner."""

    __slots__ = ("_journal", "_token")

    def __init__(self) -> None:
        self._journal: WriteJournal | None = None
        self._token: Any = None

    def journal(self) -> WriteJournal:
        """The current journal, emptied (made current in the caller's context, which is
        the worker's own asyncio task)."""
        journal = self._journal
        if journal is None:
            journal = self._journal = WriteJournal()
            self._token = enter_journal(journal)
        else:
            journal.clear()
        return journal

    def close(self) -> None:
        """No journal current any more (before a job's journal is kept beyond it, and
        when the worker ends)."""
        if self._journal is not None:
            self._journal = None
            leave_journal(self._token)
            self._token = None


async def execute_direct(
    task: Task,
    key: str,
    owner: str,
    lane: DirectLane,
    slot: Slot,
    record_fields: dict[str, Any] | None,
    on_state: StateCallback,
    *,
    slim: bool = False,
) -> dict[str, Any] | None:
    """:func:`execute` for a task that :func:`direct_lane` admits, with ``slot`` of the
    task's executor, in a worker that runs such jobs one after another (``lane``): the
    same claim, call, record and release, as a straight line of dict operations around
    the call. The caller shows the job as running and succeeded (``on_state`` is told of
    the states of a failed call only: it goes on through :func:`execute`, which cleans up,
    retries and records the failure, as its first attempt).

    ``slim``: the caller reads no more of the record of a success than its ``success``,
    ``attempts``, ``duration``, ``end_time`` and ``outputs``: a success that wrote its key
    into every output (the common case) then returns only those, and its record, which
    differs from the task's other such records only in its key and times, is stored from
    them without being made as a dict (the same record reads back)."""
    plan: _Plan = task._lifecycle_plan
    live, done = plan.local  # type: ignore[misc]
    claims = task.claims
    base = plan.claim_base
    if base is None or base[0] is not owner:
        base = plan.claim_base = (owner, make_claim(owner, task.name, "", 0.0, claims.lease))
    start = time.time()
    start_text = utcnow_iso(start)
    claim = claims.acquire_local(
        live,
        key,
        owner,
        value={**base[1], "key": key, "start_time": start_text, "started": start, "heartbeat": start},
    )
    if claim is None:
        return None
    if done.holds(key):
        claims.release_local(live, claim)
        return None
    journal = task._running_journals[key] = lane.journal()
    job = JobContext(task, key, 1, started=start, slot=slot)
    task._running_jobs[key] = job
    call = task.direct_call(job)
    try:
        if call is None:
            raise _NotDirect
        func, kwargs = call
        await func(**kwargs)
    except _NotDirect:
        task.end_journal(key, True)
        del task._running_jobs[key]
        claims.release_local(live, claim)
        return await execute(
            task, key, owner=owner, on_state=on_state, slot=slot, record_fields=record_fields
        )
    except Exception as exc:
        lane.close()  # the journal goes on with the job
        return await execute(
            task,
            key,
            owner=owner,
            on_state=on_state,
            slot=slot,
            record_fields=record_fields,
            resume=_Failed(claim, start, journal, job, exc),
        )
    except BaseException:
        lane.close()
        try:
            await asyncio.shield(_abandon(task, key, claim, journal, []))
        finally:
            task.end_journal(key, False)
            if task._running_jobs.get(key) is job:
                del task._running_jobs[key]
        raise
    end = time.time()
    own = _own_writes(plan, key, journal)
    end_text = utcnow_iso(end)
    duration = round(end - start, 6)
    put = plan.put_record if own == [] else None
    if put is not None and plan.put_record_for != (
        task.version,
        task.runner,
        tuple(record_fields) if record_fields else (),
    ):
        put = None  # (the task's record fields are not those it was made for)
    record: dict[str, Any]
    if put is not None and slim:
        # what the scheduler reads of it; the record is stored from the key and times
        record = {"success": True, "attempts": 1, "duration": duration, "end_time": end_text}
    else:
        record = _direct_record(task, key, start_text, end_text, duration, record_fields, own, journal)
    try:
        if job._log:
            await task._write_log(job)
        values = (key, round(start * 1_000_000), end_text, duration)  # (the start as utcnow_iso reads it)
        if record_fields:
            values += tuple(record_fields.values())
        if put is None or not put(key, values):
            full = record if "task" in record else None
            if full is None:
                full = record = _direct_record(
                    task, key, start_text, end_text, duration, record_fields, own, journal
                )
            done.put_now(key, full)
            if own == [] and put is None and plan.put_record_tries < 8:
                # the records of the task's next such successes are made from this one
                plan.put_record_tries += 1
                names = ("key", "start_time", "end_time", "duration")
                extra = tuple(record_fields) if record_fields else ()
                plan.put_record = done.maker_now(key, names + extra)
                plan.put_record_for = (task.version, task.runner, extra)
    except BaseException:
        lane.close()
        await asyncio.shield(_abandon(task, key, claim, journal, []))
        task.end_journal(key, False)
        del task._running_jobs[key]
        raise
    task.end_journal(key, True)
    if task._running_jobs.get(key) is job:
        del task._running_jobs[key]
    if claims.get(key) is claim:
        claims.release_local(live, claim)
    return record


def _direct_record(
    task: Task,
    key: str,
    start_text: str,
    end_text: str,
    duration: float,
    record_fields: dict[str, Any] | None,
    own: list[str] | None,
    journal: WriteJournal,
) -> dict[str, Any]:
    """The record of a first attempt of :func:`execute_direct` that succeeded: what
    :func:`~pydatatask.task.records.make_record` makes of it, with the task's fields."""
    record: dict[str, Any] = {
        "task": task.name,
        "key": key,
        "state": "succeeded",
        "success": True,
        "attempts": 1,
        "start_time": start_text,
        "end_time": end_text,
        "duration": duration,
        "host": HOSTNAME,
        "runner": task.runner,
        "exit_code": None,
        "error": None,
        "version": task.version,
        "inputs": {},
    }
    if record_fields:
        record.update(record_fields)
    if own is None:
        more = task.record_fields(key, journal)  # keys beyond its own (``wrote``)
        if more:
            record.update(more)
    held = own if own is not None else _outputs_written(task, key, journal)
    if held:
        record["outputs"] = held
    return record


class _NotDirect(Exception):
    """The task handed over no direct call for this job (the general path runs it)."""


async def execute_batch(
    task: Task,
    keys: list[str],
    *,
    owner: str | None = None,
    hooks: Hooks | None = None,
    claimed: bool = False,
    on_state: StateCallback | None = None,
    slot: Any = True,
    record_fields: Mapping[str, dict[str, Any]] | None = None,
    adopt: Adoption | None = None,
    on_records: RecordsCallback | None = None,
) -> dict[str, dict[str, Any]]:
    """Run the jobs of ``keys`` as one batch (one work item for all of them) to their end:
    claims at once, attempts, a record per key, release; see
    :func:`pydatatask.task.batch.execute_batch`. Returns the records by key (keys held by
    another scheduler or already done are left out)."""
    from .batch import execute_batch as run_batch

    return await run_batch(
        task,
        keys,
        owner=owner,
        hooks=hooks,
        claimed=claimed,
        on_state=on_state,
        slot=slot,
        record_fields=record_fields,
        adopt=adopt,
        on_records=on_records,
    )


def _show_running(task: Task, job: JobContext) -> None:
    """Make ``job`` the attempt under way of each of its keys in :attr:`Task.running_jobs`
    (what a live view of a job reads: a batch's attempt is that of every key in it)."""
    for key in job.keys:
        task._running_jobs[key] = job


def _end_running(task: Task, job: JobContext, keys: Iterable[str] | None = None) -> None:
    """``job`` is no longer under way for ``keys`` (default: all of its keys) in
    :attr:`Task.running_jobs`; a key that a later attempt holds keeps that one."""
    for key in job.keys if keys is None else keys:
        if task._running_jobs.get(key) is job:
            del task._running_jobs[key]


def _fields(task: Task, given: dict[str, Any] | None, extra: dict[str, Any] | None) -> dict[str, Any]:
    """The record fields beyond the outcome: the task version, the inputs' versions (from
    ``given``), then what the attempt added."""
    fields: dict[str, Any] = {"version": task.version, "inputs": {}}
    if given:
        fields.update(given)
    if extra:
        fields.update(extra)
    return fields


@dataclass(eq=False, slots=True)
class _Plan:
    """What the lifecycle works out once per task, not per job (again when links are added):
    where claims and records go, and which of its steps the task needs at all."""

    #: ``len(task.links)`` when it was made
    links: int
    #: the memory stores of this process that the claims and records go to, when both do
    #: (then nothing outside this process can claim or finish its keys)
    local: tuple[MemoryMetadataRepository, MemoryMetadataRepository] | None
    #: the memory store of this process the records go to, if they do
    records: MemoryMetadataRepository | None
    #: neither fan-out nor fan-in, and the task keeps the default record fields and start of
    #: a job: a job begins at once, and one that wrote only its own key into outputs of the
    #: task records no more than which outputs hold it
    plain: bool
    #: the journal of a job needs no hook (claims in memory, no fan-out children to check)
    bare_journal: bool
    #: the task keeps the default log writing (nothing to write without log lines)
    plain_log: bool
    #: the task may hand over its attempts as direct calls (:meth:`Task.direct_call`)
    direct: bool
    #: ``{id(repository): link name}`` of the outputs, in link order, when they are
    #: distinct repositories and none is a view (otherwise None: the general path)
    outputs: dict[int, str] | None
    #: claims and records in this process's memory, a plain task with the default log and
    #: journal whose attempts are direct calls: :func:`execute_direct` may run its jobs
    lean: bool = False
    #: the owner and the claim of :func:`execute_direct` made once (its key and times
    #: are set per job)
    claim_base: tuple[str, dict[str, Any]] | None = None
    #: what stores the record of a success of :func:`execute_direct` that wrote its key
    #: into every output, from its key and times alone (made from such a record stored
    #: once: :meth:`~pydatatask.repository.memory.MemoryMetadataRepository.maker_now`)
    put_record: Callable[[str, tuple[Any, ...]], bool] | None = None
    #: how many such records were stored without ``put_record`` being made of them
    put_record_tries: int = 0
    #: the task's version, runner and record fields' names when ``put_record`` was made
    put_record_for: tuple[Any, ...] = ()


def _plan(task: Task) -> _Plan:
    """The plan of ``task`` (made at its first job, and again when its links change)."""
    plan: _Plan | None = task._lifecycle_plan
    if plan is not None and plan.links == len(task.links):
        return plan
    # the default stores are fixed from their first write on (see
    # DeferredMetadataRepository.bind): this job writes both
    live = process_memory(task.live, writing=True)
    done = process_memory(task.done, writing=True)
    live_target = task.live.target if isinstance(task.live, DeferredMetadataRepository) else task.live
    cls = type(task)
    plain = (
        not task.fan_out
        and task.group_by is None
        and cls.record_fields is _base.Task.record_fields
        and cls.begin_job is _base.Task.begin_job
    )
    named: dict[int, str] = {}
    outputs: dict[int, str] | None = named
    for link in task.output_links:
        repo = link.repository
        if getattr(repo, "children", None) or id(repo) in named:
            outputs = None  # a view (its keys are worked out through its children), or shared
            break
        named[id(repo)] = link.name
    plan = task._lifecycle_plan = _Plan(
        links=len(task.links),
        local=None if live is None or done is None else (live, done),
        records=done,
        plain=plain,
        bare_journal=(
            not task.fan_out
            and isinstance(live_target, MemoryMetadataRepository)
            and cls.start_journal is _base.Task.start_journal
            and cls._durable_journal is _base.Task._durable_journal
        ),
        plain_log=cls._write_log is _base.Task._write_log,
        direct=cls.direct_call is not _base.Task.direct_call,
        outputs=outputs if plain else None,
    )
    plan.lean = (
        plan.local is not None
        and plain
        and plan.bare_journal
        and plan.plain_log
        and plan.direct
        and task.batch == 1
    )
    return plan


def _own_writes(plan: _Plan, key: str, journal: WriteJournal) -> list[str] | None:
    """When the job of ``key`` wrote only ``key`` itself, straight into output
    repositories of its task (no view, no fan-out or fan-in, no key beyond its own): what
    its record's ``outputs`` field holds, ``[]`` when every output holds the key (then
    there is no field). None otherwise: the general path works it out."""
    outputs = plan.outputs
    if outputs is None:
        return None
    entries = journal.entries()
    if not entries:
        return None
    written: set[int] = set()
    for repo, written_key in entries:
        if written_key != key or id(repo) not in outputs:
            return None  # a key beyond its own, or a write beyond the outputs: the general path
        written.add(id(repo))
    if len(written) == len(outputs):
        return []
    return [name for ident, name in outputs.items() if ident in written]


def _outputs_written(task: Task, key: str, journal: WriteJournal) -> list[str] | None:
    """The output links that hold ``key`` after a successful job, as its journal saw the
    writes, when they are not all of them; None when every output holds it, or when the
    job wrote none of its outputs through a repository (a command or pod writing them in
    place): then every output is expected to hold it."""
    written = journal.keys_by_repository()
    if not written:
        return None
    outputs = task.output_links
    names = []
    for link in outputs:
        direct = written.get(id(link.repository))
        if (direct is not None and key in direct) or key in visible_keys(link.repository, written):
            names.append(link.name)
    if len(names) == len(outputs):
        return None
    if not names:
        stored = task._output_repositories()
        if not any(repo_id in stored for repo_id in written):
            return None
    return names


async def _attempt(
    task: Task, job: JobContext, claim: Claim | None, handles: list[JobHandle]
) -> JobOutcome | None:
    """One attempt: prepare, start, wait and finish (within the time limit, which counts
    from the handle's start). The handle goes into ``handles``, still open: the caller
    closes it once the attempt's outputs are removed or recorded."""
    work = await task.prepare(job)
    executor = task.executor
    given = job.slot if isinstance(job.slot, Slot) and job.slot.executor is executor else None
    slot = given or await _acquire(executor, task.resources)
    try:
        planned = executor.planned_info(work, slot) if claim is not None else None
        if planned and claim is not None:
            # a scheduler killed while the work is being set up leaves what recovery removes
            if not await task.claims.update(claim, run=planned):
                raise JobError(
                    f"task {task.name}: the claim on {job.key!r} was taken over by another scheduler"
                )
        handle = await executor.start(work, slot)
        handles.append(handle)
        try:
            if handle.info and claim is not None:
                # before anything else: a scheduler killed from now on leaves what recovery
                # needs (and when the work began and which attempt it is, for an adoption)
                if not await task.claims.update(
                    claim, run=handle.info, run_at=time.time(), attempt=job.attempt
                ):
                    raise JobError(
                        f"task {task.name}: the claim on {job.key!r} was taken over by another scheduler"
                    )
        except BaseException:
            await asyncio.shield(_stop(handle, task.cancel_grace))
            raise
        return await _follow(task, job, handle)
    finally:
        if given is None:
            executor.release(slot)


async def _call(task: Task, job: JobContext, call: DirectCall) -> JobOutcome | None:
    """One attempt as a direct call (:meth:`Task.direct_call`): awaited here, within the
    time limit, in a slot of the task's executor; an exception fails the attempt."""
    func, kwargs = call
    given = job.slot if isinstance(job.slot, Slot) and job.slot.executor is task.executor else None
    slot = given or await _acquire(task.executor, task.resources)
    try:
        limit = task.timeout
        if limit is None:
            await func(**kwargs)
            return None
        try:
            async with asyncio.timeout(limit):
                await func(**kwargs)
        except TimeoutError as exc:
            raise JobTimeoutError(f"task {task.name}: {_job_name(job)} timed out after {limit:g}s") from exc
        return None
    finally:
        if given is None:
            task.executor.release(slot)


async def _follow(
    task: Task, job: JobContext, handle: JobHandle, *, since: float | None = None
) -> JobOutcome | None:
    """Wait for ``handle`` (within the time limit, counted from its start, or from
    ``since`` for work started before this process took it over), keep its logs and
    finish the attempt. A failure or cancellation stops the work first."""
    job.handle = handle  # JobContext.handle: what a live view reads the output so far from
    try:
        limit = task.timeout
        if limit is None:
            outcome = await handle.wait()
            if _reads_logs(task, job, handle):
                await _keep_logs(job, handle)
            return await task.finish(job, outcome)
        await handle.started()
        left = limit if since is None else max(0.0, limit - (time.time() - since))
        try:
            async with asyncio.timeout(left):
                outcome = await handle.wait()
                if _reads_logs(task, job, handle):
                    await _keep_logs(job, handle)
                return await task.finish(job, outcome)
        except TimeoutError as exc:
            message = f"task {task.name}: {_job_name(job)} timed out after {limit:g}s"
            if not handle.interruptible:
                message += (
                    f"; the call cannot be interrupted and may still be running in "
                    f"{task.executor.describe()}: whatever it returns is discarded"
                )
                log.warning("%s", message)
            await _stop_keeping_output(task, job, handle)
            raise JobTimeoutError(message) from exc
    except BaseException:
        await asyncio.shield(_stop(handle, task.cancel_grace))
        raise
    finally:
        job.handle = None


def _job_name(job: JobContext) -> str:
    """``job 'k'``, or for a batch ``batch of 3 keys from 'k'``."""
    if len(job.keys) > 1:
        return f"batch of {len(job.keys)} keys from {job.key!r}"
    return f"job {job.key!r}"


async def run_attempt(task: Task, job: JobContext) -> JobOutcome | None:
    """One attempt of ``job`` on the task's executor, without claim, retries or record (a
    process that runs one job on behalf of another scheduler, e.g. inside a pod)."""
    handles: list[JobHandle] = []
    try:
        return await _attempt(task, job, None, handles)
    finally:
        await _close(task, handles)


async def _acquire(executor: Executor, resources: Resources) -> Slot:
    """A slot of ``executor`` for a job run without the scheduler's (``Pipeline.launch``):
    waits for room."""
    delay = 0.005
    while (slot := executor.acquire(resources)) is None:  # noqa: ASYNC110 - capacity frees without an event
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.1)
    return slot


async def _stop(handle: JobHandle, grace: float) -> None:
    try:
        await handle.cancel(grace)
    except Exception as exc:  # what the executor could not stop is named; the job ends anyway
        log.warning("could not stop %s: %s", handle.info or "a job", exc)


async def _close(task: Task, handles: list[JobHandle]) -> None:
    """Close the handles in ``handles`` (and forget them)."""
    while handles:
        handle = handles.pop()
        try:
            await handle.close()
        except Exception as exc:  # the job is settled; what the executor still holds is named
            log.warning("task %s: could not free %s: %s", task.name, handle.info or "a finished job", exc)


def _reads_logs(task: Task, job: JobContext, handle: JobHandle) -> bool:
    """Whether the work's printed output is read once it has ended: the task keeps logs,
    or a batch reads its keys' results from it. Function calls print none; a pod's log is
    one more API request per job, not made for a task without ``logs``."""
    return type(handle).logs is not JobHandle.logs and (task.logs is not None or job.batched)


async def _keep_logs(job: JobContext, handle: JobHandle) -> None:
    printed = await handle.logs()
    if printed:
        job.log("output:\n" + printed.decode("utf-8", "replace").rstrip("\n"))


async def _stop_keeping_output(task: Task, job: JobContext, handle: JobHandle) -> None:
    """Stop the work of a timed-out attempt, keeping what it printed in the job's log (of
    every key of a batch), as for work that ended: what a user debugging the timeout
    needs. The executor's log of the work is read before the stop (a deleted pod's log
    goes with it), what the task keeps itself after it (a process's output files, with
    what it printed when told to stop). Output that cannot be read is named instead."""
    if type(handle).logs is not JobHandle.logs:
        try:
            await _keep_logs(job, handle)
        except Exception as exc:
            job.log(f"the output of the work could not be read before it was stopped: {exc}")
    await handle.cancel(task.cancel_grace)
    try:
        await task._keep_stopped_output(job)
    except Exception as exc:
        job.log(f"the output of the stopped work could not be kept: {type(exc).__name__}: {exc}")


async def _abandon(
    task: Task, key: str, claim: Claim | None, journal: WriteJournal | None, handles: list[JobHandle]
) -> None:
    if claim is not None and task.claims.get(key) is not claim:
        await _close(task, handles)  # the work was stopped; the claim's new holder adopts nothing of it
        return  # the claim was lost to another scheduler: its outputs are not ours to touch
    cleaned = False
    try:
        cleaned = await task.cleanup_outputs(key, journal)
    finally:
        if cleaned or claim is None:
            await _close(task, handles)
            await _release(task, key)
        else:
            # the partial outputs are still there (the backend is down?): releasing the
            # claim would leave an output without a record, which blocks the key for good.
            # Hand the claim to nobody with an expired heartbeat instead, so that the next
            # claim check (of any scheduler) cleans up and frees the key.
            try:
                await task.claims.abandon(claim)
            except Exception as exc:
                log.warning("task %s: could not mark the claim on %r abandoned: %s", task.name, key, exc)


async def _show_state(task: Task, claim: Claim | None, state: JobState, **fields: Any) -> None:
    """Write ``state`` (and ``fields``) into the claim, so that ``status`` in another
    process sees a job waiting to retry, and when."""
    if claim is None:
        return
    try:
        await task.claims.update(claim, state=state.value, **fields)
    except Exception as exc:  # the live repository is unreachable: the job goes on
        log.warning(
            "task %s: could not note %s in the claim on %r: %s", task.name, state.value, claim.key, exc
        )


async def _release(task: Task, key: str) -> None:
    """Drop the claim on ``key`` (held, or in ``live`` only for a caller that claimed it)."""
    claim = task.claims.get(key)
    if claim is not None:
        store = process_memory(task.live)
        if store is not None:
            task.claims.release_local(store, claim)
            return
        await task.claims.release(claim)
    else:
        await task.live.delete(key)
