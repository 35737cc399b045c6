"""Reading ``/proc/PID/stat``: the one parser of the package.

A process is identified across pid reuse by its pid together with its start time (field
22 of ``/proc/PID/stat``, clock ticks since boot). The name field (2) is in parentheses and
may itself hold spaces and parentheses, so the fields are counted from the *last* ``)``.
"""

from __future__ import annotations

import functools
import os

__all__ = ("parse_start_time", "process_start_time", "boot_id", "pid_namespace", "same_pid_space")


def parse_start_time(stat: bytes | str) -> int | None:
    """The start time in a ``/proc/PID/stat`` line, or None if the text is not one."""
    data = stat.encode() if isinstance(stat, str) else stat
    try:
        return int(data[data.rindex(b")") + 2 :].split()[19])
    except (ValueError, IndexError):
        return None


def process_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` on this machine (clock ticks since boot), or None
    if no such process is visible."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return parse_start_time(data)


@functools.cache
def boot_id() -> str | None:
    """The kernel's id of the current boot (``/proc/sys/kernel/random/boot_id``), or None.

    It changes at every boot and is the same in every container on one kernel, so pids and
    process start times (clock ticks since boot) can only be compared between records that
    carry the same boot id.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            return f.read().decode("ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


@functools.cache
def pid_namespace() -> str | None:
    """The PID namespace this process is in (e.g. ``pid:[4026531836]``), or None.

    None also when the ``/proc`` mounted here belongs to another PID namespace (a container
    that shares the host's ``/proc``): the pids this process sees there are not the pids of
    its own namespace, so it cannot judge a pid by looking at ``/proc``.
    """
    try:
        ns = os.readlink("/proc/self/ns/pid")
        if int(os.readlink("/proc/self")) != os.getpid():
            return None
    except (OSError, ValueError):
        return None
    return ns


# (computed once per process: the boot never changes under a process; a forked child may
# be the first process of a new PID namespace, so it asks again)
os.register_at_fork(after_in_child=pid_namespace.cache_clear)


def same_pid_space(boot: object, namespace: object) -> bool:
    """Whether a pid recorded with this boot id and PID namespace names a process this
    process can look up in ``/proc`` (both known and equal to this process's)."""
    mine_boot, mine_ns = boot_id(), pid_namespace()
    return mine_boot is not None and mine_ns is not None and boot == mine_boot and namespace == mine_ns
