"""The storage contract: :class:`Repository`, :class:`MetadataRepository`, :class:`BlobRepository`.

A repository maps keys (see :mod:`pydatatask.keys`) to values. It knows nothing about
tasks or scheduling. Backends subclass one of the two value kinds and implement a handful
of ``_``-prefixed coroutines; the public methods validate keys and enforce the shared
semantics (missing keys raise :class:`~pydatatask.errors.KeyNotFoundError`, writes are
atomic, deletes of absent keys are silent).

Corrupt values in bulk reads: a metadata backend's ``_get_many`` returns, for a key whose
stored value does not decode, the :class:`~pydatatask.errors.CorruptValueError` *instance*
as its value (built with :meth:`MetadataRepository._corrupt`, which names the repository,
the key, where the value is stored and the parse error). Legitimate values are JSON-like,
so an exception instance cannot be one. The public ``get_many``/``items`` split them out:
they raise the first error, or pass each to ``on_corrupt`` and return the other values.
One bad value never hides the others, and never arrives wrapped in an exception group.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from functools import partial
from types import TracebackType
from typing import Any, Literal, Protocol, TypeVar, overload

from ..errors import CorruptValueError, InvalidKeyError, KeyNotFoundError, UnsupportedOperationError
from ..keys import filter_valid_keys, validate_key
from .journal import _current as _journal

__all__ = (
    "Repository",
    "MetadataRepository",
    "BlobRepository",
    "BlobReader",
    "BlobWriter",
    "BlobReadStream",
    "BlobWriteStream",
)

log = logging.getLogger("pydatatask.repository")

#: how many single-key requests the default bulk methods keep in flight at once
BULK_CONCURRENCY = 16

_T = TypeVar("_T")


async def _bounded(calls: Iterable[Callable[[], Awaitable[_T]]], limit: int = BULK_CONCURRENCY) -> list[_T]:
    """Await every call, at most ``limit`` at once, and return their results in order."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Callable[[], Awaitable[_T]]) -> _T:
        async with gate:
            return await call()

    return list(await asyncio.gather(*(one(c) for c in calls)))


T = TypeVar("T")

DEFAULT_CHUNK = 1 << 20


