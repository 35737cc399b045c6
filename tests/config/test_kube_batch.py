"""A batched function task cannot run on a Kubernetes executor (its function pod runs one
key): refused when the pipeline is built, from a file or in Python, not when a pod fails."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from pydatatask import MemoryMetadataRepository, Session
from pydatatask.config import load_pipeline, validate_file
from pydatatask.errors import ConfigurationError, PipelineFileError
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.task import FunctionTask

FILE = """\
resources:
  cluster: {kind: kubernetes, config_file: nowhere/kubeconfig}
repositories:
  src: {kind: memory_metadata}
  out: {kind: memory_metadata}
executors:
  kube: {kind: kubernetes, resource: cluster, namespace: jobs}
tasks:
  double:
    kind: function
    function: "tests.config.test_kube_batch:double"
    executor: kube
    inputs: {src: src}
    outputs: {out: out}
    batch: BATCH
"""


def double(src: dict[str, Any]) -> dict[str, Any]:
    return {k: {"out": {"n": v["n"] * 2}} for k, v in src.items()}


def write(tmp_path: Path, batch: int) -> Path:
    path = tmp_path / "pipeline.yaml"
    text = f"python_path: [{Path(__file__).resolve().parents[2]}]\n" + FILE.replace("BATCH", str(batch))
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("build", [validate_file, load_pipeline])
def test_a_batched_function_task_on_kubernetes_is_refused_where_the_file_says_so(
    tmp_path: Path, build: Any
) -> None:
    path = write(tmp_path, 5)
    with pytest.raises(PipelineFileError) as info:
        build(path, environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:10:3: tasks.double: ")
    assert message.endswith(
        "task 'double': a function task with batch=5 cannot run on Kubernetes executor kube "
        "(namespace jobs) (a function pod runs one key): give it batch=1 or another executor"
    )
    assert validate_file(write(tmp_path, 1), environ={}).tasks["double"].batch == 1


def test_a_batched_function_task_on_kubernetes_is_refused_in_python() -> None:
    session = Session()

    @session.resource
    async def cluster() -> Any:
        yield None  # never opened: the task is refused before

    kube = KubeExecutor(cluster, namespace="jobs")
    repos = {"inputs": {"src": MemoryMetadataRepository()}, "outputs": {"out": MemoryMetadataRepository()}}
    with pytest.raises(
        ConfigurationError, match=r"^task 'double': a function task with batch=2 cannot run on"
    ):
        FunctionTask("double", double, executor=kube, batch=2, **repos)  # type: ignore[arg-type]
    assert FunctionTask("double", double, executor=kube, **repos).batch == 1  # type: ignore[arg-type]
