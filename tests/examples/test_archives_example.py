"""The archives example against the local S3 server: archives -> pages (fan-out) -> page
statistics -> a report per archive (fan-in), killed midway, rerun, checked."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sys
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import service

pytestmark = pytest.mark.s3

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "archives" / "pipeline.py"
SEP = "/"
#: archive name -> number of text files in it
ARCHIVES = {f"book-{i}": 3 + i % 4 for i in range(8)}


@pytest.fixture
async def s3(services: dict[str, Any]) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    import aiobotocore.session
    from aiobotocore.config import AioConfig

    conf = service(services, "s3")
    session = aiobotocore.session.get_session()
    async with session.create_client(
        "s3",
        endpoint_url=conf["endpoint"],
        aws_access_key_id=conf["access_key"],
        aws_secret_access_key=conf["secret_key"],
        region_name=conf.get("region", "us-east-1"),
        config=AioConfig(max_pool_connections=16),
    ) as client:
        yield client, conf


def _archive(name: str, files: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(files):
            body = (f"{name} part {i}\n" + "word " * (10 * (i + 1)) + "\n").encode()
            info = tarfile.TarInfo(f"{name}/chapter {i}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
        folder = tarfile.TarInfo(f"{name}/notes")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)  # not a file: no page
    return buf.getvalue()


async def _names(client: Any, bucket: str, prefix: str = "") -> list[str]:
    names: list[str] = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names.extend(obj["Key"] for obj in page.get("Contents", []))
    return names


async def _read(client: Any, bucket: str, name: str) -> bytes:
    obj = await client.get_object(Bucket=bucket, Key=name)
    async with obj["Body"] as body:
        data: bytes = await body.read()
    return data


def _env(conf: dict[str, Any], bucket: str, delay: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=conf["access_key"],
        AWS_SECRET_ACCESS_KEY=conf["secret_key"],
        AWS_DEFAULT_REGION=conf.get("region", "us-east-1"),
        PDT_S3_ENDPOINT=conf["endpoint"],
        PDT_S3_BUCKET=bucket,
        PDT_S3_PREFIX="ds/",
        PDT_EXAMPLE_DELAY=delay,
        PDT_S3_CONCURRENCY="4",
        PYTHONPATH=str(ROOT),
    )
    return env


async def _run(env: dict[str, str], *args: str) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(100):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def _page(archive: str, number: int) -> str:
    return f"{archive}{SEP}page-{number:04d}"


async def test_archives_killed_midway_then_rerun_give_each_page_and_report_once(
    s3: tuple[Any, dict[str, Any]],
) -> None:
    client, conf = s3
    bucket = f"pdt-archives-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    for name, files in ARCHIVES.items():
        await client.put_object(Bucket=bucket, Key=f"ds/archives/{name}.tar.gz", Body=_archive(name, files))
    n_pages = sum(ARCHIVES.values())

    # first run: killed (SIGKILL) once some pages have their statistics
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "run",
        env=_env(conf, bucket, "0.1"),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(await _names(client, bucket, "ds/page-stats/")) >= 4:
                break
            assert proc.returncode is None, "the first run ended early"
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the first run made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert len(await _names(client, bucket, "ds/reports/")) < len(ARCHIVES), "finished before the kill"

    # second run: completes the rest
    env = _env(conf, bucket, "0")
    code, out, err = await _run(env, "run", "--json")
    assert code == 0, err.decode()[-3000:]

    pages = sorted(_page(a, i) for a, n in ARCHIVES.items() for i in range(1, n + 1))
    names = await _names(client, bucket)
    assert sorted(n[len("ds/pages/") : -len(".txt")] for n in names if n.startswith("ds/pages/")) == pages
    assert (
        sorted(n[len("ds/page-stats/") : -len(".yaml")] for n in names if n.startswith("ds/page-stats/"))
        == pages
    )
    assert sorted(
        n[len("ds/reports/") : -len(".md")] for n in names if n.startswith("ds/reports/")
    ) == sorted(ARCHIVES)
    assert [n for n in names if "/live/" in n] == [], "claims were left behind"
    records = {
        task: [n for n in names if n.startswith(f"ds/state/{task}/done/")]
        for task in ("unpack", "page_stats", "report")
    }
    assert [len(records[t]) for t in ("unpack", "page_stats", "report")] == [
        len(ARCHIVES),
        n_pages,
        len(ARCHIVES),
    ]
    # nothing outside the layout: archives, reports and their records; pages, their statistics and records
    assert len(names) == len(ARCHIVES) * 4 + n_pages * 3

    report = (await _read(client, bucket, "ds/reports/book-3.md")).decode()
    assert report.startswith("# book-3\n\n6 page(s), 228 words.")  # page k: 3 + 10k words
    assert "| page-0006 | 63 | 2 |" in report
    record = yaml.safe_load(await _read(client, bucket, "ds/state/report/done/book-3.yaml"))
    assert record["success"] is True and record["members"] == [_page("book-3", i) for i in range(1, 7)]
    unpacked = yaml.safe_load(await _read(client, bucket, "ds/state/unpack/done/book-3.yaml"))
    assert unpacked["children"] == {"pages": [_page("book-3", i) for i in range(1, 7)]}
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == [], "an upload in progress was left behind"

    # a third run has nothing to do
    code, out, err = await _run(env, "run", "--json")
    assert code == 0 and b'"succeeded": 0' in out, out.decode() + err.decode()[-2000:]

    for name in names:
        await client.delete_object(Bucket=bucket, Key=name)
    await client.delete_bucket(Bucket=bucket)
