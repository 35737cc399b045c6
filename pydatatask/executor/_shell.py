"""The shell programs every host job runs through (private to the host executors).

:func:`wrapper_script` records ``<pid> <start time>`` in ``<job dir>/.pdt-pid`` before the
command starts; :func:`kill_group_script` stops a job's process group from that file.
Both use only shell builtins besides the command itself.

The job directory is also the command's working directory, so the control files have
hidden names a command does not write by accident (one directory per job: every
directory made costs a ``mkdir``, an ``opendir`` and a ``rmdir``).
"""

from __future__ import annotations

import shlex

__all__ = ("EXIT_FILE", "PID_FILE", "SCRIPT_FILE", "kill_group_script", "wrapper_script")

#: ``<pid> <start time>`` of the job's process-group leader, written before the command runs
PID_FILE = ".pdt-pid"
#: the command's exit status, written when it ends (hosts whose wrapper outlives it: SSH)
EXIT_FILE = ".pdt-exit"
#: the rendered script of a ``script=`` task
SCRIPT_FILE = ".pdt-script.sh"


def wrapper_script(
    job_dir: str,
    script: bool,
    read_env: bool,
    in_place: bool = False,
    cwd: str | None = None,
    pid_file: bool = True,
) -> str:
    """The shell program every job runs as ``sh -c WRAPPER pdt-job COMMAND_OR_SCRIPT_PATH``.

    It optionally reads ``export`` lines from stdin (secrets over SSH), writes
    :data:`PID_FILE` (``$$`` and its start time), runs the command with ``/bin/sh -c`` (or the
    script file with ``/bin/sh``), then writes :data:`EXIT_FILE` and exits with the command's
    status. Only shell builtins besides the command itself: no extra processes.

    With ``in_place`` (for a parent that waits for the wrapper itself and gives it
    ``/dev/null`` as stdin) no exit file is written: a command is evaluated by the wrapper
    shell itself (``exit``, ``exec`` and traps behave as under ``/bin/sh -c``), a script
    replaces it (``exec /bin/sh``); the pid and start time in :data:`PID_FILE` stay those of
    the job's process. With ``cwd`` it changes to that directory first (exit status 126 if it
    cannot), for a parent that starts it without a working directory of its own
    (``posix_spawn``). Without ``pid_file`` (``in_place`` only: work nothing would look for
    after a crash of its parent) no :data:`PID_FILE` is written: the start time costs the
    shell a ``read`` system call per byte of ``/proc/$$/stat``, three hundred of them.
    """
    pid_file_path = shlex.quote(f"{job_dir}/{PID_FILE}")
    exit_file = shlex.quote(f"{job_dir}/{EXIT_FILE}")
    if in_place:
        lines = [f"cd -- {shlex.quote(cwd)} || exit 126"] if cwd is not None else []
        if pid_file:
            lines += [
                "read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ st _ < /proc/$$/stat 2>/dev/null || st=",
                f'printf \'%s %s\\n\' "$$" "$st" > {pid_file_path}',
                "unset st",
            ]
        lines.append('exec /bin/sh "$1"' if script else 'eval "set --; $1"')
        return "\n".join(lines) + "\n"
    run = '/bin/sh "$1"' if script else '/bin/sh -c "$1"'
    lines = []
    if read_env:
        # the env script ends with PDT_ENV_READ=1: a cut-off stdin runs nothing
        lines.append('eval "$(cat)" && [ "${PDT_ENV_READ:-}" = 1 ] || exit 125')
    lines += [
        "exec </dev/null",
        # field 22 of /proc/PID/stat is the start time (the name field of sh has no space)
        "read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ st _ < /proc/$$/stat 2>/dev/null || st=",
        f'printf \'%s %s\\n\' "$$" "$st" > {pid_file_path}',
        run,
        "ec=$?",
        f"printf '%s\\n' \"$ec\" > {exit_file}",
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
