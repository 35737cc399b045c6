"""A one-task pipeline whose every job execution is counted, for the reliability tests.

``python tests/reliability/pipelines/counted.py COMMAND ...`` (the pydatatask CLI). All
settings come from the environment so the harness can start several copies at once:

``PDT_REL_BACKEND``  ``files`` | ``s3`` | ``mongo``: where inputs, outputs, records and claims live
``PDT_REL_DATA``     a local directory: the side-effect logs (and, for ``files``, everything)
``PDT_REL_NS``       a namespace unique to the test: the S3 prefix ``NS/...``, the Mongo
                     collections ``NS_...``
``PDT_REL_S3``       JSON ``{"endpoint", "access_key", "secret_key", "region", "bucket"}``
``PDT_REL_MONGO``    a MongoDB URI (may point at the harness's cut-able proxy)
``PDT_REL_SLEEP``    seconds each job sleeps between its side effect and its output
``PDT_REL_CONCURRENCY``, ``PDT_REL_LEASE``, ``PDT_REL_CHECK`` (claim check interval)
``PDT_REL_BATCH``    keys per call (``batch=``); above 1 the task is batched: one call reads
                     its keys' inputs, logs each, sleeps once and writes each output (a key
                     whose read or write fails fails alone); ``PDT_REL_BATCH_WAIT`` its
                     ``batch_wait``

Side effects, appended with ``O_APPEND`` (one ``write`` per line, so lines never interleave):
``runs.log`` gets ``KEY PID`` when a job starts its work; ``done.log`` gets ``KEY PID`` from
the ``job_succeeded`` hook, i.e. after the success record was written.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import (
    BackendUnavailableError,
    Backoff,
    FileRepository,
    MetadataRepository,
    RepositoryError,
    Session,
    YamlMetadataFileRepository,
)
from pydatatask.cli import main
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository, Repository
from pydatatask.task import Event, FunctionTask, JobContext, RetryPolicy

DATA = Path(os.environ["PDT_REL_DATA"])
BACKEND = os.environ.get("PDT_REL_BACKEND", "files")
NS = os.environ.get("PDT_REL_NS", "rel")
SLEEP = float(os.environ.get("PDT_REL_SLEEP", "0"))
CONCURRENCY = int(os.environ.get("PDT_REL_CONCURRENCY", "16"))
LEASE = os.environ.get("PDT_REL_LEASE", "60s")
CHECK = os.environ.get("PDT_REL_CHECK", "30s")
BATCH = int(os.environ.get("PDT_REL_BATCH", "1"))
BATCH_WAIT = os.environ.get("PDT_REL_BATCH_WAIT") or None


def append_line(path: Path, line: str) -> None:
    """Append one line atomically with respect to other appenders (one O_APPEND write)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def read_input(repo: Repository, key: str) -> bytes:
    if isinstance(repo, BlobRepository):
        return await repo.read_bytes(key)
    assert isinstance(repo, MetadataRepository)
    return str((await repo.get(key))["text"]).encode()


async def write_output(repo: Repository, key: str, data: bytes) -> None:
    if isinstance(repo, BlobRepository):
        await repo.write_bytes(key, data)
    else:
        assert isinstance(repo, MetadataRepository)
        await repo.put(key, {"text": data.decode()})


async def work(key: str, job: JobContext, src: Repository, out: Repository) -> None:
    data = await read_input(src, key)
    append_line(DATA / "runs.log", f"{key} {os.getpid()}")
    if SLEEP:
        await asyncio.sleep(SLEEP)
    await write_output(out, key, data.upper())


async def work_batch(
    keys: list[str], job: JobContext, src: Repository, out: Repository
) -> dict[str, BaseException]:
    """The batched ``work``: every key's side effect, one sleep, every key's output."""
    failed: dict[str, BaseException] = {}

    async def each(key: str, step: Any) -> None:
        try:
            await step(key)
        except Exception as exc:  # this key fails alone; cancellation propagates
            failed[key] = exc

    inputs: dict[str, bytes] = {}

    async def read(key: str) -> None:
        inputs[key] = await read_input(src, key)
        append_line(DATA / "runs.log", f"{key} {os.getpid()}")

    async def write(key: str) -> None:
        await write_output(out, key, inputs[key].upper())

    await asyncio.gather(*(each(k, read) for k in keys))
    if SLEEP:
        await asyncio.sleep(SLEEP)
    await asyncio.gather(*(each(k, write) for k in keys if k in inputs))
    return failed


