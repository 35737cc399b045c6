"""The main example and the S3 example, each as a script and as ``pipeline.yaml``: the same
graph and the same results."""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from pydatatask.cli import run_cli
from pydatatask.cli.command import run_command
from pydatatask.config import load_pipeline
from tests.conftest import service

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ROOT / "examples" / "documents"
S3_EXAMPLE = ROOT / "examples" / "s3_dataset"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_documents_graph_is_that_of_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from examples.documents.pipeline import build_pipeline

    monkeypatch.setenv("PDT_EXAMPLE_DATA", str(tmp_path))
    script = build_pipeline(tmp_path)
    from_file = load_pipeline(DOCUMENTS / "pipeline.yaml")
    assert from_file.graph.drawing().as_dict() == script.graph.drawing().as_dict()
    assert from_file.graph.edges == script.graph.edges
    assert from_file.graph.to_text() == script.graph.to_text()
    for name, task in script.tasks.items():
        other = from_file.tasks[name]
        assert other.describe() == task.describe()
        assert (other.concurrency, other.timeout, other.retry, other.group_by) == (
            task.concurrency,
            task.timeout,
            task.retry,
            task.group_by,
        )
        assert {n: lk.kind for n, lk in other.links.items()} == {n: lk.kind for n, lk in task.links.items()}
    for p in (script, from_file):
        p.tasks["stats"].executor.pool.shutdown()  # type: ignore[attr-defined]


def test_documents_run_gives_the_same_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from examples.documents.pipeline import build_pipeline, generate_documents

    monkeypatch.setattr("examples.documents.pipeline.DELAY", 0.0)
    by_script, by_file = tmp_path / "script", tmp_path / "file"
    for data in (by_script, by_file):
        generate_documents(data / "docs", n=12)
    assert run_cli(build_pipeline(by_script), ["run", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    monkeypatch.setenv("PDT_EXAMPLE_DATA", str(by_file))
    assert run_command(["-f", str(DOCUMENTS / "pipeline.yaml"), "run", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)
    assert first["succeeded"] == second["succeeded"] == 12 + 12 + 1
    for folder in ("stats", "reports"):
        assert _files(by_file / folder) == _files(by_script / folder)
        assert len(_files(by_file / folder)) == 12
    assert (by_file / "summary.md").read_text() == (by_script / "summary.md").read_text()
    # the job records say the same (but for times and hosts)
    record = json.loads(
        json.dumps(
            __import__("yaml").safe_load(
                (by_file / "state" / "summary" / "done" / "summary.yaml").read_text()
            )
        )
    )
    assert record["success"] is True and len(record["members"]) == 12


# ---------------------------------------------------------------- the S3 example
def test_s3_example_takes_its_concurrency_from_the_environment_as_its_script_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PDT_S3_BUCKET", "a-bucket")  # the script reads it when imported
    monkeypatch.delenv("PDT_S3_CONCURRENCY", raising=False)
    sys.modules.pop("examples.s3_dataset.pipeline", None)
    try:
        by_default = load_pipeline(S3_EXAMPLE / "pipeline.yaml")
        assert [t.concurrency for t in by_default.tasks.values()] == [16, 16]
        monkeypatch.setenv("PDT_S3_CONCURRENCY", "4")
        chosen = load_pipeline(S3_EXAMPLE / "pipeline.yaml")
        assert [t.concurrency for t in chosen.tasks.values()] == [4, 4]
    finally:
        sys.modules.pop("examples.s3_dataset.pipeline", None)


def _client(conf: dict[str, Any]) -> Any:
    import aiobotocore.session

    return aiobotocore.session.get_session().create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
    )


async def _upload(conf: dict[str, Any], bucket: str, prefixes: list[str], n: int) -> None:
    async with _client(conf) as client:
        await client.create_bucket(Bucket=bucket)
        for prefix in prefixes:
            for i in range(n):
                body = f"document {i}\n" + " ".join(f"w{j % (i + 2)}" for j in range(30)) + "\n"
                await client.put_object(Bucket=bucket, Key=f"{prefix}docs/d{i:02d}.txt", Body=body.encode())


async def _objects(conf: dict[str, Any], bucket: str, prefix: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async with _client(conf) as client:
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                response = await client.get_object(Bucket=bucket, Key=obj["Key"])
                async with response["Body"] as body:
                    found[obj["Key"][len(prefix) :]] = await body.read()
    return found


async def _remove(conf: dict[str, Any], bucket: str) -> None:
    async with _client(conf) as client:
        async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                await client.delete_object(Bucket=bucket, Key=obj["Key"])
        await client.delete_bucket(Bucket=bucket)


@pytest.mark.s3
def test_s3_example_as_file_and_as_script(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = service(services, "s3")
    bucket = f"pdt-files-{uuid.uuid4().hex[:10]}"
    n = 6
    asyncio.run(_upload(conf, bucket, ["script/", "file/"], n))
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", conf["access_key"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", conf["secret_key"])
        monkeypatch.setenv("AWS_DEFAULT_REGION", conf.get("region", "us-east-1"))
        monkeypatch.setenv("PDT_S3_ENDPOINT", conf["endpoint"])
        monkeypatch.setenv("PDT_S3_BUCKET", bucket)
        monkeypatch.setenv("PDT_S3_PREFIX", "script/")
        monkeypatch.setenv("PDT_S3_CONCURRENCY", "3")
        sys.modules.pop("examples.s3_dataset.pipeline", None)  # it reads its settings when imported
        example = importlib.import_module("examples.s3_dataset.pipeline")
        yaml_file = str(S3_EXAMPLE / "pipeline.yaml")
        from_file = load_pipeline(yaml_file)
        assert (
            {n: t.concurrency for n, t in from_file.tasks.items()}
            == {n: t.concurrency for n, t in example.pipeline.tasks.items()}
            == {"stats": 3, "words": 3}
        )

        # the graphs, with the same settings
        assert run_cli(example.pipeline, ["graph", "--json"]) == 0
        graph_script = capsys.readouterr().out
        assert run_command(["-f", yaml_file, "graph", "--json"]) == 0
        graph_file = capsys.readouterr().out
        assert json.loads(graph_file) == json.loads(graph_script)
        assert conf["secret_key"] not in graph_file

        # the runs, each on its own prefix
        assert run_cli(example.pipeline, ["run", "--json"]) == 0
        by_script_summary = json.loads(capsys.readouterr().out)
        monkeypatch.setenv("PDT_S3_PREFIX", "file/")
        assert run_command(["-f", yaml_file, "run", "--json"]) == 0
        by_file_summary = json.loads(capsys.readouterr().out)
        assert by_file_summary["succeeded"] == by_script_summary["succeeded"] == 2 * n

        by_script = asyncio.run(_objects(conf, bucket, "script/"))
        by_file = asyncio.run(_objects(conf, bucket, "file/"))
        results = {k: v for k, v in by_script.items() if not k.startswith("state/")}
        assert {k: v for k, v in by_file.items() if not k.startswith("state/")} == results
        assert len([k for k in results if k.startswith("words/")]) == n
        assert f"documents: {n}".encode() in results["summary.yaml"]
        # records in the same places, and no claim left
        state = sorted(k for k in by_script if k.startswith("state/"))
        assert len(state) == 2 * n
        assert sorted(k for k in by_file if k.startswith("state/")) == state
    finally:
        sys.modules.pop("examples.s3_dataset.pipeline", None)
        asyncio.run(_remove(conf, bucket))
