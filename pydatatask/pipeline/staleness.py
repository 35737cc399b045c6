"""Stale keys: recorded jobs whose inputs, code or outputs have changed since they ran.

Every job record stores what the job read (see :mod:`pydatatask.task.records`):

``version``
    the task's :attr:`~pydatatask.task.base.Task.version` (None when it has none);
``inputs``
    ``{link: version}``, the version of each input value as the listing of the tick that
    launched the job gave it (:meth:`~pydatatask.repository.base.Repository.versions`; None
    where the backend cannot tell);
``upstream``
    (only when another task writes an input) ``{link: stamp}`` for each input another task writes: the ``end_time`` of the upstream
    success record(s) of what the key reads (several joined by ``,``). A redone upstream job
    writes a new record, so the downstream record no longer matches even when the backend
    gives no versions, or the redone value has the same content (the same ETag);
``outputs``
    (only when the job wrote its key to some of its outputs, not all) the output links
    it wrote its key to. Without it, every output is expected to hold the key (as when the
    job writes its outputs in place, not through a repository: a command or a pod).

A recorded key is **stale** when an input's version differs from its record's, an upstream
record it read was replaced, the task version differs, an output of a succeeded job is
gone, or the task says so (:meth:`~pydatatask.task.base.Task.stale_reasons`). None on either
side of a comparison means "unknown" and never makes a key stale.

Redoing a stale key (:func:`redo`) happens under the job's claim: the record is checked to
be the one judged stale (another scheduler may have redone it), then removed, then the old
outputs, then the job runs as any other. A crash in between leaves a key without a record,
whose claim recovery removes the rest: the key is then done again, never left with a
success record and missing outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import JobError
from ..repository.base import Repository
from ..repository.journal import WriteJournal
from .record_index import RecordFacts, RecordIndex

if TYPE_CHECKING:
    from ..task.base import Task
    from ..task.hooks import Hooks
    from ..task.lifecycle import StateCallback

__all__ = ("StaleReason", "InputSource", "record_fields", "stale_reasons", "redo")


@dataclass(frozen=True)
class StaleReason:
    """Why a recorded key is stale.

    ``kind`` is ``"input"`` (an input value's version changed), ``"upstream"`` (an upstream
    job it read was redone), ``"version"`` (the task version changed), ``"output"`` (an
    output of the succeeded job is gone) or ``"task"`` (a reason the task gives). ``link``
    names the input or output, ``old`` and ``new`` the versions compared.
    """

    kind: str
    message: str
    link: str | None = None
    old: str | None = None
    new: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        """JSON-ready form."""
        return {
            "kind": self.kind,
            "message": self.message,
            "link": self.link,
            "old": self.old,
            "new": self.new,
        }


@dataclass(frozen=True)
class InputSource:
    """An input link of a task: its repository, and the upstream tasks writing what it
    reads, each with the map from a key of the task to the upstream keys it reads (None:
    the same key)."""

    link: str
    repository: Repository
    producers: tuple[tuple[str, Callable[[str], set[str]] | None], ...] = ()


def _stamp(key: str, producers: InputSource, records: Mapping[str, RecordIndex]) -> str | None:
    stamps: list[str] = []
    for up, to_upstream in producers.producers:
        index = records[up]
        for upkey in sorted({key} if to_upstream is None else to_upstream(key)):
            stamp = index.stamp(upkey)
            if stamp is None:
                return None
            stamps.append(stamp)
    return ",".join(stamps) if stamps else None


def record_fields(
    key: str,
    sources: list[InputSource],
    versions: Mapping[str, Mapping[str, str | None]],
    records: Mapping[str, RecordIndex],
) -> dict[str, Any]:
    """The ``inputs`` and ``upstream`` fields of the record of a job of ``key`` launched
    now: ``versions`` is this tick's listing of each input link."""
    inputs: dict[str, str | None] = {}
    upstream: dict[str, str | None] = {}
    for src in sources:
        listed = versions.get(src.link)
        inputs[src.link] = None if listed is None else listed.get(key)
        if src.producers:
            upstream[src.link] = _stamp(key, src, records)
    return {"inputs": inputs, "upstream": upstream} if upstream else {"inputs": inputs}


