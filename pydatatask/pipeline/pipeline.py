"""Pipeline: tasks + session, and the operations the CLI exposes."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..durations import parse_duration
from ..errors import ConfigurationError, CorruptValueError, InvalidValueError, KeyNotFoundError
from ..keys import validate_key
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import FileRepository
from ..repository.listing import listing_scope
from ..repository.serialized import YamlMetadataFileRepository
from ..session import Session
from ..task.base import Task
from ..task.fan import parent_among
from ..task.hooks import Hooks
from ..task.links import Link, LinkKind
from ..task.records import utcnow_iso
from .graph import TaskGraph
from .groups import GroupChange, cascade_keys, changed_groups, group_reasons
from .record_index import CORRUPT_ERROR_TYPE, corrupt_info, warn_corrupt
from .scheduler import RunSummary, Scheduler, TaskFigures, compute_figures, record_indexes

if TYPE_CHECKING:
    from ..executor.base import Executor

__all__ = ("Pipeline", "STATUS_COLUMNS")

#: the states :meth:`Pipeline.status` gives keys of, in the order the CLI's table and the
#: web page show them
STATUS_COLUMNS: tuple[str, ...] = (
    "ready",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "blocked",
    "held",
    "corrupt",
    "stale",
)

log = logging.getLogger("pydatatask.pipeline")


def _state_links(task: Task, *kinds: str) -> list[tuple[Task, Link]]:
    return [(task, task.links[k]) for k in kinds if k in task.links]


def _whole(task: Task) -> list[tuple[Task, Link]]:
    """Everything that makes a key of ``task`` done: its outputs, record and log."""
    return [(task, lk) for lk in task.output_links] + _state_links(task, "done", "logs")


class Pipeline:
    """A set of tasks and the session their repositories need.

    :param tasks: the tasks; names must be unique.
    :param session: opened around every run (default: an empty session).
    :param state_dir: if given, each task whose ``done``/``live`` repositories were left
        to the in-memory default gets files instead: ``state_dir/<task>/done/*.yaml``,
        ``state_dir/<task>/live/*.yaml`` and logs in ``state_dir/<task>/logs/*.log``.
        Use it (or give persistent repositories yourself) so that a restarted run knows
        what finished and what was interrupted. ``task.done`` and ``task.live`` remain the
        objects they were (their store is bound here, once), so views built over them
        before the pipeline read the files too.
    :param max_jobs: global limit on running jobs (default: no global limit beyond each
        task's ``concurrency``).
    :param poll_interval: how often remote state is polled and, with ``forever``, how
        often an idle scheduler looks for work (``"2s"``, ``"500ms"``, ...; a repository
        is listed again only once its ``refresh`` interval has passed).
    :param claim_check_interval: how often claims of other schedulers are checked for
        staleness.
    :param refresh: how long the scheduler goes on from what it knows of a repository
        (its last listing and its own jobs' writes) before listing it again, to see
        changes made from outside the run (``"5s"``, ``"10m"``; default: by kind,
        :data:`~pydatatask.pipeline.known.LOCAL_REFRESH` for memory and files,
        :data:`~pydatatask.pipeline.known.REMOTE_REFRESH` for the others). See
        :ref:`listings`.
    :param claim_lease: how long a job's claim stays valid without a heartbeat; running
        jobs renew theirs every third of it. A scheduler that dies on another host has its
        claims taken over (and its jobs re-run) once the lease has passed.
    :param hooks: a :class:`~pydatatask.task.hooks.Hooks` registry (default: a new one, at
        ``pipeline.hooks``).
    """

    def __init__(
        self,
        tasks: Iterable[Task],
        session: Session | None = None,
        *,
        state_dir: str | os.PathLike[str] | None = None,
        max_jobs: int | None = None,
        poll_interval: float | str = "2s",
        claim_check_interval: float | str = "30s",
        claim_lease: float | str = "60s",
        refresh: float | str | None = None,
        hooks: Hooks | None = None,
        create_repositories: bool = True,
    ) -> None:
        self.tasks: dict[str, Task] = {}
        for task in tasks:
            if not isinstance(task, Task):
                raise ConfigurationError(f"{task!r} is not a pydatatask Task")
            if task.name in self.tasks:
                raise ConfigurationError(f"two tasks are named {task.name!r}; task names must be unique")
            self.tasks[task.name] = task
        if not self.tasks:
            raise ConfigurationError("a pipeline needs at least one task")
        self.session = session or Session()
        self.max_jobs = max_jobs
        if max_jobs is not None and max_jobs < 1:
            raise ConfigurationError("max_jobs must be at least 1")
        self.poll_interval = parse_duration(poll_interval)
        self.claim_check_interval = parse_duration(claim_check_interval)
        self.claim_lease = parse_duration(claim_lease)
        #: the refresh interval in seconds for every repository, or None to use the defaults by kind
        self.refresh = None if refresh is None else _refresh(refresh)
        if self.claim_lease <= 0:
            raise ConfigurationError("claim_lease must be positive")
        self.hooks = hooks or Hooks()
        self.create_repositories = create_repositories
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            for task in self.tasks.values():
                base = self.state_dir / task.name
                task.replace_state_repository("done", YamlMetadataFileRepository(base / "done", fsync=True))
                task.replace_state_repository("live", YamlMetadataFileRepository(base / "live", fsync=True))
                if task.logs is None:
                    task.replace_state_repository("logs", FileRepository(base / "logs", ".log", fsync=True))
        for task in self.tasks.values():
            task.claim_lease = self.claim_lease
        self.graph = TaskGraph(list(self.tasks.values()))
        order = self.graph.order()
        self._rank = {name: i for i, name in enumerate(order)}
        self._open_depth = 0

    # ---------------------------------------------------------------- session
    async def __aenter__(self) -> Pipeline:
        if self._open_depth == 0:
            await self.session.__aenter__()
            try:
                await self.validate()
            except BaseException as exc:
                await self.session.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        self._open_depth += 1
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open_depth -= 1
        if self._open_depth == 0:
            try:
                executors: dict[int, Executor] = {}
                for task in self.tasks.values():
                    executors.setdefault(id(task.executor), task.executor)
                    try:
                        task.close()  # e.g. the thread pool of a sync function task
                    except Exception as close_exc:
                        log.warning("task %s: could not close: %s", task.name, close_exc)
                for executor in executors.values():
                    try:
                        await executor.aclose()
                    except Exception as close_exc:
                        log.warning("%s: could not close: %s", executor.describe(), close_exc)
            finally:
                await self.session.__aexit__(exc_type, exc, tb)

    async def validate(self) -> None:
        """Check every task and every repository (creating local roots where allowed)."""
        seen: set[int] = set()
        for task in self.tasks.values():
            await task.validate()
            if not task.executor.fits_at_all(task.resources):
                raise ConfigurationError(
                    f"task {task.name!r}: a job needs {task.resources}, more than "
                    f"{task.executor.describe()} has at all"
                )
            for link in task.links.values():
                repo = link.repository
                if id(repo) in seen:
                    continue
                seen.add(id(repo))
                await repo.validate(create=self.create_repositories)

    def task(self, name: str) -> Task:
        """The task called ``name`` (a clear error naming the known tasks otherwise)."""
        try:
            return self.tasks[name]
        except KeyError:
            raise ConfigurationError(f"no task named {name!r}; tasks: {', '.join(self.tasks)}") from None

    def repository(self, spec: str) -> tuple[Task, str, Repository]:
        """Resolve ``"task.link"`` to its repository."""
        task_name, _, link_name = spec.partition(".")
        task = self.task(task_name)
        if not link_name:
            raise ConfigurationError(
                f"expected TASK.LINK, got {spec!r}; links of {task_name}: {', '.join(task.links)}"
            )
        link = task.links.get(link_name)
        if link is None:
            raise ConfigurationError(
                f"task {task_name!r} has no link {link_name!r}; links: {', '.join(task.links)}"
            )
        return task, link_name, link.repository

    def launch_order(self, tasks: list[Task]) -> list[Task]:
        """Higher priority first; among equals, downstream tasks first (finish keys end to end)."""
        return sorted(tasks, key=lambda t: (-t.priority, -self._rank[t.name]))

    # ---------------------------------------------------------------- run
    async def run(
        self,
        *,
        forever: bool = False,
        tasks: list[str] | None = None,
        max_jobs: int | None = None,
        timeout: float | str | None = None,  # noqa: ASYNC109 - a deadline for the whole run
        grace: float | str = "10s",
        on_progress: Callable[[Scheduler], None] | None = None,
        rerun_stale: bool = False,
        refresh: float | str | None = None,
    ) -> RunSummary:
        """Run jobs until nothing is ready and nothing runs (or forever).

        Cancelling the call (Ctrl-C under :func:`asyncio.run`) cancels the running jobs, which
        remove their partial outputs and write no record. The command line's ``run`` adds the
        gentler stop: on SIGINT/SIGTERM it calls :meth:`Scheduler.request_stop <pydatatask.pipeline.scheduler.Scheduler.request_stop>`, gives running
        jobs ``grace`` to finish, then cancels them.

        With ``rerun_stale`` the stale keys of the tasks run are redone, and what is
        downstream of them (see :doc:`/staleness`); tasks with ``on_change="rerun"`` redo
        theirs in any case. ``refresh`` overrides the pipeline's for this run.
        """
        for name in tasks or []:
            self.task(name)
        async with self:
            scheduler = Scheduler(
                self,
                tasks=tasks,
                forever=forever,
                max_jobs=max_jobs,
                timeout=None if timeout is None else parse_duration(timeout),
                grace=parse_duration(grace),
                on_progress=on_progress,
                rerun_stale=rerun_stale,
                refresh=None if refresh is None else _refresh(refresh),
            )
            self.scheduler = scheduler
            return await scheduler.run()

    def run_sync(self, **kwargs: Any) -> RunSummary:
        """``asyncio.run(pipeline.run(**kwargs))``."""
        return asyncio.run(self.run(**kwargs))

    # ---------------------------------------------------------------- inspection
    async def figures(self, *, full: bool = True) -> dict[str, TaskFigures]:
        """Per-task ready/running/succeeded/failed sets from one listing of everything.

        With ``full=False`` this is exactly one scheduler tick: job records are read only
        where readiness depends on them, and ``succeeded``/``failed`` may be partial.
        """
        records = record_indexes(self.tasks)
        async with self:
            with listing_scope():
                return await compute_figures(self.tasks, self, records, full=full)

    async def status(self) -> dict[str, dict[str, Any]]:
        """Sorted key lists per task, one per job state, and the details of some states.

        ``ready`` (pending), ``running`` and ``retrying`` (live claims; a retrying job
        waits out its backoff), ``succeeded``, ``failed``, ``blocked`` (an upstream task has
        no success record for the key) and ``corrupt`` (the key's job record or claim does
        not decode, or its job read an input value that does not). ``next_attempt`` maps
        each retrying key to the time of its next attempt (ISO 8601 UTC);
        ``corrupt_details`` maps each corrupt key to what is corrupt, in which repository,
        where it is stored and why (see :func:`~pydatatask.pipeline.record_index.corrupt_info`).
        ``stale`` lists the recorded keys whose inputs, version or outputs have changed
        since their job ran (they count in ``succeeded`` or ``failed`` too), and
        ``stale_details`` maps each to its reasons (see
        :class:`~pydatatask.pipeline.staleness.StaleReason`). ``held`` lists the groups of a
        fan-in task held back (they count in ``blocked`` too) and ``held_details`` maps each
        to what holds it: ``{"task": upstream task, "key": member key}`` (``task`` is ``""``
        when the member is held by the gating of its own key).
        """
        out: dict[str, dict[str, Any]] = {}
        async with self:  # one session for the listing and the claims
            figures = await self.figures()
            for name, fig in figures.items():
                claims = await self._claims(self.tasks[name], fig)
                retrying = {
                    k: c for k, c in claims.items() if isinstance(c, dict) and c.get("state") == "retrying"
                }
                corrupt = fig.corrupt
                out[name] = {
                    "ready": sorted(fig.ready - fig.live),
                    "running": sorted(fig.live - retrying.keys() - corrupt.keys()),
                    "retrying": sorted(retrying),
                    "succeeded": sorted(fig.succeeded),
                    "failed": sorted(fig.failed),
                    "blocked": sorted(fig.blocked),
                    "corrupt": sorted(corrupt),
                    "next_attempt": {k: _iso(c.get("retry_at")) for k, c in sorted(retrying.items())},
                    "corrupt_details": {k: corrupt[k] for k in sorted(corrupt)},
                    "stale": sorted(fig.stale),
                    "stale_details": {k: [r.as_dict() for r in fig.stale[k]] for k in sorted(fig.stale)},
                    "held": sorted(fig.held),
                    "held_details": {g: {"task": t, "key": k} for g, (t, k) in sorted(fig.held.items())},
                }
        return out

    async def _claims(self, task: Task, fig: TaskFigures) -> dict[str, Any]:
        """The claims of ``fig.live``; corrupt ones go to ``fig.corrupt`` (logged once)."""
        if not fig.live:
            return {}

        def bad(err: CorruptValueError) -> None:
            warn_corrupt(
                err, f"task {task.name} does not run {err.key!r} until the claim is fixed or removed"
            )
            fig.corrupt[str(err.key)] = corrupt_info("claim", err)

        return await task.live.get_many(fig.live, on_corrupt=bad)

    async def why(self, task_name: str, key: str) -> list[str]:
        """Explain whether ``key`` is ready for ``task_name`` and, if not, which links say no."""
        task = self.task(task_name)
        validate_key(key)
        figures = await self.figures()
        fig = figures[task_name]
        reasons: list[str] = []
        async with self:
            for link in task.required_links if task.group_by is None else []:  # fan-in: by members
                try:
                    present = await link.repository.contains(key)
                except CorruptValueError as exc:
                    reasons.append(f"input {link.name!r}: {_fix_corrupt(exc.location, str(exc))}")
                    continue
                if not present:
                    reasons.append(
                        f"input {link.name!r} ({link.repository.describe()}) does not have {key!r}"
                    )
            for link in task.inhibiting_links:
                if await link.repository.contains(key):
                    if link.name == "done":
                        reasons.append(await self._why_record(task, key))
                    elif link.name == "live":
                        reasons.append(await self._why_claim(task, key))
                    else:
                        reasons.append(
                            f"{link.kind.value} {link.name!r} ({link.repository.describe()}) already has {key!r}"
                        )
            if task.group_by is not None:
                reasons.extend(group_reasons(self, task_name, key, figures))
            for up in [] if task.group_by is not None else self.graph.upstream[task_name]:
                upview = figures[up]
                if key in upview.universe and key not in upview.succeeded:
                    state = (
                        "its job record is corrupt"
                        if key in upview.corrupt
                        else "failed"
                        if key in upview.failed
                        else "not finished"
                    )
                    reasons.append(f"upstream task {up!r} has no success record for {key!r} ({state})")
            for reason in fig.stale.get(key, []):
                does = "removes its record and outputs" if reason.kind == "orphan" else "redoes it"
                reasons.append(f"stale: {reason.message}; `run --rerun-stale` {does}")
            if not reasons and key in fig.blocked:  # upstream keys differ (views rename them)
                reasons.append(_why_child(self, task_name, key, figures))
            if not reasons and key not in fig.ready:
                reasons.append(f"{key!r} was ready a moment ago or is queued; nothing blocks it now")
        return reasons

    async def changed_groups(
        self, task_name: str, groups: Iterable[str] | None = None
    ) -> dict[str, GroupChange]:
        """For the fan-in task ``task_name``: the recorded groups whose membership differs
        from their record's (see :func:`pydatatask.pipeline.groups.changed_groups`)."""
        return await changed_groups(self, task_name, groups)

    async def _why_record(self, task: Task, key: str) -> str:
        try:
            rec = await task.done.get(key)
        except KeyNotFoundError:
            return f"a job record exists; `rm {task.name} {key}` to run it again"
        except CorruptValueError as exc:
            return "the job record is corrupt: " + _fix_corrupt(exc.location, str(exc))
        error = rec.get("error") if isinstance(rec, dict) else None
        if isinstance(error, dict) and error.get("type") == CORRUPT_ERROR_TYPE:
            return (
                f"the job failed because an input value is corrupt: {error.get('message')}; inspect "
                f"{error.get('location') or 'it'}, fix or remove it, then `rm {task.name} {key}` to run it again"
            )
        state = "succeeded" if isinstance(rec, dict) and rec.get("success") else "failed"
        return f"a job record exists ({state}); `rm {task.name} {key}` to run it again"

    async def _why_claim(self, task: Task, key: str) -> str:
        live = task.live.describe()
        try:
            claim = await task.live.get(key)
        except KeyNotFoundError:
            return f"a job for {key!r} was running a moment ago (claim in {live})"
        except CorruptValueError as exc:
            return (
                f"the claim is corrupt, so no scheduler can tell whether a job runs: {exc}; inspect "
                f"{exc.location}; if no run is going on, remove it (`rm {task.name}.live {key}`, and "
                f"`rm {task.name} {key}` for partial outputs)"
            )
        if isinstance(claim, dict) and claim.get("state") == "retrying":
            return (
                f"a job for {key!r} is retrying: attempt {claim.get('attempt', '?')} failed, the next "
                f"starts at {_iso(claim.get('retry_at'))} (claim in {live})"
            )
        return f"a job for {key!r} is running (claim in {live})"

    # ---------------------------------------------------------------- changes
    async def remove(
        self, task_name: str, keys: Iterable[str] | None, *, link: str | None = None, cascade: bool = False
    ) -> list[tuple[str, str, str]]:
        """Delete ``keys`` (every key if None) so that their jobs run again.

        Without ``link``: the task's outputs, job records and logs of the keys.

        With ``link``: that link's values and, so that the keys run again, the job records
        and logs of every task that writes that repository as an output (the task itself
        when ``link`` is one of its outputs, the upstream task when it is an input another
        task writes). For ``done`` the records and the logs go; for ``logs`` only the logs;
        an input nobody writes loses only its values. A job starts only when none of its
        outputs holds the key, so when another output of such a task holds one of the keys
        nothing is removed and :class:`~pydatatask.errors.ConfigurationError` names it. With ``keys=None`` the
        keys are those the link's repository holds. A read-only link is an error.

        With ``cascade`` the keys also go from every task downstream of the tasks whose
        jobs run again (their outputs, records and logs).

        Returns ``(task, link, key)`` for each value removed, in the order removed.
        """
        task = self.task(task_name)
        key_list = None if keys is None else [validate_key(k) for k in keys]
        # the (task, link) pairs to clear, in order; each repository is cleared once
        plan: list[tuple[Task, Link]] = []
        redo: list[Task] = [task]
        chosen: Link | None = None
        if link is not None:
            chosen = task.links.get(link)
            if chosen is None:
                raise ConfigurationError(
                    f"task {task_name!r} has no link {link!r}; links: {', '.join(task.links)}"
                )
            if not chosen.repository.is_writable:
                raise ConfigurationError(
                    f"{task_name}.{link} ({chosen.repository.describe()}) is read-only; "
                    "remove the keys from the repository it shows"
                )
            plan.append((task, chosen))
            if chosen.kind is LinkKind.DONE:
                plan.extend(_state_links(task, "logs"))
            elif chosen.kind in (LinkKind.LOGS, LinkKind.LIVE):
                redo = []
            else:
                redo = [
                    t
                    for t in self.tasks.values()
                    if any(o.repository is chosen.repository for o in t.output_links)
                ]
                for owner in redo:
                    plan.extend(_state_links(owner, "done", "logs"))
        else:
            plan.extend(_whole(task))
        if cascade:
            cleared = {t.name for t in redo}
            for seed in sorted(cleared | {task_name}, key=self._rank.__getitem__):
                for name in self.graph.descendants(seed):
                    if name not in cleared:
                        cleared.add(name)
                        plan.extend(_whole(self.tasks[name]))
        removed: list[tuple[str, str, str]] = []
        async with self:
            exact: set[str] | None = None if key_list is None else set(key_list)
            if chosen is not None:
                if exact is None:
                    exact = set(await chosen.repository.keys())
                if chosen.kind not in (LinkKind.DONE, LinkKind.LOGS, LinkKind.LIVE):
                    await self._refuse_partial(redo, chosen.repository, exact)
            # fan-out children and fan-in groups of the keys, per task (see cascade_keys)
            per_task = (
                None if exact is None else await cascade_keys(self, plan, [t.name for t in redo], exact)
            )
            seen: set[int] = set()
            for t, lk in plan:
                repo = lk.repository
                if id(repo) in seen or not repo.is_writable:
                    continue
                seen.add(id(repo))
                present = await repo.keys()
                wanted = exact if per_task is None or lk is chosen else per_task.get((t.name, lk.name), exact)
                for key in sorted(present if wanted is None else wanted & present):
                    await repo.delete(key)
                    removed.append((t.name, lk.name, key))
        return removed

    async def _refuse_partial(self, owners: list[Task], repo: Repository, keys: set[str]) -> None:
        """Refuse to remove ``keys`` from one output of a task while another output keeps them."""
        for owner in owners:
            for other in owner.output_links:
                if other.repository is repo:
                    continue
                kept = sorted(keys & await other.repository.keys())
                if kept:
                    raise ConfigurationError(
                        f"{owner.name}.{other.name} also holds {kept[0]!r}"
                        + (f" (and {len(kept) - 1} more)" if len(kept) > 1 else "")
                        + f" and a job of {owner.name} runs again only when none of its outputs does;"
                        f" nothing removed: `rm {owner.name} KEY` removes them all"
                    )

    async def launch(self, task_name: str, key: str, *, force: bool = False) -> dict[str, Any] | None:
        """Run one job now, in this process. Unless ``force``, the key must be ready."""
        task = self.task(task_name)
        validate_key(key)
        async with self:
            if not force:
                figures = await self.figures()
                if key not in figures[task_name].ready:
                    reasons = await self.why(task_name, key)
                    raise ConfigurationError(
                        f"{task_name} {key!r} is not ready: " + ("; ".join(reasons) or "unknown reason")
                    )
            else:
                await task.done.delete(key)
            return await task.execute(key, hooks=self.hooks)

    async def inject(self, spec: str, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` in the repository ``task.link`` (YAML for metadata).

        Data that does not parse as YAML (JSON is YAML too) raises
        :class:`~pydatatask.errors.InvalidValueError` naming the line and column; nothing
        is stored then.
        """
        _, _, repo = self.repository(spec)
        validate_key(key)
        value: Any = None
        if not isinstance(repo, BlobRepository) and isinstance(repo, MetadataRepository):
            value = _parse_yaml(spec, key, data)
        async with self:
            if isinstance(repo, BlobRepository):
                await repo.write_bytes(key, data)
            elif isinstance(repo, MetadataRepository):
                await repo.put(key, value)
            else:
                raise ConfigurationError(f"{spec} ({repo.describe()}) cannot take injected values")


def _parse_yaml(spec: str, key: str, data: bytes) -> Any:
    import yaml

    from ..repository.serialized import parse_error, yaml_loads

    try:
        return yaml_loads(data)
    except yaml.YAMLError as exc:
        raise InvalidValueError(
            f"the value for {spec} {key!r} is not valid YAML: {parse_error(exc)}"
        ) from exc


def _why_child(pipeline: Pipeline, task_name: str, key: str, figures: dict[str, TaskFigures]) -> str:
    """Why a key that no upstream task has itself is blocked: a child of a fan-out parent
    without a success record listing it, or what a view renaming keys reads."""
    for up in pipeline.graph.upstream[task_name]:
        upstream = pipeline.tasks[up]
        for sep in upstream.fan_out.values():
            parent = parent_among(key, figures[up].universe | figures[up].recorded | figures[up].live, sep)
            if parent is None:
                continue
            if parent in figures[up].succeeded:
                return f"the success record of {up} {parent!r} does not list {key!r} among its children"
            state = "failed" if parent in figures[up].failed else "not finished"
            return f"{key!r} is a child of {parent!r}, which has no success record of upstream task {up!r} ({state})"
        if upstream.fan_out and key not in figures[up].universe:
            return f"{key!r} is in a fan-out output of {up!r}, but no job of {up!r} wrote it"
    return f"an upstream task has no success record for what {key!r} reads"


def _iso(ts: Any) -> str:
    """Epoch seconds as ISO 8601 UTC (``?`` when absent)."""
    return utcnow_iso(float(ts)) if isinstance(ts, (int, float)) else "?"


def _fix_corrupt(location: str, message: str) -> str:
    return f"{message}; inspect {location or 'it'} and fix or remove it (`rm` the file)"


def _refresh(value: float | str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ConfigurationError(f"refresh must be positive, not {value!r}")
    return seconds
