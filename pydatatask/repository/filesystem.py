"""Local filesystem repositories: one file per key, or one directory per key.

Writes go to a hidden temporary name in the same directory and are renamed into place
(``os.replace``) only when the writer finishes without an exception, so a crashed or
failed writer never leaves a file that looks finished. Hidden names (starting with ``.``)
are never keys, so stale temporaries from a killed process are never listed.

Durability (``fsync=True``, the default): a rename survives a killed process, but after a
power loss the kernel may have written the new name before the file's data (the file is
then empty or short) or neither, even though the call returned. So a durable write
syncs the file (``fsync``) before the rename and the directory after it (and each
directory it created, in its parent); a durable exclusive create syncs the file before
the hard link and the directory after it; a durable delete syncs the directory after the
unlink. When
the call returns, the change is on the disk. ``fsync`` blocks for as long as the disk
takes (milliseconds), so durable writes run in a thread, never on the event loop (several
in flight share the filesystem's journal commits). On a filesystem held in memory
(tmpfs, ramfs) nothing survives a power loss anyway: there ``fsync`` is skipped and small
files stay on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

from ..errors import ConfigurationError, KeyNotFoundError, RepositoryError
from ..keys import validate_key
from ._localfs import fsync_dir, fsync_tree, make_dirs, on_memory_fs, sweep, tmp_name
from .base import BlobReader, BlobRepository, BlobWriter, Repository
from .journal import current_journal

__all__ = ("FileRepository", "DirectoryRepository")

log = logging.getLogger("pydatatask.repository")


#: whole-file reads and writes up to this size run on the event loop: on a local disk a
#: thread hop (and the wait for the GIL that follows it) costs more than the system calls
#: themselves, which is also why ``contains`` and ``delete`` never leave the loop
SMALL_FILE = 1 << 16


def _read_small_or_none(path: Path) -> bytes | None:
    """The content of ``path`` if it is at most :data:`SMALL_FILE` bytes, else None."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size > SMALL_FILE:
            return None
        return f.read()


def _check_extension(extension: str) -> str:
    if "/" in extension or "\0" in extension or extension in (".", ".."):
        raise ConfigurationError(f"invalid file extension {extension!r}")
    return extension


def _scan(root: Path, want_dirs: bool, extension: str) -> list[str]:
    names: list[str] = []
    try:
        it = os.scandir(root)
    except FileNotFoundError:
        return names
    n = len(extension)
    with it:
        for entry in it:
            name = entry.name
            if name.startswith("."):
                continue  # hidden files and our own temporaries are never keys
            try:
                if want_dirs:
                    ok = entry.is_dir(follow_symlinks=False)
                else:
                    ok = entry.is_file()
            except OSError:
                continue
            if not ok:
                continue
            if n:
                if not name.endswith(extension) or len(name) == n:
                    continue
                name = name[:-n]
            names.append(name)
    return names


class _FileReader(BlobReader):
    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    async def read(self, n: int = -1) -> bytes:
        if 0 <= n <= 65536:
            return self._f.read(n)  # small reads of local files do not block noticeably
        return await asyncio.to_thread(self._f.read, n)

    async def aclose(self) -> None:
        self._f.close()


class _FileWriter(BlobWriter):
    def __init__(self, final: Path, fsync: bool) -> None:
        self._final = final
        self._tmp = final.with_name(tmp_name(final.name))
        self._fsync = fsync
        self._f: IO[bytes] | None = None

    def _open(self) -> None:
        try:
            self._f = open(self._tmp, "xb")  # noqa: SIM115 - closed in commit/abort
        except FileNotFoundError:
            make_dirs(self._final.parent, self._fsync)
            self._f = open(self._tmp, "xb")  # noqa: SIM115

    async def write(self, data: bytes) -> int:
        assert self._f is not None
        if len(data) <= 65536:
            return self._f.write(data)
        return await asyncio.to_thread(self._f.write, data)

    def _finish(self) -> None:
        assert self._f is not None
        self._f.flush()
        if self._fsync:
            os.fsync(self._f.fileno())  # the data first: a durable name must not be empty
        self._f.close()
        os.replace(self._tmp, self._final)
        if self._fsync:
            fsync_dir(self._final.parent)  # then the rename itself

    async def commit(self) -> None:
        await asyncio.to_thread(self._finish)

    async def abort(self) -> None:
        if self._f is not None:
            self._f.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


