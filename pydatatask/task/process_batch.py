"""A batch of keys as one process: what :class:`~pydatatask.task.process.ProcessTask` does
when the task has ``batch=N`` (see :doc:`/batches`).

* :func:`prepare_batch` renders the command once for all the keys of the attempt (the
  template sees ``keys`` and ``batch``, one entry of link information per key, each staged
  as for one key: inputs copied in where the host cannot read them, outputs at paths of
  their own) and points ``$PDT_RESULTS`` at ``<job dir>/.pdt-results.jsonl``;
* :func:`finish_batch` reads the result lines the command wrote there
  (:mod:`pydatatask.task.batch_results`), commits the outputs of each key that succeeded,
  one key at a time (a missing output fails that key only), and returns a
  :class:`~pydatatask.task.base.BatchOutcome` naming the keys that failed and why. The
  outputs are brought back by the task, not by the host, so that the keys that succeeded
  keep theirs when the command exits non-zero;
* :func:`keep_stopped_output` keeps the output of a batch stopped by its time limit, as
  :func:`finish_batch` does for one that ended.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, JobError
from ..executor.base import Outcome, ProcessWork, Slot
from ..executor.hosts import HostFile
from ..executor.multihost import host_for, unreserved_slot
from ..repository.base import BlobRepository
from .base import BatchOutcome, JobContext, JobOutcome
from .batch_results import RESULTS_FILE, Results, batch_failures, parse_results
from .process import _KeyOutputs, _Staged, _tail
from .templates import batch_context, render_command

if TYPE_CHECKING:
    from .process import ProcessTask

__all__ = ("prepare_batch", "finish_batch", "keep_stopped_output")

log = logging.getLogger("pydatatask.task.process")

#: a results file larger than this is not read (a few hundred bytes a key is plenty)
MAX_RESULTS = 64 << 20
#: at most this much of a batch's output goes into its log (its end)
LOG_LIMIT = 1 << 20
#: keys named in a batch's log line
_NAMED = 5


def _some(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_NAMED])
    return shown + (f" and {len(keys) - _NAMED} more" if len(keys) > _NAMED else "")


async def prepare_batch(task: ProcessTask, job: JobContext) -> ProcessWork:
    """The work of one attempt of a batch: one command for the keys of ``job.keys``. A key
    whose input cannot be staged (gone since the listing, unreadable) is left out and
    fails alone (``job.failed``); when none is left, the attempt fails."""
    keys = list(job.keys)
    later = isinstance(job.slot, Slot) and task._claims_in_memory()  # see ProcessTask.prepare
    if not isinstance(job.slot, Slot):
        job.slot = unreserved_slot(task.executor, task.resources)  # run outside a scheduler
    host = host_for(job.slot)
    job_dir = host.job_dir_path((task.name, job.key))
    task._forget_keys(keys)  # what a cancelled earlier attempt left
    context = batch_context(task, keys, task.params)
    context.update(attempt=job.attempt, job_dir=job_dir, host=host.name)
    files_in: dict[str, Any] = {}
    for entry in context["batch"]:
        key = entry["key"]
        before = set(files_in)
        try:
            for link in task.input_links:
                await task._stage_input(link, key, host, job_dir, entry["links"][link.name], files_in)
        except ConfigurationError:
            raise
        except Exception as exc:
            job.failed[key] = exc
            for rel in set(files_in) - before:
                del files_in[rel]
    if job.failed:
        keys = [k for k in keys if k not in job.failed]
        if not keys:
            raise next(iter(job.failed.values()))
        _leave_out(context, job.failed)
        job.log(f"left out of the batch, their inputs cannot be staged: {_some(list(job.failed))}")
    staged = _Staged(host=host, files=task._new_files(host, job_dir), keys=tuple(keys), job_dir=job_dir)
    task._staged[(job.key, job.attempt)] = staged
    for entry in context["batch"]:
        key = entry["key"]
        outputs = staged.outputs[key] = _KeyOutputs()
        for link in task.output_links:
            task._stage_output(link, key, host, job_dir, entry["links"][link.name], staged, outputs.files_out)
        # what _stage_output noted for one key's job becomes this key's
        outputs.commits, staged.commits = staged.commits, []
    env = task._job_env(context, {"PDT_KEYS": "\n".join(keys), "PDT_RESULTS": f"{job_dir}/{RESULTS_FILE}"})
    job.log(f"batch of {len(keys)} key(s) in one process: {_some(keys)}")
    files = staged.files
    return ProcessWork(
        command=render_command(task.template, context),
        script=task.is_script,
        env=env,
        files_in=files_in,
        # the host makes their directories before the start; finish_batch brings each key's
        # back itself, also after a non-zero exit (the host brings back nothing then)
        files_out=dict.fromkeys((rel for o in staged.outputs.values() for rel in o.files_out), _later),
        job=(task.name, job.key),
        keys=tuple(keys),
        job_dir=job_dir,
        stdout=files.combined or files.stdout,
        stderr=files.stderr,
        scratch=tuple(staged.local_temps),
        transient=later,
    )


def _leave_out(context: dict[str, Any], failed: Mapping[str, BaseException]) -> None:
    """Drop the ``failed`` keys from a batch's template ``context``; ``key`` and the links'
    own names become those of the first key left."""
    entries = context["batch"]
    first = entries[0]
    entries[:] = [e for e in entries if e["key"] not in failed]
    context["keys"] = [e["key"] for e in entries]
    if entries[0] is first:
        return
    old, new = first["links"], entries[0]["links"]
    context["key"], context["links"] = entries[0]["key"], new
    for name, info in new.items():
        if context.get(name) is old.get(name):
            context[name] = info


async def _later(found: HostFile) -> None:
    """What the host hands a batch's output to: nothing yet (see :func:`_commit`)."""


