"""Bundles in the local file metadata repositories (see :mod:`pydatatask.repository.bundles`).

A bundle named ``n`` is the file ``root/.pdt-bundles/n.json``. Names starting with ``.``
are never keys of a file repository (:mod:`pydatatask.repository._localtree`), so no key's
file is a bundle, listings of the keys never descend there, and a repository that never
held a bundle pays one failed directory lookup to know it. A bundle is internal
bookkeeping (the claims of a batch): it is JSON whatever the repository's own format,
because a batch's bundle is read and written several times per batch and JSON parses
about fifty times faster than YAML (0.16 ms against 8 ms for 500 keys). The directory goes
when its last bundle does.

The protocol is the file repository's own for conditional replacements: every change of
a bundle other than its creation (a replace, a delete, a key moved out of it) happens under
the advisory lock of the repository's directory (``.pdt-lock``), after a comparison with
what is stored, and lands by an atomic rename or unlink. A creation is a hard link, which
fails when the name exists. Reads that decide who holds a key (the listing a batch makes
after writing its bundle, the lookups of single-key calls) read the bundles under the same
lock: no bundle is replaced or removed while they look, so a directory scan never misses
one that exists (a rename over a name during a scan may hide it from that scan on some
file systems). Creations need no lock: a bundle made after the scan began is a later
write, which the batch claims protocol covers (see :mod:`pydatatask.task.batch_claims`).

With ``fsync`` (on a disk), every change is durable before it returns, as for keys: the
file is synced before its link or rename, the directory after.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import CorruptValueError, KeyNotFoundError, RepositoryError
from ._localfs import fsync_dir, make_dirs, sweep
from ._localtree import file_version, walk
from .bundles import bundle_holders, bundle_keys, bundle_member, bundle_without
from .filesystem import _LOCK, FileRepository, _read_small_fd

if TYPE_CHECKING:
    from .serialized import SerializedMetadataRepository

    _Base = SerializedMetadataRepository
else:
    _Base = object

__all__ = ("BUNDLES", "FileBundles")

log = logging.getLogger("pydatatask.repository")

T = TypeVar("T")

#: the directory of the bundles, under a repository's root (hidden: never a key)
BUNDLES = ".pdt-bundles"
_SUFFIX = ".json"
_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: how :meth:`FileBundles._run` takes the directory's lock: to read, or to change
_READ, _WRITE = "read", "write"


def _encode(bundle: dict[str, Any]) -> bytes:
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class FileBundles(_Base):
    """The bundle half of :class:`~pydatatask.repository.serialized.YamlMetadataFileRepository`
    and :class:`~pydatatask.repository.serialized.JsonMetadataFileRepository`: keys read and
    written one by one see the members of the bundles as keys of their own."""

    #: whether single-key calls look for bundles (set on the first sight of one)
    _bundles_expected = False

    @property
    def _files(self) -> FileRepository:
        blobs = self.blobs
        assert isinstance(blobs, FileRepository)
        return blobs

    # --- the BundleStore protocol --------------------------------------------------
    @property
    def supports_bundles(self) -> bool:
        """Always: a bundle is a hidden file beside the keys."""
        return True

    def expect_bundles(self) -> None:
        """Look for bundles in single-key calls from now on."""
        self._bundles_expected = True

    async def create_bundle(self, name: str, bundle: dict[str, Any]) -> bool:
        """A temporary file, then a hard link to the bundle's name (fails if it exists)."""
        path = self._bundle_path(name)
        data = self._encode_bundle(name, bundle)
        self._bundles_expected = True
        return await self._run(None, self._create_bundle_sync, path, data)

    async def get_bundle(self, name: str) -> dict[str, Any] | None:
        """One read of the bundle's file."""
        path = self._bundle_path(name)
        try:
            data = await self._run(None, _read_file, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return self._decode_bundle(path, data)

    async def replace_bundle_if(self, name: str, expected: dict[str, Any], bundle: dict[str, Any]) -> bool:
        """Under the directory's lock: a comparison with what is stored, then a rename
        into place."""
        path = self._bundle_path(name)
        data = self._encode_bundle(name, bundle)
        return await self._run(_WRITE, self._replace_bundle_sync, path, expected, data)

    async def delete_bundle(self, name: str) -> None:
        """Under the directory's lock: an unlink (the directory too when it is left empty)."""
        path = self._bundle_path(name)
        await self._run(_WRITE, self._delete_bundles_sync, [path])

    async def delete_unbundled(self, keys: list[str]) -> None:
        """The files of ``keys`` only (one bulk delete): bundles stay as they are."""
        if keys:
            await self._files._delete_many(keys)

    async def snapshot(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """The keys' files and every bundle, read under the directory's lock."""

        def scan() -> tuple[set[str], dict[str, dict[str, Any]]]:
            return set(self._plain(False)), _values(self._read_bundles(False))

        plain, bundles = await self._run(_READ, scan)
        if bundles:
            self._bundles_expected = True
        return plain, bundles

    # --- listings: the keys' files and the members of the bundles -------------------
    async def keys(self) -> set[str]:
        good, bad = self._split_names(await self._list())
        if bad:
            self._warn_invalid(bad)
        return good

    async def _list(self) -> Iterable[str]:
        return (await self._scan_keys(False)).keys()

    async def _list_versions(self) -> dict[str, str | None]:
        return self._valid_versions(await self._scan_keys(True))

    async def _scan_keys(self, versions: bool) -> dict[str, str | None]:
        """Every stored name; with ``versions``, each with its version (a bundle's keys
        have the bundle file's). Where there are bundles, the keys' files and the bundles
        are read together under the directory's lock (one view, as one S3 listing is)."""
        if not self._has_bundles():
            return await self._files._walk(versions)

        def scan() -> tuple[dict[str, str | None], dict[str, tuple[dict[str, Any], str | None]]]:
            return self._plain(versions), self._read_bundles(versions)

        plain, stamped = await self._run(_READ, scan)
        names = dict(plain)
        for bundle, version in stamped.values():
            for key in bundle_keys(bundle):
                names.setdefault(key, version)
        if stamped:
            self._bundles_expected = True
        return names

    # --- single keys ------------------------------------------------------------------
    async def _contains(self, key: str) -> bool:
        if await super()._contains(key):
            return True
        return key in await self._bundled_values([key])

    async def _get(self, key: str) -> Any:
        try:
            return await super()._get(key)
        except KeyNotFoundError:
            found = await self._bundled_values([key])
            if key in found:
                return found[key]
            raise

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        out = await super()._get_many(keys)
        missing = [k for k in keys if k not in out]
        for key, value in (await self._bundled_values(missing)).items():
            out.setdefault(key, value)
        return out

    async def _create(self, key: str, value: Any) -> bool:
        """The key's file made exclusively (a hard link), then, where bundles are expected,
        one look at them: a key a bundle holds is someone's already (the file is removed
        again, the answer is False)."""
        if not await super()._create(key, value):
            return False
        if key in await self._bundled_values([key]):
            await self._files._delete_many([key])
            return False
        return True

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        made = await super()._create_many(values)
        taken = set(await self._bundled_values(sorted(made)))
        if taken:
            await self._files._delete_many(sorted(taken))
        return made - taken

    async def _delete(self, key: str) -> None:
        await super()._delete(key)
        await self._drop_from_bundles([key])

    async def _delete_many(self, keys: list[str]) -> None:
        await super()._delete_many(keys)
        await self._drop_from_bundles(keys)

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        """The key's file as :class:`~pydatatask.repository.serialized.SerializedMetadataRepository`
        replaces it; a key a bundle holds moves out of it instead (see :meth:`_move_out_sync`)."""
        if await super()._replace_if(key, expected, value):
            return True
        if not self._bundles_expected:
            return False
        data = self._encode(key, value)
        return await self._run(_WRITE, self._move_out_sync, key, expected, data)

    async def validate(self, create: bool = False) -> None:
        """As the file repository's, and the temporaries killed writers left among the
        bundles are swept too."""
        await super().validate(create)
        if self._has_bundles():
            removed = await asyncio.to_thread(sweep, self._bundle_dir())
            if removed:
                log.info(
                    "%s: removed %d temporary bundle file(s) of killed writers", self.describe(), len(removed)
                )
                try:
                    os.rmdir(self._bundle_dir())  # only when empty (see _delete_bundles_sync)
                except OSError:
                    pass

    # --- the files ------------------------------------------------------------------
    def _bundle_dir(self) -> Path:
        return self._files.root / BUNDLES

    def _bundle_path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise RepositoryError(
                f"{self.describe()}: {name!r} is not a bundle name (letters, digits, '-', '_')"
            )
        return f"{self._files.root}/{BUNDLES}/{name}{_SUFFIX}"

    def _has_bundles(self) -> bool:
        """Whether the directory of the bundles exists (one ``stat``)."""
        return os.path.isdir(self._bundle_dir())

    def _encode_bundle(self, name: str, bundle: dict[str, Any]) -> bytes:
        try:
            return _encode(bundle)
        except (TypeError, ValueError) as exc:
            raise RepositoryError(f"{self.describe()}: cannot store bundle {name!r} as JSON: {exc}") from exc

    def _decode_bundle(self, path: str, data: bytes) -> dict[str, Any]:
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise CorruptValueError(
                key=os.path.basename(path),
                repository=self.describe(),
                location=path,
                reason=f"not JSON: {exc}",
            ) from exc
        if not isinstance(value, dict):
            raise CorruptValueError(
                key=os.path.basename(path), repository=self.describe(), location=path, reason="not a bundle"
            )
        return value

    def _plain(self, versions: bool) -> dict[str, str | None]:
        """The keys stored in files of their own (one walk of the tree)."""
        files = self._files
        return walk(files.root, False, files.extension, versions)

    def _read_bundles(self, versions: bool) -> dict[str, tuple[dict[str, Any], str | None]]:
        """Every bundle as stored now, by name, with its file's version (None unless
        ``versions``); an unreadable one is skipped, with a warning: its keys cannot be
        told."""
        out: dict[str, tuple[dict[str, Any], str | None]] = {}
        try:
            entries = list(os.scandir(self._bundle_dir()))
        except (FileNotFoundError, NotADirectoryError):
            return out
        for entry in entries:
            name = entry.name
            if not name.endswith(_SUFFIX) or name.startswith("."):
                continue  # a temporary
            try:
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                continue
            try:
                stat = os.fstat(fd) if versions else None
                data = _read_fd(fd)
            finally:
                os.close(fd)
            try:
                bundle = self._decode_bundle(entry.path, data)
            except CorruptValueError as exc:
                log.warning("%s: skipping an unreadable bundle: %s", self.describe(), exc)
                continue
            out[name[: -len(_SUFFIX)]] = (bundle, file_version(stat) if stat is not None else None)
        return out

    async def _bundled_values(self, keys: list[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that a bundle holds (as stored now)."""
        if not self._bundles_expected or not keys or not self._has_bundles():
            return {}
        bundles = _values(await self._run(_READ, self._read_bundles, False))
        members = bundle_holders(bundles)
        return {k: bundle_member(bundles[members[k]], k) for k in keys if k in members}

    async def _drop_from_bundles(self, keys: list[str]) -> None:
        """Take ``keys`` out of every bundle that holds them (a bundle left empty goes)."""
        if not self._bundles_expected or not keys or not self._has_bundles():
            return
        await self._run(_WRITE, self._drop_sync, set(keys))

    # --- the changes, each under the directory's lock (see _run) ------------------------
    def _create_bundle_sync(self, path: str, data: bytes) -> bool:
        durable = self._files._durable()
        made = FileRepository._create_file(path, data, durable)
        if made and durable:
            fsync_dir(os.path.dirname(path))
        return made

    def _replace_bundle_sync(self, path: str, expected: dict[str, Any], data: bytes) -> bool:
        try:
            current = _read_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            if self._decode_bundle(path, current) != expected:
                return False
        except CorruptValueError:
            return False  # not what was expected either
        self._write(path, data)
        return True

    def _write(self, path: str, data: bytes) -> None:
        """Replace the file ``path`` by ``data`` (a temporary renamed into place)."""
        durable = self._files._durable()
        FileRepository._put_file(path, data, durable)
        if durable:
            fsync_dir(os.path.dirname(path))

    def _delete_bundles_sync(self, paths: list[str]) -> None:
        durable = self._files._durable()
        gone = False
        for path in paths:
            try:
                os.unlink(path)
                gone = True
            except FileNotFoundError:
                pass
        if not gone:
            return
        directory = os.path.dirname(paths[0])
        if durable:
            fsync_dir(directory)
        try:
            os.rmdir(directory)  # only when empty: a bundle being made holds its temporary
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                raise
            return
        if durable:
            fsync_dir(os.path.dirname(directory))

    def _drop_sync(self, gone: set[str]) -> None:
        bundles = _values(self._read_bundles(False))
        empty: list[str] = []
        for name, bundle in bundles.items():
            held = bundle_keys(bundle)
            if not gone.intersection(held):
                continue
            rest = [k for k in held if k not in gone]
            path = self._bundle_path(name)
            if rest:
                self._write(path, _encode(bundle_without(bundle, rest)))
            else:
                empty.append(path)
        if empty:
            self._delete_bundles_sync(empty)

    def _move_out_sync(self, key: str, expected: Any, data: bytes) -> bool:
        """``replace_if`` of a key a bundle holds, whose value there is ``expected``: the
        key's own file is created with its new value (exclusively), then the key leaves the
        bundle; both under the lock, so of several callers one wins."""
        bundles = _values(self._read_bundles(False))
        name = bundle_holders(bundles).get(key)
        if name is None or bundle_member(bundles[name], key) != expected:
            return False
        files = self._files
        durable = files._durable()
        target = files._path(key)
        try:
            made = FileRepository._create_file(target, data, durable)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
            raise files._conflict(key, exc) from exc
        if not made:
            return False  # a file of its own exists: someone else's value
        if durable:
            fsync_dir(os.path.dirname(target))
        bundle = bundles[name]
        rest = [k for k in bundle_keys(bundle) if k != key]
        path = self._bundle_path(name)
        if rest:
            self._write(path, _encode(bundle_without(bundle, rest)))
        else:
            self._delete_bundles_sync([path])
        return True

    async def _run(self, lock: str | None, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, under the directory's lock unless ``lock`` is None (:data:`_READ`:
        without it where the lock file cannot be made, a read-only directory). On a disk
        (fsync) in a thread; otherwise on the loop when the lock is free at once (a tmpfs:
        the system calls of a small file cost less than a thread hop), else in a thread
        that waits for it."""
        if self._files._durable():
            if lock is None:
                return await asyncio.to_thread(fn, *args)
            return await asyncio.to_thread(self._locked_call, lock, fn, *args)
        if lock is None:
            return fn(*args)
        fd = self._open_lock(lock)
        if fd is None:
            return fn(*args)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            else:
                return fn(*args)
        finally:
            os.close(fd)  # lets go of the lock
        return await asyncio.to_thread(self._locked_call, lock, fn, *args)

    def _open_lock(self, lock: str) -> int | None:
        """The directory's lock file, opened (created if need be); None for a read where
        it cannot be made."""
        files = self._files
        path = os.path.join(files.root, _LOCK)
        for _ in range(2):
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except FileNotFoundError:
                if lock == _READ:
                    return None  # no directory: nothing to read
                make_dirs(files.root, files._durable())
            except OSError as exc:
                if lock == _READ and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                    return None
                raise RepositoryError(f"{self.describe()}: cannot open {path}: {exc.strerror}") from exc
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)

    def _locked_call(self, lock: str, fn: Callable[..., T], *args: Any) -> T:
        fd = self._open_lock(lock)
        if fd is None:
            return fn(*args)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return fn(*args)
        finally:
            os.close(fd)  # lets go of the lock


def _values(stamped: dict[str, tuple[dict[str, Any], str | None]]) -> dict[str, dict[str, Any]]:
    return {name: bundle for name, (bundle, _version) in stamped.items()}


def _read_fd(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _read_file(path: str) -> bytes:
    data = _read_small_fd(path)
    if data is None:
        data = Path(path).read_bytes()
    return data
