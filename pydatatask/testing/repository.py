"""Abstract test classes for repositories (re-exported by ``pydatatask.testing``)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import tracemalloc
import unicodedata
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from ..errors import (
    CorruptValueError,
    InvalidKeyError,
    KeyNotFoundError,
    ReadOnlyRepositoryError,
    RepositoryError,
    UnsupportedOperationError,
)
from ..keys import is_valid_key
from ..repository.base import BlobRepository, MetadataRepository, Repository
from ..repository.journal import WriteJournal, journaling, visible_keys

__all__ = (
    "RepositoryReadTests",
    "RepositoryTests",
    "MetadataRepositoryReadTests",
    "MetadataRepositoryTests",
    "BlobRepositoryReadTests",
    "BlobRepositoryTests",
    "ReadOnlyRepositoryTests",
    "invalid_keys",
    "odd_valid_keys",
    "path_keys",
    "long_key",
    "adversarial_keys",
)


def invalid_keys() -> list[Any]:
    """Keys every repository must refuse with :class:`~pydatatask.errors.InvalidKeyError`."""
    return [
        "",
        "..",
        ".",
        "../x",
        "a/../b",
        "a/./b",
        "a/..",
        "a//b",
        "/abs",
        "trailing/",
        "x" * 1025,
        "\u00e9" * 513,  # 1,026 bytes in UTF-8
        "nul\0byte",
        "new\nline",
        "tab\there",
        "cr\rx",
        "esc\x1b[31m",
        "nbsp\u00a0x",
        "zero\u200bwidth",
        "cafe\u0301",  # not NFC (NFC is 'caf\u00e9')
        "lone\ud800surrogate",
        42,
        None,
    ]


def odd_valid_keys() -> list[str]:
    """Unusual flat keys every repository must store and list faithfully."""
    return [
        "moby-dick_v2.txt",
        "a",
        "0",
        "_",
        "x" * 100,
        "UPPER.lower",
        "a..b",
        "trailing.",
        "trailing-",
        "many.dots.in.it.tar.gz",
        "MiXeD_Case-123",
    ]


def path_keys() -> list[str]:
    """Valid keys beyond the flat ASCII ones: nested paths, spaces, non-ASCII letters, shell
    and template syntax, and a key of exactly 1,024 UTF-8 bytes. Every backend stores each
    of them faithfully or refuses it with :class:`~pydatatask.errors.InvalidKeyError`
    naming its own rule. No key of the list is a prefix directory of another (see
    ``test_key_and_prefix``)."""
    return [
        "images/2024/01/IMG 0001.jpg",
        "a/b",
        "a/c/d/e/f/g/h/i",
        "sp ace",
        " leading and trailing spaces ",
        "caf\u00e9",
        "corpus/\u00c9luard/po\u00e8me.txt",
        "\u65e5\u672c\u8a9e/\u30d5\u30a1\u30a4\u30eb",
        "emoji \U0001f600",
        "semi;colon & pipe | star * question?",
        "$(reboot) `id` ${HOME}",
        "{{ jinja }} {% if %} {# c #}",
        "quotes 'single' \"double\"",
        "plus+percent%20hash#amp&eq=",
        "back\\slash",
        "-flag",
        "~tilde/colon:name",
        "a..b/c.",
        "x" * 200,
        long_key(),
    ]


_ADVERSARIAL_PIECES = [
    "a",
    "B",
    "0",
    ".",
    "..",
    "/",
    "//",
    "../",
    "/..",
    " ",
    "-",
    "_",
    "~",
    ".hidden",
    "\0",
    "\n",
    "\r",
    "\t",
    "\x1b",
    "\x7f",
    "\u00e9",
    "e\u0301",  # NFD
    "\u00c9",
    "\u200b",
    "\u00a0",
    "\u2028",
    "\U0001f600",
    "\u65e5",
    "$(touch x)",
    "`id`",
    "${HOME}",
    "; rm -rf ~",
    "| cat",
    "&&",
    "'",
    '"',
    "*",
    "?",
    "[a]",
    "{{ 7*7 }}",
    "{% raw %}",
    "{#",
    "%2e%2e",
    "%2F",
    "+",
    "\\",
    ":",
    "#",
]


def adversarial_keys() -> Any:
    """A hypothesis strategy of hostile keys (valid and invalid): traversal, empty
    segments, control characters, shell and template syntax, NFC/NFD and case twins."""
    from hypothesis import strategies as st

    pieces = st.lists(st.sampled_from(_ADVERSARIAL_PIECES), min_size=1, max_size=8).map("".join)
    return st.one_of(pieces, pieces.map(str.upper), st.text(max_size=24))


def long_key() -> str:
    """A valid key of exactly 1,024 UTF-8 bytes, in segments of at most 250 bytes."""
    key = "/".join(["k" * 250] * 4) + "/" + "\u00e9" * 10
    assert len(key.encode()) == 1024
    return key


class RepositoryReadTests:
    """The reading half of the contract every repository keeps: listing, ``contains``,
    odd keys, invalid keys refused. Values are stored through :meth:`store`, so a view
    that refuses writes (read-only, filter, and, ...) runs these tests by storing into its
    underlying repository instead.

    Subclasses provide the ``repo`` fixture; the kind-specific suites provide :meth:`store`.
    """

    async def store(self, repo: Any, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` so that ``repo`` holds it (overridden by the suites,
        and by views that are read through but written elsewhere)."""
        raise NotImplementedError

    def sample(self, key: Any) -> Any:
        """Some value to store under ``key``."""
        return {"key": key}

    async def make(self, repo: Any, key: str) -> None:
        """Store some value under ``key``."""
        await self.store(repo, key, self.sample(key))

    async def remove(self, repo: Any, key: str) -> None:
        """Remove ``key`` so that ``repo`` no longer holds it (default: ``repo.delete``)."""
        await repo.delete(key)

    async def raw_names(self, repo: Any) -> set[str] | None:
        """Names physically present in the store (including temporaries), or None if unknown."""
        return None

    # ------------------------------------------------------------------
    @pytest.mark.asyncio
    async def test_empty_listing(self, repo: Repository) -> None:
        assert await repo.keys() == set()
        assert [k async for k in repo] == []

    @pytest.mark.asyncio
    async def test_listing_after_writes_and_deletes(self, repo: Repository) -> None:
        for key in ("a", "b", "c"):
            await self.make(repo, key)
        assert await repo.keys() == {"a", "b", "c"}
        assert sorted([k async for k in repo]) == ["a", "b", "c"]
        await self.remove(repo, "b")
        assert await repo.keys() == {"a", "c"}

    @pytest.mark.asyncio
    async def test_contains(self, repo: Repository) -> None:
        assert not await repo.contains("k1")
        await self.make(repo, "k1")
        assert await repo.contains("k1")
        assert not await repo.contains("k2")

    @pytest.mark.asyncio
    async def test_odd_valid_keys(self, repo: Repository) -> None:
        keys = odd_valid_keys()
        for key in keys:
            await self.make(repo, key)
        assert await repo.keys() == set(keys)
        for key in keys:
            assert await repo.contains(key)

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", invalid_keys(), ids=repr)
    async def test_invalid_keys_refused_by_contains(self, repo: Repository, key: Any) -> None:
        with pytest.raises(InvalidKeyError):
            await repo.contains(key)
        assert await repo.keys() == set()

    @pytest.mark.asyncio
    async def test_describe(self, repo: Repository) -> None:
        text = repo.describe()
        assert isinstance(text, str) and 0 < len(text) < 300

    # --- path keys and versions ---------------------------------------------
    #: whether the backend stores nested keys, spaces and non-ASCII names (the first nine
    #: keys of :func:`path_keys`; the others it may refuse by its own rule); False for a
    #: backend whose rule is narrower (Docker tags), which must then refuse them with
    #: InvalidKeyError
    stores_path_keys = True
    #: whether :meth:`~pydatatask.repository.base.Repository.versions` tells versions
    #: (False: None for every key)
    knows_versions = True

    def admits(self, repo: Repository, key: str) -> bool:
        """Whether ``repo``'s own rule admits the valid ``key`` (else it must refuse it)."""
        try:
            repo._check_key(key)
        except InvalidKeyError:
            return False
        return True

    async def read_back(self, repo: Any, key: str) -> Any:
        """The value stored under ``key``, through every read path of the kind (the
        kind-specific suites override it)."""
        assert await repo.contains(key)
        return self.sample(key)

    async def outside(self, repo: Any) -> set[str] | None:
        """Names stored next to the repository's root or prefix, outside it (None if
        unknown): the adversarial key tests check that no write lands there."""
        return None

    @pytest.mark.asyncio
    async def test_path_keys_round_trip(self, repo: Repository) -> None:
        keys = path_keys()
        stored = [k for k in keys if self.admits(repo, k)]
        if self.stores_path_keys:  # nested, spaces, non-ASCII: the first ones of the list
            assert set(keys[:9]) <= set(stored), set(keys[:9]) - set(stored)
        for key in keys:
            if key in stored:
                await self.make(repo, key)
            else:
                with pytest.raises(InvalidKeyError):
                    await self.make(repo, key)
                with pytest.raises(InvalidKeyError):
                    await repo.contains(key)
        listed = await repo.keys()
        assert listed == set(stored), (sorted(listed - set(stored)), sorted(set(stored) - listed))
        assert sorted([k async for k in repo]) == sorted(stored)
        for key in stored:
            assert await self.read_back(repo, key) == self.sample(key), key
        for key in stored:
            await self.remove(repo, key)
            assert not await repo.contains(key)
        assert await repo.keys() == set()

    @pytest.mark.asyncio
    async def test_key_and_prefix(self, repo: Repository) -> None:
        """A key ``p`` and a key ``p/q``: both stored, or the second (either order) refused
        with a clear :class:`~pydatatask.errors.RepositoryError` (one line) that leaves
        the first intact."""
        if not self.admits(repo, "p/q"):
            return
        for first, second in (("p", "p/q"), ("r/s", "r")):
            await self.make(repo, first)
            try:
                await self.make(repo, second)
            except RepositoryError as exc:
                assert "\n" not in str(exc) and repr(second) in str(exc), str(exc)
                assert await repo.keys() >= {first} and second not in await repo.keys()
            else:
                assert await self.read_back(repo, second) == self.sample(second)
            assert await self.read_back(repo, first) == self.sample(first)

    @pytest.mark.asyncio
    async def test_versions(self, repo: Repository) -> None:
        keys = ["v1", "v2", "nested/v 3/\u00e9"] if self.stores_path_keys else ["v1", "v2", "v3"]
        assert await repo.versions() == {}
        for key in keys:
            await self.make(repo, key)
        first = await repo.versions()
        assert set(first) == set(keys) == await repo.keys()
        if not self.knows_versions:
            assert set(first.values()) == {None}
            return
        assert all(isinstance(v, str) and v for v in first.values()), first
        assert await repo.versions() == first  # unchanged while nothing is written
        await self.replace(repo, keys[0])
        second = await repo.versions()
        assert second[keys[0]] != first[keys[0]]
        assert {k: second[k] for k in keys[1:]} == {k: first[k] for k in keys[1:]}
        await self.remove(repo, keys[1])
        third = await repo.versions()
        assert set(third) == {keys[0], keys[2]}
        await self.make(repo, keys[1])
        assert (await repo.versions())[keys[1]] is not None

    #: whether two keys differing only in case are two keys (False for a store that folds
    #: case, such as a case-insensitive file system: then the twins must not both list)
    case_sensitive = True

    @pytest.mark.asyncio
    @settings(
        max_examples=50,
        deadline=None,
        # one fresh repository per test, reused (and emptied) by its examples; each
        # backend's class is its own test, so one method runs on several "executors"
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.differing_executors],
    )
    @given(key=adversarial_keys())
    async def test_adversarial_keys(self, repo: Repository, key: str) -> None:
        """Traversal, empty segments, control characters, shell and template syntax,
        non-NFC text: refused with InvalidKeyError, or stored and read back exactly under
        that key; and nothing ever lands outside the repository's root or prefix."""
        before = await self.outside(repo)
        if is_valid_key(key) and self.admits(repo, key):
            await self.make(repo, key)
            listed = await repo.keys()
            assert key in listed, (key, listed)
            assert await self.read_back(repo, key) == self.sample(key)
            for name in listed:  # whatever is listed reads back under that very key
                assert await repo.contains(name), name
            await self.remove(repo, key)
            assert key not in await repo.keys()
        else:
            for call in (repo.contains, repo.delete, lambda k: self.make(repo, k)):
                with pytest.raises(InvalidKeyError):
                    await call(key)
        assert await repo.keys() == set()
        assert await self.outside(repo) == before

    @pytest.mark.asyncio
    async def test_normalization_and_case_twins(self, repo: Repository) -> None:
        nfc = "twins/caf\u00e9"
        nfd = unicodedata.normalize("NFD", nfc)
        with pytest.raises(InvalidKeyError, match="NFC"):
            await self.make(repo, nfd)
        pairs = [("Readme", "README"), ("twins/\u00c9t\u00e9", "twins/\u00e9t\u00e9")]
        for lower, upper in pairs:
            if not (self.admits(repo, lower) and self.admits(repo, upper)):
                continue
            await self.make(repo, lower)
            await self.make(repo, upper)
            listed = await repo.keys()
            if self.case_sensitive:
                assert {lower, upper} <= listed
                assert await self.read_back(repo, lower) == self.sample(lower)
                assert await self.read_back(repo, upper) == self.sample(upper)
            for name in listed:
                assert await repo.contains(name), name
        if self.admits(repo, nfc):
            await self.make(repo, nfc)
            assert nfc in await repo.keys() and nfd not in await repo.keys()

    async def replace(self, repo: Any, key: str) -> None:
        """Store a different value under the existing ``key``."""
        value = self.sample(key)
        await self.store(repo, key, value + b" replaced" if isinstance(value, bytes) else {"replaced": value})


