"""/api and /metrics of a real server over real pipelines (memory and file repositories)."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp

from pydatatask import FileRepository, MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import BlobRepository
from pydatatask.task import FunctionTask, JobContext
from pydatatask.web import WebServer

from .conftest import Gate, demo, retrying, serve


async def test_status_keys_job_failures_after_a_run(http: aiohttp.ClientSession) -> None:
    pipeline = demo(5)
    summary = await pipeline.run()
    assert summary.failed == 1
    server, client = await serve(pipeline, http)
    try:
        status = await client.json("/api/status")
        assert status["source"] == "listing"
        assert status["states"] == [
            "ready",
            "running",
            "retrying",
            "succeeded",
            "failed",
            "blocked",
            "held",
            "corrupt",
            "stale",
        ]
        assert status["tasks"]["square"]["counts"]["succeeded"] == 4
        assert status["tasks"]["square"]["counts"]["failed"] == 1
        assert status["tasks"]["label"]["counts"]["succeeded"] == 4
        page = await client.json("/api/keys", task="square", state="succeeded")
        assert page["keys"] == ["k0", "k1", "k2", "k4"] and page["total"] == 4
        job = await client.json("/api/job", task="square", key="k3")
        assert job["state"] == "failed"
        assert job["record"]["attempts"] == 1
        assert "ValueError: cannot square k3" in job["record"]["error"]["traceback"]
        assert [(link["link"], link["kind"], link["present"]) for link in job["links"]] == [
            ("src", "input", True),
            ("out", "output", False),
        ]
        assert job["links"][1]["tasks"] == ["label"]
        failures = (await client.json("/api/failures"))["failures"]
        assert [(f["task"], f["key"], f["error_type"]) for f in failures] == [("square", "k3", "ValueError")]
        graph = await client.json("/api/graph")
        assert [n["label"] for n in graph["nodes"] if n["kind"] == "task"] == ["square", "label"]
        assert graph["dependencies"][0]["upstream"] == "square"
        code, kind, svg = await client.text("/graph.svg")
        assert code == 200 and kind.startswith("image/svg+xml")
        assert svg.count('class="node task"') == 2 and svg.count('<path class="flow') == 4
    finally:
        await server.__aexit__(None, None, None)


async def test_bad_requests_are_one_line_errors(http: aiohttp.ClientSession) -> None:
    pipeline = demo(2)
    server, client = await serve(pipeline, http)
    try:
        body = await client.json("/api/keys", 404, task="nope")
        assert body["error"] == "no task named 'nope'; tasks: square, label"
        body = await client.json("/api/keys", 400, task="square", state="sleeping")
        assert body["error"].startswith("no state 'sleeping'; states: ready, running")
        body = await client.json("/api/keys", 400, task="square", state="ready", limit="ten")
        assert body["error"] == "limit='ten' is not a whole number"
        body = await client.json("/api/keys", 400, task="square", state="ready", limit="5000")
        assert body["error"] == "limit=5000 is outside 1..1000"
        body = await client.json("/api/job", 400, task="square", key="../up")
        assert "'../up'" in body["error"] and "\n" not in body["error"]
        job = await client.json("/api/job", task="square", key="k9")  # valid, never seen
        assert job["record"] is None and job["state"] is None
        status, _, _ = await client.text("/static/../app.py")
        assert status == 404
    finally:
        await server.__aexit__(None, None, None)


async def test_paging_and_search_on_the_server(http: aiohttp.ClientSession) -> None:
    n = 100_000
    src = MemoryMetadataRepository({f"img-{i:06d}.jpg": i for i in range(n)})
    task = FunctionTask("thumb", _never, inputs={"src": src}, outputs={"out": MemoryMetadataRepository()})
    server, client = await serve(Pipeline([task]), http)
    try:
        first = await client.json("/api/keys", task="thumb", state="ready", limit=100)
        assert first["total"] == n and first["matched"] == n and len(first["keys"]) == 100
        assert first["keys"][0] == "img-000000.jpg" and first["keys"][-1] == "img-000099.jpg"
        last = await client.json("/api/keys", task="thumb", state="ready", offset=n - 50, limit=100)
        assert last["keys"][-1] == "img-099999.jpg" and len(last["keys"]) == 50
        found = await client.json("/api/keys", task="thumb", state="ready", q="IMG-0999", limit=5)
        assert found["matched"] == 100 and found["keys"][0] == "img-099900.jpg" and len(found["keys"]) == 5
        more = await client.json("/api/keys", task="thumb", state="ready", q="IMG-0999", offset=95)
        assert more["keys"] == [f"img-0999{i}.jpg" for i in range(95, 100)]
        none = await client.json("/api/keys", task="thumb", state="ready", q="nothing-like-this")
        assert none["matched"] == 0 and none["keys"] == []
    finally:
        await server.__aexit__(None, None, None)


async def _never(key: str, src: object, out: object) -> None:
    raise AssertionError("not run in this test")


async def test_live_counts_from_a_running_scheduler(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    pipeline = demo(6, gate=gate)
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        seen: list[dict[str, int]] = []
        opened = False
        async for event in client.events(100):
            square = event["counts"]["square"]
            seen.append(square)
            if square["running"] == 4 and not opened:
                opened = True
                status = await client.json("/api/status")
                assert status["source"] == "scheduler"
                running = await client.json("/api/keys", task="square", state="running")
                assert running["keys"] == ["k0", "k1", "k2", "k3"]
                gate.open(6)
            if square["succeeded"] == 5 and square["failed"] == 1 and not square["running"]:
                break
        assert opened and seen[0]["succeeded"] == 0
        assert seen[-1]["failed"] == 1
        await run
        failures = (await client.json("/api/failures"))["failures"]
        assert [f["key"] for f in failures] == ["k3"]
    finally:
        await server.__aexit__(None, None, None)


async def test_metrics_of_a_run_with_retries(http: aiohttp.ClientSession) -> None:
    pipeline = retrying(failures=1)
    server, client = await serve(pipeline, http, live=True)
    try:
        summary = await pipeline.run(on_progress=lambda s: None)
        assert summary.ok and summary.succeeded == 2
        code, kind, text = await client.text("/metrics")
        assert code == 200 and kind.startswith("text/plain") and "version=0.0.4" in kind
        samples = _samples(text)
        assert samples['pydatatask_jobs{task="flaky",state="succeeded"}'] == 2
        assert samples['pydatatask_jobs_finished_total{task="flaky",outcome="succeeded"}'] == 2
        assert samples['pydatatask_retries_total{task="flaky"}'] == 1
        assert samples['pydatatask_claim_takeovers_total{task="flaky"}'] == 0
        assert samples['pydatatask_backend_errors_total{task="flaky"}'] == 0
        assert samples['pydatatask_job_duration_seconds_count{task="flaky"}'] == 2
        assert samples['pydatatask_job_duration_seconds_bucket{task="flaky",le="+Inf"}'] == 2
        assert samples["pydatatask_listing_duration_seconds_count"] >= 1
        # every sample line is NAME{LABELS} VALUE, every family has HELP and TYPE
        families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
        for name in samples:
            base = re.sub(r"_(bucket|sum|count)$", "", name.split("{")[0])
            assert base in families, name
    finally:
        await server.__aexit__(None, None, None)


def _samples(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, value = line.rsplit(" ", 1)
        assert re.fullmatch(r'[a-z_]+(\{([a-z_]+="[^"]*",?)+\})?', name), line
        out[name] = float(value)
    return out


async def test_log_tail_of_a_job(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    src = FileRepository(tmp_path / "src", ".txt")
    out = FileRepository(tmp_path / "out", ".txt")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("x")

    async def chatty(key: str, src: BlobRepository, out: BlobRepository, job: JobContext) -> None:
        for i in range(20_000):
            job.log(f"line {i}")
        await out.write_bytes(key, b"done")

    pipeline = Pipeline(
        [FunctionTask("chatty", chatty, inputs={"src": src}, outputs={"out": out})],
        state_dir=tmp_path / "state",
    )
    assert (await pipeline.run()).ok
    server, client = await serve(pipeline, http)
    try:
        log = await client.json("/api/log", task="chatty", key="a", tail=100)
        assert log["text"].endswith("line 19999\n") and len(log["text"].encode()) == 100
        assert log["size"] > 100_000 and log["offset"] == log["size"] - 100
        missing = await client.json("/api/log", task="chatty", key="b")
        assert missing["text"] is None and missing["why"] == "no log stored"
    finally:
        await server.__aexit__(None, None, None)


async def test_refuses_a_port_in_use(http: aiohttp.ClientSession) -> None:
    pipeline = demo(1)
    server, _ = await serve(pipeline, http)
    try:
        other = WebServer(pipeline, port=server.port)
        try:
            await other.__aenter__()
        except Exception as exc:
            assert f"cannot serve on 127.0.0.1:{server.port}" in str(exc)
            assert "\n" not in str(exc)
        else:
            await other.__aexit__(None, None, None)
            raise AssertionError("a second server on the same port started")
    finally:
        await server.__aexit__(None, None, None)


async def test_first_paint_before_reading_many_records(http: aiohttp.ClientSession) -> None:
    n = 30_000  # more than are read before the first answer
    keys = [f"k{i:06d}" for i in range(n)]
    done = MemoryMetadataRepository({k: {"success": k != "k000007"} for k in keys})
    src = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    out = MemoryMetadataRepository(dict.fromkeys(keys, 1))
    task = FunctionTask("thumb", _never, inputs={"src": src}, outputs={"out": out}, done=done)
    server, client = await serve(Pipeline([task]), http)
    try:
        first = await client.json("/api/status")
        assert first["records_pending"] > 0
        assert first["tasks"]["thumb"]["counts"]["succeeded"] < n - 1
        status = first
        async with asyncio.timeout(30):
            while status["records_pending"]:
                await asyncio.sleep(0.05)
                status = await client.json("/api/status")
        counts = status["tasks"]["thumb"]["counts"]
        assert counts["succeeded"] == n - 1 and counts["failed"] == 1 and counts["ready"] == 0
        failed = await client.json("/api/keys", task="thumb", state="failed")
        assert failed["keys"] == ["k000007"]
    finally:
        await server.__aexit__(None, None, None)


async def test_path_keys(http: aiohttp.ClientSession) -> None:
    keys = ["images/2024/01/IMG 0001.jpg", "images/2024/02/IMG 0002.jpg", "notes/été.txt"]
    pipeline = demo(0)
    src = pipeline.tasks["square"].links["src"].repository
    assert isinstance(src, MemoryMetadataRepository)
    for i, key in enumerate(keys):
        await src.put(key, i)
    assert (await pipeline.run()).succeeded == 6
    server, client = await serve(pipeline, http)
    try:
        page = await client.json("/api/keys", task="label", state="succeeded", q="2024/0")
        assert page["keys"] == keys[:2]
        job = await client.json("/api/job", task="square", key="notes/été.txt")
        assert job["state"] == "succeeded" and job["record"]["key"] == "notes/été.txt"
        assert job["links"][0]["present"] is True
    finally:
        await server.__aexit__(None, None, None)
