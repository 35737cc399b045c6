"""Corrupt values (job records, claims, inputs) never stop the pipeline; no exception group
ever reaches a caller; every job state, retrying included, is visible to other processes."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    CorruptValueError,
    FileRepository,
    FilterRepository,
    MemoryMetadataRepository,
    RepositoryError,
    YamlMetadataFileRepository,
)
from pydatatask.cli.output import PROGRESS_HEADERS, progress_rows
from pydatatask.pipeline import Pipeline
from pydatatask.task import Event, FunctionTask, Hooks, RetryPolicy

TRUNCATED = b"task: A\nkey: k2\nstate: [trunc"
KEYS = ["k1", "k2", "k3", "k4", "k5"]


def build(data: Path, calls: dict[str, int], *, through_filter: bool = False) -> Pipeline:
    """A -> B over YAML files under ``data``; A reads its input values (``src``)."""
    src_repo = YamlMetadataFileRepository(data / "src")
    src: Any = FilterRepository(src_repo, value_predicate=lambda v: True) if through_filter else src_repo
    mid = YamlMetadataFileRepository(data / "mid")
    out = YamlMetadataFileRepository(data / "out")

    def a(key: str, src: Any) -> dict[str, Any]:
        calls[key] = calls.get(key, 0) + 1
        return {"mid": {"n": src["n"]}}

    def b(key: str, mid: Any) -> dict[str, Any]:
        return {"out": {"n": mid["n"] * 10}}

    return Pipeline(
        [
            FunctionTask(
                "A", a, inputs={"src": src}, outputs={"mid": mid}, retry=RetryPolicy(3, backoff=0.01)
            ),
            FunctionTask("B", b, inputs={"mid": mid}, outputs={"out": out}),
        ],
        state_dir=data / "state",
    )


def write_inputs(data: Path, bad: str | None = None) -> None:
    (data / "src").mkdir(parents=True, exist_ok=True)
    for key in KEYS:
        (data / "src" / f"{key}.yaml").write_text(f"n: {key[1:]}\n")
    if bad:
        (data / "src" / f"{bad}.yaml").write_bytes(b"n: [1, 2\n")


def corrupt_state(data: Path) -> dict[Path, bytes]:
    """A corrupt job record for A k2 and a corrupt claim for A k3; returns what was written."""
    written = {
        data / "state" / "A" / "done" / "k2.yaml": TRUNCATED,
        data / "state" / "A" / "live" / "k3.yaml": b"owner: somebody\nheartbeat: [",
    }
    for path, raw in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    return written


async def test_one_corrupt_record_claim_and_input_do_not_stop_the_pipeline(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_inputs(tmp_path, bad="k4")
    written = corrupt_state(tmp_path)
    calls: dict[str, int] = {}
    pipeline = build(tmp_path, calls)
    with caplog.at_level(logging.WARNING, "pydatatask"):
        summary = await pipeline.run()
        status = await pipeline.status()
    # every other key went through both tasks
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == ["k1", "k5"]
    assert summary.succeeded == 4 and summary.failed == 1  # A k1 k5, B k1 k5; A k4 (input)
    record = await pipeline.tasks["A"].done.get("k4")
    assert record["attempts"] == 1  # a corrupt input is not retried (the policy allows 3)
    assert record["error"]["location"] == str(tmp_path / "src" / "k4.yaml")
    assert sorted(calls) == ["k1", "k5"]
    # nothing corrupt was overwritten or removed
    for path, raw in written.items():
        assert path.read_bytes() == raw
    assert (tmp_path / "src" / "k4.yaml").read_bytes() == b"n: [1, 2\n"

    a = status["A"]
    assert a["corrupt"] == ["k2", "k3", "k4"]
    assert a["failed"] == [] and a["running"] == [] and a["ready"] == []
    assert a["succeeded"] == ["k1", "k5"]
    details = a["corrupt_details"]
    assert {k: d["what"] for k, d in details.items()} == {"k2": "job record", "k3": "claim", "k4": "input"}
    assert details["k2"]["location"] == str(tmp_path / "state" / "A" / "done" / "k2.yaml")
    assert details["k3"]["location"] == str(tmp_path / "state" / "A" / "live" / "k3.yaml")
    assert details["k4"]["location"] == str(tmp_path / "src" / "k4.yaml")
    for d in details.values():
        assert d["reason"].startswith("not valid YAML: ") and "line" in d["reason"]
        assert "\n" not in d["message"] and d["location"] in d["message"]
    # the record and the claim are each named once, with repository, key, file and error
    named = [r.getMessage() for r in caplog.records if "is corrupt" in r.getMessage()]
    for key in ("k2", "k3"):
        mine = [m for m in named if f"key {key!r}" in m]
        assert len(mine) == 1, named
        assert details[key]["location"] in mine[0] and "YAML metadata in files at" in mine[0]


async def test_a_rerun_leaves_corrupt_keys_alone_and_names_them_once_per_process(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_inputs(tmp_path)
    corrupt_state(tmp_path)
    calls: dict[str, int] = {}
    first = build(tmp_path, calls)
    await first.run()
    await first.status()  # names the corrupt record and claim
    assert len([r for r in caplog.records if "is corrupt" in r.getMessage()]) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, "pydatatask"):
        again = await build(tmp_path, calls).run()
        await build(tmp_path, calls).status()
    assert again.succeeded == 0 and again.failed == 0
    assert calls == {"k1": 1, "k4": 1, "k5": 1}
    assert not [r for r in caplog.records if "is corrupt" in r.getMessage()]  # named already


async def test_why_explains_each_corrupt_key(tmp_path: Path) -> None:
    write_inputs(tmp_path, bad="k4")
    corrupt_state(tmp_path)
    pipeline = build(tmp_path, {})
    await pipeline.run()
    record = " ".join(await pipeline.why("A", "k2"))
    assert "job record is corrupt" in record and "k2.yaml" in record and "`rm` the file" in record
    claim = " ".join(await pipeline.why("A", "k3"))
    assert "claim is corrupt" in claim and "`rm A.live k3`" in claim
    bad_input = " ".join(await pipeline.why("A", "k4"))
    assert "input value is corrupt" in bad_input and str(tmp_path / "src" / "k4.yaml") in bad_input
    assert "`rm A k4`" in bad_input


async def test_value_filter_over_a_corrupt_input_leaves_it_out_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_inputs(tmp_path, bad="k4")
    calls: dict[str, int] = {}
    pipeline = build(tmp_path, calls, through_filter=True)
    with caplog.at_level(logging.WARNING, "pydatatask"):
        summary = await pipeline.run()
        await pipeline.status()
    assert summary.ok
    assert sorted(calls) == ["k1", "k2", "k3", "k5"]
    warned = [r.getMessage() for r in caplog.records if "'k4'" in r.getMessage()]
    assert len(warned) == 1 and "leaves the key out" in warned[0] and "k4.yaml" in warned[0]
    reasons = " ".join(await pipeline.why("A", "k4"))
    assert "is corrupt" in reasons and "k4.yaml" in reasons


async def test_get_many_errors_are_never_exception_groups(tmp_path: Path) -> None:
    repo = YamlMetadataFileRepository(tmp_path / "m")
    await repo.put("good", {"ok": 1})
    (tmp_path / "m" / "bad.yaml").write_bytes(TRUNCATED)
    with pytest.raises(CorruptValueError) as info:
        await repo.get_many(["good", "bad"])
    assert type(info.value) is CorruptValueError
    assert info.value.key == "bad" and info.value.location == str(tmp_path / "m" / "bad.yaml")
    # a read that fails outright (a symlink loop): that error itself, not a group
    (tmp_path / "m" / "loop.yaml").symlink_to(tmp_path / "m" / "loop.yaml")
    with pytest.raises(OSError, match="symbolic links"):
        await repo.get_many(["good", "loop"], on_corrupt=lambda e: None)


class BrokenListing(MemoryMetadataRepository):
    """A user's backend whose listing fails."""

    async def keys(self) -> set[str]:
        raise RepositoryError("listing failed: the store is down")

    async def versions(self) -> dict[str, str | None]:
        raise RepositoryError("listing failed: the store is down")


