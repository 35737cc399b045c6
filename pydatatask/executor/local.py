"""The scheduler's own machine as a host executor.

Jobs are child processes of the scheduler, each in its own process group (``setpgid``, not
a session of its own, which would make a scheduling group per job where the kernel has
autogroups), started with ``posix_spawn`` in a thread and waited for through a pidfd on the
event loop. A restarted scheduler judges the pid of an
interrupted job only when the job was started on this boot of the kernel in this PID
namespace (a pid recorded in another container, or before a reboot, names an unrelated
process here, or none).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any

from .._procfs import boot_id, pid_namespace, process_start_time, same_pid_space
from ._job_dirs import Remover, remove_job_dir, remove_small_tree
from ._shell import SCRIPT_FILE, kill_group_script, wrapper_script
from ._starter import Starter
from .base import ProcessWork
from .hosts import Host, _parent_dirs, _Process, _ProcessSpec, job_dir_entries

__all__ = ("LocalHost",)

log = logging.getLogger("pydatatask.executor.local")

CHUNK = 1 << 20
#: file operations on local disk up to this size are done on the event loop: a thread hop
#: costs more than the operation itself (and waits for the GIL while the loop is busy)
SMALL = 1 << 16


async def _open_append(path: Path | None) -> IO[bytes] | None:
    if path is None:
        return None
    return await asyncio.to_thread(open, path, "ab")


def _open_append_now(path: Path | None) -> IO[bytes] | None:
    """Open a local log file for appending (on the spot: opening is microseconds)."""
    return None if path is None else open(path, "ab")  # noqa: SIM115 - closed by the caller


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def _stop_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group ``pgid`` (a job started in its own session: the leader's
    pid), SIGKILL it after ``grace`` seconds, and return once no member is left."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace
    signum = signal.SIGTERM
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signum)
    while _group_alive(pgid):
        if signum == signal.SIGTERM and loop.time() >= deadline:
            signum = signal.SIGKILL
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signum)
        await asyncio.sleep(0.05)


class _LocalProcess(_Process):
    """A child process waited for through a pidfd on the event loop (Linux >= 5.3).

    asyncio's default child watcher in Python 3.11 starts one thread per child to block
    in ``waitpid``; at hundreds of short jobs per second those threads and their fight
    for the GIL cost more than the jobs. A pidfd becomes readable when the child ends;
    the loop then reaps it with a non-blocking ``waitpid``.
    """

    def __init__(self, pid: int, pidfd: int) -> None:
        self.pid = self._pid = pid
        self._pidfd: int | None = pidfd
        #: the exit code once reaped, and who waits for it (a future each: a cancelled
        #: waiter leaves the reaping and the other waiters alone)
        self._code: int | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(pidfd, self._reap)

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self._pid, os.WNOHANG)
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): status unknown
            pid, code = self._pid, 255
        else:
            if pid == 0:
                return  # not yet (spurious wake-up)
            code = os.waitstatus_to_exitcode(status)
        self._close_pidfd()
        if self._code is None:
            self._code = code
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def _close_pidfd(self) -> None:
        fd, self._pidfd = self._pidfd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    async def _ended(self) -> int:
        if self._code is None:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise
        assert self._code is not None
        return self._code

    async def wait(self) -> int:
        code = await self._ended()
        return 128 - code if code < 0 else code

    async def kill(self, grace: float) -> None:
        await _stop_group(self._pid, grace)
        await self._ended()


class _AsyncioProcess(_Process):
    """Fallback where pidfds are missing: asyncio's own subprocess support."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    async def wait(self) -> int:
        code = await self.proc.wait()
        return 128 - code if code < 0 else code

    async def kill(self, grace: float) -> None:
        await _stop_group(self.proc.pid, grace)
        with contextlib.suppress(ProcessLookupError):
            await self.proc.wait()


def _pidfds_work() -> bool:
    if not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return False
    return True


_PIDFD = _pidfds_work()
#: removes the job directories of transient work (one thread for the process)
_REMOVER = Remover()
#: starts the jobs (one thread for the process)
_STARTER = Starter("pdt-local-start")

#: signals Python ignores and a child must not inherit ignored (as Popen's ``restore_signals``)
_SIG_DEFAULT = tuple(getattr(signal, name) for name in ("SIGPIPE", "SIGXFSZ") if hasattr(signal, name))
_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
_O_APPEND = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_O_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC


