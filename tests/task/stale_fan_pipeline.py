"""Archives -> pages (fan-out) -> page statistics -> one report per archive (fan-in), over
local files, for tests/task/test_stale_fan.py.

``python tests/task/stale_fan_pipeline.py DATA [--rerun-stale]`` runs it once and prints its
summary as JSON on the last line. Layout under ``DATA``::

    archives/<archive>.txt      inputs (written by the test): pages separated by "\\n---\\n"
    pages/<archive>/p<N>.txt    task "unpack" (fan-out)
    stats/<archive>/p<N>.yaml   task "page_stats": the words of the page
    reports/<archive>.md        task "report" (fan-in over the pages of an archive)
    state/                      job records and claims
    runs.log                    one line per job start (O_APPEND): "TASK KEY PID"
    hold-<archive>              while this file exists, the job of "unpack" on the archive
                                waits (at most 20 s) before it writes a page
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydatatask import FileRepository, YamlMetadataFileRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FanOut, FunctionTask
from tests.task.stale_support import main, note, wait_while


def build(data: Path) -> Pipeline:
    """The pipeline over ``data``."""

    async def unpack(key: str, archive: FileRepository, pages: FileRepository) -> None:
        note(data, f"unpack {key} {os.getpid()}\n")
        await wait_while(data, f"hold-{key}")
        await asyncio.sleep(0.02)  # long enough for a second scheduler to try the same key
        text = (await archive.read_bytes(key)).decode()
        for number, page in enumerate(text.split("\n---\n"), start=1):
            await pages.write_bytes(f"{key}/p{number}", page.encode())

    async def page_stats(key: str, page: FileRepository, stats: MetadataRepository) -> None:
        note(data, f"page_stats {key} {os.getpid()}\n")
        await asyncio.sleep(0.02)
        await stats.put(key, {"words": len((await page.read_bytes(key)).split())})

    async def report(key: str, members: list[str], stats: MetadataRepository, report: FileRepository) -> None:
        note(data, f"report {key} {os.getpid()}\n")
        figures = await stats.get_many(members)
        lines = [f"{m} {figures[m]['words']}" for m in members]
        await report.write_bytes(key, ("\n".join(lines) + "\n").encode())

    pages = FileRepository(data / "pages", ".txt")
    stats = YamlMetadataFileRepository(data / "stats")
    tasks = [
        FunctionTask(
            "unpack",
            unpack,
            inputs={"archive": FileRepository(data / "archives", ".txt")},
            outputs={"pages": FanOut(pages)},
        ),
        FunctionTask("page_stats", page_stats, inputs={"page": pages}, outputs={"stats": stats}),
        FunctionTask(
            "report",
            report,
            inputs={"stats": stats},
            outputs={"report": FileRepository(data / "reports", ".md")},
            group_by=lambda page: page.rsplit("/", 1)[0],
        ),
    ]
    return Pipeline(tasks, state_dir=data / "state", claim_lease="1s", claim_check_interval="0.2s")


if __name__ == "__main__":
    main(build)
