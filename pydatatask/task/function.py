"""Function tasks: each job is one call of a Python function, on any executor that carries
:class:`~pydatatask.executor.base.FunctionCall` work."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

from ..errors import ConfigurationError, JobError, JobTimeoutError, KeyNotFoundError
from ..executor.base import Executor, FunctionCall, Outcome, Work
from ..executor.inloop import InLoopExecutor
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import DirectoryRepository
from ..repository.view import read_source
from .base import BatchOutcome, DirectCall, JobContext, JobOutcome, Task
from .links import LinkKind

__all__ = ("FunctionTask",)


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


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004
    )


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


#: reads and writes of a batch's values under way at once (latency-bound backends and
#: durable files overlap their waits)
BATCH_IO = 16


async def _each(keys: list[str], call: Callable[[str], Any]) -> None:
    """Await ``call(key)`` for every key, at most :data:`BATCH_IO` at once."""
    if len(keys) <= 1:
        for key in keys:
            await call(key)
        return
    gate = asyncio.Semaphore(BATCH_IO)

    async def one(key: str) -> None:
        async with gate:
            await call(key)

    async with asyncio.TaskGroup() as tg:
        for key in keys:
            tg.create_task(one(key))


def _check_batch_runs_here(name: str, batch: int, executor: Executor, body_elsewhere: bool) -> None:
    """A batched task calls its function with the values of the batch's keys, read here: an
    executor that runs the whole body elsewhere for one key (a function pod) cannot run it."""
    if batch > 1 and body_elsewhere:
        raise ConfigurationError(
            f"task {name!r}: a function task with batch={batch} cannot run on {executor.describe()} "
            "(a function pod runs one key): give it batch=1 or another executor"
        )


async def _read_batch(job: JobContext, repo: Repository) -> dict[str, Any]:
    """The values of the batch's keys in ``repo``; a key whose value cannot be read goes
    into ``job.failed``."""
    values: dict[str, Any] = {}

    async def read(key: str) -> None:
        try:
            values[key] = await _read_value(repo, key)
        except ConfigurationError:
            raise
        except Exception as exc:
            job.failed[key] = exc

    await _each([k for k in job.keys if k not in job.failed], read)
    return {k: values[k] for k in job.keys if k in values}


def _keys(job: JobContext) -> tuple[str, ...]:
    """The keys of a batch for its work item; empty for one key."""
    return tuple(job.keys) if job.batched else ()


class FunctionTask(Task):
    """Each job is one call of ``func``, on ``executor``.

    An **async** function runs in the scheduler's event loop (an
    :class:`~pydatatask.executor.inloop.InLoopExecutor`, the default; any other executor is a
    :class:`~pydatatask.errors.ConfigurationError`). It is called with keyword arguments
    chosen by its parameter names: ``key`` (the job key), ``job`` (the
    :class:`~pydatatask.task.base.JobContext`), and each link name (the linked repository
    itself), so it reads inputs and writes outputs as it likes::

        async def count(key, doc, stats):
            text = await doc.read_text(key)
            await stats.put(key, {"words": len(text.split())})

    A **plain** (sync) function gets *values* instead: ``key`` and, for each **input** link
    named by a parameter, the input's value (the record of a metadata repository, the bytes
    of a blob repository, the path (str) of a
    :class:`~pydatatask.repository.filesystem.DirectoryRepository` entry). It returns a dict
    ``{output link name: value}`` (bytes or str for blob outputs, any structured value for
    metadata outputs), written after the call returns. It runs on any executor carrying
    function calls: the default in-loop executor's threads (one pool per task, of
    ``concurrency`` threads, never asyncio's default executor), a
    :class:`~pydatatask.executor.pool.PoolExecutor` over threads, processes or a Dask client
    (then the function must be importable: defined at module level), and so on.

    A **fan-in** task (``group_by=``) runs one call per group: ``key`` is the group key,
    a ``members`` parameter receives the member keys (sorted), and a plain function's input
    parameters receive ``{member: value}`` dicts instead of one value; what it returns is
    written under the group key (see :doc:`/fan`).

    A task with ``batch=N`` (N > 1) calls the function once for up to N keys (see
    :doc:`/batches`): a ``keys`` parameter receives the list of keys (``key`` is the first).
    A plain function's input parameters receive ``{key: value}`` dicts; it returns
    ``{key: {output link name: value}}`` for the keys that succeeded, and may map a key to
    an exception instance to fail that key alone (a key missing from the result fails).
    An async function writes its outputs itself and returns None, or ``{key: exception}``
    for the keys that failed. A raised exception fails every key of the call.

    The ``timeout`` counts from when the call starts (not while it waits for a free worker)
    to the end of the writing of its outputs; reading the inputs before the call has a
    limit of the same length of its own. A plain function's call that runs past it cannot
    be interrupted: the job fails saying so and the call's late result is discarded.
    """

    def __init__(
        self, name: str, func: Callable[..., Any], *, executor: Executor | None = None, **kwargs: Any
    ) -> None:
        if not callable(func):
            raise ConfigurationError(f"task {name!r}: {func!r} is not callable")
        self.func = func
        self.is_async = _is_async(func)
        super().__init__(name, **kwargs)
        self._params, self._var_kw, self._optional = _parameters(func)
        self._fixed_args: dict[str, Repository] | None = None
        if executor is None:
            executor = InLoopExecutor(name, threads=self.concurrency)
            self._own_executor = True
        else:
            self._own_executor = False
        if not isinstance(executor, Executor):
            raise ConfigurationError(
                f"task {name!r}: executor must be a pydatatask Executor (wrap a concurrent.futures "
                f"pool or a Dask client in PoolExecutor(...)), not {type(executor).__name__}"
            )
        if not executor.can_run(FunctionCall):
            raise ConfigurationError(f"task {name!r}: {executor.describe()} does not run function calls")
        if self.is_async and not isinstance(executor, InLoopExecutor):
            raise ConfigurationError(
                f"task {name!r}: {getattr(func, '__qualname__', func)!r} is an async function; it runs "
                f"in the scheduler's event loop (InLoopExecutor), not on {executor.describe()}"
            )
        self._executor = executor
        self._in_process = isinstance(executor, InLoopExecutor)
        #: the executor runs the whole body where the call runs (a pod of the pipeline's
        #: image reads the inputs and writes the outputs itself)
        self._body_elsewhere = bool(getattr(executor, "runs_whole_function", False))
        _check_batch_runs_here(name, self.batch, executor, self._body_elsewhere)
        self.runner = "in-process" if isinstance(executor, InLoopExecutor) else f"function:{executor.name}"
        cls = type(self)
        # the lifecycle may await the call itself (see direct_call): what the executor and
        # finish would do around it is nothing
        self._direct = (
            self.is_async
            and self.batch == 1
            and isinstance(executor, InLoopExecutor)
            and type(executor).start is InLoopExecutor.start
            and type(executor).planned_info is InLoopExecutor.planned_info
            and cls.prepare is FunctionTask.prepare
            and cls.finish is FunctionTask.finish
        )

    @property
    def executor(self) -> Executor:
        return self._executor

    def describe(self) -> str:
        return f"function task {self.name} on {self._executor.describe()}"

    async def validate(self) -> None:
        self.check_parameters()

    def check_parameters(self) -> None:
        """Every parameter of the function must name a link, ``key`` or ``job`` (a function
        that runs outside this process: ``key`` or an input link)."""
        known = set(self.links) | {"key", "job"}
        if self.batch > 1:
            if "keys" in self.links:
                raise ConfigurationError(
                    f"task {self.name!r}: a batched task cannot have a link named 'keys' "
                    "(the parameter that receives the keys of the batch)"
                )
            known.add("keys")
        if self.group_by is not None:
            if "members" in self.links:
                raise ConfigurationError(
                    f"task {self.name!r}: a fan-in task cannot have a link named 'members' "
                    "(the parameter that receives the member keys)"
                )
            known.add("members")
        unknown = [p for p in self._params if p not in known and p not in self._optional]
        if unknown:
            raise ConfigurationError(
                f"task {self.name!r}: parameter(s) {', '.join(map(repr, unknown))} of "
                f"{getattr(self.func, '__qualname__', self.func)!r} match no link "
                f"(links: {', '.join(sorted(self.links))}; also available: key, job"
                + (", members" if self.group_by is not None else "")
                + (", keys" if self.batch > 1 else "")
                + ")"
            )
        if self._in_process:
            return
        for p in self._params:
            link = self.links.get(p)
            if p in ("members", "keys"):
                continue
            if p == "job" or (link is not None and not link.is_output and link.kind is not LinkKind.INPUT):
                raise ConfigurationError(
                    f"task {self.name!r}: parameter {p!r} of a function run on "
                    f"{self._executor.describe()} must be `key` or an input link"
                )

    def link(
        self, name: str, repository: Repository, kind: LinkKind | str = LinkKind.OTHER, **kw: Any
    ) -> Task:
        self._fixed_args = None  # links changed: resolve the arguments again
        return super().link(name, repository, kind, **kw)

    def close(self) -> None:
        """Shut the task's own thread pool down (calls still running finish on their own)."""
        if self._own_executor and isinstance(self._executor, InLoopExecutor):
            self._executor.shutdown()

    def _wanted(self) -> list[str]:
        extra: tuple[str, ...] = ("key", "job", "members") if self.group_by is not None else ("key", "job")
        if self.batch > 1:
            extra += ("keys",)
        if self._var_kw:
            return list(self.links) + list(extra)
        return [p for p in self._params if p in self.links or p in extra]

    # ---------------------------------------------------------------- the job
    async def prepare(self, job: JobContext) -> Work:
        """The call of this job: repositories for an async function, input values for a
        plain one."""
        if self.is_async:
            return FunctionCall(
                self.func, self._async_args(job), is_async=True, job=(self.name, job.key), keys=_keys(job)
            )
        if self._body_elsewhere:
            return FunctionCall(self.func, {}, job=(self.name, job.key), keys=_keys(job))
        if self.timeout is None:
            values = await self._arguments(job)
        else:
            try:
                async with asyncio.timeout(self.timeout):
                    values = await self._arguments(job)
            except TimeoutError as exc:
                raise JobTimeoutError(
                    f"task {self.name}: job {job.key!r} timed out after {self.timeout:g}s reading its inputs"
                ) from exc
        return FunctionCall(self.func, values, job=(self.name, job.key), keys=_keys(job))

    def _async_args(self, job: JobContext) -> dict[str, Any]:
        """The arguments of an async function's call for ``job``: repositories, and what
        of ``key``, ``job``, ``members`` and ``keys`` it takes."""
        # the repositories are fixed once the pipeline is built: resolve them once
        fixed = self._fixed_args
        if fixed is None:
            fixed = {
                n: self.links[n].repository
                for n in self._wanted()
                if n not in ("key", "job", "members", "keys")
            }
            self._fixed_args = fixed
        args: dict[str, Any] = dict(fixed)
        if self._var_kw or "key" in self._params:
            args["key"] = job.key
        if self._var_kw or "job" in self._params:
            args["job"] = job
        if self.group_by is not None and (self._var_kw or "members" in self._params):
            args["members"] = job.members
        if self.batch > 1 and (self._var_kw or "keys" in self._params):
            args["keys"] = list(job.keys)
        return args

    def direct_call(self, job: JobContext) -> DirectCall | None:
        """An async function of a single-key task on an
        :class:`~pydatatask.executor.inloop.InLoopExecutor`: the
        call itself, awaited by the job lifecycle (the executor would only wrap it in a
        handle; an async function writes its outputs itself, so there is nothing to finish)."""
        if not self._direct:
            return None
        return self.func, self._async_args(job)

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome | None:
        """Raise the call's error, or write what a plain function returned (for a batch: a
        :class:`~pydatatask.task.base.BatchOutcome` naming the keys that failed)."""
        if outcome.error is not None:
            raise outcome.error
        if self.batch > 1:
            return await self._finish_batch(job, outcome)
        if not self.is_async and not self._body_elsewhere:
            await self._write_outputs(job, outcome.result)
        if self._in_process and not outcome.extra:
            return None  # the common case: nothing to add to the record
        host = None if self._in_process else outcome.place
        return JobOutcome(host=host, extra=dict(outcome.extra))

    async def _finish_batch(self, job: JobContext, outcome: Outcome) -> BatchOutcome:
        result = outcome.result
        failed: dict[str, BaseException] = {}
        if self.is_async or self._body_elsewhere:
            if result is not None and not isinstance(result, dict):
                raise JobError(
                    f"task {self.name}: a batched async function returns None or {{key: exception}} "
                    f"for the keys that failed; it returned {type(result).__name__}"
                )
            for key, value in (result or {}).items():
                if isinstance(value, BaseException):
                    failed[key] = value
                elif value is not None:
                    raise JobError(
                        f"task {self.name}: a batched async function maps a failed key to an "
                        f"exception; it returned {type(value).__name__} for {key!r}"
                    )
        else:
            if not isinstance(result, dict):
                raise JobError(
                    f"task {self.name}: a batched function must return a dict {{key: {{output link "
                    f"name: value}}}}; it returned {type(result).__name__}"
                )
            written: list[str] = []
            for key in job.keys:
                if key in job.failed:
                    continue
                if key not in result:
                    failed[key] = JobError(
                        f"task {self.name}: the batched function returned no result for {key!r}"
                    )
                elif isinstance(result[key], BaseException):
                    failed[key] = result[key]
                else:
                    written.append(key)

            async def write(key: str) -> None:
                try:
                    await self._write_outputs(job, result[key], key)
                except ConfigurationError:
                    raise
                except Exception as exc:  # this key's outputs could not be written: it fails alone
                    failed[key] = exc

            await _each(written, write)
        host = None if self._in_process else outcome.place
        return BatchOutcome(host=host, extra=dict(outcome.extra), failed=failed)

    async def _arguments(self, job: JobContext) -> dict[str, Any]:
        args: dict[str, Any] = {}
        batched = self.batch > 1
        for name in self._wanted():
            if name == "key":
                args[name] = job.key
            elif name == "keys":
                args[name] = list(job.keys)
            elif name == "members":
                args[name] = job.members
            elif name == "job":
                if not self._in_process:
                    raise ConfigurationError(
                        f"task {self.name}: a function run on {self._executor.describe()} cannot take the job context"
                    )
                args[name] = job
            else:
                link = self.links[name]
                if link.kind is LinkKind.INPUT and self.group_by is not None:
                    # fan-in: the value of every member, by key
                    args[name] = {m: await _read_value(link.repository, m) for m in job.members}
                elif link.kind is LinkKind.INPUT and batched:
                    args[name] = await _read_batch(job, link.repository)
                elif link.kind is LinkKind.INPUT:
                    args[name] = await _read_value(link.repository, job.key)
                elif link.is_output:
                    continue  # outputs are returned, not passed
                else:
                    if not self._in_process:
                        raise ConfigurationError(
                            f"task {self.name}: parameter {name!r} names a {link.kind.value} link; "
                            "functions run outside this process receive input values only"
                        )
                    args[name] = link.repository
        if batched and job.failed:
            if len(job.failed) == len(job.keys):
                raise next(iter(job.failed.values()))  # nothing left to call the function on
            for name, value in args.items():
                if name == "keys":
                    args[name] = [k for k in value if k not in job.failed]
                elif isinstance(value, dict) and self.links.get(name) is not None:
                    args[name] = {k: v for k, v in value.items() if k not in job.failed}
        return args

    async def _write_outputs(self, job: JobContext, result: Any, key: str | None = None) -> None:
        outputs = self.output_links
        if not outputs:
            return
        key = job.key if key is None else key
        of = f" for {key!r}" if self.batch > 1 else ""
        if not isinstance(result, dict):
            raise JobError(
                f"task {self.name}: the function must return a dict {{output link name: value}}{of} "
                f"for outputs {', '.join(link.name for link in outputs)}; it returned {type(result).__name__}"
            )
        missing = [link.name for link in outputs if link.name not in result]
        extra = [name for name in result if name not in self.links or not self.links[name].is_output]
        if missing or extra:
            raise JobError(
                f"task {self.name}: the function returned outputs {sorted(result)}{of}; "
                f"expected exactly {sorted(link.name for link in outputs)}"
            )
        for link in outputs:
            await _write_value(self, link.name, link.repository, key, result[link.name])

    async def run_here(self, job: JobContext) -> JobOutcome | None:
        """Run one attempt of ``job`` in this process, on the task's executor, without the
        lifecycle around it (for a process that runs one job on behalf of another
        scheduler, e.g. inside a pod)."""
        from .lifecycle import run_attempt

        return await run_attempt(self, job)
