"""Fan-out and fan-in: jobs whose keys differ from the keys they write or read.

**Fan-out.** An output link given as ``FanOut(repository)`` receives *children* of the job
key: the job of ``A`` writes ``A/page-0001``, ``A/page-0002``, ... (the key, the separator,
anything after it). Each write is checked before it becomes visible: a key that is not a
child of the job's key fails the attempt. The job's success record lists the children it
wrote, per link (``"children": {"pages": [...]}``), and a downstream task runs on a child
only when such a record lists it (see :mod:`pydatatask.pipeline.groups`): a running,
failed or interrupted parent, in this process or another, has no children downstream. A
job of a parent starts by deleting the children a previous run left, so a rerun replaces
the whole set.

**Fan-in.** A task given ``group_by=`` (a function of a member key returning its group's
key, or None for a key in no group) runs one job per *group*: its key is the group key,
its outputs are written under it, and ``job.members`` (or a ``members`` parameter) names
the member keys, sorted. The record stores them (``"members": [...]``) and, per input, a
digest over the members with the version and upstream stamp of each, so that a group whose
member is added, removed or redone later is stale (:mod:`pydatatask.pipeline.staleness`).

This module holds what the task layer needs; the readiness rules are in
:mod:`pydatatask.pipeline.groups`.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, JobError
from ..keys import validate_key
from ..repository.base import Repository
from ..repository.journal import WriteJournal, visible_keys
from ..repository.view import stored_repositories

if TYPE_CHECKING:
    from .base import Task

__all__ = ("FanOut", "GroupBy", "is_child", "parent_among", "group_of")

#: the key function of a fan-in task, from a member key to its group key (or None)
GroupBy = Callable[[str], "str | None"]

_SEPARATORS = frozenset("/._-")


@dataclass(frozen=True)
class FanOut:
    """Marks an output link whose keys are children of the job key.

    :param repository: the output repository.
    :param separator: what joins the parent key and the rest of a child key: ``"/"`` (the
        default: ``A/page-0001``) or, for flat keys, one of ``.``, ``_`` and ``-``.
    """

    repository: Repository
    separator: str = "/"

    def __post_init__(self) -> None:
        if not isinstance(self.repository, Repository):
            raise ConfigurationError(f"FanOut: {self.repository!r} is not a pydatatask Repository")
        if self.separator not in _SEPARATORS:
            raise ConfigurationError(
                f"FanOut: separator {self.separator!r} must be one of {', '.join(sorted(_SEPARATORS))}"
            )


def is_child(key: str, parent: str, separator: str) -> bool:
    """Whether ``key`` is a child of ``parent``: the parent, the separator, then more."""
    return len(key) > len(parent) + 1 and key.startswith(parent) and key[len(parent)] == separator


def parent_among(key: str, parents: Container[str], separator: str) -> str | None:
    """The longest key of ``parents`` that ``key`` is a child of, or None."""
    end = key.rfind(separator)
    while end > 0:
        prefix = key[:end]
        if prefix in parents:
            return prefix
        end = key.rfind(separator, 0, end)
    return None


def group_of(task: Task, key: str) -> str | None:
    """The group of the member ``key`` for the fan-in ``task`` (cached per task); a key
    function that returns neither a valid key nor None is a
    :class:`~pydatatask.errors.ConfigurationError`."""
    cache = task._group_cache
    try:
        return cache[key]
    except KeyError:
        pass
    func = task.group_by
    assert func is not None
    group = func(key)
    if group is not None:
        if not isinstance(group, str):
            raise ConfigurationError(
                f"task {task.name!r}: group_by returned {group!r} for {key!r}; expected a key (str) or None"
            )
        try:
            validate_key(group)
        except Exception as exc:
            raise ConfigurationError(
                f"task {task.name!r}: group_by returned {group!r} for {key!r}, not a valid key: {exc}"
            ) from exc
    if len(cache) >= 1 << 21:
        cache.clear()
    cache[key] = group
    return group


# ---------------------------------------------------------------- fan-out, task side
def fan_out_repositories(task: Task) -> dict[int, tuple[str, str]]:
    """``{id(repository): (link name, separator)}`` of the fan-out outputs of ``task`` and of
    the repositories stored under them."""
    out: dict[int, tuple[str, str]] = {}
    for name, sep in task.fan_out.items():
        repo = task.links[name].repository
        out[id(repo)] = (name, sep)
        for under in stored_repositories(repo):
            out.setdefault(id(under), (name, sep))
    return out


def check_child(task: Task, key: str, repo: Repository, written: str) -> None:
    """Refuse (with :class:`~pydatatask.errors.JobError`) a write of ``written`` to a
    fan-out output of ``task`` by the job of ``key`` unless it is ``key`` or a child."""
    found = task._fan_out_ids.get(id(repo))
    if found is None:
        return
    name, sep = found
    if written != key and not _maps_to_child(task.links[name].repository, repo, written, key, sep):
        raise JobError(
            f"task {task.name}: job {key!r} wrote {written!r} to its fan-out output {name!r}; "
            f"a child key is {key + sep}<name>"
        )


def _maps_to_child(top: Repository, repo: Repository, written: str, key: str, sep: str) -> bool:
    if repo is top:
        return is_child(written, key, sep)
    shown = visible_keys(top, {id(repo): {written}})
    return bool(shown) and all(is_child(k, key, sep) or k == key for k in shown)


async def clear_children(task: Task, key: str) -> list[tuple[str, str]]:
    """Delete every child of ``key`` in the fan-out outputs of ``task`` (what an earlier
    run left, before a job starts; what a failed or interrupted one wrote, after it);
    returns ``(link, child)`` of each deleted."""
    deleted: list[tuple[str, str]] = []
    for name, sep in task.fan_out.items():
        repo = task.links[name].repository
        if not repo.is_writable:
            continue
        stale = sorted(k for k in await repo.keys() if is_child(k, key, sep))
        for child in stale:
            await repo.delete(child)
            deleted.append((name, child))
    return deleted


def children_written(task: Task, key: str, journal: WriteJournal) -> dict[str, list[str]]:
    """``{fan-out link: sorted children}`` that the job of ``key`` wrote."""
    written = journal.keys_by_repository()
    out: dict[str, list[str]] = {}
    for name, sep in task.fan_out.items():
        keys = visible_keys(task.links[name].repository, written)
        out[name] = sorted(k for k in keys if is_child(k, key, sep))
    return out


def record_fields(task: Task, key: str, journal: WriteJournal) -> dict[str, Any]:
    """What a success record of ``task`` notes of the job's writes and members: ``wrote``
    (keys beyond ``key`` in the outputs that are not children), ``children`` (fan-out)
    and ``members`` (fan-in)."""
    fields: dict[str, Any] = {}
    wrote = task.wrote_beyond(key, journal)
    if task.fan_out:
        children = children_written(task, key, journal)
        fields["children"] = children
        listed = {k for keys in children.values() for k in keys}
        wrote = [k for k in wrote if k not in listed]
    if wrote:
        fields["wrote"] = wrote
    members = task._job_members.get(key)
    if members is not None:
        fields["members"] = list(members)
    return fields


# ---------------------------------------------------------------- fan-in, task side
async def list_members(task: Task, group: str) -> list[str]:
    """The members of ``group`` present in every input of ``task`` now (one listing of each)."""
    listings = [await link.repository.keys() for link in task.required_links]
    if not listings:
        return []
    present = set(listings[0]).intersection(*listings[1:])
    return sorted(k for k in present if group_of(task, k) == group)
