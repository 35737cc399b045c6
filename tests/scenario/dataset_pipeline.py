"""The dataset scenario's pipeline: ``.tar.gz`` archives on S3 under nested keys -> pages
(fan-out, local files) -> page statistics (local files) -> one report per archive (fan-in,
a local file).

``python tests/scenario/dataset_pipeline.py COMMAND ...`` (the pydatatask CLI). Every
setting comes from the environment, so a test can run several copies at once:

``PDT_SCN_DATA``      a local directory: ``pages/``, ``stats/``, ``reports/``, ``state/``
                      and the side-effect logs
``PDT_SCN_S3``        JSON ``{"endpoint", "access_key", "secret_key", "region", "bucket"}``
``PDT_SCN_PREFIX``    the S3 prefix of the archives (``NS/``): the key of
                      ``NS/incoming/2026/x.tar.gz`` is ``incoming/2026/x``
``PDT_SCN_STATE``     ``files`` (records and claims under ``PDT_SCN_DATA/state``, the
                      default) or ``s3`` (under ``PDT_SCN_PREFIX`` + ``state/``)
``PDT_SCN_UNPACK_DELAY``  seconds ``unpack`` waits before writing each page
``PDT_SCN_STATS_DELAY``   seconds ``page_stats`` waits before writing its output
``PDT_SCN_REPORT_DELAY``  seconds ``report`` waits before writing its output
``PDT_SCN_CONCURRENCY``   jobs at once per task (default 4)

Side effects, appended with ``O_APPEND`` (one ``write`` per line, so lines never
interleave), as JSON lines ``{"task", "key", "pid"}``: ``runs.log`` when a job starts its
work, ``done.log`` from the ``job_succeeded`` hook (after the success record is written).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import (
    FileRepository,
    MetadataRepository,
    S3BucketRepository,
    Session,
    YamlMetadataFileRepository,
    YamlMetadataS3Repository,
)
from pydatatask.cli import main
from pydatatask.pipeline import Pipeline
from pydatatask.task import Event, FanOut, FunctionTask, RetryPolicy

DATA = Path(os.environ["PDT_SCN_DATA"])
S3 = json.loads(os.environ["PDT_SCN_S3"])
PREFIX = os.environ["PDT_SCN_PREFIX"]
STATE = os.environ.get("PDT_SCN_STATE", "files")
UNPACK_DELAY = float(os.environ.get("PDT_SCN_UNPACK_DELAY", "0"))
STATS_DELAY = float(os.environ.get("PDT_SCN_STATS_DELAY", "0"))
REPORT_DELAY = float(os.environ.get("PDT_SCN_REPORT_DELAY", "0"))
CONCURRENCY = int(os.environ.get("PDT_SCN_CONCURRENCY", "4"))


def append_line(name: str, task: str, key: str) -> None:
    """Append one JSON line with one O_APPEND ``write`` (never interleaved with others)."""
    line = json.dumps({"task": task, "key": key, "pid": os.getpid()}) + "\n"
    fd = os.open(DATA / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def page_figures(text: str) -> dict[str, int]:
    """What ``page_stats`` computes of a page."""
    return {"words": len(text.split()), "lines": text.count("\n"), "characters": len(text)}


def report_text(key: str, figures: dict[str, dict[str, int]]) -> str:
    """The report of the archive ``key`` over ``{page key: figures}``."""
    rows = [
        f"{page[len(key) + 1 :]}\t{f['words']}\t{f['lines']}\t{f['characters']}"
        for page, f in sorted(figures.items())
    ]
    words = sum(f["words"] for f in figures.values())
    return f"{key}\n{len(figures)} pages, {words} words\n" + "".join(row + "\n" for row in rows)


async def unpack(key: str, archive: S3BucketRepository, pages: FileRepository) -> None:
    """Every regular file of the archive, in the archive's order, becomes ``key/page-NNNN``."""
    append_line("runs.log", "unpack", key)
    data = await archive.read_bytes(key)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        bodies = []
        for member in tar.getmembers():
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                bodies.append(extracted.read())
    for number, body in enumerate(bodies, start=1):
        if UNPACK_DELAY:
            await asyncio.sleep(UNPACK_DELAY)
        await pages.write_bytes(f"{key}/page-{number:04d}", body)


async def count(key: str, page: FileRepository, stats: FileRepository) -> None:
    append_line("runs.log", "page_stats", key)
    text = (await page.read_bytes(key)).decode()
    if STATS_DELAY:
        await asyncio.sleep(STATS_DELAY)
    await stats.write_bytes(key, json.dumps(page_figures(text), sort_keys=True).encode())


async def write_report(key: str, members: list[str], stats: FileRepository, report: FileRepository) -> None:
    append_line("runs.log", "report", key)
    figures = {m: json.loads(await stats.read_bytes(m)) for m in members}
    if REPORT_DELAY:
        await asyncio.sleep(REPORT_DELAY)
    await report.write_bytes(key, report_text(key, figures).encode())


def archive_of(page: str) -> str:
    return page.rsplit("/", 1)[0]


def build_pipeline() -> Pipeline:
    session = Session()

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        async with get_session().create_client(
            "s3",
            endpoint_url=S3["endpoint"],
            aws_access_key_id=S3["access_key"],
            aws_secret_access_key=S3["secret_key"],
            region_name=S3.get("region", "us-east-1"),
            config=AioConfig(max_pool_connections=32, retries={"total_max_attempts": 3}),
        ) as client:
            yield client

    bucket = S3["bucket"]

    def state(task: str, kind: str) -> MetadataRepository:
        if STATE == "s3":
            return YamlMetadataS3Repository(s3, bucket, f"{PREFIX}state/{task}/{kind}/")
        return YamlMetadataFileRepository(DATA / "state" / task / kind)

    archives = S3BucketRepository(s3, bucket, f"{PREFIX}incoming/", ".tar.gz")
    pages = FileRepository(DATA / "pages", ".txt")
    stats = FileRepository(DATA / "stats", ".json")
    reports = FileRepository(DATA / "reports", ".txt")
    retry = RetryPolicy(max_attempts=2, backoff="0.2s")
    common: dict[str, Any] = {"concurrency": CONCURRENCY, "retry": retry}
    tasks = [
        FunctionTask(
            "unpack",
            unpack,
            inputs={"archive": archives},
            outputs={"pages": FanOut(pages, "/")},
            done=state("unpack", "done"),
            live=state("unpack", "live"),
            **common,
        ),
        FunctionTask(
            "page_stats",
            count,
            inputs={"page": pages},
            outputs={"stats": stats},
            done=state("page_stats", "done"),
            live=state("page_stats", "live"),
            **common,
        ),
        FunctionTask(
            "report",
            write_report,
            inputs={"stats": stats},
            outputs={"report": reports},
            group_by=archive_of,
            done=state("report", "done"),
            live=state("report", "live"),
            **common,
        ),
    ]
    pipeline = Pipeline(tasks, session, poll_interval="0.2s", claim_lease="30s")

    def done(event: Event) -> None:
        assert event.task is not None and event.key is not None
        append_line("done.log", event.task, event.key)

    pipeline.hooks.on("job_succeeded", done)
    return pipeline


if __name__ == "__main__":
    main(build_pipeline(), sys.argv[1:])