class RepositoryTests(RepositoryReadTests):
    """Behaviour shared by every writable repository: the read tests, and writes and
    deletes through the repository itself."""

    @pytest.mark.asyncio
    async def test_delete_missing_key_is_silent(self, repo: Repository) -> None:
        await repo.delete("never-there")
        await self.make(repo, "k")
        await repo.delete("k")
        await repo.delete("k")
        assert not await repo.contains("k")

    @pytest.mark.asyncio
    async def test_delete_many(self, repo: Repository) -> None:
        for key in ("a", "b", "c"):
            await self.make(repo, key)
        await repo.delete_many(["a", "c", "never-there"])
        assert await repo.keys() == {"b"}
        await repo.delete_many([])
        with pytest.raises(InvalidKeyError):
            await repo.delete_many(["b", "../b"])
        assert await repo.keys() == {"b"}  # nothing deleted when one key is invalid

    @pytest.mark.asyncio
    @pytest.mark.parametrize("key", invalid_keys(), ids=repr)
    async def test_invalid_keys_refused(self, repo: Repository, key: Any) -> None:
        with pytest.raises(InvalidKeyError):
            await repo.contains(key)
        with pytest.raises(InvalidKeyError):
            await repo.delete(key)
        with pytest.raises(InvalidKeyError):
            await self.make(repo, key)
        assert await repo.keys() == set()


