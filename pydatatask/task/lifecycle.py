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

A :class:`~pydatatask.errors.ConfigurationError` from an attempt (a template that does not
render, a manifest the cluster refuses) is not the job's failure: it propagates like a
cancellation, with nothing recorded. Cancellation (Ctrl-C, a lost claim) cancels the running handle with the executor's grace,
removes partial outputs, writes no record and propagates. :func:`recover` deals with a
stale claim another scheduler left: it takes the claim over by compare-and-swap, stops
what the executor still runs of it (:meth:`~pydatatask.executor.base.Executor.recover`),
removes partial outputs and frees the key.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, JobError, JobTimeoutError
from ..executor.base import Executor, JobHandle, Resources, Slot
from ..repository.journal import WriteJournal, journaling
from .base import JobContext, JobOutcome
from .claims import Claim, new_owner
from .hooks import Event, Hooks
from .records import HOSTNAME, JobState, error_info, make_record

if TYPE_CHECKING:
    from .base import Task

__all__ = ("execute", "recover", "run_attempt", "StateCallback")

log = logging.getLogger("pydatatask.task")

_NO_HOOKS = Hooks()

#: ``on_state(task, key, state, attempt)``: told of every change of a job's state
StateCallback = Callable[["Task", str, JobState, int], None]


async def execute(
    task: Task,
    key: str,
    *,
    owner: str | None = None,
    hooks: Hooks | None = None,
    claimed: bool = False,
    on_state: StateCallback | None = None,
    slot: Any = True,
) -> dict[str, Any] | None:
    """Run the job of ``key`` to its end: claim, attempts, record, release.

    Returns the job record, or None if another scheduler holds the claim. With ``claimed``
    the caller holds the claim already. Cancellation removes partial outputs and the claim,
    writes no record, and propagates.
    """
    owner = owner or new_owner()
    hooks = hooks if hooks is not None else _NO_HOOKS
    if not claimed:
        if not await task.claim(key, owner):
            return None
        # the listing this launch came from may be stale: another scheduler may have
        # finished the job (record written, then claim released) since then
        if await task.done.contains(key):
            await task.release(key)
            return None
    # None: the task claims by other means (a pod holds the key), nothing to renew here
    claim = task.claims.get(key)
    start = time.time()
    attempt = 0
    record: dict[str, Any]
    job: JobContext | None = None
    # every key the job writes (also beyond its own) is noted, so that a failed attempt
    # removes all of it and downstream waits while the job runs
    journal = task.start_journal(key)
    succeeded = False
    # the handle of the attempt under way: closed once its outputs are settled
    handles: list[JobHandle] = []
    cleaned = True
    try:
        await task.begin_job(key)  # fan-out: an earlier run's children go; fan-in: the members
        while True:
            attempt += 1
            job = JobContext(task, key, attempt, slot=slot)
            if on_state:
                on_state(task, key, JobState.RUNNING, attempt)
            if attempt > 1:
                await _show_state(task, claim, JobState.RUNNING, attempt=attempt, retry_at=None)
            if hooks.wants("job_started"):
                await hooks.emit(Event("job_started", task.name, key, attempt))
            try:
                with journaling(journal):
                    outcome = await _attempt(task, job, claim, handles)
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
                    extra=known.extra if known else None,
                )
                job.log(record["error"]["traceback"].rstrip())
                break
            outcome = outcome or JobOutcome()
            fields = task.record_fields(key, journal)
            if fields:
                outcome.extra = {**outcome.extra, **fields}
            record = make_record(
                task=task.name,
                key=key,
                success=True,
                attempts=attempt,
                start=start,
                end=time.time(),
                runner=task.runner,
                host=outcome.host or HOSTNAME,
                exit_code=outcome.exit_code,
                extra=outcome.extra,
            )
            break
        await task._write_log(job)
        await task.done.put(key, record)
        succeeded = record["success"]
    except BaseException:
        # cancelled (Ctrl-C) or the record could not be written: leave no half output, free
        # the key so a later run does the job again
        await asyncio.shield(_abandon(task, key, claim, journal, handles))
        raise
    finally:
        task.end_journal(key, succeeded)
    if not cleaned and claim is not None and task.claims.get(key) is claim:
        # a failure whose partial outputs could not be removed (the backend is down): the
        # record is written, but the key stays held (its claim handed to nobody, its work
        # not let go) until the next claim check removes the debris (see recover())
        try:
            await task.claims.abandon(claim)
        except Exception as exc:
            log.warning("task %s: could not mark the claim on %r abandoned: %s", task.name, key, exc)
    else:
        await _close(task, handles)  # recorded: nothing of the job is needed any more
        if claim is None or task.claims.get(key) is claim:
            await task.release(key)
    if on_state:
        on_state(task, key, JobState.SUCCEEDED if record["success"] else JobState.FAILED, attempt)
    event = "job_succeeded" if record["success"] else "job_failed"
    if hooks.wants(event):
        await hooks.emit(Event(event, task.name, key, attempt, record=record))
    return record


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
        planned = executor.planned_info(work, slot)
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
                # before anything else: a scheduler killed from now on leaves what recovery needs
                if not await task.claims.update(claim, run=handle.info):
                    raise JobError(
                        f"task {task.name}: the claim on {job.key!r} was taken over by another scheduler"
                    )
            limit = task.timeout
            if limit is None:
                outcome = await handle.wait()
                if type(handle).logs is not JobHandle.logs:  # function calls keep none
                    await _keep_logs(job, handle)
                return await task.finish(job, outcome)
            await handle.started()
            try:
                async with asyncio.timeout(limit):
                    outcome = await handle.wait()
                    if type(handle).logs is not JobHandle.logs:
                        await _keep_logs(job, handle)
                    return await task.finish(job, outcome)
            except TimeoutError as exc:
                message = f"task {task.name}: job {job.key!r} timed out after {limit:g}s"
                if not handle.interruptible:
                    message += (
                        f"; the call cannot be interrupted and may still be running in "
                        f"{executor.describe()}: whatever it returns is discarded"
                    )
                    log.warning("%s", message)
                await handle.cancel(task.cancel_grace)
                raise JobTimeoutError(message) from exc
        except BaseException:
            await asyncio.shield(_stop(handle, task.cancel_grace))
            raise
    finally:
        if given is None:
            executor.release(slot)


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


