"""The page's states are the columns of ``status``: the same names, in the same order, with
the same counts, for a fan-in whose group is held back (the ``held`` column)."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from pydatatask import MemoryMetadataRepository
from pydatatask.cli import run_cli
from pydatatask.cli.output import STATUS_COLUMNS
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask

from .conftest import serve


def held_pipeline() -> Pipeline:
    """``pages`` (A/2 fails) then ``report``, a fan-in by the first segment: group A is held."""
    src = MemoryMetadataRepository({"A/1": 1, "A/2": 2, "B/1": 3})
    pages = MemoryMetadataRepository()
    reports = MemoryMetadataRepository()

    async def page(key: str, src: MetadataRepository, out: MetadataRepository) -> None:
        if key == "A/2":
            raise ValueError("page A/2 is unreadable")
        await out.put(key, await src.get(key))

    async def report(key: str, pages: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, "done")

    return Pipeline(
        [
            FunctionTask("pages", page, inputs={"src": src}, outputs={"out": pages}),
            FunctionTask(
                "report",
                report,
                inputs={"pages": pages},
                outputs={"out": reports},
                group_by=lambda key: key.split("/")[0],
            ),
        ]
    )


def cli(pipeline: Pipeline, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert run_cli(pipeline, list(argv)) == 0
    return capsys.readouterr().out


async def test_held_groups_in_status_and_on_the_page(
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str]
) -> None:
    pipeline = held_pipeline()
    summary = await pipeline.run()
    assert summary.succeeded == 3 and summary.failed == 1  # A/1, B/1, report B; A/2 failed
    # the command line runs its own event loop
    table = await asyncio.to_thread(cli, pipeline, capsys, "status")
    data = json.loads(await asyncio.to_thread(cli, pipeline, capsys, "status", "--json"))
    lines = table.splitlines()
    assert lines[0].split() == ["task", *STATUS_COLUMNS] and "held" in STATUS_COLUMNS
    held_at = STATUS_COLUMNS.index("held") + 1
    assert lines[2].split()[0] == "report" and lines[2].split()[held_at] == "1"
    assert "report held (1): A" in table
    assert "  A: waits for pages 'A/2'" in table
    report = data["report"]
    assert report["held"] == ["A"] and report["counts"]["held"] == 1
    assert report["counts"]["blocked"] == 1  # a held group is blocked too
    assert report["held_details"] == {"A": {"task": "pages", "key": "A/2"}}
    assert data["pages"]["counts"]["held"] == 0

    server, client = await serve(pipeline, http)
    try:
        status = await client.json("/api/status")
        assert status["states"] == list(STATUS_COLUMNS)
        for name in ("pages", "report"):
            assert status["tasks"][name]["counts"] == data[name]["counts"], name
        page = await client.json("/api/keys", task="report", state="held")
        assert page["keys"] == ["A"]
    finally:
        await server.__aexit__(None, None, None)


async def test_the_live_page_counts_held_groups_as_status_does(http: aiohttp.ClientSession) -> None:
    pipeline = held_pipeline()
    server, client = await serve(pipeline, http, live=True)
    try:
        summary = await pipeline.run(on_progress=lambda s: None)
        assert summary.failed == 1
        status = await client.json("/api/status")
        assert status["source"] == "scheduler" and status["states"] == list(STATUS_COLUMNS)
        counts = status["tasks"]["report"]["counts"]
        assert counts["held"] == 1 and counts["blocked"] == 1 and counts["succeeded"] == 1
        assert list(counts) == list(STATUS_COLUMNS)
    finally:
        await server.__aexit__(None, None, None)
