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
    out as a set (a dict) the repository keeps while nothing changes: a repository whose
    keys are listed again and again while nothing changes (an input, a finished pipeline
    served to a page) costs nothing per listing, and the first listing of a repository
    built with its data costs no copy of a million keys. The first write or delete after
    a listing was handed out drops the repository's reference to it (the listing never
    changes under its holder); the next listing is made anew from the dict. A repository
    written between listings thus keeps one set of its keys, the one its listers hold,
    instead of that one and a copy of its own to change.

    Versions are counted only from the first listing of them on: a repository nobody asks
    versions of (the records and claims of a task, its outputs) keeps no version per key.
    A key has version ``"0"`` until it is written again while present, or written after
    it was deleted: then it gets the value of a counter bumped at every such write, as a
    text made once. A key written once (the output of a job, read by the next task) keeps
    nothing per key for its version.
    """

    _data: dict[str, Any]
    #: the version of each key rewritten since versions were first listed: the value of
    #: ``_clock`` when it was last written, as the text listings hand out (made once: a
    #: listing of a million versions makes no text; a key not in it has version ``"0"``)
    _stamps: dict[str, str] | None = None
    _clock: int = 0
    #: the keys deleted since versions were first listed (written again, they get a
    #: version of their own: a holder of a listing of before may still hold ``"0"``)
    _gone: set[str] | None = None
    #: the keys of ``_data``, kept from the first shared listing on (None: made anew at
    #: the next listing)
    _keyset: set[str] | None = None
    #: whether ``_keyset`` was handed out (it is dropped, not changed, at the next change)
    _handed: bool = False
    #: the versions handed out, while nothing changed since
    _versions: dict[str, str | None] | None = None

    def _stamp(self, key: str, present: bool) -> None:
        """Note that ``key`` was just written (``present``: it was there before)."""
        self._versions = None
        if self._stamps is not None and (present or (self._gone is not None and key in self._gone)):
            # a version no key ever had here (a counter bumped on every rewrite)
            self._clock += 1
            self._stamps[key] = str(self._clock)
            if not present:
                self._gone.discard(key)  # type: ignore[union-attr]
        if not present:
            keyset = self._keyset
            if keyset is not None:
                if self._handed:
                    self._keyset = None  # the holders keep theirs; the next listing makes one
                    self._handed = False
                else:
                    keyset.add(key)

    def _unstamp(self, key: str) -> None:
        """Note that ``key`` was just deleted."""
        self._versions = None
        if self._stamps is not None:
            self._stamps.pop(key, None)
            if self._gone is None:
                self._gone = set()
            self._gone.add(key)
        keyset = self._keyset
        if keyset is not None:
            if self._handed:
                self._keyset = None
                self._handed = False
            else:
                keyset.discard(key)

    async def keys(self) -> set[str]:
        return set(self._data)  # only valid keys ever get in

    async def shared_keys(self) -> set[str]:
        """The keys, as a set the caller must not modify (no copy; see the class doc)."""
        if type(self).keys is not _DictKeys.keys:  # a subclass lists its own way
            return await self.keys()
        return self.shared_keys_now()

    def shared_keys_now(self) -> set[str]:
        """:meth:`shared_keys` of a repository that lists as stored (see
        :meth:`lists_as_stored`), without the event loop."""
        keyset = self._keyset
        if keyset is None:
            keyset = self._keyset = set(self._data)
        self._handed = True
        return keyset

    def lists_as_stored(self) -> bool:
        """Whether :meth:`shared_keys` and :meth:`shared_versions` give what is stored
        (no subclass lists its own way): then :meth:`shared_keys_now` and
        :meth:`shared_versions_now` give the same, exact at the time of the call."""
        assert isinstance(self, Repository)  # a mixin of the repositories below
        cls = type(self)
        return (
            cls.keys is _DictKeys.keys
            and cls.versions is Repository.versions
            and cls._list_versions is _DictKeys._list_versions
        )

    async def shared_versions(self) -> dict[str, str | None]:
        """:meth:`versions`, as a dict the caller must not modify (the same dict while
        nothing changes)."""
        assert isinstance(self, Repository)  # a mixin of the repositories below
        cls = type(self)
        if cls.versions is not Repository.versions or cls._list_versions is not _DictKeys._list_versions:
            return await self.versions()  # a subclass lists its own way
        return self.shared_versions_now()

    def shared_versions_now(self) -> dict[str, str | None]:
        """:meth:`shared_versions` of a repository that lists as stored (see
        :meth:`lists_as_stored`), without the event loop."""
        versions = self._versions
        if versions is None:
            versions = self._versions = self._versions_now()
        return versions

    def keys_of_versions(self, versions: dict[str, str | None]) -> set[str] | None:
        if versions is not self._versions or type(self).keys is not _DictKeys.keys:
            return None
        return self.shared_keys_now()

    async def _list_versions(self) -> dict[str, str | None]:
        return self._versions_now()

    def _versions_now(self) -> dict[str, str | None]:
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
        present = key in self._data
        self._data[key] = _copy(value)
        self._stamp(key, present)

    async def _create(self, key: str, value: Any) -> bool:
        if key in self._data:
            return False
        self._data[key] = _copy(value)
        self._stamp(key, False)
        return True

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        current = self._data.get(key, _ABSENT)
        if is_packed(current):
            current = unpack(current)
        if current is _ABSENT or current != expected:
            return False
        self._data[key] = _copy(value)
        self._stamp(key, True)
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
        self._stamp(key, False)
        return True

    def put_now(self, key: str, value: Any) -> None:
        """:meth:`~pydatatask.repository.base.MetadataRepository.put` of a checked
        ``key``, its value copied and kept packed (a job record: what differs from record
        to record in one tuple, the field names and the values records share kept once;
        :meth:`~pydatatask.repository.base.MetadataRepository.get` returns it as the dict
        it was)."""
        data = self._data
        present = key in data
        data[key] = pack(value) if type(value) is dict else _copy(value)
        self._stamp(key, present)

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
            present = other in data
            data[other] = packed
            stamp(other, present)
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
        self._stamp(key, True)
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
        data = self._repo._data
        present = self._key in data
        data[self._key] = b"".join(self._parts)
        self._repo._stamp(self._key, present)
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
        present = key in self._data
        self._data[key] = bytes(data)
        self._stamp(key, present)

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        if key in self._data:
            return False
        self._data[key] = bytes(data)
        self._stamp(key, False)
        return True

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        if self._data.get(key) != expected:
            return False
        self._data[key] = data
        self._stamp(key, True)
        return True
