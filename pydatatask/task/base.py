"""The task base class: links, state repositories, claims and the hooks of the job lifecycle.

A task kind provides *what* runs: :attr:`Task.executor` and :attr:`Task.resources`,
:meth:`Task.prepare` (the work item of one attempt) and :meth:`Task.finish` (commit the
outputs of a finished work item, or raise). Everything around it is shared, in
:mod:`pydatatask.task.lifecycle`: claiming the key in the ``live`` repository
(:mod:`pydatatask.task.claims`), attempts with the retry policy, timeouts, removing partial
outputs of a failed attempt, writing the job record to ``done``, logs and hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, KeyNotFoundError
from ..executor.base import Executor, JobHandle, Outcome, Resources, Slot, Work
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.clock import ClockRepository
from ..repository.deferred import DeferredMetadataRepository
from ..repository.journal import WriteJournal, visible_keys
from ..repository.memory import MemoryMetadataRepository
from .claims import Claims
from .fan import (
    FanOut,
    GroupBy,
    check_child,
    clear_children,
    fan_out_repositories,
    list_members,
    record_fields,
)
from .hooks import Hooks
from .links import Link, LinkKind
from .records import JobState, utcnow_iso
from .retry import RetryPolicy

__all__ = ("Task", "JobContext", "JobOutcome", "BatchOutcome", "DirectCall")

#: ``(function, arguments)``, an attempt handed over as a call for the job lifecycle to
#: await itself (see Task.direct_call)
DirectCall = tuple[Callable[..., Awaitable[Any]], dict[str, Any]]

_NO_RESOURCES = Resources()

#: the values of ``on_change``
ON_CHANGE = ("keep", "rerun")

log = logging.getLogger("pydatatask.task")


@dataclass
class JobOutcome:
    """What :meth:`Task.finish` may return to add to the job record."""

    exit_code: int | None = None
    host: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class BatchOutcome(JobOutcome):
    """What :meth:`Task.finish` may return for an attempt of a batch (``job.batched``):
    the keys of ``job.keys`` that failed, each with why. The other keys succeeded."""

    #: keys of this attempt that failed, with why (an exception instance each)
    failed: dict[str, BaseException] = field(default_factory=dict)


@dataclass
class JobContext:
    """One attempt of one job, passed to :meth:`Task.prepare` and :meth:`Task.finish` (and
    to functions that take a ``job`` parameter)."""

    task: Task
    key: str
    attempt: int
    state: JobState = JobState.RUNNING
    started: float = field(default_factory=time.time)
    #: what :meth:`Task.acquire_slot` returned for this job (e.g. the host it runs on)
    slot: Any = None
    #: the executor's handle on the attempt's work while it runs (None before it is started,
    #: once it ended, and for a call the lifecycle awaits itself, see :meth:`Task.direct_call`,
    #: which prints nothing of its own): what a live view reads the work's output so far from
    handle: JobHandle | None = None
    _log: list[str] = field(default_factory=list)
    #: every key of this attempt, in order (``[key]`` for an unbatched job; ``key`` is the
    #: first); a batch's later attempts carry only the keys that failed before
    keys: list[str] = field(default_factory=list)
    #: keys of a batch that failed before its work ran (an input that could not be read),
    #: with why; :meth:`Task.prepare` leaves them out of the work and the lifecycle fails
    #: them with the keys that :meth:`Task.finish` names
    failed: dict[str, BaseException] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.keys:
            self.keys = [self.key]

    @property
    def batched(self) -> bool:
        """Whether this attempt runs as a batch (the task has ``batch > 1``), even when
        only one key is left in it."""
        return self.task.batch > 1

    @property
    def members(self) -> list[str]:
        """The member keys of a fan-in job (its key is their group's), sorted; empty for
        other jobs."""
        return list(self.task._job_members.get(self.key, ()))

    def log(self, message: str) -> None:
        """Append a line to the job's log (written to the task's ``logs`` repository)."""
        self._log.append(f"{utcnow_iso()} {message}")

    @property
    def log_text(self) -> str:
        """The log lines so far."""
        return "\n".join(self._log) + ("\n" if self._log else "")

    @property
    def log_count(self) -> int:
        """The number of log lines so far."""
        return len(self._log)

    def log_lines(self, start: int = 0) -> list[str]:
        """A copy of the log lines from the ``start``-th on (negative: from the end), for a
        live view of the job."""
        return self._log[start:]


class Task:
    """One phase of computation, run as one job per ready key.

    :param name: unique in the pipeline; letters, digits, ``_`` and ``-``.
    :param inputs: ``{link name: repository}``; a job starts only on keys present in all.
    :param outputs: ``{link name: repository}``; a key present in any is not started.
    :param done: metadata repository receiving a job record per finished job (default: in
        memory, or under the pipeline's ``state_dir``).
    :param live: metadata repository holding a claim per running job (same defaults).
    :param logs: blob repository receiving each job's log (optional).
    :param concurrency: at most this many jobs of this task at once (default 8).
    :param retry: a :class:`~pydatatask.task.retry.RetryPolicy` (default: one attempt).
    :param timeout: per-attempt time limit (``"30s"``, ``"5m"``, seconds).
    :param priority: tasks with higher priority launch first when slots are scarce.
    :param group_by: makes the task a *fan-in*: a function of a key present in the inputs
        returning the key of its group (or None); one job runs per group, keyed by the
        group key, once every member has succeeded upstream (see :doc:`/fan`).
    :param version: the version of the task's code, any string (bump it when a change of
        the code should redo what was done: every job record stores it, and a key whose
        record names another version is *stale*, see :doc:`/staleness`).
    :param on_change: what a run does with the stale keys of this task: ``"keep"`` (the
        default) only reports them; ``"rerun"`` redoes them, as ``run --rerun-stale`` does.
    :param schedule: run one job per time window: an interval (``"5m"``, ``"1h30m"``), a
        cron expression (``"0 * * * *"``) or a
        :class:`~pydatatask.repository.clock.ClockRepository` for more options, linked as
        the input ``clock`` (see :doc:`/periodic`).
    :param batch: one execution unit (a function call, a process, a pod) handles up to
        this many ready keys, each with its own record (default 1: one unit per key; see
        :doc:`/batches`). ``concurrency`` then counts batches.
    :param batch_wait: how long the scheduler may wait for a batch to fill when fewer than
        ``batch`` keys are ready (``"2s"``, seconds; default: start at once with what is
        ready).

    An output given as :class:`~pydatatask.task.fan.FanOut` ``(repository)`` is a
    *fan-out*: the job of ``K`` writes children ``K/...`` there (see :doc:`/fan`).
    """

    #: a short name of where jobs run, written to job records
    runner = "task"
    # what the job lifecycle works out once per task (see pydatatask.task.lifecycle)
    _lifecycle_plan: Any = None

    def __init__(
        self,
        name: str,
        *,
        inputs: Mapping[str, Repository] | None = None,
        outputs: Mapping[str, Repository | FanOut] | None = None,
        done: MetadataRepository | None = None,
        live: MetadataRepository | None = None,
        logs: BlobRepository | None = None,
        concurrency: int = 8,
        retry: RetryPolicy | None = None,
        timeout: float | str | None = None,
        priority: int = 0,
        group_by: GroupBy | None = None,
        version: str | None = None,
        on_change: str = "keep",
        schedule: str | float | ClockRepository | None = None,
        batch: int = 1,
        batch_wait: float | str | None = None,
    ) -> None:
        if (
            not isinstance(name, str)
            or not name
            or not all(c.isalnum() or c in "_-" for c in name)
            or not name.isascii()
        ):
            raise ConfigurationError(
                f"task name {name!r} must be non-empty ASCII letters, digits, '_' or '-'"
            )
        if concurrency < 1:
            raise ConfigurationError(f"task {name!r}: concurrency must be at least 1")
        #: the most keys one execution unit handles, 1 for one unit per key
        self.batch = _check_batch(name, batch, group_by)
        #: how long the scheduler may wait for a batch to fill in seconds, or None to launch at once
        self.batch_wait = _check_batch_wait(name, batch_wait)
        self.name = name
        self.links: dict[str, Link] = {}
        self.concurrency = concurrency
        self.retry = retry or RetryPolicy()
        self.timeout = None if timeout is None else parse_duration(timeout)
        self.priority = priority
        if version is not None and not isinstance(version, str):
            raise ConfigurationError(f"task {name!r}: version must be a string, got {version!r}")
        if on_change not in ON_CHANGE:
            raise ConfigurationError(
                f"task {name!r}: on_change must be one of {', '.join(map(repr, ON_CHANGE))}, got {on_change!r}"
            )
        #: the version of the task's code, stored in every job record
        self.version = version
        #: ``"keep"`` or ``"rerun"``: whether a run redoes the stale keys of this task
        self.on_change = on_change
        self._defaulted: set[str] = set()
        for link_name, repo in (inputs or {}).items():
            self.link(link_name, repo, LinkKind.INPUT)
        #: fan-out output links, with their separators; see :mod:`pydatatask.task.fan`
        self.fan_out: dict[str, str] = {}
        for link_name, given in (outputs or {}).items():
            if isinstance(given, FanOut):
                self.fan_out[link_name] = given.separator
                given = given.repository
            self.link(link_name, given, LinkKind.OUTPUT)
        if self.batch > 1 and self.fan_out:
            raise ConfigurationError(f"task {name!r}: a fan-out task cannot take batch={self.batch}")
        if group_by is not None and not callable(group_by):
            raise ConfigurationError(f"task {name!r}: group_by must be a function of a key, not {group_by!r}")
        #: the key function of a fan-in task, or None for one job per key
        self.group_by = group_by
        self._group_cache: dict[str, str | None] = {}
        # members of the groups found ready by the last tick, and of the groups running
        self._tick_members: dict[str, list[str]] = {}
        self._job_members: dict[str, list[str]] = {}
        self._running_jobs: dict[str, JobContext] = {}
        self._fan_out_ids: dict[int, tuple[str, str]] = {}
        if schedule is not None:
            self._link_schedule(schedule)
        # the defaults are stable objects: Pipeline(state_dir=...) binds their store later,
        # and a view a user built over task.done before that reads the store in use
        if done is None:
            done = DeferredMetadataRepository(
                MemoryMetadataRepository(name=f"{name}.done"), owner=f"task {name!r}: the done repository"
            )
            self._defaulted.add("done")
        if live is None:
            live = DeferredMetadataRepository(
                MemoryMetadataRepository(name=f"{name}.live"), owner=f"task {name!r}: the live repository"
            )
            self._defaulted.add("live")
        self.link("done", done, LinkKind.DONE)
        self.link("live", live, LinkKind.LIVE)
        if logs is not None:
            self.link("logs", logs, LinkKind.LOGS)
        #: the claims of this task's jobs in ``live``
        self.claims = Claims(self.live, name)
        self.claims.batched = self.batch > 1
        # the write journals of running jobs, and what failed jobs wrote (for a minute)
        self._running_journals: dict[str, WriteJournal] = {}
        self._ended_writes: list[tuple[float, dict[int, set[str]]]] = []

    # ---------------------------------------------------------------- links
    def link(
        self,
        name: str,
        repository: Repository,
        kind: LinkKind | str = LinkKind.OTHER,
        *,
        required_for_start: bool | None = None,
        inhibits_start: bool | None = None,
    ) -> Task:
        """Attach ``repository`` under ``name`` with the role ``kind``; returns the task."""
        if name in self.links:
            raise ConfigurationError(f"task {self.name!r} already has a link named {name!r}")
        link = Link.make(
            name, repository, kind, required_for_start=required_for_start, inhibits_start=inhibits_start
        )
        if link.kind in (LinkKind.DONE, LinkKind.LIVE) and not isinstance(repository, MetadataRepository):
            raise ConfigurationError(f"task {self.name!r}: the {name} link needs a MetadataRepository")
        if link.kind is LinkKind.LOGS and not isinstance(repository, BlobRepository):
            raise ConfigurationError(f"task {self.name!r}: the logs link needs a BlobRepository")
        self.links[name] = link
        return self

    def _link_schedule(self, schedule: str | float | ClockRepository) -> None:
        """``schedule=``: a clock of the schedule, as the input link ``clock``."""
        if not isinstance(schedule, ClockRepository):
            try:
                schedule = ClockRepository(schedule, name=self.name)
            except ConfigurationError as exc:
                raise ConfigurationError(f"task {self.name!r}: {exc}") from exc
        self.link("clock", schedule, LinkKind.INPUT)

    def replace_state_repository(self, kind: str, repository: Repository) -> None:
        """Give a defaulted ``done``/``live`` repository its store, or add a ``logs``
        repository where none was given (used by ``Pipeline(state_dir=...)``).

        ``task.done`` and ``task.live`` stay the same objects (their store is bound once,
        see :class:`~pydatatask.repository.deferred.DeferredMetadataRepository`), so what
        a user obtained from them earlier reads and writes the store in use. Repositories
        given to the task are kept.
        """
        link = self.links.get(kind)
        if link is None:
            self.link(kind, repository, LinkKind(kind))
            return
        current = link.repository
        if kind not in self._defaulted or not isinstance(current, DeferredMetadataRepository):
            return
        if not isinstance(repository, MetadataRepository):
            raise ConfigurationError(f"task {self.name!r}: the {kind} link needs a MetadataRepository")
        current.bind(repository)

    def is_defaulted(self, kind: str) -> bool:
        """Whether the ``done``/``live`` repository is the in-memory default (no store bound)."""
        repo = self.links[kind].repository if kind in self.links else None
        return isinstance(repo, DeferredMetadataRepository) and not repo.is_bound

    @property
    def done(self) -> MetadataRepository:
        """Where job records go."""
        return self.links["done"].repository  # type: ignore[return-value]  # checked by link()

    @property
    def live(self) -> MetadataRepository:
        """Where claims of running jobs go."""
        return self.links["live"].repository  # type: ignore[return-value]  # checked by link()

    @property
    def logs(self) -> BlobRepository | None:
        """Where job logs go, if anywhere."""
        link = self.links.get("logs")
        return None if link is None else link.repository  # type: ignore[return-value]

    @property
    def required_links(self) -> list[Link]:
        """Links whose keys a job needs before it starts."""
        return [link for link in self.links.values() if link.required_for_start]

    @property
    def inhibiting_links(self) -> list[Link]:
        """Links whose keys keep a job from starting."""
        return [link for link in self.links.values() if link.inhibits_start]

    @property
    def output_links(self) -> list[Link]:
        """Links the job writes to."""
        return [link for link in self.links.values() if link.is_output]

    @property
    def input_links(self) -> list[Link]:
        """Links of kind input."""
        return [link for link in self.links.values() if link.kind is LinkKind.INPUT]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def describe(self) -> str:
        """One line for status output."""
        return f"{self.runner} task {self.name}"

    async def validate(self) -> None:  # noqa: B027 - optional hook
        """Check the task is runnable (called when the pipeline opens)."""

    def acquire_slot(self) -> Any:
        """Reserve capacity for one more job, or return None if there is none now: a
        :class:`~pydatatask.executor.base.Slot` of :attr:`executor` for :attr:`resources`
        (the executor's quotas are shared by every task using it). The slot is passed to
        the job as ``job.slot``."""
        return self.executor.acquire(self.resources)

    def release_slot(self, slot: Any) -> None:
        """Give back what :meth:`acquire_slot` reserved."""
        if isinstance(slot, Slot):
            slot.executor.release(slot)

    async def cleanup_outputs(self, key: str, journal: WriteJournal | None = None) -> bool:
        """Delete whatever a failed or interrupted attempt left in the outputs.

        That is ``key`` in every output, and, given the job's ``journal``, every other key
        the job wrote in an output repository (or in a repository under an output view);
        keys deleted are dropped from the journal. Returns False if something could not be
        deleted (the error is logged).
        """
        cleaned = True
        for link in self.output_links:
            if link.repository.is_writable:
                try:
                    await link.repository.delete(key)
                except Exception:
                    cleaned = False
                    log.exception(
                        "task %s: could not remove partial output %s of %r", self.name, link.name, key
                    )
        if self.fan_out:
            # every child of the key, whether the journal names it or not: a dead
            # scheduler's claim does not list them (see _durable_journal)
            try:
                await clear_children(self, key)
            except Exception:
                cleaned = False
                log.exception("task %s: could not remove the children of %r", self.name, key)
        if journal is None or not len(journal):
            return cleaned
        outputs = self._output_repositories()
        for repo, written in journal.entries():
            if id(repo) not in outputs or not repo.is_writable:
                continue  # claims, records, logs: not outputs of the job
            try:
                await repo.delete(written)
            except Exception:
                cleaned = False
                log.exception(
                    "task %s: could not remove %r (written by the job of %r) from %s",
                    self.name,
                    written,
                    key,
                    repo.describe(),
                )
            else:
                journal.discard(repo, written)
        return cleaned

    def _output_repositories(self) -> dict[int, Repository]:
        """The output repositories and every repository under an output view, by id."""
        found: dict[int, Repository] = {}
        todo: list[Repository] = [link.repository for link in self.output_links]
        while todo:
            repo = todo.pop()
            if id(repo) not in found:
                found[id(repo)] = repo
                todo.extend(getattr(repo, "children", ()))
        return found

    def _output_paths(self) -> dict[int, str]:
        """``{id(repository): path}`` of the output repositories (``"link"``) and of the
        repositories under output views (``"link/0/1"``: children by position)."""
        paths: dict[int, str] = {}
        todo: list[tuple[Repository, str]] = [(link.repository, link.name) for link in self.output_links]
        while todo:
            repo, path = todo.pop()
            if id(repo) not in paths:
                paths[id(repo)] = path
                todo.extend((child, f"{path}/{i}") for i, child in enumerate(getattr(repo, "children", ())))
        return paths

    def _resolve_output_path(self, path: str) -> Repository | None:
        name, *steps = path.split("/")
        link = self.links.get(name)
        if link is None or not link.is_output:
            return None
        repo = link.repository
        for step in steps:
            children = getattr(repo, "children", ())
            if not step.isdigit() or int(step) >= len(children):
                return None
            repo = children[int(step)]
        return repo

    def journal_from_claim(self, written: Any) -> WriteJournal | None:
        """The journal a dead scheduler left in a claim's ``wrote``: ``[[path, key], ...]``."""
        if not isinstance(written, list):
            return None
        journal = WriteJournal()
        for entry in written:
            if isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry):
                repo = self._resolve_output_path(entry[0])
                if repo is not None:
                    journal.record(repo, entry[1])
        return journal

    def start_journal(self, key: str) -> WriteJournal:
        """The write journal of the job of ``key`` (ended by :meth:`end_journal`).

        Where claims outlive this process, every key the job writes beyond its own is added
        to its claim (``wrote``) before it becomes visible, so that the stale-claim recovery
        after a crash removes it too.
        """
        journal = self._running_journals[key] = self._durable_journal(key)
        return journal

    def _durable_journal(self, key: str) -> WriteJournal:
        live = self.live
        target = live.target if isinstance(live, DeferredMetadataRepository) else live
        fan_out = bool(self.fan_out)
        if fan_out:
            self._fan_out_ids = fan_out_repositories(self)
        if isinstance(target, MemoryMetadataRepository):
            if not fan_out:
                return WriteJournal()  # the claim dies with this process: nothing to recover

            async def check_only(repo: Repository, written: str) -> None:
                check_child(self, key, repo, written)

            return WriteJournal(check_only)

        async def before_new_write(repo: Repository, written: str) -> None:
            if fan_out and id(repo) in self._fan_out_ids:
                # a child: never noted in the claim (a million children would rewrite it a
                # million times); the recovery removes every child of the key instead
                check_child(self, key, repo, written)
                return
            path = self._output_paths().get(id(repo))
            if path is None or (written == key and "/" not in path):
                return  # not an output, or the job's own key (always cleaned up)
            claim = self.claims.get(key)
            if claim is None:
                return  # no claim of ours to note it in (claimed by other means)
            entries = [*claim.value.get("wrote", []), [path, written]]
            if not await self.claims.update(claim, wrote=entries):
                raise JobError(
                    f"task {self.name}: job {key!r} lost its claim; not writing {written!r} to {repo.describe()}"
                )

        return WriteJournal(before_new_write)

    def start_batch_journal(self, keys: list[str]) -> WriteJournal:
        """The one write journal of a batch of ``keys`` (ended by :meth:`end_batch_journal`).

        Where claims outlive this process, a key a batch writes beyond the batch's own keys
        is noted in the claim of the batch key it belongs to (the longest one it lies under
        as a path, else the first), before it becomes visible.
        """
        journal = self._running_journals[keys[0]] = self._durable_batch_journal(keys)
        return journal

    def _durable_batch_journal(self, keys: list[str]) -> WriteJournal:
        live = self.live
        target = live.target if isinstance(live, DeferredMetadataRepository) else live
        if isinstance(target, MemoryMetadataRepository):
            return WriteJournal()
        own = set(keys)

        async def before_new_write(repo: Repository, written: str) -> None:
            path = self._output_paths().get(id(repo))
            if path is None or (written in own and "/" not in path):
                return
            claim = self.claims.get(batch_key_of(written, own) or keys[0])
            if claim is None:
                return
            entries = [*claim.value.get("wrote", []), [path, written]]
            if not await self.claims.update(claim, wrote=entries):
                raise JobError(
                    f"task {self.name}: the job of {claim.key!r} lost its claim; not writing "
                    f"{written!r} to {repo.describe()}"
                )

        return WriteJournal(before_new_write)

    def end_batch_journal(self, keys: list[str], failed: Mapping[str, WriteJournal]) -> None:
        """End the journal of a batch of ``keys``; ``failed`` holds the journal part of each
        key that failed (kept for a minute, see :meth:`in_flight_writes`)."""
        self._running_journals.pop(keys[0], None)
        outputs = self._output_repositories()
        written: dict[int, set[str]] = {}
        for part in failed.values():
            for i, ks in part.keys_by_repository().items():
                if i in outputs:
                    written.setdefault(i, set()).update(ks)
        if written:
            now = time.monotonic()
            ended = self._ended_writes
            ended[:] = [e for e in ended if now - e[0] < 60.0]
            ended.append((now, written))

    def in_flight_writes(self, since: float | None = None) -> dict[int, set[str]]:
        """The keys that running jobs of this task (in this process) have written so far in
        its outputs, as ``{id(repository): keys}``, at every layer the writes went through.

        The scheduler holds them back from downstream tasks until the job has succeeded.
        With ``since`` (a :func:`time.monotonic` value) the keys of jobs that failed or were
        abandoned after that moment are included too (their cleanup may have removed keys
        that a listing made meanwhile still shows).
        """
        out: dict[int, set[str]] = {}
        if since is not None:
            for ended_at, written in self._ended_writes:
                if ended_at >= since:
                    for repo_id, keys in written.items():
                        out.setdefault(repo_id, set()).update(keys)
        if not self._running_journals:
            return out
        outputs = self._output_repositories()
        for journal in self._running_journals.values():
            for repo_id, keys in journal.keys_by_repository().items():
                if repo_id in outputs:
                    out.setdefault(repo_id, set()).update(keys)
        return out

    def end_journal(self, key: str, succeeded: bool) -> WriteJournal | None:
        """End the journal of the job of ``key``; a failed job's output keys are kept for a
        minute (see :meth:`in_flight_writes`)."""
        journal = self._running_journals.pop(key, None)
        self._job_members.pop(key, None)
        if journal is not None and not succeeded and len(journal):
            outputs = self._output_repositories()
            written = {i: ks for i, ks in journal.keys_by_repository().items() if i in outputs}
            if written:
                now = time.monotonic()
                ended = self._ended_writes
                # kept for listings still under way when the job ended; a minute is plenty
                ended[:] = [e for e in ended if now - e[0] < 60.0]
                ended.append((now, written))
        return journal

    def wrote_beyond(self, key: str, journal: WriteJournal) -> list[str]:
        """The keys beyond ``key`` that a job wrote, as its output links show them."""
        written = journal.keys_by_repository()
        keys: set[str] = set()
        for link in self.output_links:
            keys |= visible_keys(link.repository, written)
        keys.discard(key)
        return sorted(keys)

    async def begin_job(self, key: str) -> None:
        """Called under the claim, before the first attempt: a fan-out job removes the
        children an earlier run left; a fan-in job fixes its members (those the last
        scheduler tick found, else those present in the inputs now)."""
        if self.fan_out:
            stale = await clear_children(self, key)
            if stale:
                log.info(
                    "task %s: job %r removed %d child key(s) an earlier run left", self.name, key, len(stale)
                )
        if self.group_by is not None:
            members = self._tick_members.get(key)
            self._job_members[key] = list(members) if members is not None else await list_members(self, key)

    def record_fields(self, key: str, journal: WriteJournal) -> dict[str, Any]:
        """What a success record notes of the job's writes and members: ``wrote`` (keys
        beyond its own that are not children), ``children`` (fan-out) and ``members``
        (fan-in)."""
        return record_fields(self, key, journal)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the task keeps between jobs (e.g. a thread pool); called when the
        pipeline closes. The task stays usable: what it needs is made again."""

    # ---------------------------------------------------------------- what runs, where
    @property
    def executor(self) -> Executor:
        """Where the jobs of this task run (every task kind names one)."""
        raise ConfigurationError(f"task {self.name!r}: {type(self).__name__} names no executor")

    @property
    def resources(self) -> Resources:
        """What one job reserves on :attr:`executor` (default: nothing but a slot)."""
        return _NO_RESOURCES

    @property
    def cancel_grace(self) -> float:
        """Seconds a stopped job (timeout, cancellation, recovery) gets between TERM and
        KILL."""
        return 10.0

    async def prepare(self, job: JobContext) -> Work:
        """What runs for this attempt of ``job`` on :attr:`executor` (every task kind
        prepares its own work items)."""
        raise ConfigurationError(f"task {self.name!r}: {type(self).__name__} prepares no work")

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome | None:
        """Commit what the work produced; raise to fail the attempt. The default raises the
        outcome's error and returns its result if that is a :class:`JobOutcome`."""
        if outcome.error is not None:
            raise outcome.error
        result = outcome.result
        return result if isinstance(result, JobOutcome) else None

    def direct_call(self, job: JobContext) -> DirectCall | None:
        """The attempt of ``job`` as an async call for the job lifecycle to await itself,
        when it is that and nothing more: work in this event loop with nothing to start,
        stop, log or recover besides the call, and nothing for :meth:`finish` to commit.
        Its return value is ignored; an exception fails the attempt, as :meth:`finish`
        would raise it. None (the default): the attempt goes through :meth:`prepare`, the
        :attr:`executor` and :meth:`finish`."""
        return None

    # ---------------------------------------------------------------- claims
    @property
    def claim_lease(self) -> float:
        """Seconds a claim stays valid without a heartbeat (the pipeline sets it)."""
        return self.claims.lease

    @claim_lease.setter
    def claim_lease(self, seconds: float) -> None:
        self.claims.lease = seconds

    def stale_facts(self, record: Mapping[str, Any]) -> Any:
        """What of a job record :meth:`stale_reasons` needs later (kept in memory for every
        recorded key; default: nothing). Records are read once; this keeps a part."""
        return None

    def stale_reasons(
        self, key: str, facts: Any, inputs: Mapping[str, Mapping[str, str | None]]
    ) -> Iterable[str]:
        """Reasons, beyond the shared ones (an input's version, the task version, an output
        gone), why the recorded job of ``key`` is stale: one line each, none by default.

        ``facts`` is what :meth:`stale_facts` kept of the key's record, ``inputs`` the
        versions of this tick's listing of each input link (``{link: {key: version}}``).
        A task whose job reads more than the key's own values (a group of keys) says here
        that what it read has changed.
        """
        return ()

    async def execute(
        self,
        key: str,
        *,
        owner: str | None = None,
        hooks: Hooks | None = None,
        claimed: bool = False,
        on_state: Any = None,
        slot: Any = True,
    ) -> dict[str, Any] | None:
        """Run the job for ``key`` to its end: claim, attempts, record, release (see
        :func:`pydatatask.task.lifecycle.execute`).

        Returns the job record, or None if another scheduler holds the claim. Cancellation
        removes partial outputs and the claim, writes no record, and propagates.
        """
        return await _lifecycle.execute(
            self, key, owner=owner, hooks=hooks, claimed=claimed, on_state=on_state, slot=slot
        )

    @property
    def running_jobs(self) -> Mapping[str, JobContext]:
        """The jobs of this task under way in this process, each key with the
        :class:`JobContext` of its current attempt (a read-only view, for a live view of
        their logs)."""
        return MappingProxyType(self._running_jobs)

    async def _keep_stopped_output(self, job: JobContext) -> None:  # noqa: B027 - optional hook
        """Called when the work of an attempt was stopped before its end (its time limit):
        put what the task itself kept of the work's output so far into ``job``'s log, as
        :meth:`finish` does for work that ended. The executor's own log of the work
        (:meth:`~pydatatask.executor.base.JobHandle.logs`) is kept by the lifecycle."""

    async def _write_log(self, job: JobContext) -> None:
        logs = self.logs
        if logs is None or not job._log:
            return
        try:
            old = ""
            if job.attempt > 1:
                try:
                    old = await logs.read_text(job.key)
                except KeyNotFoundError:
                    old = ""
            await logs.write_text(job.key, old + job.log_text)
        except Exception:
            log.exception("task %s: could not write the log of %r", self.name, job.key)


