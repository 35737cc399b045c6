"""The log of a running job over ``/api/log/live``: its lines as they come, the output so
far of a process, the end of the stream when the job ends; and what a ``serve`` that runs
no scheduler says instead."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import aiohttp

from pydatatask import FileRepository, MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.executor import LocalHost
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository, MetadataRepository, Repository
from pydatatask.task import FunctionTask, JobContext, ProcessTask, RetryPolicy
from pydatatask.web.live_log import NO_LIVE_LOG, tail

from .conftest import Client, Gate, serve


def talking(gate: Gate, **kwargs: Any) -> Pipeline:
    """One task whose job on ``a`` logs a line, waits, logs another, waits, ends."""
    src = kwargs.pop("src", None) or MemoryMetadataRepository({"a": 1})
    out = kwargs.pop("out", None) or MemoryMetadataRepository()
    state_dir = kwargs.pop("state_dir", None)

    async def talk(key: str, src: Repository, out: Repository, job: JobContext) -> None:
        job.log("the first line")
        await gate.wait()
        job.log("the second line")
        await gate.wait()
        if isinstance(out, BlobRepository):
            await out.write_text(key, "done")
        else:
            assert isinstance(out, MetadataRepository)
            await out.put(key, "done")

    task = FunctionTask("talk", talk, inputs={"src": src}, outputs={"out": out}, **kwargs)
    return Pipeline([task], state_dir=state_dir)


async def live(client: Client, task: str, key: str) -> AsyncGenerator[dict[str, Any], None]:
    """The events of the live log of ``task`` ``key``, until the server ends the stream."""
    async with (
        asyncio.timeout(30),
        client.session.get(client.base + "/api/log/live", params={"task": task, "key": key}) as r,
    ):
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
        async for line in r.content:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


async def running_here(client: Client, task: str, key: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            job: dict[str, Any] = await client.json("/api/job", task=task, key=key)
            if job["live_log"]:
                return job
            await asyncio.sleep(0.02)


async def test_lines_stream_while_the_job_runs_then_the_stream_ends(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    pipeline = talking(gate, logs=MemoryBlobRepository())
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        await running_here(client, "talk", "a")
        log = await client.json("/api/log", task="talk", key="a")
        assert log["text"] is None and "/api/log/live" in log["why"]
        events = live(client, "talk", "a")
        first = await anext(events)
        assert first["reset"] and first["attempt"] == 1 and first["skipped"] == 0
        assert [line.split(" ", 1)[1] for line in first["lines"]] == ["the first line"]
        gate.open()
        second = await anext(events)
        while not second.get("lines"):  # the output so far (none: a function call) may come first
            second = await anext(events)
        assert [line.split(" ", 1)[1] for line in second["lines"]] == ["the second line"]
        assert not second.get("reset") and not second.get("end")
        gate.open()
        last = await anext(events)
        while not last.get("end"):
            last = await anext(events)
        assert last == {"end": True, "state": "succeeded"}
        assert [e async for e in events] == []  # the server ended the stream
        await run
        job = await client.json("/api/job", task="talk", key="a")
        assert job["live_log"] is False and job["has_log"] is True
        stored = await client.json("/api/log", task="talk", key="a")
        assert "the first line\n" in stored["text"] and "the second line\n" in stored["text"]
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)


async def test_the_output_so_far_of_a_process(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    src = FileRepository(tmp_path / "src", ".txt")
    out = FileRepository(tmp_path / "out", ".txt")
    await src.write_text("a", "x")
    flag = tmp_path / "go"
    task = ProcessTask(
        "echo",
        "echo 'printed first'; while [ ! -e {{ params.flag }} ]; do sleep 0.02; done;"
        " echo 'printed second'; cp {{ src.path }} {{ out.path }}",
        executor=LocalHost(workdir=tmp_path / "jobs"),
        params={"flag": str(flag)},
        inputs={"src": src},
        outputs={"out": out},
        logs=FileRepository(tmp_path / "logs", ".log"),
    )
    pipeline = Pipeline([task], state_dir=tmp_path / "state")
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        await running_here(client, "echo", "a")
        events = live(client, "echo", "a")
        event = await anext(events)
        while "printed first" not in event.get("output", ""):
            assert not event.get("end"), event
            event = await anext(events)
        assert "printed second" not in event["output"]
        flag.touch()
        while not event.get("end"):
            event = await anext(events)
        assert event["state"] == "succeeded"
        assert (await run).ok
        stored = await client.json("/api/log", task="echo", key="a")
        assert "printed first\nprinted second\n" in stored["text"]
    finally:
        flag.touch()
        await server.__aexit__(None, None, None)


async def test_serve_without_the_scheduler_says_where_the_live_log_is(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    gate = Gate()

    def build() -> Pipeline:  # the same pipeline in two processes: on the same files
        return talking(
            gate,
            src=FileRepository(tmp_path / "src", ".txt"),
            out=FileRepository(tmp_path / "out", ".txt"),
            logs=FileRepository(tmp_path / "logs", ".log"),
            state_dir=tmp_path / "state",
        )

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x")
    running, watching = build(), build()
    server, client = await serve(watching, http)
    try:
        run = asyncio.create_task(running.run())
        job = await until_running(client)
        assert job["live_log"] is False
        log = await client.json("/api/log", task="talk", key="a")
        assert log["text"] is None and log["why"].endswith(NO_LIVE_LOG)
        assert [e async for e in live(client, "talk", "a")] == [{"end": True, "why": NO_LIVE_LOG}]
        gate.open(2)
        assert (await run).ok
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)


async def until_running(client: Client) -> dict[str, Any]:
    """The job of ``a`` once the served pipeline sees it running (its claim, listed)."""
    async with asyncio.timeout(20):
        while True:
            job: dict[str, Any] = await client.json("/api/job", task="talk", key="a")
            if job["state"] == "running":
                return job
            await asyncio.sleep(0.05)


def test_tail_keeps_the_last_lines_within_bounds() -> None:
    lines = [f"line {i}" for i in range(5000)]
    assert tail(lines, 3) == ["line 4997", "line 4998", "line 4999"]
    assert tail(lines, 1000, 30) == ["line 4997", "line 4998", "line 4999"]
    assert tail(["x" * 100], 10, 20) == ["x" * 20]  # one long line: its end
    assert tail([], 10) == []


def batched(gate: Gate, fail_once: tuple[str, ...] = ()) -> Pipeline:
    """One task run as one batch of ``a``, ``b``, ``c``: it logs a line, waits, ends; the
    keys of ``fail_once`` fail the first attempt (retried alone)."""
    src = MemoryMetadataRepository({"a": 1, "b": 2, "c": 3})
    out = MemoryMetadataRepository()
    seen: set[str] = set()

    async def talk(
        keys: list[str], src: MetadataRepository, out: MetadataRepository, job: JobContext
    ) -> dict[str, Exception]:
        job.log(f"working on {', '.join(keys)}")
        await gate.wait()
        failed: dict[str, Exception] = {}
        for key in keys:
            if key in fail_once and key not in seen:
                seen.add(key)
                failed[key] = OSError(f"{key} hiccuped")
            else:
                await out.put(key, "done")
        return failed

    task = FunctionTask(
        "talk",
        talk,
        inputs={"src": src},
        outputs={"out": out},
        logs=MemoryBlobRepository(),
        batch=3,
        retry=RetryPolicy(max_attempts=2, backoff=0.01),
    )
    return Pipeline([task])


async def test_every_key_of_a_running_batch_streams_the_log_of_the_batch(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    pipeline = batched(gate)
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        for key in ("a", "b", "c"):
            await running_here(client, "talk", key)
        for key in ("c", "a"):
            events = live(client, "talk", key)
            first = await anext(events)
            assert first["reset"] and first["attempt"] == 1
            assert first["batch"]["size"] == 3 and sorted(first["batch"]["keys"]) == ["a", "b", "c"]
            assert "working on a, b, c" in [line.split(" ", 1)[1] for line in first["lines"]]
            await events.aclose()
        events = live(client, "talk", "b")
        assert (await anext(events))["batch"]["size"] == 3
        gate.open()
        last = await anext(events)
        while not last.get("end"):
            last = await anext(events)
        assert last == {"end": True, "state": "succeeded"}
        assert (await run).ok
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)


async def test_a_key_recorded_ends_its_stream_while_the_rest_of_its_batch_is_retried(
    http: aiohttp.ClientSession,
) -> None:
    gate = Gate()
    pipeline = batched(gate, fail_once=("b",))
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        for key in ("a", "b"):
            await running_here(client, "talk", key)
        of_a, of_b = live(client, "talk", "a"), live(client, "talk", "b")
        assert (await anext(of_a))["batch"]["size"] == 3
        assert (await anext(of_b))["batch"]["size"] == 3
        gate.open()  # a and c succeed, b fails and is retried alone
        last = await anext(of_a)
        while not last.get("end"):
            last = await anext(of_a)
        assert last == {"end": True, "state": "succeeded"}
        second = await anext(of_b)
        while not second.get("reset"):
            assert not second.get("end"), second
            second = await anext(of_b)
        assert second["attempt"] == 2 and second["batch"] == {"size": 1, "keys": ["b"]}
        gate.open()
        last = await anext(of_b)
        while not last.get("end"):
            last = await anext(of_b)
        assert last == {"end": True, "state": "succeeded"}
        assert (await run).ok
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)
