"""``run`` finishes a chained pipeline in one pass of the scheduler: nothing is left ready.

The CLI once ran the scheduler a second time whenever keys were still ready after a run;
these tests check that a single :meth:`Pipeline.run` (all the CLI calls now) leaves
nothing ready, over a chain whose stages end jobs in threads, in the event loop and in a
second thread pool, so that jobs keep finishing while the scheduler lists repositories.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from pydatatask import MemoryBlobRepository, MemoryMetadataRepository
from pydatatask.cli import run_cli
from pydatatask.executor import PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask

N = 60


@pytest.fixture
def chain() -> Iterator[Pipeline]:
    rng = random.Random(1234)
    src = MemoryBlobRepository({f"k{i:03d}": f"text {i}".encode() for i in range(N)}, name="src")
    a_out = MemoryBlobRepository(name="a")
    b_out = MemoryMetadataRepository(name="b")
    c_out = MemoryBlobRepository(name="c")
    d_out = MemoryMetadataRepository(name="d")
    pool_a = ThreadPoolExecutor(4)
    delays = {f"k{i:03d}": rng.random() * 0.004 for i in range(N)}

    def stage_a(key: str, src: bytes) -> dict[str, bytes]:
        import time

        time.sleep(delays[key])  # jobs end at scattered times, during listings too
        return {"a": src.upper()}

    async def stage_b(key: str, a: MemoryBlobRepository, b: MemoryMetadataRepository) -> None:
        await b.put(key, {"len": len(await a.read_bytes(key))})

    def stage_c(key: str, b: Any) -> dict[str, bytes]:
        return {"c": str(b["len"]).encode()}

    async def stage_d(key: str, c: MemoryBlobRepository, d: MemoryMetadataRepository) -> None:
        await d.put(key, {"c": (await c.read_bytes(key)).decode()})

    pipeline = Pipeline(
        [
            FunctionTask(
                "a",
                stage_a,
                executor=PoolExecutor(pool_a),
                inputs={"src": src},
                outputs={"a": a_out},
                concurrency=4,
            ),
            FunctionTask("b", stage_b, inputs={"a": a_out}, outputs={"b": b_out}, concurrency=3),
            FunctionTask("c", stage_c, inputs={"b": b_out}, outputs={"c": c_out}, concurrency=2),
            FunctionTask("d", stage_d, inputs={"c": c_out}, outputs={"d": d_out}),
        ]
    )
    yield pipeline
    pool_a.shutdown()


async def test_one_run_leaves_nothing_ready_in_a_chain(chain: Pipeline) -> None:
    summary = await chain.run()
    assert summary.ok, summary.errors
    assert summary.per_task == {name: {"succeeded": N, "failed": 0} for name in "abcd"}
    status = await chain.status()
    for name in "abcd":
        assert status[name]["ready"] == [], name
        assert status[name]["blocked"] == [], name
        assert len(status[name]["succeeded"]) == N, name


def test_cli_run_does_every_job_once(chain: Pipeline, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(chain, ["run", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["per_task"] == {name: {"succeeded": N, "failed": 0} for name in "abcd"}
    assert run_cli(chain, ["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert {name: s["counts"]["ready"] for name, s in status.items()} == dict.fromkeys("abcd", 0)
    assert {name: s["counts"]["succeeded"] for name, s in status.items()} == dict.fromkeys("abcd", N)