def build_pipeline() -> Pipeline:
    session = Session()
    state: dict[str, Any]
    if BACKEND == "files":
        src: Repository = FileRepository(DATA / "src", ".txt")
        out: Repository = FileRepository(DATA / "out", ".txt")
        state = {
            "done": YamlMetadataFileRepository(DATA / "state" / "done"),
            "live": YamlMetadataFileRepository(DATA / "state" / "live"),
            "logs": FileRepository(DATA / "state" / "logs", ".log"),
        }
    elif BACKEND == "s3":
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        from pydatatask import S3BucketRepository, YamlMetadataS3Repository

        conf = json.loads(os.environ["PDT_REL_S3"])

        @session.resource
        async def s3() -> AsyncIterator[Any]:
            config = AioConfig(
                max_pool_connections=64,
                retries={"total_max_attempts": 1},
                connect_timeout=2,
                read_timeout=10,
            )
            async with get_session().create_client(
                "s3",
                endpoint_url=conf["endpoint"],
                aws_access_key_id=conf["access_key"],
                aws_secret_access_key=conf["secret_key"],
                region_name=conf.get("region", "us-east-1"),
                config=config,
            ) as client:
                yield client

        bucket = conf["bucket"]
        opts: dict[str, Any] = {"retry": Backoff(attempts=7, initial=0.2, max_delay=2.0)}
        src = S3BucketRepository(s3, bucket, f"{NS}/src/", ".txt", **opts)
        # every output goes through a multipart upload, so a kill can interrupt one
        out = S3BucketRepository(s3, bucket, f"{NS}/out/", ".txt", multipart_threshold=0, **opts)
        state = {
            "done": YamlMetadataS3Repository(s3, bucket, f"{NS}/done/", **opts),
            "live": YamlMetadataS3Repository(s3, bucket, f"{NS}/live/", **opts),
            "logs": S3BucketRepository(s3, bucket, f"{NS}/logs/", ".log", **opts),
        }
    elif BACKEND == "mongo":
        from pymongo import AsyncMongoClient

        from pydatatask import MongoMetadataRepository

        uri = os.environ["PDT_REL_MONGO"]

        @session.resource
        async def mongo() -> AsyncIterator[Any]:
            client: AsyncMongoClient[Any] = AsyncMongoClient(
                uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000, socketTimeoutMS=30000
            )
            try:
                yield client["pdt_reliability"]
            finally:
                await client.close()

        def coll(name: str) -> Any:
            return lambda: mongo()[f"{NS}_{name}"]

        opts = {"retry": Backoff(attempts=7, initial=0.2, max_delay=2.0)}
        src = MongoMetadataRepository(coll("src"), **opts)
        out = MongoMetadataRepository(coll("out"), **opts)
        state = {
            "done": MongoMetadataRepository(coll("done"), **opts),
            "live": MongoMetadataRepository(coll("live"), **opts),
            "logs": FileRepository(DATA / "state" / "logs", ".log"),
        }
    else:
        raise SystemExit(f"unknown PDT_REL_BACKEND {BACKEND!r}")

    task = FunctionTask(
        "work",
        work_batch if BATCH > 1 else work,
        batch=BATCH,
        batch_wait=BATCH_WAIT,
        inputs={"src": src},
        outputs={"out": out},
        concurrency=CONCURRENCY,
        # an outage of a few seconds must not turn into failure records
        retry=RetryPolicy(
            max_attempts=6, backoff=0.5, max_backoff=3.0, retry_on=(BackendUnavailableError, RepositoryError)
        ),
        **state,
    )
    pipeline = Pipeline([task], session, claim_lease=LEASE, claim_check_interval=CHECK, poll_interval="0.5s")

    @pipeline.hooks.on("job_succeeded")
    def _done(event: Event) -> None:
        append_line(DATA / "done.log", f"{event.key} {os.getpid()}")

    return pipeline


if __name__ == "__main__":
    main(build_pipeline(), sys.argv[1:])
