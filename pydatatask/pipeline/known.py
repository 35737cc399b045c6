"""What a scheduler knows of its repositories between two listings of them.

A scheduler tick needs the keys (and, for inputs, the versions) of every repository its
tasks link to. Listing them all at every tick costs a remote store one paginated request
per thousand keys per repository, most of it to learn what the scheduler did itself: the
records, claims and outputs of its own jobs. :class:`KnownListings` keeps the last listing
of each stored repository (views are computed from their children's, as in any tick) and
the changes this scheduler made since:

* a job that ends adds its record to the task's ``done`` repository and drops its claim
  from ``live``; a job that succeeds adds its key (or, for a fan-out output, its
  children) to the outputs its record names, so the key is ready downstream at once,
  with no listing;
* a key another scheduler holds (found by the claim and record check at launch) is noted
  as claimed;
* anything not learnt exactly (a failed job's cleanup, keys written beyond a job's own,
  writes through a view, a stale claim taken over, an orphan removed) marks the
  repositories concerned for a listing at the next tick; when that happens while a tick
  lists, the tick's listings may be from either side of the change, so the ready groups
  of the fan-in tasks reading them wait for the next tick (:attr:`KnownListings.changed_during`).

Every repository is also listed again once its *refresh interval* has passed since its
last listing: that is how changes from outside reach the run (inputs nobody in the
pipeline writes, another scheduler sharing the state). The interval is the pipeline's
``refresh`` when given, else :data:`LOCAL_REFRESH` for repositories on this machine
(memory, files) and :data:`REMOTE_REFRESH` for the others (S3, MongoDB, registries, your
own backends). The scheduler lists everything at its first tick, and again whenever the
known state says nothing is left to do, so a run never ends on the known state alone.

A repository in this process's memory (a task's default ``done`` and ``live`` among them)
is not learnt but asked at every tick: its listing is exact and free, handed out without a
copy (see :mod:`~pydatatask.repository.memory`), so the scheduler keeps no copy of its keys
of its own and notes no change per job for it.

A key learnt from a job's success has no version until the repository's next listing:
a downstream job launched before then records none for it (its record still names the
upstream record it read after, see :mod:`~pydatatask.pipeline.staleness`). The inputs of
a fan-in task, whose records hold a digest over the versions of the members, are listed
again instead of learnt.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from ..repository.base import Repository
from ..repository.clock import ClockRepository
from ..repository.deferred import DeferredMetadataRepository
from ..repository.filesystem import DirectoryRepository, FileRepository
from ..repository.memory import MemoryBlobRepository, MemoryMetadataRepository, _DictKeys
from ..repository.serialized import SerializedMetadataRepository
from ..repository.view import RepositoryView, stored_repositories

if TYPE_CHECKING:
    from ..task.base import Task

__all__ = ("KnownListings", "LOCAL_REFRESH", "REMOTE_REFRESH", "is_local", "default_refresh")

#: seconds between listings of a repository on this machine, by default
LOCAL_REFRESH = 2.0
#: seconds between listings of a remote repository, by default
REMOTE_REFRESH = 30.0

_LOCAL_KINDS = (MemoryMetadataRepository, MemoryBlobRepository, FileRepository, DirectoryRepository)

Listing = set[str] | dict[str, str | None]


def is_local(repo: Repository) -> bool:
    """Whether ``repo`` keeps its data in this process or on this machine's disks
    (through wrappers that store in another repository)."""
    while True:
        if isinstance(repo, DeferredMetadataRepository):
            repo = repo.target
        elif isinstance(repo, SerializedMetadataRepository):
            repo = repo.blobs
        else:
            return isinstance(repo, (*_LOCAL_KINDS, ClockRepository))


def default_refresh(repo: Repository) -> float:
    """The refresh interval of ``repo`` when the pipeline sets none."""
    return LOCAL_REFRESH if is_local(repo) else REMOTE_REFRESH


class _Known:
    """The last listing of one stored repository and the changes learnt since."""

    __slots__ = (
        "repo",
        "refresh",
        "value",
        "listed_at",
        "changed_at",
        "changes",
        "applied",
        "listings",
        "kind",
    )

    def __init__(self, repo: Repository, refresh: float) -> None:
        self.repo = repo
        self.refresh = refresh
        #: the last listing with the changes learnt since (None: none yet; always None for
        #: a repository in memory, see :meth:`memory`)
        self.value: Listing | None = None
        #: what the ticks list of a repository in memory ("keys", "versions"; None: not
        #: listed yet)
        self.kind: str | None = None
        #: when the listing in ``value`` started (:func:`time.monotonic`)
        self.listed_at = -math.inf
        #: when something not learnt exactly changed it (a listing started later shows it)
        self.changed_at = -math.inf
        #: ``(when, key, present)`` learnt since the listing started; ``applied`` of them
        #: are in ``value``
        self.changes: list[tuple[float, str, bool]] = []
        self.applied = 0
        self.listings = 0

    def memory(self) -> _DictKeys | None:
        """The repository, when it is in this process's memory and lists what it stores
        (through the deferred store of a task's default ``done`` and ``live``): its
        listing is then asked at every tick instead of learnt (exact, and without a copy)."""
        repo: Any = self.repo
        if type(repo) is DeferredMetadataRepository:
            repo = repo.target
        return repo if isinstance(repo, _DictKeys) and repo.lists_as_stored() else None

    def due(self, now: float) -> bool:
        return self.value is None or self.changed_at >= self.listed_at or now - self.listed_at >= self.refresh

    def current(self) -> Listing:
        """The listing with the changes learnt since (a new object when there are any:
        the figures of earlier ticks keep theirs); of a repository in memory, its own."""
        memory = self.memory()
        if memory is not None and self.value is None:
            return memory.shared_versions_now() if self.kind == "versions" else memory.shared_keys_now()
        assert self.value is not None
        pending = self.changes[self.applied :]
        if pending:
            self.value = _apply(self.value, pending, copy=True)
            self.applied = len(self.changes)
        return self.value

    def listed(self, value: Listing, started: float) -> None:
        """Take a listing that started at ``started``; what was learnt while it ran is
        applied to it again (the listing may have been made before or after the change)."""
        self.listed_at = started
        self.listings += 1
        if self.memory() is not None:
            # asked again at every tick (see fill): nothing kept, nothing learnt
            self.kind = "versions" if isinstance(value, dict) else "keys"
            self.value = None
            self.changes = []
            return
        self.changes = [c for c in self.changes if c[0] >= started]
        self.value = _apply(value, self.changes, copy=bool(self.changes))
        self.applied = len(self.changes)


def _apply(value: Listing, changes: Iterable[tuple[float, str, bool]], *, copy: bool) -> Listing:
    if isinstance(value, dict):
        versions = dict(value) if copy else value
        for _, key, present in changes:
            if present:
                versions[key] = None  # written by a job of this run: unknown until listed
            else:
                versions.pop(key, None)
        return versions
    keys = set(value) if copy else value
    for _, key, present in changes:
        if present:
            keys.add(key)
        else:
            keys.discard(key)
    return keys


class _EndPlan(NamedTuple):
    """Where the end of a job of one task is learnt (see :meth:`KnownListings.job_ended`)."""

    #: how many links the task had when this was made
    links: int
    #: the listings of its ``done`` and ``live`` repositories and ``(link name, listing)``
    #: of each output; None: the general path for every job
    fast: tuple[_Known, _Known, tuple[tuple[str, _Known], ...]] | None


class KnownListings:
    """The listings a scheduler knows, for the stored repositories under ``tasks``' links.

    :param refresh: seconds between listings of every repository (None: by kind, see
        :func:`default_refresh`).
    """

    def __init__(self, tasks: Iterable[Task], refresh: float | None = None) -> None:
        self._known: dict[int, _Known] = {}
        # repositories whose learnt keys need a listing (for the versions): fan-in inputs
        self._listed_only: set[int] = set()
        for task in tasks:
            for link in task.links.values():
                if not (link.required_for_start or link.inhibits_start or link.name == "done"):
                    continue
                for repo in stored_repositories(link.repository):
                    if isinstance(repo, ClockRepository):
                        continue  # computed from the time: always asked
                    if id(repo) not in self._known:
                        interval = default_refresh(repo) if refresh is None else refresh
                        self._known[id(repo)] = _Known(repo, interval)
                    if task.group_by is not None and link.required_for_start:
                        self._listed_only.add(id(repo))
        self._started = 0.0
        self._filled: set[int] = set()
        # keys learnt present while a tick computes, as {id(repository): keys}
        self._during: dict[int, set[str]] | None = None
        #: the stored repositories that changed in ways not learnt exactly (keys gone,
        #: records or outputs removed, see :meth:`relist`) while the last tick computed
        self.changed_during: set[int] = set()
        self._changed: set[int] | None = None
        # what a job's end learns, worked out once per task (see _end_plan)
        self._end_plans: dict[str, _EndPlan] = {}

    # ------------------------------------------------------------ one tick
    def fill(self, cache: dict[tuple[int, str], asyncio.Future[Any]], *, full: bool = False) -> None:
        """Put the known listings that are not due into a fresh
        :func:`~pydatatask.repository.listing.listing_scope` cache, and those of the
        repositories in memory as they are now; the others (all with ``full``) are listed
        by the tick. Call :meth:`take` at the end of the tick."""
        now = self._started = time.monotonic()
        self._filled = set()
        self._during = {}
        self._changed = set()
        loop = asyncio.get_running_loop()
        for repo_id, known in self._known.items():
            memory = known.memory()
            if memory is not None:
                # exact at this moment, and no copy: listed so at every tick, even a full one
                kind = known.kind
                if kind is None:
                    continue  # the first listing tells which the ticks ask for
                value: Listing = (
                    memory.shared_versions_now() if kind == "versions" else memory.shared_keys_now()
                )
                known.listed_at = now
                known.listings += 1
            elif full or known.due(now):
                continue
            else:
                value = known.current()
            fut: asyncio.Future[Any] = loop.create_future()
            fut.set_result(value)
            cache[(repo_id, "versions" if isinstance(value, dict) else "keys")] = fut
            self._filled.add(repo_id)

    def take(self, cache: Mapping[tuple[int, str], asyncio.Future[Any]]) -> dict[int, set[str]]:
        """Keep the listings the tick made (after :meth:`fill`); return the keys learnt
        present while it ran, as ``{id(repository): keys}``: the tick's listings may
        miss them (or show an earlier version) while the job records it read show their
        jobs done, so the scheduler holds them back from downstream until the next tick."""
        for repo_id, known in self._known.items():
            filled = repo_id in self._filled
            if filled and known.kind != "keys":
                continue
            for kind in ("versions", "keys"):
                fut = cache.get((repo_id, kind))
                if fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None:
                    if filled:
                        # a repository in memory filled with its keys: the tick listed its
                        # versions too, which the next ticks are filled with instead
                        if kind == "versions":
                            known.kind = kind
                    else:
                        known.listed(fut.result(), self._started)
                    break
        during, self._during = self._during or {}, None
        self.changed_during, self._changed = self._changed or set(), None
        return during

    def _mark(self, repo_id: int, known: _Known, now: float) -> None:
        known.changed_at = now
        if self._changed is not None:
            self._changed.add(repo_id)

    # ------------------------------------------------------------ learning
    def learn(self, repo: Repository, keys: Iterable[str], present: bool = True) -> None:
        """Note that ``keys`` are now in (or, ``present=False``, gone from) ``repo``; a view
        has its stored repositories listed at the next tick instead."""
        keys = list(keys)
        known = self._known.get(id(repo))
        if known is None:
            if isinstance(repo, RepositoryView):
                self.relist([repo])
                if present and self._during is not None:
                    for stored in stored_repositories(repo):
                        self._during.setdefault(id(stored), set()).update(keys)
            return
        if present and self._during is not None:
            self._during.setdefault(id(repo), set()).update(keys)
        if not present and self._changed is not None:
            self._changed.add(id(repo))
        if known.value is None:
            return  # listed at the next tick anyway
        now = time.monotonic()
        if present and id(repo) in self._listed_only:
            known.changed_at = now  # (the keys held back by the tick are in _during)
            return
        known.changes.extend((now, key, present) for key in keys)

    def _learn_one(self, repo: Repository, key: str, present: bool, now: float) -> None:
        """:meth:`learn` of one key, without the work the general case needs (a job's end
        learns three keys: its record, its claim gone, its output)."""
        known = self._known.get(id(repo))
        if known is None or (present and (self._during is not None or id(repo) in self._listed_only)):
            self.learn(repo, [key], present)
        elif known.value is not None:
            known.changes.append((now, key, present))

    def relist(self, repos: Iterable[Repository] | None = None) -> None:
        """Have ``repos`` (the stored ones under them; default: every one) listed at the next tick."""
        now = time.monotonic()
        if repos is None:
            for repo_id, known in self._known.items():
                self._mark(repo_id, known, now)
            return
        for repo in repos:
            for stored in stored_repositories(repo):
                entry = self._known.get(id(stored))
                if entry is not None:
                    self._mark(id(stored), entry, now)

    def job_ended(self, task: Task, key: str, record: Mapping[str, Any] | None) -> None:
        """Learn what the end of the job of ``key`` changed: its record (None: another
        scheduler holds or has done the key), its claim released, its outputs."""
        if record is None:
            # another scheduler holds the key, or has done it (maybe redone: its record and
            # outputs changed, with versions this scheduler never saw)
            self.learn(task.live, [key])
            self.task_changed(task)
            return
        plan = self._end_plans.get(task.name)
        if plan is None or plan.links != len(task.links):
            plan = self._end_plan(task)
        fast = plan.fast
        if (
            fast is not None
            and self._during is None
            and record.get("success")
            and record.get("children") is None
            and not record.get("wrote")
        ):
            # the common case, outside a tick: the record in, the claim out, the key in
            # the outputs the record names (all of them when it names none), each one
            # change appended to a known listing (none yet: listed at the next tick anyway)
            now = time.monotonic()
            done, live, learnt = fast
            if done.value is not None:
                done.changes.append((now, key, True))
            if live.value is not None:
                live.changes.append((now, key, False))
            named = record.get("outputs")
            for name, known in learnt:
                if known.value is not None and (not isinstance(named, list) or name in named):
                    known.changes.append((now, key, True))
            return
        now = time.monotonic()
        self._learn_one(task.done, key, True, now)
        self._learn_one(task.live, key, False, now)
        outputs = task.output_links
        if not record.get("success"):
            # the failed attempts' cleanup removed what they wrote, maybe beyond the key
            self.relist(link.repository for link in outputs)
            return
        named = record.get("outputs")
        children = record.get("children")
        if children is None and not task.fan_out and not record.get("wrote"):
            # the common case: the key itself, in the outputs the record names (all of them
            # when it names none)
            for link in outputs:
                if not isinstance(named, list) or link.name in named:
                    self._learn_one(link.repository, key, True, now)
            return
        children = children if isinstance(children, dict) else {}
        for link in outputs:
            if isinstance(named, list) and link.name not in named and link.name not in children:
                continue
            kids = children.get(link.name)
            self.learn(link.repository, kids if isinstance(kids, list) else [key])
        if record.get("wrote"):
            self.relist(link.repository for link in outputs)  # keys beyond its own, somewhere
        if task.fan_out:
            # the job replaced its whole set of children: those of an earlier run are gone
            # (removed when it began), which adding the new ones does not tell
            self.relist(link.repository for link in outputs if link.name in task.fan_out)

    def _end_plan(self, task: Task) -> _EndPlan:
        """What the end of a job of ``task`` learns where (made at its first job's end, and
        again when its links change). ``fast`` is None when the general path of
        :meth:`job_ended` is needed for every job: a fan-out task, or a record, claim or
        output repository without a listing of its own here (a view, a repository no
        tick lists) or listed rather than learnt (a fan-in input)."""
        done = self._known.get(id(task.done))
        live = self._known.get(id(task.live))
        outputs: list[tuple[str, _Known]] = []
        for link in task.output_links:
            known = self._known.get(id(link.repository))
            if known is None or id(link.repository) in self._listed_only:
                break
            outputs.append((link.name, known))
        else:
            if (
                done is not None
                and live is not None
                and id(task.done) not in self._listed_only
                and not task.fan_out
            ):
                plan = _EndPlan(len(task.links), (done, live, tuple(outputs)))
                self._end_plans[task.name] = plan
                return plan
        plan = self._end_plans[task.name] = _EndPlan(len(task.links), None)
        return plan

    def task_changed(self, task: Task) -> None:
        """Something removed or rewrote records, claims or outputs of ``task`` (an orphan
        removed, a stale claim recovered, a job that could not run): list them again."""
        self.relist([task.done, task.live, *(link.repository for link in task.output_links)])

    # ------------------------------------------------------------ figures
    def until_due(self) -> float:
        """Seconds until the next repository is due for a listing (0: one is due now)."""
        now = time.monotonic()
        listed = [k for k in self._known.values() if k.kind is None or k.memory() is None]
        if not listed:
            return math.inf  # (a repository in memory is asked at every tick: never due)
        return max(0.0, min(k.listed_at + k.refresh - now if not k.due(now) else 0.0 for k in listed))

    def listings(self, repo: Repository | None = None) -> int:
        """How many listings the ticks made so far, of ``repo`` (a stored repository) or
        of every repository."""
        if repo is not None:
            known = self._known.get(id(repo))
            return 0 if known is None else known.listings
        return sum(k.listings for k in self._known.values())
