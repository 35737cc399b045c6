"""The object-store example against the local S3 server: killed midway, rerun, checked."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
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
SCRIPT = ROOT / "examples" / "s3_dataset" / "pipeline.py"
N = 300


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
        config=AioConfig(max_pool_connections=32),
    ) as client:
        yield client, conf


async def _names(client: Any, bucket: str, prefix: str = "") -> list[str]:
    names: list[str] = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names.extend(obj["Key"] for obj in page.get("Contents", []))
    return names


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
    async with asyncio.timeout(180):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def _env(conf: dict[str, Any], bucket: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=conf["access_key"],
        AWS_SECRET_ACCESS_KEY=conf["secret_key"],
        AWS_DEFAULT_REGION=conf.get("region", "us-east-1"),
        PDT_S3_ENDPOINT=conf["endpoint"],
        PDT_S3_BUCKET=bucket,
        PDT_S3_PREFIX="ds/",
        PDT_EXAMPLE_DELAY="0.03",
        PDT_S3_CONCURRENCY="8",
        PYTHONPATH=str(ROOT),
    )
    return env


async def test_example_killed_midway_then_rerun_completes_exactly_once(
    s3: tuple[Any, dict[str, Any]],
) -> None:
    client, conf = s3
    bucket = f"pdt-example-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    sem = asyncio.Semaphore(32)

    async def upload(i: int) -> None:
        async with sem:
            body = f"document {i}\n" + " ".join(f"word{j % (i + 3)}" for j in range(50)) + "\n"
            await client.put_object(Bucket=bucket, Key=f"ds/docs/d{i:03d}.txt", Body=body.encode())

    await asyncio.gather(*(upload(i) for i in range(N)))
    env = _env(conf, bucket)

    # first run: killed (SIGKILL, no chance to clean up) once part of the work is done
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        "run",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(await _names(client, bucket, "ds/stats/")) >= 40:
                break
            assert proc.returncode is None, "the first run ended early"
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the first run made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    stats_at_kill = len(await _names(client, bucket, "ds/stats/"))
    assert stats_at_kill < N, "the run finished before it was killed: nothing was tested"

    # second run: completes the rest
    code, out, err = await _run(env, "run", "--json")
    assert code == 0, err.decode()[-3000:]

    keys = {f"d{i:03d}" for i in range(N)}
    names = await _names(client, bucket)
    by_prefix: dict[str, list[str]] = {}
    for name in names:
        by_prefix.setdefault(name.split("/")[1] if name.count("/") >= 2 else name, []).append(name)
    assert sorted(n[len("ds/stats/") : -len(".yaml")] for n in by_prefix["stats"]) == sorted(keys)
    assert sorted(n[len("ds/words/") : -len(".json")] for n in by_prefix["words"]) == sorted(keys)
    state = by_prefix["state"]
    assert [n for n in state if "/live/" in n] == [], "claims were left behind"
    for task in ("stats", "words"):
        records = [n for n in state if n.startswith(f"ds/state/{task}/done/")]
        assert len(records) == N
    # every record is a success record, and no object outside the expected layout exists
    sample = await client.get_object(Bucket=bucket, Key=f"ds/state/words/done/d{N - 1:03d}.yaml")
    async with sample["Body"] as body:
        assert yaml.safe_load(await body.read())["success"] is True
    assert len(names) == N * 5 + 1, sorted(set(names) - {n for v in by_prefix.values() for n in v})
    summary = await client.get_object(Bucket=bucket, Key="ds/summary.yaml")
    async with summary["Body"] as body:
        assert yaml.safe_load(await body.read())["documents"] == N
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == [], "an upload in progress was left behind"

    # a third run has nothing to do
    code, out, err = await _run(env, "run", "--json")
    assert code == 0 and b'"succeeded": 0' in out, out.decode() + err.decode()[-2000:]

    for name in names:
        await client.delete_object(Bucket=bucket, Key=name)
    await client.delete_bucket(Bucket=bucket)
