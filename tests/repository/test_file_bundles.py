"""Bundles in the local file metadata repositories, and one claim per batch over them: what
is stored, what readers of ``live`` see key by key, and batch claims of real processes
racing over one directory."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from pydatatask import JsonMetadataFileRepository, YamlMetadataFileRepository
from pydatatask.errors import RepositoryError
from pydatatask.repository.bundles import bundle_store, make_bundle
from pydatatask.repository.deferred import DeferredMetadataRepository
from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.repository.serialized import SerializedMetadataRepository
from pydatatask.task.claims import Claims
from tests.reliability.harness import finish, start_script

from . import test_s3

SCRIPT = Path(__file__).with_name("file_claims_race.py")
ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}

# the S3 test server's fixtures, for the one test of the claims' protocol there
s3conf = test_s3.s3conf
bucket = test_s3.bucket
client = test_s3.client
prefix = test_s3.prefix

Kind = type[YamlMetadataFileRepository] | type[JsonMetadataFileRepository]
KINDS = pytest.mark.parametrize(
    "kind", [YamlMetadataFileRepository, JsonMetadataFileRepository], ids=["yaml", "json"]
)
# durable (a thread per change, fsyncs) and not (changes on the event loop)
FSYNC = pytest.mark.parametrize("fsync", [True, False], ids=["fsync", "nofsync"])


def _names(root: Path) -> list[str]:
    """Every name under ``root``, hidden ones too, relative to it."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _store(repo: SerializedMetadataRepository) -> Any:
    store = bundle_store(repo)
    assert store is not None
    return store


@KINDS
@FSYNC
async def test_a_bundle_reads_as_one_value_per_key(tmp_path: Path, kind: Kind, fsync: bool) -> None:
    live = kind(tmp_path, fsync=fsync)
    store = _store(live)
    await live.put("alone", {"owner": "x"})
    bundle = make_bundle({"owner": "me", "lease": 5}, ["a", "b/c"], {"b/c": {"run": 1}})
    assert await store.create_bundle("b1", bundle)
    assert not await store.create_bundle("b1", make_bundle({"owner": "you"}, ["a"]))  # exclusive
    other = kind(tmp_path, fsync=fsync)  # another process: it never saw the bundle
    assert await other.keys() == {"alone", "a", "b/c"}
    versions = await other.versions()
    assert set(versions) == {"alone", "a", "b/c"} and versions["a"] == versions["b/c"] != versions["alone"]
    assert await other.get("b/c") == {"owner": "me", "lease": 5, "run": 1}
    assert await other.get_many(["a", "alone", "zz"]) == {
        "a": {"owner": "me", "lease": 5},
        "alone": {"owner": "x"},
    }
    assert await other.contains("a") and not await other.contains("zz")
    assert not await other.create("a", {"owner": "y"})  # a bundle holds it: someone's already
    assert await other.create_many({"a": {"owner": "y"}, "new": {"owner": "y"}}) == {"new"}
    assert await other.get("a") == {"owner": "me", "lease": 5}
    # one hidden JSON file, apart from every key's (whatever the repository's format)
    ext = live.blobs.extension  # type: ignore[attr-defined]
    assert _names(tmp_path) == sorted(
        [".pdt-bundles", ".pdt-bundles/b1.json", ".pdt-lock", f"alone{ext}", f"new{ext}"]
    )
    assert json.loads((tmp_path / ".pdt-bundles" / "b1.json").read_text()) == bundle
    assert await store.get_bundle("b1") == bundle and await store.get_bundle("b2") is None
    assert await store.snapshot() == ({"alone", "new"}, {"b1": bundle})


@FSYNC
async def test_delete_and_takeover_of_a_bundled_key(tmp_path: Path, fsync: bool) -> None:
    live = YamlMetadataFileRepository(tmp_path, fsync=fsync)
    store = _store(live)
    assert await store.create_bundle("b1", make_bundle({"owner": "me"}, ["a", "b", "c", "d"]))
    other = YamlMetadataFileRepository(tmp_path, fsync=fsync)
    await other.keys()  # sees the bundle: looks for bundles from now on
    await other.delete("a")
    assert await live.keys() == {"b", "c", "d"}
    # a compare-and-swap on a bundled key moves it out of its bundle into a file of its own
    assert not await other.replace_if("b", {"owner": "someone"}, {"owner": "r"})
    assert await other.replace_if("b", {"owner": "me"}, {"owner": "r"})
    assert not await YamlMetadataFileRepository(tmp_path).replace_if("b", {"owner": "me"}, {"owner": "r2"})
    assert await live.get("b") == {"owner": "r"}
    assert (tmp_path / "b.yaml").exists()
    assert await store.get_bundle("b1") == make_bundle({"owner": "me"}, ["c", "d"])
    await other.delete_many(["c", "b"])
    assert await live.keys() == {"d"}
    assert await store.replace_bundle_if(
        "b1", make_bundle({"owner": "me"}, ["d"]), make_bundle({"owner": "x"}, ["d"])
    )
    assert not await store.replace_bundle_if(
        "b1", make_bundle({"owner": "me"}, ["d"]), make_bundle({}, ["d"])
    )
    assert await live.get("d") == {"owner": "x"}
    await other.delete("d")  # the last key: the bundle goes, and its directory
    assert await live.keys() == set()
    assert _names(tmp_path) == [".pdt-lock"]