def batch_key_of(written: str, keys: Collection[str]) -> str | None:
    """The key of ``keys`` that a written key belongs to: itself, or the longest key it
    lies under as a path (``a/b`` under ``a``); None if none."""
    if written in keys:
        return written
    cut = written.rfind("/")
    while cut > 0:
        written = written[:cut]
        if written in keys:
            return written
        cut = written.rfind("/")
    return None


def _check_batch(name: str, batch: Any, group_by: Any) -> int:
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"task {name!r}: batch must be a whole number of keys >= 1, got {batch!r}")
    if batch > 1 and group_by is not None:
        raise ConfigurationError(f"task {name!r}: a fan-in task (group_by) cannot take batch={batch}")
    return batch


def _check_batch_wait(name: str, wait: float | str | None) -> float | None:
    if wait is None:
        return None
    try:
        seconds = parse_duration(wait)
    except ConfigurationError as exc:
        raise ConfigurationError(f"task {name!r}: batch_wait: {exc}") from exc
    if seconds < 0:
        raise ConfigurationError(f"task {name!r}: batch_wait must not be negative, got {wait!r}")
    return seconds


# the lifecycle drives tasks and is driven through them: imported last, as a module, so
# that either may be imported first
from . import lifecycle as _lifecycle  # noqa: E402
