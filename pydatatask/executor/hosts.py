"""Hosts: where a process job runs, how much it may hold, and how files get there.

A :class:`Host` has a ``name``, a CPU and memory capacity (the quota that
:class:`~pydatatask.task.ProcessTask` reserves from per job), an optional launch rate,
and knows how to

* start a job's shell command in its own process group (:meth:`Host.start`), streaming
  its stdout/stderr into local files, and stop the whole group (SIGTERM, then SIGKILL
  after a grace period);
* move files: :meth:`Host.upload` / :meth:`Host.download` (local path <-> host path),
  :meth:`Host.write_file` / :meth:`Host.read_file` (streams of chunks), :meth:`Host.makedirs`,
  :meth:`Host.rmtree`;
* tell whether a process it started earlier (by pid and start time) still runs, and kill
  its group, so a restarted scheduler can clean up after a crashed one.

Every job runs through the same small shell wrapper (:func:`wrapper_script`), which
records ``<pid> <start time>`` in ``<job dir>/ctl/pid`` before the command starts. On
SSH hosts it stays the command's parent and also writes the exit status to
``<job dir>/ctl/exit`` (the connection may be gone when the command ends); on the local
host, whose scheduler is the parent, the command replaces the wrapper in place
(``eval`` of a command, ``exec`` of a script): no second process per job.
"""

from __future__ import annotations

import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..durations import parse_duration
from ..errors import ConfigurationError, JobError
from ..quantities import format_memory, parse_memory

__all__ = (
    "Host",
    "HostUnavailableError",
    "RunningProcess",
    "ProcessSpec",
    "parse_memory",
    "format_memory",
    "wrapper_script",
    "kill_group_script",
)


def wrapper_script(ctl_dir: str, script: bool, read_env: bool, in_place: bool = False) -> str:
    """The shell program every job runs as ``sh -c WRAPPER pdt-job COMMAND_OR_SCRIPT_PATH``.

    It optionally reads ``export`` lines from stdin (secrets over SSH), writes
    ``ctl/pid`` (``$$`` and its start time), runs the command with ``/bin/sh -c`` (or the
    script file with ``/bin/sh``), then writes ``ctl/exit`` and exits with the command's
    status. Only shell builtins besides the command itself: no extra processes.

    With ``in_place`` (for a parent that waits for the wrapper itself) no exit file is
    written: a command is evaluated by the wrapper shell itself (``exit``, ``exec`` and
    traps behave as under ``/bin/sh -c``), a script replaces it (``exec /bin/sh``); the
    pid and start time in ``ctl/pid`` stay those of the job's process.
    """
    ctl = shlex.quote(ctl_dir)
    if in_place:
        run = 'exec /bin/sh "$1"' if script else 'unset st; eval "set --; $1"'
        return (
            "\n".join(
                [
                    "exec </dev/null",
                    "read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ st _ < /proc/$$/stat 2>/dev/null || st=",
                    f'printf \'%s %s\\n\' "$$" "$st" > {ctl}/pid',
                    run,
                ]
            )
            + "\n"
        )
    run = '/bin/sh "$1"' if script else '/bin/sh -c "$1"'
    lines = []
    if read_env:
        # the env script ends with PDT_ENV_READ=1: a cut-off stdin runs nothing
        lines.append('eval "$(cat)" && [ "${PDT_ENV_READ:-}" = 1 ] || exit 125')
    lines += [
        "exec </dev/null",
        # field 22 of /proc/PID/stat is the start time (the name field of sh has no space)
        "read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ st _ < /proc/$$/stat 2>/dev/null || st=",
        f'printf \'%s %s\\n\' "$$" "$st" > {ctl}/pid',
        run,
        "ec=$?",
        f"printf '%s\\n' \"$ec\" > {ctl}/exit",
        'exit "$ec"',
    ]
    return "\n".join(lines) + "\n"


