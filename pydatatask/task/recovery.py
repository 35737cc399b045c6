"""What a dead scheduler left: stale claims and orphaned work, for every task kind.

Two ways to find an interrupted job, both ending the same way:

* :func:`recover`: a claim in ``live`` that :meth:`~pydatatask.task.claims.Claims.is_stale`
  judges stale. It is taken over by compare-and-swap (of several schedulers, one wins), and
  the executor is asked for what is left of the work noted under ``"run"``
  (:meth:`~pydatatask.executor.base.Executor.recover`). When nothing is left of it, or the
  claim names none, the executor's list of the task's jobs is asked too: a scheduler
  killed after starting the work and before noting it leaves a claim that does not name
  work still running (or finished, its outputs written), which must not be taken for
  work that is gone;
* :func:`adopt_orphans`: work the executor still runs or holds for the task (pods by their
  labels, :meth:`~pydatatask.executor.base.Executor.jobs`) that no claim names, e.g. after a
  scheduler whose claims were in memory was killed. The key is claimed afresh
  (create-if-absent: again one scheduler wins) and the work recovered the same way.

Then: work whose handle is *adoptable* (its outcome can still be waited for: a pod that
runs or has finished) and whose job has no record is returned as an
:class:`~pydatatask.task.lifecycle.Adoption`: the scheduler launches it like a job (it
counts against the task's concurrency and the executor's capacity) and the lifecycle waits
for it as the job's current attempt, so the work is never started twice. Anything else is
stopped with the task's grace, the partial outputs are removed (those the claim noted under
``"wrote"`` included) and the key is freed, to run again; a job already recorded as
succeeded keeps its outputs.

A step that fails (the executor cannot tell, an output cannot be removed) keeps the key
held, handed to nobody or stale by its lease, so that a later check tries again: a job
never runs twice at once and never leaves an output without a record.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..executor.base import JobHandle
from .claims import Claim
from .lifecycle import Adoption

if TYPE_CHECKING:
    from .base import Task

__all__ = ("recover", "adopt_orphans")

log = logging.getLogger("pydatatask.task")

#: fields of an interrupted job's claim that its takeover keeps: what the job's work is,
#: when it began and which attempt it is
_KEPT = ("run", "run_at", "attempt", "started", "start_time")


async def recover(task: Task, key: str, value: Any) -> Adoption | None:
    """Take over the stale claim ``value`` on ``key`` (compare-and-swap) and deal with what
    is left of its work: an :class:`~pydatatask.task.lifecycle.Adoption` when the executor
    hands back an adoptable handle and the job has no record (the caller runs it with
    ``execute(task, key, adopt=...)`` or abandons its claim); otherwise None, once the work
    is stopped, the partial outputs removed and the key freed.

    Of several schedulers recovering the same claim, only the one whose compare-and-swap
    succeeds acts; the others get None and leave it alone. A cleanup that fails keeps the
    takeover claim: it goes stale in its turn and the cleanup is tried again.
    """
    old = value if isinstance(value, dict) else {}
    run = old.get("run")
    # the takeover keeps what the job was doing: a recovery that cannot reach the work (or an
    # adopter killed in its turn) leaves it to the next
    kept = {k: old[k] for k in _KEPT if k in old and (k != "run" or (isinstance(run, dict) and run))}
    claim = await task.claims.take_over(key, value, **kept)
    if claim is None:
        return None
    handle: JobHandle | None = None
    facts: Mapping[str, Any] = old  # when the adopted work began, which attempt it is
    try:
        if isinstance(run, dict) and run:
            handle = await task.executor.recover(run)
        if handle is None:
            handle = await _unnamed_work(task, key, run)
            if handle is not None:
                # noted at once (a takeover killed from now on leaves a claim naming it), as
                # the attempt after the one the claim named; when it began is unknown: now
                attempt = old.get("attempt") if run else 0
                attempt = (attempt if type(attempt) is int and attempt >= 1 else 0) + 1
                if not await task.claims.update(claim, run=handle.info, run_at=time.time(), attempt=attempt):
                    return None  # taken over meanwhile: its new holder deals with the work
                facts = claim.value
        record = (await task.done.get_many([key])).get(key)
    except Exception as exc:
        # the executor is unreachable (or cannot tell): the claim stays, handed to nobody,
        # and the next check tries again; the job never runs twice at once
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
        return None
    if isinstance(record, dict) and record.get("success") is True:
        # the job succeeded (its record is written) and died before dropping its claim:
        # its outputs are complete, keep them; what the executor still holds goes
        await _close_or_keep(task, key, claim, handle)
        return None
    who = f"claim by {old.get('owner', value)} on {old.get('host', '?')}"
    # the work of a batch serves several keys, each recovered on its own: adopting it once per
    # key would end it (its pod deleted) when the first key's adoption is done, under the
    # others still waiting; it is stopped and every key of the batch runs again instead
    if handle is not None and handle.adoptable and record is None and not old.get("batch"):
        log.warning(
            "task %s: adopting %s, left running by the interrupted job of %r (%s)",
            task.name,
            handle.describe(),
            key,
            who,
        )
        return _adoption(key, claim, handle, facts)
    log.warning(
        "task %s: job %r was interrupted (%s); cleaning up%s",
        task.name,
        key,
        who,
        " after its failure record" if record is not None else " to run it again",
    )
    await _let_go(task, key, claim, handle, old.get("wrote"))
    return None


async def adopt_orphans(task: Task, owner: str | None = None) -> list[Adoption]:
    """Deal with the work :attr:`~pydatatask.task.base.Task.executor` still runs or holds for ``task`` that no
    claim in ``live`` names: each key is claimed (as ``owner``), then its work is adopted
    (returned, to be run with ``execute(..., adopt=...)``) or, when it cannot be adopted or
    its job is recorded already, stopped, its partial outputs removed (unless it succeeded)
    and let go. Called once when a scheduler starts."""
    found = await task.executor.jobs(task.name)
    if not found:
        return []
    claimed = set(await task.live.keys())
    adoptions: list[Adoption] = []
    shared: set[str] = set()
    for keys, info in _shared_work(found):
        # the work of a batch: stopped, every unclaimed key of it cleaned up and run again
        shared.update(keys)
        await _let_go_batch(task, [k for k in keys if k not in claimed], info, owner)
    for key, info in found.items():
        if key in claimed or key in shared:
            continue  # its claim tells who runs it; a stale one is recovered by recover()
        claim = await task.claims.acquire(key, owner)
        if claim is None:
            continue  # claimed meanwhile: that scheduler deals with it
        try:
            handle = await task.executor.recover(info)
            record = (await task.done.get_many([key])).get(key)
        except Exception as exc:
            log.warning(
                "task %s: could not check the orphaned job %r (%s: %s)",
                task.name,
                key,
                type(exc).__name__,
                exc,
            )
            await task.claims.release(claim)
            continue
        if handle is None:
            await task.claims.release(claim)
            continue
        if handle.adoptable and record is None:
            # noted at once: a scheduler killed from now on leaves a stale claim naming it
            if not await task.claims.update(claim, run=handle.info, run_at=time.time(), attempt=1):
                continue  # taken over meanwhile: not ours any more
            log.warning(
                "task %s: adopting %s, left running by an interrupted job of %r (no claim named it)",
                task.name,
                handle.describe(),
                key,
            )
            adoptions.append(_adoption(key, claim, handle, claim.value))
            continue
        if isinstance(record, Mapping) and record.get("success") is True:
            await _close_or_keep(task, key, claim, handle)
            continue
        await _let_go(task, key, claim, handle, None)
    return adoptions


def _shared_work(found: Mapping[str, Mapping[str, Any]]) -> list[tuple[list[str], Mapping[str, Any]]]:
    """The work items of ``found`` (``{key: info}`` of :meth:`~pydatatask.executor.base.Executor.jobs`)
    that serve several keys, a batch's: ``(keys, info)``, the keys in the order found."""
    groups: dict[str, tuple[list[str], Mapping[str, Any]]] = {}
    for key, info in found.items():
        groups.setdefault(json.dumps(info, sort_keys=True, default=str), ([], info))[0].append(key)
    return [(keys, info) for keys, info in groups.values() if len(keys) > 1]


