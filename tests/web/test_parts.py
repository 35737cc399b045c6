"""The parts of the page without a server: the graph's layout, histograms, JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from xml.etree import ElementTree

import pytest

from pydatatask import ConfigurationError, MemoryMetadataRepository
from pydatatask.logs import configure_logging
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.metrics import Histogram
from pydatatask.task import FunctionTask
from pydatatask.web.graph import NODE_H, NODE_W, graph_svg, layout


async def _copy(key: str, src: object, out: object) -> None:
    raise AssertionError("not run")


def chain_and_fans(n: int) -> Pipeline:
    """``n`` tasks: a chain of half of them, the others each reading one of the chain's outputs."""
    repos = [MemoryMetadataRepository() for _ in range(n + 1)]
    tasks = []
    half = n // 2
    for i in range(half):
        tasks.append(
            FunctionTask(f"stage{i}", _copy, inputs={"src": repos[i]}, outputs={"out": repos[i + 1]})
        )
    for j in range(n - half):
        tasks.append(
            FunctionTask(
                f"side{j}",
                _copy,
                inputs={"src": repos[1 + j % half]},
                outputs={"out": MemoryMetadataRepository()},
            )
        )
    return Pipeline(tasks)


def test_layout_of_20_tasks_has_no_overlap_and_flows_left_to_right() -> None:
    drawing = chain_and_fans(20).graph.drawing()
    places = layout(drawing)
    assert len(set(places.values())) == len(places)  # one node per cell
    for flow in drawing.flows:
        assert places[flow.source][0] < places[flow.target][0], flow
    chain = [n.id for n in drawing.nodes if n.kind == "task" and n.label.startswith("stage")]
    assert [places[i][0] for i in chain] == list(range(1, 20, 2))  # repository, task, repository...
    svg = graph_svg(drawing)
    root = ElementTree.fromstring(svg)  # well-formed
    ns = "{http://www.w3.org/2000/svg}"
    rects = [(float(r.get("x", 0)), float(r.get("y", 0))) for r in root.iter(f"{ns}rect")]
    assert len(rects) == len(drawing.nodes)
    for a in rects:
        for b in rects:
            if a != b:
                assert abs(a[0] - b[0]) >= NODE_W or abs(a[1] - b[1]) >= NODE_H
    tasks = [g.get("data-task") for g in root.iter(f"{ns}g") if g.get("data-task")]
    assert sorted(tasks) == sorted([f"stage{i}" for i in range(10)] + [f"side{j}" for j in range(10)])


def test_labels_are_escaped_in_the_svg() -> None:
    repo = MemoryMetadataRepository()
    task = FunctionTask("t", _copy, inputs={"src": repo}, outputs={"out": MemoryMetadataRepository()})
    task.description = 'a <b> & "c"'
    svg = graph_svg(Pipeline([task]).graph.drawing())
    ElementTree.fromstring(svg)
    assert "<b>" not in svg


def test_histogram_buckets() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 2.0, 3.0):
        h.observe(v)
    assert h.cumulative() == [("0.1", 2), ("1.0", 3), ("+Inf", 5)]
    assert h.count == 5 and h.sum == pytest.approx(5.65)


