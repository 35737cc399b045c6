"""Hostile input: property tests over keys/values on every backend, template injection, broken data.

Keys: every valid key round-trips, every invalid one is refused with ``InvalidKeyError``,
and after the test nothing appeared outside the repository's root / prefix / collection
(the parent directory is walked, the whole bucket listed, the other collections listed).
Templates: keys and params full of shell, YAML/JSON and Jinja syntax are rendered inert by
``render_command``/``render_yaml``, by a real ProcessTask (a canary file is never created)
and by PodTask's pod manifest rendering. Broken data: unparsable records, objects deleted
between listing and reading, truncated blobs give failure records naming key and cause.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pydatatask import (
    FileRepository,
    InvalidKeyError,
    JsonMetadataFileRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    RepositoryError,
    YamlMetadataFileRepository,
)
from pydatatask.keys import is_valid_key
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository, MetadataRepository, Repository
from pydatatask.task import FunctionTask
from pydatatask.task.templates import render_command, render_yaml

from .harness import ensure_bucket, s3_client, s3_names

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ALPHABET = "abcXYZ019_.-"
_valid = is_valid_key
valid_keys = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,40}", fullmatch=True)
long_valid = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{150,199}", fullmatch=True)
nasty = st.sampled_from(
    [
        "..",
        ".",
        "../x",
        "../../etc/passwd",
        "a/b",
        "/abs",
        "a\\b",
        ".hidden",
        "-rf",
        "",
        "a\0b",
        "x" * 201,
        "k;rm -rf ~",
        "$(touch /tmp/canary)",
        "{{ 7*7 }}",
        "a\nb",
        "é",
        " k",
        "k ",
        "%2e%2e",
    ]
)
# the nasty names that are valid keys (paths, spaces, shell and template syntax) round-trip
# where the backend's own rule admits them; the others are refused everywhere
invalid_keys = st.one_of(
    nasty.filter(lambda s: not _valid(s)), st.text(min_size=0, max_size=30).filter(lambda s: not _valid(s))
)
valid_keys = st.one_of(valid_keys, nasty.filter(_valid), st.text(min_size=1, max_size=30).filter(_valid))


def _json_values(dict_keys: st.SearchStrategy[str]) -> st.SearchStrategy[Any]:
    return st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=30),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(dict_keys, inner, max_size=4),
        max_leaves=12,
    )


json_values = _json_values(st.text(max_size=10))
# BSON refuses field names with NUL (a RepositoryError, checked separately); Mongo values
# are otherwise as free as the others ("$" and "." in names are stored verbatim)
bson_values = _json_values(st.text(max_size=10).filter(lambda s: "\0" not in s))


async def _roundtrip(repo: Repository, key: str, value: Any) -> None:
    try:
        repo._check_key(key)
    except InvalidKeyError:  # valid, but not under this backend's own rule: refused by it
        await _refused(repo, key)
        return
    if isinstance(repo, BlobRepository):
        data = json.dumps(value).encode()
        await repo.write_bytes(key, data)
        assert await repo.read_bytes(key) == data
    else:
        assert isinstance(repo, MetadataRepository)
        await repo.put(key, value)
        assert await repo.get(key) == value
    assert key in await repo.keys()
    assert await repo.contains(key)
    await repo.delete(key)
    assert not await repo.contains(key)


async def _refused(repo: Repository, key: str) -> None:
    ops: list[Callable[[], Any]] = [lambda: repo.contains(key), lambda: repo.delete(key)]
    if isinstance(repo, BlobRepository):
        ops += [lambda: repo.write_bytes(key, b"x"), lambda: repo.read_bytes(key)]
    if isinstance(repo, MetadataRepository):
        ops += [lambda: repo.put(key, 1), lambda: repo.get(key), lambda: repo.create(key, 1)]
    for op in ops:
        with pytest.raises(InvalidKeyError):
            await op()


def _all_files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ---------------------------------------------------------------- local backends
LOCAL = {
    "memory-blob": lambda root: MemoryBlobRepository(),
    "memory-meta": lambda root: MemoryMetadataRepository(),
    "files": lambda root: FileRepository(root, ".bin"),
    "yaml-files": lambda root: YamlMetadataFileRepository(root),
    "json-files": lambda root: JsonMetadataFileRepository(root),
}


@pytest.mark.parametrize("kind", list(LOCAL))
def test_local_keys_roundtrip_and_stay_inside(kind: str, tmp_path: Path) -> None:
    import asyncio

    root = tmp_path / "sandbox" / "repo"
    root.mkdir(parents=True)
    (tmp_path / "sandbox" / "sibling").mkdir()
    repo = LOCAL[kind](root)

    @SETTINGS
    @given(key=st.one_of(valid_keys, long_valid), value=json_values, bad=invalid_keys)
    def prop(key: str, value: Any, bad: str) -> None:
        asyncio.run(_roundtrip(repo, key, value))
        asyncio.run(_refused(repo, bad))

    prop()
    # nothing was written next to the root, or anywhere else in the sandbox
    assert _all_files(tmp_path / "sandbox") - {"repo", "sibling"} <= {
        str(Path("repo") / p) for p in _all_files(root)
    }
    assert not list((tmp_path / "sandbox" / "sibling").iterdir())
    assert not list(tmp_path.glob("*passwd*")) and not Path("/tmp/canary").exists()


# ---------------------------------------------------------------- S3
@pytest.fixture
async def s3(services: dict[str, Any]) -> AsyncIterator[tuple[Any, str]]:
    conf = {k: services["s3"][k] for k in ("endpoint", "access_key", "secret_key", "region")}
    async with s3_client(conf) as client:
        bucket = f"pdt-hostile-{uuid.uuid4().hex[:8]}"  # a bucket of its own: listed whole afterwards
        await ensure_bucket(client, bucket)
        try:
            yield client, bucket
        finally:
            for n in await s3_names(client, bucket, ""):
                await client.delete_object(Bucket=bucket, Key=n)
            await client.delete_bucket(Bucket=bucket)


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["blob", "yaml"])
async def test_s3_keys_roundtrip_and_stay_inside_prefix(kind: str, s3: tuple[Any, str]) -> None:
    from pydatatask import S3BucketRepository, YamlMetadataS3Repository

    client, bucket = s3
    prefix = "outer/inner/"
    await client.put_object(Bucket=bucket, Key="outer/sibling.txt", Body=b"s")
    before = set(await s3_names(client, bucket, ""))
    repo: Repository = (
        S3BucketRepository(client, bucket, prefix, ".bin")
        if kind == "blob"
        else YamlMetadataS3Repository(client, bucket, prefix)
    )
    seen: list[str] = []

    @settings(max_examples=25, deadline=None)
    @given(key=st.one_of(valid_keys, long_valid), value=json_values, bad=invalid_keys)
    async def prop(key: str, value: Any, bad: str) -> None:
        seen.append(key)
        await _roundtrip(repo, key, value)
        await _refused(repo, bad)
        if "\\" in key:
            return  # refused by the S3 rule (checked by _roundtrip)
        if isinstance(repo, MetadataRepository):
            await repo.put(key, value)
        else:
            assert isinstance(repo, BlobRepository)
            await repo.write_bytes(key, b"v")

    await _run_async_given(prop)
    after = set(await s3_names(client, bucket, ""))
    assert "outer/sibling.txt" in after
    new = after - before
    assert new, "nothing was written"
    outside = sorted(n for n in new if not n.startswith(prefix))
    assert not outside, f"objects outside {prefix!r}: {outside[:5]}"
    assert all(n[len(prefix) :].rsplit(".", 1)[0] in seen for n in new)


async def _run_async_given(prop: Any) -> None:
    """Run an ``async def`` hypothesis test from inside a running event loop."""
    import asyncio

    loop = asyncio.get_running_loop()
    inner = prop.hypothesis.inner_test
    calls: list[Any] = []

    def sync(**kwargs: Any) -> None:
        calls.append(kwargs)

    prop.hypothesis.inner_test = sync
    await asyncio.to_thread(prop)
    for kwargs in calls:
        await inner(**kwargs)
    assert loop


# ---------------------------------------------------------------- Mongo
@pytest.mark.mongo
async def test_mongo_keys_roundtrip_and_stay_in_collection(services: dict[str, Any]) -> None:
    from pymongo import AsyncMongoClient

    from pydatatask import MongoMetadataRepository

    client: Any = AsyncMongoClient(services["mongo"]["uri"], serverSelectionTimeoutMS=5000)
    db = client[f"pdt_hostile_{uuid.uuid4().hex[:8]}"]
    try:
        await db["sibling"].insert_one({"_id": "x", "value": 1})
        repo = MongoMetadataRepository(db["repo"])

        @settings(max_examples=40, deadline=None)
        @given(key=st.one_of(valid_keys, long_valid), value=bson_values, bad=invalid_keys)
        async def prop(key: str, value: Any, bad: str) -> None:
            await _roundtrip(repo, key, value)
            await _refused(repo, bad)
            await repo.put(key, value)

        await _run_async_given(prop)
        with pytest.raises(RepositoryError, match="BSON"):
            await repo.put("nul", {"a\0b": 1})
        assert not await repo.contains("nul")
        assert sorted(await db.list_collection_names()) == ["repo", "sibling"]
        assert [d async for d in db["sibling"].find()] == [{"_id": "x", "value": 1}]
        async for doc in db["repo"].find():
            assert _valid(doc["_id"])
    finally:
        await client.drop_database(db.name)
        await client.close()


# ---------------------------------------------------------------- Docker registry (keys only)
@given(key=st.one_of(valid_keys, long_valid, invalid_keys))
@SETTINGS
def test_docker_tags_follow_the_tag_rule(key: str) -> None:
    import re

    from pydatatask import DockerRepository

    if _valid(key) and re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}", key):
        assert DockerRepository.tag(key) == key
    else:
        with pytest.raises(InvalidKeyError):
            DockerRepository.tag(key)


# ---------------------------------------------------------------- templates
INJECTIONS = [
    "x; touch {canary}",
    "$(touch {canary})",
    "`touch {canary}`",
    "a\ntouch {canary}",
    "' ; touch {canary} ; '",
    '" ; touch {canary} ; "',
    "{{{{ cycler.__init__.__globals__.os.system('touch {canary}') }}}}",
    "{{% for x in [1] %}}{{{{ x }}}}{{% endfor %}}",
    "key: value\nspec: {{evil: 1}}",
    '{{"a": [1, 2]}}',
    "&& touch {canary} ||",
    "> {canary}",
]


def _payloads(canary: Path) -> list[str]:
    return [p.format(canary=canary) for p in INJECTIONS]


def test_render_command_quotes_everything(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    for payload in _payloads(canary):
        out = render_command("echo {{ key }} {{ params.v }}", {"key": payload, "params": {"v": payload}})
        assert shlex.split(out) == ["echo", payload, payload]
        subprocess.run(["/bin/sh", "-c", out], check=True, stdout=subprocess.DEVNULL)
        doc = yaml.safe_load(
            render_yaml("a: {{ key }}\nb: {{ params.v }}\n", {"key": payload, "params": {"v": payload}})
        )
        assert doc == {"a": payload, "b": payload}
    assert not canary.exists()


@given(text=st.text(max_size=60))
@SETTINGS
def test_render_is_inert_for_any_text(text: str) -> None:
    out = render_command("printf %s {{ v }}", {"v": text})
    assert shlex.split(out) == ["printf", "%s", text]
    assert yaml.safe_load(render_yaml("v: {{ v }}\n", {"v": text})) == {"v": text}


async def test_process_task_never_executes_keys_or_params(tmp_path: Path) -> None:
    from pydatatask import ProcessTask

    canary = tmp_path / "canary"
    src = FileRepository(tmp_path / "src", ".txt")
    out = FileRepository(tmp_path / "out", ".txt")
    # keys are restricted by the key rule, so the metacharacters ride in params and data
    keys = ["k1", "a.b-c_d", "x" * 150]
    for k in keys:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / f"{k}.txt").write_text("$(touch " + str(canary) + ")\n")
    payloads = _payloads(canary)
    task = ProcessTask(
        "proc",
        "printf '%s\\n' {{ key }} {{ params.p | join(' ') }} > {{ out.path }}; cat {{ src.path }} >> {{ out.path }}",
        inputs={"src": src},
        outputs={"out": out},
        params={"p": payloads},
    )
    summary = await Pipeline([task]).run()
    assert summary.succeeded == len(keys), summary.errors
    for k in keys:
        lines = (tmp_path / "out" / f"{k}.txt").read_text().splitlines()
        assert lines[0] == k
    assert not canary.exists()


def test_kube_manifest_rendering_is_inert(tmp_path: Path) -> None:
    from pydatatask.executor.kubernetes import KubeExecutor
    from pydatatask.task import PodTask

    canary = tmp_path / "canary"
    for i, payload in enumerate(_payloads(canary)):
        executor = KubeExecutor(object())
        task = PodTask(
            f"k{i}",
            "spec:\n  containers:\n  - name: main\n    image: busybox\n"
            "    command: [sh, -c, {{ params.script }}]\n"
            "    env:\n    - {name: KEY, value: {{ key }}}\n    - {name: EVIL, value: {{ params.evil }}}\n",
            executor=executor,
            params={"script": "echo hi", "evil": payload},
        )
        pod = executor.pod_body(task.render("Odd_Key.v2"), task.name, "Odd_Key.v2", task.resources)
        container = pod["spec"]["containers"][0]
        assert container["command"] == ["sh", "-c", "echo hi"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["EVIL"] == payload and env["KEY"] == "Odd_Key.v2"
        assert set(pod) <= {"apiVersion", "kind", "metadata", "spec"}  # nothing injected at the top
        assert set(pod["spec"]) == {"containers", "restartPolicy"} and len(container["env"]) >= 2
    assert not canary.exists()


# ---------------------------------------------------------------- broken data
async def test_broken_inputs_give_failure_records_and_the_run_goes_on(tmp_path: Path) -> None:
    yaml_in = YamlMetadataFileRepository(tmp_path / "yaml_in")
    json_in = JsonMetadataFileRepository(tmp_path / "json_in")
    out = MemoryMetadataRepository()
    keys = [f"k{i}" for i in range(10)]
    for k in keys:
        await yaml_in.put(k, {"n": k})
        await json_in.put(k, {"n": k, "pad": "x" * 200})
    (tmp_path / "yaml_in" / "k1.yaml").write_text("n: [unclosed\n  - : :\n")  # does not parse
    blob = (tmp_path / "json_in" / "k2.json").read_bytes()
    (tmp_path / "json_in" / "k2.json").write_bytes(blob[: len(blob) // 2])  # truncated JSON

    async def job(key: str, a: MetadataRepository, b: MetadataRepository, out: MetadataRepository) -> None:
        if key == "k3":  # the object vanishes between the listing and the read
            os.unlink(tmp_path / "json_in" / "k3.json")
        await out.put(key, {"a": await a.get(key), "b": await b.get(key)})

    task = FunctionTask("t", job, inputs={"a": yaml_in, "b": json_in}, outputs={"out": out})
    summary = await Pipeline([task]).run()
    records = {k: v async for k, v in task.done.items()}
    assert summary.failed == 3 and summary.succeeded == 7
    for key, cause in (("k1", "not valid YAML"), ("k2", "not valid JSON"), ("k3", "KeyNotFound")):
        rec = records[key]
        assert rec["success"] is False
        text = json.dumps(rec["error"])
        assert key in text and cause in text, (key, rec["error"])
    assert {k for k, r in records.items() if r["success"]} == set(keys) - {"k1", "k2", "k3"}
    assert set(await out.keys()) == set(keys) - {"k1", "k2", "k3"}