class Repository(ABC):
    """A set of keys, each with a value; the base of every backend.

    Subclasses implement :meth:`_list` (all stored names, cheap, one round trip where the
    backend allows), :meth:`_contains` and :meth:`_delete`. Listing goes through
    :meth:`keys`, which drops stored names that are not valid keys (with one warning per
    repository) so a job never sees them.
    """

    _warned_invalid: bool = False

    # --- listing -------------------------------------------------------------
    async def keys(self) -> set[str]:
        """Return every key in the repository (one bulk listing)."""
        good, bad = self._split_names(await self._list())
        if bad:
            self._warn_invalid(bad)
        return good

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iter_keys()

    async def _iter_keys(self) -> AsyncIterator[str]:
        for key in sorted(await self.keys()):
            yield key

    async def versions(self) -> dict[str, str | None]:
        """Every key with the version of its value, from one listing: an opaque string that
        changes whenever the value is replaced (an S3 ETag, a file's size and mtime), or
        None where this backend cannot tell. Never one request per key."""
        return await self._list_versions()

    async def _list_versions(self) -> dict[str, str | None]:
        return dict.fromkeys(await self.keys())

    def _valid_versions(self, stored: dict[str, str | None]) -> dict[str, str | None]:
        """``stored`` (every stored name with its version) without the names that are not
        keys of this repository, warned about as :meth:`keys` does: for ``_list_versions``."""
        good, bad = self._split_names(stored)
        if bad:
            self._warn_invalid(bad)
        return {name: stored[name] for name in good}

    def _split_names(self, names: Iterable[str]) -> tuple[set[str], list[str]]:
        """Stored names split into (keys, names that are not keys of this repository):
        the key rule, then this backend's own (:meth:`_check_key`)."""
        good, bad = filter_valid_keys(names)
        if type(self)._check_key is not Repository._check_key and not self._keys_pass_check(good):
            for name in list(good):
                try:
                    self._check_key(name)
                except InvalidKeyError:
                    good.discard(name)
                    bad.append(name)
        return good, bad

    def _keys_pass_check(self, keys: set[str]) -> bool:
        """Whether every one of ``keys`` (valid keys) certainly passes :meth:`_check_key`,
        looked at all together (a listing's names); False: each is checked on its own.
        Backends with a narrower rule may answer for the common case at once."""
        return False

    def _warn_invalid(self, names: list[str]) -> None:
        if not self._warned_invalid:
            self._warned_invalid = True
            sample = ", ".join(repr(n) for n in names[:5])
            log.warning(
                "%s holds %d name(s) that are not valid keys and are skipped: %s%s",
                self.describe(),
                len(names),
                sample,
                " ..." if len(names) > 5 else "",
            )

    # --- single keys ---------------------------------------------------------
    async def contains(self, key: str) -> bool:
        """Return whether ``key`` is present."""
        return await self._contains(self._key(key))

    async def delete(self, key: str) -> None:
        """Remove ``key``; do nothing if it is absent."""
        await self._delete(self._key(key))

    async def delete_many(self, keys: Iterable[str]) -> None:
        """Remove every key of ``keys`` (absent ones are ignored).

        Backends with a bulk request (S3 ``DeleteObjects``, a Mongo ``delete_many``)
        override ``_delete_many``; the default deletes key by key, a few at once.
        """
        checked = [self._key(k) for k in keys]
        if checked:
            await self._delete_many(checked)

    async def _delete_many(self, keys: list[str]) -> None:
        """Delete the (checked) ``keys``; the default calls :meth:`_delete` for each."""
        await _bounded([partial(self._delete, k) for k in keys])

    def _key(self, key: object) -> str:
        """``key`` if it follows the key rule and this backend's own, else
        :class:`~pydatatask.errors.InvalidKeyError`."""
        return self._check_key(validate_key(key))

    def _check_key(self, key: str) -> str:
        """Return a valid ``key`` if this backend can store it faithfully, else raise
        :class:`~pydatatask.errors.InvalidKeyError` naming the backend's own rule.

        The default admits every valid key. Backends with a narrower rule (file name
        lengths, a tag grammar) override it; listings skip stored names it refuses.
        """
        return key

    # --- description and lifecycle ------------------------------------------
    def describe(self) -> str:
        """A short human description for status output, e.g. ``files at ./out (*.txt)``."""
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.describe()}>"

    async def validate(self, create: bool = False) -> None:  # noqa: B027 - optional hook
        """Check the backing store is reachable (and create it if ``create``).

        Called once when a pipeline opens. The default does nothing.
        """

    @property
    def is_writable(self) -> bool:
        """Whether writes and deletes are allowed."""
        return True

    # --- backend hooks --------------------------------------------------------
    @abstractmethod
    async def _list(self) -> Iterable[str]:
        """Return every stored name (valid or not)."""

    async def _contains(self, key: str) -> bool:
        """Whether ``key`` is stored; backends with a cheaper lookup than a listing override it."""
        return key in await self._list()

    @abstractmethod
    async def _delete(self, key: str) -> None:
        """Delete ``key`` if present."""


