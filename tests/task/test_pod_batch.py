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
from tests.kube_support import make_executor, settled, sh_pod

pytestmark = pytest.mark.kube

#: the pod runs ``params.script`` with ``sh -c``; ``$OUT`` is the output directory, and
#: ``$PDT_KEYS`` (one key a line) the keys of the batch
BATCH_POD = sh_pod({"OUT": "{{ o.root }}", "RUNS": "{{ params.runs }}"})

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
    session: Session,
    kcfg: dict[str, Any],
    tmp_path: Path,
    script: str,
    keys: list[str],
    executor: dict[str, Any] | None = None,
    **kw: Any,
) -> PodTask:
    name = "b" + secrets.token_hex(3)
    (tmp_path / "out").mkdir(exist_ok=True)
    return PodTask(
        name,
        BATCH_POD,
        executor=make_executor(session, kcfg, name, **(executor or {})),
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
    await settled(kcfg, task.executor.name)


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


async def test_results_after_more_output_than_the_job_log_keeps_are_read(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    session = Session()
    keys = ["a", "b"]
    noise = "echo " + "x" * 99 + "\n"
    script = WRITE_ALL + noise * 40 + _results(result_line("a"), result_line("b", False, "b is bad"))
    task = _task(session, kcfg, tmp_path, script, keys, executor={"log_limit": 1000})
    try:
        async with session:
            records = await execute_batch(task, keys)
    finally:
        await _settled(kcfg, task)
    assert records["a"]["success"]
    assert not records["b"]["success"] and "b is bad" in records["b"]["error"]["message"]
    assert not await FileRepository(tmp_path / "out").contains("b")


async def test_a_pod_batch_that_times_out_fails_every_key(kcfg: dict[str, Any], tmp_path: Path) -> None:
    session = Session()
    keys = ["a", "b"]
    logs = MemoryBlobRepository()
    script = WRITE_ALL + "echo working on the batch\nsleep 30\n"
    task = _task(session, kcfg, tmp_path, script, keys, timeout="2s", logs=logs)
    try:
        async with session:
            records = await execute_batch(task, keys)
    finally:
        await _settled(kcfg, task)
    out = FileRepository(tmp_path / "out")
    for key in keys:
        assert records[key]["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        assert not await out.contains(key)
        assert "working on the batch" in await logs.read_text(key)  # what it printed before it was stopped
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


KILLED_POD_SCHEDULER = """
import sys
from pydatatask import FileRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.task.pod import PodTask
from tests.kube_support import batch_scheduler, kube_resource, sh_pod

root, kubeconfig, name, sleep = sys.argv[1:5]
session = Session()
kube = kube_resource(session, kubeconfig)
script = (
    'printf "pod %s %s\\\\n" "$POD_UID" "$(printf "%s" "$PDT_KEYS" | tr "\\\\n" "|")" >> "$RUNS"; sleep "$SLEEP"; '
    'printf "%s\\\\n" "$PDT_KEYS" | while IFS= read -r k; do printf done > "$OUT/$k"; done'
)
env = {"OUT": "{{ o.root }}", "RUNS": "{{ params.runs }}", "SLEEP": "{{ params.sleep }}"}
task = PodTask(
    name,
    sh_pod(env, pod_uid=True),
    executor=KubeExecutor(kube, name=name),
    inputs={"src": FileRepository(root + "/in")},
    outputs={"o": FileRepository(root + "/out")},
    params={"script": script, "runs": root + "/runs", "sleep": sleep},
    batch=3,
)
batch_scheduler(task, session, root)
"""


def test_a_scheduler_killed_mid_pod_batch_then_every_key_is_done_once(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    import asyncio
    import os
    import subprocess
    import sys
    import time

    import yaml

    keys = ["a", "b", "c"]
    for d in ("in", "out"):
        (tmp_path / d).mkdir()
    for key in keys:
        (tmp_path / "in" / key).write_text(key)
    script = tmp_path / "sched.py"
    script.write_text(KILLED_POD_SCHEDULER)
    name = "b" + secrets.token_hex(3)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    argv = [sys.executable, str(script), str(tmp_path), kcfg["kubeconfig"], name]
    runs = tmp_path / "runs"
    first = subprocess.Popen([*argv, "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (runs.exists() and runs.read_text().strip()):
            assert first.poll() is None, "the first scheduler ended before it was killed"
            assert time.monotonic() < deadline, "the pod did not start"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    try:
        second = subprocess.run([*argv, "0"], env=env, capture_output=True, text=True, timeout=90)
        assert "OK 3" in second.stdout, second.stdout + second.stderr
        for key in keys:
            record = yaml.safe_load((tmp_path / "state" / name / "done" / f"{key}.yaml").read_text())
            assert record["success"], record
            assert (tmp_path / "out" / key).read_text() == "done"
        lines = runs.read_text().splitlines()
        # the batch's pod is stopped, not adopted key by key: every key runs again, once
        assert lines[0].endswith(" a|b|c"), lines
        again = [k for line in lines[1:] for k in line.rsplit(" ", 1)[-1].split("|")]
        assert sorted(again) == keys, lines
        assert "adopting pod" not in second.stderr, second.stderr
        assert list((tmp_path / "state" / name / "live").glob("*.yaml")) == []
    finally:
        asyncio.run(settled(kcfg, name))


async def test_a_batched_function_does_not_run_in_a_function_pod() -> None:
    from pydatatask.errors import ConfigurationError
    from pydatatask.task.function import FunctionTask
    from pydatatask.task.function_pod import call_function

    src, dst = MemoryMetadataRepository({"a": {"n": 1}, "b": {"n": 2}}), MemoryMetadataRepository()

    def double(src: dict[str, Any]) -> dict[str, Any]:
        return {k: {"dst": {"n": v["n"] * 2}} for k, v in src.items()}

    task = FunctionTask("double", double, inputs={"src": src}, outputs={"dst": dst}, batch=2)
    with pytest.raises(ConfigurationError, match="batch=2 cannot run its function in a pod"):
        await call_function(task, "a")
    assert [k async for k in dst] == []
