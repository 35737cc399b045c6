"""Tasks whose jobs are Python functions: in the scheduler's process, or in an executor."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError, JobError, JobTimeoutError, KeyNotFoundError
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import DirectoryRepository
from ..repository.view import read_source
from ._calls import DaskStartEvents, run_call
from .base import JobContext, JobOutcome, Task
from .links import LinkKind

__all__ = ("InProcessTask", "ExecutorTask")


def _parameters(func: Callable[..., Any]) -> tuple[list[str], bool, set[str]]:
    sig = inspect.signature(func)
    names: list[str] = []
    optional: set[str] = set()
    var_kw = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            var_kw = True
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.append(p.name)
            if p.default is not p.empty:
                optional.add(p.name)
        elif p.kind is p.VAR_POSITIONAL:
            continue
        else:
            raise ConfigurationError(
                f"{func!r}: positional-only parameter {p.name!r} cannot be passed by name"
            )
    return names, var_kw, optional


class _FunctionTask(Task):
    def __init__(self, name: str, func: Callable[..., Any], **kwargs: Any) -> None:
        if not callable(func):
            raise ConfigurationError(f"task {name!r}: {func!r} is not callable")
        self.func = func
        super().__init__(name, **kwargs)
        self._params, self._var_kw, self._optional = _parameters(func)

    async def validate(self) -> None:
        self.check_parameters()

    def check_parameters(self) -> None:
        """Every parameter of the function must name a link, ``key`` or ``job``."""
        known = set(self.links) | {"key", "job"}
        unknown = [p for p in self._params if p not in known and p not in self._optional]
        if unknown:
            raise ConfigurationError(
                f"task {self.name!r}: parameter(s) {', '.join(map(repr, unknown))} of "
                f"{getattr(self.func, '__qualname__', self.func)!r} match no link "
                f"(links: {', '.join(sorted(self.links))}; also available: key, job)"
            )

    def link(
        self, name: str, repository: Repository, kind: LinkKind | str = LinkKind.OTHER, **kw: Any
    ) -> Task:
        self.__dict__.pop("_fixed_args", None)  # links changed: resolve the arguments again
        return super().link(name, repository, kind, **kw)

    def _wanted(self) -> list[str]:
        if self._var_kw:
            return list(self.links) + ["key", "job"]
        return [p for p in self._params if p in self.links or p in ("key", "job")]


async def _read_value(repo: Repository, key: str) -> Any:
    source, source_key = read_source(repo, key)
    if isinstance(source, DirectoryRepository):
        if source is not repo and not await repo.contains(key):
            raise KeyNotFoundError(key, repo.describe())
        return str(source.path(source_key))
    if isinstance(repo, MetadataRepository):
        return await repo.get(key)
    if isinstance(repo, BlobRepository):
        return await repo.read_bytes(key)
    raise ConfigurationError(
        f"cannot read a value from {repo.describe()}: it holds neither metadata nor blobs"
    )


async def _write_value(task: Task, link_name: str, repo: Repository, key: str, value: Any) -> None:
    if isinstance(repo, MetadataRepository):
        await repo.put(key, value)
    elif isinstance(repo, BlobRepository):
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise JobError(
                f"task {task.name}: output {link_name!r} is a blob repository; the function returned "
                f"{type(value).__name__}, expected bytes or str"
            )
        await repo.write_bytes(key, bytes(value))
    else:
        raise JobError(
            f"task {task.name}: cannot write a value to output {link_name!r} ({repo.describe()}): "
            "it holds neither metadata nor blobs"
        )


class InProcessTask(_FunctionTask):
    """Jobs are calls of ``func`` in the scheduler's process.

    An **async** function is called with keyword arguments chosen by its parameter names:
    ``key`` (the job key), ``job`` (the :class:`JobContext`), and each link name (the
    linked repository itself), so it reads inputs and writes outputs as it likes::

        async def count(key, doc, stats):
            text = await doc.read_text(key)
            await stats.put(key, {"words": len(text.split())})

    A **sync** function is run in a worker thread with *values* instead of repositories,
    exactly as :class:`ExecutorTask` describes. Each such task has a thread pool of its
    own, of ``concurrency`` threads, made when the first job runs and shut down when the
    pipeline closes (so its calls never wait behind the repositories' file work, which
    uses asyncio's default executor). Its ``timeout`` counts from when the call starts.
    """

    runner = "in-process"

    def __init__(self, name: str, func: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(name, func, **kwargs)
        self._is_async = inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
            getattr(func, "__call__", None)  # noqa: B004
        )
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def times_itself(self) -> bool:
        return not self._is_async

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix=f"pydatatask-{self.name}"
            )
        return self._pool

    def close(self) -> None:
        """Shut the task's thread pool down (calls still running finish on their own)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    async def run_job(self, job: JobContext) -> JobOutcome | None:
        if self._is_async:
            # the repositories are fixed once the pipeline is built: resolve them once
            fixed = self.__dict__.get("_fixed_args")
            if fixed is None:
                fixed = {n: self.links[n].repository for n in self._wanted() if n not in ("key", "job")}
                self.__dict__["_fixed_args"] = fixed
            args = dict(fixed)
            if self._wants_key:
                args["key"] = job.key
            if self._wants_job:
                args["job"] = job
            await self.func(**args)
        else:
            await _run_with_values(self, job, self._threads(), values_only=False)
        return None

    @property
    def _wants_key(self) -> bool:
        return self._var_kw or "key" in self._params

    @property
    def _wants_job(self) -> bool:
        return self._var_kw or "job" in self._params


async def _run_with_values(
    task: _FunctionTask,
    job: JobContext,
    executor: concurrent.futures.Executor,
    *,
    values_only: bool = True,
    dask: DaskStartEvents | None = None,
) -> None:
    """Read the input values, call the function in ``executor``, write what it returned.

    The task's timeout counts from when the call starts (not while it waits for a worker)
    to the end of the writing of its outputs; reading the inputs before the call has a
    limit of the same length of its own.
    """
    what = f"task {task.name}: job {job.key!r}"
    if task.timeout is not None:
        try:
            async with asyncio.timeout(task.timeout):
                args = await _arguments(task, job, values_only)
        except TimeoutError as exc:
            raise JobTimeoutError(f"{what} timed out after {task.timeout:g}s reading its inputs") from exc
    else:
        args = await _arguments(task, job, values_only)
    call = functools.partial(task.func, **args)
    result, deadline = await run_call(call, executor, limit=task.timeout, what=what, dask=dask)
    if deadline is None:
        await _write_outputs(task, job, result)
        return
    try:
        async with asyncio.timeout_at(deadline):
            await _write_outputs(task, job, result)
    except TimeoutError as exc:
        raise JobTimeoutError(f"{what} timed out after {task.timeout:g}s writing its outputs") from exc


async def _arguments(task: _FunctionTask, job: JobContext, values_only: bool) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for name in task._wanted():
        if name == "key":
            args[name] = job.key
        elif name == "job":
            if values_only:
                raise ConfigurationError(
                    f"task {task.name}: an executor function cannot take the job context"
                )
            args[name] = job
        else:
            link = task.links[name]
            if link.kind is LinkKind.INPUT:
                args[name] = await _read_value(link.repository, job.key)
            elif link.is_output:
                continue  # outputs are returned, not passed
            else:
                if values_only:
                    raise ConfigurationError(
                        f"task {task.name}: parameter {name!r} names a {link.kind.value} link; "
                        "executor functions receive input values only"
                    )
                args[name] = link.repository
    return args


async def _write_outputs(task: _FunctionTask, job: JobContext, result: Any) -> None:
    outputs = task.output_links
    if not outputs:
        return
    if not isinstance(result, dict):
        raise JobError(
            f"task {task.name}: the function must return a dict {{output link name: value}} "
            f"for outputs {', '.join(link.name for link in outputs)}; it returned {type(result).__name__}"
        )
    missing = [link.name for link in outputs if link.name not in result]
    extra = [name for name in result if name not in task.links or not task.links[name].is_output]
    if missing or extra:
        raise JobError(
            f"task {task.name}: the function returned outputs {sorted(result)}; "
            f"expected exactly {sorted(link.name for link in outputs)}"
        )
    for link in outputs:
        await _write_value(task, link.name, link.repository, job.key, result[link.name])


class ExecutorTask(_FunctionTask):
    """Jobs are calls of a plain function in a :class:`concurrent.futures.Executor`
    (threads, processes) or a Dask ``distributed.Client``.

    The function gets ``key`` and, for each **input** link named by a parameter, the
    input's *value*: the record of a metadata repository, the bytes of a blob repository,
    the path (str) of a :class:`DirectoryRepository` entry. It returns a dict
    ``{output link name: value}`` (bytes or str for blob outputs, any structured value for
    metadata outputs), which is written after the call returns. With a process pool the
    function must be importable (defined at module level).

    The task's ``timeout`` counts from when the call starts, not while it waits for a free
    worker; a call that runs past it cannot be interrupted, so the job fails saying so and
    the call's late result is discarded (see :mod:`pydatatask.task._calls` for how each
    kind of executor reports the start).
    """

    runner = "executor"

    def __init__(self, name: str, func: Callable[..., Any], executor: Any, **kwargs: Any) -> None:
        self._dask: DaskStartEvents | None = None
        if hasattr(executor, "get_executor") and not isinstance(executor, concurrent.futures.Executor):
            self._dask = DaskStartEvents(executor)  # a dask.distributed Client
            executor = executor.get_executor()
        elif type(executor).__module__.startswith("distributed") and hasattr(executor, "_client"):
            self._dask = DaskStartEvents(executor._client)  # Client.get_executor() itself
        if not isinstance(executor, concurrent.futures.Executor):
            raise ConfigurationError(
                f"task {name!r}: executor must be a concurrent.futures.Executor or a distributed.Client, "
                f"not {type(executor).__name__}"
            )
        self.pool = executor
        super().__init__(name, func, **kwargs)
        self.runner = f"executor:{type(executor).__name__}"

    def check_parameters(self) -> None:
        super().check_parameters()
        for p in self._params:
            link = self.links.get(p)
            if p == "job" or (link is not None and not link.is_output and link.kind is not LinkKind.INPUT):
                raise ConfigurationError(
                    f"task {self.name!r}: executor function parameter {p!r} must be `key` or an input link"
                )

    @property
    def times_itself(self) -> bool:
        return True

    def close(self) -> None:
        """Stop listening for the start events of a Dask client (the executor is the user's)."""
        if self._dask is not None:
            self._dask.close()

    async def run_job(self, job: JobContext) -> JobOutcome | None:
        await _run_with_values(self, job, self.pool, dask=self._dask)
        return None