def kill_group_script(pid_file: str, grace: float, wait_for_pid: float = 3.0) -> str:
    """A shell program that stops the process group whose leader's pid is in
    ``pid_file``: SIGTERM, up to ``grace`` seconds for it to go, then SIGKILL, and waits
    until no member is left. Prints ``gone`` when nothing (or nothing any more) runs.

    If the leader's pid now belongs to a process with another start time, the pid was
    reused, which Linux does only once no process of the old group is left: nothing is
    killed then."""
    f = shlex.quote(pid_file)
    ticks = max(1, int(grace * 10))
    wait_ticks = max(1, int(wait_for_pid * 10))
    return (
        f"i=0; while [ ! -s {f} ] && [ $i -lt {wait_ticks} ]; do sleep 0.1; i=$((i+1)); done\n"
        f"p=; st=; [ -s {f} ] && read -r p st _ < {f}\n"
        '[ -n "$p" ] || { echo gone; exit 0; }\n'
        'if [ -n "$st" ] && [ -r "/proc/$p/stat" ]; then\n'
        '  cur=; read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ cur _ < "/proc/$p/stat" 2>/dev/null\n'
        '  [ "$cur" = "$st" ] || { echo gone; exit 0; }\n'
        "fi\n"
        'kill -TERM "-$p" 2>/dev/null || { echo gone; exit 0; }\n'
        "i=0\n"
        'while kill -0 "-$p" 2>/dev/null; do\n'
        f'  if [ $i -ge {ticks} ]; then kill -KILL "-$p" 2>/dev/null; fi\n'
        f"  if [ $i -ge {ticks + 100} ]; then echo alive; exit 1; fi\n"
        "  sleep 0.1; i=$((i+1))\n"
        "done\n"
        "echo gone\n"
    )


class HostUnavailableError(JobError):
    """A host could not be reached, or its connection dropped while a job ran (the job
    fails; the retry policy may run it again, on another host if one is free)."""


@dataclass
class ProcessSpec:
    """What to start: ``command`` (shell text, or a script path if ``script``) run by the
    wrapper with cwd ``cwd``; ``env`` added to the environment (never on a command line);
    stdout to the local file ``stdout``, stderr to ``stderr`` (or into stdout if None)."""

    command: str
    job_dir: str
    cwd: str
    env: dict[str, str] = field(default_factory=dict)
    script: bool = False
    stdout: Path | None = None
    stderr: Path | None = None

    @property
    def ctl_dir(self) -> str:
        """Control files of the wrapper (pid, exit)."""
        return f"{self.job_dir}/ctl"


class RunningProcess(ABC):
    """A started job process (the leader of its own process group)."""

    #: pid of the group leader, if known yet
    pid: int | None = None

    @abstractmethod
    async def wait(self) -> int:
        """Wait for the process to end; return its exit status (128+N for signal N)."""

    @abstractmethod
    async def kill(self, grace: float) -> None:
        """SIGTERM the whole process group, SIGKILL after ``grace`` seconds, and wait
        until no member of the group is left."""


