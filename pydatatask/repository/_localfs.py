"""File-system mechanics under the local repositories (:mod:`pydatatask.repository.filesystem`).

Temporary names that carry their writer's pid, and the sweep that removes the ones whose
writer is gone (killed, or from before the last boot); ``fsync`` of directories and of the
directories a write created; and the detection of file systems held in memory (tmpfs,
ramfs), where ``fsync`` buys nothing.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = (
    "TMP_NAME",
    "fsync_dir",
    "fsync_tree",
    "make_dirs",
    "on_memory_fs",
    "sweep",
    "tmp_name",
    "boot_time",
)


def tmp_name(final: str) -> str:
    # the writer's pid is in the name: a temporary whose writer is gone can be swept
    raw = final.encode("utf-8", "surrogateescape")
    if len(raw) > 200:  # the temporary of a 255-byte name must fit in 255 bytes too
        final = raw[:200].decode("utf-8", "ignore")
    return f".{final}.tmp-{os.getpid()}-{secrets.token_hex(6)}"


TMP_NAME = re.compile(r"\..+\.tmp-(\d+)-[0-9a-f]+")


def _fsync_dir_now(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _DirSyncs:
    """Group commit of directory fsyncs: one ``fsync`` serves every caller that asked
    for the same directory before it started.

    A caller asks after its change (a rename, a link, an unlink) is done, so an fsync
    that *starts* after the request covers it. While one fsync of a directory runs, the
    requests that arrive for it wait; when it ends, one of them runs a single fsync for
    all of them (it started after every one of their changes). Concurrent jobs that
    write into the same directory (outputs, records, claims) then share the syncs of
    that directory instead of each paying its own, and every caller still returns only
    once its change is on the disk. A failed fsync raises in the caller that ran it;
    the others it would have served run their own.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        # directory -> [requests made, requests known durable, running, callers inside]
        self._state: dict[str, list[Any]] = {}

    def sync(self, path: str | Path) -> None:
        key = os.fspath(path)
        cond = self._cond
        with cond:
            st = self._state.get(key)
            if st is None:
                st = self._state[key] = [0, 0, False, 0]
            st[0] += 1
            st[3] += 1
            mine = st[0]
            try:
                while st[1] < mine:
                    if st[2]:
                        cond.wait()
                        continue
                    st[2], target = True, st[0]
                    cond.release()
                    try:
                        _fsync_dir_now(key)
                    finally:
                        cond.acquire()
                        st[2] = False
                        cond.notify_all()
                    st[1] = max(st[1], target)
            finally:
                st[3] -= 1
                if st[3] == 0:
                    del self._state[key]


_dir_syncs = _DirSyncs()


def fsync_dir(path: str | Path) -> None:
    """Make the entries of directory ``path`` (names created, renamed or removed) durable.

    Safe to call from several threads at once: concurrent calls for one directory share
    fsyncs (:class:`_DirSyncs`), each returning once its own change is durable."""
    _dir_syncs.sync(path)


def make_dirs(path: Path, fsync: bool) -> None:
    """Create directory ``path`` and its missing parents; with ``fsync`` durably (the entry
    of each new directory is in its parent, which is fsynced in turn)."""
    missing: list[Path] = []
    p = path
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    if fsync:
        for d in missing:
            fsync_dir(d.parent)


def fsync_tree(top: Path) -> None:
    """fsync every regular file and directory under ``top`` (symlinks are left alone)."""
    for dirpath, _dirnames, filenames in os.walk(top):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.isfile(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


_MEMORY_FS = frozenset({"tmpfs", "ramfs"})


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def on_memory_fs(path: Path) -> bool:
    """Whether ``path`` (or, if it does not exist yet, its nearest existing parent) is on a
    filesystem held in memory, according to ``/proc/self/mountinfo`` (False if unknown)."""
    p = path.absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    real = os.path.realpath(p)
    best, fstype = -1, ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                fields, rest = left.split(), right.split()
                if len(fields) < 5 or not rest:
                    continue
                point = _unescape_mount(fields[4])
                inside = real == point or real.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= best:  # the last of equal mounts is the one on top
                    best, fstype = len(point), rest[0]
    except OSError:
        return False
    return fstype in _MEMORY_FS


def boot_time() -> float:
    """When this machine booted (epoch seconds), or 0 if unknown."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(root: Path, descend: Callable[[os.DirEntry[str]], bool] | None = None) -> list[str]:
    """Remove temporaries in ``root`` left by writers that no longer run (killed ones, or
    ones from before the last boot, whose pid may name a new process now), and in the
    directories under it that ``descend`` accepts (non-hidden, non-link ones only)."""
    removed: list[str] = []
    booted = boot_time()
    stack = [os.fspath(root)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if descend is not None and not entry.name.startswith("."):
                try:
                    if entry.is_dir(follow_symlinks=False) and descend(entry):
                        stack.append(entry.path)
                except OSError:
                    pass
            name = _sweep_one(entry, booted)
            if name is not None:
                removed.append(os.path.relpath(entry.path, root))
    return removed


def _sweep_one(entry: os.DirEntry[str], booted: float) -> str | None:
    """Remove ``entry`` if it is a temporary whose writer is gone; return its name then."""
    m = TMP_NAME.fullmatch(entry.name)
    if m is None:
        return None
    try:
        before_boot = entry.stat(follow_symlinks=False).st_mtime < booted
    except FileNotFoundError:
        return None
    if not before_boot and _pid_alive(int(m.group(1))):
        return None
    if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
    else:
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            return None
    return entry.name
