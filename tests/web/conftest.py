"""Fixtures of the web tests: a real pipeline, a real server on a free port, a real
HTTP client, and for the page tests a real headless Chromium driven by Selenium."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from pydatatask import MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.repository.base import MetadataRepository
from pydatatask.task import FunctionTask, RetryPolicy
from pydatatask.web import WebServer


class Gate:
    """Holds the jobs of a pipeline until the test opens it (``open(n)`` lets n through)."""

    def __init__(self) -> None:
        self.tokens = asyncio.Semaphore(0)

    def open(self, n: int = 1) -> None:
        for _ in range(n):
            self.tokens.release()

    async def wait(self) -> None:
        await self.tokens.acquire()


def demo(n: int = 5, *, gate: Gate | None = None, fail: tuple[str, ...] = ("k3",)) -> Pipeline:
    """``square`` (n keys, ``fail`` raising) then ``label`` on its outputs."""
    src = MemoryMetadataRepository({f"k{i}": i for i in range(n)})
    squares = MemoryMetadataRepository()
    labels = MemoryMetadataRepository()

    async def square(key: str, src: MetadataRepository, out: MetadataRepository) -> None:
        if gate is not None:
            await gate.wait()
        value = await src.get(key)
        if key in fail:
            raise ValueError(f"cannot square {key}: it was asked to fail")
        await out.put(key, value * value)

    async def label(key: str, src: MetadataRepository, out: MetadataRepository) -> None:
        await out.put(key, f"{key}={await src.get(key)}")

    return Pipeline(
        [
            FunctionTask("square", square, inputs={"src": src}, outputs={"out": squares}, concurrency=4),
            FunctionTask("label", label, inputs={"src": squares}, outputs={"out": labels}),
        ]
    )


def retrying(failures: int = 1) -> Pipeline:
    """One task whose job on ``k0`` fails ``failures`` times, then succeeds."""
    src = MemoryMetadataRepository({"k0": 0, "k1": 1})
    out = MemoryMetadataRepository()
    seen: dict[str, int] = {}

    async def flaky(key: str, src: MetadataRepository, out: MetadataRepository) -> None:
        seen[key] = seen.get(key, 0) + 1
        if key == "k0" and seen[key] <= failures:
            raise OSError("the disk hiccuped")
        await out.put(key, await src.get(key))

    retry = RetryPolicy(max_attempts=failures + 1, backoff=0.01)
    return Pipeline([FunctionTask("flaky", flaky, inputs={"src": src}, outputs={"out": out}, retry=retry)])


class Client:
    """GETs and POSTs to a server, as JSON or text."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session = session
        self.base = base.split("#")[0].rstrip("/")

    async def json(self, path: str, status: int = 200, **params: Any) -> Any:
        async with self.session.get(self.base + path, params=params) as r:
            body = await r.json()
            assert r.status == status, body
            return body

    async def text(self, path: str, **params: Any) -> tuple[int, str, str]:
        async with self.session.get(self.base + path, params=params) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.text()

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        async with self.session.post(self.base + path, json=body, headers=headers or {}) as r:
            return r.status, await r.json()

    async def events(self, count: int, within: float = 20.0) -> AsyncIterator[dict[str, Any]]:
        """The first ``count`` events of ``/api/events``."""
        async with asyncio.timeout(within), self.session.get(self.base + "/api/events") as r:
            assert r.headers["Content-Type"].startswith("text/event-stream")
            seen = 0
            async for line in r.content:
                if line.startswith(b"data: "):
                    yield json.loads(line[6:])
                    seen += 1
                    if seen == count:
                        return


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def serve(
    pipeline: Pipeline, http: aiohttp.ClientSession, *, interval: float = 0.05, **kwargs: Any
) -> tuple[WebServer, Client]:
    """Enter a server on a free port (the caller exits it)."""
    server = WebServer(pipeline, port=0, interval=interval, **kwargs)
    await server.__aenter__()
    return server, Client(http, server.url)


CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A headless Chromium (Debian's, installed by scripts/test) under Selenium."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            pytest.fail(f"{path} is missing: run `bash scripts/test-services install`", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