class Host(ABC):
    """Somewhere jobs run. Capacity is shared by every task that uses the same object.

    :param name: shown in job records and logs.
    :param cpus: CPU capacity (jobs reserve their task's ``cpu``).
    :param memory: memory capacity (``"8Gi"``, bytes, ...).
    :param launch_rate: at most this many job launches per second on this host.
    """

    #: whether paths of the host are paths of the scheduler's machine
    is_local = False

    def __init__(
        self,
        name: str,
        *,
        cpus: float = 1,
        memory: str | int = "1Gi",
        launch_rate: float | None = None,
    ) -> None:
        if cpus <= 0:
            raise ConfigurationError(f"host {name!r}: cpus must be positive, not {cpus!r}")
        if launch_rate is not None and launch_rate <= 0:
            raise ConfigurationError(f"host {name!r}: launch_rate must be positive jobs/second")
        self.name = name
        self.cpus = float(cpus)
        self.memory = parse_memory(memory)
        if self.memory <= 0:
            raise ConfigurationError(f"host {name!r}: memory capacity must be positive")
        self.launch_rate = launch_rate
        self.used_cpus = 0.0
        self.used_memory = 0
        self.running = 0
        self._next_launch = 0.0
        self._down_until = 0.0
        self.down_reason: str | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} cpus={self.cpus:g} memory={format_memory(self.memory)}>"

    # ------------------------------------------------------------ capacity
    def fits_at_all(self, cpu: float, memory: int) -> bool:
        """Whether a job of this size could ever run here."""
        return cpu <= self.cpus and memory <= self.memory

    def can_take(self, cpu: float, memory: int, now: float | None = None) -> bool:
        """Whether a job of this size fits now (capacity, launch rate, host up)."""
        now = time.monotonic() if now is None else now
        return (
            self.is_up(now)
            and now >= self._next_launch
            and self.used_cpus + cpu <= self.cpus + 1e-9
            and self.used_memory + memory <= self.memory
        )

    def free_share(self) -> float:
        """Free fraction of the capacity (CPU and memory averaged); higher is emptier."""
        return ((self.cpus - self.used_cpus) / self.cpus + (self.memory - self.used_memory) / self.memory) / 2

    def reserve(self, cpu: float, memory: int, now: float | None = None) -> None:
        """Take capacity for one job (and one launch from the rate budget)."""
        now = time.monotonic() if now is None else now
        self.used_cpus += cpu
        self.used_memory += memory
        self.running += 1
        if self.launch_rate:
            self._next_launch = max(now, self._next_launch) + 1.0 / self.launch_rate

    def give_back(self, cpu: float, memory: int) -> None:
        """Return what :meth:`reserve` took."""
        self.used_cpus = max(0.0, self.used_cpus - cpu)
        self.used_memory = max(0, self.used_memory - memory)
        self.running = max(0, self.running - 1)

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

    # ------------------------------------------------------------ processes
    @abstractmethod
    async def start(self, spec: ProcessSpec) -> RunningProcess:
        """Start ``spec`` in a new process group; its job directory must exist."""

    @abstractmethod
    async def process_start_time(self, pid: int) -> int | None:
        """Start time (clock ticks since boot) of ``pid`` on the host, or None if it is gone."""

    @abstractmethod
    async def kill_group(self, pid_file: str, grace: float) -> bool:
        """Stop the process group whose leader's pid is in ``pid_file`` (see
        :func:`kill_group_script`); True when nothing of it runs any more."""

    @abstractmethod
    async def read_text(self, path: str) -> str | None:
        """The content of a small file on the host, or None if it does not exist."""

    # ------------------------------------------------------------ files
    @abstractmethod
    def job_dir_path(self, prefix: str) -> str:
        """A new, unused job directory path (``<workdir>/<prefix><random>``), not created:
        a caller records it (in its claim) before :meth:`new_job_dir` creates it, so a
        scheduler killed in between leaves nothing nobody knows about."""

    @abstractmethod
    async def new_job_dir(self, prefix: str, subdirs: Sequence[str] = (), path: str | None = None) -> str:
        """Create a fresh, private (0700) job directory with ``ctl``, ``work`` and
        ``subdirs`` (relative paths) inside: ``path`` (from :meth:`job_dir_path`, which
        must not exist yet) or a new one under ``prefix``; return its path."""

    @abstractmethod
    async def makedirs(self, path: str) -> None:
        """Create ``path`` and its parents (no error if it exists)."""

    @abstractmethod
    async def rmtree(self, path: str) -> None:
        """Remove ``path`` recursively (no error if it is absent)."""

    @abstractmethod
    async def exists(self, path: str) -> bool:
        """Whether ``path`` exists on the host."""

    @abstractmethod
    async def upload(self, local: Path, remote: str) -> None:
        """Copy the local file or directory ``local`` to ``remote`` on the host."""

    @abstractmethod
    async def download(self, remote: str, local: Path) -> None:
        """Copy the file ``remote`` on the host to ``local``; for a directory, copy its
        contents into ``local`` (created if needed)."""

    @abstractmethod
    async def write_file(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """Write a file on the host from a stream of chunks."""

    @abstractmethod
    def read_file(self, path: str) -> AsyncIterator[bytes]:
        """Stream the content of a file on the host (raises FileNotFoundError if absent)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections the host opened itself."""
