"""A pipeline script for tests/task/test_kube.py, configured through the environment:

PDT_KT_DIR (work dir: in/, out/, fkout/, pout/, state/, runs.log), PDT_KT_KUBECONFIG,
PDT_KT_NAME (task name prefix), PDT_KT_SLEEP (seconds each ``sleep`` pod runs),
PDT_KT_MEMORY (set: claims and records in memory, no state_dir).

Tasks: ``<name>sleep`` (a KubeTask running ``sh``), ``<name>psleep`` (the same pod as a
PodTask on a KubeExecutor) and ``<name>fk`` (a FunctionTask on that executor running
:func:`shout` inside its pod, which is this very script run with its hidden
``_call-function`` command).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydatatask
from pydatatask import FileRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import KubeCluster, api_client
from pydatatask.pipeline import Pipeline
from pydatatask.task.function import FunctionTask
from pydatatask.task.kube import KubeTask
from pydatatask.task.pod import PodTask

ROOT = Path(__file__).resolve().parents[2]
DIR = Path(os.environ["PDT_KT_DIR"])
NAME = os.environ["PDT_KT_NAME"]

session = Session()


@session.resource
async def kube() -> AsyncIterator[Any]:
    async with api_client(os.environ["PDT_KT_KUBECONFIG"]) as api:
        yield api


def shout(key: str, src: bytes) -> dict[str, bytes]:
    """The function ``<name>fk`` runs in its pod."""
    where = f"pod={os.environ.get('POD_NAME', '?')}"
    with open(DIR / "fn-runs.log", "a") as f:
        f.write(f"{key} {os.getpid()}\n")
    return {"dst": src.upper() + f" ({where})".encode()}


cluster = KubeCluster(kube, max_pods=int(os.environ.get("PDT_KT_MAX_PODS", "50")))
inputs = FileRepository(DIR / "in", ".txt")

sleep_task = KubeTask(
    f"{NAME}sleep",
    """
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", 'echo "$KEY $POD_UID" >> "$RUNS"; sleep "$SLEEP"; printf done > "$OUT"']
    env:
    - {name: KEY, value: {{ key }}}
    - {name: OUT, value: {{ out.path }}}
    - {name: RUNS, value: {{ params.runs }}}
    - {name: SLEEP, value: {{ params.sleep }}}
    - name: POD_UID
      valueFrom: {fieldRef: {fieldPath: metadata.uid}}
""",
    cluster=cluster,
    inputs={"src": inputs},
    outputs={"out": FileRepository(DIR / "out", ".txt")},
    params={"runs": str(DIR / "runs.log"), "sleep": os.environ.get("PDT_KT_SLEEP", "1")},
    poll_interval="0.3s",
    concurrency=50,
)

pods = KubeExecutor(
    kube,
    name=f"{NAME}x",
    poll_interval="0.3s",
    image="python:3.11-slim",
    script_path=__file__,
    working_dir=str(ROOT),
    env={
        **{k: v for k, v in os.environ.items() if k.startswith("PDT_KT_")},
        "PYTHONPATH": str(ROOT),
        "POD_NAME": {"fieldRef": {"fieldPath": "metadata.name"}},
    },
)

fn_on_pods = FunctionTask(
    f"{NAME}fk",
    shout,
    executor=pods,
    inputs={"src": inputs},
    outputs={"dst": FileRepository(DIR / "fkout", ".txt")},
)

pod_sleep = PodTask(
    f"{NAME}psleep",
    sleep_task.manifest,
    executor=pods,
    inputs={"src": inputs},
    outputs={"out": FileRepository(DIR / "pout", ".txt")},
    params=sleep_task.params,
    concurrency=50,
)

pipeline = Pipeline(
    [sleep_task, fn_on_pods, pod_sleep],
    session,
    state_dir=None if os.environ.get("PDT_KT_MEMORY") else DIR / "state",  # memory: claims die with the run
    poll_interval="0.3s",
)

if __name__ == "__main__":
    pydatatask.main(pipeline)