def _differ(old: Any, new: str | None) -> bool:
    return isinstance(old, str) and new is not None and old != new


def stale_reasons(
    task: Task,
    key: str,
    facts: RecordFacts,
    sources: list[InputSource],
    versions: Mapping[str, Mapping[str, str | None]],
    records: Mapping[str, RecordIndex],
    outputs: Mapping[str, set[str]],
) -> list[StaleReason]:
    """Why the recorded job of ``key`` is stale (empty: it is not). ``outputs`` is this
    tick's listing of each output link."""
    reasons: list[StaleReason] = []
    for src in sources:
        listed = versions.get(src.link)
        if listed is not None:
            old, new = facts.inputs.get(src.link), listed.get(key)
            if _differ(old, new):
                reasons.append(
                    StaleReason("input", f"input {src.link!r} changed: {old} -> {new}", src.link, old, new)
                )
        if src.producers and src.link in facts.upstream:
            old, new = facts.upstream[src.link], _stamp(key, src, records)
            if _differ(old, new):
                ups = ", ".join(repr(up) for up, _ in src.producers)
                reasons.append(
                    StaleReason(
                        "upstream",
                        f"input {src.link!r} was redone by upstream task {ups}: its record of {old} was replaced by one of {new}",
                        src.link,
                        old,
                        new,
                    )
                )
    if _differ(facts.version, task.version):
        reasons.append(
            StaleReason(
                "version",
                f"the task version changed: {facts.version} -> {task.version}",
                None,
                facts.version,
                task.version,
            )
        )
    if facts.success:
        names = facts.outputs if facts.outputs is not None else [lk.name for lk in task.output_links]
        for name in names:
            held = outputs.get(name)
            if held is not None and key not in held:
                link = task.links[name]
                reasons.append(
                    StaleReason(
                        "output",
                        f"output {name!r} ({link.repository.describe()}) no longer has {key!r}",
                        name,
                    )
                )
    for line in task.stale_reasons(key, facts.extra, versions):
        reasons.append(StaleReason("task", str(line)))
    return reasons


async def redo(
    task: Task,
    key: str,
    *,
    judged: RecordFacts,
    index: RecordIndex,
    owner: str,
    hooks: Hooks | None = None,
    on_state: StateCallback | None = None,
    slot: Any = True,
    fields: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Redo the job of the stale key ``key`` (whose record ``judged`` was found stale): claim
    it, check that its record is still that one, remove the record and then the old outputs
    (also the keys beyond ``key`` the job wrote), then run the job (see
    :func:`pydatatask.task.lifecycle.execute`).

    Returns the new record, or None when another scheduler holds the claim or has redone
    the key already (its new record is noted in ``index``).
    """
    from ..task import lifecycle

    claim = await task.claims.acquire(key, owner)
    if claim is None:
        return None
    removed = False
    try:
        current = (await task.done.get_many([key])).get(key)
        if not isinstance(current, dict) or current.get("end_time") != judged.end_time:
            if isinstance(current, dict):
                index.note(key, current)  # redone meanwhile: that record is the one to judge
            await task.claims.release(claim)
            return None
        wrote = [k for k in current.get("wrote") or [] if isinstance(k, str)]
        journal = WriteJournal()
        entries: list[list[str]] = []
        for link in task.output_links:
            for k in wrote:
                journal.record(link.repository, k)
                entries.append([link.name, k])
        if entries:
            # a scheduler killed from here on leaves what the claim recovery removes
            if not await task.claims.update(claim, wrote=[*claim.value.get("wrote", []), *entries]):
                raise JobError(f"task {task.name}: the claim on {key!r} was taken over by another scheduler")
        await task.done.delete(key)  # first: from now on nothing reads the old outputs as done
        removed = True
        index.forget(key)
        if not await task.cleanup_outputs(key, journal):
            raise JobError(f"task {task.name}: could not remove the old outputs of {key!r} to redo it")
    except BaseException:
        if not removed:
            await task.claims.release(claim)
        elif task.claims.get(key) is claim:
            # outputs may be left without their record: the claim recovery removes them
            await task.claims.abandon(claim)
        raise
    return await lifecycle.execute(
        task, key, owner=owner, hooks=hooks, claimed=True, on_state=on_state, slot=slot, record_fields=fields
    )
