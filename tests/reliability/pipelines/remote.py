"""A one-task pipeline whose jobs run away from the scheduler: over SSH or as Kubernetes pods.

``python tests/reliability/pipelines/remote.py COMMAND ...`` (the pydatatask CLI), for the
SSH and Kubernetes chaos rounds of the reliability tests. Settings come from the
environment, as for ``counted.py``:

``PDT_REL_EXEC``        ``ssh`` (a :class:`~pydatatask.ProcessTask` over an ``SSHHost``) or
                        ``kube`` (a :class:`~pydatatask.task.pod.PodTask` on a ``KubeExecutor``)
``PDT_REL_DATA``        the local directory: ``src/``, ``out/``, ``state/NS/{done,live}``, logs
``PDT_REL_NS``          the task name (unique per round: the pods' label, the remote marker)
``PDT_REL_RUNS``        the file each job appends ``KEY PID`` to when it starts its work
                        (for SSH a world-writable ``/tmp`` file: the SSH user writes it)
``PDT_REL_SSH``         JSON ``{"host", "port", "user", "client_key", "known_hosts"}``
``PDT_REL_KUBECONFIG``  a kubeconfig (may point at the harness's cut-able proxy)
``PDT_REL_SLEEP``, ``PDT_REL_CONCURRENCY``, ``PDT_REL_LEASE``, ``PDT_REL_CHECK``

``done.log`` gets ``KEY PID`` from the ``job_succeeded`` hook, after the success record.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from pydatatask import Backoff, FileRepository, Session
from pydatatask.cli import main
from pydatatask.pipeline import Pipeline
from pydatatask.task import Event, RetryPolicy, Task

DATA = Path(os.environ["PDT_REL_DATA"])
EXEC = os.environ["PDT_REL_EXEC"]
NS = os.environ["PDT_REL_NS"]
RUNS = os.environ["PDT_REL_RUNS"]
SLEEP = os.environ.get("PDT_REL_SLEEP", "0.2")
CONCURRENCY = int(os.environ.get("PDT_REL_CONCURRENCY", "8"))
LEASE = os.environ.get("PDT_REL_LEASE")
CHECK = os.environ.get("PDT_REL_CHECK")
# a fault of a few seconds must not exhaust the attempts
RETRY = RetryPolicy(max_attempts=10, backoff=0.5, factor=1.5, max_backoff=3.0)


def append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def build_pipeline() -> Pipeline:
    session = Session()
    src = FileRepository(DATA / "src", ".txt")
    out = FileRepository(DATA / "out", ".txt")
    task: Task
    if EXEC == "ssh":
        import asyncssh

        from pydatatask import ProcessTask
        from pydatatask.executor import SSHHost

        conf = json.loads(os.environ["PDT_REL_SSH"])
        host = SSHHost(
            connect=lambda: asyncssh.connect(
                conf["host"],
                port=conf["port"],
                username=conf["user"],
                client_keys=[conf["client_key"]],
                known_hosts=conf["known_hosts"],
            ),
            name="chaos",
            cpus=CONCURRENCY,
            retry_interval="0.5s",
        )

        task = ProcessTask(
            NS,
            script=(
                'echo "$PDT_KEY $$" >> {{ params.runs }}\n'
                "sleep {{ params.sleep }}\n"
                "tr a-z A-Z < {{ i.path }} > {{ o.path }}\n"
            ),
            executor=host,
            inputs={"i": src},
            outputs={"o": out},
            params={"runs": RUNS, "sleep": SLEEP},
            concurrency=CONCURRENCY,
            memory="16Mi",
            kill_grace="1s",
            retry=RETRY,
        )
    elif EXEC == "kube":
        from pydatatask.executor.kubernetes import KubeExecutor
        from pydatatask.executor.pods import KubeCluster, api_client
        from pydatatask.task.pod import PodTask

        @session.resource
        async def kube() -> AsyncIterator[Any]:
            async with api_client(os.environ["PDT_REL_KUBECONFIG"]) as api:
                yield api

        task = PodTask(
            NS,
            """
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", 'echo "$KEY $$" >> "$RUNS"; sleep "$SLEEP"; tr a-z A-Z < "$IN" > "$OUT"']
    env:
    - {name: KEY, value: {{ key }}}
    - {name: IN, value: {{ i.path }}}
    - {name: OUT, value: {{ o.path }}}
    - {name: RUNS, value: {{ params.runs }}}
    - {name: SLEEP, value: {{ params.sleep }}}
""",
            executor=KubeExecutor(
                KubeCluster(kube, retry=Backoff(attempts=8, initial=0.2, max_delay=2.0)),
                name=NS,
            ),
            inputs={"i": src},
            outputs={"o": out},
            params={"runs": RUNS, "sleep": SLEEP},
            concurrency=CONCURRENCY,
            retry=RETRY,
        )
    else:
        raise SystemExit(f"unknown PDT_REL_EXEC {EXEC!r}")

    pipeline = Pipeline(
        [task],
        session,
        state_dir=DATA / "state",
        **({"claim_lease": LEASE} if LEASE else {}),
        **({"claim_check_interval": CHECK} if CHECK else {}),
        poll_interval="0.5s",
    )

    @pipeline.hooks.on("job_succeeded")
    def _done(event: Event) -> None:
        append_line(DATA / "done.log", f"{event.key} {os.getpid()}")

    return pipeline


if __name__ == "__main__":
    main(build_pipeline(), sys.argv[1:])
