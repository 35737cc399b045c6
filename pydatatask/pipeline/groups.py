"""Readiness across fan-out and fan-in (see :mod:`pydatatask.task.fan` for the task side).

**Fan-out gating.** A key of a task B that B reads from a fan-out output of an upstream
task A, and that is not a key of A itself, is a *child*: B runs on it only when the
success record of its parent (the longest key of A it is a child of) lists it. A child of
a parent that is running, retrying, failed or was interrupted (in this scheduler or in
another, or by a ``kill -9``) is never ready, and neither is a key no job of A knows. The
parents' records are read once each (records are immutable) and only for children that B
could start; the test per child is a set lookup.

**Fan-in gating.** A task with ``group_by`` has one key per group: the groups of the keys
present in all its inputs (its *members*). A group is ready when no output, record or
claim holds it and

* every member passes the gating a key of an ordinary task would (success records of the
  upstream tasks, fan-out gating), and
* no key of a direct upstream task that falls in the group (by ``group_by``) lacks a
  success record: a member still ready, running, retrying or failed upstream holds the
  whole group.

``status`` shows a held group under ``blocked``; ``why`` names the members that hold it.

**Staleness across both** (see :mod:`pydatatask.pipeline.staleness`): a stale key waits
while anything it reads, directly or through the tasks in between, is pending upstream
(:func:`waiting_upstream`: the members of a group, the parent of a child, the same key),
and the records of children that a redone parent no longer writes are found along the
fan-out outputs above a task (:func:`fan_out_ancestors`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..repository.base import Repository
from ..repository.view import RepositoryView, stored_repositories
from ..task.base import Task
from ..task.fan import group_of, parent_among
from .record_index import RecordIndex
from .staleness import FanOutAncestor

if TYPE_CHECKING:
    from .pipeline import Pipeline

__all__ = (
    "GroupChange",
    "group_keys",
    "fan_out_blocked",
    "held_groups",
    "changed_groups",
    "group_reasons",
    "cascade_keys",
    "fan_out_ancestors",
    "fan_out_separators",
    "waiting_upstream",
)


@dataclass(frozen=True)
class GroupChange:
    """How the membership of a recorded group differs from its record's ``members``."""

    group: str
    added: tuple[str, ...]
    removed: tuple[str, ...]

    def describe(self) -> str:
        """One line: what was added and removed."""
        parts = []
        if self.added:
            parts.append(f"{len(self.added)} member(s) added ({_first(self.added)})")
        if self.removed:
            parts.append(f"{len(self.removed)} removed ({_first(self.removed)})")
        return f"group {self.group!r}: " + ", ".join(parts)


def _first(keys: tuple[str, ...]) -> str:
    return ", ".join(map(repr, keys[:3])) + (", ..." if len(keys) > 3 else "")


class _AnyOf:
    """Membership in any of several sets, without building their union."""

    __slots__ = ("sets",)

    def __init__(self, *sets: AbstractSet[str]) -> None:
        self.sets = sets

    def __contains__(self, key: object) -> bool:
        return any(key in s for s in self.sets)


def group_keys(task: Task, members: Iterable[str]) -> dict[str, list[str]]:
    """``{group: members}`` of the keys ``members`` for the fan-in ``task``."""
    groups: dict[str, list[str]] = {}
    for key in members:
        group = group_of(task, key)
        if group is not None:
            groups.setdefault(group, []).append(key)
    return groups


def _keeps_keys(repo: Repository) -> bool:
    return not isinstance(repo, RepositoryView) or repo.keeps_keys


def _fan_out_links(task: Task, up: Task) -> list[tuple[str, str]]:
    """The fan-out links (name, separator) of ``up`` whose repositories ``task`` requires,
    read with their keys as they are."""
    out: list[tuple[str, str]] = []
    for name, sep in up.fan_out.items():
        written = up.links[name].repository
        stored = stored_repositories(written)
        for link in task.required_links:
            reads = stored_repositories(link.repository)
            if (
                any(r is w for r in reads for w in stored)
                and _keeps_keys(link.repository)
                and _keeps_keys(written)
            ):
                out.append((name, sep))
                break
    return out


def fan_out_separators(task: Task, up: Task) -> tuple[str, ...]:
    """The separators of the fan-out outputs of ``up`` that ``task`` reads (see
    :class:`~pydatatask.pipeline.staleness.InputSource`)."""
    return tuple(sep for _, sep in _fan_out_links(task, up)) if up.fan_out else ()