async def test_the_keys_of_bundles_in_a_deferred_state_repository(tmp_path: Path) -> None:
    """``Pipeline(state_dir=...)`` binds a task's ``live`` to a file repository later: the
    bundles are kept behind it."""
    live = DeferredMetadataRepository(MemoryMetadataRepository(), owner="task t's live repository")
    assert bundle_store(live) is None  # memory: a claim per key
    live.bind(YamlMetadataFileRepository(tmp_path))
    store = _store(live)  # type: ignore[arg-type]
    assert await store.create_bundle("b1", make_bundle({"owner": "me"}, ["a", "b"]))
    assert await live.keys() == {"a", "b"}
    assert await live.get_many(["a", "b", "c"]) == {"a": {"owner": "me"}, "b": {"owner": "me"}}
    await live.delete_many(["a"])
    assert await live.keys() == {"b"}


async def test_bad_bundles_are_refused_or_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    live = YamlMetadataFileRepository(tmp_path)
    store = _store(live)
    with pytest.raises(RepositoryError, match=r"'\.\./x' is not a bundle name"):
        await store.create_bundle("../x", make_bundle({}, ["a"]))
    with pytest.raises(RepositoryError, match="cannot store bundle 'b1' as JSON"):
        await store.create_bundle("b1", make_bundle({"when": object()}, ["a"]))
    assert await store.create_bundle("b2", make_bundle({"owner": "me"}, ["b"]))
    (tmp_path / ".pdt-bundles" / "bad.json").write_text("{not json")
    # a bundle nobody can read names no key: the others are still seen, the file stays
    assert await YamlMetadataFileRepository(tmp_path).keys() == {"b"}
    assert "skipping an unreadable bundle" in caplog.text
    assert (tmp_path / ".pdt-bundles" / "bad.json").exists()


async def test_validate_sweeps_the_temporaries_of_killed_bundle_writers(tmp_path: Path) -> None:
    live = YamlMetadataFileRepository(tmp_path)
    store = _store(live)
    assert await store.create_bundle("b1", make_bundle({"owner": "me"}, ["a"]))
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    left = tmp_path / ".pdt-bundles" / f".b2.json.tmp-{dead}-0123456789ab"
    left.write_text("{}")
    await YamlMetadataFileRepository(tmp_path).validate()
    assert not left.exists()
    assert await live.keys() == {"a"}
    await store.delete_bundle("b1")
    left.parent.mkdir()  # (gone with its last bundle)
    left.write_text("{}")  # the only file left there: the directory goes with it
    await YamlMetadataFileRepository(tmp_path).validate()
    assert _names(tmp_path) == [".pdt-lock"]


@FSYNC
async def test_one_claim_file_per_batch(tmp_path: Path, fsync: bool) -> None:
    live = YamlMetadataFileRepository(tmp_path / "live", fsync=fsync)
    claims = Claims(live, "t", "me", lease=30)
    keys = [f"k{i:03d}" for i in range(100)]
    held = await claims.acquire_many(keys, batch="b1")
    assert sorted(held) == keys
    bundles = os.listdir(tmp_path / "live" / ".pdt-bundles")
    assert len(bundles) == 1 and bundles[0].startswith("b1-")
    assert [n for n in os.listdir(tmp_path / "live") if not n.startswith(".")] == []  # no file per key
    other = Claims(YamlMetadataFileRepository(tmp_path / "live", fsync=fsync), "t", "you")
    theirs = await other.acquire_many([*keys[:10], "new"], batch="b2")
    assert sorted(theirs) == ["new"]  # the keys another claim names are given up
    assert await other.acquire("k050") is None  # and a single claim of one of them fails
    assert await live.keys() == {*keys, "new"}
    assert await claims.update_many(list(held.values()), run={"id": 7}) == []
    assert all(h.value["run"] == {"id": 7} for h in held.values())
    assert (await other.live.get("k077"))["run"] == {"id": 7}
    await claims.release_many([held[k] for k in keys[:50]])
    assert await other.live.get_many(keys[:50]) == {}
    assert await live.keys() == {*keys[50:], "new"}
    await claims.release_many([held[k] for k in keys[50:]])
    assert await live.keys() == {"new"}
    assert not claims.held()
    assert len(os.listdir(tmp_path / "live" / ".pdt-bundles")) == 1  # the other batch's only