def _posix_spawn(argv: list[str], env: dict[bytes, bytes], stdout: str | None, stderr: str | None) -> int:
    """Start ``argv`` in a process group of its own, stdin ``/dev/null``, stdout/stderr
    appended to the given files (``/dev/null`` when None; stderr into stdout when only
    stdout is given); its pid.

    ``os.posix_spawn`` rather than ``subprocess.Popen``: the same ``vfork``-style start
    without Popen's Python-level work per child (an exec-error pipe, the environment
    re-encoded variable by variable, fd bookkeeping), about a fifth of the scheduler's
    CPU time per job. Descriptors Python opens are not inherited (PEP 446), so nothing
    needs closing in the child."""
    opened: list[int] = []
    try:
        out = os.open(stdout, _O_APPEND, 0o600) if stdout is not None else None
        if out is not None:
            opened.append(out)
        err = os.open(stderr, _O_APPEND, 0o600) if stderr is not None else out
        if stderr is not None and err is not None:
            opened.append(err)
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)]
        for fd, target in ((out, 1), (err, 2)):
            if fd is None:
                actions.append((os.POSIX_SPAWN_OPEN, target, os.devnull, os.O_WRONLY, 0))
            else:
                actions.append((os.POSIX_SPAWN_DUP2, fd, target))
        return os.posix_spawn(argv[0], argv, env, file_actions=actions, setpgroup=0, setsigdef=_SIG_DEFAULT)
    finally:
        for fd in opened:
            os.close(fd)


def _environ_bytes() -> dict[bytes, bytes]:
    """A copy of this process's environment, as bytes.

    ``os.environb`` keeps its variables encoded in a plain dict: copied in one step, where
    ``dict(os.environb)`` goes through the mapping's Python methods for each variable."""
    data = getattr(os.environb, "_data", None)
    if type(data) is dict:
        return dict(data)
    return dict(os.environb)


def _make_job_dir(path: str, subdirs: Sequence[str]) -> None:
    """Create the private job directory ``path`` (FileExistsError if taken: a directory is
    never shared) and ``subdirs`` in it (parents first)."""
    try:
        os.mkdir(path, 0o700)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    for sub in subdirs:
        os.mkdir(f"{path}/{sub}", 0o700)


def _setup_and_spawn(
    job_dir: str,
    subdirs: Sequence[str],
    files: dict[str, bytes | Path],
    argv: list[str],
    env: dict[bytes, bytes],
    stdout: str | None,
    stderr: str | None,
) -> int:
    """Make the job directory, write or copy ``files`` into it and start the job
    (:func:`_posix_spawn`): one thread hop for all of it. A failure removes what was made."""
    _make_job_dir(job_dir, subdirs)
    try:
        for rel, source in files.items():
            target = f"{job_dir}/{rel}"
            if isinstance(source, Path):
                _copy(source, Path(target))
            else:
                fd = os.open(target, _O_WRITE, 0o666)
                try:
                    _write_all(fd, source)
                finally:
                    os.close(fd)
        return _posix_spawn(argv, env, stdout, stderr)
    except BaseException:
        shutil.rmtree(job_dir, ignore_errors=True)
        raise


