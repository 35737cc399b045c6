"""PodTask and FunctionTask on a KubeExecutor, driven by the one job lifecycle, against the
real kube-apiserver and the project's test kubelet (which runs each pod's command as a
local process, so pods write into the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pydatatask import FileRepository, MemoryBlobRepository, MemoryMetadataRepository, Session
from pydatatask.errors import ConfigurationError
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import pod_name
from pydatatask.pipeline import Pipeline
from pydatatask.task.pod import PodTask
from tests.kube_support import SH_POD as SH_SCRIPT_POD
from tests.kube_support import executor_pods as pods_of
from tests.kube_support import make_executor as executor
from tests.kube_support import no_executor_pods_left as no_pods_left

pytestmark = pytest.mark.kube

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "kube_pipeline.py"

SH_POD = SH_SCRIPT_POD + "    - {name: OUT, value: {{ out.path }}}\n"


@pytest.fixture
def name() -> str:
    return "p" + secrets.token_hex(3)


def sh_task(ex: KubeExecutor, tname: str, script: str, tmp_path: Path, **kw: Any) -> PodTask:
    return PodTask(
        tname,
        SH_POD,
        executor=ex,
        inputs={"src": kw.pop("src")},
        outputs={"out": FileRepository(tmp_path / "out", ".txt")},
        params={"script": script},
        **kw,
    )


async def test_pod_task_records_exit_code_node_and_logs(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    session = Session()
    ex = executor(session, kcfg, name)
    src, logs = MemoryMetadataRepository(), MemoryBlobRepository()
    script = 'echo "working on $KEY"; if [ "$KEY" = bad ]; then echo oops >&2; exit 3; fi; printf "done $KEY" > "$OUT"'
    task = sh_task(ex, name, script, tmp_path, src=src, logs=logs)
    for key in ("bad", "Good_Key.1"):
        await src.put(key, {})
    summary = await Pipeline([task], session).run()
    assert summary.failed == 1 and summary.succeeded == 1
    bad = await task.done.get("bad")
    assert bad["success"] is False and bad["exit_code"] == 3 and bad["host"] == kcfg["node"]
    assert bad["kube"]["containers"]["main"]["exit_code"] == 3 and bad["kube"]["phase"] == "Failed"
    assert "exited with 3" in bad["error"]["message"]
    assert "working on bad" in await logs.read_text("bad") and "oops" in await logs.read_text("bad")
    assert not (tmp_path / "out" / "bad.txt").exists()
    good = await task.done.get("Good_Key.1")
    assert good["success"] and good["exit_code"] == 0 and good["kube"]["phase"] == "Succeeded"
    assert good["kube"]["pod"] == pod_name(name, "Good_Key.1")
    assert (tmp_path / "out" / "Good_Key.1.txt").read_text() == "done Good_Key.1"
    await no_pods_left(kcfg, name)


async def test_pod_task_timeout_stops_the_pod_and_removes_its_output(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    session = Session()
    ex = executor(session, kcfg, name)
    src, logs = MemoryMetadataRepository({"k": {}}), MemoryBlobRepository()
    script = 'echo "working on $KEY"; printf partial > "$OUT"; sleep 30'
    task = sh_task(ex, name, script, tmp_path, src=src, logs=logs, timeout="2s")
    summary = await Pipeline([task], session).run()
    assert summary.failed == 1
    record = await task.done.get("k")
    assert record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    assert "working on k" in await logs.read_text("k")  # what the pod printed before it was stopped
    assert not (tmp_path / "out" / "k.txt").exists()
    await no_pods_left(kcfg, name)


async def test_two_schedulers_run_each_key_once(kcfg: dict[str, Any], name: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs.log"
    keys = [f"k{i}" for i in range(6)]
    (tmp_path / "in").mkdir()
    for key in keys:
        (tmp_path / "in" / f"{key}.txt").write_text(key)

    def pipeline() -> Pipeline:
        session = Session()
        task = sh_task(
            executor(session, kcfg, name),
            name,
            f'echo "$KEY" >> {runs}; sleep 0.5; printf ok > "$OUT"',
            tmp_path,
            src=FileRepository(tmp_path / "in", ".txt"),
        )
        return Pipeline([task], session, state_dir=tmp_path / "state")

    first, second = pipeline(), pipeline()
    async with first:  # creates the state directories (two creating them at once race)
        pass
    await asyncio.gather(first.run(), second.run())
    assert sorted(runs.read_text().split()) == keys
    for key in keys:
        record = yaml.safe_load((tmp_path / "state" / name / "done" / f"{key}.yaml").read_text())
        assert record["success"] and record["attempts"] == 1
    await no_pods_left(kcfg, name)


def _rendering(manifest: str, ex: KubeExecutor, tmp_path: Path, script: str, **kw: Any) -> PodTask:
    """A pod task to render ``manifest`` with: its output ``out`` in ``tmp_path``."""
    return PodTask(
        "t",
        manifest,
        executor=ex,
        inputs={"src": MemoryMetadataRepository()},
        outputs={"out": FileRepository(tmp_path, ".txt")},
        params={"script": script},
        **kw,
    )


def test_pod_task_needs_a_pod_executor_and_a_pod_within_the_quota(tmp_path: Path) -> None:
    ex = KubeExecutor(object(), name="q", max_cpu="1")
    with pytest.raises(ConfigurationError, match="could never run"):
        PodTask("t", SH_POD, executor=ex, cpu="2")
    with pytest.raises(ConfigurationError, match="manifest must be a non-empty"):
        PodTask("t", " ", executor=ex)
    task = _rendering(SH_POD, ex, tmp_path, "x")
    body = task.render("A_b.1", attempt=2)
    assert body["spec"]["containers"][0]["command"] == ["sh", "-c", "x"]
    assert body["spec"]["containers"][0]["env"] == [
        {"name": "KEY", "value": "A_b.1"},
        {"name": "OUT", "value": str(tmp_path / "A_b.1.txt")},
    ]


def test_pod_task_env_reaches_every_container_and_the_manifest_wins(tmp_path: Path) -> None:
    """A task's ``env`` (plain values and ``valueFrom``) is added to every container; a
    variable the manifest sets keeps its value; the task's value wins over the executor's;
    secrets stay out of the command line."""
    ex = KubeExecutor(object(), name="e", env={"SHARED": "executor", "ONLY_EX": "x"})
    manifest = SH_POD + "  - name: side\n    image: busybox\n    command: [sleep, '1']\n"
    token = {"secretKeyRef": {"name": "s", "key": "token"}}
    task = _rendering(
        manifest, ex, tmp_path, "echo hi", env={"TOKEN": token, "KEY": "from-task", "SHARED": "task"}
    )
    body = ex.pod_body(task.render("k1"), "t", "k1", task.resources)
    main, side = body["spec"]["containers"]
    env = {e["name"]: e for e in main["env"]}
    assert env["KEY"] == {"name": "KEY", "value": "k1"}  # the manifest's own
    assert env["TOKEN"] == {"name": "TOKEN", "valueFrom": token}
    assert env["SHARED"]["value"] == "task" and env["ONLY_EX"]["value"] == "x"
    assert [e["name"] for e in side["env"]] == ["TOKEN", "KEY", "SHARED", "ONLY_EX"]
    assert "token" not in repr(main["command"])
    with pytest.raises(ConfigurationError, match="env 'N' must be a string or a valueFrom dict"):
        PodTask("t", SH_POD, executor=ex, env={"N": 3})


async def test_pod_task_env_is_seen_by_the_pod(kcfg: dict[str, Any], name: str, tmp_path: Path) -> None:
    session = Session()
    src = MemoryMetadataRepository({"k": {}})
    task = sh_task(
        executor(session, kcfg, name),
        name,
        'printf "%s" "$GREETING" > "$OUT"',
        tmp_path,
        src=src,
        env={"GREETING": "hello from the task"},
    )
    summary = await Pipeline([task], session).run()
    assert summary.ok and summary.succeeded == 1, summary.as_dict()
    assert (tmp_path / "out" / "k.txt").read_text() == "hello from the task"
    await no_pods_left(kcfg, name)


def test_function_task_on_a_kube_executor_runs_in_the_pod(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    keys = ["a", "Mixed_Case.k", "x" * 70]
    (tmp_path / "in").mkdir()
    for key in keys:
        (tmp_path / "in" / f"{key}.txt").write_text(f"text of {key}")
    env = dict(
        os.environ,
        PDT_KT_DIR=str(tmp_path),
        PDT_KT_KUBECONFIG=kcfg["kubeconfig"],
        PDT_KT_NAME=name,
        PYTHONPATH=str(HERE.parents[1]),
    )
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--task", f"{name}fk", "--no-status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for key in keys:
        assert (
            tmp_path / "fkout" / f"{key}.txt"
        ).read_text() == f"TEXT OF {key.upper()} (pod={pod_name(name + 'fk', key)})"
        rec = yaml.safe_load((tmp_path / "state" / f"{name}fk" / "done" / f"{key}.yaml").read_text())
        assert rec["success"] and rec["host"] == kcfg["node"] and rec["kube"]["phase"] == "Succeeded"
    runs = (tmp_path / "fn-runs.log").read_text().split()
    assert sorted(runs[0::2]) == sorted(keys)
    assert str(os.getpid()) not in runs[1::2]


@pytest.mark.parametrize("live", ["durable", "memory"])
def test_a_sigkilled_schedulers_pods_are_adopted_not_rerun(
    kcfg: dict[str, Any], name: str, tmp_path: Path, live: str
) -> None:
    """Killed while its pods run, the next run adopts them: found through the stale claims
    of a durable ``live``, or, with claims in memory (gone with the run), by the pods'
    labels."""
    keys = [f"job_{i:02d}" for i in range(8)]
    (tmp_path / "in").mkdir()
    for key in keys:
        (tmp_path / "in" / f"{key}.txt").write_text(key)
    env = dict(
        os.environ,
        PDT_KT_DIR=str(tmp_path),
        PDT_KT_KUBECONFIG=kcfg["kubeconfig"],
        PDT_KT_NAME=name,
        PDT_KT_SLEEP="2.5",
        PYTHONPATH=str(HERE.parents[1]),
        **({"PDT_KT_MEMORY": "1"} if live == "memory" else {}),
    )
    argv = [sys.executable, str(SCRIPT), "run", "--task", f"{name}psleep", "--no-status"]
    runs = tmp_path / "runs.log"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (runs.exists() and len(runs.read_text().splitlines()) >= len(keys)):
            assert first.poll() is None, "the first scheduler ended before it was killed"
            assert time.monotonic() < deadline, "pods did not start"
            time.sleep(0.05)
    finally:
        first.kill()
        first.wait()
    running = asyncio.run(pods_of(kcfg, f"{name}x"))
    assert running, "every pod finished before the kill: nothing to adopt"
    if live == "memory":
        # the orphans finish (and write their outputs) before the next run: their keys are
        # not ready any more, only the pods' labels tell that their jobs were never recorded
        deadline = time.monotonic() + 30
        while not all(p.status.phase == "Succeeded" for p in asyncio.run(pods_of(kcfg, f"{name}x"))):
            assert time.monotonic() < deadline, "the orphaned pods did not finish"
            time.sleep(0.2)
        second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
        assert second.returncode == 0, second.stdout + second.stderr
        # found by its labels and waited for by the lifecycle, not by a second start
        assert "left running by an interrupted job" in second.stderr, second.stderr
        lines = [line.split() for line in runs.read_text().splitlines()]
        assert sorted(k for k, _ in lines) == keys, lines  # one pod per key: nothing ran twice
        for key in keys:
            assert (tmp_path / "pout" / f"{key}.txt").read_text() == "done"
        asyncio.run(no_pods_left(kcfg, f"{name}x"))
        return
    # a key whose record exists already needs no work: its pod is let go, not reaped
    done_dir = tmp_path / "state" / f"{name}psleep" / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    fake = sorted(p.metadata.annotations["pydatatask.io/key"] for p in running)[0]
    (done_dir / f"{fake}.yaml").write_text(
        yaml.safe_dump({"task": f"{name}psleep", "key": fake, "success": True, "marker": 1})
    )
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=90)
    assert second.returncode == 0, second.stdout + second.stderr
    # found through its stale claim and waited for by the lifecycle, not by a second start
    assert "left running by the interrupted job" in second.stderr, second.stderr
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert sorted(k for k, _ in lines) == keys, lines  # one pod per key: nothing ran twice
    uid_of = dict(lines)
    for key in keys:
        rec = yaml.safe_load((done_dir / f"{key}.yaml").read_text())
        if key == fake:
            assert rec.get("marker") == 1  # untouched
            continue
        assert rec["success"] and rec["attempts"] == 1, rec
        assert rec["kube"]["uid"] == uid_of[key]  # the very pod that ran, adopted or not
        assert (tmp_path / "pout" / f"{key}.txt").read_text() == "done"
    asyncio.run(no_pods_left(kcfg, f"{name}x"))
