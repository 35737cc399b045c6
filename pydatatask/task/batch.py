"""The life of a batch: the job lifecycle of :mod:`pydatatask.task.lifecycle` for up to
``task.batch`` keys run as one execution unit.

:func:`execute_batch` (also exported by :mod:`pydatatask.task.lifecycle`)::

    claim every key at once (Claims.acquire_many: one object for the batch where live
    keeps bundles, see batch_claims; else one bulk create where the backend has one);
    keys another scheduler holds leave the batch
    re-check ``done`` for the claimed keys in one call (done.get_many)
    attempts, under the task's retry policy, each for the keys still pending:
        one work item for all of them (task.prepare(job) with job.keys), one handle
        task.finish(job, outcome): a BatchOutcome names the keys that failed; raising (or
        the batch's time limit) fails every key of the attempt
        the keys that succeeded: their records at once (done.put_many), their claims
        released (live.delete_many)
        the keys that failed: their partial outputs removed (only theirs: the journal's
        entries of each key), then retried as a smaller batch, or recorded failed when
        the policy gives up
    the logs (the batch's lines under each key), hooks and on_state per key

Every claim of a batch names it (``"batch": id``); the work's run information is noted in
each claim, so that the recovery of a dead scheduler (:mod:`pydatatask.task.recovery`)
handles each key on its own: a stale claim is taken over key by key and the key runs again
in a later batch. Cancellation removes the partial outputs of every key not yet recorded
and releases their claims.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, CorruptValueError, JobError
from ..executor.base import JobHandle, Slot
from ..repository.journal import WriteJournal, journaling
from . import lifecycle as _lc
from .base import BatchOutcome, JobContext, JobOutcome, batch_key_of
from .claims import Claim, new_owner
from .hooks import Event, Hooks
from .lifecycle import Adoption, StateCallback
from .records import HOSTNAME, JobState, error_info, make_record

if TYPE_CHECKING:
    from .base import Task

__all__ = ("execute_batch",)

log = logging.getLogger("pydatatask.task")

_NO_HOOKS = Hooks()


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
) -> dict[str, dict[str, Any]]:
    """Run the jobs of ``keys`` as one batch to their end; return the record of each key
    run, by key (keys another scheduler holds, or found done, are left out: a batch left
    empty returns ``{}``).

    The keyword arguments are those of :func:`~pydatatask.task.lifecycle.execute`;
    ``record_fields`` are given per key (``{key: fields}``). An ``adopt`` runs the adopted
    work of its one key (``keys`` must be ``[adopt.key]``) as
    :func:`~pydatatask.task.lifecycle.execute` does.
    Cancellation removes the partial outputs of the keys not yet recorded and their
    claims, writes no record for them, and propagates.
    """
    keys = list(dict.fromkeys(keys))
    if adopt is not None:
        if keys != [adopt.key]:
            raise JobError(f"task {task.name}: the adopted work of {adopt.key!r} runs alone, not in a batch")
        fields = record_fields.get(adopt.key) if record_fields else None
        record = await _lc.execute(
            task,
            adopt.key,
            owner=owner,
            hooks=hooks,
            claimed=claimed,
            on_state=on_state,
            slot=slot,
            record_fields=fields,
            adopt=adopt,
        )
        return {} if record is None else {adopt.key: record}
    if not keys:
        return {}
    batch_id = uuid.uuid4().hex[:12]
    owner = owner or new_owner()
    if not claimed:
        held = await task.claims.acquire_many(keys, owner, batch=batch_id)
        keys = [k for k in keys if k in held]
        if not keys:
            return {}
        # the listing this launch came from may be stale: another scheduler may have
        # finished some of the jobs since then (record written, then claim released)
        done = await _already_done(task, keys)
        if done:
            await task.claims.release_many([held[k] for k in keys if k in done])
            keys = [k for k in keys if k not in done]
            if not keys:
                return {}
    run = _Batch(task, keys, batch_id, hooks if hooks is not None else _NO_HOOKS, on_state, record_fields)
    return await run.run(slot)


async def _already_done(task: Task, keys: list[str]) -> set[str]:
    """The keys of ``keys`` that have a record in ``done`` (one bulk read)."""
    corrupt: set[str] = set()

    def seen(exc: CorruptValueError) -> None:
        if exc.key is not None:
            corrupt.add(exc.key)

    found = await task.done.get_many(keys, on_corrupt=seen)
    return set(found) | (corrupt & set(keys))


def split_journal(journal: WriteJournal, keys: list[str]) -> dict[str, WriteJournal]:
    """The entries of a batch's journal, by the batch key each belongs to (see
    :func:`~pydatatask.task.base.batch_key_of`); entries of no key are left out."""
    own = set(keys)
    parts: dict[str, WriteJournal] = {k: WriteJournal() for k in keys}
    for repo, written in journal.entries():
        key = batch_key_of(written, own)
        if key is not None:
            parts[key].record(repo, written)
    return parts


class _Batch:
    """The state of one batch while it runs."""

    def __init__(
        self,
        task: Task,
        keys: list[str],
        batch_id: str,
        hooks: Hooks,
        on_state: StateCallback | None,
        record_fields: Mapping[str, dict[str, Any]] | None,
    ) -> None:
        self.task = task
        self.keys = keys
        self.id = batch_id
        self.hooks = hooks
        self.on_state = on_state
        self.given = record_fields or {}
        # None: claimed by a caller that keeps no claim in the task's claims
        self.claims: dict[str, Claim | None] = {k: task.claims.get(k) for k in keys}
        self.records: dict[str, dict[str, Any]] = {}
        #: keys not yet recorded (their outputs are removed if the batch is abandoned)
        self.open: set[str] = set(keys)
        #: failed keys whose partial outputs could not be removed
        self.dirty: set[str] = set()
        self.failed_parts: dict[str, WriteJournal] = {}
        self.handles: list[JobHandle] = []
        self.start = time.time()

    def _state(self, keys: list[str], state: JobState, attempt: int) -> None:
        if self.on_state:
            for key in keys:
                self.on_state(self.task, key, state, attempt)

    async def run(self, slot: Any) -> dict[str, dict[str, Any]]:
        task = self.task
        journal = task.start_batch_journal(self.keys)
        pending = list(self.keys)
        attempt = 0
        jobs: list[JobContext] = []  # the attempts, each under way for its keys (a live view)
        try:
            while pending:
                attempt += 1
                job = JobContext(task, pending[0], attempt, slot=slot, keys=list(pending))
                jobs.append(job)
                _lc._show_running(task, job)
                job.log(f"batch {self.id}: attempt {attempt} of {len(pending)} key(s), from {pending[0]!r}")
                self._state(pending, JobState.RUNNING, attempt)
                if attempt > 1:
                    await self._show(pending, JobState.RUNNING, attempt=attempt, retry_at=None)
                if self.hooks.wants("job_started"):
                    for key in pending:
                        await self.hooks.emit(Event("job_started", task.name, key, attempt))
                failed: dict[str, BaseException]
                outcome: JobOutcome | None = None
                try:
                    with journaling(journal):
                        outcome = await self._attempt(job)
                except ConfigurationError:
                    raise  # the task's settings are wrong: nothing is recorded (as in execute)
                except Exception as exc:
                    failed = {k: job.failed.get(k, exc) for k in pending}
                else:
                    failed = _failures(task, job, outcome)
                outcome = outcome or JobOutcome()
                lost = [k for k in pending if self._lost(k)]
                if lost:
                    # taken over by another scheduler: its outputs and its record are not ours
                    log.error(
                        "task %s: batch %s lost the claims on %d key(s) (e.g. %r) to another scheduler",
                        task.name,
                        self.id,
                        len(lost),
                        lost[0],
                    )
                    self.open.difference_update(lost)
                    _lc._end_running(task, job, lost)
                    pending = [k for k in pending if k not in lost]
                    failed = {k: e for k, e in failed.items() if k not in lost}
                parts = split_journal(journal, pending)
                succeeded = [k for k in pending if k not in failed]
                if succeeded:
                    await self._succeed(job, succeeded, outcome, parts)
                    _lc._end_running(task, job, succeeded)
                    for key in succeeded:  # theirs now: never removed with a failed key's
                        for repo, written in parts[key].entries():
                            journal.discard(repo, written)
                if not failed:
                    break
                for key, why in failed.items():
                    job.log(f"{key!r}: attempt {attempt} failed: {type(why).__name__}: {why}")
                await self._cleanup(failed, parts, journal)
                retry = [k for k in pending if k in failed and task.retry.should_retry(failed[k], attempt)]
                give_up = [k for k in pending if k in failed and k not in retry]
                if give_up:
                    await self._fail(job, {k: failed[k] for k in give_up}, parts)
                    _lc._end_running(task, job, give_up)
                if not retry:
                    break
                delay = task.retry.delay(attempt)
                self._state(retry, JobState.RETRYING, attempt)
                await self._show(retry, JobState.RETRYING, attempt=attempt, retry_at=time.time() + delay)
                for key in retry:
                    await self.hooks.emit(
                        Event("job_retrying", task.name, key, attempt, error=failed[key], delay=delay)
                    )
                await self._write_logs(job, retry)
                await asyncio.sleep(delay)
                # again: a cleanup fails when the backend is down
                await self._cleanup({k: failed[k] for k in retry}, split_journal(journal, retry), journal)
                await _lc._close(task, self.handles)
                pending = retry
        except BaseException:
            await asyncio.shield(self._abandon(journal))
            raise
        finally:
            task.end_batch_journal(self.keys, self.failed_parts)
            for job in jobs:
                _lc._end_running(task, job)
        await _lc._close(task, self.handles)
        return self.records

    async def _attempt(self, job: JobContext) -> JobOutcome | None:
        """Prepare, start, note the run in every claim, wait and finish (as one attempt of
        :mod:`~pydatatask.task.lifecycle`, within the task's time limit)."""
        task = self.task
        work = await task.prepare(job)
        executor = task.executor
        given = job.slot if isinstance(job.slot, Slot) and job.slot.executor is executor else None
        slot = given or await _lc._acquire(executor, task.resources)
        try:
            planned = executor.planned_info(work, slot)
            if planned:
                await self._note_run(job, run=planned)
            handle = await executor.start(work, slot)
            self.handles.append(handle)
            try:
                if handle.info:
                    await self._note_run(job, run=handle.info, run_at=time.time(), attempt=job.attempt)
            except BaseException:
                await asyncio.shield(_lc._stop(handle, task.cancel_grace))
                raise
            return await _lc._follow(task, job, handle)
        finally:
            if given is None:
                executor.release(slot)

    async def _note_run(self, job: JobContext, **fields: Any) -> None:
        held = [c for k in job.keys if (c := self.claims.get(k)) is not None]
        # one write for the batch where its claims are one object
        lost = [c.key for c in await self.task.claims.update_many(held, **fields)]
        if lost:
            raise JobError(
                f"task {self.task.name}: the claim on {lost[0]!r} (of {len(lost)} key(s) of batch "
                f"{self.id}) was taken over by another scheduler"
            )

    async def _succeed(
        self, job: JobContext, keys: list[str], outcome: JobOutcome, parts: Mapping[str, WriteJournal]
    ) -> None:
        task = self.task
        end = time.time()
        info = {"size": len(self.keys), "id": self.id}
        records: dict[str, dict[str, Any]] = {}
        for key in keys:
            extra = dict(outcome.extra)
            extra.update(task.record_fields(key, parts[key]))
            extra["batch"] = info
            record = make_record(
                task=task.name,
                key=key,
                success=True,
                attempts=job.attempt,
                start=self.start,
                end=end,
                runner=task.runner,
                host=outcome.host or HOSTNAME,
                exit_code=outcome.exit_code,
                extra=_lc._fields(task, self.given.get(key), extra),
            )
            held = _lc._outputs_written(task, key, parts[key])
            if held is not None:
                record["outputs"] = held
            records[key] = record
        await self._record(job, records)

    async def _fail(
        self, job: JobContext, failed: Mapping[str, BaseException], parts: Mapping[str, WriteJournal]
    ) -> None:
        task = self.task
        end = time.time()
        info = {"size": len(self.keys), "id": self.id}
        records: dict[str, dict[str, Any]] = {}
        for key, exc in failed.items():
            given = getattr(exc, "outcome", None)
            known = given if isinstance(given, JobOutcome) else None
            extra = dict(known.extra) if known else {}
            extra["batch"] = info
            records[key] = make_record(
                task=task.name,
                key=key,
                success=False,
                attempts=job.attempt,
                start=self.start,
                end=end,
                runner=task.runner,
                host=(known.host if known and known.host else HOSTNAME),
                exit_code=known.exit_code if known else None,
                error=error_info(exc),
                extra=_lc._fields(task, self.given.get(key), extra),
            )
            self.failed_parts[key] = parts[key]
        await self._record(job, records)

    async def _record(self, job: JobContext, records: dict[str, dict[str, Any]]) -> None:
        """Logs, records (one bulk write), then the claims of the clean keys (one bulk
        delete); a key whose outputs could not be removed keeps its claim, abandoned."""
        task = self.task
        await self._write_logs(job, list(records), records)
        try:
            await task.done.put_many(records)
        except BaseException:
            # some may be stored: a record without its outputs (removed by the abandon) must
            # not stay
            await asyncio.shield(_forget_records(task, list(records)))
            raise
        self.records.update(records)
        self.open.difference_update(records)
        release: list[Claim] = []
        for key in records:
            claim = self.claims.get(key)
            if claim is None:
                continue
            if task.claims.get(key) is not claim:
                continue  # lost to another scheduler meanwhile
            if key in self.dirty:
                try:
                    await task.claims.abandon(claim)
                except Exception as exc:
                    log.warning("task %s: could not mark the claim on %r abandoned: %s", task.name, key, exc)
            else:
                release.append(claim)
        unclaimed = [k for k in records if self.claims.get(k) is None]
        if release:
            await task.claims.release_many(release)
        if unclaimed:
            await task.live.delete_many(unclaimed)
        for key, record in records.items():
            state = JobState.SUCCEEDED if record["success"] else JobState.FAILED
            if self.on_state:
                self.on_state(task, key, state, record["attempts"])
            event = "job_succeeded" if record["success"] else "job_failed"
            if self.hooks.wants(event):
                await self.hooks.emit(Event(event, task.name, key, record["attempts"], record=record))

    async def _cleanup(
        self, failed: Mapping[str, BaseException], parts: Mapping[str, WriteJournal], journal: WriteJournal
    ) -> None:
        """Remove the partial outputs of the failed keys (their own journal entries)."""
        for key in failed:
            part = parts[key]
            before = part.entries()
            if await self.task.cleanup_outputs(key, part):
                self.dirty.discard(key)
            else:
                self.dirty.add(key)
            kept = _ids(part)
            for repo, written in before:
                if (id(repo), written) not in kept:
                    journal.discard(repo, written)  # removed

    def _lost(self, key: str) -> bool:
        """Whether the claim on ``key`` was taken over (or removed) by someone else."""
        claim = self.claims.get(key)
        return claim is not None and self.task.claims.get(key) is not claim

    async def _abandon(self, journal: WriteJournal) -> None:
        """Cancelled or broken: remove what the keys not yet recorded left, free them (and
        the claims of recorded keys not yet released)."""
        task = self.task
        left = [k for k in self.keys if k in self.open]
        parts = split_journal(journal, left)
        release: list[Claim] = [
            c
            for k in self.records
            if k not in self.dirty and (c := self.claims.get(k)) is not None and task.claims.get(k) is c
        ]
        unclaimed: list[str] = []
        for key in left:
            claim = self.claims.get(key)
            if self._lost(key):
                continue  # lost to another scheduler: its outputs are not ours to touch
            try:
                cleaned = await task.cleanup_outputs(key, parts[key])
            except Exception:
                cleaned = False
            if claim is None:
                unclaimed.append(key)
            elif cleaned:
                release.append(claim)
            else:
                try:
                    await task.claims.abandon(claim)
                except Exception as exc:
                    log.warning("task %s: could not mark the claim on %r abandoned: %s", task.name, key, exc)
        await _lc._close(task, self.handles)  # the outputs are settled: the work may go
        try:
            if release:
                await task.claims.release_many(release)
            if unclaimed:
                await task.live.delete_many(unclaimed)
        except Exception as exc:  # stale by their lease instead
            log.warning("task %s: could not release the claims of batch %s: %s", task.name, self.id, exc)

    async def _show(self, keys: list[str], state: JobState, **fields: Any) -> None:
        """Note ``state`` in the claims of ``keys`` (see ``lifecycle._show_state``)."""
        held = [c for k in keys if (c := self.claims.get(k)) is not None]
        try:
            await self.task.claims.update_many(held, state=state.value, **fields)
        except Exception as exc:  # the live repository is unreachable: the batch goes on
            log.warning(
                "task %s: could not note %s in the claims of batch %s: %s",
                self.task.name,
                state.value,
                self.id,
                exc,
            )

    async def _write_logs(
        self, job: JobContext, keys: list[str], records: Mapping[str, dict[str, Any]] | None = None
    ) -> None:
        """The batch's lines so far under each of ``keys`` (appended to an earlier attempt's),
        with the traceback of each failed key's record."""
        logs = self.task.logs
        if logs is None:
            return
        for key in keys:
            record = records.get(key) if records else None
            text = job.log_text
            if record is not None and record.get("error"):
                text += record["error"]["traceback"].rstrip() + "\n"
            if job.attempt <= 1 and not job._log[1:] and not (record and record.get("error")):
                continue  # nothing beyond the batch's header: no log
            try:
                old = await logs.read_text(key) if job.attempt > 1 else ""
            except Exception:
                old = ""
            try:
                await logs.write_text(key, old + text)
            except Exception:
                log.exception("task %s: could not write the log of %r", self.task.name, key)


def _ids(journal: WriteJournal) -> set[tuple[int, str]]:
    return {(id(repo), key) for repo, key in journal.entries()}


def _failures(task: Task, job: JobContext, outcome: JobOutcome | None) -> dict[str, BaseException]:
    """The keys of the attempt that failed, as ``prepare`` (``job.failed``) and ``finish``
    said."""
    if not isinstance(outcome, BatchOutcome) or not outcome.failed:
        return dict(job.failed)
    own = set(job.keys)
    strange = [k for k in outcome.failed if k not in own]
    if strange:
        log.warning(
            "task %s: batch of %r names %d key(s) not in it as failed (e.g. %r); ignored",
            task.name,
            job.key,
            len(strange),
            strange[0],
        )
    return {**job.failed, **{k: e for k, e in outcome.failed.items() if k in own}}


async def _forget_records(task: Task, keys: list[str]) -> None:
    try:
        await task.done.delete_many(keys)
    except Exception as exc:
        log.warning("task %s: could not remove the records of a batch left unfinished: %s", task.name, exc)
