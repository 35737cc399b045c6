"""Tasks whose jobs are shell commands, run by a host executor (this machine, SSH hosts).

See ``docs/process.rst`` for exactly what a job's process sees (paths, environment,
working directory) and for the restart semantics. The task says *what* runs; its executor
(:class:`~pydatatask.executor.local.LocalHost`, :class:`~pydatatask.executor.ssh.SSHHost` or
:class:`~pydatatask.executor.multihost.Hosts`) says *where*, holds the quota, makes the job
directory, stages files and stops or finds again the process:

* :meth:`ProcessTask.prepare` renders the command (or script) template with
  :func:`~pydatatask.task.templates.render_command` (every value shell-quoted) and
  declares the files to copy in (inputs the host cannot read in place) and to bring back
  (outputs that are not local files);
* :meth:`ProcessTask.finish` commits the outputs after an exit status of 0: each becomes
  visible only then, atomically (a temporary sibling renamed into place, a streamed write
  committed on close);
* stdout/stderr stream to local temporary files, then into the ``logs`` (or
  ``stdout=``/``stderr=``) repositories;
* on timeout or cancellation the process group gets SIGTERM, then SIGKILL after
  ``kill_grace``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, KeyNotFoundError
from ..executor.base import Executor, Outcome, ProcessWork, Resources, Slot
from ..executor.hosts import Host, HostFile
from ..executor.local import LocalHost
from ..executor.multihost import Hosts, host_for, unreserved_slot
from ..quantities import parse_memory
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import DirectoryRepository, FileRepository
from ..repository.memory import MemoryBlobRepository
from ..repository.serialized import SerializedMetadataRepository, yaml_dumps, yaml_loads
from ..session import resolve
from .base import JobContext, JobOutcome, Task
from .claims import process_memory
from .links import Link, LinkKind
from .templates import job_context, render_command

__all__ = ("ProcessTask",)

log = logging.getLogger("pydatatask.task.process")

CHUNK = 1 << 20
SMALL = 1 << 16  # local files up to this size are read on the event loop (no thread hop)
TAIL = 2000
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class _JobFiles:
    combined: Path | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    #: in the job directory of a local host, removed with it (by the handle's close, or by
    #: the start that failed): nothing to remove here
    in_job_dir: bool = False

    def paths(self) -> list[Path]:
        return [p for p in (self.combined, self.stdout, self.stderr) if p is not None]

    def remove(self) -> None:
        if self.in_job_dir:
            return
        for p in self.paths():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@dataclass
class _KeyOutputs:
    """How the outputs of one key of a batch are committed: local ones written in place,
    then the others brought back from the job directory (relative path -> sink)."""

    commits: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    files_out: dict[str, Callable[[Any], Awaitable[None]]] = field(default_factory=dict)


@dataclass
class _Staged:
    """What one attempt of one job does with its links besides what the host stages."""

    host: Host
    #: local outputs written in place: committed by :meth:`ProcessTask.finish`
    commits: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: their temporary paths (the work's scratch: the host removes what is not committed)
    local_temps: list[Path] = field(default_factory=list)
    files: _JobFiles = field(default_factory=_JobFiles)
    #: the keys of the attempt (one, or those of a batch)
    keys: tuple[str, ...] = ()
    #: a batch: its job directory and, per key, how its outputs are committed
    job_dir: str = ""
    outputs: dict[str, _KeyOutputs] = field(default_factory=dict)


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{secrets.token_hex(6)}")


def _tail(path: Path | None, limit: int = TAIL) -> str:
    """The last ``limit`` bytes of a local output file, as text ("..." first if cut)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return ("..." if size > limit else "") + text


def _in_place(repo: Repository) -> bool:
    if isinstance(repo, (FileRepository, DirectoryRepository)):
        return True
    return isinstance(repo, SerializedMetadataRepository) and isinstance(repo.blobs, FileRepository)


async def _repo_chunks(repo: BlobRepository, key: str) -> AsyncIterator[bytes]:
    async with repo.open(key, "rb") as reader:
        while chunk := await reader.read(CHUNK):
            yield chunk


def _members(executor: Executor) -> list[Host]:
    if isinstance(executor, Hosts):
        return list(executor.hosts)
    return [executor] if isinstance(executor, Host) else []


