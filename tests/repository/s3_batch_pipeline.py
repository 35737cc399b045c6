"""A one-stage batched pipeline with inputs, outputs, records and claims in S3, for
tests/repository/test_s3_bundles.py.

``python tests/repository/s3_batch_pipeline.py DATA BUCKET PREFIX [BATCH]`` runs it once
(the S3 test server of ``$PDT_TEST_SERVICES``) and prints its summary as JSON on the last
line. Objects under ``PREFIX``: ``src/KEY`` (written by the test), ``out/KEY`` (the input
upper-cased), ``done/``, ``live/``. Under the local folder ``DATA``:

    runs.log   "start KEY" per key when a call begins, "end KEY" when it returns (O_APPEND)
    hold       while this file exists, a call waits (at most 20 s) after writing its outputs
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import Session
from pydatatask.pipeline import Pipeline
from pydatatask.repository.s3 import S3BucketRepository, YamlMetadataS3Repository
from pydatatask.task import FunctionTask


def note(data: Path, lines: list[str]) -> None:
    fd = os.open(data / "runs.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)


def runs(data: Path) -> list[tuple[str, str]]:
    """``(event, key)`` of every line of ``runs.log`` so far."""
    path = data / "runs.log"
    if not path.exists():
        return []
    return [(line.split()[0], line.split()[1]) for line in path.read_text().splitlines() if line.strip()]


def build(data: Path, conf: dict[str, Any], bucket: str, prefix: str, batch: int = 10) -> Pipeline:
    """The pipeline over ``prefix`` of ``bucket``, with batches of ``batch`` keys."""
    from tests.repository.test_s3 import make_client

    session = Session()

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        async with make_client(conf) as client:
            yield client

    async def upper(keys: list[str], src: S3BucketRepository, out: S3BucketRepository) -> None:
        note(data, [f"start {k}\n" for k in keys])
        for key in keys:
            await out.write_bytes(key, (await src.read_bytes(key)).upper())
        for _ in range(400):
            if not (data / "hold").exists():
                break
            await asyncio.sleep(0.05)
        note(data, [f"end {k}\n" for k in keys])

    task = FunctionTask(
        "upper",
        upper,
        inputs={"src": S3BucketRepository(s3, bucket, f"{prefix}src/")},
        outputs={"out": S3BucketRepository(s3, bucket, f"{prefix}out/")},
        done=YamlMetadataS3Repository(s3, bucket, f"{prefix}done/"),
        live=YamlMetadataS3Repository(s3, bucket, f"{prefix}live/"),
        batch=batch,
        concurrency=2,
    )
    return Pipeline([task], session)


if __name__ == "__main__":
    services = json.loads(Path(os.environ["PDT_TEST_SERVICES"]).read_text())
    folder, name, under = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    summary = build(folder, services["s3"], name, under, size).run_sync()
    print(json.dumps(summary.as_dict()))
