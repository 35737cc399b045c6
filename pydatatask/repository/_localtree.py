"""Nested keys on a local file system: the recursive listing (with each value's version,
from the same ``scandir`` walk), the rule for a path segment, the prefix directories of
:class:`~pydatatask.repository.filesystem.DirectoryRepository`, and the removal of the
directories a delete left empty.

A key ``a/b/c`` is stored at ``root/a/b/c`` (plus the extension). Names starting with
``.`` are never keys, in any segment: they are temporaries and hidden files, and listings
do not descend into hidden directories. Symbolic links to directories are not followed
(a listing never leaves the root); a symbolic link to a file is a key of a
``FileRepository``, as it always was.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..errors import InvalidKeyError
from ._localfs import fsync_dir

__all__ = (
    "MAX_SEGMENT_BYTES",
    "PREFIX_MARKER",
    "check_segments",
    "walk",
    "walk_flat",
    "remove_empty_parents",
    "file_version",
)

#: the longest file name on the usual file systems (ext4, XFS, btrfs, tmpfs), in bytes
MAX_SEGMENT_BYTES = 255
#: the hidden file that marks a directory of a DirectoryRepository as holding keys (a
#: prefix such as ``a`` of the key ``a/b``) rather than being the value of key ``a``
PREFIX_MARKER = ".pdt-prefix"


def check_segments(key: str, extension: str, where: str | Callable[[], str]) -> str:
    """Return ``key`` if every segment is a file name the local file system stores (at
    most 255 bytes, the last one with ``extension``) and none is hidden; else raise
    :class:`~pydatatask.errors.InvalidKeyError` naming the rule and ``where`` (the
    repository's description, or a function that makes it: called only for an error)."""
    if key.isascii() and len(key) + len(extension) <= MAX_SEGMENT_BYTES and "/." not in key:
        if key[0] != ".":
            return key  # the common case: short ASCII, nothing hidden
    if callable(where):
        where = where()
    segments = key.split("/")
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment.startswith("."):
            raise InvalidKeyError(
                key,
                f"{where} stores keys as files, and a name starting with '.' (here {segment[:40]!r}) "
                "is hidden there (temporaries): no segment of a key may start with '.'",
            )
        size = len(segment.encode("utf-8")) + (len(extension.encode("utf-8")) if i == last else 0)
        if size > MAX_SEGMENT_BYTES:
            what = "its last segment with the extension" if i == last and extension else f"segment {i + 1}"
            raise InvalidKeyError(
                key,
                f"{where} stores each segment of a key as a file name of at most {MAX_SEGMENT_BYTES} "
                f"bytes in UTF-8; {what} has {size}",
            )
    return key


def _is_prefix_dir(path: str) -> bool:
    return os.path.lexists(os.path.join(path, PREFIX_MARKER))


def file_version(st: os.stat_result) -> str:
    """A file's (or directory's) version: inode, size and mtime in nanoseconds. Every
    atomic replacement makes a new inode (the temporary is created while the old value
    still exists), so the version changes even when size and mtime tick alike."""
    return f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}"


def walk(root: Path, want_dirs: bool, extension: str, versions: bool) -> dict[str, str | None]:
    """Every key under ``root`` with its version (None unless ``versions``).

    Files (``want_dirs`` False): every non-hidden file whose name ends with
    ``extension``, in any non-hidden directory. Directories (``want_dirs`` True): every
    non-hidden directory that is not a prefix directory (see :data:`PREFIX_MARKER`) and
    ends with ``extension``; prefix directories are descended, key directories are not.
    """
    found: dict[str, str | None] = {}
    n = len(extension)
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        path, prefix = stack.pop()
        try:
            it = os.scandir(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed meanwhile (a delete of its last key)
        with it:
            for entry in it:
                name = entry.name
                if name.startswith("."):
                    continue  # hidden files and our own temporaries are never keys
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                    if want_dirs:
                        if not is_dir:
                            continue
                        if _is_prefix_dir(entry.path):
                            stack.append((entry.path, f"{prefix}{name}/"))
                            continue
                    elif is_dir:
                        stack.append((entry.path, f"{prefix}{name}/"))
                        continue
                    elif not entry.is_file():
                        continue
                    if n:
                        if not name.endswith(extension) or len(name) == n:
                            continue
                        name = name[:-n]
                    version = file_version(entry.stat()) if versions else None
                except OSError:
                    continue  # gone between the listing and the stat
                found[prefix + name] = version
    return found


def walk_flat(root: Path, extension: str, versions: bool) -> dict[str, str | None] | None:
    """:func:`walk` of the files of a root believed to have no subdirectory (checked by its
    link count just before): one pass without the stack. None when a subdirectory is met
    after all (made since): then :func:`walk` must do it."""
    found: dict[str, str | None] = {}
    n = len(extension)
    try:
        it = os.scandir(root)
    except (FileNotFoundError, NotADirectoryError):
        return found
    with it:
        for entry in it:
            name = entry.name
            if name[0] == "." or (n and (len(name) == n or not name.endswith(extension))):
                continue
            try:
                if not entry.is_file():
                    if entry.is_dir(follow_symlinks=False):
                        return None
                    continue
                found[name[:-n] if n else name] = file_version(entry.stat()) if versions else None
            except OSError:
                continue  # gone between the listing and the stat
    return found


def remove_empty_parents(root: Path, path: Path, durable: bool) -> None:
    """Remove the directories between ``path`` (excluded) and ``root`` (excluded) that a
    delete left empty, deepest first; stop at the first that is not empty.

    ``rmdir`` only ever removes an empty directory, so a concurrent writer is safe: once
    its temporary exists the directory is not empty, and a writer whose directory
    vanished before it could create its temporary creates the directory again. A prefix
    directory of a DirectoryRepository holds its marker, so it is never empty and stays.
    """
    parent = path.parent
    while parent != root and root in parent.parents:
        try:
            os.rmdir(parent)
        except OSError:
            return  # not empty (or already gone, or not ours to remove)
        if durable:
            try:
                fsync_dir(parent.parent)
            except FileNotFoundError:
                return  # removed meanwhile by another delete, which syncs its own parent
        parent = parent.parent