def _kill_abandoned(pid: int, job_dir: str | None = None) -> None:
    """Stop a process whose start finished after its caller was cancelled (and remove its
    job directory, when the start made it)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # just killed: reaped at once
    if job_dir is not None:
        shutil.rmtree(job_dir, ignore_errors=True)


def _watch(pid: int, job_dir: str | None = None) -> _LocalProcess:
    """The process ``pid`` just started, waited for through a pidfd. Should that fail, the
    process is killed (and the job directory ``job_dir`` its start made removed)."""
    try:
        pidfd = os.pidfd_open(pid)
    except BaseException:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)  # just SIGKILLed: gone at once
        if job_dir is not None:
            shutil.rmtree(job_dir, ignore_errors=True)
        raise
    return _LocalProcess(pid, pidfd)


async def _started(spawning: asyncio.Future[int], job_dir: str | None = None) -> _LocalProcess:
    """The process whose start (in the starting thread) is ``spawning``, waited for
    through a pidfd. A caller cancelled meanwhile leaves nothing running (nor the job
    directory ``job_dir`` the start made): the thread stops what it started then."""
    try:
        pid = await asyncio.shield(spawning)
    except asyncio.CancelledError:
        # the start goes on (or has just ended): what it made goes once it has
        spawning.add_done_callback(functools.partial(_kill_started, job_dir=job_dir))
        raise
    return _watch(pid, job_dir)


def _kill_started(spawning: asyncio.Future[int], job_dir: str | None = None) -> None:
    if not spawning.cancelled() and spawning.exception() is None:
        _kill_abandoned(spawning.result(), job_dir)


def _argv_env(spec: _ProcessSpec) -> tuple[list[str], dict[bytes, bytes]]:
    """The argument vector and the environment that start ``spec``."""
    # bytes throughout: os.environ decodes every variable and Popen encodes it again,
    # a cost that showed at hundreds of jobs per second
    env = _environ_bytes()
    for name, value in spec.env.items():  # (as os.fsencode, without its Python-level checks)
        env[name.encode(_FS_ENCODING, _FS_ERRORS)] = value.encode(_FS_ENCODING, _FS_ERRORS)
    # the command runs in the wrapper shell itself (which first changes to the working
    # directory): one process per job
    wrapper = wrapper_script(
        spec.job_dir, spec.script, read_env=False, in_place=True, cwd=spec.cwd, pid_file=spec.pid_file
    )
    # ($0 of an inline command is /bin/sh, as for sh -c)
    return ["/bin/sh", "-c", wrapper, "pdt-job" if spec.script else "/bin/sh", spec.command], env


class LocalHost(Host):
    """Run jobs as child processes of the scheduler.

    :param name: shown in records (default: this machine's hostname).
    :param cpus: CPU capacity (default: ``os.cpu_count()``).
    :param memory: memory capacity (default: ``"4Gi"``).
    :param workdir: where job directories are made (default: ``$TMPDIR/pdt-jobs-<uid>``).
    :param launch_rate: at most this many launches per second.
    :param max_jobs: at most this many jobs at once (default: as many as fit).
    """

    is_local = True

    def __init__(
        self,
        name: str | None = None,
        *,
        cpus: float | None = None,
        memory: str | int = "4Gi",
        workdir: str | os.PathLike[str] | None = None,
        launch_rate: float | None = None,
        max_jobs: int | None = None,
    ) -> None:
        super().__init__(
            name or socket.gethostname(),
            cpus=cpus if cpus is not None else (os.cpu_count() or 1),
            memory=memory,
            launch_rate=launch_rate,
            max_jobs=max_jobs,
        )
        self.workdir = (
            Path(workdir).absolute()
            if workdir is not None
            else Path(tempfile.gettempdir()) / f"pdt-jobs-{os.getuid()}"
        )

    async def _start_in_new_dir(
        self, job_dir: str, work: ProcessWork, stdout: Path | None, stderr: Path | None
    ) -> _Process | None:
        """Make the job directory, stage the inputs and start the job in one step in the
        starting thread, when every input is bytes or a local path (streams are read on the
        event loop: the step-by-step way then).

        In a thread: a start stops its caller until the child has run ``exec``, which on a
        busy machine first waits for a CPU (milliseconds, in which a loop that started it
        itself would reap and start nothing)."""
        if not _PIDFD:
            return None
        files: dict[str, bytes | Path] = {}
        for rel, source in work.files_in.items():
            if not isinstance(source, (bytes, Path)):
                return None
            files[rel] = source
        command = work.command
        if work.script:
            command = f"{job_dir}/{SCRIPT_FILE}"
            files[SCRIPT_FILE] = work.command.encode()
        spec = _ProcessSpec(
            command=command,
            job_dir=job_dir,
            cwd=job_dir,
            env=work.env,
            script=work.script,
            pid_file=not work.transient,
        )
        argv, env = _argv_env(spec)
        subdirs = _parent_dirs([*work.files_in, *work.files_out]) if work.files_in or work.files_out else ()
        spawning = _STARTER.submit(
            functools.partial(_kill_abandoned, job_dir=job_dir),
            _setup_and_spawn,
            job_dir,
            subdirs,
            files,
            argv,
            env,
            None if stdout is None else os.fspath(stdout),
            None if stderr is None else os.fspath(stderr),
        )
        return await _started(spawning, job_dir)

    async def _spawn(self, spec: _ProcessSpec) -> _Process:
        """Start the job's shell in a process group of its own.

        A group is what stopping a job needs (``killpg``). A session of its own
        (``setsid``) would cost more: where the kernel groups processes for scheduling by
        session (autogroups, on by default), each ``setsid`` makes a scheduling group,
        which took milliseconds inside the fork (the scheduler is stopped until the
        child runs ``exec``) and gave each job as much of the CPU as the scheduler and
        all other jobs together."""
        argv, env = _argv_env(spec)
        stdout = None if spec.stdout is None else os.fspath(spec.stdout)
        stderr = None if spec.stderr is None else os.fspath(spec.stderr)
        if _PIDFD:
            # in the starting thread (see _start_in_new_dir)
            return await _started(_STARTER.submit(_kill_abandoned, _posix_spawn, argv, env, stdout, stderr))
        out = _open_append_now(spec.stdout)
        try:
            err = _open_append_now(spec.stderr)
        except BaseException:
            if out is not None:
                out.close()
            raise
        out_arg: Any = out if out is not None else subprocess.DEVNULL
        err_arg: Any = (
            err if err is not None else (subprocess.STDOUT if out is not None else subprocess.DEVNULL)
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out_arg,
                stderr=err_arg,
                env=env,
                process_group=0,
            )
            return _AsyncioProcess(proc)
        finally:
            for f in (out, err):
                if f is not None:
                    f.close()

    async def _process_start_time(self, pid: int) -> int | None:
        return process_start_time(pid)

    async def _kill_group(self, pid_file: str, grace: float) -> bool:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            kill_group_script(pid_file, grace, wait_for_pid=0.1),
            stdout=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        return out.strip().endswith(b"gone")

    async def _read_text(self, path: str) -> str | None:
        try:
            return await asyncio.to_thread(Path(path).read_text)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _job_dir_path(self, prefix: str) -> str:
        return os.path.join(self.workdir, f"{prefix}{secrets.token_hex(6)}")

    async def _new_job_dir(self, path: str, subdirs: Sequence[str] = ()) -> None:
        # a few mkdir calls on local disk: done here, a thread hop would cost more
        _make_job_dir(path, subdirs)

    async def _identify(self, proc: _Process) -> dict[str, object]:
        if proc.pid is None:
            return {}
        # no start time read from /proc here: the job's shell writes its pid and start time
        # to .pdt-pid before the command runs, and recovery (and stopping the job) go by
        # that file (reading /proc/PID/stat of a process that is starting up waits for its
        # exec: a quarter of a millisecond per job)
        return {
            "boot_id": boot_id(),
            "pid_namespace": pid_namespace(),
        }

    async def _is_alive(self, info: dict[str, object]) -> bool:
        if not same_pid_space(info.get("boot_id"), info.get("pid_namespace")):
            # started before a reboot (everything of it is gone), in another container, or
            # by a version that did not record where: its pid means nothing here
            log.warning(
                "host %s: the interrupted job in %s was started on another boot or in another PID "
                "namespace; its pid is not looked up here",
                self.name,
                info.get("dir"),
            )
            return False
        return await super()._is_alive(info)

    async def _makedirs(self, path: str) -> None:
        await asyncio.to_thread(os.makedirs, path, exist_ok=True)

    async def _rmtree(self, path: str) -> None:
        if not remove_small_tree(path):
            await asyncio.to_thread(shutil.rmtree, path, True)

    async def _remove_job_dir(self, path: str, work: ProcessWork | None) -> None:
        # off the event loop: on a journalling file system each unlink and rmdir is a
        # journal entry (1 ms for a job directory on a busy ext4, in which the loop would
        # start nothing); work that may be removed later goes to the background without a
        # wait (aclose waits for it), the rest in a thread waited for
        if work is None:
            await self._rmtree(path)
            return
        if work.transient:
            _REMOVER.remove(path, work)
            return
        files, dirs = job_dir_entries(work)
        # (no context copy as with asyncio.to_thread: the call reads no context variable)
        await asyncio.get_running_loop().run_in_executor(None, remove_job_dir, path, files, dirs)

    async def aclose(self) -> None:
        """Wait until the starts handed to the starting thread have ended (what a
        cancelled one made is gone then) and the job directories removed in the
        background are gone."""
        await _STARTER.drain()
        await _REMOVER.drain()

    async def _exists(self, path: str) -> bool:
        return await asyncio.to_thread(os.path.lexists, path)

    async def _upload(self, local: Path, remote: str) -> None:
        await asyncio.to_thread(_copy, local, Path(remote))

    async def _download(self, remote: str, local: Path) -> None:
        await asyncio.to_thread(_copy, Path(remote), local)

    async def _write_file(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        # a raw descriptor: the chunks come whole, a buffered file object would only copy them
        fd = os.open(path, _O_WRITE, 0o666)
        try:
            async for chunk in chunks:
                if len(chunk) <= SMALL:
                    _write_all(fd, chunk)
                else:
                    await asyncio.to_thread(_write_all, fd, chunk)
        finally:
            os.close(fd)

    async def _read_file(self, path: str) -> AsyncIterator[bytes]:
        f = open(path, "rb")  # noqa: ASYNC230, SIM115 - local disk, closed below
        try:
            if os.fstat(f.fileno()).st_size <= SMALL:
                # small: read on the spot (a file growing meanwhile is still read to its end)
                while chunk := f.read(CHUNK):
                    yield chunk
            else:
                while chunk := await asyncio.to_thread(f.read, CHUNK):
                    yield chunk
        finally:
            f.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
