"""The executor contract: *where* a job runs.

A task says *what* runs and turns one attempt of one job into a :class:`Work` item; an
:class:`Executor` runs it and gives back a :class:`JobHandle`. The contract is narrow, in
the spirit of an HTTP client's transport:

* capacity: :meth:`Executor.acquire` reserves room for a job's :class:`Resources` (or says
  there is none now), :meth:`Executor.release` gives it back; quotas (CPU, memory, number
  of jobs, launch rate) belong to the executor and are shared by every task using it;
* :meth:`Executor.start` starts a work item in a reserved :class:`Slot` and returns a
  handle: wait for its :class:`Outcome`, cancel it with a grace period, read its logs;
* :meth:`Executor.recover` re-attaches to what a crashed scheduler left running, from the
  JSON :attr:`JobHandle.info` that the job's claim stored.

The executor layer knows nothing of tasks, links, claims or job records: the one job
lifecycle (:mod:`pydatatask.task.lifecycle`) drives it. ``pydatatask.testing.executor``
holds the conformance suite every executor passes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = (
    "Resources",
    "Slot",
    "Work",
    "FunctionCall",
    "ProcessWork",
    "PodWork",
    "Outcome",
    "JobHandle",
    "Executor",
    "Capacity",
    "CallExecutor",
)


@dataclass(frozen=True)
class Resources:
    """What one job reserves on its executor: CPUs and memory (bytes)."""

    cpu: float = 0.0
    memory: int = 0


@dataclass(eq=False)
class Slot:
    """Capacity reserved for one job by :meth:`Executor.acquire`. Executors may subclass it
    to remember more (the host chosen, a pod quota entry)."""

    executor: Executor
    resources: Resources
    #: where the job will run (a host name, ``"loop"``, a pool, a namespace)
    place: str


class Work:
    """What to run for one attempt of one job. See the three kinds below."""

    #: a short name of the kind, for messages (``"function"``, ``"process"``, ``"pod"``)
    kind: ClassVar[str] = "work"


@dataclass(frozen=True, slots=True)
class FunctionCall(Work):
    """Call ``func(**kwargs)``. ``is_async``: ``func`` is a coroutine function (only the
    event-loop executor runs those). ``reference`` names the function for executors that run
    it in another process image (a pod): ``(script or module, task name)``. The return value
    comes back as :attr:`Outcome.result`, an exception as :attr:`Outcome.error`."""

    kind: ClassVar[str] = "function"

    func: Callable[..., Any]
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    is_async: bool = False
    reference: tuple[str, str] | None = None
    #: the job this call belongs to, ``(task, key)``, for logs and names
    job: tuple[str, str] = ("", "")
    #: every key of a batch (``job`` names the first); empty for one key
    keys: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProcessWork(Work):
    """A shell command (``script=False``: run with ``/bin/sh -c``) or a whole script, with
    ``env`` added to its environment (never on a command line). The executor makes a job
    directory, stages ``files_in`` (path relative to the job directory -> a callable
    returning an async iterator of bytes, the bytes themselves, or a local
    ``pathlib.Path`` of a file or directory to copy) before the start and, after an exit status of 0, hands each of
    ``files_out`` (relative path, ending in ``/`` for a directory made before the start ->
    async callable) what the command wrote there (host executors: a
    :class:`~pydatatask.executor.hosts.HostFile`). ``job`` is ``(task, key)``.

    ``job_dir``: the job directory to make (a task that renders its path into the command
    asks the host for one first); None: the executor picks one. ``stdout``/``stderr``: local
    files the output is appended to (``stderr`` None: into ``stdout``; both None: the
    executor keeps it, for :meth:`JobHandle.logs`). ``scratch``: local paths the command
    writes besides its job directory (temporary siblings of outputs written in place),
    removed by :meth:`JobHandle.close` and by recovery once they are not renamed away.
    ``transient``: work of a scheduler whose claims are memory of its own process, which
    nothing started after a crash would look for: a host may leave out what only recovery
    needs (a local job's pid file) and remove the job directory after
    :meth:`JobHandle.close` has returned, in the background (:meth:`Executor.aclose` waits
    for it)."""

    kind: ClassVar[str] = "process"

    command: str
    script: bool = False
    env: Mapping[str, str] = field(default_factory=dict)
    files_in: Mapping[str, Callable[[], Any] | bytes | Path] = field(default_factory=dict)
    files_out: Mapping[str, Callable[[Any], Awaitable[None]]] = field(default_factory=dict)
    job: tuple[str, str] = ("", "")
    #: every key of a batch (``job`` names the first); empty for one key
    keys: tuple[str, ...] = ()
    job_dir: str | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    scratch: tuple[Path, ...] = ()
    transient: bool = False


@dataclass(frozen=True, slots=True)
class PodWork(Work):
    """A rendered Pod manifest; the executor names the pod and labels it for ``job``."""

    kind: ClassVar[str] = "pod"

    manifest: Mapping[str, Any]
    job: tuple[str, str] = ("", "")
    #: every key of a batch (``job`` names the first); empty for one key
    keys: tuple[str, ...] = ()


@dataclass
class Outcome:
    """How a work item ended."""

    #: the exit status of a process or pod (None for function calls)
    exit_code: int | None = None
    #: a function's exception, or why the work could not run to its end
    error: BaseException | None = None
    #: a function's return value
    result: Any = None
    #: where it ran (host, pod, worker)
    place: str | None = None
    #: added to the job record
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No error and (for processes and pods) exit status 0."""
        return self.error is None and self.exit_code in (None, 0)


class JobHandle(ABC):
    """A started (or recovered) work item."""

    #: JSON data enough for :meth:`Executor.recover <pydatatask.executor.base.Executor.recover>`
    #: in another process to find it again
    info: dict[str, Any]
    #: whether a recovered handle's outcome can still be waited for (a pod that outlived its
    #: scheduler): the job lifecycle then adopts it, waiting for it as the job's current
    #: attempt; otherwise recovery cancels it and the job runs again
    adoptable: bool = False
    #: whether :meth:`cancel` stops work that has started (False for a function call in a
    #: pool: it runs to its end, and what it returns is discarded)
    interruptible: bool = True

    def describe(self) -> str:
        """A few words naming the work, for messages (``"pod NAMESPACE/NAME"``)."""
        return f"{type(self).__name__} {self.info}"

    async def started(self) -> None:  # noqa: B027 - most work starts at once
        """Return once the work really began (a pool's queue wait is not run time: a job's
        timeout starts here)."""

    @abstractmethod
    async def wait(self) -> Outcome:
        """Wait for the work to end."""

    @abstractmethod
    async def cancel(self, grace: float) -> None:
        """Stop the work (TERM, KILL after ``grace`` seconds); return once it has stopped."""

    async def logs(self) -> bytes:
        """What the work printed (bounded by the executor); ``b""`` if nothing."""
        return b""

    async def output_so_far(self) -> bytes:
        """The end of what the work has printed so far, while it runs (for a live view; the
        job's log gets :meth:`logs`). The default: :meth:`logs`, which executors that keep
        the output elsewhere while the work runs override."""
        return await self.logs()

    async def close(self) -> None:  # noqa: B027 - optional
        """Free what the finished work still holds (a pod, a job directory). Idempotent."""


class Executor(ABC):
    """Somewhere jobs run. Subclasses implement :meth:`start`, :meth:`recover` and, for
    quotas, :meth:`acquire`/:meth:`release`."""

    #: the kinds of work this executor can run
    carries: ClassVar[frozenset[type[Work]]] = frozenset()

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def describe(self) -> str:
        """One line for status output."""
        return f"{type(self).__name__} {self.name}"

    def can_run(self, work: type[Work]) -> bool:
        """Whether this executor carries work of this kind."""
        return any(issubclass(work, kind) for kind in self.carries)

    # ---------------------------------------------------------------- capacity
    def fits_at_all(self, resources: Resources) -> bool:
        """Whether a job with these resources could ever run here (checked when a pipeline
        opens). The default: always."""
        return True

    def acquire(self, resources: Resources) -> Slot | None:
        """Reserve room for one job, or return None if there is none now. The default has no
        quota."""
        return Slot(self, resources, self.name)

    def release(self, slot: Slot) -> None:  # noqa: B027 - no quota by default
        """Give back what :meth:`acquire` reserved."""

    # ---------------------------------------------------------------- jobs
    def planned_info(self, work: Work, slot: Slot) -> dict[str, Any]:
        """What :meth:`recover` needs should the scheduler die while :meth:`start` is still
        running (a job directory being made and filled), noted in the job's claim before
        the start; ``{}`` (the default) when a start leaves nothing behind."""
        return {}

    @abstractmethod
    async def start(self, work: Work, slot: Slot) -> JobHandle:
        """Start ``work`` in ``slot``; raise :class:`~pydatatask.errors.ConfigurationError` for a
        kind this executor does not carry."""

    async def recover(self, info: Mapping[str, Any]) -> JobHandle | None:
        """A handle on what a crashed scheduler left from ``info`` (a :attr:`JobHandle.info`),
        or None if nothing of it is left. Raises
        :class:`~pydatatask.errors.BackendUnavailableError` when it cannot tell. The default
        (work that dies with its scheduler: the event loop, pools): nothing is left."""
        return None

    async def jobs(self, task: str) -> Mapping[str, dict[str, Any]]:
        """``{key: info}`` for every job of ``task`` this executor still finds running or
        held (pods by label), whether or not a claim names it: the lifecycle's recovery
        passes each to :meth:`recover`. The default (nothing outlives its scheduler): none."""
        return {}

    async def aclose(self) -> None:  # noqa: B027 - optional
        """Release the executor's own resources (pools, connections)."""


class Capacity:
    """A quota of jobs, CPUs and memory, for executors to hand out as slots.

    ``max_jobs``, ``cpu`` and ``memory`` (bytes) are limits; None means no limit of that
    kind. A job is admitted while every limit still has room for its
    :class:`Resources`; one that could never fit is refused by :meth:`fits_at_all`.
    """

    def __init__(
        self,
        name: str,
        *,
        max_jobs: int | None = None,
        cpu: float | None = None,
        memory: int | None = None,
    ) -> None:
        from ..errors import ConfigurationError

        if max_jobs is not None and max_jobs < 1:
            raise ConfigurationError(f"executor {name!r}: max_jobs must be at least 1, not {max_jobs}")
        if cpu is not None and cpu <= 0:
            raise ConfigurationError(f"executor {name!r}: cpu must be positive, not {cpu}")
        if memory is not None and memory <= 0:
            raise ConfigurationError(f"executor {name!r}: memory must be positive, not {memory}")
        self.name = name
        self.max_jobs = max_jobs
        self.cpu = cpu
        self.memory = memory
        self.cpu_used = 0.0
        self.memory_used = 0
        self._slots: set[Slot] = set()
        # without limits nothing needs counting (the hot path of in-loop jobs)
        self._limited = max_jobs is not None or cpu is not None or memory is not None

    @property
    def jobs(self) -> int:
        """Slots handed out and not given back (counted only under a limit)."""
        return len(self._slots)

    def fits_at_all(self, resources: Resources) -> bool:
        """Whether a job with ``resources`` fits when nothing else runs."""
        return (self.cpu is None or resources.cpu <= self.cpu) and (
            self.memory is None or resources.memory <= self.memory
        )

    def acquire(self, executor: Executor, resources: Resources, place: str) -> Slot | None:
        """A slot of ``executor`` for ``resources``, or None if a limit is reached."""
        if not self._limited:
            return Slot(executor, resources, place)
        if self.max_jobs is not None and self.jobs >= self.max_jobs:
            return None
        if self.cpu is not None and self.cpu_used + resources.cpu > self.cpu + 1e-9:
            return None
        if self.memory is not None and self.memory_used + resources.memory > self.memory:
            return None
        slot = Slot(executor, resources, place)
        self._slots.add(slot)
        self.cpu_used += resources.cpu
        self.memory_used += resources.memory
        return slot

    def release(self, slot: Slot) -> None:
        """Give back what :meth:`acquire` reserved for ``slot`` (once; again: nothing)."""
        if not self._limited or slot not in self._slots:
            return
        self._slots.discard(slot)
        self.cpu_used = max(0.0, self.cpu_used - slot.resources.cpu)
        self.memory_used = max(0, self.memory_used - slot.resources.memory)


class CallExecutor(Executor):
    """The base of executors of plain function calls
    (:class:`~pydatatask.executor.inloop.InLoopExecutor`,
    :class:`~pydatatask.executor.pool.PoolExecutor`, a pipeline file's Dask executor): they
    carry :class:`FunctionCall` work only and hand out their quota (``max_jobs`` calls at
    once, ``cpu``, ``memory`` in bytes; None: no limit of that kind) from a
    :class:`Capacity`, named after the executor.
    """

    carries: ClassVar[frozenset[type[Work]]] = frozenset({FunctionCall})

    def __init__(
        self, name: str, *, max_jobs: int | None = None, cpu: float | None = None, memory: int | None = None
    ) -> None:
        super().__init__(name)
        self.capacity = Capacity(name, max_jobs=max_jobs, cpu=cpu, memory=memory)

    def fits_at_all(self, resources: Resources) -> bool:
        return self.capacity.fits_at_all(resources)

    def acquire(self, resources: Resources) -> Slot | None:
        return self.capacity.acquire(self, resources, self.name)

    def release(self, slot: Slot) -> None:
        self.capacity.release(slot)

    def _call(self, work: Work) -> FunctionCall:
        """``work`` as the function call it must be, for :meth:`start`
        (:class:`~pydatatask.errors.ConfigurationError` for another kind)."""
        if not isinstance(work, FunctionCall):
            from ..errors import ConfigurationError

            raise ConfigurationError(f"{self.describe()} runs function calls, not {work.kind} work")
        return work
