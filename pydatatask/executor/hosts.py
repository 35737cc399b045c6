"""Host executors: process jobs (:class:`~pydatatask.executor.base.ProcessWork`) on a machine.

A :class:`Host` is an :class:`~pydatatask.executor.base.Executor` with a CPU and memory
capacity and an optional launch rate (the quota every task using the same object shares).
For each work item it

* makes a private job directory (one directory, plus those of the files to stage:
  ``in/``, ``out/``), writes the ``files_in`` there, and starts the command in its own
  process group with the job directory as working directory, stdout/stderr streamed to
  local files;
* on an exit status of 0 hands each of ``files_out`` a :class:`HostFile` to stream back
  (the task commits it atomically); a failed command brings nothing back;
* stops the whole group on :meth:`~pydatatask.executor.base.JobHandle.cancel` (SIGTERM, SIGKILL after the grace
  period) and removes the job directory on :meth:`~pydatatask.executor.base.JobHandle.close`;
* finds what a crashed scheduler left from :attr:`~pydatatask.executor.base.JobHandle.info` (:meth:`Host.recover`):
  the pid and start time in ``<job dir>/.pdt-pid``, so a reused pid is never killed.

:class:`~pydatatask.executor.multihost.Hosts` spreads jobs over several hosts by free
share and moves a job whose host went down to another one. How files move and how ``/proc`` is read are each host's private
business (:mod:`~pydatatask.executor.local`, :mod:`~pydatatask.executor.ssh`).

Every job runs through the same small shell wrapper (``executor/_shell.py``), which
records ``<pid> <start time>`` in ``<job dir>/.pdt-pid`` before the command starts. On
SSH hosts it stays the command's parent and also writes the exit status to
``<job dir>/.pdt-exit`` (the connection may be gone when the command ends); on the local
host, whose scheduler is the parent, the command replaces the wrapper in place
(``eval`` of a command, ``exec`` of a script): no second process per job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from abc import abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..durations import parse_duration
from ..errors import BackendUnavailableError, ConfigurationError, JobError
from ..quantities import format_memory, parse_memory
from ._shell import EXIT_FILE, PID_FILE, SCRIPT_FILE
from .base import Capacity, Executor, JobHandle, Outcome, ProcessWork, Resources, Slot, Work
from .quota import LaunchRate

__all__ = ("Host", "HostFile", "HostUnavailableError")

log = logging.getLogger("pydatatask.executor.hosts")

#: how much of a job's output :meth:`JobHandle.logs` returns (its end)
LOG_TAIL = 2000


class HostUnavailableError(JobError):
    """A host could not be reached, or its connection dropped while a job ran (the job
    fails; the retry policy may run it again, on another host if one is free)."""


@dataclass
class _ProcessSpec:
    """What a host starts: ``command`` (shell text, or a script path if ``script``) run by
    the wrapper with cwd ``cwd``; ``env`` added to the environment (never on a command
    line); stdout to the local file ``stdout``, stderr to ``stderr`` (or into stdout)."""

    command: str
    job_dir: str
    cwd: str
    env: Mapping[str, str] = field(default_factory=dict)
    script: bool = False
    stdout: Path | None = None
    stderr: Path | None = None
    #: whether the wrapper writes :data:`PID_FILE` (what recovery goes by)
    pid_file: bool = True

    @property
    def pid_path(self) -> str:
        return f"{self.job_dir}/{PID_FILE}"


class _Process:
    """A started job process (the leader of its own process group)."""

    #: pid of the group leader, if known
    pid: int | None = None

    async def wait(self) -> int:
        """Wait for the process to end; its exit status (128+N for signal N)."""
        raise NotImplementedError

    async def kill(self, grace: float) -> None:
        """SIGTERM the whole group, SIGKILL after ``grace`` seconds, wait until it is gone."""
        raise NotImplementedError


def _tail(path: Path | None, size: int = LOG_TAIL) -> bytes:
    if path is None:
        return b""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            f.seek(max(0, end - size))
            data = f.read()
    except OSError:
        return b""
    return (b"..." if end > size else b"") + data


class HostFile:
    """A file (or directory) a finished job left in its job directory, as handed to the
    ``files_out`` callbacks of a :class:`~pydatatask.executor.base.ProcessWork`."""

    def __init__(self, host: Host, path: str, name: str) -> None:
        self.host = host
        #: the path on the host
        self.path = path
        #: the relative path the work declared
        self.name = name

    def __str__(self) -> str:
        return f"{self.path} on {self.host.name}"

    def chunks(self) -> AsyncIterator[bytes]:
        """Stream the file's bytes (:class:`FileNotFoundError` if the command did not write
        it)."""
        return self.host._read_file(self.path)

    async def copy_to(self, local: Path) -> None:
        """Copy the file to the local path ``local``, or a directory's contents into it
        (:class:`FileNotFoundError` if the command did not write it)."""
        await self.host._download(self.path, local)


def _parent_dirs(paths: Sequence[str]) -> list[str]:
    dirs: set[str] = set()
    for path in paths:
        parts = path.strip("/").split("/")
        stop = len(parts) if path.endswith("/") else len(parts) - 1
        for depth in range(1, stop + 1):
            dirs.add("/".join(parts[:depth]))
    return sorted(dirs)


def _check_relative(path: str) -> None:
    parts = path.rstrip("/").split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ConfigurationError(f"a staged file path must be relative to the job directory, not {path!r}")


class _HostJob(JobHandle):
    """A process started (or found again) on a host."""

    def __init__(
        self,
        host: Host,
        info: dict[str, Any],
        proc: _Process | None = None,
        work: ProcessWork | None = None,
        logs: tuple[Path | None, Path | None] = (None, None),
        own_logs: Sequence[Path] = (),
    ) -> None:
        self.host = host
        self.info = info
        self.proc = proc
        self.work = work
        self._logs = logs
        self._own_logs = list(own_logs)
        self._outcome: Outcome | None = None
        self._closed = False
        self._t0 = time.time()

    @property
    def job_dir(self) -> str:
        return str(self.info["dir"])

    async def wait(self) -> Outcome:
        if self._outcome is not None:
            return self._outcome
        if self.proc is None:
            # found again after a crash: its scheduler, not this one, was its parent
            return Outcome(
                error=JobError(f"the job on {self.host.name} was interrupted"), place=self.host.name
            )
        try:
            code = await self.proc.wait()
        except HostUnavailableError as exc:
            self._outcome = Outcome(error=exc, place=self.host.name)
            return self._outcome
        t1 = time.time()
        outcome = Outcome(
            exit_code=code,
            place=self.host.name,
            extra={"process_seconds": round(t1 - self._t0, 6), "job_dir": self.job_dir},
        )
        if code == 0 and self.work is not None:
            try:
                for name, sink in self.work.files_out.items():
                    await sink(HostFile(self.host, f"{self.job_dir}/{name.rstrip('/')}", name))
            except Exception as exc:
                outcome.error = exc
        self._outcome = outcome
        return outcome

    async def cancel(self, grace: float) -> None:
        if self.proc is not None:
            # shielded: a second cancellation does not leave the group half-stopped
            await asyncio.shield(self.proc.kill(grace))
            return
        if not await self.host._kill_group(f"{self.job_dir}/{PID_FILE}", grace):
            raise JobError(f"host {self.host.name}: the process group of {self.job_dir} did not stop")

    async def logs(self) -> bytes:
        """The end of the output the host kept itself (``b""`` when the work named its own
        ``stdout``/``stderr`` files: the caller has it all there)."""
        return b"".join(_tail(path) for path in self._own_logs)

    async def output_so_far(self) -> bytes:
        """The end of the process's stdout and stderr so far, wherever they go (the files
        the work named, or the host's own)."""
        return b"".join(_tail(path) for path in dict.fromkeys(self._logs) if path is not None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for path in self._own_logs:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        scratch = self.info.get("scratch")
        if scratch:
            await _remove_scratch(scratch)
        try:
            await self.host._remove_job_dir(self.job_dir, self.work)
        except Exception as exc:  # the host may be unreachable: reaped on reconnection
            log.warning("host %s: could not remove %s: %s", self.host.name, self.job_dir, exc)


class Host(Executor):
    """Somewhere process jobs run. Capacity is shared by every task that uses the object.

    :param name: shown in job records and logs.
    :param cpus: CPU capacity (jobs reserve their task's ``cpu``).
    :param memory: memory capacity (``"8Gi"``, bytes, ...).
    :param launch_rate: at most this many job launches per second on this host.
    :param max_jobs: at most this many jobs at once (default: as many as fit).
    """

    carries: ClassVar[frozenset[type[Work]]] = frozenset({ProcessWork})
    #: whether paths of the host are paths of the scheduler's machine
    is_local: ClassVar[bool] = False

    def __init__(
        self,
        name: str,
        *,
        cpus: float = 1,
        memory: str | int = "1Gi",
        launch_rate: float | None = None,
        max_jobs: int | None = None,
    ) -> None:
        if not cpus > 0:
            raise ConfigurationError(f"host {name!r}: cpus must be positive, not {cpus!r}")
        super().__init__(name)
        self.cpus = float(cpus)
        self.memory = parse_memory(memory)
        if self.memory <= 0:
            raise ConfigurationError(f"host {name!r}: memory capacity must be positive")
        self.launch_rate = LaunchRate(launch_rate, f"host {name!r}")
        self.capacity = Capacity(name, max_jobs=max_jobs, cpu=self.cpus, memory=self.memory)
        self._down_until = 0.0
        self.down_reason: str | None = None

    def describe(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} cpus={self.cpus:g} memory={format_memory(self.memory)}>"

    # ------------------------------------------------------------ capacity
    @property
    def used_cpus(self) -> float:
        """CPUs the running jobs reserve."""
        return self.capacity.cpu_used

    @property
    def used_memory(self) -> int:
        """Memory (bytes) the running jobs reserve."""
        return self.capacity.memory_used

    @property
    def running(self) -> int:
        """Jobs holding a slot here."""
        return self.capacity.jobs

    def fits_at_all(self, resources: Resources) -> bool:
        return self.capacity.fits_at_all(resources)

    def may_launch(self, now: float | None = None) -> bool:
        """Whether the host is up and its launch rate allows a launch now."""
        now = time.monotonic() if now is None else now
        return self.is_up(now) and self.launch_rate.ready(now)

    def free_share(self) -> float:
        """Free fraction of the capacity (CPU and memory averaged); higher is emptier."""
        return ((self.cpus - self.used_cpus) / self.cpus + (self.memory - self.used_memory) / self.memory) / 2

    def acquire(self, resources: Resources) -> Slot | None:
        now = time.monotonic()
        if not self.may_launch(now):
            return None
        slot = self.capacity.acquire(self, resources, self.name)
        if slot is not None:
            self.launch_rate.take(now)
        return slot

    def release(self, slot: Slot) -> None:
        self.capacity.release(slot)

    # ------------------------------------------------------------ health
    def is_up(self, now: float | None = None) -> bool:
        """False while the host is marked down (see :meth:`mark_down`)."""
        return (time.monotonic() if now is None else now) >= self._down_until

    def mark_down(self, reason: str, for_seconds: float | str = 5.0) -> None:
        """Launch nothing here for ``for_seconds`` (the host is tried again after that)."""
        self._down_until = time.monotonic() + parse_duration(for_seconds)
        self.down_reason = reason

    def mark_up(self) -> None:
        """The host works again."""
        self._down_until = 0.0
        self.down_reason = None

    # ------------------------------------------------------------ jobs
    def job_dir_path(self, job: tuple[str, str] = ("", "")) -> str:
        """A new, unused job directory path on this host for ``job`` (``(task, key)``), not
        created yet: a task renders it into the command before :meth:`start` makes it."""
        task, key = job
        prefix = f"{task}.{key.replace('/', '_')}." if task or key else "job."
        return self._job_dir_path(prefix)

    async def start(self, work: Work, slot: Slot) -> JobHandle:
        if not isinstance(work, ProcessWork):
            raise ConfigurationError(f"host {self.name} runs process work, not {work.kind} work")
        for rel in (*work.files_in, *work.files_out):
            _check_relative(rel)
        job_dir = work.job_dir or self.job_dir_path(work.job)
        own_logs: list[Path] = []
        stdout = _as_path(work.stdout)
        stderr = _as_path(work.stderr)
        if stdout is None:
            stdout = _temp_log(self.name)
            own_logs.append(stdout)
        made = False
        proc: _Process | None = None
        try:
            # a host that makes the directory, stages and starts in one step (undone whole
            # if it fails), or step by step here
            proc = await self._start_in_new_dir(job_dir, work, stdout, stderr)
            if proc is None:
                try:
                    await self._new_job_dir(job_dir, _parent_dirs([*work.files_in, *work.files_out]))
                except HostUnavailableError:
                    # the connection dropped while the directory was made: it may be there,
                    # and nothing else knows it (removed now or, host down, on reconnection)
                    made = True
                    raise
                made = True
                for rel, source in work.files_in.items():
                    target = f"{job_dir}/{rel}"
                    if isinstance(source, Path):
                        await self._upload(source, target)
                    elif isinstance(source, bytes):
                        await self._write_file(target, _one_chunk(source))
                    else:
                        await self._write_file(target, source())
                command = work.command
                if work.script:
                    command = f"{job_dir}/{SCRIPT_FILE}"
                    await self._write_file(command, _one_chunk(work.command.encode()))
                spec = _ProcessSpec(
                    command=command,
                    job_dir=job_dir,
                    cwd=job_dir,
                    env=work.env,
                    script=work.script,
                    stdout=stdout,
                    stderr=stderr,
                    pid_file=not work.transient,
                )
                proc = await self._spawn(spec)
            # what planned_info named, and the pid
            info: dict[str, Any] = {"host": self.name, "dir": job_dir}
            if work.scratch and work.job_dir is not None:
                info["scratch"] = [str(p) for p in work.scratch]
            info["pid"] = proc.pid
            info.update(await self._identify(proc))
        except BaseException:
            for path in own_logs:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            await asyncio.shield(_remove_scratch([str(p) for p in work.scratch]))
            if proc is not None:  # started, but not known to anyone: stopped here
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.kill(1.0))
            if made:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._rmtree(job_dir))
            raise
        return _HostJob(self, info, proc, work, (stdout, stderr), own_logs)

    def planned_info(self, work: Work, slot: Slot) -> dict[str, Any]:
        """The host, the job directory (:attr:`ProcessWork.job_dir
        <pydatatask.executor.base.ProcessWork>`, which a task asks for first) and the local
        scratch paths: what :meth:`recover` removes should the scheduler die while
        :meth:`start` makes and fills the directory."""
        if not isinstance(work, ProcessWork) or work.job_dir is None:
            return {}
        info: dict[str, Any] = {"host": self.name, "dir": work.job_dir}
        if work.scratch:
            info["scratch"] = [str(p) for p in work.scratch]
        return info

    async def recover(self, info: Mapping[str, Any]) -> JobHandle | None:
        """A handle on the process group of an interrupted job, to cancel, or None when
        nothing of it runs any more (its job directory is removed then).

        The pid and start time come from ``<job dir>/.pdt-pid`` (or from ``info``); a pid that now
        belongs to a process with another start time was reused: nothing is killed.
        Raises :class:`~pydatatask.errors.BackendUnavailableError` if the host cannot be
        reached."""
        if info.get("host", self.name) != self.name:
            raise BackendUnavailableError(
                f"host {self.name}: the interrupted job ran on host {info.get('host')!r}, not here"
            )
        job_dir = info.get("dir")
        if not isinstance(job_dir, str) or not job_dir:
            return None
        try:
            alive = await self._is_alive(dict(info))
            if alive:
                return _HostJob(self, dict(info))
            exit_text = await self._read_text(f"{job_dir}/{EXIT_FILE}")
            if exit_text is not None:
                log.warning(
                    "host %s: the interrupted job in %s had finished with status %s",
                    self.name,
                    job_dir,
                    exit_text.strip(),
                )
            await self._rmtree(job_dir)
            await _remove_scratch(info.get("scratch"))
        except HostUnavailableError as exc:
            raise BackendUnavailableError(
                f"host {self.name}: cannot check an interrupted job ({exc})"
            ) from exc
        return None

    async def _is_alive(self, info: dict[str, Any]) -> bool:
        """Whether the process group recorded for a job still runs."""
        pid, start = info.get("pid"), info.get("pid_start")
        text = await self._read_text(f"{info['dir']}/{PID_FILE}")
        if text:
            parts = text.split()
            with contextlib.suppress(ValueError, IndexError):
                pid, start = int(parts[0]), int(parts[1])
        if not isinstance(pid, int) or pid <= 0:
            return False
        now_start = await self._process_start_time(pid)
        return now_start is not None and (start is None or now_start == start)

    async def _identify(self, proc: _Process) -> dict[str, Any]:
        """More of :attr:`~pydatatask.executor.base.JobHandle.info` for a started process (local: its start time)."""
        return {}

    # ------------------------------------------------------------ the host's own business
    async def _start_in_new_dir(
        self, job_dir: str, work: ProcessWork, stdout: Path | None, stderr: Path | None
    ) -> _Process | None:
        """Make the job directory ``job_dir``, stage ``work``'s inputs and start it in one
        step that leaves nothing behind when it fails or is cancelled; None where the host
        does not (then :meth:`start` makes, stages and calls :meth:`_spawn` itself)."""
        return None

    @abstractmethod
    async def _spawn(self, spec: _ProcessSpec) -> _Process:
        """Start ``spec`` in a new process group; its job directory exists."""

    @abstractmethod
    async def _process_start_time(self, pid: int) -> int | None:
        """Start time of ``pid`` on the host, or None if it is gone."""

    @abstractmethod
    async def _kill_group(self, pid_file: str, grace: float) -> bool:
        """Stop the group whose leader's pid is in ``pid_file`` (:func:`kill_group_script`);
        True when nothing of it runs any more."""

    @abstractmethod
    async def _read_text(self, path: str) -> str | None:
        """A small file's content, or None if it does not exist."""

    @abstractmethod
    def _job_dir_path(self, prefix: str) -> str:
        """A new, unused job directory path ``<workdir>/<prefix><random>``."""

    @abstractmethod
    async def _new_job_dir(self, path: str, subdirs: Sequence[str] = ()) -> None:
        """Create the private (0700) job directory ``path`` (which must not exist) with
        ``subdirs`` inside."""

    @abstractmethod
    async def _rmtree(self, path: str) -> None:
        """Remove ``path`` recursively (no error if absent)."""

    async def _remove_job_dir(self, path: str, work: ProcessWork | None) -> None:
        """Remove the job directory ``path`` of ``work`` (None: a job found again after a
        crash), whatever the command left in it."""
        await self._rmtree(path)

    @abstractmethod
    async def _upload(self, local: Path, remote: str) -> None:
        """Copy a local file or directory to ``remote``."""

    @abstractmethod
    async def _download(self, remote: str, local: Path) -> None:
        """Copy the file ``remote`` to ``local``, or a directory's contents into ``local``."""

    @abstractmethod
    async def _write_file(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """Write a file from a stream of chunks."""

    @abstractmethod
    def _read_file(self, path: str) -> AsyncIterator[bytes]:
        """Stream a file's content (FileNotFoundError if absent)."""


def _remove_paths(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)


async def _remove_scratch(paths: Any) -> None:
    """Remove the local scratch paths of a job (those still there: a committed output was
    renamed away)."""
    if isinstance(paths, list) and paths:
        await asyncio.to_thread(_remove_paths, [p for p in paths if isinstance(p, str)])


def _as_path(path: Path | str | None) -> Path | None:
    return path if path is None or isinstance(path, Path) else Path(path)


def job_dir_entries(work: ProcessWork) -> tuple[list[str], list[str]]:
    """What the host itself puts into the job directory of ``work`` and what the command
    is told to write there, as paths relative to it: the files (staged inputs, declared
    output files, the pid file, a script, output files of the job directory) and the
    directories above them (parents first)."""
    job_dir = work.job_dir or ""
    files = [rel for rel in (*work.files_in, *work.files_out) if not rel.endswith("/")]
    if not work.transient:
        files.append(PID_FILE)  # (a local host writes none for transient work)
    if work.script:
        files.append(SCRIPT_FILE)
    for path in (work.stdout, work.stderr):
        if path is not None and os.path.dirname(path) == job_dir:
            files.append(os.path.basename(path))
    return files, _parent_dirs([*work.files_in, *work.files_out])


async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _temp_log(host: str) -> Path:
    import tempfile

    fd, path = tempfile.mkstemp(prefix="pdt-job-log-")
    os.close(fd)
    return Path(path)
