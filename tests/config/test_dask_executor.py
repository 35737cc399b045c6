"""The ``dask`` executor of pipeline files: its client is a session resource, so loading
and checking a file connect to nothing, and a run starts (and closes) the cluster, or
connects to the scheduler at its ``address`` (a real one, started by the test)."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask.config import load_pipeline, validate_file
from pydatatask.config._dask import SessionDaskExecutor
from pydatatask.errors import PipelineFileError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, executor: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        textwrap.dedent(
            f"""\
            python_path: [{ROOT}]
            repositories:
              src: {{kind: memory_blobs}}
              out: {{kind: memory_blobs}}
            executors:
              cluster: {executor}
            tasks:
              shout:
                kind: function
                function: "tests.config.test_dask_executor:plain_upper"
                executor: cluster
                inputs: {{src: src}}
                outputs: {{out: out}}
            """
        )
    )
    return path


def plain_upper(key: str, src: bytes) -> dict[str, bytes]:
    import distributed

    distributed.get_worker()  # ValueError anywhere but on a Dask worker
    return {"out": src.upper()}


async def test_a_function_task_runs_on_a_local_dask_cluster_of_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path, "{kind: dask, local: {n_workers: 1, threads_per_worker: 2, processes: false}, max_jobs: 3}"
    )
    pipeline = load_pipeline(path, environ={})
    executor = pipeline.tasks["shout"].executor
    assert isinstance(executor, SessionDaskExecutor) and executor.capacity.max_jobs == 3
    assert pipeline.session.resource_names == ("executors.cluster",)
    src = pipeline.tasks["shout"].links["src"].repository
    for i in range(4):
        await src.write_bytes(f"k{i}", f"value {i}".encode())  # type: ignore[attr-defined]
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 4, summary
    out = pipeline.tasks["shout"].links["out"].repository
    assert await out.read_bytes("k3") == b"VALUE 3"  # type: ignore[attr-defined]
    record = await pipeline.tasks["shout"].done.get("k0")
    assert record["success"] is True and record["host"] == "cluster", record
    assert not pipeline.session.is_open


def test_checking_a_file_connects_to_nothing(tmp_path: Path) -> None:
    # nothing listens there: a connection would fail (or wait for its timeout)
    path = write(tmp_path, '{kind: dask, address: "tcp://127.0.0.1:9", timeout: 1s, cpu: 4, memory: 1Gi}')
    pipeline = validate_file(path, environ={})
    executor = pipeline.tasks["shout"].executor
    assert isinstance(executor, SessionDaskExecutor)
    assert (executor.capacity.cpu, executor.capacity.memory) == (4, 2**30)
    assert not pipeline.session.is_open
    both = write(tmp_path, '{kind: dask, address: "tcp://127.0.0.1:9", local: {n_workers: 1}}')
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(both, environ={})
    assert str(info.value) == (
        f"{both}:6:12: executors.cluster: give exactly one of address (a running scheduler) "
        "or local (a LocalCluster)"
    )
    unknown = write(tmp_path, "{kind: dask, local: {workers: 2}}")
    with pytest.raises(PipelineFileError, match=r"executors\.cluster\.local\.workers: unknown key 'workers'"):
        load_pipeline(unknown, environ={})


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
    path = write(tmp_path, '{kind: dask, address: "${DASK_SCHEDULER}", timeout: 20s, max_jobs: 2}')
    path.write_text(path.read_text().replace(":plain_upper", ":worker_address"))
    address = cluster.scheduler_address
    assert address.startswith("tcp://127.0.0.1:")
    pipeline = load_pipeline(path, environ={"DASK_SCHEDULER": address})
    executor = pipeline.tasks["shout"].executor
    assert isinstance(executor, SessionDaskExecutor) and executor.capacity.max_jobs == 2
    src = pipeline.tasks["shout"].links["src"].repository
    for i in range(3):
        await src.write_bytes(f"k{i}", b"x")  # type: ignore[attr-defined]
    summary = await pipeline.run()
    assert summary.ok and summary.succeeded == 3, summary
    out = pipeline.tasks["shout"].links["out"].repository
    workers = set(cluster.scheduler.workers)  # the addresses of the cluster's workers
    for i in range(3):
        assert (await out.read_bytes(f"k{i}")).decode() in workers  # type: ignore[attr-defined]
    record = await pipeline.tasks["shout"].done.get("k0")
    assert record["success"] is True and record["host"] == "cluster", record
    assert not pipeline.session.is_open