async def test_scheduler_errors_are_not_exception_groups() -> None:
    async def a(key: str) -> None:
        pass

    pipeline = Pipeline([FunctionTask("A", a, inputs={"src": BrokenListing()})])
    with pytest.raises(RepositoryError, match="the store is down") as info:
        await pipeline.run()
    assert not isinstance(info.value, BaseExceptionGroup)


def test_corrupt_value_error_message_and_plain_form() -> None:
    err = CorruptValueError(key="k", repository="files at /x", location="/x/k.yaml", reason="bad\n  yaml")
    assert str(err) == "files at /x: the value of key 'k' (/x/k.yaml) is corrupt: bad yaml"
    assert (err.key, err.repository, err.location, err.reason) == (
        "k",
        "files at /x",
        "/x/k.yaml",
        "bad yaml",
    )
    plain = CorruptValueError("something broke")
    assert str(plain) == "something broke" and plain.key is None


async def test_retrying_shows_in_status_of_another_pipeline_and_progress(tmp_path: Path) -> None:
    """A job in backoff is 'retrying' with its next attempt time in the claim, for any reader;
    when the next attempt starts the claim says 'running' again."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "k1.yaml").write_text("n: 1\n")
    second_started = asyncio.Event()
    release = asyncio.Event()
    attempts = 0

    async def flaky(key: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ValueError("first attempt fails")
        second_started.set()
        await release.wait()

    def make(backoff: float) -> Pipeline:
        return Pipeline(
            [
                FunctionTask(
                    "A",
                    flaky,
                    inputs={"src": YamlMetadataFileRepository(tmp_path / "src")},
                    retry=RetryPolicy(2, backoff=backoff, jitter=0),
                )
            ],
            state_dir=tmp_path / "state",
            poll_interval="0.02s",
        )

    runner, observer = make(0.6), make(0.6)
    before = time.time()
    run = asyncio.create_task(runner.run())
    try:
        status: dict[str, Any] = {}
        for _ in range(400):
            status = (await observer.status())["A"]
            if status["retrying"]:
                break
            await asyncio.sleep(0.005)
        assert status["retrying"] == ["k1"] and status["running"] == []
        assert status["next_attempt"]["k1"] > time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before))
        rows = progress_rows(runner.scheduler)
        assert dict(zip(PROGRESS_HEADERS, rows[0], strict=True))["retrying"] == 1
        reasons = " ".join(await observer.why("A", "k1"))
        assert "retrying" in reasons and "next starts at" in reasons
        await asyncio.wait_for(second_started.wait(), 30)
        for _ in range(400):
            status = (await observer.status())["A"]
            if status["running"]:
                break
            await asyncio.sleep(0.005)
        assert status["running"] == ["k1"] and status["retrying"] == []
        claim = await observer.tasks["A"].live.get("k1")
        assert claim["state"] == "running" and claim["attempt"] == 2 and claim["retry_at"] is None
    finally:
        release.set()
    summary = await asyncio.wait_for(run, 30)
    assert summary.succeeded == 1 and attempts == 2


async def test_a_hook_that_raises_is_one_line_unless_verbose(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()

    def explode(event: Event) -> None:
        raise RuntimeError("hook\nbroke")

    hooks.on("job_failed", explode)
    event = Event("job_failed", task="A", key="k1")
    with caplog.at_level(logging.WARNING, "pydatatask"):
        await hooks.emit(event)
    (rec,) = caplog.records
    text = rec.getMessage()
    assert "\n" not in text and not rec.exc_info
    for part in ("task A", "'k1'", "explode", "job_failed", "RuntimeError", "hook broke"):
        assert part in text, text
    caplog.clear()
    with caplog.at_level(logging.INFO, "pydatatask"):
        await hooks.emit(event)
    (rec,) = caplog.records
    assert rec.exc_info is not None  # verbose: the traceback too


async def test_blob_inputs_are_not_corrupt(tmp_path: Path) -> None:
    """Only values that are decoded can be corrupt: bytes that look like broken YAML in a
    blob repository are data like any other."""
    src = FileRepository(tmp_path / "src", ".txt")
    await src.write_bytes("k1", TRUNCATED)
    seen: list[bytes] = []

    def a(key: str, src: bytes) -> None:
        seen.append(src)

    summary = await Pipeline([FunctionTask("A", a, inputs={"src": src})]).run()
    assert summary.ok and seen == [TRUNCATED]