async def _let_go_batch(task: Task, keys: list[str], info: Mapping[str, Any], owner: str | None) -> None:
    """The work of a batch (``info``) that no claim of ``keys`` names: the keys are claimed,
    the work is stopped once, the partial outputs of every key without a success record
    removed, the work freed, then the keys. Adopting it for one key would end it (its pod
    deleted) while the others still wait on it. A step that fails keeps every claim (stale
    by its lease, each key recovered on its own by :func:`recover`)."""
    if not keys:
        return
    held = await task.claims.acquire_many(keys, owner, batch="orphan")
    if not held:
        return
    claims = list(held.values())
    try:
        handle = await task.executor.recover(info)
        records = await task.done.get_many(list(held))
    except Exception as exc:
        log.warning(
            "task %s: could not check the orphaned work of a batch of %d key(s) (%s: %s)",
            task.name,
            len(held),
            type(exc).__name__,
            exc,
        )
        await task.claims.release_many(claims)
        return
    if handle is None:
        await task.claims.release_many(claims)
        return
    log.warning(
        "task %s: stopping %s, the work of a batch left by an interrupted scheduler (no claim "
        "named it); %d key(s) of it run again",
        task.name,
        handle.describe(),
        len(held),
    )
    try:
        await handle.cancel(task.cancel_grace)
        for key in held:
            record = records.get(key)
            if isinstance(record, Mapping) and record.get("success") is True:
                continue  # recorded: its outputs are complete
            if not await task.cleanup_outputs(key, task.journal_from_claim(None)):
                raise OSError(f"the partial outputs of {key!r} could not be removed")
        await handle.close()
    except Exception as exc:
        log.warning("task %s: could not let the orphaned batch go: %s; will try again", task.name, exc)
        for claim in claims:
            task.claims.forget(claim)
        return
    await task.claims.release_many(claims)


