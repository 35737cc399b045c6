"""Several pipelines on one server: two pipeline files, the list of them at ``/``, each
one's page and API under ``/p/NAME/``, every one's metrics at ``/metrics``; and the list
in a real headless Chromium."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pydatatask.config import load_pipeline
from pydatatask.errors import ConfigurationError
from pydatatask.pipeline import Pipeline
from pydatatask.web import MultiWebServer, page_names
from tests.pipeline_files import write_pipeline_file

from .conftest import Client, demo
from .test_page import cell, text_of, until


def measure(key: str, src: bytes) -> dict[str, Any]:
    text = src.decode()
    if "fail" in text:
        raise ValueError(f"{key} was asked to fail")
    return {"out": {"words": len(text.split())}}


def pipeline_file(tmp_path: Path, name: str, task: str, keys: dict[str, str]) -> Path:
    """A pipeline of one function task ``task`` over the files ``keys`` in ``tmp_path/name``."""
    function = {
        "kind": "function",
        "function": "tests.web.test_multi:measure",
        "inputs": {"src": "src"},
        "outputs": {"out": "out"},
    }
    return write_pipeline_file(
        tmp_path, name, keys, {"out": {"kind": "yaml_files", "root": f"{name}/out"}}, {task: function}
    )


async def two_pipelines(tmp_path: Path) -> dict[str, Pipeline]:
    """``images`` (task ``resize``, 3 keys succeeded) and ``texts`` (task ``count``, 1
    succeeded, 1 failed), each run once."""
    images = load_pipeline(pipeline_file(tmp_path, "images", "resize", {f"i{n}": "a b" for n in range(3)}))
    texts = load_pipeline(pipeline_file(tmp_path, "texts", "count", {"t0": "one two three", "t1": "fail"}))
    for pipeline in (images, texts):
        await pipeline.run()
    return {"images": images, "texts": texts}


async def test_two_pipelines_on_one_server(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    pipelines = await two_pipelines(tmp_path)
    async with MultiWebServer(pipelines, port=0, interval=0.05) as server:
        client = Client(http, server.url)
        listed = await client.json("/api/pipelines")
        assert [(p["name"], p["url"], sorted(p["tasks"])) for p in listed["pipelines"]] == [
            ("images", "p/images/", ["resize"]),
            ("texts", "p/texts/", ["count"]),
        ]
        images, texts = listed["pipelines"]
        assert images["counts"]["succeeded"] == 3 and images["counts"]["failed"] == 0
        assert texts["counts"]["succeeded"] == 1 and texts["counts"]["failed"] == 1
        assert images["source"] == "listing" and "succeeded" in listed["states"]
        status, kind, page = await client.text("/")
        assert status == 200 and kind.startswith("text/html") and 'src="static/pipelines.js"' in page
        # each pipeline's own API, under its prefix
        own = await client.json("/p/images/api/status")
        assert list(own["tasks"]) == ["resize"] and own["tasks"]["resize"]["counts"]["succeeded"] == 3
        own = await client.json("/p/texts/api/status")
        assert list(own["tasks"]) == ["count"] and own["tasks"]["count"]["counts"]["failed"] == 1
        job = await client.json("/p/texts/api/job", task="count", key="t1")
        assert "ValueError: t1 was asked to fail" in job["record"]["error"]["traceback"]
        assert (await client.json("/p/texts/api/job", 404, task="resize", key="t1"))["error"].startswith(
            "no task named 'resize'"
        )
        # the page of one: its name in its settings, its addresses relative to /p/NAME/
        status, _, page = await client.text("/p/texts/")
        assert status == 200 and '"name": "texts"' in page and 'src="static/app.js"' in page
        assert (await client.text("/p/texts/static/app.js"))[0] == 200
        async with http.get(client.base + "/p/texts?x=1", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/p/texts/?x=1"
        assert (await client.text("/p/nothing/api/status"))[0] == 404
        # every pipeline's metrics, each sample labelled with its pipeline, each family once
        status, kind, metrics = await client.text("/metrics")
        assert status == 200 and kind.startswith("text/plain; version=0.0.4")
        lines = metrics.splitlines()
        assert 'pydatatask_jobs{pipeline="images",task="resize",state="succeeded"} 3' in lines
        assert 'pydatatask_jobs{pipeline="texts",task="count",state="failed"} 1' in lines
        assert 'pydatatask_queue_size{pipeline="texts",task="count"} 0' in lines
        assert lines.count("# TYPE pydatatask_jobs gauge") == 1
        assert (
            sum(line.startswith('pydatatask_listing_duration_seconds_count{pipeline="') for line in lines)
            == 2
        )


def test_names_of_the_pages() -> None:
    assert page_names(["pipeline", "pipeline", "my pipe", "pkg.mod:build", "..", "pipeline"]) == [
        "pipeline",
        "pipeline-2",
        "my-pipe",
        "pkg.mod:build",
        "pipeline-3",
        "pipeline-4",
    ]
    pipeline = demo(1)
    for bad in ("../up", "a/b", ".hidden", ""):
        with pytest.raises(ConfigurationError, match="cannot name the page of a pipeline"):
            MultiWebServer({bad: pipeline})
    with pytest.raises(ConfigurationError, match="at least one pipeline"):
        MultiWebServer({})


async def test_the_list_in_a_browser_leads_to_a_pipeline_page(
    browser: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    pipelines = await two_pipelines(tmp_path)
    async with MultiWebServer(pipelines, port=0, interval=0.05) as server:
        await asyncio.to_thread(browser.get, server.url)
        links = await until(
            browser,
            lambda d: d.find_elements(By.CSS_SELECTOR, "#pipelines a.pipeline"),
            "the pipelines listed",
        )
        assert [a.text for a in links] == ["images", "texts"]
        row = browser.find_element(By.CSS_SELECTOR, 'tr[data-pipeline="texts"]')
        assert row.find_element(By.CSS_SELECTOR, 'td[data-state="failed"]').text == "1"
        await asyncio.to_thread(links[1].click)  # it loads the page: the server must go on
        await until(browser, lambda d: cell(d, "count", "failed") == "1", "the counts of texts")
        assert browser.current_url.startswith(server.url.rstrip("/") + "/p/texts/")
        assert cell(browser, "count", "succeeded") == "1" and not cell(browser, "resize", "succeeded")
        assert text_of(browser, "pipeline-name") == "texts"
        # its graph and its live updates came from its own addresses
        await until(browser, lambda d: text_of(d, "conn") == "live", "the live updates")
        graph = browser.find_elements(By.CSS_SELECTOR, "svg text.counts")
        assert [e.get_attribute("data-task") for e in graph] == ["count"]
        await asyncio.to_thread(browser.find_element(By.ID, "index").click)
        await until(
            browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#pipelines a.pipeline"), "the list again"
        )
