"""Tasks whose jobs are shell commands, run by a host executor (this machine, SSH hosts).

See ``docs/process.rst`` for exactly what a job's process sees (paths, environment,
working directory) and for the restart semantics. The task says *what* runs; its executor
(:class:`~pydatatask.executor.LocalHost`, :class:`~pydatatask.executor.SSHHost` or
:class:`~pydatatask.executor.Hosts`) says *where*, holds the quota, makes the job
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
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, KeyNotFoundError
from ..executor.base import Executor, JobHandle, Outcome, ProcessWork, Resources, Slot
from ..executor.hosts import Host, HostFile, Hosts, host_for, parse_memory
from ..executor.local import LocalHost
from ..repository.base import BlobRepository, MetadataRepository, Repository, resolve
from ..repository.filesystem import DirectoryRepository, FileRepository
from ..repository.serialized import SerializedMetadataRepository, yaml_dumps, yaml_loads
from .base import JobContext, JobOutcome, Task
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

    def paths(self) -> list[Path]:
        return [p for p in (self.combined, self.stdout, self.stderr) if p is not None]

    def remove(self) -> None:
        for p in self.paths():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@dataclass
class _Staged:
    """What one attempt of one job does with its links besides what the host stages."""

    host: Host
    #: local outputs written in place: committed by :meth:`ProcessTask.finish`
    commits: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    #: their temporary paths, removed unless committed
    local_temps: list[Path] = field(default_factory=list)
    files: _JobFiles = field(default_factory=_JobFiles)


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.tmp-{secrets.token_hex(6)}")


def _tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - TAIL))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return ("..." if size > TAIL else "") + text


def _remove_paths(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()


def _in_place(repo: Repository) -> bool:
    if isinstance(repo, (FileRepository, DirectoryRepository)):
        return True
    return isinstance(repo, SerializedMetadataRepository) and isinstance(repo.blobs, FileRepository)


async def _repo_chunks(repo: BlobRepository, key: str) -> AsyncIterator[bytes]:
    async with repo.open(key, "rb") as reader:
        while chunk := await reader.read(CHUNK):
            yield chunk


async def _bytes_chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _members(executor: Executor) -> list[Host]:
    if isinstance(executor, Hosts):
        return list(executor.hosts)
    return [executor] if isinstance(executor, Host) else []


class ProcessTask(Task):
    """Jobs are shell commands run by a host executor.

    :param command: Jinja2 template of a shell command, run with ``/bin/sh -c``.
    :param script: instead of ``command``, a template of a whole shell script (written to
        ``<job dir>/ctl/script.sh`` and run with ``/bin/sh``).
    :param executor: where jobs run: a :class:`~pydatatask.executor.LocalHost` (the
        default, one made for the task), an :class:`~pydatatask.executor.SSHHost`, or
        :class:`~pydatatask.executor.Hosts` over several (each job goes to the host with
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
    ``concurrency``, ``retry``, ``timeout``, ``priority``) is as for :class:`Task`.
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
        if "hosts" in kwargs:
            raise ConfigurationError(
                f"task {name!r}: hosts= is gone; pass executor=Hosts([...]) (or one host as executor=)"
            )
        super().__init__(name, **kwargs)
        self.template = template
        self.is_script = script is not None
        if executor is None:
            executor = LocalHost()
        if not isinstance(executor, (Host, Hosts)):
            raise ConfigurationError(
                f"task {name!r}: executor= must be a LocalHost, an SSHHost or Hosts([...]), not {executor!r}"
            )
        self.executor: Host | Hosts = executor
        self.params = dict(params or {})
        self.env = dict(env or {})
        for var in self.env:
            if not isinstance(var, str) or not _ENV_NAME.match(var):
                raise ConfigurationError(f"task {name!r}: {var!r} is not a valid environment variable name")
        if not cpu > 0:
            raise ConfigurationError(f"task {name!r}: cpu must be positive")
        self.resources = Resources(cpu=float(cpu), memory=parse_memory(memory))
        self.kill_grace = parse_duration(kill_grace)
        for link_name, repo in (("stdout", stdout), ("stderr", stderr)):
            if repo is not None:
                if not isinstance(repo, BlobRepository):
                    raise ConfigurationError(f"task {name!r}: {link_name}= needs a BlobRepository")
                self.link(link_name, repo, LinkKind.OTHER)
        # what prepare() staged for each running job, until finish() and the cleanup
        self._staged: dict[tuple[str, int], _Staged] = {}
        # the local output files of each job, until its log is written
        self._files: dict[int, _JobFiles] = {}

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

    # ---------------------------------------------------------------- quotas
    def acquire_slot(self) -> Any:
        return self.executor.acquire(self.resources)

    def release_slot(self, slot: Any) -> None:
        if isinstance(slot, Slot):
            slot.executor.release(slot)

    async def _slot_for(self, job: JobContext) -> tuple[Slot, bool]:
        if isinstance(job.slot, Slot):
            return job.slot, False
        # run outside the scheduler: reserve here
        while (new := self.acquire_slot()) is None:  # noqa: ASYNC110 - capacity frees without an event
            await asyncio.sleep(0.05)
        return new, True

    # ---------------------------------------------------------------- the job
    async def run_job(self, job: JobContext) -> JobOutcome | None:
        slot, own_slot = await self._slot_for(job)
        handle: JobHandle | None = None
        staged: _Staged | None = None
        try:
            work = await self.prepare(job.key, job.attempt, slot)
            staged = self._staged[(job.key, job.attempt)]
            self._files[id(job)] = staged.files
            host = staged.host
            # the claim names the job directory before it exists: a scheduler killed while
            # making or filling it leaves nothing the next one does not know to remove
            await self._note_run(job, {"host": host.name, "dir": work.job_dir}, staged)
            handle = await self.executor.start(work, slot)
            try:
                await self._note_run(job, handle.info, staged)
            except BaseException:
                await self._stop(handle)
                raise
            job.log(f"started on {host.name} (pid {handle.info.get('pid')}) in {work.job_dir}")
            try:
                await handle.started()
                outcome = await handle.wait()
            except BaseException:
                # timeout or cancellation: stop the whole group
                await self._stop(handle)
                raise
            result = await self.finish(job.key, outcome, attempt=job.attempt)
            job.log(f"exited 0 on {host.name} after {outcome.extra.get('process_seconds', 0):.3f}s")
            return result
        except asyncio.CancelledError:
            files = self._files.pop(id(job), None)
            if files is not None:
                files.remove()
            raise
        finally:
            await asyncio.shield(self._cleanup(handle, staged))
            self._staged.pop((job.key, job.attempt), None)
            if own_slot:
                self.release_slot(slot)

    async def _stop(self, handle: JobHandle) -> None:
        """Kill the job's process group (shielded: a second cancellation does not stop it)."""
        kill = asyncio.ensure_future(handle.cancel(self.kill_grace))
        try:
            await asyncio.shield(kill)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host may be unreachable: nothing more to do here
            log.warning("task %s: could not stop a job process: %s: %s", self.name, type(exc).__name__, exc)

    async def _cleanup(self, handle: JobHandle | None, staged: _Staged | None) -> None:
        if staged is not None and staged.local_temps:
            await asyncio.to_thread(_remove_paths, staged.local_temps)
        if handle is not None:
            await handle.close()

    async def _note_run(self, job: JobContext, info: Mapping[str, Any], staged: _Staged) -> None:
        """Record where the job runs in its claim (``run``: the executor's handle info, for
        :meth:`~pydatatask.executor.base.Executor.recover`; ``temp_paths``: local outputs
        being written), so a restarted scheduler can find it. The claim is changed with
        the same conditional replace as heartbeats, so a claim taken over by another
        scheduler is never overwritten."""
        fields = {
            "run": dict(info),
            "temp_paths": [str(p) for p in staged.local_temps],
            "attempt": job.attempt,
        }
        if await self.update_claim(job.key, **fields) is False:
            raise JobError(f"task {self.name}: the claim on {job.key!r} was taken over by another scheduler")

    async def prepare(self, key: str, attempt: int, slot: Slot) -> ProcessWork:
        """The work of one attempt: the rendered command, its environment, the files the
        host copies in and brings back. ``slot`` (from :meth:`acquire_slot`) names the host;
        one that went down is swapped for another with room first."""
        host = host_for(slot)
        job_dir = host.job_dir_path((self.name, key))
        staged = _Staged(host=host, files=self._new_files())
        self._staged[(key, attempt)] = staged
        context = job_context(self, key, self.params)
        context["attempt"] = attempt
        context["job_dir"] = job_dir
        context["host"] = host.name
        files_in: dict[str, Any] = {}
        files_out: dict[str, Callable[[Any], Awaitable[None]]] = {}
        for link in self.links.values():
            info = context["links"][link.name]
            if link.kind is LinkKind.INPUT:
                await self._stage_input(link, key, host, job_dir, info, files_in)
            elif link.is_output:
                self._stage_output(link, key, host, job_dir, info, staged, files_out)
        env = {
            "PDT_KEY": key,
            "PDT_TASK": self.name,
            "PDT_ATTEMPT": str(attempt),
            "PDT_JOB_DIR": job_dir,
            "PDT_HOST": host.name,
        }
        for name, info in context["links"].items():
            for field_name, value in info.items():
                if field_name in ("repository", "exists") or not isinstance(value, (str, int, float)):
                    continue
                env[f"PDT_{name.upper()}_{field_name.upper()}"] = str(value)
        for var, value in self.env.items():
            value = resolve(value)
            if callable(value):
                value = value()
            env[var] = str(value)
        files = staged.files
        return ProcessWork(
            command=render_command(self.template, context),
            script=self.is_script,
            env=env,
            files_in=files_in,
            files_out=files_out,
            job=(self.name, key),
            job_dir=job_dir,
            stdout=files.combined or files.stdout,
            stderr=files.stderr,
        )

    async def finish(self, key: str, outcome: Outcome, *, attempt: int = 1) -> JobOutcome:
        """Commit the outputs written in place after an exit status of 0 (the host has
        brought back the others); raise :class:`~pydatatask.errors.JobError` for a failed
        command (with the end of its output) or a missing output."""
        staged = self._staged.get((key, attempt))
        place = outcome.place or (staged.host.name if staged is not None else "")
        if outcome.error is not None:
            raise outcome.error
        if outcome.exit_code != 0:
            files = staged.files if staged is not None else _JobFiles()
            tail = _tail(files.stderr or files.combined or files.stdout)
            exc = JobError(
                f"task {self.name}: job {key!r} on {place}: the command exited with status {outcome.exit_code}"
                + (f"; last output:\n{tail}" if tail else "")
            )
            exc.outcome = JobOutcome(exit_code=outcome.exit_code, host=place, extra=outcome.extra)  # type: ignore[attr-defined]
            raise exc
        if staged is not None:
            for commit in staged.commits:
                await commit()
        return JobOutcome(exit_code=0, host=place, extra=dict(outcome.extra))

    def _new_files(self) -> _JobFiles:
        def make(tag: str) -> Path:
            fd, path = tempfile.mkstemp(prefix=f"pdt-{self.name}-{tag}-")
            os.close(fd)
            return Path(path)

        files = _JobFiles()
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
            data = yaml_dumps(await repo.get(key))
            files_in[rel] = lambda: _bytes_chunks(data)
            info["format"] = "YAML"
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
            final.parent.mkdir(parents=True, exist_ok=True)
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
        files = self._files.pop(id(job), None)
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
                f = open(path, "rb")  # noqa: ASYNC230, SIM115 - local temporary file, closed below
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

        # ---------------------------------------------------------------- restart

    async def recover_stale(self, key: str, claim: Any) -> None:
        """Stop what is left of an interrupted job, then clean up and free the key.

        The executor finds the job again from the ``run`` the claim recorded
        (:meth:`~pydatatask.executor.base.Executor.recover`): if its process group still
        runs, it is killed (SIGTERM, SIGKILL after ``kill_grace``) and the job runs again
        from scratch; if it finished, it runs again too (its outputs were never committed).
        If the host cannot be reached, the claim stays until a later check succeeds, so
        the job never runs twice at once.
        """
        run = claim.get("run") if isinstance(claim, dict) else None
        if isinstance(run, dict):
            try:
                handle = await self.executor.recover(run)
                if handle is not None:
                    log.warning(
                        "task %s: killing the orphaned process group of %r on %s",
                        self.name,
                        key,
                        run.get("host"),
                    )
                    await handle.cancel(self.kill_grace)
                    await handle.close()
            except Exception as exc:
                log.warning(
                    "task %s: could not check the interrupted job %r on %s (%s: %s); will try again",
                    self.name,
                    key,
                    run.get("host"),
                    type(exc).__name__,
                    exc,
                )
                return
            temps = claim.get("temp_paths") or []
            await asyncio.to_thread(_remove_paths, [Path(p) for p in temps if isinstance(p, str)])
        await super().recover_stale(key, claim)


async def _read_all(found: HostFile) -> bytes:
    return b"".join([chunk async for chunk in found.chunks()])


async def _copy_chunks(found: HostFile, writer: Any) -> None:
    async for chunk in found.chunks():
        await writer.write(chunk)