async def fan_out_blocked(
    tasks: dict[str, Task],
    name: str,
    candidates: AbstractSet[str],
    pipeline: Pipeline,
    universes: dict[str, set[str]],
    records: dict[str, RecordIndex],
    keys_of: dict[int, set[str]],
) -> set[str]:
    """Those of ``candidates`` (keys task ``name`` could start) that are children in a
    fan-out output of an upstream task not listed by a success record of their parent."""
    blocked: set[str] = set()
    task = tasks[name]
    for up_name in pipeline.graph.upstream[name]:
        up = tasks[up_name]
        if not up.fan_out or not candidates:
            continue
        links = _fan_out_links(task, up)
        if not links:
            continue
        own = universes[up_name]
        known = _AnyOf(own, keys_of.get(id(up.done), set()), keys_of.get(id(up.live), set()))
        index = records[up_name]
        for link_name, sep in links:
            parents: dict[str, str] = {}
            for key in candidates:
                if key in own or key in blocked:
                    continue  # a key of the upstream task itself: the ordinary gating
                parent = parent_among(key, known, sep)  # membership only
                if parent is None:
                    blocked.add(key)  # no job of the upstream task wrote it
                else:
                    parents[key] = parent
            if not parents:
                continue
            await index.load(set(parents.values()))
            success, listed, children = index.success, index.listed, index.children
            for key, parent in parents.items():
                if not (success.get(parent) is True and parent in listed):
                    blocked.add(key)
                    continue
                kids = children.get(parent, {}).get(link_name)
                if kids is None or key not in kids:
                    blocked.add(key)
    return blocked


async def held_groups(
    tasks: dict[str, Task],
    name: str,
    ready: AbstractSet[str],
    pipeline: Pipeline,
    universes: dict[str, set[str]],
    records: dict[str, RecordIndex],
) -> dict[str, tuple[str, str]]:
    """Of the groups ``ready`` of the fan-in task ``name``, those a key of a direct upstream
    task holds (it falls in the group and has no success record): ``{group: (task, key)}``."""
    held: dict[str, tuple[str, str]] = {}
    if not ready:
        return held
    task = tasks[name]
    for up_name in pipeline.graph.upstream[name]:
        needed: dict[str, str] = {}
        for key in universes[up_name]:
            group = group_of(task, key)
            if group is not None and group in ready and group not in held:
                needed[key] = group
        if not needed:
            continue
        index = records[up_name]
        await index.load(needed)
        succeeded = index.succeeded_among(needed)
        for key in sorted(needed):
            group = needed[key]
            if key not in succeeded and group not in held:
                held[group] = (up_name, key)
    return held


async def changed_groups(
    pipeline: Pipeline, task_name: str, groups: Iterable[str] | None = None
) -> dict[str, GroupChange]:
    """For the success-recorded groups of the fan-in task ``task_name`` (all, or those of
    ``groups``), how the current membership (from one listing of its inputs) differs from
    the ``members`` the record stores; groups whose membership is the same are left out.

    A group that has no member any more shows every recorded member as removed.
    """
    from ..errors import ConfigurationError

    task = pipeline.task(task_name)
    if task.group_by is None:
        raise ConfigurationError(f"task {task_name!r} has no group_by: it has no groups")
    async with pipeline:
        listings = [await link.repository.keys() for link in task.required_links]
        present = set(listings[0]).intersection(*listings[1:]) if listings else set()
        current = group_keys(task, present)
        recorded = await task.done.keys()
        wanted = sorted(recorded if groups is None else recorded & set(groups))
        values = await task.done.get_many(wanted, on_corrupt=lambda err: None)
    changes: dict[str, GroupChange] = {}
    for group in wanted:
        record = values.get(group)
        if not isinstance(record, dict) or record.get("success") is not True:
            continue
        before = {k for k in record.get("members") or () if isinstance(k, str)}
        now = set(current.get(group, ()))
        if before != now:
            changes[group] = GroupChange(group, tuple(sorted(now - before)), tuple(sorted(before - now)))
    return changes


async def cascade_keys(
    pipeline: Pipeline, plan: list[tuple[Task, Any]], seeds: list[str], keys: set[str]
) -> dict[tuple[str, str], set[str]]:
    """The keys ``rm`` removes from each ``(task, link)`` of ``plan`` when it removes
    ``keys`` from the tasks ``seeds`` and cascades: a fan-out output also loses the
    children of the keys; downstream, a task takes the keys and children of its upstream
    tasks in the plan, a fan-in task their groups."""
    tasks = pipeline.tasks
    in_plan = list(dict.fromkeys(t.name for t, _ in plan))
    own: dict[str, set[str]] = {name: set(keys) for name in seeds}
    spread: dict[str, set[str]] = {}  # the keys of a task and the children of its jobs
    for name in sorted(set(in_plan) | set(seeds), key=pipeline.graph.order().index):
        task = tasks[name]
        if name not in own:
            base: set[str] = set()
            for up in pipeline.graph.upstream[name]:
                base |= spread.get(up, set())
            if task.group_by is not None:
                base = {g for g in (group_of(task, k) for k in base) if g is not None}
            own[name] = base
        reach = set(own[name])
        for link_name, sep in task.fan_out.items():
            for child in await task.links[link_name].repository.keys():
                if parent_among(child, own[name], sep) is not None:
                    reach.add(child)
        spread[name] = reach
    out: dict[tuple[str, str], set[str]] = {}
    for task, link in plan:
        out[(task.name, link.name)] = spread[task.name] if link.name in task.fan_out else own[task.name]
    return out