class MetadataRepository(Repository):
    """A repository of structured values (JSON-like: dict, list, str, int, float, bool, None)."""

    async def get(self, key: str) -> Any:
        """Return the value of ``key``; raise :class:`~pydatatask.errors.KeyNotFoundError` if absent."""
        return await self._get(self._key(key))

    async def put(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` atomically, replacing any old value."""
        key = self._key(key)
        if (journal := _journal.get()) is not None:
            await journal.note(self, key)
        await self._put(key, value)

    async def create(self, key: str, value: Any) -> bool:
        """Store ``value`` only if ``key`` is absent, atomically; return whether it was stored.

        Concurrent callers on one key: exactly one gets ``True``. Used for job claims.
        """
        key = self._key(key)
        created = await self._create(key, value)
        if created and (journal := _journal.get()) is not None:
            await journal.note(self, key)  # only when stored: an existing key is someone else's
        return created

    async def put_many(self, values: Mapping[str, Any]) -> None:
        """Store every ``{key: value}`` of ``values``, each atomically (not all together).

        Backends with a bulk write (a Mongo ``bulk_write``) override ``_put_many``
        and store them in one round trip; the default puts key by key, a few at once. On
        an error some values may be stored and others not.
        """
        checked = {self._key(k): v for k, v in values.items()}
        if not checked:
            return
        if (journal := _journal.get()) is not None:
            for key in checked:
                await journal.note(self, key)
        await self._put_many(checked)

    async def create_many(self, values: Mapping[str, Any]) -> set[str]:
        """Store each ``{key: value}`` of ``values`` whose key is absent; return the keys
        stored. Each key is created as by :meth:`create` (of concurrent callers on one key,
        exactly one stores it); used to claim a batch of jobs at once.
        """
        checked = {self._key(k): v for k, v in values.items()}
        if not checked:
            return set()
        created = await self._create_many(checked)
        if created and (journal := _journal.get()) is not None:
            for key in created:
                await journal.note(self, key)
        return created

    async def _put_many(self, values: dict[str, Any]) -> None:
        """Store the (checked) ``values``; the default calls :meth:`_put` for each."""
        await _bounded([partial(self._put, k, v) for k, v in values.items()])

    async def _create_many(self, values: dict[str, Any]) -> set[str]:
        """Create the (checked) ``values`` whose key is absent, return the keys created; the
        default calls :meth:`_create` for each."""
        items = list(values.items())
        made = await _bounded([partial(self._create, k, v) for k, v in items])
        return {k for (k, _v), ok in zip(items, made, strict=True) if ok}

    async def _replace_many_if(self, changes: dict[str, tuple[Any, Any]]) -> set[str]:
        """Replace the (checked) keys of ``changes`` whose value is the expected one; return
        the keys replaced. The default calls :meth:`_replace_if` for each."""
        items = list(changes.items())
        done = await _bounded([partial(self._replace_if, k, old, new) for k, (old, new) in items])
        return {k for (k, _change), ok in zip(items, done, strict=True) if ok}

    async def replace_if(self, key: str, expected: Any, value: Any) -> bool:
        """Atomically replace the value of ``key`` with ``value`` if it still equals ``expected``.

        Returns False (and changes nothing) if the key is absent or holds something else.
        Of several concurrent callers with the same ``expected`` at most one succeeds. Used
        to take over the claim of a dead scheduler, and for claim heartbeats.
        """
        key = self._key(key)
        replaced = await self._replace_if(key, expected, value)
        if replaced and (journal := _journal.get()) is not None:
            await journal.note(self, key)
        return replaced

    async def replace_many_if(self, changes: Mapping[str, tuple[Any, Any]]) -> set[str]:
        """:meth:`replace_if` for several keys: ``changes`` maps each key to ``(expected,
        value)``; returns the keys replaced. Each key is replaced as by :meth:`replace_if`
        (not all together); used to renew the claims of a batch at once.

        Backends with a bulk write (a Mongo ``bulk_write``) override ``_replace_many_if``
        and make it a fixed number of round trips; the default replaces key by key, a few
        at once.
        """
        checked = {self._key(k): v for k, v in changes.items()}
        if not checked:
            return set()
        replaced = await self._replace_many_if(checked)
        if replaced and (journal := _journal.get()) is not None:
            for key in sorted(replaced):
                await journal.note(self, key)
        return replaced

    async def get_many(
        self, keys: Iterable[str], *, on_corrupt: Callable[[CorruptValueError], None] | None = None
    ) -> dict[str, Any]:
        """Return ``{key: value}`` for the given keys that exist (absent keys are left out).

        A value that does not decode raises :class:`~pydatatask.errors.CorruptValueError`
        (the first one found), unless ``on_corrupt`` is given: then it is called with the
        error of each such key, the key is left out and the other values are returned.
        """
        return _split_corrupt(await self._get_many([self._key(k) for k in keys]), on_corrupt)

    async def items(
        self, *, on_corrupt: Callable[[CorruptValueError], None] | None = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """Iterate over ``(key, value)`` pairs, in key order.

        A value that does not decode is handled as by :meth:`get_many`.
        """
        keys = sorted(await self.keys())
        for start in range(0, len(keys), 1000):
            batch = _split_corrupt(await self._get_many(keys[start : start + 1000]), on_corrupt)
            for key in keys[start : start + 1000]:
                if key in batch:
                    yield key, batch[key]

    def _location(self, key: str) -> str:
        """Where the value of ``key`` is stored, for messages (a path, an URL, a document id).

        Backends override it; the default names the key in :meth:`describe`.
        """
        return f"key {key!r} in {self.describe()}"

    def _corrupt(self, key: str, reason: BaseException | str) -> CorruptValueError:
        """The :class:`~pydatatask.errors.CorruptValueError` for ``key`` whose value does not decode."""
        text = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        return CorruptValueError(
            key=key, repository=self.describe(), location=self._location(key), reason=text
        )

    @abstractmethod
    async def _get(self, key: str) -> Any: ...

    @abstractmethod
    async def _put(self, key: str, value: Any) -> None: ...

    async def _create(self, key: str, value: Any) -> bool:
        raise UnsupportedOperationError(f"{self.describe()} cannot create keys exclusively")

    async def _replace_if(self, key: str, expected: Any, value: Any) -> bool:
        raise UnsupportedOperationError(f"{self.describe()} cannot replace values conditionally")

    async def _get_many(self, keys: list[str]) -> dict[str, Any]:
        """``{key: value}`` of the keys present; a value that does not decode is given as
        its :class:`CorruptValueError` instance (the public methods split them out)."""
        out: dict[str, Any] = {}
        for key in keys:
            try:
                out[key] = await self._get(key)
            except KeyNotFoundError:
                pass
            except CorruptValueError as exc:
                out[key] = exc
        return out


def _split_corrupt(
    values: dict[str, Any], on_corrupt: Callable[[CorruptValueError], None] | None
) -> dict[str, Any]:
    """``values`` without the keys whose value is a :class:`CorruptValueError`: the first
    is raised when ``on_corrupt`` is None, otherwise each is passed to it."""
    bad = [k for k, v in values.items() if isinstance(v, CorruptValueError)]
    if not bad:
        return values
    if on_corrupt is None:
        raise values[bad[0]]
    for k in bad:
        on_corrupt(values.pop(k))
    return values


class BlobReadStream(Protocol):
    """What ``open(key, "rb")`` yields."""

    async def read(self, n: int = -1) -> bytes: ...

    def __aiter__(self) -> AsyncIterator[bytes]: ...


class BlobWriteStream(Protocol):
    """What ``open(key, "wb")`` yields."""

    async def write(self, data: bytes) -> int: ...


class BlobReader(ABC):
    """A backend's read stream. ``read(n)`` returns at most ``n`` bytes; ``b""`` at the end."""

    @abstractmethod
    async def read(self, n: int = -1) -> bytes: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release the underlying resource."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        while chunk := await self.read(DEFAULT_CHUNK):
            yield chunk


class BlobWriter(ABC):
    """A backend's write stream. Nothing is visible until :meth:`commit`; :meth:`abort` discards."""

    @abstractmethod
    async def write(self, data: bytes) -> int: ...

    @abstractmethod
    async def commit(self) -> None:
        """Make the written bytes visible under the key, atomically."""

    @abstractmethod
    async def abort(self) -> None:
        """Discard everything written; leave no trace. Must not raise for a clean state."""


class _ReadContext:
    def __init__(self, opener: Callable[[], Any]) -> None:
        self._opener = opener
        self._reader: BlobReader | None = None

    async def __aenter__(self) -> BlobReader:
        self._reader = await self._opener()
        return self._reader

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            await self._reader.aclose()


class _WriteContext:
    """Commits on clean exit; aborts when the body raised (cancellation included)."""

    def __init__(self, opener: Callable[[], Any], repository: Repository, key: str) -> None:
        self._opener = opener
        self._writer: BlobWriter | None = None
        self._repository = repository
        self._key = key

    async def __aenter__(self) -> BlobWriter:
        self._writer = await self._opener()
        return self._writer

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._writer is not None
        if exc_type is None:
            try:
                if (journal := _journal.get()) is not None:
                    await journal.note(self._repository, self._key)  # before it can become visible
                await self._writer.commit()
            except BaseException:
                await self._writer.abort()
                raise
        else:
            await self._writer.abort()


class BlobRepository(Repository):
    """A repository of byte strings, with streaming access.

    ``async with repo.open(key, "wb") as f: await f.write(b"...")`` makes the value visible
    only when the block ends without an exception; otherwise nothing is left behind.
    """

    @overload
    def open(self, key: str, mode: Literal["rb"] = "rb") -> _ReadContext: ...

    @overload
    def open(self, key: str, mode: Literal["wb"]) -> _WriteContext: ...

    def open(self, key: str, mode: Literal["rb", "wb"] = "rb") -> _ReadContext | _WriteContext:
        """Open ``key`` for streaming: ``"rb"`` to read, ``"wb"`` to write atomically."""
        key = self._key(key)
        if mode == "rb":
            return _ReadContext(lambda: self._open_reader(key))
        if mode == "wb":
            return _WriteContext(lambda: self._open_writer(key), self, key)
        raise ValueError(f"mode must be 'rb' or 'wb', not {mode!r}")

    async def read_bytes(self, key: str) -> bytes:
        """Return the whole value of ``key``."""
        async with self.open(key, "rb") as f:
            return await f.read()

    async def write_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically."""
        async with self.open(key, "wb") as f:
            await f.write(data)

    async def read_text(self, key: str, encoding: str = "utf-8") -> str:
        """Return the value of ``key`` decoded as text."""
        return (await self.read_bytes(key)).decode(encoding)

    async def write_text(self, key: str, text: str, encoding: str = "utf-8") -> None:
        """Store ``text`` under ``key`` atomically."""
        await self.write_bytes(key, text.encode(encoding))

    async def write_many_bytes(self, values: Mapping[str, bytes]) -> None:
        """Store every ``{key: data}`` of ``values``, each atomically (not all together).

        Backends that can share work between the values (one directory sync for many
        files) override ``_write_many_bytes``; the default writes key by key, a few at
        once. On an error some values may be stored and others not.
        """
        checked = {self._key(k): bytes(v) for k, v in values.items()}
        if not checked:
            return
        if (journal := _journal.get()) is not None:
            for key in checked:
                await journal.note(self, key)
        await self._write_many_bytes(checked)

    async def create_many_bytes(self, values: Mapping[str, bytes]) -> set[str]:
        """Store each ``{key: data}`` of ``values`` whose key is absent, as by
        :meth:`create_bytes`; return the keys stored."""
        checked = {self._key(k): bytes(v) for k, v in values.items()}
        if not checked:
            return set()
        created = await self._create_many_bytes(checked)
        if created and (journal := _journal.get()) is not None:
            for key in created:
                await journal.note(self, key)
        return created

    async def _write_many_bytes(self, values: dict[str, bytes]) -> None:
        """Store the (checked) ``values``; the default calls :meth:`write_bytes` for each."""
        await _bounded([partial(self.write_bytes, k, v) for k, v in values.items()])

    async def _create_many_bytes(self, values: dict[str, bytes]) -> set[str]:
        """Create the (checked) ``values`` whose key is absent; the default calls
        :meth:`_create_bytes` for each."""
        items = list(values.items())
        made = await _bounded([partial(self._create_bytes, k, v) for k, v in items])
        return {k for (k, _v), ok in zip(items, made, strict=True) if ok}

    async def create_bytes(self, key: str, data: bytes) -> bool:
        """Store ``data`` only if ``key`` is absent, atomically; return whether it was stored."""
        key = self._key(key)
        created = await self._create_bytes(key, data)
        if created and (journal := _journal.get()) is not None:
            await journal.note(self, key)
        return created

    async def replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        """Atomically replace the value of ``key`` with ``data`` if it is still ``expected``."""
        key = self._key(key)
        replaced = await self._replace_bytes_if(key, bytes(expected), bytes(data))
        if replaced and (journal := _journal.get()) is not None:
            await journal.note(self, key)
        return replaced

    @abstractmethod
    async def _open_reader(self, key: str) -> BlobReader:
        """Open ``key`` for reading; raise :class:`~pydatatask.errors.KeyNotFoundError` if absent."""

    @abstractmethod
    async def _open_writer(self, key: str) -> BlobWriter: ...

    async def _create_bytes(self, key: str, data: bytes) -> bool:
        raise UnsupportedOperationError(f"{self.describe()} cannot create keys exclusively")

    async def _replace_bytes_if(self, key: str, expected: bytes, data: bytes) -> bool:
        raise UnsupportedOperationError(f"{self.describe()} cannot replace values conditionally")