def test_json_logs_through_the_python_api() -> None:
    stream = io.StringIO()
    handler = configure_logging("json", logging.INFO, stream=stream)
    logger = logging.getLogger("pydatatask")
    try:
        logging.getLogger("pydatatask.jobs").info(
            "task t: 'k' failed", extra={"task": "t", "key": "k", "state": "failed", "error_type": "OSError"}
        )
        try:
            raise OSError("disk gone")
        except OSError:
            logging.getLogger("pydatatask.scheduler").warning("no luck", exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["task"] == "t" and first["key"] == "k" and first["error_type"] == "OSError"
    assert (
        first["level"] == "info" and first["logger"] == "pydatatask.jobs" and first["time"].endswith("+00:00")
    )
    assert "attempt" not in first  # only the fields an event sets
    assert second["exception"] == {"type": "OSError", "message": "disk gone"}
    with pytest.raises(ConfigurationError, match="unknown log format 'xml'; formats: text, json"):
        configure_logging("xml")


class _HeldListing(MemoryMetadataRepository):
    """A done repository whose listing, once armed, is held after it has read its names
    (so a snapshot can be caught between its listing and its end)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.listed = asyncio.Event()
        self.release = asyncio.Event()

    async def keys(self) -> set[str]:
        names = await super().keys()
        if self.armed:
            self.armed = False
            self.listed.set()
            await self.release.wait()
        return names


async def test_a_change_made_while_a_snapshot_is_taken_is_not_hidden_by_it() -> None:
    """A redo invalidates the snapshot; one that was being taken at that moment listed
    the records before the change and must not be kept as fresh."""
    from pydatatask.web.state import Monitor

    done = _HeldListing()
    src = MemoryMetadataRepository({"a": 1, "b": 2})
    task = FunctionTask(
        "t",
        lambda key, src: {"out": src},
        inputs={"src": src},
        outputs={"out": MemoryMetadataRepository()},
        done=done,
    )
    pipeline = Pipeline([task])
    assert (await pipeline.run()).succeeded == 2
    monitor = Monitor(pipeline, interval=60.0)
    assert sorted((await monitor.snapshot()).tasks["t"].keys["succeeded"]) == ["a", "b"]
    monitor.invalidate()
    done.armed = True
    taking = asyncio.create_task(monitor.snapshot())
    await done.listed.wait()  # it has listed both records
    await pipeline.remove("t", ["a"])  # what a redo of 'a' does
    monitor.invalidate()
    done.release.set()
    await taking
    assert sorted((await monitor.snapshot()).tasks["t"].keys["succeeded"]) == ["b"]


def test_sorted_keys_follow_the_snapshot_before() -> None:
    import random

    from pydatatask.web.state import TaskState

    rng = random.Random(7)
    keys = {f"k{i:05d}" for i in range(20_000)}
    before = TaskState({"succeeded": set(keys)})
    assert before.sorted_keys("succeeded") == sorted(keys)
    for added, removed in ((0, 0), (5, 0), (0, 3), (40, 40), (300, 200), (9_000, 0)):
        now = set(keys)
        now -= set(rng.sample(sorted(now), removed))
        now |= {f"n{rng.randrange(10**9):09d}" for _ in range(added)} | {f"k{i:05d}x" for i in range(added)}
        state = TaskState({"succeeded": now, "failed": {"b", "a"}}, previous=before)
        assert state.sorted_keys("succeeded") == sorted(now), (added, removed)
        assert state.sorted_keys("failed") == ["a", "b"]  # not in the snapshot before
        assert state.page("succeeded", offset=100, limit=3)["keys"] == sorted(now)[100:103]
        keys, before = now, state
    same = TaskState({"succeeded": set(keys)}, previous=before)
    assert same.sorted_keys("succeeded") is before.sorted_keys("succeeded")  # unchanged: reused


async def test_a_kept_snapshot_is_answered_while_the_next_one_is_listed() -> None:
    """serve answers from the snapshot it has while the next listing goes on in the
    background; the next one replaces it once listed, its paged states sorted already."""
    from pydatatask.web.state import Monitor

    done = _HeldListing()
    src = MemoryMetadataRepository({"a": 1, "b": 2})
    task = FunctionTask(
        "t",
        lambda key, src: {"out": src},
        inputs={"src": src},
        outputs={"out": MemoryMetadataRepository()},
        done=done,
    )
    pipeline = Pipeline([task])
    assert (await pipeline.run()).succeeded == 2
    monitor = Monitor(pipeline, interval=0.01)
    try:
        first = await monitor.snapshot()
        assert first.tasks["t"].page("succeeded")["keys"] == ["a", "b"]
        await src.put("c", 3)
        first.monotonic -= 3600  # old: the next request takes another
        done.armed = True
        async with asyncio.timeout(5):
            assert await monitor.snapshot() is first  # at once
            await done.listed.wait()  # the next listing is under way, and held
            assert await monitor.snapshot() is first  # still answered at once
            done.release.set()
            while True:  # the listing ends in the background
                now = await monitor.snapshot()
                if now is not first:
                    break
                await asyncio.sleep(0.01)
        assert now.tasks["t"].keys["ready"] == {"c"}
        assert "succeeded" in now.tasks["t"]._sorted  # sorted before it was shown
        assert now.tasks["t"].page("succeeded")["keys"] == ["a", "b"]
    finally:
        await monitor.aclose()