class ProcessTask(Task):
    """Jobs are shell commands run by a host executor.

    :param command: Jinja2 template of a shell command, run with ``/bin/sh -c``.
    :param script: instead of ``command``, a template of a whole shell script (written to
        ``<job dir>/.pdt-script.sh`` and run with ``/bin/sh``).
    :param executor: where jobs run: a :class:`~pydatatask.executor.local.LocalHost` (the
        default, one made for the task), an :class:`~pydatatask.executor.ssh.SSHHost`, or
        :class:`~pydatatask.executor.multihost.Hosts` over several (each job goes to the host with
        the most free capacity that fits its ``cpu``/``memory``). The executor holds the
        quota (CPUs, memory, launch rate), shared by every task that uses the same object.
    :param params: extra template values, available as ``params.NAME``.
    :param env: environment variables for the process (values may be session accessors
        or zero-argument callables, resolved per job). Put secrets here, never in the
        command: the environment does not show on a command line.
    :param cpu: CPUs one job reserves on its host. :param memory: memory one job reserves.
    :param stdout: blob repository for each job's stdout (default: into ``logs``).
    :param stderr: blob repository for each job's stderr (default: into ``logs``).
    :param kill_grace: time between SIGTERM and SIGKILL when a job is stopped.

    Everything else (``inputs``, ``outputs``, ``done``, ``live``, ``logs``,
    ``concurrency``, ``retry``, ``timeout``, ``priority``) is as for :class:`~pydatatask.task.base.Task`.
    """

    runner = "process"

    def __init__(
        self,
        name: str,
        command: str | None = None,
        script: str | None = None,
        *,
        executor: Host | Hosts | None = None,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        cpu: float = 1,
        memory: str | int = "256Mi",
        stdout: BlobRepository | None = None,
        stderr: BlobRepository | None = None,
        kill_grace: float | str = "5s",
        **kwargs: Any,
    ) -> None:
        if (command is None) == (script is None):
            raise ConfigurationError(f"task {name!r}: give exactly one of command= or script=")
        template = command if command is not None else script
        if not isinstance(template, str) or not template.strip():
            raise ConfigurationError(f"task {name!r}: the command/script must be a non-empty string")
        super().__init__(name, **kwargs)
        self.template = template
        self.is_script = script is not None
        # a template with no Jinja2 syntax (no "{") and no "\r" (which Jinja2 turns into
        # "\n") renders to itself: not rendered per job
        self._static = "{" not in template and "\r" not in template
        if executor is None:
            executor = LocalHost()
        if not isinstance(executor, (Host, Hosts)):
            raise ConfigurationError(
                f"task {name!r}: executor= must be a LocalHost, an SSHHost or Hosts([...]), not {executor!r}"
            )
        self._executor: Host | Hosts = executor
        self.params = dict(params or {})
        self.env = dict(env or {})
        for var in self.env:
            if not isinstance(var, str) or not _ENV_NAME.match(var):
                raise ConfigurationError(f"task {name!r}: {var!r} is not a valid environment variable name")
        if not cpu > 0:
            raise ConfigurationError(f"task {name!r}: cpu must be positive")
        self._resources = Resources(cpu=float(cpu), memory=parse_memory(memory))
        self.kill_grace = parse_duration(kill_grace)
        for link_name, repo in (("stdout", stdout), ("stderr", stderr)):
            if repo is not None:
                if not isinstance(repo, BlobRepository):
                    raise ConfigurationError(f"task {name!r}: {link_name}= needs a BlobRepository")
                self.link(link_name, repo, LinkKind.OTHER)
        # what prepare() staged for each attempt (key, attempt), until its log is written
        self._staged: dict[tuple[str, int], _Staged] = {}

    @property
    def executor(self) -> Host | Hosts:
        """Where the jobs run (a host, or :class:`~pydatatask.executor.multihost.Hosts`)."""
        return self._executor

    @property
    def resources(self) -> Resources:
        """What one job reserves on its host."""
        return self._resources

    @property
    def cancel_grace(self) -> float:
        """``kill_grace``: time between SIGTERM and SIGKILL when a job is stopped."""
        return self.kill_grace

    @property
    def hosts(self) -> list[Host]:
        """The hosts jobs may run on."""
        return _members(self.executor)

    @property
    def cpu(self) -> float:
        """CPUs one job reserves."""
        return self.resources.cpu

    @property
    def memory(self) -> int:
        """Bytes of memory one job reserves."""
        return self.resources.memory

    def describe(self) -> str:
        return f"process task {self.name} on {', '.join(h.name for h in self.hosts)}"

    async def validate(self) -> None:
        if not self.executor.fits_at_all(self.resources):
            sizes = ", ".join(f"{h.name} (cpus={h.cpus:g}, memory={h.memory})" for h in self.hosts)
            raise ConfigurationError(
                f"task {self.name!r}: a job needs cpu={self.cpu:g} and memory={self.memory} bytes, "
                f"more than any host has: {sizes}"
            )

    # ---------------------------------------------------------------- the job
    async def prepare(self, job: JobContext) -> ProcessWork:
        """The work of one attempt: the rendered command, its environment, the files the
        host copies in and brings back. ``job.slot`` (from :meth:`~pydatatask.task.base.Task.acquire_slot`) names the
        host; one that went down is swapped for another with room first."""
        if job.batched:
            from .process_batch import prepare_batch  # builds on this module

            return await prepare_batch(self, job)
        key, attempt = job.key, job.attempt
        # in a scheduler (a slot given), whose pipeline waits at its close for the job
        # directories still being removed, and with claims in this process's memory: the
        # directory of a finished job may go in the background
        later = isinstance(job.slot, Slot) and self._claims_in_memory()
        if not isinstance(job.slot, Slot):
            job.slot = unreserved_slot(self.executor, self.resources)  # run outside a scheduler
        host = host_for(job.slot)
        job_dir = host.job_dir_path((self.name, key))
        self._forget(key)  # what a cancelled earlier attempt left
        staged = self._staged[(key, attempt)] = _Staged(
            host=host, files=self._new_files(host, job_dir), keys=(key,)
        )
        context = job_context(self, key, self.params)
        context["attempt"] = attempt
        context["job_dir"] = job_dir
        context["host"] = host.name
        files_in: dict[str, Any] = {}
        files_out: dict[str, Callable[[Any], Awaitable[None]]] = {}
        for link in self.links.values():
            info = context["links"][link.name]
            if link.kind is LinkKind.INPUT and self.group_by is not None:
                for member in context["members"]:  # fan-in: each member's input, not the group's
                    await self._stage_input(
                        link, member["key"], host, job_dir, member["links"][link.name], files_in
                    )
            elif link.kind is LinkKind.INPUT:
                await self._stage_input(link, key, host, job_dir, info, files_in)
            elif link.is_output:
                self._stage_output(link, key, host, job_dir, info, staged, files_out)
        files = staged.files
        return ProcessWork(
            command=self.template if self._static else render_command(self.template, context),
            script=self.is_script,
            env=self._job_env(context, {}),
            files_in=files_in,
            files_out=files_out,
            job=(self.name, key),
            job_dir=job_dir,
            stdout=files.combined or files.stdout,
            stderr=files.stderr,
            scratch=tuple(staged.local_temps),
            transient=later,
        )

    def _claims_in_memory(self) -> bool:
        """Whether the claims of the jobs are memory of this process: then a scheduler
        started after a crash would not learn of a job directory from its claim anyway."""
        return process_memory(self.live) is not None

    def _job_env(self, context: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
        """The environment of a job from its template ``context`` (the first key's for a
        batch), with ``extra`` before the task's own ``env``."""
        env = {
            "PDT_KEY": context["key"],
            "PDT_TASK": self.name,
            "PDT_ATTEMPT": str(context["attempt"]),
            "PDT_JOB_DIR": context["job_dir"],
            "PDT_HOST": context["host"],
        }
        for name, info in context["links"].items():
            for field_name, value in info.items():
                if field_name in ("repository", "exists") or not isinstance(value, (str, int, float)):
                    continue
                env[f"PDT_{name.upper()}_{field_name.upper()}"] = str(value)
        env.update(extra)
        for var, value in self.env.items():
            env[var] = str(resolve(value))
        return env

    async def finish(self, job: JobContext, outcome: Outcome) -> JobOutcome:
        """Commit the outputs written in place after an exit status of 0 (the host has
        brought back the others); raise :class:`~pydatatask.errors.JobError` for a failed
        command (with the end of its output) or a missing output.

        A batch (``job.batched``) returns a :class:`~pydatatask.task.base.BatchOutcome`
        naming the keys that failed, by what the command wrote to ``$PDT_RESULTS`` and
        its exit status; the outputs of the other keys are committed (see
        :mod:`pydatatask.task.process_batch`)."""
        if job.batched:
            from .process_batch import finish_batch  # builds on this module

            return await finish_batch(self, job, outcome)
        staged = self._staged.get((job.key, job.attempt))
        place = outcome.place or (staged.host.name if staged is not None else "")
        if outcome.error is not None:
            raise outcome.error
        if outcome.exit_code != 0:
            files = staged.files if staged is not None else _JobFiles()
            tail = _tail(files.stderr or files.combined or files.stdout)
            exc = JobError(
                f"task {self.name}: job {job.key!r} on {place}: the command exited with status {outcome.exit_code}"
                + (f"; last output:\n{tail}" if tail else "")
            )
            exc.outcome = JobOutcome(exit_code=outcome.exit_code, host=place, extra=outcome.extra)  # type: ignore[attr-defined]
            raise exc
        if staged is not None:
            for commit in staged.commits:
                await commit()
        job.log(f"exited 0 on {place} after {outcome.extra.get('process_seconds', 0):.3f}s")
        return JobOutcome(exit_code=0, host=place, extra=dict(outcome.extra))

    async def _keep_stopped_output(self, job: JobContext) -> None:
        """A batch stopped by its time limit keeps what its process printed, under each of
        its keys, as a finished batch does (an unbatched job's output goes into its log
        with :meth:`_write_log` in any case)."""
        if job.batched:
            from .process_batch import keep_stopped_output  # builds on this module

            await keep_stopped_output(self, job)

    def _forget(self, key: str) -> None:
        """Drop what earlier attempts of ``key`` left here (a cancelled attempt has no
        :meth:`finish` and no log) and remove their local output files."""
        for k in [k for k in self._staged if k[0] == key]:
            self._staged.pop(k).files.remove()

    def _forget_keys(self, keys: Collection[str]) -> None:
        """:meth:`_forget` for every key of a batch (earlier attempts of the batch may have
        had another first key)."""
        wanted = set(keys)
        for k in [k for k, staged in self._staged.items() if not wanted.isdisjoint(staged.keys)]:
            self._staged.pop(k).files.remove()

    def close(self) -> None:
        for staged in self._staged.values():
            staged.files.remove()
        self._staged.clear()

    def _new_files(self, host: Host, job_dir: str) -> _JobFiles:
        """Where the job's output goes until its log is written: on a local host hidden
        files in the job directory (made when the process starts, removed with the
        directory, no file of its own elsewhere), else local temporary files."""

        def make(tag: str) -> Path:
            if host.is_local:
                return Path(job_dir, f".pdt-{tag}")
            fd, path = tempfile.mkstemp(prefix=f"pdt-{self.name}-{tag}-")
            os.close(fd)
            return Path(path)

        files = _JobFiles(in_job_dir=host.is_local)
        has_out = "stdout" in self.links
        has_err = "stderr" in self.links
        if has_out:
            files.stdout = make("stdout")
        if has_err:
            files.stderr = make("stderr")
        if not (has_out and has_err):
            files.combined = make("log")
        return files

    # ---------------------------------------------------------------- staging links
    async def _stage_input(
        self, link: Link, key: str, host: Host, job_dir: str, info: dict[str, Any], files_in: dict[str, Any]
    ) -> None:
        repo = link.repository
        if host.is_local and _in_place(repo):
            return  # read where it is: info["path"] already points there
        base = f"in/{link.name}"
        if isinstance(repo, (FileRepository, DirectoryRepository)):
            rel = f"{base}/{key}{repo.extension}"
            local = repo.path(key)
            if not local.exists():
                raise JobError(f"task {self.name}: input {link.name!r} has no {key!r} ({local})")
            files_in[rel] = local
        elif isinstance(repo, MetadataRepository):
            rel = f"{base}/{key}.yaml"
            files_in[rel] = yaml_dumps(await repo.get(key))
            info["format"] = "YAML"
        elif isinstance(repo, MemoryBlobRepository):
            rel = f"{base}/{key}"
            files_in[rel] = await repo.read_bytes(key)  # in this process's memory already
        elif isinstance(repo, BlobRepository):
            rel = f"{base}/{key}"
            files_in[rel] = lambda: _repo_chunks(repo, key)
        else:
            return
        info["path"] = f"{job_dir}/{rel}"

    def _stage_output(
        self,
        link: Link,
        key: str,
        host: Host,
        job_dir: str,
        info: dict[str, Any],
        staged: _Staged,
        files_out: dict[str, Callable[[Any], Awaitable[None]]],
    ) -> None:
        repo = link.repository
        if host.is_local and isinstance(repo, FileRepository):
            final = repo.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _tmp_sibling(final)
            staged.local_temps.append(tmp)
            info["path"] = str(tmp.absolute())

            async def commit_file() -> None:
                if not tmp.is_file():
                    raise JobError(
                        f"task {self.name}: the command did not write output {link.name!r} ({tmp})"
                    )
                os.replace(tmp, final)

            staged.commits.append(commit_file)
            return
        if host.is_local and isinstance(repo, DirectoryRepository):
            final = repo.path(key)
            repo._make_prefixes(key)  # the directories above a nested key are marked as such
            tmp = _tmp_sibling(final)
            tmp.mkdir()
            staged.local_temps.append(tmp)
            info["path"] = str(tmp.absolute())

            async def commit_dir() -> None:
                await asyncio.to_thread(repo._install, tmp, final)

            staged.commits.append(commit_dir)
            return
        base = f"out/{link.name}"
        if isinstance(repo, DirectoryRepository):
            rel = f"{base}/{key}{repo.extension}/"

            async def commit_remote_dir(found: HostFile) -> None:
                async with repo.open_dir(key) as tmp_dir:
                    await self._missing_output(link, found, found.copy_to(tmp_dir))

            files_out[rel] = commit_remote_dir
        elif isinstance(repo, MetadataRepository):
            rel = f"{base}/{key}.yaml"
            info["format"] = "YAML"

            async def commit_metadata(found: HostFile) -> None:
                data = await self._missing_output(link, found, _read_all(found))
                try:
                    value = yaml_loads(data)
                except Exception as exc:
                    raise JobError(
                        f"task {self.name}: output {link.name!r} is not valid YAML: {exc}"
                    ) from exc
                await repo.put(key, value)

            files_out[rel] = commit_metadata
        elif isinstance(repo, BlobRepository):
            ext = repo.extension if isinstance(repo, FileRepository) else ""
            rel = f"{base}/{key}{ext}"

            async def commit_blob(found: HostFile) -> None:
                async with repo.open(key, "wb") as writer:
                    await self._missing_output(link, found, _copy_chunks(found, writer))

            files_out[rel] = commit_blob
        else:
            return
        info["path"] = f"{job_dir}/{rel.rstrip('/')}"

    async def _missing_output(self, link: Link, found: HostFile, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except FileNotFoundError:
            raise JobError(
                f"task {self.name}: the command did not write output {link.name!r} ({found})"
            ) from None

    # ---------------------------------------------------------------- logs
    async def _write_log(self, job: JobContext) -> None:
        staged = self._staged.pop((job.key, job.attempt), None)
        files = staged.files if staged is not None else None
        try:
            if files is not None:
                for name, path in (("stdout", files.stdout), ("stderr", files.stderr)):
                    if path is not None and name in self.links:
                        repo = self.links[name].repository
                        assert isinstance(repo, BlobRepository)
                        await self._copy_into(repo, job.key, [path], "", keep_old=False)
            logs = self.logs
            if logs is None:
                return
            paths = [files.combined] if files is not None and files.combined is not None else []
            if not paths and not job._log:
                return
            await self._copy_into(logs, job.key, paths, job.log_text, keep_old=job.attempt > 1)
        except Exception:
            log.exception("task %s: could not write the log of %r", self.name, job.key)
        finally:
            if files is not None:
                files.remove()

    async def _copy_into(
        self, repo: BlobRepository, key: str, paths: list[Path], trailer: str, keep_old: bool
    ) -> None:
        async with repo.open(key, "wb") as writer:
            if keep_old:
                try:
                    async for chunk in _repo_chunks(repo, key):
                        await writer.write(chunk)
                except KeyNotFoundError:
                    pass
            for path in paths:
                try:
                    f = open(path, "rb")  # noqa: ASYNC230, SIM115 - local temporary file, closed below
                except FileNotFoundError:
                    continue  # the process never started (its job directory could not be made)
                try:
                    if os.fstat(f.fileno()).st_size <= SMALL:
                        while chunk := f.read(CHUNK):
                            await writer.write(chunk)
                    else:
                        while chunk := await asyncio.to_thread(f.read, CHUNK):
                            await writer.write(chunk)
                finally:
                    f.close()
            if trailer:
                await writer.write(trailer.encode())


async def _read_all(found: HostFile) -> bytes:
    return b"".join([chunk async for chunk in found.chunks()])


async def _copy_chunks(found: HostFile, writer: Any) -> None:
    async for chunk in found.chunks():
        await writer.write(chunk)