class ReadOnlyRepositoryTests:
    """Mix in with a read suite for a repository that refuses every write and delete."""

    @pytest.mark.asyncio
    async def test_writes_and_deletes_refused(self, repo: Repository) -> None:
        await self.make(repo, "k")  # type: ignore[attr-defined]
        assert not repo.is_writable
        before = await repo.get("k") if isinstance(repo, MetadataRepository) else None
        with pytest.raises(ReadOnlyRepositoryError):
            await repo.delete("k")
        if isinstance(repo, MetadataRepository):
            with pytest.raises(ReadOnlyRepositoryError):
                await repo.put("k", {"changed": True})
            with pytest.raises(ReadOnlyRepositoryError):
                await repo.put("new", {"changed": True})
            assert await repo.get("k") == before
        if isinstance(repo, BlobRepository):
            before = await repo.read_bytes("k")
            with pytest.raises(ReadOnlyRepositoryError):
                await repo.write_bytes("k", b"changed")
            with pytest.raises(ReadOnlyRepositoryError):
                async with repo.open("new", "wb") as f:
                    await f.write(b"changed")
            assert await repo.read_bytes("k") == before
        assert await repo.keys() == {"k"}


class MetadataRepositoryReadTests(RepositoryReadTests):
    """The reading half of the :class:`~pydatatask.repository.base.MetadataRepository` contract
    (``get``, ``get_many``, ``items``), for views that are read but not written."""

    async def store(self, repo: Any, key: str, value: Any) -> None:
        await repo.put(key, value)

    async def read_back(self, repo: Any, key: str) -> Any:
        value = await repo.get(key)
        assert await repo.get_many([key]) == {key: value}
        return value

    @pytest.mark.asyncio
    async def test_stored_values_read_back(self, repo: MetadataRepository) -> None:
        values: dict[str, Any] = {
            "nested": {
                "n": 1,
                "f": 1.5,
                "s": "text",
                "b": True,
                "none": None,
                "list": [1, "two", {"three": 3}],
            },
            "int": 7,
            "str": "h\u00e9llo w\u00f6rld \u2603 \U0001f600",
            "empty": {},
            "yamlish": {"text": "key: value\n- item\n{{ jinja }}", "colon": "a: b"},
        }
        for key, value in values.items():
            await self.store(repo, key, value)
        for key, value in values.items():
            assert await repo.get(key) == value

    @pytest.mark.asyncio
    async def test_missing_key_raises(self, repo: MetadataRepository) -> None:
        with pytest.raises(KeyNotFoundError) as info:
            await repo.get("absent")
        assert isinstance(info.value, KeyError)
        assert "absent" in str(info.value)

    @pytest.mark.asyncio
    async def test_get_many_and_items(self, repo: MetadataRepository) -> None:
        for i in range(25):
            await self.store(repo, f"k{i}", {"i": i})
        got = await repo.get_many([f"k{i}" for i in range(30)])
        assert got == {f"k{i}": {"i": i} for i in range(25)}
        items = {k: v async for k, v in repo.items()}
        assert items == got

    @pytest.mark.asyncio
    async def test_returned_values_are_copies(self, repo: MetadataRepository) -> None:
        value = {"list": [1, 2]}
        await self.store(repo, "k", value)
        value["list"].append(3)
        got = await repo.get("k")
        assert got == {"list": [1, 2]}
        got["list"].append(4)
        assert await repo.get("k") == {"list": [1, 2]}

    @pytest.mark.asyncio
    async def test_invalid_key_refused_by_get(self, repo: MetadataRepository) -> None:
        for key in ("../x", "a//b", ""):
            with pytest.raises(InvalidKeyError):
                await repo.get(key)
            with pytest.raises(InvalidKeyError):
                await repo.get_many([key])


