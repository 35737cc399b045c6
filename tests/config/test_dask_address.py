"""The ``address:`` form of a ``dask`` executor in a pipeline file, end to end: a real Dask
scheduler (a LocalCluster on 127.0.0.1, started by the test) runs the jobs of the file."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask.config import load_pipeline
from pydatatask.config._dask import SessionDaskExecutor

ROOT = Path(__file__).resolve().parents[2]


def worker_address(key: str, src: bytes) -> dict[str, bytes]:
    """The address of the Dask worker that runs the call (an error anywhere else)."""
    import distributed

    return {"out": distributed.get_worker().address.encode()}


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A Dask scheduler and one worker on 127.0.0.1 (TCP), in this process."""
    import distributed

    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp",
        host="127.0.0.1",
        dashboard_address=None,
    ) as running:
        yield running


async def test_a_file_runs_its_jobs_on_the_scheduler_at_its_address(tmp_path: Path, cluster: Any) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            python_path: [{ROOT}]
            repositories:
              src: {{kind: memory_blobs}}
              out: {{kind: memory_blobs}}
            executors:
              cluster: {{kind: dask, address: "${{DASK_SCHEDULER}}", timeout: 20s, max_jobs: 2}}
            tasks:
              where:
                kind: function
                function: "tests.config.test_dask_address:worker_address"
                executor: cluster
                inputs: {{src: src}}
                outputs: {{out: out}}
            """
        )
    )
    address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    pipeline = load_pipeline(path, environ={"DASK_SCHEDULER": address})
    executor = pipeline.tasks["where"].executor
    assert isinstance(executor, SessionDaskExecutor) and executor.capacity.max_jobs == 2
    src = pipeline.tasks["where"].links["src"].repository
    for i in range(3):
        await src.write_bytes(f"k{i}", b"x")  # type: ignore[attr-defined]
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 3, summary
    out = pipeline.tasks["where"].links["out"].repository
    workers = set(cluster.scheduler.workers)  # the addresses of the cluster's workers
    for i in range(3):
        assert (await out.read_bytes(f"k{i}")).decode() in workers  # type: ignore[attr-defined]
    record = await pipeline.tasks["where"].done.get("k0")
    assert record["success"] is True and record["host"] == "cluster", record
    assert not pipeline.session.is_open
