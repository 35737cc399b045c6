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
    success record(s) of what the key reads (several joined by ``,``); for a child in a
    fan-out output, which has no record of its own, its parent's. A redone upstream job
    writes a new record, so the downstream record no longer matches even when the backend
    gives no versions, or the redone value has the same content (the same ETag). A fan-in
    record stores instead, per input, a digest over its members with the version and the
    upstream stamp of each (``members:<count>:<hex>``): a few dozen bytes, whatever the size
    of the group;
``outputs``
    (only when the job wrote its key to some of its outputs, not all) the output links
    it wrote its key to. Without it, every output is expected to hold the key (as when the
    job writes its outputs in place, not through a repository: a command or a pod).

A recorded key is **stale** when an input's version differs from its record's, an upstream
record it read was replaced, the task version differs, an output of a succeeded job is
gone (for a fan-out job: a child its record lists), a fan-in group gained, lost or had a
member redone (the digest differs; the members are named from the ``members`` the record
lists and from the upstream records newer than the group's own), or the task says so
(:meth:`~pydatatask.task.base.Task.stale_reasons`). None on either side of a comparison
means "unknown" and never makes a key stale.

A recorded key no longer in the task's inputs that is a child of a fan-out parent whose
success record no longer lists it (the parent was redone and did not write it again) is an
**orphan** (kind ``"orphan"``): ``run --rerun-stale`` removes its record and then its outputs
under its claim (:func:`remove_orphan`), without running a job; what is downstream of it
sees the key gone (a group loses the member, and is redone).

Redoing a stale key (:func:`redo`) happens under the job's claim: the record is checked to
be the one judged stale (another scheduler may have redone it), then removed, then the old
outputs, then the job runs as any other. A crash in between leaves a key without a record,
whose claim recovery removes the rest: the key is then done again, never left with a
success record and missing outputs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import JobError
from ..repository.base import Repository
from ..repository.journal import WriteJournal
from ..task.fan import parent_among
from .record_index import RecordFacts, RecordIndex

if TYPE_CHECKING:
    from ..task.base import Task
    from ..task.hooks import Hooks
    from ..task.lifecycle import StateCallback

__all__ = (
    "UPSTREAM_STALE",
    "StaleReason",
    "InputSource",
    "FanOutAncestor",
    "record_fields",
    "stale_reasons",
    "orphan_reasons",
    "redo",
    "remove_orphan",
)


#: the kind of a :class:`StaleReason` of a key stale only because what it reads is
#: stale upstream (status shows it; a redo waits for the upstream one)
UPSTREAM_STALE = "stale-upstream"


@dataclass(frozen=True)
class StaleReason:
    """Why a recorded key is stale.

    ``kind`` is ``"input"`` (an input value's version changed), ``"upstream"`` (an upstream
    job it read was redone), ``"version"`` (the task version changed), ``"output"`` (an
    output of the succeeded job is gone), ``"group"`` (a fan-in group's members changed),
    ``"orphan"`` (a child its redone parent no longer writes) or ``"task"`` (a reason the
    task gives), or :data:`UPSTREAM_STALE` (nothing of its own: what it reads is stale
    upstream, so it is redone after that). ``link``
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
    #: ``{upstream task: separators}`` of the fan-out outputs of upstream tasks that this
    #: link reads: a key there that is not a key of the upstream task is a child, and the
    #: record it reads after is its parent's
    parents: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class FanOutAncestor:
    """A fan-out output upstream of a task along links that keep keys as they are: the
    task ``task`` writes children of its keys to its link ``link`` with ``separator``."""

    task: str
    link: str
    separator: str


def _parent(index: RecordIndex, key: str, separators: tuple[str, ...]) -> str | None:
    for sep in separators:
        parent = parent_among(key, index.listed, sep)
        if parent is not None:
            return parent
    return None


def _stamp(key: str, producers: InputSource, records: Mapping[str, RecordIndex]) -> str | None:
    stamps: list[str] = []
    for up, to_upstream in producers.producers:
        index = records[up]
        seps = producers.parents.get(up, ())
        for upkey in sorted({key} if to_upstream is None else to_upstream(key)):
            stamp = index.stamp(upkey)
            if stamp is None and seps and upkey not in index.listed:
                # a child: it has no record of its own; its parent's record made it
                parent = _parent(index, upkey, seps)
                stamp = None if parent is None else index.stamp(parent)
            if stamp is None:
                return None
            stamps.append(stamp)
    return ",".join(stamps) if stamps else None


def _parent_of(key: str, src: InputSource, records: Mapping[str, RecordIndex]) -> str:
    """`` (the parent 'A' of this child)`` when ``key`` reads a child in a fan-out output."""
    for up, to_upstream in src.producers:
        seps = src.parents.get(up, ())
        index = records[up]
        if seps and to_upstream is None and key not in index.listed:
            parent = _parent(index, key, seps)
            if parent is not None:
                return f" (the parent {parent!r} of this child)"
    return ""


#: how the ``upstream`` entry of a fan-in record starts (a digest over its members)
_GROUP_DIGEST = "members:"


def _member_marks(
    members: Sequence[str],
    src: InputSource,
    versions: Mapping[str, Mapping[str, str | None]],
    records: Mapping[str, RecordIndex],
) -> list[tuple[str, str | None, str | None]]:
    listed = versions.get(src.link) or {}
    return [(m, listed.get(m), _stamp(m, src, records) if src.producers else None) for m in sorted(members)]


def _group_digest(marks: list[tuple[str, str | None, str | None]]) -> str:
    """One short string for a group's members with the version and upstream stamp of each
    (a record stays small for a group of 10,000 members)."""
    text = "\n".join(
        f"{m}\t{v if v is not None else '?'}\t{s if s is not None else '?'}" for m, v, s in marks
    )
    return f"{_GROUP_DIGEST}{len(marks)}:{hashlib.sha256(text.encode()).hexdigest()[:32]}"


def record_fields(
    key: str,
    sources: list[InputSource],
    versions: Mapping[str, Mapping[str, str | None]],
    records: Mapping[str, RecordIndex],
    members: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``inputs`` and ``upstream`` fields of the record of a job of ``key`` launched
    now: ``versions`` is this tick's listing of each input link. For a fan-in job
    (``members``: those of its group), ``upstream`` holds a digest per input over the
    members with the version and the upstream stamp of each."""
    inputs: dict[str, str | None] = {}
    upstream: dict[str, str | None] = {}
    if members is not None:
        for src in sources:
            inputs[src.link] = None
            upstream[src.link] = _group_digest(_member_marks(members, src, versions, records))
        return {"inputs": inputs, "upstream": upstream}
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
    *,
    members: Sequence[str] | None = None,
    children: Mapping[str, frozenset[str]] | None = None,
) -> list[StaleReason]:
    """Why the recorded job of ``key`` is stale (empty: it is not). ``outputs`` is this
    tick's listing of each output link; ``members`` the current members of a fan-in
    group, ``children`` what the record of a fan-out job lists."""
    reasons: list[StaleReason] = []
    if task.group_by is not None:
        if members is not None:
            group = _group_change(key, facts, members, sources, versions, records)
            if group is not None:
                reasons.append(group)
        sources = []  # a group is judged by its members, above
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
                what = _parent_of(key, src, records)
                reasons.append(
                    StaleReason(
                        "upstream",
                        f"input {src.link!r} was redone by upstream task {ups}{what}: its record of {old} was replaced by one of {new}",
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
        if children is not None:
            names = [n for n in names if n not in children]  # a fan-out output holds the children
            reasons.extend(_children_gone(task, key, children, outputs))
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


def _children_gone(
    task: Task, key: str, children: Mapping[str, frozenset[str]], outputs: Mapping[str, set[str]]
) -> list[StaleReason]:
    reasons: list[StaleReason] = []
    for name, kids in children.items():
        held = outputs.get(name)
        if held is None or name not in task.links:
            continue
        gone = sorted(k for k in kids if k not in held)
        if gone:
            link = task.links[name]
            reasons.append(
                StaleReason(
                    "output",
                    f"output {name!r} ({link.repository.describe()}) no longer has {len(gone)} of the "
                    f"{len(kids)} children of {key!r} ({_first(gone)})",
                    name,
                )
            )
    return reasons


def _first(keys: Sequence[str]) -> str:
    return ", ".join(map(repr, keys[:3])) + (", ..." if len(keys) > 3 else "")


def _group_change(
    key: str,
    facts: RecordFacts,
    members: Sequence[str],
    sources: list[InputSource],
    versions: Mapping[str, Mapping[str, str | None]],
    records: Mapping[str, RecordIndex],
) -> StaleReason | None:
    """Whether the group ``key`` changed since its record: members added or removed, or a
    member's value or upstream record replaced (the record's digest no longer matches)."""
    now = set(members)
    before = set(facts.members) if facts.members is not None else now
    added, removed = sorted(now - before), sorted(before - now)
    changed = False
    redone: set[str] = set()
    for src in sources:
        old = facts.upstream.get(src.link)
        if not (isinstance(old, str) and old.startswith(_GROUP_DIGEST)):
            continue  # recorded before groups were digested: unknown
        marks = _member_marks(members, src, versions, records)
        if _group_digest(marks) != old:
            changed = True
            end = facts.end_time
            # which ones: those whose upstream record is newer than the group's own
            redone |= {m for m, _, stamp in marks if m in before and end and stamp and stamp > end}
    if not (added or removed or changed):
        return None
    parts = []
    if added:
        parts.append(f"{len(added)} member(s) added ({_first(added)})")
    if removed:
        parts.append(f"{len(removed)} removed ({_first(removed)})")
    if redone:
        parts.append(f"{len(redone)} redone upstream ({_first(sorted(redone))})")
    elif changed and not (added or removed):
        parts.append("a member's value or upstream record changed")
    return StaleReason("group", f"group {key!r} changed since its record: " + ", ".join(parts))


def _orphan_candidates(
    key: str, ancestors: Sequence[FanOutAncestor], records: Mapping[str, RecordIndex]
) -> list[tuple[FanOutAncestor, str]]:
    """The parents ``key`` may be a child of, in the fan-out outputs ``ancestors``."""
    found = []
    for anc in ancestors:
        parent = parent_among(key, records[anc.task].listed, anc.separator)
        if parent is not None:
            found.append((anc, parent))
    return found


async def orphan_reasons(
    keys: Sequence[str], ancestors: Sequence[FanOutAncestor], records: Mapping[str, RecordIndex]
) -> dict[str, StaleReason]:
    """Of the recorded ``keys`` that are no longer in the task's inputs, those that are
    children of a fan-out parent whose success record no longer lists them (the parent was
    redone and did not write them again): their records and outputs are *orphans*, which
    ``run --rerun-stale`` removes."""
    if not ancestors or not keys:
        return {}
    candidates = {k: _orphan_candidates(k, ancestors, records) for k in keys}
    wanted: dict[str, set[str]] = {}
    for found in candidates.values():
        for anc, parent in found:
            wanted.setdefault(anc.task, set()).add(parent)
    for name, parents in wanted.items():
        await records[name].load(parents)
    out: dict[str, StaleReason] = {}
    for key, found in candidates.items():
        for anc, parent in found:
            index = records[anc.task]
            if index.success.get(parent) is not True:
                continue
            kids = index.children.get(parent, {}).get(anc.link)
            if kids is not None and key not in kids:
                out[key] = StaleReason(
                    "orphan",
                    f"its parent {parent!r} in task {anc.task!r} was redone and no longer writes it "
                    f"to {anc.link!r}: its record and outputs are left from before",
                    anc.link,
                )
                break
    return out


async def _take_down(task: Task, key: str, judged: RecordFacts, index: RecordIndex, owner: str) -> Any:
    """Claim ``key``, check that its record is still ``judged``, remove the record and then
    the old outputs; returns the claim, or None (claimed elsewhere, or redone meanwhile)."""
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
    return claim


async def remove_orphan(task: Task, key: str, *, judged: RecordFacts, index: RecordIndex, owner: str) -> bool:
    """Remove the record and then the outputs of the orphaned key ``key`` (see
    :func:`orphan_reasons`) under its claim, as a redo would, without running a job.
    Returns False when another scheduler holds the claim or the record changed."""
    claim = await _take_down(task, key, judged, index, owner)
    if claim is None:
        return False
    await task.claims.release(claim)
    return True


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

    if await _take_down(task, key, judged, index, owner) is None:
        return None
    return await lifecycle.execute(
        task, key, owner=owner, hooks=hooks, claimed=True, on_state=on_state, slot=slot, record_fields=fields
    )
