"""Bundles in an S3 metadata repository (see :mod:`pydatatask.repository.bundles`).

A bundle named ``n`` is the object ``prefix + BUNDLES + n + suffix``. :data:`BUNDLES`
starts with U+212B (ANGSTROM SIGN), which Unicode normalizes to U+00C5: a key is in NFC
(:mod:`pydatatask.keys`), so no key can contain it and no key's object is a bundle's.
Listings of the prefix are recursive and strongly consistent, so one ``ListObjectsV2``
of the prefix shows both the keys stored on their own and the bundles (with their ETags).

Reading another writer's bundle costs a ``GetObject``; what was read is kept by name and
ETag, and what this repository wrote itself is known without reading it back, so a
listing of a prefix whose bundles did not change reads none of them.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from ...errors import CorruptValueError, KeyNotFoundError, RepositoryError
from ...session import resolve
from ..bundles import bundle_holders, bundle_keys, bundle_member, bundle_without

if TYPE_CHECKING:
    from ._bucket import S3BucketRepository

__all__ = ("BUNDLES", "S3Bundles")

log = logging.getLogger("pydatatask.repository")

#: the "directory" of the bundles under a repository's prefix; no valid key starts so
BUNDLES = "\u212b-bundles/"

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")

#: rounds of compare-and-swap when a key leaves a bundle that others change meanwhile
_ROUNDS = 8


class S3Bundles:
    """The bundle half of an S3 metadata repository: mixed into it, over its ``s3``."""

    _bundle_cache: dict[str, tuple[str, dict[str, Any]]]
    _bundles_expected: bool

    if TYPE_CHECKING:  # of the repository it is mixed into

        @property
        def s3(self) -> S3BucketRepository: ...

        def _encode(self, key: str, value: Any) -> bytes: ...
        def _decode(self, key: str, data: bytes) -> Any: ...
        async def _replace_stored_if(self, key: str, expected: Any, value: Any) -> bool: ...

    def _init_bundles(self) -> None:
        self._bundle_cache = {}
        self._bundles_expected = False

    # --- the BundleStore protocol --------------------------------------------------
    @property
    def supports_bundles(self) -> bool:
        """Bundles need recursive listings: not with ``flat=True``."""
        return not self.s3.flat

    def expect_bundles(self) -> None:
        self._bundles_expected = True

    async def create_bundle(self, name: str, bundle: dict[str, Any]) -> bool:
        """One ``PutObject`` with ``If-None-Match``."""
        stored = self._stored_name(name)
        self._bundles_expected = True
        data = self._encode(stored, bundle)
        if not await self.s3._create_bytes(stored, data):
            return False
        self._note_own(stored, bundle)
        return True

    async def get_bundle(self, name: str) -> dict[str, Any] | None:
        """One ``GetObject``."""
        stored = self._stored_name(name)
        try:
            data, etag = await self.s3.read_versioned(stored)
        except KeyNotFoundError:
            self._bundle_cache.pop(name, None)
            return None
        value = self._decode(stored, data)
        if not isinstance(value, dict):
            raise CorruptValueError(key=stored, repository=self.s3.describe(), reason="not a bundle")
        if etag is not None:
            self._bundle_cache[name] = (etag, value)
        return value

    async def replace_bundle_if(self, name: str, expected: dict[str, Any], bundle: dict[str, Any]) -> bool:
        """One ``PutObject`` with ``If-Match`` when ``expected`` is this repository's own
        last write of the bundle; else a ``GetObject`` first."""
        stored = self._stored_name(name)
        if not await self._replace_stored_if(stored, expected, bundle):
            return False
        self._note_own(stored, bundle)
        return True

    async def delete_bundle(self, name: str) -> None:
        """One ``DeleteObject`` (concurrent deletes go together into a ``DeleteObjects``)."""
        stored = self._stored_name(name)
        self._bundle_cache.pop(name, None)
        await self.s3._delete(stored)

    async def delete_unbundled(self, keys: list[str]) -> None:
        """A ``DeleteObject`` for one key (coalesced with others under way), else
        ``DeleteObjects``."""
        if len(keys) == 1:
            await self.s3._delete(keys[0])
        elif keys:
            await self.s3._delete_many(keys)

    async def snapshot(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """One listing of the prefix (and a ``GetObject`` per bundle not known by its ETag)."""
        plain, listed = self._split(await self.s3._scan())
        return set(plain), await self._load(listed)

    # --- for the repository's own reads and writes --------------------------------
    def _stored_name(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            raise RepositoryError(
                f"{self.s3.describe()}: {name!r} is not a bundle name (letters, digits, '-', '_')"
            )
        return BUNDLES + name

    def _note_own(self, stored: str, bundle: dict[str, Any]) -> None:
        """Remember what this repository just stored (its ETag from the write's answer)."""
        own = self.s3._own.get(self.s3.object_name(stored))
        name = stored[len(BUNDLES) :]
        if own is not None:
            self._bundle_cache[name] = (own[0], bundle)
        else:
            self._bundle_cache.pop(name, None)

    def _split(self, stored: dict[str, str | None]) -> tuple[dict[str, str | None], dict[str, str | None]]:
        """A scan's names split into (names of keys, ETags of bundles by name)."""
        plain: dict[str, str | None] = {}
        listed: dict[str, str | None] = {}
        for name, etag in stored.items():
            if name.startswith(BUNDLES):
                listed[name[len(BUNDLES) :]] = etag
                self._bundles_expected = True
            else:
                plain[name] = etag
        return plain, listed

    async def _load(self, listed: dict[str, str | None]) -> dict[str, dict[str, Any]]:
        """The bundles ``listed`` (name: ETag): the known ones from the cache, the others
        read (a ``GetObject`` each, a few at once)."""
        cache = self._bundle_cache
        for name in [n for n in cache if n not in listed]:
            del cache[name]  # gone
        out: dict[str, dict[str, Any]] = {}
        todo = []
        for name, etag in listed.items():
            known = cache.get(name)
            if known is not None and etag is not None and known[0] == etag:
                out[name] = known[1]
            else:
                todo.append(name)
        gate = asyncio.Semaphore(16)

        async def one(name: str) -> None:
            async with gate:
                try:
                    value = await self.get_bundle(name)
                except CorruptValueError as exc:
                    # its keys cannot be told: a claim nobody can judge (the key stays free
                    # of it; the object is left for a person to look at)
                    log.warning("%s: skipping an unreadable bundle: %s", self.s3.describe(), exc)
                    return
            if value is not None:
                out[name] = value

        await asyncio.gather(*(one(n) for n in todo))
        return out

    async def _bundle_index(self) -> dict[str, dict[str, Any]]:
        """Every bundle as stored now: one listing of the bundles' directory only."""
        client = resolve(self.s3.client)
        directory = self.s3.prefix + BUNDLES
        suffix = self.s3.suffix
        cut = len(self.s3.prefix)

        async def scan() -> dict[str, str | None]:
            names: dict[str, str | None] = {}
            paginator = client.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.s3.bucket, Prefix=directory):
                for obj in page.get("Contents", ()):
                    name: str = obj["Key"][cut:]
                    if suffix:
                        if not name.endswith(suffix):
                            continue
                        name = name[: -len(suffix)]
                    names[name] = obj.get("ETag")
            return names

        stored = await self.s3._call(f"listing the bundles of {self.s3.describe()}", scan)
        return await self._load(self._split(stored)[1])

    async def _bundled_values(self, keys: list[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that a bundle holds (as stored now)."""
        if not self._bundles_expected or not keys:
            return {}
        bundles = await self._bundle_index()
        members = bundle_holders(bundles)
        return {k: bundle_member(bundles[members[k]], k) for k in keys if k in members}

    async def _drop_from_bundles(self, keys: list[str]) -> None:
        """Take ``keys`` out of every bundle that holds them (a bundle left empty goes)."""
        if not self._bundles_expected or not keys:
            return
        gone = set(keys)
        bundles = await self._bundle_index()
        for name, bundle in bundles.items():
            if gone.intersection(bundle_keys(bundle)):
                await self._shrink(name, bundle, gone)

    async def _shrink(self, name: str, bundle: dict[str, Any] | None, gone: set[str]) -> bool:
        """Remove the keys ``gone`` from bundle ``name`` (``bundle``: as last seen), by
        compare-and-swap, again on a change by someone else; whether it changed."""
        for _ in range(_ROUNDS):
            if bundle is None:
                return False
            held = bundle_keys(bundle)
            if not gone.intersection(held):
                return False
            rest = [k for k in held if k not in gone]
            smaller = bundle_without(bundle, rest)
            if await self.replace_bundle_if(name, bundle, smaller):
                if not rest:
                    await self.delete_bundle(name)  # nobody adds keys to a bundle: safe
                return True
            bundle = await self.get_bundle(name)
        raise RepositoryError(
            f"{self.s3.describe()}: bundle {name!r} kept changing; {sorted(gone)[:3]} not removed"
        )

    async def _move_out(self, key: str, expected: Any, data: bytes) -> bool:
        """``replace_if`` of a key a bundle holds: the key gets an object of its own (its new
        value, created only if absent) and leaves its bundle (compare-and-swap on the bundle
        as found, whose member must be ``expected``); if the bundle changed meanwhile, the
        object is removed again and the answer is False (someone else changed the key)."""
        if not self._bundles_expected:
            return False
        bundles = await self._bundle_index()
        name = bundle_holders(bundles).get(key)
        if name is None or bundle_member(bundles[name], key) != expected:
            return False
        if not await self.s3._create_bytes(key, data):
            return False
        bundle = bundles[name]
        held = bundle_keys(bundle)
        rest = [k for k in held if k != key]
        smaller = bundle_without(bundle, rest)
        try:
            moved = await self.replace_bundle_if(name, bundle, smaller)
        except BaseException:
            await asyncio.shield(self.s3._delete(key))
            raise
        if not moved:
            await self.s3._delete(key)
            return False
        if not rest:
            await self.delete_bundle(name)
        return True
