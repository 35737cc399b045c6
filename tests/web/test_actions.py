"""Actions of the page: off by default, a header on every one, a token off loopback;
redo a key or every failed key, stop launching and resume a live run."""

from __future__ import annotations

import asyncio

import aiohttp

from pydatatask.web import WebServer, is_loopback, parse_address

from .conftest import Client, Gate, demo, serve

ACT = {"X-Pydatatask-Action": "1"}


async def test_actions_are_off_unless_allowed(http: aiohttp.ClientSession) -> None:
    pipeline = demo(4)
    await pipeline.run()
    server, client = await serve(pipeline, http)
    try:
        status, body = await client.post("/api/actions/redo", {"task": "square", "keys": ["k3"]}, ACT)
        assert status == 403 and body["error"] == "actions are off: start the server with --allow-actions"
        job = await client.json("/api/job", task="square", key="k3")
        assert job["record"]["success"] is False  # nothing removed
        assert (await client.json("/api/status"))["actions"] is False
    finally:
        await server.__aexit__(None, None, None)


async def test_redo_a_key_and_every_failed_key(http: aiohttp.ClientSession) -> None:
    pipeline = demo(6, fail=("k3", "k5"))
    assert (await pipeline.run()).failed == 2
    server, client = await serve(pipeline, http, allow_actions=True)
    try:
        status, body = await client.post("/api/actions/redo", {"task": "square", "keys": ["k3"]})
        assert status == 403 and body["error"] == "an action needs the header X-Pydatatask-Action"
        status, body = await client.post("/api/actions/redo", {"task": "square", "keys": ["k3"]}, ACT)
        assert status == 200 and body == {"action": "redo", "task": "square", "removed": 1}
        assert (await client.json("/api/job", task="square", key="k3"))["record"] is None
        await asyncio.sleep(0.1)  # the next snapshot
        counts = (await client.json("/api/status"))["tasks"]["square"]["counts"]
        assert counts["ready"] == 1 and counts["failed"] == 1
        status, body = await client.post("/api/actions/redo", {"task": "square", "state": "failed"}, ACT)
        assert status == 200 and body["removed"] == 1
        for bad, message in (
            ({"task": "nope", "keys": []}, "no task named 'nope'"),
            ({"task": "square"}, "redo takes either keys (a list) or state"),
            ({"task": "square", "state": "succeeded"}, 'only "failed" can be redone as a set'),
            ({"task": "square", "keys": ["../x"]}, "'../x'"),
        ):
            status, body = await client.post("/api/actions/redo", bad, ACT)
            assert status in (400, 404) and message in body["error"], body
        status, body = await client.post("/api/actions/stop", {}, ACT)
        assert status == 409 and "no run in this process to stop" in body["error"]
    finally:
        await server.__aexit__(None, None, None)
    again = await pipeline.run()  # the redone keys run again (and fail again)
    assert again.failed == 2 and again.succeeded == 0


async def test_stop_launching_and_resume_a_live_run(http: aiohttp.ClientSession) -> None:
    gate = Gate()
    pipeline = demo(6, gate=gate, fail=())
    server, client = await serve(pipeline, http, live=True, allow_actions=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        async for event in client.events(200):
            if event["counts"]["square"]["running"] == 4:
                break
        status, body = await client.post("/api/actions/stop", {}, ACT)
        assert status == 200 and body == {"action": "stop", "paused": True}
        gate.open(6)
        async for event in client.events(200):
            square = event["counts"]["square"]
            if square["succeeded"] == 4:
                assert event["paused"] is True
                break
        await asyncio.sleep(0.3)
        counts = (await client.json("/api/status"))["tasks"]["square"]["counts"]
        assert counts["succeeded"] == 4 and counts["running"] == 0 and counts["ready"] == 2
        assert not run.done()
        status, body = await client.post("/api/actions/resume", {}, ACT)
        assert status == 200 and body["paused"] is False
        summary = await asyncio.wait_for(run, 20)
        assert summary.ok and summary.succeeded == 12
    finally:
        await server.__aexit__(None, None, None)


async def test_a_token_off_loopback(http: aiohttp.ClientSession) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert parse_address("8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    pipeline = demo(4)
    await pipeline.run()
    server = WebServer(pipeline, host="0.0.0.0", port=0, allow_actions=True)
    assert server.token is not None and len(server.token) >= 24
    assert f"#token={server.token}" in server.url
    await server.__aenter__()
    try:
        client = Client(http, f"http://127.0.0.1:{server.port}/")
        body = {"task": "square", "keys": ["k3"]}
        status, answer = await client.post("/api/actions/redo", body, ACT)
        assert status == 401 and answer["error"] == "wrong or missing token (Authorization: Bearer TOKEN)"
        status, answer = await client.post(
            "/api/actions/redo", body, {**ACT, "Authorization": "Bearer wrong"}
        )
        assert status == 401
        status, answer = await client.post(
            "/api/actions/redo", body, {**ACT, "Authorization": f"Bearer {server.token}"}
        )
        assert status == 200 and answer["removed"] == 1
        # the token is never in what the server sends
        for path in ("/", "/api/status", "/static/app.js", "/metrics", "/api/graph"):
            _, _, text = await client.text(path)
            assert server.token not in text, path
    finally:
        await server.__aexit__(None, None, None)
    assert WebServer(pipeline, host="0.0.0.0", port=0).token is None  # read-only: no token needed
