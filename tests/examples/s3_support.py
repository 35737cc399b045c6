"""Running an example script against a bucket of the S3 test server, as a user would: its
settings in the environment, killed midway, run again, the bucket read back."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def example_env(conf: dict[str, Any], bucket: str, *, delay: str, concurrency: str) -> dict[str, str]:
    """The environment an example reads: credentials, endpoint, bucket, prefix ``ds/``,
    the delay per job (``PDT_EXAMPLE_DELAY``) and the jobs at once (``PDT_S3_CONCURRENCY``)."""
    env = dict(os.environ)
    env.update(
        AWS_ACCESS_KEY_ID=conf["access_key"],
        AWS_SECRET_ACCESS_KEY=conf["secret_key"],
        AWS_DEFAULT_REGION=conf.get("region", "us-east-1"),
        PDT_S3_ENDPOINT=conf["endpoint"],
        PDT_S3_BUCKET=bucket,
        PDT_S3_PREFIX="ds/",
        PDT_EXAMPLE_DELAY=delay,
        PDT_S3_CONCURRENCY=concurrency,
        PYTHONPATH=str(ROOT),
    )
    return env


async def names(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every object name under ``prefix`` of ``bucket``."""
    found: list[str] = []
    async for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found.extend(obj["Key"] for obj in page.get("Contents", []))
    return found


async def read(client: Any, bucket: str, name: str) -> bytes:
    """The bytes of one object."""
    obj = await client.get_object(Bucket=bucket, Key=name)
    async with obj["Body"] as body:
        data: bytes = await body.read()
    return data


async def run(script: Path, env: dict[str, str], *args: str, within: float) -> tuple[int, bytes, bytes]:
    """Run ``script ARGS`` to its end (``within`` seconds): its exit code, stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(within):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


async def run_killed(
    script: Path, env: dict[str, str], client: Any, bucket: str, prefix: str, count: int
) -> None:
    """Run ``script run`` and kill it (SIGKILL, its whole process group: no chance to clean
    up) once ``count`` objects exist under ``prefix``; fail if it ends or stalls before."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
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
            if len(await names(client, bucket, prefix)) >= count:
                break
            assert proc.returncode is None, "the first run ended early"
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the first run made no progress")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()


async def no_upload_left(client: Any, bucket: str) -> None:
    """Check that no multipart upload of ``bucket`` is in progress."""
    uploads = await client.list_multipart_uploads(Bucket=bucket)
    assert uploads.get("Uploads", []) == [], "an upload in progress was left behind"


async def remove_bucket(client: Any, bucket: str, found: list[str]) -> None:
    """Delete the objects ``found`` and then ``bucket``."""
    for name in found:
        await client.delete_object(Bucket=bucket, Key=name)
    await client.delete_bucket(Bucket=bucket)