class MetadataRepositoryTests(MetadataRepositoryReadTests, RepositoryTests):
    """The contract of :class:`~pydatatask.repository.base.MetadataRepository` backends."""

    #: whether the backend implements ``create`` (exclusive put)
    supports_create = True

    @pytest.mark.asyncio
    async def test_put_get_round_trip(self, repo: MetadataRepository) -> None:
        value = {"n": 1, "f": 1.5, "s": "text", "b": True, "none": None, "list": [1, "two", {"three": 3}]}
        await repo.put("k", value)
        assert await repo.get("k") == value
        await repo.put("k", {"replaced": True})
        assert await repo.get("k") == {"replaced": True}

    @pytest.mark.asyncio
    async def test_scalar_and_unicode_values(self, repo: MetadataRepository) -> None:
        values: dict[str, Any] = {
            "int": 7,
            "str": "h\u00e9llo w\u00f6rld \u2603 \U0001f600",
            "list": ["\u00fc", 2],
            "empty": {},
            "yamlish": {"text": "key: value\n- item\n{{ jinja }}", "colon": "a: b"},
        }
        for key, value in values.items():
            await repo.put(key, value)
        for key, value in values.items():
            assert await repo.get(key) == value

    async def make_corrupt(self, repo: Any, key: str) -> bool:
        """Store a value under ``key`` that does not decode; return False if the backend
        cannot hold one. The default handles YAML/JSON over any blob repository; suites of
        other backends override it (e.g. a Mongo document without its ``value`` field)."""
        from ..repository.serialized import SerializedMetadataRepository

        if not isinstance(repo, SerializedMetadataRepository):
            return False
        await repo.blobs.write_bytes(key, b'{"task": "A", "state": [trunc')
        return True

    @pytest.mark.asyncio
    async def test_corrupt_value_in_get_many(self, repo: MetadataRepository) -> None:
        await repo.put("good", {"ok": True})
        corrupt = await self.make_corrupt(repo, "bad")
        seen: list[CorruptValueError] = []
        got = await repo.get_many(["good", "bad", "absent"], on_corrupt=seen.append)
        assert got == {"good": {"ok": True}}
        assert [k async for k, _ in repo.items(on_corrupt=seen.append)] == ["good"]
        if not corrupt:
            assert seen == []  # nothing to report; the good values are still all there
            return
        assert [e.key for e in seen] == ["bad", "bad"]
        err = seen[0]
        assert err.repository == repo.describe() and err.location and err.reason
        assert "\n" not in str(err) and "bad" in str(err) and err.location in str(err)
        for call in (repo.get_many(["good", "bad"]), repo.get("bad")):
            with pytest.raises(CorruptValueError) as info:
                await call
            assert type(info.value) is CorruptValueError and info.value.key == "bad"
        with pytest.raises(CorruptValueError):
            _ = [kv async for kv in repo.items()]
        assert await repo.contains("bad")  # reported, never removed or rewritten

    @pytest.mark.asyncio
    async def test_concurrent_writers(self, repo: MetadataRepository) -> None:
        await asyncio.gather(*(repo.put(f"w{i}", {"i": i}) for i in range(200)))
        assert await repo.keys() == {f"w{i}" for i in range(200)}
        assert await repo.get("w137") == {"i": 137}

    @pytest.mark.asyncio
    async def test_put_many(self, repo: MetadataRepository) -> None:
        await repo.put("old", {"v": 0})
        await repo.put_many({f"p{i}": {"i": i} for i in range(30)} | {"old": {"v": 1}})
        assert await repo.keys() == {"old"} | {f"p{i}" for i in range(30)}
        assert await repo.get("p17") == {"i": 17}
        assert await repo.get("old") == {"v": 1}
        with pytest.raises(InvalidKeyError):
            await repo.put_many({"fine": 1, "bad/../x": 2})
        assert not await repo.contains("fine")

    @pytest.mark.asyncio
    async def test_create_many_creates_only_absent_keys(self, repo: MetadataRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.create_many({"c": {"v": 1}})
            return
        assert await repo.create("taken", {"v": "first"})
        made = await repo.create_many({"taken": {"v": "second"}, "m1": {"v": 1}, "m2": {"v": 2}})
        assert made == {"m1", "m2"}
        assert await repo.get("taken") == {"v": "first"}
        assert await repo.get("m2") == {"v": 2}
        # two batches racing over overlapping keys: each key goes to exactly one of them
        first, second = await asyncio.gather(
            repo.create_many({f"r{i}": {"who": 1} for i in range(0, 40)}),
            repo.create_many({f"r{i}": {"who": 2} for i in range(20, 60)}),
        )
        assert not first & second
        assert first | second == {f"r{i}" for i in range(60)}
        for key in ("r25", "r35"):
            assert (await repo.get(key))["who"] == (1 if key in first else 2)

    @pytest.mark.asyncio
    async def test_bulk_calls_over_several_prefixes(self, repo: MetadataRepository) -> None:
        """put_many, create_many and delete_many over keys in several places at once (a
        batch's records, claims and releases), with values that replace old ones."""
        nested = self.stores_path_keys and self.admits(repo, "p/q/r")
        keys = [f"b{i}" for i in range(8)] + ([f"p/b{i}" for i in range(4)] + ["p/q/r"] if nested else [])
        await repo.put(keys[0], {"v": "old"})
        await repo.put_many({k: {"v": k, "n": i} for i, k in enumerate(keys)})
        assert await repo.get_many(keys) == {k: {"v": k, "n": i} for i, k in enumerate(keys)}
        if self.supports_create:
            fresh = ["c0"] + (["p/c1", "p/q/c2"] if nested else ["c1"])
            made = await repo.create_many({keys[-1]: {"v": "not this"}} | {k: {"v": k} for k in fresh})
            assert made == set(fresh)
            assert await repo.get(keys[-1]) == {"v": keys[-1], "n": len(keys) - 1}
        await repo.delete_many([*keys[1:], "never-there"])
        left = await repo.keys()
        assert keys[0] in left and not left & set(keys[1:])
        await repo.delete_many([keys[0], *(["c0"] if self.supports_create else [])])
        assert not await repo.keys() & {*keys, "c0"}

    @pytest.mark.asyncio
    async def test_create_is_exclusive(self, repo: MetadataRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.create("c", {"v": 1})
            return
        assert await repo.create("c", {"v": 1})
        assert not await repo.create("c", {"v": 2})
        assert await repo.get("c") == {"v": 1}
        results = await asyncio.gather(*(repo.create("race", {"who": i}) for i in range(50)))
        assert sum(results) == 1
        winner = results.index(True)
        assert await repo.get("race") == {"who": winner}

    @pytest.mark.asyncio
    async def test_replace_if(self, repo: MetadataRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.replace_if("c", {"v": 1}, {"v": 2})
            return
        assert not await repo.replace_if("absent", {"v": 1}, {"v": 2})
        assert not await repo.contains("absent")
        await repo.put("c", {"v": 1, "owner": "a"})
        assert not await repo.replace_if("c", {"v": 0}, {"v": 2})
        assert await repo.get("c") == {"v": 1, "owner": "a"}
        assert await repo.replace_if("c", {"v": 1, "owner": "a"}, {"v": 2})
        assert await repo.get("c") == {"v": 2}
        results = await asyncio.gather(
            *(repo.replace_if("c", {"v": 2}, {"v": 3, "who": i}) for i in range(20))
        )
        assert sum(results) == 1
        assert await repo.get("c") == {"v": 3, "who": results.index(True)}

    @pytest.mark.asyncio
    async def test_replace_many_if(self, repo: MetadataRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.replace_many_if({"c": ({"v": 1}, {"v": 2})})
            return
        assert await repo.replace_many_if({}) == set()
        await repo.put_many({"a": {"v": 1}, "b/c": {"v": 1}, "d": {"v": 1, "x": [1]}})
        changes = {
            "a": ({"v": 1}, {"v": 2}),
            "b/c": ({"v": 0}, {"v": 2}),  # not the value stored: left alone
            "d": ({"v": 1, "x": [1]}, {"v": 2, "x": []}),
            "absent": ({"v": 1}, {"v": 2}),  # not created
        }
        assert await repo.replace_many_if(changes) == {"a", "d"}
        assert await repo.get_many(["a", "b/c", "d", "absent"]) == {
            "a": {"v": 2},
            "b/c": {"v": 1},
            "d": {"v": 2, "x": []},
        }
        # of concurrent callers with the same expected values, one wins each key
        await repo.put("d", {"v": 2})
        results = await asyncio.gather(
            *(
                repo.replace_many_if({k: ({"v": 2}, {"v": 3, "who": i}) for k in ("a", "d")})
                for i in range(10)
            )
        )
        assert sorted(k for won in results for k in won) == ["a", "d"]
        for key in ("a", "d"):
            who = next(i for i, won in enumerate(results) if key in won)
            assert await repo.get(key) == {"v": 3, "who": who}

    @pytest.mark.asyncio
    async def test_writes_are_journaled(self, repo: MetadataRepository) -> None:
        """Every write path notes its key in the current write journal (a failed job
        removes what it wrote)."""
        journal = WriteJournal()
        with journaling(journal):
            await repo.put("j1", {"v": 1})
            if self.supports_create:
                assert await repo.create("j2", {"v": 2})
                assert await repo.replace_if("j1", {"v": 1}, {"v": 3})
        await repo.put("outside", 1)
        expected = {"j1", "j2"} if self.supports_create else {"j1"}
        assert visible_keys(repo, journal.keys_by_repository()) == expected

    @pytest.mark.asyncio
    async def test_invalid_key_refused_by_get_put(self, repo: MetadataRepository) -> None:
        for key in ("../x", "a//b", ""):
            with pytest.raises(InvalidKeyError):
                await repo.get(key)
            with pytest.raises(InvalidKeyError):
                await repo.put(key, 1)


class BlobRepositoryReadTests(RepositoryReadTests):
    """The reading half of the :class:`~pydatatask.repository.base.BlobRepository` contract
    (whole-value and streaming reads), for views that are read but not written."""

    def sample(self, key: Any) -> Any:
        return key.encode("utf-8", "surrogatepass") if isinstance(key, str) else b"x"

    async def store(self, repo: Any, key: str, value: Any) -> None:
        await repo.write_bytes(key, value)

    async def read_back(self, repo: Any, key: str) -> Any:
        value = await repo.read_bytes(key)
        async with repo.open(key, "rb") as f:
            assert await f.read() == value
        return value

    @pytest.mark.asyncio
    async def test_stored_bytes_read_back(self, repo: BlobRepository) -> None:
        data = bytes(range(256)) * 10 + b"\0\r\n\xff"
        await self.store(repo, "bin", data)
        assert await repo.read_bytes("bin") == data
        async with repo.open("bin", "rb") as f:
            assert await f.read() == data
        await self.store(repo, "empty", b"")
        assert await repo.read_bytes("empty") == b""
        assert await repo.contains("empty")
        text = "h\u00e9llo \u2603 \U0001f600\nline two"
        await self.store(repo, "t", text.encode())
        assert await repo.read_text("t") == text

    @pytest.mark.asyncio
    async def test_missing_key_raises(self, repo: BlobRepository) -> None:
        with pytest.raises(KeyNotFoundError):
            await repo.read_bytes("absent")
        with pytest.raises(KeyNotFoundError):
            async with repo.open("absent", "rb") as f:
                await f.read()

    @pytest.mark.asyncio
    async def test_streaming_read_honours_n(self, repo: BlobRepository) -> None:
        data = os.urandom(300_000)
        await self.store(repo, "s", data)
        async with repo.open("s", "rb") as f:
            first = await f.read(10)
            assert first == data[:10]
            rest = b""
            while chunk := await f.read(65536):
                assert len(chunk) <= 65536
                rest += chunk
        assert first + rest == data
        async with repo.open("s", "rb") as f:
            assert b"".join([c async for c in f]) == data

    @pytest.mark.asyncio
    async def test_invalid_key_refused_by_reads(self, repo: BlobRepository) -> None:
        for key in ("../x", "a//b", ""):
            with pytest.raises(InvalidKeyError):
                await repo.read_bytes(key)
            with pytest.raises(InvalidKeyError):
                async with repo.open(key, "rb") as f:
                    await f.read()


class BlobRepositoryTests(BlobRepositoryReadTests, RepositoryTests):
    """The contract of :class:`~pydatatask.repository.base.BlobRepository` backends."""

    supports_create = True
    #: size of the large-blob test (bytes)
    large_blob_size = 50 * 1024 * 1024
    #: whether the backend keeps values out of process memory (then streaming is checked)
    stores_out_of_process = True

    @pytest.mark.asyncio
    async def test_bytes_round_trip(self, repo: BlobRepository) -> None:
        data = bytes(range(256)) * 10 + b"\0\r\n\xff"
        await repo.write_bytes("bin", data)
        assert await repo.read_bytes("bin") == data
        await repo.write_bytes("empty", b"")
        assert await repo.read_bytes("empty") == b""
        assert await repo.contains("empty")

    @pytest.mark.asyncio
    async def test_text_round_trip(self, repo: BlobRepository) -> None:
        text = "h\u00e9llo \u2603 \U0001f600\nline two"
        await repo.write_text("t", text)
        assert await repo.read_text("t") == text

    @pytest.mark.asyncio
    async def test_overwrite(self, repo: BlobRepository) -> None:
        await repo.write_bytes("k", b"old value that is longer")
        await repo.write_bytes("k", b"new")
        assert await repo.read_bytes("k") == b"new"

    @pytest.mark.asyncio
    async def test_write_is_atomic(self, repo: BlobRepository) -> None:
        async with repo.open("atomic", "wb") as f:
            await f.write(b"part one ")
            assert not await repo.contains("atomic")
            assert "atomic" not in await repo.keys()
            await f.write(b"part two")
            assert not await repo.contains("atomic")
        assert await repo.read_bytes("atomic") == b"part one part two"

    @pytest.mark.asyncio
    async def test_failed_write_leaves_nothing(self, repo: BlobRepository) -> None:
        before = await self.raw_names(repo)
        with pytest.raises(RuntimeError, match="boom"):
            async with repo.open("failed", "wb") as f:
                await f.write(b"x" * 100_000)
                raise RuntimeError("boom")
        assert not await repo.contains("failed")
        assert await repo.keys() == set()
        assert await self.raw_names(repo) == before

    @pytest.mark.asyncio
    async def test_failed_overwrite_keeps_old_value(self, repo: BlobRepository) -> None:
        await repo.write_bytes("keep", b"original")
        with pytest.raises(RuntimeError):
            async with repo.open("keep", "wb") as f:
                await f.write(b"replacement")
                raise RuntimeError("boom")
        assert await repo.read_bytes("keep") == b"original"

    @pytest.mark.asyncio
    async def test_cancelled_write_leaves_nothing(self, repo: BlobRepository) -> None:
        started = asyncio.Event()

        async def writer() -> None:
            async with repo.open("cancelled", "wb") as f:
                await f.write(b"data")
                started.set()
                await asyncio.sleep(3600)

        task = asyncio.create_task(writer())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await repo.contains("cancelled")

    @pytest.mark.asyncio
    async def test_concurrent_writers(self, repo: BlobRepository) -> None:
        await asyncio.gather(*(repo.write_bytes(f"w{i}", str(i).encode()) for i in range(200)))
        assert await repo.keys() == {f"w{i}" for i in range(200)}
        assert await repo.read_bytes("w199") == b"199"

    @pytest.mark.asyncio
    async def test_writes_are_journaled(self, repo: BlobRepository) -> None:
        """Every write path notes its key in the current write journal; a write that failed
        before its commit does not."""
        journal = WriteJournal()
        with journaling(journal):
            await repo.write_bytes("j1", b"1")
            async with repo.open("j2", "wb") as f:
                await f.write(b"2")
            with pytest.raises(ValueError):
                async with repo.open("j3", "wb") as f:
                    await f.write(b"3")
                    raise ValueError("fail the write")
            if self.supports_create:
                assert await repo.create_bytes("j4", b"4")
        await repo.write_bytes("outside", b"x")
        expected = {"j1", "j2", "j4"} if self.supports_create else {"j1", "j2"}
        assert visible_keys(repo, journal.keys_by_repository()) == expected

    @pytest.mark.asyncio
    async def test_create_is_exclusive(self, repo: BlobRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.create_bytes("c", b"1")
            return
        assert await repo.create_bytes("c", b"1")
        assert not await repo.create_bytes("c", b"2")
        assert await repo.read_bytes("c") == b"1"
        results = await asyncio.gather(*(repo.create_bytes("race", str(i).encode()) for i in range(50)))
        assert sum(results) == 1
        assert await repo.read_bytes("race") == str(results.index(True)).encode()

    @pytest.mark.asyncio
    async def test_write_many_bytes_and_create_many_bytes(self, repo: BlobRepository) -> None:
        nested = self.stores_path_keys and self.admits(repo, "p/q/r")
        keys = [f"w{i}" for i in range(6)] + (["p/w0", "p/q/w1"] if nested else [])
        await repo.write_bytes(keys[0], b"old")
        await repo.write_many_bytes({k: k.encode() * 3 for k in keys})
        for k in keys:
            assert await repo.read_bytes(k) == k.encode() * 3
        with pytest.raises(InvalidKeyError):
            await repo.write_many_bytes({"fine": b"1", "bad/../x": b"2"})
        assert not await repo.contains("fine")  # nothing written when one key is invalid
        await repo.write_many_bytes({})
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.create_many_bytes({"c": b"1"})
            return
        made = await repo.create_many_bytes({keys[1]: b"taken", "c0": b"0", "c1": b""})
        assert made == {"c0", "c1"}
        assert await repo.read_bytes(keys[1]) == keys[1].encode() * 3
        assert await repo.read_bytes("c1") == b""
        assert await repo.create_many_bytes({}) == set()
        first, second = await asyncio.gather(
            repo.create_many_bytes({f"r{i}": b"1" for i in range(0, 30)}),
            repo.create_many_bytes({f"r{i}": b"2" for i in range(15, 45)}),
        )
        assert not first & second and first | second == {f"r{i}" for i in range(45)}
        assert await repo.read_bytes("r20") == (b"1" if "r20" in first else b"2")

    @pytest.mark.asyncio
    async def test_replace_bytes_if(self, repo: BlobRepository) -> None:
        if not self.supports_create:
            with pytest.raises(UnsupportedOperationError):
                await repo.replace_bytes_if("c", b"1", b"2")
            return
        assert not await repo.replace_bytes_if("absent", b"1", b"2")
        assert not await repo.contains("absent")
        await repo.write_bytes("c", b"1")
        assert not await repo.replace_bytes_if("c", b"0", b"2")
        assert await repo.read_bytes("c") == b"1"
        assert await repo.replace_bytes_if("c", b"1", b"2")
        # the new values differ from the expected one (else a winner could restore it: ABA)
        results = await asyncio.gather(*(repo.replace_bytes_if("c", b"2", b"new-%d" % i) for i in range(20)))
        assert sum(results) == 1
        assert await repo.read_bytes("c") == b"new-%d" % results.index(True)

    @pytest.mark.asyncio
    async def test_large_blob_streams(self, repo: BlobRepository) -> None:
        size = self.large_blob_size
        chunk = os.urandom(1 << 20)
        digest = hashlib.sha256()
        tracing = self.stores_out_of_process
        if tracing:
            tracemalloc.start()
        try:
            async with repo.open("large", "wb") as f:
                written = 0
                while written < size:
                    piece = chunk[: min(len(chunk), size - written)]
                    await f.write(piece)
                    digest.update(piece)
                    written += len(piece)
            check = hashlib.sha256()
            total = 0
            async with repo.open("large", "rb") as f:
                while piece := await f.read(1 << 20):
                    check.update(piece)
                    total += len(piece)
            if tracing:
                _, peak = tracemalloc.get_traced_memory()
        finally:
            if tracing:
                tracemalloc.stop()
        assert total == size
        assert check.hexdigest() == digest.hexdigest()
        if tracing:
            # streaming: far less than the blob is ever held in Python memory
            assert peak < size / 2, f"peak Python memory {peak} bytes for a {size}-byte blob"