async def _read_results(staged: _Staged, keys: list[str]) -> Results:
    found = HostFile(staged.host, f"{staged.job_dir}/{RESULTS_FILE}", RESULTS_FILE)
    data = bytearray()
    try:
        async for chunk in found.chunks():
            data += chunk
            if len(data) > MAX_RESULTS:
                results = Results()
                results.note_problem(f"$PDT_RESULTS ({found}) is larger than {MAX_RESULTS >> 20} MiB")
                return results
    except FileNotFoundError:
        return Results()  # nothing written: the exit status says it all
    return parse_results(data.decode("utf-8", "replace").splitlines(), keys, "$PDT_RESULTS")


async def _commit(task: ProcessTask, staged: _Staged, key: str) -> None:
    outputs = staged.outputs.get(key)
    if outputs is None:
        raise JobError(f"task {task.name}: nothing was staged for {key!r} in this batch")
    for commit in outputs.commits:
        await commit()
    for rel, sink in outputs.files_out.items():
        await sink(HostFile(staged.host, f"{staged.job_dir}/{rel.rstrip('/')}", rel))


async def _keep_output(task: ProcessTask, job: JobContext, staged: _Staged) -> None:
    """The batch's output under each of its keys: stdout/stderr into the task's ``stdout=``
    and ``stderr=`` repositories, the rest (its last :data:`LOG_LIMIT` bytes) into the
    job's log, which the batch writes under each key."""
    files = staged.files
    for name, path in (("stdout", files.stdout), ("stderr", files.stderr)):
        if path is not None and name in task.links:
            repo = task.links[name].repository
            assert isinstance(repo, BlobRepository)
            for key in staged.keys:  # those the command ran for
                try:
                    await task._copy_into(repo, key, [path], "", keep_old=False)
                except Exception:
                    log.exception("task %s: could not write the %s of %r", task.name, name, key)
    if files.combined is not None and task.logs is not None:
        text = _tail(files.combined, LOG_LIMIT)
        if text:
            job.log("output:\n" + text.rstrip("\n"))


async def keep_stopped_output(task: ProcessTask, job: JobContext) -> None:
    """The output of a batch whose process was stopped before its end (its time limit),
    kept as :func:`finish_batch` keeps that of a finished one: the ``stdout=``/``stderr=``
    repositories and the job's log, under each of its keys."""
    staged = task._staged.pop((job.key, job.attempt), None)
    if staged is None:
        return
    try:
        await _keep_output(task, job, staged)
    finally:
        staged.files.remove()


async def finish_batch(task: ProcessTask, job: JobContext, outcome: Outcome) -> BatchOutcome:
    """The keys of the batch that failed (by ``$PDT_RESULTS`` and the exit status), and
    the outputs of the others committed; raises (every key failed) when the process could
    not run to its end (its host went away)."""
    staged = task._staged.pop((job.key, job.attempt), None)
    try:
        if staged is not None:
            await _keep_output(task, job, staged)
        return await _settle(task, job, outcome, staged)
    finally:
        if staged is not None:
            staged.files.remove()


async def _settle(
    task: ProcessTask, job: JobContext, outcome: Outcome, staged: _Staged | None
) -> BatchOutcome:
    keys = [k for k in job.keys if k not in job.failed]  # those left out have failed already
    place = outcome.place or (staged.host.name if staged is not None else "")
    if outcome.error is not None:
        raise outcome.error
    if staged is None or outcome.exit_code is None:
        raise JobError(f"task {task.name}: the batch of {_some(keys)} on {place} did not run to its end")
    code = outcome.exit_code
    results = await _read_results(staged, keys)
    why = f"the command exited with status {code}"
    if code != 0:
        tail = _tail(staged.files.stderr or staged.files.combined or staged.files.stdout)
        why += f"; last output:\n{tail}" if tail else ""
    reasons = batch_failures(keys, results, code == 0, why)
    known = JobOutcome(exit_code=code, host=place, extra=dict(outcome.extra))
    failed: dict[str, BaseException] = {}
    for key in keys:
        if key in reasons:
            error: BaseException = JobError(
                f"task {task.name}: job {key!r} (a batch of {len(keys)} on {place}): {reasons[key]}"
            )
        else:
            try:
                await _commit(task, staged, key)
                continue
            except Exception as exc:  # this key's outputs: the others are still committed
                error = exc
        error.outcome = known  # type: ignore[attr-defined]
        failed[key] = error
    seconds = outcome.extra.get("process_seconds", 0)
    job.log(
        f"exited {code} on {place} after {seconds:.3f}s: {len(keys) - len(failed)} of {len(keys)} key(s) ok"
        + (f", failed: {_some(list(failed))}" if failed else "")
    )
    for line in results.notes():
        job.log(line)
    return BatchOutcome(exit_code=code, host=place, extra=dict(outcome.extra), failed=failed)
