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
files stay on the loop, as do the listing and the sweep of a small root without
subdirectories (see ``SMALL_DIR``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO, TypeVar

from ..errors import ConfigurationError, KeyNotFoundError, RepositoryError
from ._localfs import (
    TMP_NAME,
    _sweep_one,
    boot_time,
    fsync_dir,
    fsync_tree,
    make_dirs,
    on_memory_fs,
    sweep,
    tmp_name,
)
from ._localtree import (
    MAX_SEGMENT_BYTES,
    PREFIX_MARKER,
    check_segments,
    remove_empty_parents,
    walk,
    walk_flat,
)
from .base import BlobReader, BlobRepository, BlobWriter, Repository
from .journal import current_journal

__all__ = ("FileRepository", "DirectoryRepository")

log = logging.getLogger("pydatatask.repository")

T = TypeVar("T")


#: whole-file reads and writes up to this size run on the event loop: on a local disk a
#: thread hop (and the wait for the GIL that follows it) costs more than the system calls
#: themselves, which is also why ``contains`` and ``delete`` never leave the loop
SMALL_FILE = 1 << 16


#: a root directory on a file system held in memory (tmpfs, ramfs), without subdirectories
#: and whose entries take at most this many bytes (its ``st_size``: some 3,000 names on
#: tmpfs) is listed and swept on the event loop: a scan of it costs a few milliseconds of
#: CPU, less than the thread hop, whose two wake-ups take longest on a busy machine. Any
#: other directory (on a disk, where a scan may wait for it; nested; larger) is scanned in
#: a thread.
SMALL_DIR = 1 << 16


#: whether a device (``st_dev``) holds a file system in memory, as found once per process
_MEMORY_DEVICES: dict[int, bool] = {}


def _sweep_flat(root: Path) -> list[str]:
    """:func:`~pydatatask.repository._localfs.sweep` of a root without subdirectories
    (see ``_LocalRoot._scan_here``): only its hidden names can be temporaries."""
    removed: list[str] = []
    booted: float | None = None
    try:
        it = os.scandir(root)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    with it:
        for entry in it:
            if entry.name[0] == "." and TMP_NAME.fullmatch(entry.name):
                if booted is None:
                    booted = boot_time()
                if _sweep_one(entry, booted) is not None:
                    removed.append(entry.name)
    return removed


def _check_extension(extension: str) -> str:
    if "/" in extension or "\0" in extension or extension in (".", ".."):
        raise ConfigurationError(f"invalid file extension {extension!r}")
    return extension


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
    #: the error for a commit that met a directory where the file must be (set by the repository)
    conflict: Callable[[OSError], Exception] | None = None

    def __init__(self, final: Path, fsync: bool) -> None:
        self._final = final
        self._tmp = final.with_name(tmp_name(final.name))
        self._fsync = fsync
        self._f: IO[bytes] | None = None

    def _open(self) -> None:
        self._f = open_tmp(self._tmp, self._fsync)

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
        try:
            await asyncio.to_thread(self._finish)
        except IsADirectoryError as exc:
            if self.conflict is None:
                raise
            raise self.conflict(exc) from exc

    async def abort(self) -> None:
        if self._f is not None:
            self._f.close()
        try:
            os.unlink(self._tmp)
        except FileNotFoundError:
            pass


def open_tmp(tmp: Path, fsync: bool) -> IO[bytes]:
    """Open the new temporary ``tmp`` for writing, creating its directory (durably with
    ``fsync``) if needed. A concurrent delete may remove a directory it left empty while
    it is being made or before the temporary is in it: then the directory is made again.
    A file where a directory must be raises ``FileExistsError`` or ``NotADirectoryError``."""
    return os.fdopen(_open_tmp_fd(tmp, fsync), "wb")


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _open_tmp_fd(tmp: str | Path, fsync: bool) -> int:
    """:func:`open_tmp`, as a file descriptor (whole-value writes need no buffer object:
    fewer system calls, no ``fstat``, ``ioctl`` and ``lseek`` of a buffered open)."""
    for _ in range(100):
        try:
            return os.open(tmp, _NEW_FILE, 0o666)
        except FileNotFoundError:
            pass
        try:
            make_dirs(Path(tmp).parent, fsync)
        except (FileExistsError, FileNotFoundError):
            if _file_in_the_way(Path(tmp).parent):
                raise
    return os.open(tmp, _NEW_FILE, 0o666)  # a hundred deletes in a row: let this one say why


def _unlink_if_present(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_tmp(tmp: str, data: bytes, fsync: bool) -> None:
    """Write ``data`` to the new temporary file ``tmp`` (see :func:`open_tmp`), its data
    synced with ``fsync``; on any error the temporary is removed again."""
    fd = _open_tmp_fd(tmp, fsync)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)  # the data first: a durable name must never point at an empty file
    except BaseException:
        os.close(fd)
        _unlink_if_present(tmp)
        raise
    os.close(fd)


def _read_small_fd(path: str) -> bytes | None:
    """The content of ``path`` if it is at most :data:`SMALL_FILE` bytes, else None (one
    ``open``, two ``read`` and a ``close``)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = os.read(fd, SMALL_FILE + 1)
        if len(data) > SMALL_FILE:
            return None
        more = os.read(fd, SMALL_FILE + 1 - len(data))  # a regular file ends here; anything else may not
        while more:
            data += more
            if len(data) > SMALL_FILE:
                return None
            more = os.read(fd, SMALL_FILE + 1 - len(data))
        return data
    finally:
        os.close(fd)


def _tmp_beside(path: str) -> str:
    """A fresh temporary name in the directory of ``path``, for its new value."""
    head, sep, name = path.rpartition("/")  # our paths are "/"-joined strings (see _path)
    return f"{head}/{tmp_name(name)}" if sep else tmp_name(name)


def _fsync_dirs(dirs: list[str]) -> None:
    for d in dirs:
        fsync_dir(d)


def _chunks(items: list[T], n: int) -> list[list[T]]:
    """``items`` dealt into at most ``n`` lists of nearly equal length."""
    return [c for c in (items[i::n] for i in range(n)) if c]


#: how many threads a bulk write or create of a durable repository shares its files out
#: to: their file fsyncs wait for the disk together (the file system commits them in
#: shared journal transactions); each directory is then synced once for the whole call
BULK_THREADS = 6


def _file_in_the_way(directory: Path) -> bool:
    """Whether ``directory`` or one of its parents exists and is not a directory."""
    for p in (directory, *directory.parents):
        if p.exists() or p.is_symlink():
            return not p.is_dir()
    return False


class _LocalRoot(Repository):
    """``validate``, the key rule and conflicts of repositories rooted in a local directory."""

    extension: str

    def _check_key(self, key: str) -> str:
        if key.isascii() and len(key) + len(self.extension) <= MAX_SEGMENT_BYTES and "/." not in key:
            if key[0] != ".":
                return key  # the common case (checked in every call of every job), inline
        return check_segments(key, self.extension, self.describe)

    def _keys_pass_check(self, keys: set[str]) -> bool:
        """:meth:`_check_key`'s common case for a whole listing at once: short ASCII keys,
        no segment hidden."""
        if not keys:
            return True
        joined = "\n".join(keys)
        return (
            joined.isascii()
            and max(map(len, keys)) + len(self.extension) <= MAX_SEGMENT_BYTES
            and joined[0] != "."
            and "/." not in joined
            and "\n." not in joined
        )

    def _conflict(self, key: str, exc: OSError) -> RepositoryError:
        """The error for a write of ``key`` that met a file where a directory must be (a
        key ``a`` stored as a file, while writing ``a/b``) or a directory where the file
        must be (keys under ``key/``); the cause is chained by the caller."""
        segments = key.split("/")
        for n in range(1, len(segments)):
            prefix = "/".join(segments[:n])
            where = self.root / prefix
            if where.exists() and not where.is_dir():
                return RepositoryError(
                    f"{self.describe()}: cannot store key {key!r}: {where} is a file (the key "
                    f"{prefix!r}{' or another file' if self.extension else ''}), so no key can be "
                    f"stored under {prefix + '/'!r} while it exists"
                )
        return RepositoryError(
            f"{self.describe()}: cannot store key {key!r}: {self.root / (key + self.extension)} is a "
            f"directory (holding keys under {key + '/'!r}), so it cannot be a key's value: "
            f"{type(exc).__name__}"
        )

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

    def _scan_here(self) -> bool:
        """Whether the root is scanned on the event loop (see ``SMALL_DIR``): one ``stat``."""
        try:
            st = os.stat(self.root)
        except OSError:
            return False
        if st.st_nlink != 2 or st.st_size > SMALL_DIR:  # two links: no subdirectory
            return False
        if self._memory_fs is None:
            memory = _MEMORY_DEVICES.get(st.st_dev)
            if memory is None:
                memory = _MEMORY_DEVICES[st.st_dev] = on_memory_fs(self.root)
            self._memory_fs = memory
        return self._memory_fs

    async def _walk(self, versions: bool) -> dict[str, str | None]:
        """The files of the tree (see :func:`walk`): on the event loop where the root is
        small (see ``SMALL_DIR``), in one pass, else in a thread."""
        if self._scan_here():
            found = walk_flat(self.root, self.extension, versions)
            if found is not None:
                return found
        return await asyncio.to_thread(walk, self.root, False, self.extension, versions)

    async def validate(self, create: bool = False) -> None:
        """Check the root directory (create it with ``create``) and sweep temporaries left
        by writers that were killed (their pid, part of the name, no longer runs)."""
        # One stat, not is_dir() then exists(): another scheduler may create the directory
        # between two checks, and a directory seen by the second is not "not a directory".
        try:
            mode: int | None = self.root.stat().st_mode
        except FileNotFoundError:
            mode = None
        except OSError as exc:
            raise RepositoryError(f"{self.describe()}: cannot read {self.root}: {exc.strerror}") from exc
        if mode is not None and not stat.S_ISDIR(mode):
            raise RepositoryError(f"{self.describe()}: {self.root} exists and is not a directory")
        if mode is None:
            if create:
                await asyncio.to_thread(make_dirs, self.root, self._durable())
            return
        if self._scan_here():
            removed = _sweep_flat(self.root)
        else:
            removed = await asyncio.to_thread(sweep, self.root, self._descend)
        if removed:
            log.info("%s: removed %d temporary file(s) of killed writers", self.describe(), len(removed))

    def _descend(self, entry: os.DirEntry[str]) -> bool:
        """Whether the directory ``entry`` may hold keys (and so temporaries) below it."""
        return True


#: the lock file of a directory's conditional replacements (and of the deletes they race)
_LOCK = ".pdt-lock"


class FileRepository(_LocalRoot, BlobRepository):
    """One file per key under ``root``, at ``root/key + extension``.

    A key with segments is a nested path (``a/b c/d.txt``): its directories are created
    as needed (durably with ``fsync``) and removed by a delete that leaves them empty.
    Listings walk the whole tree and skip hidden names (starting with ``.``) in any
    directory. Each segment is a file name of at most 255 bytes in UTF-8 (the last one
    with the extension), and no segment may start with ``.``: other keys are refused with
    :class:`~pydatatask.errors.InvalidKeyError`. Without an extension, a key ``a`` (a
    file) and a key ``a/b`` (under a directory ``a``) cannot both exist: storing the
    second raises :class:`~pydatatask.errors.RepositoryError` naming the first.

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
        return self.root / (self._key(key) + self.extension)

    def _path(self, key: str) -> str:
        # a string, not a Path: joining and formatting Path objects cost more than the
        # system calls of a small file (a few per key, in every job)
        return f"{self.root}/{key}{self.extension}"

    async def _list(self) -> Iterable[str]:
        return await self._walk(False)

    async def _list_versions(self) -> dict[str, str | None]:
        """Each file's inode, size and mtime in nanoseconds, from the listing's own walk."""
        return self._valid_versions(await self._walk(True))

    async def _contains(self, key: str) -> bool:
        return os.path.isfile(self._path(key))  # noqa: ASYNC240 - one stat of a local file, see SMALL_FILE

    def _unlink(self, path: str) -> bool:
        """Unlink the file of a key; whether it was there."""
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError):
            return False  # absent (or under a file, where no key can be)
        except (IsADirectoryError, PermissionError) as exc:
            if not os.path.isdir(path):
                raise
            raise RepositoryError(f"{self.describe()}: {path} is a directory") from exc
        return True

    def _delete_sync(self, path: str, key: str) -> bool:
        if not self._unlink_guarded(path):
            return False
        if "/" in key:
            remove_empty_parents(self.root, Path(path), False)
        return True

    def _delete_durably(self, path: str, key: str) -> None:
        if not self._unlink_guarded(path):
            return
        try:
            fsync_dir(os.path.dirname(path))
        except FileNotFoundError:
            # a sibling's delete removed the directory once this unlink left it empty:
            # that removal is synced in its own parent by the delete that made it
            return
        if "/" in key:
            remove_empty_parents(self.root, Path(path), True)

    async def _delete(self, key: str) -> None:
        path = self._path(key)
        if self._durable():
            await asyncio.to_thread(self._delete_durably, path, key)
        elif os.path.exists(f"{self.root}/{_LOCK}"):  # noqa: ASYNC240 - one stat; the lock may have to be waited for
            await asyncio.to_thread(self._delete_sync, path, key)
        else:
            self._delete_unlocked([key])

    def _locked(self) -> int | None:
        """The lock of conditional replacements, taken (its descriptor: closing it lets go),
        or None when the directory has none (was never replaced in: nothing to wait for).

        A replacement (a claim's heartbeat or takeover) compares the old value, then renames
        the new one into place; an unlink between the two would be undone by the rename (a
        released claim back in ``live``), so unlinks take the lock too, for the unlink only
        (the directory syncs that follow are shared and need no lock)."""
        import fcntl

        try:
            fd = os.open(f"{self.root}/{_LOCK}", os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _unlink_guarded(self, path: str) -> bool:
        fd = self._locked()
        try:
            return self._unlink(path)
        finally:
            if fd is not None:
                os.close(fd)

    async def _open_reader(self, key: str) -> BlobReader:
        try:
            f = await asyncio.to_thread(open, self._path(key), "rb")
            return _FileReader(f)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyNotFoundError(key, self.describe()) from None

    async def _open_writer(self, key: str) -> BlobWriter:
        writer = _FileWriter(Path(self._path(key)), self._durable())
        try:
            await asyncio.to_thread(writer._open)
        except (FileExistsError, NotADirectoryError) as exc:
            raise self._conflict(key, exc) from exc
        writer.conflict = lambda exc: self._conflict(key, exc)
        return writer

    # Whole-value fast paths: one thread hop per operation instead of one per step.
    async def read_bytes(self, key: str) -> bytes:
        path = self._path(self._key(key))
        try:
            data = _read_small_fd(path)  # small local file, see SMALL_FILE
            if data is None:
                data = await asyncio.to_thread(Path(path).read_bytes)
            return data
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise KeyNotFoundError(key, self.describe()) from None

    @staticmethod
    def _put_file(path: str, data: bytes, durable: bool) -> None:
        """Write ``data`` to ``path`` through a synced temporary and a rename; the caller
        syncs the directory (once for all the files of a bulk write)."""
        tmp = _tmp_beside(path)
        write_tmp(tmp, data, durable)
        try:
            os.replace(tmp, path)
        except BaseException:
            _unlink_if_present(tmp)
            raise

    def _write_sync(self, path: str, data: bytes) -> None:
        durable = self._durable()
        self._put_file(path, data, durable)
        if durable:
            fsync_dir(os.path.dirname(path))  # then the rename itself

    async def write_bytes(self, key: str, data: bytes) -> None:
        key = self._key(key)
        path, data = self._path(key), bytes(data)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        try:
            if len(data) <= SMALL_FILE and not self._durable():
                self._write_sync(path, data)
            else:
                await asyncio.to_thread(self._write_sync, path, data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._conflict(key, exc) from exc

    @staticmethod
    def _create_file(path: str, data: bytes, durable: bool) -> bool:
        """Create ``path`` with ``data`` unless it exists (a synced temporary, then a hard
        link, which fails if the name exists); the caller syncs the directory."""
        tmp = _tmp_beside(path)
        write_tmp(tmp, data, durable)
        try:
            os.link(tmp, path)  # atomic, fails if the name exists
        except FileExistsError:
            if os.path.isdir(path) and not os.path.islink(path):
                raise IsADirectoryError(f"{path} is a directory") from None
            return False
        finally:
            os.unlink(tmp)
        return True

    def _create_sync(self, path: str, data: bytes) -> bool:
        durable = self._durable()
        made = self._create_file(path, data, durable)
        if made and durable:
            fsync_dir(os.path.dirname(path))  # the new name (and the temporary's removal)
        return made

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        path, data = self._path(key), bytes(data)
        try:
            if len(data) <= SMALL_FILE and not self._durable():
                return self._create_sync(path, data)
            return await asyncio.to_thread(self._create_sync, path, data)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise self._conflict(key, exc) from exc

    def _replace_if_sync(self, path: str, expected: bytes, data: bytes) -> bool:
        # Conditional replacements are serialised by an advisory lock on the directory's
        # lock file; the final rename is atomic, so plain readers and exclusive creators
        # never see the name missing.
        import fcntl

        make_dirs(self.root, self._durable())
        with open(self.root / _LOCK, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                try:
                    if Path(path).read_bytes() != expected:
                        return False
                except FileNotFoundError:
                    return False
                self._write_sync(path, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        return await asyncio.to_thread(self._replace_if_sync, self._path(key), expected, data)

    # Bulk changes (a batch's claims, records and releases): each file is written, created
    # or removed as by the single-key call, and each directory is synced once, after all
    # of the call's changes in it, before the call returns. On a disk the files are
    # shared out to a few threads whose fsyncs the file system commits together.
    async def _write_many_bytes(self, values: dict[str, bytes]) -> None:
        await self._bulk(list(values.items()), self._put_file)

    async def _create_many_bytes(self, values: dict[str, bytes]) -> set[str]:
        return await self._bulk(list(values.items()), self._create_file)

    async def _bulk(
        self, items: list[tuple[str, bytes]], one: Callable[[str, bytes, bool], object]
    ) -> set[str]:
        """Apply ``one(path, data, durable)`` to every item; return the keys for which it
        returned a true value (every key, for writes). Each directory is synced once at
        the end, also when an item failed (its error, translated, is raised then)."""
        durable = self._durable()
        dirs: dict[str, None] = {}
        if not durable and all(len(data) <= SMALL_FILE for _key, data in items):
            return self._bulk_sync(items, one, False, dirs)  # tmpfs or unsynced: no thread hop
        results = await asyncio.gather(
            *(
                asyncio.to_thread(self._bulk_sync, part, one, durable, dirs)
                for part in _chunks(items, BULK_THREADS)
            ),
            return_exceptions=True,
        )
        if durable and dirs:
            await asyncio.to_thread(_fsync_dirs, list(dirs))
        done: set[str] = set()
        for result in results:
            if isinstance(result, BaseException):
                raise result
            done |= result
        return done

    def _bulk_sync(
        self,
        items: list[tuple[str, bytes]],
        one: Callable[[str, bytes, bool], object],
        durable: bool,
        dirs: dict[str, None],
    ) -> set[str]:
        """Apply ``one`` to ``items`` in order, noting the directories changed in ``dirs``
        (synced by the caller)."""
        done: set[str] = set()
        for key, data in items:
            path = self._path(key)
            try:
                ok = one(path, data, durable)
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                raise self._conflict(key, exc) from exc
            dirs[os.path.dirname(path)] = None
            if ok is not False:
                done.add(key)
        return done

    async def _delete_many(self, keys: list[str]) -> None:
        if self._durable():
            await asyncio.to_thread(self._delete_many_sync, keys, True)
        elif os.path.exists(f"{self.root}/{_LOCK}"):  # noqa: ASYNC240 - one stat; the lock may have to be waited for
            await asyncio.to_thread(self._delete_many_sync, keys, False)
        else:
            self._delete_unlocked(keys)

    def _delete_unlocked(self, keys: list[str]) -> None:
        """Unsynced deletes in a directory found without a lock file just now, on the event
        loop (nothing ran since): the unlinks, as :meth:`_unlink_guarded` makes them when it
        finds no lock (without looking for it a second time), then the directories left
        empty. A lock file made meanwhile by another process is raced the same way."""
        for key in keys:
            path = self._path(key)
            if self._unlink(path) and "/" in key:
                remove_empty_parents(self.root, Path(path), False)

    def _delete_many_sync(self, keys: list[str], durable: bool) -> None:
        """Unlink every key's file, then sync each directory once, then remove the
        directories left empty (durably: each removal synced in its parent)."""
        dirs: dict[str, bool] = {}  # directory -> whether it is below the root
        lock = self._locked()  # see _locked: for the unlinks only
        try:
            try:
                for key in keys:
                    path = self._path(key)
                    if self._unlink(path):
                        dirs[os.path.dirname(path)] = "/" in key
            finally:
                if lock is not None:
                    os.close(lock)
        finally:
            for d, nested in dirs.items():
                if durable:
                    try:
                        fsync_dir(d)
                    except FileNotFoundError:
                        continue  # removed by a concurrent delete, which syncs that removal
                if nested:
                    remove_empty_parents(self.root, Path(d, "_"), durable)


class DirectoryRepository(_LocalRoot, Repository):
    """One directory per key under ``root`` (for jobs that produce many files).

    Write a key's directory atomically with :meth:`open_dir`: the job fills a hidden
    temporary directory, which is renamed into place only if the block succeeds.

    Nested keys (``a/b``) live in nested directories. What a key's directory holds is the
    job's own (any files and subdirectories), so the directories *above* keys are marked:
    each holds a hidden file ``.pdt-prefix``, and listings descend into marked directories
    only. A key ``a`` and a key ``a/b`` cannot both exist (``a`` would be a value and a
    prefix at once): storing the second raises
    :class:`~pydatatask.errors.RepositoryError` naming the first. Prefix directories stay
    when their last key is deleted (they are never listed as keys). Segments follow the
    rule of :class:`FileRepository` (at most 255 bytes, none starting with ``.``).

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
        return self.root / (self._key(key) + self.extension)

    def _descend(self, entry: os.DirEntry[str]) -> bool:
        return os.path.lexists(os.path.join(entry.path, PREFIX_MARKER))

    async def _list(self) -> Iterable[str]:
        return await asyncio.to_thread(walk, self.root, True, self.extension, False)

    async def _list_versions(self) -> dict[str, str | None]:
        """Each key directory's inode, size and mtime in nanoseconds (a directory written
        again by :meth:`open_dir` is a new one; files changed in place deep inside it are
        not seen), from the listing's own walk."""
        return self._valid_versions(await asyncio.to_thread(walk, self.root, True, self.extension, True))

    def _is_key_dir(self, p: Path) -> bool:
        return p.is_dir() and not p.is_symlink() and not (p / PREFIX_MARKER).exists()

    async def _contains(self, key: str) -> bool:
        return self._is_key_dir(self.root / (key + self.extension))

    def _delete_sync(self, path: Path) -> None:
        if (path / PREFIX_MARKER).exists():
            return  # a directory of other keys, not the value of this one
        trash = path.with_name(tmp_name(path.name))
        try:
            os.rename(path, trash)  # disappears at once, then is removed
        except (FileNotFoundError, NotADirectoryError):
            return
        if self._durable():
            fsync_dir(path.parent)  # gone for good: what is left is a hidden temporary
        shutil.rmtree(trash, ignore_errors=True)

    async def _delete(self, key: str) -> None:
        await asyncio.to_thread(self._delete_sync, self.root / (key + self.extension))

    def _make_prefixes(self, key: str) -> None:
        """Create the marked prefix directories above ``key``'s directory (``a`` and
        ``a/b`` for the key ``a/b/c``); each appears atomically with its marker."""
        durable = self._durable()
        if not self.root.is_dir():
            make_dirs(self.root, durable)
        segments = key.split("/")
        parent = self.root
        for n in range(1, len(segments)):
            here = parent / segments[n - 1]
            if not here.exists():
                tmp = parent / tmp_name(here.name)
                tmp.mkdir()
                (tmp / PREFIX_MARKER).touch()
                if durable:
                    fsync_tree(tmp)
                try:
                    if not here.exists():
                        os.rename(tmp, here)
                        if durable:
                            fsync_dir(parent)
                except OSError:
                    if not here.is_dir():
                        raise
                    # made meanwhile by a concurrent writer (ENOTEMPTY): checked below
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            if not (here / PREFIX_MARKER).exists():
                prefix = "/".join(segments[:n])
                raise RepositoryError(
                    f"{self.describe()}: cannot store key {key!r}: {here} is the directory of the key "
                    f"{prefix!r}{'' if here.is_dir() else ' (or another file)'}, so no key can be stored "
                    f"under {prefix + '/'!r} while it exists"
                )
            parent = here

    def _check_not_prefix(self, key: str, final: Path) -> None:
        if (final / PREFIX_MARKER).exists():
            raise RepositoryError(
                f"{self.describe()}: cannot store key {key!r}: {final} holds other keys (under "
                f"{key + '/'!r}), so it cannot be a key's directory"
            )

    @asynccontextmanager
    async def open_dir(self, key: str) -> AsyncIterator[Path]:
        """Yield a fresh temporary directory that becomes the value of ``key`` on success."""
        final = self.path(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        await asyncio.to_thread(self._make_prefixes, key)
        self._check_not_prefix(key, final)
        tmp = final.with_name(tmp_name(final.name))
        await asyncio.to_thread(make_dirs, tmp, self._durable())
        try:
            yield tmp
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise
        try:
            await asyncio.to_thread(self._install, tmp, final)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, tmp, True)
            raise

    def _install(self, tmp: Path, final: Path) -> None:
        """Rename the filled temporary ``tmp`` to ``final``, the directory of a key whose
        prefixes exist (:meth:`_make_prefixes`), replacing its old value."""
        self._check_not_prefix(final.relative_to(self.root).as_posix(), final)
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
        await asyncio.to_thread(self._make_prefixes, key)
        self._check_not_prefix(key, path)
        await asyncio.to_thread(path.mkdir, exist_ok=True)
        return path
