"""In-memory repositories: for tests of users' own pipelines, and for small state."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import KeyNotFoundError
from ..keys import validate_key
from ._packed import copy_value as _copy
from ._packed import field, is_packed, maker, pack, unpack
from .base import BlobReader, BlobRepository, BlobWriter, MetadataRepository, Repository
from .journal import current_journal
from .listing import SharedListing

__all__ = ("MemoryMetadataRepository", "MemoryBlobRepository")


class _DictKeys(SharedListing):
    """Key handling shared by the in-memory repositories (a dict holds the values).

    A listing for the scheduler (:meth:`shared_keys`, :meth:`shared_versions`) is handed
    out without a copy of the keys: the set of keys is kept beside the dict, and handed out
    as it is; the first write or delete after that copies it before it changes (copy on
    write), so the set handed out never changes under its holder. A repository whose keys
    are listed again and again while nothing changes (an input, a finished pipeline served
    to a page) costs nothing per listing, and the first listing of a repository built with
    its data costs no copy of a million keys.

    Versions are counted only from the first listing of them on: a repository nobody asks
    versions of (the records and claims of a task, its outputs) keeps no version per key.
    """

    _data: dict[str, Any]
    #: the version of each key written since versions were first listed: the value of
    #: ``_clock`` when it was last written, as the text listings hand out (made once: a
    #: listing of a million versions makes no text; a key not in it has version ``"0"``)
    _stamps: dict[str, str] | None = None
    _clock: int = 0
    #: the keys of ``_data``, kept from the first shared listing on (None: not kept)
    _keyset: set[str] | None = None
    #: whether ``_keyset`` was handed out (it is copied before it changes)
    _handed: bool = False
    #: the versions handed out, while nothing changed since
    _versions: dict[str, str | None] | None = None

    def _stamp(self, key: str) -> None:
        """Note that ``key`` was just written: it gets a version no key ever had here (a
        counter bumped on every write, so a deleted and rewritten key has a new one too)."""
        self._versions = None
        if self._stamps is not None:
            self._clock += 1
            self._stamps[key] = str(self._clock)
        keyset = self._keyset
        if keyset is not None and key not in keyset:
            if self._handed:
                keyset = self._keyset = set(keyset)
                self._handed = False
            keyset.add(key)

    def _unstamp(self, key: str) -> None:
        """Note that ``key`` was just deleted."""
        self._versions = None
        if self._stamps is not None:
            self._stamps.pop(key, None)
        keyset = self._keyset
        if keyset is not None and key in keyset:
            if self._handed:
                keyset = self._keyset = set(keyset)
                self._handed = False
            keyset.discard(key)

    async def keys(self) -> set[str]:
        return set(self._data)  # only valid keys ever get in

    async def shared_keys(self) -> set[str]:
        """The keys, as a set the caller must not modify (no copy; see the class doc)."""
        if type(self).keys is not _DictKeys.keys:  # a subclass lists its own way
            return await self.keys()
        keyset = self._keyset
        if keyset is None:
            keyset = self._keyset = set(self._data)
        self._handed = True
        return keyset

    async def shared_versions(self) -> dict[str, str | None]:
        """:meth:`versions`, as a dict the caller must not modify (the same dict while
        nothing changes)."""
        assert isinstance(self, Repository)  # a mixin of the repositories below
        cls = type(self)
        if cls.versions is not Repository.versions or cls._list_versions is not _DictKeys._list_versions:
            return await self.versions()  # a subclass lists its own way
        versions = self._versions
        if versions is None:
            versions = self._versions = await self._list_versions()
        return versions

    def keys_of_versions(self, versions: dict[str, str | None]) -> set[str] | None:
        if versions is not self._versions or type(self).keys is not _DictKeys.keys:
            return None
        keyset = self._keyset
        if keyset is None:
            keyset = self._keyset = set(self._data)
        self._handed = True
        return keyset

    async def _list_versions(self) -> dict[str, str | None]:
        stamps = self._stamps
        if stamps is None:
            stamps = self._stamps = {}
        versions: dict[str, str | None] = dict.fromkeys(self._data, "0")
        if stamps:
            versions.update(stamps)  # (in C; every stamped key is in _data, in its place)
        return versions

    async def _list(self) -> Iterable[str]:
        return self._data.keys()

    async def _contains(self, key: str) -> bool:
        return key in self._data

    async def _delete(self, key: str) -> None:
        self._data.pop(key, None)
        self._unstamp(key)


class MemoryMetadataRepository(_DictKeys, MetadataRepository):
    """Structured values in a dict. Values are deep-copied in and out, like a real store."""

    def __init__(self, data: dict[str, Any] | None = None, *, name: str = "") -> None:
        self._data: dict[str, Any] = {}
        self._name = name
        for key, value in (data or {}).items():
            self._data[validate_key(key)] = copy.deepcopy(value)
        if self._data:  # listed for certain: the first listing makes no copy
            self._keyset = set(self._data)

    def describe(self) -> str:
        return f"memory metadata{' ' + self._name if self._name else ''} ({len(self._data)} keys)"

    async def _get(self, key: str) -> Any:
        try:
            return _copy(self._data[key])
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _put(self, key: str, value: Any) -> None:
        self._data[key] = _copy(value)
        self._stamp(key)

    async def _create(self, key: str, value: Any) -> bool:
        if key in self._data:
            return False
        self._data[key] = _copy(value)
        self._stamp(key)
        return True

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        current = self._data.get(key, _ABSENT)
        if is_packed(current):
            current = unpack(current)
        if current is _ABSENT or current != expected:
            return False
        self._data[key] = _copy(value)
        self._stamp(key)
        return True

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        data = self._data
        return {k: _copy(data[k]) for k in keys if k in data}

    # --- the same process's own state, without a round trip ---------------------
    # The job lifecycle keeps the claims and records of a task here when its ``live`` and
    # ``done`` are memory of this process: a key it passes was checked when the listing it
    # came from was made, so these neither check it again nor go through the event loop.
    # A claim is stored as given (the caller hands over a value it no longer changes).

    def holds(self, key: str) -> bool:
        """Whether ``key`` is stored (a checked key)."""
        return key in self._data

    def create_now(self, key: str, value: Any) -> bool:
        """:meth:`~pydatatask.repository.base.MetadataRepository.create` of a checked
        ``key`` with a value handed over; whether it was stored."""
        if key in self._data:
            return False
        self._data[key] = value
        self._stamp(key)
        return True

    def put_now(self, key: str, value: Any) -> None:
        """:meth:`~pydatatask.repository.base.MetadataRepository.put` of a checked
        ``key``, its value copied and kept packed (a job record: what differs from record
        to record in one tuple, the field names and the values records share kept once;
        :meth:`~pydatatask.repository.base.MetadataRepository.get` returns it as the dict
        it was)."""
        self._data[key] = pack(value) if type(value) is dict else _copy(value)
        self._stamp(key)

    def maker_now(self, key: str, names: tuple[str, ...]) -> Callable[[str, tuple[Any, ...]], bool] | None:
        """For the dict stored under a checked ``key`` (kept packed by :meth:`put_now`): a
        function ``put(other, values)`` that stores under the checked key ``other`` what
        :meth:`put_now` would of the same dict with its fields ``names`` holding
        ``values`` (scalars, in that order), without the dict; it returns False when the
        values do not pack so and stores nothing (the caller puts the dict). None: the
        value stored under ``key`` is not packed, or does not vary in those fields (the job
        lifecycle stores the records of a task's successes so, which differ only in their
        key and times)."""
        make = maker(self._data.get(key), names)
        if make is None:
            return None
        data, stamp = self._data, self._stamp

        def put(other: str, values: tuple[Any, ...]) -> bool:
            packed = make(values)
            if packed is None:
                return False
            data[other] = packed
            stamp(other)
            return True

        return put

    def field_now(self, key: str, name: str) -> Any:
        """The field ``name`` of the dict stored under a checked ``key`` (None: no such
        key, field or dict), without a copy of the rest: what the scheduler reads of a job
        record it keeps no copy of (a dict or list returned must not be modified)."""
        value: Any = self._data.get(key)
        if type(value) is dict:
            return value.get(name)
        if is_packed(value):
            return field(value, name)
        return None

    def replace_now(self, key: str, expected: Any, value: Any) -> bool:
        """:meth:`~pydatatask.repository.base.MetadataRepository.replace_if` of a checked
        ``key`` with a value handed over (a claim renewed by this process); whether it
        was stored."""
        current = self._data.get(key, _ABSENT)
        if current is not expected:
            if is_packed(current):
                current = unpack(current)
            if current is _ABSENT or current != expected:
                return False
        self._data[key] = value
        self._stamp(key)
        return True

    def delete_now(self, key: str) -> None:
        """:meth:`~pydatatask.repository.base.Repository.delete` of a checked ``key``."""
        self._data.pop(key, None)
        self._unstamp(key)


_ABSENT = object()


class _MemoryReader(BlobReader):
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    async def read(self, n: int = -1) -> bytes:
        end = len(self._data) if n is None or n < 0 else min(len(self._data), self._pos + n)
        chunk = bytes(self._data[self._pos : end])
        self._pos = end
        return chunk


class _MemoryWriter(BlobWriter):
    def __init__(self, repo: MemoryBlobRepository, key: str) -> None:
        self._repo = repo
        self._key = key
        self._parts: list[bytes] = []

    async def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    async def commit(self) -> None:
        self._repo._data[self._key] = b"".join(self._parts)
        self._repo._stamp(self._key)
        self._parts = []

    async def abort(self) -> None:
        self._parts = []


class MemoryBlobRepository(_DictKeys, BlobRepository):
    """Byte strings in a dict; a write becomes visible only when its writer commits."""

    def __init__(self, data: dict[str, bytes] | None = None, *, name: str = "") -> None:
        self._data: dict[str, bytes] = {validate_key(k): bytes(v) for k, v in (data or {}).items()}
        self._name = name
        if self._data:  # listed for certain: the first listing makes no copy
            self._keyset = set(self._data)

    def describe(self) -> str:
        return f"memory blobs{' ' + self._name if self._name else ''} ({len(self._data)} keys)"

    async def _open_reader(self, key: str) -> BlobReader:
        try:
            return _MemoryReader(self._data[key])
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def _open_writer(self, key: str) -> BlobWriter:
        return _MemoryWriter(self, key)

    async def read_bytes(self, key: str) -> bytes:
        try:
            return self._data[validate_key(key)]
        except KeyError:
            raise KeyNotFoundError(key, self.describe()) from None

    async def write_bytes(self, key: str, data: bytes) -> None:
        key = validate_key(key)
        if (journal := current_journal()) is not None:
            await journal.note(self, key)
        self._data[key] = bytes(data)
        self._stamp(key)

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        if key in self._data:
            return False
        self._data[key] = bytes(data)
        self._stamp(key)
        return True

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        if self._data.get(key) != expected:
            return False
        self._data[key] = data
        self._stamp(key)
        return True