async def _unnamed_work(task: Task, key: str, run: Any) -> JobHandle | None:
    """A handle on what the executor still runs or holds for ``key`` that the interrupted
    job's claim does not name (``run``): its scheduler was killed after the work was
    started and before the claim noted it, or while a new attempt replaced the work it
    names. None when the executor holds nothing else for the key."""
    info = (await task.executor.jobs(task.name)).get(key)
    if not info or info == run:
        return None
    return await task.executor.recover(info)


def _adoption(key: str, claim: Claim, handle: JobHandle, old: Mapping[str, Any]) -> Adoption:
    now = time.time()
    since, run_at, attempt = old.get("started"), old.get("run_at"), old.get("attempt")
    return Adoption(
        key,
        claim,
        handle,
        since=float(since) if isinstance(since, (int, float)) else now,
        run_at=float(run_at) if isinstance(run_at, (int, float)) else now,
        attempt=attempt if type(attempt) is int and attempt >= 1 else 1,
    )


async def _let_go(task: Task, key: str, claim: Claim, handle: JobHandle | None, written: Any) -> None:
    """Stop ``handle``'s work, remove the partial outputs, free it and the key."""
    if handle is not None:
        try:
            await handle.cancel(task.cancel_grace)
        except Exception as exc:  # unreachable now: handed to nobody, the next check tries again
            log.warning(
                "task %s: could not stop the interrupted job %r: %s; will try again", task.name, key, exc
            )
            try:
                await task.claims.abandon(claim)
            except Exception:
                task.claims.forget(claim)
            return
        log.info("task %s: stopped what the interrupted job of %r left running", task.name, key)
    if not await task.cleanup_outputs(key, task.journal_from_claim(written)):
        task.claims.forget(claim)  # the work stays held: the next recovery finds it again
        return
    await _close_or_keep(task, key, claim, handle)


async def _close_or_keep(task: Task, key: str, claim: Claim, handle: JobHandle | None) -> None:
    """Free ``handle`` (once the outputs are settled), then the key; a handle that cannot be
    freed keeps the claim, which goes stale and is recovered again."""
    if handle is not None:
        try:
            await handle.close()
        except Exception as exc:
            log.warning(
                "task %s: could not free the interrupted job %r: %s; will try again", task.name, key, exc
            )
            task.claims.forget(claim)
            return
    await task.claims.release(claim)
