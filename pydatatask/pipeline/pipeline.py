"""Pipeline: tasks + session, and the operations the CLI exposes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, KeyNotFoundError
from ..keys import validate_key
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import FileRepository
from ..repository.listing import listing_scope
from ..repository.serialized import YamlMetadataFileRepository
from ..session import Session
from ..task.base import Task
from ..task.hooks import Hooks
from .graph import TaskGraph
from .records import RecordIndex
from .scheduler import RunSummary, Scheduler, TaskView, compute_views

__all__ = ("Pipeline",)

log = logging.getLogger("pydatatask.pipeline")


class Pipeline:
    """A set of tasks and the session their repositories need.

    :param tasks: the tasks; names must be unique.
    :param session: opened around every run (default: an empty session).
    :param state_dir: if given, each task whose ``done``/``live`` repositories were left
        to the in-memory default gets files instead: ``state_dir/<task>/done/*.yaml``,
        ``state_dir/<task>/live/*.yaml`` and logs in ``state_dir/<task>/logs/*.log``.
        Use it (or give persistent repositories yourself) so that a restarted run knows
        what finished and what was interrupted.
    :param max_jobs: global limit on running jobs (default: no global limit beyond each
        task's ``concurrency``).
    :param poll_interval: how often remote state is polled and, with ``forever``, how
        often repositories are listed when idle (``"2s"``, ``"500ms"``, ...).
    :param claim_check_interval: how often claims of other schedulers are checked for
        staleness.
    :param claim_lease: how long a job's claim stays valid without a heartbeat; running
        jobs renew theirs every third of it. A scheduler that dies on another host has its
        claims taken over (and its jobs re-run) once the lease has passed.
    :param hooks: a :class:`~pydatatask.task.Hooks` registry (default: a new one, at
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
        if self.claim_lease <= 0:
            raise ConfigurationError("claim_lease must be positive")
        self.hooks = hooks or Hooks()
        self.create_repositories = create_repositories
        self.state_dir = Path(state_dir) if state_dir is not None else None
        if self.state_dir is not None:
            for task in self.tasks.values():
                base = self.state_dir / task.name
                task.replace_state_repository("done", YamlMetadataFileRepository(base / "done"))
                task.replace_state_repository("live", YamlMetadataFileRepository(base / "live"))
                if task.logs is None:
                    task.replace_state_repository("logs", FileRepository(base / "logs", ".log"))
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
            await self.session.__aexit__(exc_type, exc, tb)

    async def validate(self) -> None:
        """Check every task and every repository (creating local roots where allowed)."""
        seen: set[int] = set()
        for task in self.tasks.values():
            await task.validate()
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
        handle_signals: bool = False,
    ) -> RunSummary:
        """Run jobs until nothing is ready and nothing runs (or forever).

        With ``handle_signals`` SIGINT/SIGTERM stop launching, give running jobs ``grace``
        to finish, then cancel them (their partial outputs are removed).
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
            )
            self.scheduler = scheduler
            installed: list[signal.Signals] = []
            if handle_signals:
                loop = asyncio.get_running_loop()
                for sig in (signal.SIGINT, signal.SIGTERM):
                    try:
                        loop.add_signal_handler(sig, scheduler.request_stop)
                        installed.append(sig)
                    except (NotImplementedError, RuntimeError):  # pragma: no cover - not main thread
                        pass
            try:
                return await scheduler.run()
            finally:
                for sig in installed:
                    asyncio.get_running_loop().remove_signal_handler(sig)

    def run_sync(self, **kwargs: Any) -> RunSummary:
        """``asyncio.run(pipeline.run(**kwargs))``."""
        return asyncio.run(self.run(**kwargs))

    # ---------------------------------------------------------------- inspection
    async def views(self, *, full: bool = True) -> dict[str, TaskView]:
        """Per-task ready/running/succeeded/failed sets from one listing of everything.

        With ``full=False`` this is exactly one scheduler tick: job records are read only
        where readiness depends on them, and ``succeeded``/``failed`` may be partial.
        """
        records = {name: RecordIndex(t.done) for name, t in self.tasks.items()}
        async with self:
            with listing_scope():
                return await compute_views(self.tasks, self, records, full=full)

    async def status(self) -> dict[str, dict[str, Any]]:
        """Counts and sorted key lists per task: ready, running (live claims), succeeded, failed."""
        views = await self.views()
        out: dict[str, dict[str, Any]] = {}
        for name, view in views.items():
            out[name] = {
                "ready": sorted(view.ready - view.live),
                "running": sorted(view.live),
                "succeeded": sorted(view.succeeded),
                "failed": sorted(view.failed),
                "blocked": sorted(view.blocked),
            }
        return out

    async def why(self, task_name: str, key: str) -> list[str]:
        """Explain whether ``key`` is ready for ``task_name`` and, if not, which links say no."""
        task = self.task(task_name)
        validate_key(key)
        views = await self.views()
        view = views[task_name]
        reasons: list[str] = []
        async with self:
            for link in task.required_links:
                if not await link.repository.contains(key):
                    reasons.append(
                        f"input {link.name!r} ({link.repository.describe()}) does not have {key!r}"
                    )
            for link in task.inhibiting_links:
                if await link.repository.contains(key):
                    if link.name == "done":
                        try:
                            rec = await task.done.get(key)
                            state = "succeeded" if isinstance(rec, dict) and rec.get("success") else "failed"
                        except KeyNotFoundError:
                            state = "recorded"
                        reasons.append(
                            f"a job record exists ({state}); `rm {task_name} {key}` to run it again"
                        )
                    elif link.name == "live":
                        reasons.append(
                            f"a job for {key!r} is running (claim in {link.repository.describe()})"
                        )
                    else:
                        reasons.append(
                            f"{link.kind.value} {link.name!r} ({link.repository.describe()}) already has {key!r}"
                        )
            for up in self.graph.upstream[task_name]:
                upview = views[up]
                if key in upview.universe and key not in upview.succeeded:
                    state = "failed" if key in upview.failed else "not finished"
                    reasons.append(f"upstream task {up!r} has no success record for {key!r} ({state})")
            if not reasons and key in view.blocked:  # upstream keys differ (views rename them)
                reasons.append(f"an upstream task has no success record for what {key!r} reads")
            if not reasons and key not in view.ready:
                reasons.append(f"{key!r} was ready a moment ago or is queued; nothing blocks it now")
        return reasons

    # ---------------------------------------------------------------- changes
    async def remove(
        self, task_name: str, keys: Iterable[str] | None, *, link: str | None = None, cascade: bool = False
    ) -> list[tuple[str, str, str]]:
        """Delete outputs and records of ``keys`` (all keys if None) so they run again.

        With ``link`` only that link is cleared. With ``cascade`` the same keys are also
        removed from every downstream task. Returns ``(task, link, key)`` for each removal.
        """
        task = self.task(task_name)
        targets = [task_name] + (self.graph.descendants(task_name) if cascade else [])
        removed: list[tuple[str, str, str]] = []
        async with self:
            key_list = None if keys is None else [validate_key(k) for k in keys]
            for name in targets:
                t = self.tasks[name]
                if link is not None and name == task_name:
                    if link not in t.links:
                        raise ConfigurationError(
                            f"task {name!r} has no link {link!r}; links: {', '.join(t.links)}"
                        )
                    links = [t.links[link]]
                else:
                    links = [*t.output_links, t.links["done"]] + (
                        [t.links["logs"]] if "logs" in t.links else []
                    )
                for lk in links:
                    repo = lk.repository
                    if not repo.is_writable:
                        continue
                    present = await repo.keys()
                    for key in sorted(present if key_list is None else set(key_list) & present):
                        await repo.delete(key)
                        removed.append((name, lk.name, key))
            del task
        return removed

    async def launch(self, task_name: str, key: str, *, force: bool = False) -> dict[str, Any] | None:
        """Run one job now, in this process. Unless ``force``, the key must be ready."""
        task = self.task(task_name)
        validate_key(key)
        async with self:
            if not force:
                views = await self.views()
                if key not in views[task_name].ready:
                    reasons = await self.why(task_name, key)
                    raise ConfigurationError(
                        f"{task_name} {key!r} is not ready: " + ("; ".join(reasons) or "unknown reason")
                    )
            else:
                await task.done.delete(key)
            return await task.execute(key, hooks=self.hooks)

    async def inject(self, spec: str, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` in the repository ``task.link`` (YAML for metadata)."""
        _, _, repo = self.repository(spec)
        validate_key(key)
        async with self:
            if isinstance(repo, BlobRepository):
                await repo.write_bytes(key, data)
            elif isinstance(repo, MetadataRepository):
                from ..repository.serialized import yaml_loads

                await repo.put(key, yaml_loads(data))
            else:
                raise ConfigurationError(f"{spec} ({repo.describe()}) cannot take injected values")
