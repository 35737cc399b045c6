"""A pipeline script for tests/task/test_kube.py, configured through the environment:

PDT_KT_DIR (work dir: in/, out/, fkout/, pout/, state/, runs.log), PDT_KT_KUBECONFIG,
PDT_KT_NAME (task name prefix), PDT_KT_SLEEP (seconds each ``sleep`` pod runs),
PDT_KT_MEMORY (set: claims and records in memory, no state_dir).

Tasks, all on one KubeExecutor (``<name>x``): ``<name>sleep`` (a PodTask running ``sh``,
writing to out/), ``<name>psleep`` (the same pod writing to pout/) and ``<name>fk`` (a
FunctionTask running :func:`shout` inside its pod, which is this very script run with its
hidden ``_call-function`` command).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pydatatask
from pydatatask import FileRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import api_client
from pydatatask.pipeline import Pipeline
from pydatatask.task.function import FunctionTask
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


inputs = FileRepository(DIR / "in", ".txt")

SLEEP_POD = """
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
"""
SLEEP_PARAMS = {"runs": str(DIR / "runs.log"), "sleep": os.environ.get("PDT_KT_SLEEP", "1")}

pods = KubeExecutor(
    kube,
    name=f"{NAME}x",
    max_pods=50,
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

sleep_task = PodTask(
    f"{NAME}sleep",
    SLEEP_POD,
    executor=pods,
    inputs={"src": inputs},
    outputs={"out": FileRepository(DIR / "out", ".txt")},
    params=SLEEP_PARAMS,
    concurrency=50,
)

pod_sleep = PodTask(
    f"{NAME}psleep",
    SLEEP_POD,
    executor=pods,
    inputs={"src": inputs},
    outputs={"out": FileRepository(DIR / "pout", ".txt")},
    params=SLEEP_PARAMS,
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
