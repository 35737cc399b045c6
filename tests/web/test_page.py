"""The page in a real headless Chromium (Selenium), served from a real pipeline."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from pydatatask import MemoryMetadataRepository
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

from .conftest import Gate, demo, serve

WAIT = 20.0


async def until(driver: Any, check: Callable[[Any], Any], what: str) -> Any:
    """Wait (in a thread: the server runs on this event loop) until ``check(driver)`` is truthy."""
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(driver, WAIT, poll_frequency=0.05)
    return await asyncio.to_thread(wait.until, check, f"waited {WAIT}s for {what}")


def cell(driver: Any, task: str, state: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, f'td[data-task="{task}"][data-state="{state}"]')
    return str(found[0].text) if found else ""


def text_of(driver: Any, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.ID, element_id)
    return str(found[0].text) if found else ""


async def test_counts_change_as_jobs_finish_and_a_failed_job_shows_its_traceback(
    browser: Any, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    gate = Gate()
    pipeline = demo(6, gate=gate)
    server, _ = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        await asyncio.to_thread(browser.get, server.url)
        await until(browser, lambda d: cell(d, "square", "running") == "4", "4 running jobs")
        assert cell(browser, "square", "succeeded") == "0" and cell(browser, "square", "ready") == "2"
        # the counts come first from /api/status, then the live updates connect
        await until(browser, lambda d: text_of(d, "conn") == "live", "the live updates")
        gate.open(2)
        await until(browser, lambda d: cell(d, "square", "succeeded") == "2", "2 jobs succeeded")
        gate.open(4)
        await until(browser, lambda d: cell(d, "square", "succeeded") == "5", "5 jobs succeeded")
        await until(browser, lambda d: cell(d, "square", "failed") == "1", "a job failed")
        await until(browser, lambda d: cell(d, "label", "succeeded") == "5", "the second task done")
        await run
        # the graph: both tasks drawn, their counts filled in
        labels = browser.find_elements(By.CSS_SELECTOR, "svg text.counts")
        assert [e.get_attribute("data-task") for e in labels] == ["square", "label"]
        assert labels[0].text == "5 ok · 1 failed · 0 running · 0 ready"
        # the failure, then its job page with the traceback
        link = await until(
            browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#failures a.job-link"), "the failure listed"
        )
        assert link[0].text == "square k3"
        assert "ValueError: cannot square k3" in text_of(browser, "failures")
        screenshot = Path(os.environ.get("PDT_WEB_SCREENSHOT_DIR") or tmp_path) / "web-page.png"
        assert browser.save_screenshot(str(screenshot))
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        link[0].click()
        await until(
            browser, lambda d: "Traceback (most recent call last)" in text_of(d, "traceback"), "traceback"
        )
        assert "ValueError: cannot square k3: it was asked to fail" in text_of(browser, "traceback")
        assert text_of(browser, "job-title") == "square k3"
        assert "attempts\n1" in text_of(browser, "record") or "attempts 1" in text_of(browser, "record")
        assert "input src" in text_of(browser, "links")
    finally:
        await server.__aexit__(None, None, None)


async def _never(key: str, src: object, out: object) -> None:
    raise AssertionError("not run in this test")


async def test_search_keys_and_page_through_100000(browser: Any, http: aiohttp.ClientSession) -> None:
    from selenium.webdriver.common.by import By

    n = 100_000
    src = MemoryMetadataRepository({f"img-{i:06d}.jpg": i for i in range(n)})
    task = FunctionTask("thumb", _never, inputs={"src": src}, outputs={"out": MemoryMetadataRepository()})
    server, _ = await serve(Pipeline([task]), http, interval=1.0)
    try:
        await asyncio.to_thread(browser.get, server.url)
        await until(browser, lambda d: cell(d, "thumb", "ready") == "100000", "the ready count")
        browser.find_element(By.CSS_SELECTOR, 'td[data-task="thumb"][data-state="ready"] a').click()
        await until(browser, lambda d: text_of(d, "keys-range") == "1–100 of 100000", "the first page")

        def keys(d: Any) -> list[str]:
            script = 'return [...document.querySelectorAll("#key-list a")].map((a) => a.textContent)'
            return list(d.execute_script(script))

        assert keys(browser)[0] == "img-000000.jpg" and len(keys(browser)) == 100
        assert not browser.find_element(By.ID, "next").get_attribute("disabled")
        for page in range(1, 4):
            browser.find_element(By.ID, "next").click()
            first = page * 100 + 1
            await until(
                browser, lambda d, f=first: text_of(d, "keys-range").startswith(f"{f}–"), f"page {page}"
            )
        assert keys(browser)[0] == "img-000300.jpg" and keys(browser)[-1] == "img-000399.jpg"
        browser.find_element(By.ID, "prev").click()
        await until(browser, lambda d: text_of(d, "keys-range").startswith("201–300"), "back one page")
        # the last page, reached through the address (as a bookmark would)
        await asyncio.to_thread(
            browser.get, server.url.split("#")[0] + "#/keys?task=thumb&state=ready&offset=99900"
        )
        await until(browser, lambda d: text_of(d, "keys-range") == "99901–100000 of 100000", "the last page")
        assert keys(browser)[-1] == "img-099999.jpg"
        assert browser.find_element(By.ID, "next").get_attribute("disabled")
        box = browser.find_element(By.ID, "search")
        box.send_keys("IMG-09999")
        await until(
            browser, lambda d: text_of(d, "keys-range") == "1–10 of 10 matching (of 100000)", "search"
        )
        assert keys(browser) == [f"img-09999{i}.jpg" for i in range(10)]
        # the browser never holds more than a page of keys
        assert len(browser.find_elements(By.CSS_SELECTOR, "#key-list li")) <= 100
    finally:
        await server.__aexit__(None, None, None)


async def test_redo_a_failed_key_after_a_confirmation(browser: Any, http: aiohttp.ClientSession) -> None:
    from selenium.webdriver.common.by import By

    pipeline = demo(4)
    assert (await pipeline.run()).failed == 1
    server, client = await serve(pipeline, http, allow_actions=True)
    try:
        url = server.url.split("#")[0] + "#/job?task=square&key=k3"
        await asyncio.to_thread(browser.get, url)
        await until(browser, lambda d: "cannot square k3" in text_of(d, "traceback"), "the failed job")
        button = browser.find_element(By.ID, "redo-key")
        assert button.is_displayed()
        button.click()
        alert = await until(browser, lambda d: d.switch_to.alert, "the confirmation")
        assert "Remove the outputs and record of square k3" in alert.text
        alert.dismiss()  # said no: nothing removed
        await asyncio.sleep(0.2)
        assert (await client.json("/api/job", task="square", key="k3"))["record"] is not None
        button.click()
        alert = await until(browser, lambda d: d.switch_to.alert, "the confirmation")
        alert.accept()
        await until(browser, lambda d: text_of(d, "job-state") == "state: ready", "the key ready again")
        assert (await client.json("/api/job", task="square", key="k3"))["record"] is None
    finally:
        await server.__aexit__(None, None, None)


async def test_the_log_of_a_running_job_streams_on_its_page(
    browser: Any, http: aiohttp.ClientSession
) -> None:
    from pydatatask import MemoryBlobRepository

    from .test_live_log import running_here, talking

    gate = Gate()
    pipeline = talking(gate, logs=MemoryBlobRepository())
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        await running_here(client, "talk", "a")
        await asyncio.to_thread(browser.get, server.url.split("#")[0] + "#/job?task=talk&key=a")
        await until(browser, lambda d: "the first line" in text_of(d, "log"), "the first line, live")
        assert "the second line" not in text_of(browser, "log")
        assert text_of(browser, "log-note").startswith("(live, attempt 1")
        gate.open()
        await until(browser, lambda d: "the second line" in text_of(d, "log"), "the second line, live")
        assert not run.done()  # still running: the job waits for the gate again
        gate.open()
        await run
        # the job ended: the page shows its record and the stored log
        await until(browser, lambda d: "attempts" in text_of(d, "record"), "the record of the ended job")
        await until(browser, lambda d: text_of(d, "log-note") == "", "the stored log")
        log = text_of(browser, "log")
        assert "the first line" in log and "the second line" in log
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)


async def test_the_page_of_a_key_of_a_running_batch_streams_the_log_of_the_batch(
    browser: Any, http: aiohttp.ClientSession
) -> None:
    from .test_live_log import batched, running_here

    gate = Gate()
    pipeline = batched(gate)
    server, client = await serve(pipeline, http, live=True)
    try:
        run = asyncio.create_task(pipeline.run(on_progress=lambda s: None))
        await running_here(client, "talk", "b")
        await asyncio.to_thread(browser.get, server.url.split("#")[0] + "#/job?task=talk&key=b")
        await until(browser, lambda d: "working on a, b, c" in text_of(d, "log"), "the batch's line, live")
        assert "the log of a batch of 3 keys, from a" in text_of(browser, "log-note")
        gate.open()
        assert (await run).ok
        await until(browser, lambda d: "attempts" in text_of(d, "record"), "the record of the ended job")
        assert "working on a, b, c" in text_of(browser, "log")  # the stored log of b
    finally:
        gate.open(2)
        await server.__aexit__(None, None, None)
