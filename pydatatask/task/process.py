"""Tasks whose jobs are shell commands, run on this machine or on SSH hosts.

See ``docs/process.rst`` for exactly what a job's process sees (paths, environment,
working directory) and for the restart semantics. In short:

* the command (or script) is a Jinja2 template rendered with
  :func:`~pydatatask.task.templates.render_command` (every value shell-quoted);
* the process runs in a fresh job directory (cwd ``<job dir>/work``), in its own process
  group, with secrets only in its environment;
* inputs a host cannot read in place are copied into the job directory first; outputs are
  written to temporary paths and become visible only after a successful exit;
* stdout/stderr stream to local temporary files, then into the ``logs`` (or
  ``stdout=``/``stderr=``) repositories;
* on timeout or cancellation the group gets SIGTERM, then SIGKILL after ``kill_grace``.
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
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, KeyNotFoundError
from ..executor.hosts import Host, HostUnavailableError, ProcessSpec, RunningProcess, parse_memory
from ..executor.local import LocalHost
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.filesystem import DirectoryRepository, FileRepository
from ..repository.serialized import SerializedMetadataRepository, yaml_dumps, yaml_loads
from ..session import resolve
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
class _Slot:
    """Capacity reserved on one host for one job (moved if the host goes down)."""

    host: Host
    cpu: float
    memory: int


@dataclass
class _JobFiles:
    combined: Path | None = None
    stdout: Path | None = None
    stderr: Path | None = None
    host: str = ""

    def paths(self) -> list[Path]:
        return [p for p in (self.combined, self.stdout, self.stderr) if p is not None]

    def remove(self) -> None:
        for p in self.paths():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


@dataclass
class _Staged:
    """What happens to the links of one job before and after the process."""

    commits: list[Any] = field(default_factory=list)  # coroutine factories, run on success
    local_temps: list[Path] = field(default_factory=list)  # removed unless committed


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


class ProcessTask(Task):
    """Jobs are shell commands on :class:`~pydatatask.executor.Host` objects.

    :param command: Jinja2 template of a shell command, run with ``/bin/sh -c``.
    :param script: instead of ``command``, a template of a whole shell script (written to
        ``<job dir>/ctl/script.sh`` and run with ``/bin/sh``).
    :param hosts: where jobs may run (default: one :class:`LocalHost`). Each job goes to
        the host with the most free capacity that fits its ``cpu``/``memory``.
    :param params: extra template values, available as ``params.NAME``.
    :param env: environment variables for the process (values may be session accessors
        or zero-argument callables, resolved per job). Put secrets here, never in the
        command: the environment does not show on a command line.
    :param cpu: CPUs one job reserves on its host. :param memory: memory one job reserves.
    :param stdout: blob repository for each job's stdout (default: into ``logs``).
    :param stderr: blob repository for each job's stderr (default: into ``logs``).
    :param kill_grace: time between SIGTERM and SIGKILL when a job is stopped.
    :param launch_rate: at most this many launches of this task per second per host.

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
        hosts: Sequence[Host] | None = None,
        params: Mapping[str, Any] | None = None,
        env: Mapping[str, Any] | None = None,
        cpu: float = 1,
        memory: str | int = "256Mi",
        stdout: BlobRepository | None = None,
        stderr: BlobRepository | None = None,
        kill_grace: float | str = "5s",
        launch_rate: float | None = None,
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
        self.hosts: list[Host] = list(hosts) if hosts is not None else [LocalHost()]
        if not self.hosts or not all(isinstance(h, Host) for h in self.hosts):
            raise ConfigurationError(f"task {name!r}: hosts must be a non-empty list of Host objects")
        names = [h.name for h in self.hosts]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"task {name!r}: host names must be unique, got {names}")
        self.params = dict(params or {})
        self.env = dict(env or {})
        for var in self.env:
            if not isinstance(var, str) or not _ENV_NAME.match(var):
                raise ConfigurationError(f"task {name!r}: {var!r} is not a valid environment variable name")
        if cpu <= 0:
            raise ConfigurationError(f"task {name!r}: cpu must be positive")
        self.cpu = float(cpu)
        self.memory = parse_memory(memory)
        self.kill_grace = parse_duration(kill_grace)
        if launch_rate is not None and launch_rate <= 0:
            raise ConfigurationError(f"task {name!r}: launch_rate must be positive jobs/second")
        self.launch_rate = launch_rate
        self._next_launch: dict[str, float] = {}
        for link_name, repo in (("stdout", stdout), ("stderr", stderr)):
            if repo is not None:
                if not isinstance(repo, BlobRepository):
                    raise ConfigurationError(f"task {name!r}: {link_name}= needs a BlobRepository")
                self.link(link_name, repo, LinkKind.OTHER)
        self._files: dict[int, _JobFiles] = {}

    def describe(self) -> str:
        return f"process task {self.name} on {', '.join(h.name for h in self.hosts)}"

    async def validate(self) -> None:
        if not any(h.fits_at_all(self.cpu, self.memory) for h in self.hosts):
            sizes = ", ".join(f"{h.name} (cpus={h.cpus:g}, memory={h.memory})" for h in self.hosts)
            raise ConfigurationError(
                f"task {self.name!r}: a job needs cpu={self.cpu:g} and memory={self.memory} bytes, "
                f"more than any host has: {sizes}"
            )

    # ---------------------------------------------------------------- quotas
    def _candidates(self, now: float, exclude: Host | None = None) -> list[Host]:
        return [
            h
            for h in self.hosts
            if h is not exclude
            and h.can_take(self.cpu, self.memory, now)
            and now >= self._next_launch.get(h.name, 0.0)
        ]

    def _take(self, host: Host, now: float) -> None:
        host.reserve(self.cpu, self.memory, now)
        if self.launch_rate:
            self._next_launch[host.name] = now + 1.0 / self.launch_rate

    def acquire_slot(self) -> Any:
        now = time.monotonic()
        candidates = self._candidates(now)
        if not candidates:
            return None
        host = max(candidates, key=lambda h: (h.free_share(), -h.running))
        self._take(host, now)
        return _Slot(host, self.cpu, self.memory)

    def release_slot(self, slot: Any) -> None:
        if isinstance(slot, _Slot):
            slot.host.give_back(slot.cpu, slot.memory)

    async def _slot_for(self, job: JobContext) -> tuple[_Slot, bool]:
        """The job's slot, moved off a host that went down if another can take it."""
        slot = job.slot
        if not isinstance(slot, _Slot):  # run outside the scheduler: reserve here
            while (new := self.acquire_slot()) is None:  # noqa: ASYNC110 - capacity frees without an event
                await asyncio.sleep(0.05)
            return new, True
        if not slot.host.is_up():
            now = time.monotonic()
            others = self._candidates(now, exclude=slot.host)
            if not others:
                raise HostUnavailableError(
                    f"task {self.name}: host {slot.host.name} is down ({slot.host.down_reason}) "
                    "and no other host has room"
                )
            host = max(others, key=lambda h: (h.free_share(), -h.running))
            slot.host.give_back(slot.cpu, slot.memory)
            self._take(host, now)
            slot.host = host
        return slot, False

    # ---------------------------------------------------------------- the job
    async def run_job(self, job: JobContext) -> JobOutcome | None:
        slot, own_slot = await self._slot_for(job)
        host = slot.host
        files = self._new_files(job, host)
        job_dir: str | None = None
        staged = _Staged()
        try:
            # the claim names the job directory before it exists: a scheduler killed while
            # making or filling it leaves nothing the next one does not know to remove
            planned = host.job_dir_path(f"{self.name}.{job.key}.")
            await self._note_claim(job, host, planned, staged, None)
            job_dir = await host.new_job_dir("", self._subdirs(host, job.key), path=planned)
            context, env = await self._stage(job, host, job_dir, staged)
            command = render_command(self.template, context)
            spec = ProcessSpec(
                command=command,
                job_dir=job_dir,
                cwd=f"{job_dir}/work",
                env=env,
                script=self.is_script,
                stdout=files.combined or files.stdout,
                stderr=files.stderr,
            )
            if self.is_script:
                spec.command = f"{job_dir}/ctl/script.sh"
                await host.write_file(spec.command, _bytes_chunks(command.encode()))
            if staged.local_temps:
                await self._note_claim(job, host, job_dir, staged, None)
            t0 = time.time()
            proc = await host.start(spec)
            try:
                await self._note_claim(job, host, job_dir, staged, proc)
            except BaseException:
                await self._stop(proc)
                raise
            job.log(f"started on {host.name} (pid {proc.pid}) in {job_dir}")
            code = await self._wait(proc)
            t1 = time.time()
            extra = {"process_seconds": round(t1 - t0, 6), "job_dir": job_dir}
            if code != 0:
                tail = _tail(files.stderr or files.combined or files.stdout)
                exc = JobError(
                    f"task {self.name}: job {job.key!r} on {host.name}: the command exited with status {code}"
                    + (f"; last output:\n{tail}" if tail else "")
                )
                exc.outcome = JobOutcome(exit_code=code, host=host.name, extra=extra)  # type: ignore[attr-defined]
                raise exc
            for commit in staged.commits:
                await commit()
            job.log(f"exited 0 on {host.name} after {t1 - t0:.3f}s")
            return JobOutcome(exit_code=0, host=host.name, extra=extra)
        except asyncio.CancelledError:
            self._files.pop(id(job), None)
            files.remove()
            raise
        finally:
            await asyncio.shield(self._cleanup(host, job_dir, staged))
            if own_slot:
                self.release_slot(slot)

    async def _wait(self, proc: RunningProcess) -> int:
        try:
            return await proc.wait()
        except BaseException:
            # timeout, cancellation, or the connection dropped: stop the whole group
            await self._stop(proc)
            raise

    async def _stop(self, proc: RunningProcess) -> None:
        """Kill the job's process group (shielded: a second cancellation does not stop it)."""
        kill = asyncio.ensure_future(proc.kill(self.kill_grace))
        try:
            await asyncio.shield(kill)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the host may be unreachable: nothing more to do here
            log.warning("task %s: could not stop a job process: %s: %s", self.name, type(exc).__name__, exc)

    async def _cleanup(self, host: Host, job_dir: str | None, staged: _Staged) -> None:
        if staged.local_temps:
            await asyncio.to_thread(_remove_paths, staged.local_temps)
        if job_dir is not None:
            try:
                await host.rmtree(job_dir)
            except Exception as exc:
                log.warning("task %s: could not remove %s on %s: %s", self.name, job_dir, host.name, exc)

    def _new_files(self, job: JobContext, host: Host) -> _JobFiles:
        def make(tag: str) -> Path:
            fd, path = tempfile.mkstemp(prefix=f"pdt-{self.name}-{tag}-")
            os.close(fd)
            return Path(path)

        files = _JobFiles(host=host.name)
        has_out = "stdout" in self.links
        has_err = "stderr" in self.links
        if has_out:
            files.stdout = make("stdout")
        if has_err:
            files.stderr = make("stderr")
        if not (has_out and has_err):
            files.combined = make("log")
        self._files[id(job)] = files
        return files

    async def _note_claim(
        self, job: JobContext, host: Host, job_dir: str, staged: _Staged, proc: RunningProcess | None
    ) -> None:
        """Record where the job runs in its claim, so a restarted scheduler can find it.

        The claim is changed with the same conditional replace as heartbeats (and under
        the same lock), so a claim taken over by another scheduler is never overwritten.
        """
        info: dict[str, Any] = {
            "host": host.name,
            "dir": job_dir,
            "pid_file": f"{job_dir}/ctl/pid",
            "exit_file": f"{job_dir}/ctl/exit",
            "temp_paths": [str(p) for p in staged.local_temps],
            "attempt": job.attempt,
        }
        if proc is not None and proc.pid is not None:
            info["pid"] = proc.pid
            info["pid_start"] = await host.process_start_time(proc.pid) if host.is_local else None
        if await self.update_claim(job.key, job=info) is False:
            raise JobError(f"task {self.name}: the claim on {job.key!r} was taken over by another scheduler")

    # ---------------------------------------------------------------- staging links
    async def _stage(
        self, job: JobContext, host: Host, job_dir: str, staged: _Staged
    ) -> tuple[dict[str, Any], dict[str, str]]:
        key = job.key
        context = job_context(self, key, self.params)
        context["attempt"] = job.attempt
        context["job_dir"] = job_dir
        context["host"] = host.name
        for link in self.links.values():
            info = context["links"][link.name]
            if link.kind is LinkKind.INPUT:
                await self._stage_input(link, key, host, job_dir, info)
            elif link.is_output:
                await self._stage_output(link, key, host, job_dir, info, staged)
        env = {
            "PDT_KEY": key,
            "PDT_TASK": self.name,
            "PDT_ATTEMPT": str(job.attempt),
            "PDT_JOB_DIR": job_dir,
            "PDT_HOST": host.name,
        }
        for name, info in context["links"].items():
            for field_name, value in info.items():
                if field_name in ("repository", "exists") or not isinstance(value, (str, int, float)):
                    continue
                env[f"PDT_{name.upper()}_{field_name.upper()}"] = str(value)
        for var, value in self.env.items():
            env[var] = str(resolve(value))
        return context, env

    def _subdirs(self, host: Host, key: str) -> list[str]:
        """Directories of the job directory that staging needs (made with it)."""
        dirs = []
        for link in self.links.values():
            repo = link.repository
            if link.kind is LinkKind.INPUT and not (host.is_local and _in_place(repo)):
                dirs.append(f"in/{link.name}")
            elif link.is_output and not (
                host.is_local and isinstance(repo, (FileRepository, DirectoryRepository))
            ):
                dirs.append(f"out/{link.name}")
                if isinstance(repo, DirectoryRepository):
                    dirs.append(f"out/{link.name}/{key}{repo.extension}")
        return dirs

    async def _stage_input(
        self, link: Link, key: str, host: Host, job_dir: str, info: dict[str, Any]
    ) -> None:
        repo = link.repository
        if host.is_local and _in_place(repo):
            return  # read where it is: info["path"] already points there
        base = f"{job_dir}/in/{link.name}"
        if isinstance(repo, (FileRepository, DirectoryRepository)):
            path = f"{base}/{key}{repo.extension}"
            local = repo.path(key)
            if not local.exists():
                raise JobError(f"task {self.name}: input {link.name!r} has no {key!r} ({local})")
            await host.upload(local, path)
        elif isinstance(repo, MetadataRepository):
            path = f"{base}/{key}.yaml"
            data = yaml_dumps(await repo.get(key))
            await host.write_file(path, _bytes_chunks(data))
            info["format"] = "YAML"
        elif isinstance(repo, BlobRepository):
            path = f"{base}/{key}"
            await host.write_file(path, _repo_chunks(repo, key))
        else:
            return
        info["path"] = path

    async def _stage_output(
        self, link: Link, key: str, host: Host, job_dir: str, info: dict[str, Any], staged: _Staged
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
        base = f"{job_dir}/out/{link.name}"
        if isinstance(repo, DirectoryRepository):
            path = f"{base}/{key}{repo.extension}"

            async def commit_remote_dir() -> None:
                async with repo.open_dir(key) as tmp_dir:
                    await host.download(path, tmp_dir)

            staged.commits.append(commit_remote_dir)
        elif isinstance(repo, MetadataRepository):
            path = f"{base}/{key}.yaml"
            info["format"] = "YAML"

            async def commit_metadata() -> None:
                data = b"".join([chunk async for chunk in self._read_output(host, link, path)])
                try:
                    value = yaml_loads(data)
                except Exception as exc:
                    raise JobError(
                        f"task {self.name}: output {link.name!r} is not valid YAML: {exc}"
                    ) from exc
                await repo.put(key, value)

            staged.commits.append(commit_metadata)
        elif isinstance(repo, BlobRepository):
            ext = repo.extension if isinstance(repo, FileRepository) else ""
            path = f"{base}/{key}{ext}"

            async def commit_blob() -> None:
                async with repo.open(key, "wb") as writer:
                    async for chunk in self._read_output(host, link, path):
                        await writer.write(chunk)

            staged.commits.append(commit_blob)
        else:
            return
        info["path"] = path

    async def _read_output(self, host: Host, link: Link, path: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in host.read_file(path):
                yield chunk
        except FileNotFoundError:
            raise JobError(
                f"task {self.name}: the command did not write output {link.name!r} ({path} on {host.name})"
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
    def _host_named(self, name: Any) -> Host | None:
        return next((h for h in self.hosts if h.name == name), None)

    async def recover_stale(self, key: str, claim: Any) -> None:
        """Stop what is left of an interrupted job, then clean up and free the key.

        If the job's process group still runs, it is killed (SIGTERM, SIGKILL after
        ``kill_grace``) and the job runs again from scratch; if it finished, its exit
        status is logged and the job runs again too (its outputs were never committed).
        If the host cannot be reached, the claim stays until a later check succeeds, so
        the job never runs twice at once.
        """
        info = claim.get("job") if isinstance(claim, dict) else None
        if isinstance(info, dict):
            host = self._host_named(info.get("host"))
            if host is None:
                log.error(
                    "task %s: job %r was interrupted on host %r, which this task no longer lists; "
                    "leaving its claim (remove it with `rm` once the process is surely gone)",
                    self.name,
                    key,
                    info.get("host"),
                )
                return
            try:
                await self._stop_orphan(host, key, info)
            except Exception as exc:
                log.warning(
                    "task %s: could not check the interrupted job %r on %s (%s: %s); will try again",
                    self.name,
                    key,
                    host.name,
                    type(exc).__name__,
                    exc,
                )
                return
            await asyncio.to_thread(_remove_paths, [Path(p) for p in info.get("temp_paths") or []])
        await super().recover_stale(key, claim)

    async def _stop_orphan(self, host: Host, key: str, info: dict[str, Any]) -> None:
        pid_file = str(info.get("pid_file") or "")
        pid, start = info.get("pid"), info.get("pid_start")
        text = await host.read_text(pid_file) if pid_file else None
        if text:
            parts = text.split()
            with contextlib.suppress(ValueError, IndexError):
                pid, start = int(parts[0]), int(parts[1])
        alive = False
        if isinstance(pid, int):
            now_start = await host.process_start_time(pid)
            alive = now_start is not None and (start is None or now_start == start)
        if alive:
            log.warning(
                "task %s: killing the orphaned process group %s of %r on %s", self.name, pid, key, host.name
            )
            if not await host.kill_group(pid_file, self.kill_grace):
                raise JobError(f"process group {pid} did not stop")
        else:
            exit_text = await host.read_text(str(info.get("exit_file") or ""))
            if exit_text is not None:
                log.warning(
                    "task %s: the interrupted job %r had finished on %s with status %s; running it again",
                    self.name,
                    key,
                    host.name,
                    exit_text.strip(),
                )
        if info.get("dir"):
            await host.rmtree(str(info["dir"]))
