"""The archives example against the local S3 server: archives -> pages (fan-out) -> page
statistics -> a report per archive (fan-in), killed midway, rerun, checked."""

from __future__ import annotations

import io
import tarfile
import uuid
from typing import Any

import pytest
import yaml

from tests.examples.s3_support import (
    ROOT,
    example_env,
    names,
    no_upload_left,
    read,
    remove_bucket,
    run,
    run_killed,
)

pytestmark = pytest.mark.s3

SCRIPT = ROOT / "examples" / "archives" / "pipeline.py"
SEP = "/"
#: archive name -> number of text files in it
ARCHIVES = {f"book-{i}": 3 + i % 4 for i in range(8)}


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


def _env(conf: dict[str, Any], bucket: str, delay: str) -> dict[str, str]:
    return example_env(conf, bucket, delay=delay, concurrency="4")


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
    await run_killed(SCRIPT, _env(conf, bucket, "0.1"), client, bucket, "ds/page-stats/", 4)
    assert len(await names(client, bucket, "ds/reports/")) < len(ARCHIVES), "finished before the kill"

    # second run: completes the rest
    env = _env(conf, bucket, "0")
    code, out, err = await run(SCRIPT, env, "run", "--json", within=100)
    assert code == 0, err.decode()[-3000:]

    pages = sorted(_page(a, i) for a, n in ARCHIVES.items() for i in range(1, n + 1))
    found = await names(client, bucket)
    assert sorted(n[len("ds/pages/") : -len(".txt")] for n in found if n.startswith("ds/pages/")) == pages
    assert (
        sorted(n[len("ds/page-stats/") : -len(".yaml")] for n in found if n.startswith("ds/page-stats/"))
        == pages
    )
    assert sorted(
        n[len("ds/reports/") : -len(".md")] for n in found if n.startswith("ds/reports/")
    ) == sorted(ARCHIVES)
    assert [n for n in found if "/live/" in n] == [], "claims were left behind"
    records = {
        task: [n for n in found if n.startswith(f"ds/state/{task}/done/")]
        for task in ("unpack", "page_stats", "report")
    }
    assert [len(records[t]) for t in ("unpack", "page_stats", "report")] == [
        len(ARCHIVES),
        n_pages,
        len(ARCHIVES),
    ]
    # nothing outside the layout: archives, reports and their records; pages, their statistics and records
    assert len(found) == len(ARCHIVES) * 4 + n_pages * 3

    report = (await read(client, bucket, "ds/reports/book-3.md")).decode()
    assert report.startswith("# book-3\n\n6 page(s), 228 words.")  # page k: 3 + 10k words
    assert "| page-0006 | 63 | 2 |" in report
    record = yaml.safe_load(await read(client, bucket, "ds/state/report/done/book-3.yaml"))
    assert record["success"] is True and record["members"] == [_page("book-3", i) for i in range(1, 7)]
    unpacked = yaml.safe_load(await read(client, bucket, "ds/state/unpack/done/book-3.yaml"))
    assert unpacked["children"] == {"pages": [_page("book-3", i) for i in range(1, 7)]}
    await no_upload_left(client, bucket)

    # a third run has nothing to do
    code, out, err = await run(SCRIPT, env, "run", "--json", within=100)
    assert code == 0 and b'"succeeded": 0' in out, out.decode() + err.decode()[-2000:]

    await remove_bucket(client, bucket, found)
