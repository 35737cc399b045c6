"""A machine reached over SSH (asyncssh, imported only when a connection is used).

Jobs run as ``cd JOBDIR && exec setsid -w /bin/sh -c WRAPPER pdt-job COMMAND``:
``setsid`` puts the job in its own session and process group on the remote machine, so
stopping it (timeout, cancellation, a restarted scheduler) is ``kill -TERM -PGID``
over a **new** channel, then ``KILL`` after the grace period; closing a channel would not
stop a remote command. Environment variables (secrets included) are sent as ``export``
lines on the job's stdin, which the wrapper evaluates: they never appear on a remote
command line (``ps``). Files move over one SFTP client per connection.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .._deps import require
from .._procfs import parse_start_time
from ..durations import parse_duration
from ..errors import ConfigurationError, JobError, PydatataskError
from ..session import resolve
from ._shell import PID_FILE, kill_group_script, wrapper_script
from .hosts import Host, HostUnavailableError, _Process, _ProcessSpec
from .local import _open_append

__all__ = ("SSHHost", "HostUnavailableError")

log = logging.getLogger("pydatatask.executor.ssh")

# one SFTP request per read: asyncssh splits larger reads into parallel requests whose
# end-of-file errors can be left unretrieved on small files
CHUNK = 1 << 16


def _env_script(env: Mapping[str, str]) -> bytes:
    lines = [f"export {name}={shlex.quote(value)}\n" for name, value in env.items()]
    lines.append("PDT_ENV_READ=1\n")
    return "".join(lines).encode()


class _SSHProcess(_Process):
    def __init__(self, host: SSHHost, proc: Any, spec: _ProcessSpec, files: list[Any]) -> None:
        self.host = host
        self.proc = proc
        self.spec = spec
        self.files = files

    def _close_files(self) -> None:
        for f in self.files:
            f.close()

    async def wait(self) -> int:
        # on cancellation the files stay open: output may still arrive until kill() ends
        try:
            result = await self.proc.wait()
        except Exception as exc:
            self._close_files()
            self.host._lost_dirs.add(self.spec.job_dir)
            raise self.host._lost(exc) from exc
        self._close_files()
        if result.exit_status is not None and result.exit_status >= 0:
            return int(result.exit_status)
        if result.exit_signal:
            try:
                return 128 + int(signal.Signals["SIG" + str(result.exit_signal[0])])
            except (KeyError, IndexError, TypeError):
                return 128 + 15
        self.host._lost_dirs.add(self.spec.job_dir)
        raise self.host._lost(None)

    async def kill(self, grace: float) -> None:
        try:
            if not await self.host._kill_group(self.spec.pid_path, grace):
                raise HostUnavailableError(f"host {self.host.name}: the job's process group did not stop")
        except Exception:
            self.host._lost_dirs.add(self.spec.job_dir)  # stopped on reconnection
            raise
        finally:
            self.proc.close()
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait_closed()
            except (TimeoutError, OSError):
                pass
            finally:
                self._close_files()


class SSHHost(Host):
    """Run jobs on a machine reached over SSH.

    :param connection: an ``asyncssh.SSHClientConnection``, or a session accessor /
        zero-argument callable returning one (typically a ``@session.resource`` that does
        ``async with asyncssh.connect(...) as conn: yield conn``). Keep known-hosts
        verification on (asyncssh's default); ``known_hosts=None`` is for tests only.
    :param connect: instead of ``connection``, an async factory (``lambda:
        asyncssh.connect(...)``) the host calls to (re)connect: after a connection drops,
        the host is marked down for ``retry_interval`` and reconnects on next use. With a
        plain ``connection`` the host cannot reconnect by itself.
    :param name: shown in records (default: ``"ssh:<peer host>:<port>"`` or ``"ssh"``).
    :param cpus: CPU capacity for the quota.
    :param memory: memory capacity for the quota (bytes, or a string such as ``"8Gi"``).
    :param workdir: remote directory holding the job directories (created if missing).
    :param launch_rate: at most this many launches per second.
    :param max_jobs: at most this many jobs at once (default: as many as fit).
    :param retry_interval: how long a host stays marked down after a failure.
    :param sftp_channels: SFTP sessions opened per connection for file transfer.
    """

    def __init__(
        self,
        connection: Any = None,
        *,
        connect: Callable[[], Awaitable[Any]] | None = None,
        name: str | None = None,
        cpus: float = 1,
        memory: str | int = "1Gi",
        workdir: str = "/tmp/pdt-jobs",
        launch_rate: float | None = None,
        max_jobs: int | None = None,
        retry_interval: float | str = "2s",
        sftp_channels: int = 4,
    ) -> None:
        if (connection is None) == (connect is None):
            raise ConfigurationError("SSHHost needs exactly one of connection= or connect=")
        if not workdir.startswith("/"):
            raise ConfigurationError(f"SSHHost workdir must be an absolute path, not {workdir!r}")
        super().__init__(name or "ssh", cpus=cpus, memory=memory, launch_rate=launch_rate, max_jobs=max_jobs)
        self._connection = connection
        self._connect = connect
        self.workdir = workdir.rstrip("/") or "/"
        self.retry_interval = parse_duration(retry_interval)
        self._conn: Any = None
        self._sftp: Any = None
        self._sftp_conn: Any = None
        self._lock = asyncio.Lock()
        self._workdir_made: Any = None
        self._sftp_turn = 0
        # job directories of jobs cut off by a lost connection: their process groups are
        # killed and the directories removed as soon as the host is reachable again
        self._lost_dirs: set[str] = set()
        self._reap_lock = asyncio.Lock()
        self.sftp_channels = sftp_channels

    # ------------------------------------------------------------ connection
    def _lost(self, exc: BaseException | None) -> HostUnavailableError:
        reason = f"{type(exc).__name__}: {exc}" if exc is not None else "the connection closed"
        self.mark_down(reason, self.retry_interval)
        self._conn = None
        self._sftp = None
        return HostUnavailableError(f"host {self.name}: connection lost ({reason})")

    def _is_ssh_error(self, exc: BaseException) -> bool:
        asyncssh = require("asyncssh", "ssh")
        return isinstance(exc, (OSError, asyncssh.Error, asyncssh.ChannelOpenError, ConnectionError))

    async def connection(self) -> Any:
        """The live connection (reconnecting through ``connect`` if it dropped)."""
        require("asyncssh", "ssh")
        if self._connect is None:
            conn = resolve(self._connection)
            if conn.is_closed():
                raise self._lost(None)
            return conn
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = None
                self._sftp = None
                try:
                    self._conn = await self._connect()
                except Exception as exc:
                    if self._is_ssh_error(exc):
                        raise self._lost(exc) from exc
                    raise
                self.mark_up()
            return self._conn

    async def sftp(self) -> Any:
        """An SFTP client on the live connection, from a small pool (``sftp_channels``
        per connection, used in turn: one SFTP server process handles requests one at a
        time)."""
        conn = await self.connection()
        async with self._lock:
            if self._sftp is None or self._sftp_conn is not conn:
                self._sftp = []
                self._sftp_conn = conn
            if len(self._sftp) < self.sftp_channels:
                try:
                    client = await conn.start_sftp_client()
                except Exception as exc:
                    if self._is_ssh_error(exc):
                        raise self._lost(exc) from exc
                    raise
                self._sftp.append(client)
                return client
            self._sftp_turn = (self._sftp_turn + 1) % len(self._sftp)
            return self._sftp[self._sftp_turn]

    async def _call(self, what: Awaitable[Any]) -> Any:
        try:
            return await what
        except FileNotFoundError:
            raise
        except Exception as exc:
            asyncssh = require("asyncssh", "ssh")
            if isinstance(exc, asyncssh.SFTPNoSuchFile):
                raise FileNotFoundError(str(exc)) from exc
            if isinstance(exc, (asyncssh.SFTPConnectionLost, asyncssh.SFTPNoConnection)):
                # the connection went while the request was under way (not a refusal)
                raise self._lost(exc) from exc
            if isinstance(exc, asyncssh.SFTPError):
                raise
            if self._is_ssh_error(exc):
                raise self._lost(exc) from exc
            raise

    async def run_shell(self, script: str) -> tuple[int, str]:
        """Run a short shell program on the host; (exit status, stdout)."""
        conn = await self.connection()
        result = await self._call(conn.run(f"/bin/sh -c {shlex.quote(script)}", check=False))
        out = result.stdout if isinstance(result.stdout, str) else (result.stdout or b"").decode()
        return (result.exit_status if result.exit_status is not None else -1), out

    async def aclose(self) -> None:
        """Close the connection this host opened through ``connect`` (not a given one).

        Jobs cut off by an outage whose directories could not be removed then are reaped
        first (best effort: a host still unreachable is logged and left; nothing else knows
        those directories, so this is their last chance in this process)."""
        if self._lost_dirs:
            try:
                async with asyncio.timeout(30):
                    await self.reap_lost_jobs()
            except (OSError, TimeoutError, PydatataskError) as exc:
                log.warning(
                    "host %s: could not remove %d job director(ies) cut off by an outage: %s",
                    self.name,
                    len(self._lost_dirs),
                    exc,
                )
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    # ------------------------------------------------------------ processes
    async def _spawn(self, spec: _ProcessSpec) -> _Process:
        conn = await self.connection()
        wrapper = wrapper_script(spec.job_dir, spec.script, read_env=True)
        command = (
            f"cd {shlex.quote(spec.cwd)} && exec setsid -w /bin/sh -c {shlex.quote(wrapper)} "
            f"pdt-job {shlex.quote(spec.command)}"
        )
        files: list[Any] = []
        try:
            out = await _open_append(spec.stdout)
            if out is not None:
                files.append(out)
            err = await _open_append(spec.stderr)
            if err is not None:
                files.append(err)
            asyncssh = require("asyncssh", "ssh")
            proc = await self._call(
                conn.create_process(
                    command,
                    encoding=None,
                    stdout=out if out is not None else asyncssh.DEVNULL,
                    stderr=err
                    if err is not None
                    else (asyncssh.STDOUT if out is not None else asyncssh.DEVNULL),
                )
            )
        except BaseException:
            for f in files:
                f.close()
            raise
        running = _SSHProcess(self, proc, spec, files)
        try:
            proc.stdin.write(_env_script(spec.env))
            proc.stdin.write_eof()
        except Exception as exc:
            proc.close()
            raise self._lost(exc) from exc
        return running

    async def _process_start_time(self, pid: int) -> int | None:
        status, out = await self.run_shell(f"cat /proc/{int(pid)}/stat 2>/dev/null")
        data = out.strip()
        if status != 0 or not data:
            return None
        return parse_start_time(data)

    async def _kill_group(self, pid_file: str, grace: float) -> bool:
        _, out = await self.run_shell(kill_group_script(pid_file, grace))
        return out.strip().endswith("gone")

    async def _read_text(self, path: str) -> str | None:
        status, out = await self.run_shell(f"cat {shlex.quote(path)} 2>/dev/null")
        return out if status == 0 else None

    # ------------------------------------------------------------ files
    async def reap_lost_jobs(self) -> None:
        """Kill what is left of jobs cut off by a lost connection and remove their job
        directories (called before a new job starts here; a no-op when there are none)."""
        async with self._reap_lock:
            dirs = sorted(self._lost_dirs)
            if not dirs:
                return
            script = "".join(
                f"( {kill_group_script(f'{d}/{PID_FILE}', 0.5, wait_for_pid=0)}) >/dev/null 2>&1\n"
                for d in dirs
            )
            script += "rm -rf -- " + " ".join(shlex.quote(d) for d in dirs) + "\n"
            await self.run_shell(script)
            self._lost_dirs.difference_update(dirs)
            log.info(
                "host %s: stopped and removed %d job(s) cut off by a lost connection", self.name, len(dirs)
            )

    def _job_dir_path(self, prefix: str) -> str:
        return f"{self.workdir}/{prefix}{secrets.token_hex(6)}"

    async def _new_job_dir(self, path: str, subdirs: Sequence[str] = ()) -> None:
        if self._lost_dirs:
            await self.reap_lost_jobs()
        sftp = await self.sftp()
        asyncssh = require("asyncssh", "ssh")
        try:
            if self._workdir_made is not self._sftp_conn:
                await self._call(sftp.makedirs(self.workdir, exist_ok=True))
                self._workdir_made = self._sftp_conn
            attrs = asyncssh.SFTPAttrs(permissions=0o700)
            await self._call(sftp.mkdir(path, attrs))
            # one level at a time, each level's directories in parallel (pipelined)
            todo = sorted(set(subdirs))
            levels: dict[int, set[str]] = {}
            for sub in todo:
                parts = sub.strip("/").split("/")
                for depth in range(1, len(parts) + 1):
                    levels.setdefault(depth, set()).add("/".join(parts[:depth]))
            for depth in sorted(levels):
                await asyncio.gather(
                    *(self._call(sftp.mkdir(f"{path}/{d}", attrs)) for d in sorted(levels[depth]))
                )
        except (asyncssh.SFTPError, FileNotFoundError) as exc:
            raise JobError(
                f"host {self.name}: cannot create a job directory in {self.workdir} ({exc}); "
                "check that the SSH user may write there, or pass SSHHost(workdir=...)"
            ) from exc

    async def _makedirs(self, path: str) -> None:
        sftp = await self.sftp()
        await self._call(sftp.makedirs(path, exist_ok=True))

    async def _rmtree(self, path: str) -> None:
        # one `rm -rf` instead of an SFTP walk (dozens of sequential requests)
        try:
            await self.run_shell(f"rm -rf -- {shlex.quote(path)}")
        except HostUnavailableError:
            if path.startswith(self.workdir + "/"):
                self._lost_dirs.add(path)  # removed on reconnection
            raise

    async def _exists(self, path: str) -> bool:
        sftp = await self.sftp()
        return bool(await self._call(sftp.exists(path)))

    async def _upload(self, local: Path, remote: str) -> None:
        sftp = await self.sftp()
        is_dir = await asyncio.to_thread(local.is_dir)
        await self._call(sftp.put(os.fspath(local), remote, recurse=is_dir))

    async def _download(self, remote: str, local: Path) -> None:
        sftp = await self.sftp()
        if not await self._call(sftp.isdir(remote)):
            await self._call(sftp.get(remote, os.fspath(local)))
            return
        await asyncio.to_thread(local.mkdir, parents=True, exist_ok=True)
        for name in await self._call(sftp.listdir(remote)):
            if name not in (".", ".."):
                await self._call(sftp.get(f"{remote}/{name}", os.fspath(local / name), recurse=True))

    async def _write_file(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        sftp = await self.sftp()
        f = await self._call(sftp.open(path, "wb", encoding=None))
        try:
            async for chunk in chunks:
                await self._call(f.write(chunk))
        finally:
            await f.close()

    async def _read_file(self, path: str) -> AsyncIterator[bytes]:
        sftp = await self.sftp()
        f = await self._call(sftp.open(path, "rb", encoding=None, block_size=CHUNK))
        try:
            while chunk := await self._call(f.read(CHUNK)):
                yield chunk
        finally:
            await f.close()
