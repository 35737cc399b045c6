"""PodTask with batch=N on the test cluster: one pod for the keys of a batch, per-key
results from the lines the pod prints between the result markers of its log (the test
kubelet delivers no termination message), against the real kube-apiserver and the
project's test kubelet (which runs each pod's command as a local process)."""

from __future__ import annotations

import secrets
import shlex
from pathlib import Path
from typing import Any

import pytest

from pydatatask import FileRepository, MemoryBlobRepository, MemoryMetadataRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.task import RetryPolicy
from pydatatask.task.batch_results import RESULTS_BEGIN, RESULTS_END
from pydatatask.task.lifecycle import execute_batch
from pydatatask.task.pod import PodTask
from pydatatask.task.templates import result_line
from tests.kube_support import let_go, make_executor, no_executor_pods_left

pytestmark = pytest.mark.kube

#: the pod runs ``params.script`` with ``sh -c``; ``$OUT`` is the output directory, and
#: ``$PDT_KEYS`` (one key a line) the keys of the batch
BATCH_POD = """
spec:
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", {{ params.script }}]
    env:
    - {name: OUT, value: {{ o.root }}}
    - {name: RUNS, value: {{ params.runs }}}
"""

#: writes "done KEY" to each key's output and notes the keys of this pod in $RUNS
WRITE_ALL = (
    'printf "pod %s\\n" "$(printf "%s" "$PDT_KEYS" | tr "\\n" "|")" >> "$RUNS"\n'
    'printf "%s\\n" "$PDT_KEYS" | while IFS= read -r k; do printf "done %s" "$k" > "$OUT/$k"; done\n'
)

ODD = ["a", "with space", "x;y'z", "$(touch PWNED)", "b"]


def _results(*lines: str) -> str:
    """Shell text printing the result ``lines`` between the markers."""
    return "".join(f"echo {shlex.quote(line)}\n" for line in (RESULTS_BEGIN, *lines, RESULTS_END))


def _task(
    session: Session, kcfg: dict[str, Any], tmp_path: Path, script: str, keys: list[str], **kw: Any
) -> PodTask:
    name = "b" + secrets.token_hex(3)
    (tmp_path / "out").mkdir(exist_ok=True)
    return PodTask(
        name,
        BATCH_POD,
        executor=make_executor(session, kcfg, name),
        inputs={"src": MemoryMetadataRepository({k: {} for k in keys})},
        outputs={"o": FileRepository(tmp_path / "out")},
        params={"script": script, "runs": str(tmp_path / "runs")},
        batch=10,
        **kw,
    )


def _pwned(root: Path) -> list[Path]:
    return list(root.rglob("PWNED")) + list(Path.cwd().glob("PWNED"))


def _created(task: PodTask) -> int:
    ex = task.executor
    assert isinstance(ex, KubeExecutor)
    return ex.created


async def _settled(kcfg: dict[str, Any], task: PodTask) -> None:
    try:
        await no_executor_pods_left(kcfg, task.executor.name)
    finally:
        await let_go(kcfg, label=f"pydatatask.io/executor={task.executor.name}")


async def test_one_pod_runs_the_batch_and_a_key_it_reports_failed_is_retried_alone(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    session = Session()
    logs = MemoryBlobRepository()
    oks = [result_line(k) for k in ODD if k != "b"]
    script = (
        WRITE_ALL
        + "echo working\n"
        + _results(*oks, result_line("b", False, "b is bad"))
        + "echo after the results\n"
    )
    task = _task(
        session, kcfg, tmp_path, script, ODD, logs=logs, retry=RetryPolicy(max_attempts=2, backoff=0.1)
    )
    try:
        async with session:
            records = await execute_batch(task, ODD)
    finally:
        await _settled(kcfg, task)
    runs = (tmp_path / "runs").read_text().splitlines()
    assert runs == ["pod " + "|".join(ODD), "pod b"], runs  # one pod, then one for the failed key
    assert _created(task) == 2
    out = FileRepository(tmp_path / "out")
    for key in ODD[:-1]:
        record = records[key]
        assert record["success"] and record["attempts"] == 1 and record["batch"]["size"] == len(ODD)
        assert record["exit_code"] == 0 and record["host"] == kcfg["node"]
        assert await out.read_text(key) == f"done {key}"
        text = await logs.read_text(key)
        assert "working" in text and "after the results" in text
    failed = records["b"]
    assert not failed["success"] and failed["attempts"] == 2 and "b is bad" in failed["error"]["message"]
    assert not await out.contains("b")  # written by both pods, removed after each
    assert not _pwned(tmp_path)


async def test_a_failed_pod_fails_only_the_keys_it_did_not_report_ok(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    session = Session()
    keys = ["a", "b", "c"]
    script = WRITE_ALL + _results(result_line("a"), result_line("c")) + "echo broke >&2; exit 3\n"
    task = _task(session, kcfg, tmp_path, script, keys)
    try:
        async with session:
            records = await execute_batch(task, keys)
    finally:
        await _settled(kcfg, task)
    assert _created(task) == 1
    out = FileRepository(tmp_path / "out")
    for key in ("a", "c"):
        assert records[key]["success"] and records[key]["exit_code"] == 3
        assert await out.read_text(key) == f"done {key}"
    failed = records["b"]
    assert not failed["success"] and failed["exit_code"] == 3
    assert "exited with 3" in failed["error"]["message"] and failed["kube"]["phase"] == "Failed"
    assert not await out.contains("b")


async def test_a_pod_batch_that_times_out_fails_every_key(kcfg: dict[str, Any], tmp_path: Path) -> None:
    session = Session()
    keys = ["a", "b"]
    task = _task(session, kcfg, tmp_path, WRITE_ALL + "sleep 30\n", keys, timeout="2s")
    try:
        async with session:
            records = await execute_batch(task, keys)
    finally:
        await _settled(kcfg, task)
    out = FileRepository(tmp_path / "out")
    for key in keys:
        assert records[key]["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        assert not await out.contains(key)
    assert _created(task) == 1


async def test_the_scheduler_starts_one_pod_per_batch(kcfg: dict[str, Any], tmp_path: Path) -> None:
    session = Session()
    keys = [f"k{i}" for i in range(7)]
    task = _task(session, kcfg, tmp_path, WRITE_ALL, keys)
    task.batch = 3
    try:
        summary = await Pipeline([task], session).run()
    finally:
        await _settled(kcfg, task)
    assert summary.ok and summary.succeeded == 7, summary
    assert _created(task) == 3  # three pods for seven keys
    runs = (tmp_path / "runs").read_text().splitlines()
    assert sorted(len(r.split()[1].split("|")) for r in runs) == [1, 3, 3], runs
    out = FileRepository(tmp_path / "out")
    for key in keys:
        assert await out.read_text(key) == f"done {key}"