async def test_a_takeover_moves_one_key_out_of_a_dead_batch(tmp_path: Path) -> None:
    live = YamlMetadataFileRepository(tmp_path)
    dead = Claims(live, "t", "dead", lease=0.01)
    held = await dead.acquire_many(["a", "b", "c"], batch="b1")
    await asyncio.sleep(0.05)
    rescuer = Claims(YamlMetadataFileRepository(tmp_path), "t", "alive", lease=30)
    assert await rescuer.live.keys() == {"a", "b", "c"}  # (a check for stale claims lists first)
    values = await rescuer.live.get_many(["a", "b", "c"])
    assert all(rescuer.is_stale(v) for v in values.values())
    taken = await rescuer.take_over("b", values["b"])
    assert taken is not None and taken.value["owner"] == "alive-recovery"
    assert await rescuer.take_over("b", values["b"]) is None  # of two recoveries, one wins
    assert await live.get("b") == taken.value
    # the dead batch's own object lost the key; what it still holds is still its own
    lost = await dead.update_many(list(held.values()))
    assert [c.key for c in lost] == ["b"]
    assert sorted(dead.held()) == ["a", "c"]
    assert await live.get_many(["a", "b", "c"]) == {
        "a": dead.held()["a"].value,
        "b": taken.value,
        "c": dead.held()["c"].value,
    }


async def test_batches_of_real_processes_never_claim_a_key_twice(tmp_path: Path) -> None:
    """Three processes claim the same 40 keys with one bundle each, 15 rounds at once: of
    every round, each key is held by one of them at most (all may give a key up)."""
    start = tmp_path / "start"
    rounds, keys = 15, 40
    procs = [
        await start_script(SCRIPT, [str(tmp_path / "live"), str(start), str(rounds), str(keys)], ENV)
        for _ in range(3)
    ]
    await asyncio.sleep(0.5)  # all started and waiting
    start.touch()
    results = [await finish(p, 90) for p in procs]
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
    held = [json.loads(r.stdout.splitlines()[-1]) for r in results]
    claimed = 0
    for r in range(rounds):
        sets = [set(h[str(r)]) for h in held]
        for i in range(len(sets)):
            for j in range(i + 1, len(sets)):
                assert not sets[i] & sets[j], f"round {r}: {sorted(sets[i] & sets[j])[:5]} held twice"
        claimed += len(set().union(*sets))
    assert claimed > 0  # (they did claim keys)
    # every key held is in live once, read through its batch's one file
    live = YamlMetadataFileRepository(tmp_path / "live")
    owners = {k: v["owner"] for k, v in (await live.get_many(await live.keys())).items()}
    assert len(owners) == claimed
    assert [n for n in os.listdir(tmp_path / "live") if not n.startswith(".")] == []


async def test_a_batch_of_one_key_sees_the_bundles_of_others(tmp_path: Path) -> None:
    """A batch of one key is claimed as one key's file; in a scheduler whose ``live`` never
    listed a bundle it must still look at the bundles, or a key another batch's bundle names
    (written after that scheduler's last listing) is claimed twice."""
    first = Claims(YamlMetadataFileRepository(tmp_path), "t", "first")
    first.batched = True
    assert sorted(await first.acquire_many(["a", "b"], batch="b1")) == ["a", "b"]
    second = Claims(YamlMetadataFileRepository(tmp_path), "t", "second")  # never listed live
    second.batched = True
    assert await second.acquire_many(["a"], batch="b2") == {}
    assert await second.acquire_many(["c"], batch="b3") != {}
    assert not (tmp_path / "a.yaml").exists()


@pytest.mark.s3
async def test_a_batch_of_one_key_sees_the_bundles_of_others_in_s3(
    client: Any, bucket: str, prefix: str
) -> None:
    """The same in a bucket: the single-key path of ``acquire_many`` is the claims'
    protocol's, whichever store keeps the bundles."""
    from pydatatask.repository.s3 import YamlMetadataS3Repository

    first = Claims(YamlMetadataS3Repository(client, bucket, prefix), "t", "first")
    first.batched = True
    assert sorted(await first.acquire_many(["a", "b"], batch="b1")) == ["a", "b"]
    second = Claims(YamlMetadataS3Repository(client, bucket, prefix), "t", "second")  # never listed
    second.batched = True
    assert await second.acquire_many(["a"], batch="b2") == {}
    assert sorted(await first.live.keys()) == ["a", "b"]