class _LocalRoot(Repository):
    """``validate`` for repositories rooted in a local directory."""

    root: Path
    fsync: bool
    _memory_fs: bool | None = None

    def _durable(self) -> bool:
        """Whether changes are fsynced: ``fsync`` was asked for and ``root`` is on a disk
        (on tmpfs or ramfs nothing survives a power loss, so fsync would only cost)."""
        if not self.fsync:
            return False
        if self._memory_fs is None:
            self._memory_fs = on_memory_fs(self.root)
        return not self._memory_fs

    async def validate(self, create: bool = False) -> None:
        """Check the root directory (create it with ``create``) and sweep temporaries left
        by writers that were killed (their pid, part of the name, no longer runs)."""
        if self.root.is_dir():
            removed = await asyncio.to_thread(sweep, self.root)
            if removed:
                log.info("%s: removed %d temporary file(s) of killed writers", self.describe(), len(removed))
            return
        if self.root.exists():
            raise RepositoryError(f"{self.describe()}: {self.root} exists and is not a directory")
        if create:
            await asyncio.to_thread(make_dirs, self.root, self._durable())


class FileRepository(_LocalRoot, BlobRepository):
    """One file per key under ``root``, named ``key + extension``.

    :param root: the directory; created on first write (or by ``validate(create=True)``).
    :param extension: appended to every key, e.g. ``".txt"``; files without it are ignored.
    :param fsync: make every write, exclusive create, conditional replace and delete
        durable before it returns (``fsync`` of the file and of its directory), so that it
        survives a power loss or a kernel crash, not only a killed process. The default.
        With ``fsync=False`` changes survive a killed process (renames are atomic) but the
        last seconds of them may be lost or, for new files, come back empty after a power
        loss; use it for outputs that are cheap to recompute, on a tmpfs, or where the
        disk is thrown away with the machine.
    """

    def __init__(self, root: str | os.PathLike[str], extension: str = "", *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.extension = _check_extension(extension)
        self.fsync = fsync

    def describe(self) -> str:
        return f"files at {self.root}" + (f" (*{self.extension})" if self.extension else "")

    def path(self, key: str) -> Path:
        """The path the value of ``key`` lives at (whether or not it exists)."""
        return self.root / (validate_key(key) + self.extension)

    def _path(self, key: str) -> Path:
        return self.root / (key + self.extension)

    async def _list(self) -> Iterable[str]:
        return await asyncio.to_thread(_scan, self.root, False, self.extension)

    async def _contains(self, key: str) -> bool:
        return self._path(key).is_file()

    def _delete_sync(self, path: Path) -> bool:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return False
        except IsADirectoryError as exc:
            raise RepositoryError(f"{self.describe()}: {path} is a directory") from exc
        return True

    def _delete_durably(self, path: Path) -> None:
        if self._delete_sync(path):
            fsync_dir(path.parent)

    async def _delete(self, key: str) -> None:
        path = self._path(key)
        if self._durable():
            await asyncio.to_thread(self._delete_durably, path)
        else:
            self._delete_sync(path)

    async def _open_reader(self, key: str) -> BlobReader:
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
            return _FileReader(f)
        except (FileNotFoundError, IsADirectoryError):
            raise KeyNotFoundError(key, self.describe()) from None

    async def _open_writer(self, key: str) -> BlobWriter:
        writer = _FileWriter(self._path(key), self._durable())
        await asyncio.to_thread(writer._open)
        return writer

    # Whole-value fast paths: one thread hop per operation instead of one per step.
    async def read_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            data = _read_small_or_none(path)  # noqa: ASYNC230 - small local file, see SMALL_FILE
            if data is None:
                data = await asyncio.to_thread(path.read_bytes)
            return data
        except (FileNotFoundError, IsADirectoryError):
            raise KeyNotFoundError(key, self.describe()) from None

    def _write_sync(self, path: Path, data: bytes) -> None:
        writer = _FileWriter(path, self._durable())
        writer._open()
        try:
            assert writer._f is not None
            writer._f.write(data)
            writer._finish()
        except BaseException:
            if writer._f is not None:
                writer._f.close()
            try:
                os.unlink(writer._tmp)
            except FileNotFoundError:
                pass
            raise

    async def write_bytes(self, key: str, data: bytes) -> None:
        path, data = self.path(key), bytes(data)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        if len(data) <= SMALL_FILE and not self._durable():
            self._write_sync(path, data)
        else:
            await asyncio.to_thread(self._write_sync, path, data)

    def _create_sync(self, path: Path, data: bytes) -> bool:
        tmp = path.with_name(tmp_name(path.name))
        try:
            f = open(tmp, "xb")  # noqa: SIM115
        except FileNotFoundError:
            make_dirs(path.parent, self._durable())
            f = open(tmp, "xb")  # noqa: SIM115
        try:
            with f:
                f.write(data)
                if self._durable():
                    f.flush()
                    os.fsync(f.fileno())
            os.link(tmp, path)  # atomic, fails if the name exists
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if self._durable():
            fsync_dir(path.parent)  # the new name (and the temporary's removal)
        return True

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        path, data = self._path(key), bytes(data)
        if len(data) <= SMALL_FILE and not self._durable():
            return self._create_sync(path, data)
        return await asyncio.to_thread(self._create_sync, path, data)

    def _replace_if_sync(self, path: Path, expected: bytes, data: bytes) -> bool:
        # Conditional replacements are serialised by an advisory lock on the directory's
        # lock file; the final rename is atomic, so plain readers and exclusive creators
        # never see the name missing.
        import fcntl

        make_dirs(self.root, self._durable())
        with open(self.root / ".pdt-lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    if path.read_bytes() != expected:
                        return False
                except FileNotFoundError:
                    return False
                self._write_sync(path, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        return await asyncio.to_thread(self._replace_if_sync, self._path(key), expected, data)


class DirectoryRepository(_LocalRoot, Repository):
    """One directory per key under ``root`` (for jobs that produce many files).

    Write a key's directory atomically with :meth:`open_dir`: the job fills a hidden
    temporary directory, which is renamed into place only if the block succeeds.

    :param fsync: make :meth:`open_dir` and deletes durable before they return: every file
        and directory of the tree is fsynced before the rename, and the parent directory
        after it (the default; see :class:`FileRepository`). A directory made with
        :meth:`mkdir` and filled in place is never made durable by the repository.
    """

    def __init__(self, root: str | os.PathLike[str], extension: str = "", *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.extension = _check_extension(extension)
        self.fsync = fsync

    def describe(self) -> str:
        return f"directories at {self.root}"

    def path(self, key: str) -> Path:
        """The directory of ``key`` (whether or not it exists)."""
        return self.root / (validate_key(key) + self.extension)

    async def _list(self) -> Iterable[str]:
        return await asyncio.to_thread(_scan, self.root, True, self.extension)

    async def _contains(self, key: str) -> bool:
        p = self.root / (key + self.extension)
        return p.is_dir() and not p.is_symlink()

    def _delete_sync(self, path: Path) -> None:
        trash = path.with_name(tmp_name(path.name))
        try:
            os.rename(path, trash)  # disappears at once, then is removed
        except FileNotFoundError:
            return
        if self._durable():
            fsync_dir(path.parent)  # gone for good: what is left is a hidden temporary
        shutil.rmtree(trash, ignore_errors=True)

    async def _delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete_sync, self.root / (key + self.extension))

    @asynccontextmanager
    async def open_dir(self, key: str) -> AsyncIterator[Path]:
        """Yield a fresh temporary directory that becomes the value of ``key`` on success."""
        final = self.path(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        tmp = final.with_name(tmp_name(final.name))
        await asyncio.to_thread(make_dirs, tmp, self._durable())
        try:
            yield tmp
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        await asyncio.to_thread(self._install, tmp, final)

    def _install(self, tmp: Path, final: Path) -> None:
        if self._durable():
            fsync_tree(tmp)
        old = final.with_name(tmp_name(final.name))
        try:
            os.rename(final, old)
            replaced = True
        except FileNotFoundError:
            replaced = False
        os.rename(tmp, final)
        if self._durable():
            fsync_dir(final.parent)
        if replaced:
            shutil.rmtree(old, ignore_errors=True)

    async def mkdir(self, key: str) -> Path:
        """Create an empty directory for ``key`` (no error if it exists) and return it."""
        path = self.path(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        return path