async def _keep_logs(job: JobContext, handle: JobHandle) -> None:
    printed = await handle.logs()
    if printed:
        job.log("output:\n" + printed.decode("utf-8", "replace").rstrip("\n"))


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
            await task.release(key)
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


async def recover(task: Task, key: str, value: Any) -> None:
    """Take over the stale claim ``value`` on ``key`` atomically, stop what is left of its
    work, remove partial outputs, then free the key.

    Of several schedulers recovering the same claim, only the one whose compare-and-swap
    succeeds cleans up; the others leave it alone. A cleanup that fails keeps the takeover
    claim: it goes stale in its turn and the cleanup is tried again.
    """
    run = value.get("run") if isinstance(value, dict) else None
    # the takeover keeps "run": a recovery that cannot reach the work leaves it to the next
    claim = await task.claims.take_over(key, value, **({"run": run} if isinstance(run, dict) and run else {}))
    if claim is None:
        return
    record = (await task.done.get_many([key])).get(key)
    if isinstance(record, dict) and record.get("success") is True:
        # the job succeeded (its record is written) and died before dropping its claim:
        # its outputs are complete, keep them
        await task.claims.release(claim)
        return
    log.warning(
        "task %s: job %r was interrupted (claim by %s on %s); cleaning up%s",
        task.name,
        key,
        value.get("owner") if isinstance(value, dict) else value,
        value.get("host") if isinstance(value, dict) else "?",
        " after its failure record" if record is not None else " to run it again",
    )
    handles: list[JobHandle] = []
    if isinstance(run, dict) and run:
        try:
            handle = await task.executor.recover(run)
            if handle is not None:
                handles.append(handle)
                await _stop_recovered(task, key, handle)
        except Exception as exc:
            # the host is unreachable (or cannot tell): the claim stays, handed to nobody, and
            # the next check tries again; the job never runs twice at once
            log.warning(
                "task %s: could not check the interrupted job %r (%s: %s); will try again",
                task.name,
                key,
                type(exc).__name__,
                exc,
            )
            try:
                await task.claims.abandon(claim)
            except Exception:
                task.claims.forget(claim)  # stale by its lease in its turn
            return
    written = value.get("wrote") if isinstance(value, dict) else None
    if not await task.cleanup_outputs(key, task.journal_from_claim(written)):
        task.claims.forget(claim)  # the work stays held: the next recovery finds it again
        return
    try:
        for handle in handles:
            await handle.close()
    except Exception as exc:  # still held: the claim stays, the next check frees it
        log.warning("task %s: could not free the interrupted job %r: %s; will try again", task.name, key, exc)
        task.claims.forget(claim)
        return
    await task.claims.release(claim)


async def _stop_recovered(task: Task, key: str, handle: JobHandle) -> None:
    """What a dead scheduler left running: stopped (adoption of a handle whose outcome can
    still be recorded is the next step; until then its work is done again). The handle is
    closed once the partial outputs are gone."""
    await handle.cancel(task.cancel_grace)
    log.info("task %s: stopped what the interrupted job of %r left running", task.name, key)