def group_reasons(pipeline: Pipeline, task_name: str, key: str, figures: dict[str, Any]) -> list[str]:
    """Why the group ``key`` of the fan-in task ``task_name`` is held (for ``why``)."""
    fig = figures[task_name]
    reasons: list[str] = []
    holder = fig.held.get(key)
    if holder is not None:
        up, member = holder
        upview = figures.get(up)
        if upview is None:
            reasons.append(f"group {key!r} is held: member {member!r} is not finished upstream")
        else:
            state = "not finished"
            if member in upview.failed:
                state = "failed"
            elif member in upview.corrupt:
                state = "its job record is corrupt"
            reasons.append(
                f"group {key!r} is held: upstream task {up!r} has no success record for member {member!r} ({state})"
            )
    elif key in fig.blocked:
        reasons.append(f"group {key!r} is held: one of its members is not finished upstream")
    if not reasons and key not in fig.universe:
        reasons.append(f"no key in the inputs of {task_name!r} falls in group {key!r}")
    return reasons


def _same_keys(task: Task, up: Task) -> bool:
    """Whether every path from an output of ``up`` to an input of ``task`` keeps keys."""
    for link in task.required_links:
        reads = stored_repositories(link.repository)
        for out in up.output_links:
            if any(r is w for r in reads for w in stored_repositories(out.repository)):
                if not (_keeps_keys(link.repository) and _keeps_keys(out.repository)):
                    return False
    return True


def fan_out_ancestors(pipeline: Pipeline, tasks: dict[str, Task], name: str) -> list[FanOutAncestor]:
    """The fan-out outputs whose children the keys of task ``name`` are: those of its
    direct upstream tasks, and further up through tasks that keep keys as they are (no
    fan-out, no fan-in), so that a record of a child two stages down is known too."""
    found: list[FanOutAncestor] = []
    seen = {name}
    todo = [name]
    while todo:
        below = tasks[todo.pop()]
        for up_name in pipeline.graph.upstream[below.name]:
            up = tasks.get(up_name)
            if up is None:
                continue
            for link, sep in _fan_out_links(below, up):
                found.append(FanOutAncestor(up_name, link, sep))
            if up_name not in seen and not up.fan_out and up.group_by is None and _same_keys(below, up):
                seen.add(up_name)
                todo.append(up_name)
    return found


def waiting_upstream(
    pipeline: Pipeline,
    tasks: dict[str, Task],
    name: str,
    keys: Iterable[str],
    pending: Mapping[str, AbstractSet[str]],
    universes: Mapping[str, set[str]],
    grouped: Mapping[str, Mapping[str, list[str]]],
    to_upstream: Callable[[Task, Task], Callable[[str], set[str]] | None],
) -> set[str]:
    """Those of ``keys`` (of task ``name``) that read, directly or through the tasks in
    between, a key that is *pending* upstream (``pending``: stale and about to be redone,
    or running): a key redone now would be stale again once that upstream job is done.
    The members of a group, the parents of children and keys renamed by views are
    followed."""
    memo: dict[tuple[str, str], bool] = {}

    def reads_pending(task_name: str, key: str) -> bool:
        ident = (task_name, key)
        if ident in memo:
            return memo[ident]
        memo[ident] = False  # a cycle reads nothing new
        task = tasks[task_name]
        result = False
        for up_name in pipeline.graph.upstream[task_name]:
            up = tasks.get(up_name)
            if up is None:
                continue
            mapped = to_upstream(task, up)
            read = grouped.get(task_name, {}).get(key, []) if task.group_by is not None else [key]
            upkeys: set[str] = set()
            for k in read:
                upkeys |= {k} if mapped is None else mapped(k)
            for _, sep in _fan_out_links(task, up) if up.fan_out else []:
                for k in list(upkeys):
                    parent = parent_among(k, _AnyOf(universes[up_name], pending.get(up_name, set())), sep)
                    if parent is not None:
                        upkeys.add(parent)
            ahead = pending.get(up_name, set())
            if any(k in ahead for k in upkeys) or any(
                k in universes[up_name] and reads_pending(up_name, k) for k in upkeys
            ):
                result = True
                break
        memo[ident] = result
        return result

    return {k for k in keys if reads_pending(name, k)}
