"""Every kind the file declares builds the object of the Python API, with its settings."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import pydatatask.repository as r
from pydatatask.config import load_pipeline, pipeline_schema, validate_file
from pydatatask.config._dask import SessionDaskExecutor
from pydatatask.executor import Hosts, InLoopExecutor, LocalHost, PoolExecutor
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.ssh import SSHHost
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask, LinkKind, ProcessTask
from pydatatask.task.pod import PodTask

from . import kinds

HERE = Path(__file__).resolve().parent
ENV = {"KINDS_KEY_ID": "AKID-1234", "KINDS_SECRET": "sekrit-value-99", "KINDS_MONGO_URL": "mongodb://u:p@h/"}


@pytest.fixture
def pipeline() -> Any:
    p = validate_file(HERE / "every_kind.yaml", environ=ENV)
    yield p
    for task in p.tasks.values():
        task.close()


def repo(p: Pipeline, task: str, link: str) -> Any:
    return p.tasks[task].links[link].repository


def test_every_repository_kind(pipeline: Pipeline) -> None:
    fn = pipeline.tasks["fn"]
    both = repo(pipeline, "fn", "src")
    assert isinstance(both, r.AndRepository)
    assert [type(c) for c in both.children] == [r.FileRepository, r.YamlMetadataFileRepository]
    assert both.children[0].root == HERE / "data" / "files"  # type: ignore[attr-defined]
    assert isinstance(repo(pipeline, "fn", "also"), r.FilterRepository)
    assert isinstance(repo(pipeline, "fn", "seen"), r.TranslateKeysRepository)
    assert fn.links["seen"].kind is LinkKind.OTHER
    assert isinstance(repo(pipeline, "fn", "guard"), r.BlockingRepository)
    assert fn.links["guard"].kind is LinkKind.INPUT and fn.links["guard"].required_for_start
    assert fn.fan_out == {"parts": "/"}
    assert isinstance(repo(pipeline, "fn", "done"), r.YamlMetadataFileRepository)
    assert isinstance(repo(pipeline, "fn", "logs"), r.FileRepository)
    assert isinstance(repo(pipeline, "fanin", "src"), r.OrRepository)
    shell = pipeline.tasks["shell"]
    assert isinstance(repo(pipeline, "shell", "src"), r.ReadOnlyRepository)
    assert isinstance(repo(pipeline, "shell", "maybe"), r.FallbackRepository)
    assert isinstance(repo(pipeline, "shell", "shouted"), r.MapValuesRepository)
    assert isinstance(repo(pipeline, "shell", "out"), r.DirectoryRepository)
    assert isinstance(shell.links["stdout"].repository, r.MemoryBlobRepository)
    assert isinstance(repo(pipeline, "scripted", "out"), r.JsonMetadataFileRepository)
    assert isinstance(repo(pipeline, "scripted", "clock"), r.ClockRepository)
    s3 = repo(pipeline, "pod", "src")
    assert isinstance(s3, r.S3BucketRepository) and (s3.bucket, s3.prefix) == ("b", "in/")
    assert isinstance(repo(pipeline, "pod", "y"), r.YamlMetadataS3Repository)
    assert isinstance(repo(pipeline, "pod", "j"), r.JsonMetadataS3Repository)
    assert isinstance(repo(pipeline, "pod", "docs"), r.MongoMetadataRepository)
    assert isinstance(repo(pipeline, "pod", "img"), r.DockerRepository)
    assert isinstance(repo(pipeline, "pod-from-file", "src"), r.ClockRepository)
    over = repo(pipeline, "pod-from-file", "out")
    assert isinstance(over, r.YamlMetadataRepository) and isinstance(over.blobs, r.MemoryBlobRepository)


def test_every_executor_and_task_kind(pipeline: Pipeline) -> None:
    fn = pipeline.tasks["fn"]
    assert isinstance(fn, FunctionTask) and fn.func is kinds.noop
    assert isinstance(fn.executor, InLoopExecutor) and fn.executor.name == "loop"
    assert (fn.concurrency, fn.timeout, fn.priority, fn.version, fn.on_change) == (3, 90.0, 5, "2", "rerun")
    assert fn.retry.max_attempts == 4 and fn.retry.retry_on == (OSError, TimeoutError)
    assert (fn.retry.backoff, fn.retry.factor, fn.retry.max_backoff) == (2.0, 3.0, 60.0)
    assert pipeline.tasks["fanin"].group_by is kinds.by_folder
    dask = pipeline.tasks["fanin"].executor
    assert isinstance(dask, SessionDaskExecutor) and dask.name == "gpus"
    assert (dask.capacity.max_jobs, dask.capacity.cpu) == (8, 16)
    shell = pipeline.tasks["shell"]
    assert isinstance(shell, ProcessTask) and isinstance(shell.executor, Hosts)
    local, remote = shell.hosts
    assert isinstance(local, LocalHost) and isinstance(remote, SSHHost)
    assert (remote.cpus, remote.name) == (4, "remote")
    assert shell.env == {"API_TOKEN": ENV["KINDS_SECRET"]} and shell.params == {"lines": 3}
    assert (shell.cpu, shell.memory, shell.kill_grace) == (1.0, 512 * 2**20, 2.0)
    scripted = pipeline.tasks["scripted"]
    assert isinstance(scripted, ProcessTask) and scripted.is_script
    assert scripted.template == (HERE / "script.sh").read_text()
    pod = pipeline.tasks["pod"]
    assert isinstance(pod, PodTask) and isinstance(pod.executor, KubeExecutor)
    assert pod.executor.cluster.namespace == "jobs"
    assert pod.render("a-key")["spec"]["containers"][0]["command"] == ["sh", "-c", "echo a-key"]
    from_file = pipeline.tasks["pod-from-file"]
    assert isinstance(from_file, PodTask)
    assert from_file.render("k")["spec"]["containers"][0] == {
        "name": "main",
        "image": "busybox",
        "command": ["echo", "k"],
    }
    # the Dask clients are session resources too: nothing connects while the file is checked
    assert pipeline.session.resource_names == (
        "store",
        "db",
        "box",
        "cluster",
        "executors.gpus",
        "executors.cores",
    )
    assert (pipeline.poll_interval, pipeline.claim_lease, pipeline.max_jobs) == (0.5, 20.0, 16)
    assert pipeline.refresh == 60.0
    assert pipeline.create_repositories is False


def test_pool_executors(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "executors:\n"
        "  threads: {kind: threads, workers: 3, max_jobs: 2}\n"
        "  procs: {kind: processes, workers: 1}\n"
        "repositories:\n  m: {kind: memory_blobs}\n"
        "tasks:\n"
        "  a: {kind: function, function: 'json:dumps', executor: threads, inputs: {m: m}}\n"
        "  b: {kind: function, function: 'json:dumps', executor: procs, inputs: {m: m}}\n"
    )
    p = load_pipeline(tmp_path / "p.yaml", environ={})
    a, b = p.tasks["a"].executor, p.tasks["b"].executor
    assert isinstance(a, PoolExecutor) and isinstance(a.pool, ThreadPoolExecutor) and a.pool._max_workers == 3
    assert isinstance(b, PoolExecutor) and isinstance(b.pool, ProcessPoolExecutor)
    assert p.tasks["a"].func is json.dumps  # type: ignore[attr-defined]
    a.pool.shutdown()
    b.pool.shutdown()


async def test_a_hook_gets_its_repositories(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "python_path: [" + str(HERE.parents[1]) + "]\n"
        "repositories:\n  src: {kind: memory_blobs}\n  meta: {kind: memory_metadata}\n"
        "tasks:\n  t: {kind: function, function: 'tests.config.kinds:noop', inputs: {src: src}}\n"
        "pipeline:\n  hooks:\n    pipeline_finished: [{function: 'tests.config.kinds:summarize', repositories: {meta: meta}}]\n"
    )
    p = load_pipeline(tmp_path / "p.yaml", environ={})
    summary = await p.run()
    assert summary.ok
    hooked = p.hooks._callbacks["pipeline_finished"][0]
    assert await hooked.keywords["meta"].get("last-run") == {"event": "pipeline_finished"}  # type: ignore[attr-defined]


def test_retry_on_must_name_an_exception(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "python_path: [" + str(HERE.parents[1]) + "]\n"
        "tasks:\n  t: {kind: process, command: 'true', retry: {retry_on: ['tests.config.kinds:NotAnException']}}\n"
    )
    with pytest.raises(
        Exception, match=r"p.yaml:3:58: tasks.t.retry.retry_on\[0\]: .* is not an exception class"
    ):
        load_pipeline(tmp_path / "p.yaml", environ={})


def test_the_schema_is_shipped_and_closed() -> None:
    schema = pipeline_schema()
    assert schema["additionalProperties"] is False and schema["required"] == ["tasks"]
    for name, definition in schema["$defs"].items():
        if definition.get("type") == "object" and "properties" in definition and "allOf" not in definition:
            assert definition.get("additionalProperties") is False, name
        elif "allOf" in definition:  # a kind: each `then` is closed
            for branch in definition["allOf"]:
                target = branch["then"]["$ref"].rsplit("/", 1)[1]
                assert schema["$defs"][target]["additionalProperties"] is False, target


def test_the_docs_reference_shows_every_kind_and_key() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "pipeline_schema", HERE.parents[1] / "docs" / "_ext" / "pipeline_schema.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema = pipeline_schema()
    text = "\n".join(module.reference(schema))
    for section, prefix in (
        ("resource", "resource"),
        ("repository", "repo"),
        ("executor", "executor"),
        ("task", "task"),
    ):
        for kind in schema["$defs"][section]["properties"]["kind"]["enum"]:
            assert f"``kind: {kind}``" in text, kind
            target = schema["$defs"][f"{prefix}_{kind}"]
            for key in target["properties"]:
                assert f"``{key}``" in text, (kind, key)
