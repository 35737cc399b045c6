"""PodTask on a KubeExecutor and the function pods' entry point against the real kube-apiserver and the project's test
kubelet (scripts/test-services), which runs each pod's command as a local process.

Pods live in the services' namespace; every test uses task names with a random suffix
(hence its own label selector) and checks that no pod of its tasks is left behind.
Without $PDT_TEST_SERVICES these tests fail, they never skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pydatatask import (
    Backoff,
    ConfigurationError,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    Session,
)
from pydatatask.executor.base import Resources
from pydatatask.executor.kubernetes import FUNCTION_COMMAND, KubeExecutor
from pydatatask.executor.pods import (
    KubeApiError,
    KubeCluster,
    label_value,
    parse_cpu,
    parse_memory,
    pod_name,
)
from pydatatask.pipeline import Pipeline
from pydatatask.repository.serialized import YamlMetadataFileRepository
from pydatatask.task.pod import PodTask
from pydatatask.task.records import make_claim
from tests.conftest import service
from tests.kube_support import SH_POD, WatchedPodTask, no_pods_left, pod_task, pods
from tests.kube_support import make_executor as _executor

pytestmark = pytest.mark.kube

HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "kube_pipeline.py"
DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?)?")


# ---------------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    "task,key",
    [
        ("t", "a"),
        ("t", "moby-dick_v2.txt"),
        ("t", "UPPER.Case"),
        ("t", "0leading-digit"),
        ("t", "x" * 200),
        ("t", "a_b"),
        ("t", "a-b"),
        ("t", "_lead"),
        ("my-task", "k"),
        ("My_Task", "k"),
        ("_t", "-"),
        ("t" * 60, "key"),
    ],
)
def test_pod_name_is_a_dns_label(task: str, key: str) -> None:
    name = pod_name(task, key)
    assert DNS_LABEL.fullmatch(name), name
    assert len(name) <= 63
    assert pod_name(task, key) == name  # deterministic


def test_pod_name_readable_when_possible_and_unique() -> None:
    assert pod_name("count", "moby") == "count-moby"
    assert pod_name("count", "Moby").startswith("count-moby-")  # changed: hash appended
    assert pod_name("count", "a_b") != pod_name("count", "a-b")
    assert pod_name("count", "a.b") != pod_name("count", "a-b")
    assert pod_name("count", "A") != pod_name("count", "a")
    # the task/key boundary is ambiguous when the task name holds a dash
    assert pod_name("a-b", "c") != pod_name("a", "b-c")
    long1, long2 = "k" * 199 + "1", "k" * 199 + "2"
    assert pod_name("t", long1) != pod_name("t", long2)
    assert pod_name("t1", "k") != pod_name("t2", "k")
    names = {pod_name("t", f"k{i}.{j}") for i in range(50) for j in range(20)}
    assert len(names) == 1000


@pytest.mark.parametrize(
    "value", ["a", "moby-dick_v2.txt", "x" * 63, "x" * 64, "a_", "_a", "-", "Key.", "a" * 200]
)
def test_label_value(value: str) -> None:
    out = label_value(value)
    assert LABEL_VALUE.fullmatch(out) and 0 < len(out) <= 63, out
    if len(value) <= 63 and value[0].isalnum() and value[-1].isalnum():
        assert out == value
    else:
        assert out != value


def test_quantities() -> None:
    assert parse_cpu("500m") == 0.5 and parse_cpu("2") == 2 and parse_cpu(0.25) == 0.25
    assert parse_memory("128Mi") == 128 << 20 and parse_memory("1G") == 10**9 and parse_memory(5) == 5
    with pytest.raises(ConfigurationError, match="memory size"):
        parse_memory("12 parsecs")
    with pytest.raises(ConfigurationError, match="CPU quantity"):
        parse_cpu("lots")


def _body(task: PodTask, key: str) -> dict[str, Any]:
    """The pod ``task``'s executor creates for ``key``."""
    ex = task.executor
    assert isinstance(ex, KubeExecutor)
    return ex.pod_body(task.render(key), task.name, key, task.resources)


def test_render_sets_identity_resources_env_and_quotes_values() -> None:
    inp = MemoryMetadataRepository()
    task = PodTask(
        "Render_T",
        SH_POD + "    - {name: EVIL, value: {{ params.evil }}}\n",
        executor=KubeExecutor(object(), namespace="ns1"),
        inputs={"inp": inp},
        params={"script": "echo hi", "evil": 'x"\n  injected: [1'},
        env={"TOKEN": {"secretKeyRef": {"name": "s", "key": "token"}}, "PLAIN": "v"},
        cpu="250m",
        memory="64Mi",
    )
    body = _body(task, "Odd_Key.v2")
    meta = body["metadata"]
    assert meta["name"] == pod_name("Render_T", "Odd_Key.v2") and meta["namespace"] == "ns1"
    assert meta["labels"]["pydatatask.io/task"] == "Render_T"
    assert meta["labels"]["pydatatask.io/key"] == "Odd_Key.v2"
    assert meta["annotations"]["pydatatask.io/key"] == "Odd_Key.v2"
    spec = body["spec"]
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["resources"] == {  # 250m and 64Mi, as the executor counts them
        "requests": {"cpu": "0.25", "memory": str(64 << 20)},
        "limits": {"cpu": "0.25", "memory": str(64 << 20)},
    }
    env = {e["name"]: e for e in c["env"]}
    assert env["KEY"]["value"] == "Odd_Key.v2"
    assert env["EVIL"]["value"] == 'x"\n  injected: [1'  # stayed one string
    assert env["TOKEN"] == {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "token"}}}
    assert "token" not in repr(c["command"])
    # a manifest that sets resources keeps them
    task2 = PodTask(
        "r2",
        SH_POD + "    resources: {requests: {cpu: 1}}\n",
        executor=KubeExecutor(object()),
        params={"script": "true"},
        cpu="250m",
    )
    assert _body(task2, "k")["spec"]["containers"][0]["resources"] == {"requests": {"cpu": 1}}
    with pytest.raises(ConfigurationError, match="spec.containers"):
        _body(PodTask("r3", "kind: Pod\nspec: {}\n", executor=KubeExecutor(object())), "k")
    with pytest.raises(ConfigurationError, match="undefined"):
        PodTask("r4", "spec: {{ nope }}\n", executor=KubeExecutor(object())).render("k")


async def test_api_errors_are_retried_or_translated() -> None:
    from kubernetes_asyncio.client.exceptions import ApiException

    cluster = KubeCluster(object(), retry=Backoff(attempts=4, initial=0.001))
    answers: list[int] = [503, 429, 0]

    async def flaky() -> str:
        status = answers.pop(0)
        if status:
            raise ApiException(status=status, reason="busy")
        return "ok"

    assert await cluster.call("listing pods", flaky) == "ok"
    assert answers == []

    async def always(status: int, message: str) -> None:
        exc = ApiException(status=status, reason="x")
        exc.body = json.dumps({"kind": "Status", "message": message})
        raise exc

    with pytest.raises(ConfigurationError, match=r"invalid: Pod .* is invalid: spec.containers\[0\].name"):
        await cluster.call("creating pod 'p'", always, 422, "Pod p is invalid: spec.containers[0].name: bad")
    with pytest.raises(ConfigurationError, match="forbidden: .*RBAC"):
        await cluster.call("creating pod 'p'", always, 403, "pods is forbidden")
    with pytest.raises(KubeApiError) as info:
        await cluster.call("creating pod 'p'", always, 409, "already exists")
    assert info.value.status == 409
    with pytest.raises(KubeApiError, match="gateway"):
        await cluster.call("listing pods", always, 502, "gateway")  # retries exhausted


def test_quota_accounting() -> None:
    ex = KubeExecutor(object(), max_pods=3, max_cpu="1", max_memory="1Gi")
    a = ex.acquire(Resources(0.5, 256 << 20))
    b = ex.acquire(Resources(0.5, 256 << 20))
    assert a and b and ex.acquire(Resources(0.1, 0)) is None  # CPU full
    ex.release(a)
    c = ex.acquire(Resources(0.25, 700 << 20))
    d = ex.acquire(Resources(0.0, 0))
    assert c and d and ex.acquire(Resources(0.0, 0)) is None  # 3 pods
    ex.release(b)
    assert ex.acquire(Resources(0.0, 400 << 20)) is None  # memory: 700 + 400 MiB > 1 GiB
    assert ex.acquire(Resources(0.0, 300 << 20)) is not None
    with pytest.raises(ConfigurationError, match="can never run"):
        ex.acquire(Resources(2.0, 0))


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture
def session(kcfg: dict[str, Any]) -> Session:
    return Session()


@pytest.fixture
def name() -> str:
    return "k" + secrets.token_hex(3)


async def _pods(kcfg: dict[str, Any], prefix: str) -> list[Any]:
    """Pods of the test's tasks (names start with the test's random prefix)."""
    return await pods(kcfg, task_prefix=prefix)


async def _no_pods_left(kcfg: dict[str, Any], prefix: str, within: float = 20.0) -> None:
    await no_pods_left(kcfg, within, task_prefix=prefix)


def _sh_task(session: Session, kcfg: dict[str, Any], tname: str, script: str, **kw: Any) -> PodTask:
    inp = kw.pop("inputs", None) or {"src": MemoryMetadataRepository()}
    cls: type[PodTask] = kw.pop("cls", PodTask)
    return cls(
        tname,
        SH_POD,
        executor=kw.pop("executor", None) or _executor(session, kcfg, tname),
        inputs=inp,
        params={"script": script},
        **kw,
    )


def _created(task: PodTask) -> int:
    """Pods the task's executor created."""
    ex = task.executor
    assert isinstance(ex, KubeExecutor)
    return ex.created


# ---------------------------------------------------------------------------- jobs
async def test_failing_container_gives_failure_record_with_exit_code_and_logs(
    session: Session, kcfg: dict[str, Any], name: str
) -> None:
    logs = MemoryBlobRepository()
    src = MemoryMetadataRepository()
    task = _sh_task(
        session, kcfg, name, 'echo "working on $KEY"; echo oops >&2; exit 3', inputs={"src": src}, logs=logs
    )
    await src.put("Bad_Key.1", {})
    await src.put("ok", {})
    summary = await Pipeline([task], session).run()
    assert summary.failed == 2 and summary.succeeded == 0
    rec = await task.done.get("Bad_Key.1")
    assert rec["success"] is False and rec["exit_code"] == 3
    assert rec["host"] == kcfg["node"]
    assert rec["kube"]["containers"]["main"]["exit_code"] == 3
    assert rec["kube"]["phase"] == "Failed"
    assert "exited with 3" in rec["error"]["message"]
    text = await logs.read_text("Bad_Key.1")
    assert "working on Bad_Key.1" in text and "oops" in text
    await _no_pods_left(kcfg, name)


async def test_retry_keeps_the_name_until_the_next_attempt_and_succeeds(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    from pydatatask.task import RetryPolicy

    flag = tmp_path / "flag"
    src = MemoryMetadataRepository({"flaky": {}, "broken": {}})
    script = f'[ "$KEY" = flaky ] && [ -e {flag}-$KEY ] && exit 0; touch {flag}-$KEY; exit 5'
    task = _sh_task(
        session,
        kcfg,
        name,
        script,
        cls=WatchedPodTask,
        inputs={"src": src},
        retry=RetryPolicy(max_attempts=3, backoff=0.3, jitter=0),
    )
    assert isinstance(task, WatchedPodTask)
    task.held = []
    seen: list[int] = []

    async def watch() -> None:  # the keys stay claimed through the retry delays
        while True:
            seen.append(len(await task.live.keys()))
            await asyncio.sleep(0.1)

    watcher = asyncio.ensure_future(watch())
    try:
        summary = await Pipeline([task], session).run()
    finally:
        watcher.cancel()
    assert summary.succeeded == 1 and summary.failed == 1
    ok = await task.done.get("flaky")
    bad = await task.done.get("broken")
    assert ok["success"] and ok["attempts"] == 2
    assert not bad["success"] and bad["attempts"] == 3 and bad["exit_code"] == 5
    assert _created(task) == ok["attempts"] + 3
    busy = [i for i, n in enumerate(seen) if n]
    assert busy and 0 not in seen[busy[0] : busy[-1]], seen  # no gap: the keys stay claimed
    # each failed attempt's pod holds its name through the cleanup, and through the cleanup
    # again after the retry delay (flaky: 1 retried attempt; broken: 2, then the last); the
    # pod goes only when the next attempt starts (counting pods instead saw a moment with
    # none whenever both keys' next pods were being created at once)
    assert task.held == [True] * 7, task.held
    await _no_pods_left(kcfg, name)


async def test_timeout_deletes_the_pod_and_records_a_timeout(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "alive"
    src = MemoryMetadataRepository({"slow": {}})
    task = _sh_task(session, kcfg, name, f"touch {marker}; sleep 60", inputs={"src": src}, timeout="1.5s")
    t0 = time.monotonic()
    summary = await Pipeline([task], session).run()
    assert time.monotonic() - t0 < 15
    assert summary.failed == 1
    rec = await task.done.get("slow")
    assert rec["error"]["type"].endswith("JobTimeoutError")
    assert marker.exists()  # it really ran
    await _no_pods_left(kcfg, name)  # deleted (the kubelet killed the process)


async def test_pending_timeout_names_the_reason(session: Session, kcfg: dict[str, Any], name: str) -> None:
    src = MemoryMetadataRepository({"nowhere": {}})
    task = PodTask(
        name,
        SH_POD + "  nodeSelector: {pydatatask.test/no-such-node: 'true'}\n",
        executor=_executor(session, kcfg, name, pending_timeout="1s"),
        inputs={"src": src},
        params={"script": "true"},
    )
    summary = await Pipeline([task], session).run()
    assert summary.failed == 1
    rec = await task.done.get("nowhere")
    assert "still Pending" in rec["error"]["message"]
    assert "Unschedulable" in rec["error"]["message"] or "not scheduled" in rec["error"]["message"]
    await _no_pods_left(kcfg, name)


async def test_invalid_manifest_is_a_configuration_error_with_the_api_message(
    session: Session, kcfg: dict[str, Any], name: str
) -> None:
    src = MemoryMetadataRepository({"k": {}})
    task = PodTask(
        name,
        'spec:\n  containers:\n  - name: Not_A_Valid_Name\n    image: busybox\n    command: ["true"]\n',
        executor=_executor(session, kcfg, name),
        inputs={"src": src},
    )
    pipeline = Pipeline([task], session)
    with pytest.raises(ConfigurationError, match=r"invalid: .*Not_A_Valid_Name"):
        await pipeline.launch(name, "k")
    summary = await pipeline.run()
    assert summary.errors and "Not_A_Valid_Name" in summary.errors[0]
    assert not await task.done.contains("k")


async def test_two_schedulers_never_run_a_key_twice(kcfg: dict[str, Any], name: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    src = MemoryMetadataRepository()
    done = MemoryMetadataRepository()
    for i in range(10):
        await src.put(f"k{i}", {})
    live = MemoryMetadataRepository()  # the claims both schedulers see
    sessions = [Session(), Session()]
    tasks = [
        _sh_task(
            s, kcfg, name, f'echo "$KEY" >> {runs}; sleep 0.5', inputs={"src": src}, done=done, live=live
        )
        for s in sessions
    ]
    results = await asyncio.gather(*(Pipeline([t], s).run() for t, s in zip(tasks, sessions, strict=True)))
    assert sum(r.succeeded for r in results) == 10, results
    assert sorted(runs.read_text().split()) == sorted(f"k{i}" for i in range(10))
    assert _created(tasks[0]) + _created(tasks[1]) >= 10
    await _no_pods_left(kcfg, name)


async def test_cancelled_run_deletes_its_pods(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    src = MemoryMetadataRepository()
    for i in range(3):
        await src.put(f"c{i}", {})
    task = _sh_task(session, kcfg, name, f'echo "$KEY" >> {started}; sleep 60', inputs={"src": src})
    run = asyncio.ensure_future(Pipeline([task], session).run())
    for _ in range(200):
        if started.exists() and len(started.read_text().split()) == 3:
            break
        await asyncio.sleep(0.05)
    assert len(await _pods(kcfg, name)) == 3
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    await _no_pods_left(kcfg, name)
    assert not await task.done.contains("c0")  # interrupted, not recorded


async def test_two_stage_pipeline_of_100_pods_through_s3_within_quota(
    session: Session, kcfg: dict[str, Any], services: dict[str, Any], name: str, tmp_path: Path
) -> None:
    from aiobotocore.session import get_session

    from pydatatask.repository.s3 import S3BucketRepository

    s3cfg = service(services, "s3")

    @session.resource
    async def s3() -> AsyncIterator[Any]:
        async with get_session().create_client(
            "s3",
            endpoint_url=s3cfg["endpoint"],
            aws_access_key_id=s3cfg["access_key"],
            aws_secret_access_key=s3cfg["secret_key"],
            region_name=s3cfg["region"],
        ) as client:
            yield client

    bucket = f"pdt-kube-{name}"
    stage1_out = S3BucketRepository(s3, bucket, "stage1/", ".txt", create_bucket=True)
    stage2_out = S3BucketRepository(s3, bucket, "stage2/", ".txt", create_bucket=True)
    timeline = tmp_path / "timeline"
    curl = f'curl -sSf --retry 5 --retry-all-errors --aws-sigv4 "aws:amz:{s3cfg["region"]}:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY"'
    manifest = """
spec:
  containers:
  - name: main
    image: curlimages/curl
    command: ["sh", "-c", {{ params.script }}]
    env:
    - {name: KEY, value: {{ key }}}
    - {name: S3, value: {{ params.endpoint }}}
    - {name: BUCKET, value: {{ out.bucket }}}
    - {name: OUT, value: {{ out.object }}}
    - {name: TL, value: {{ params.timeline }}}
    - {name: IN, value: {{ links.src.object | default("") }}}
"""
    script1 = f"""echo "s $(date +%s.%N) 1" >> "$TL"; f=$(mktemp); printf 'v-%s' "$KEY" > "$f"
{curl} -T "$f" "$S3/$BUCKET/$OUT"; rc=$?; rm -f "$f"; echo "e $(date +%s.%N) 1" >> "$TL"; exit $rc"""
    script2 = f"""echo "s $(date +%s.%N) 2" >> "$TL"; f=$(mktemp)
{curl} "$S3/$BUCKET/$IN" | tr a-z A-Z > "$f" && {curl} -T "$f" "$S3/$BUCKET/$OUT"; rc=$?; rm -f "$f"
echo "e $(date +%s.%N) 2" >> "$TL"; exit $rc"""
    ex = _executor(session, kcfg, name, max_pods=8, max_cpu="3")
    creds = {"AWS_ACCESS_KEY_ID": s3cfg["access_key"], "AWS_SECRET_ACCESS_KEY": s3cfg["secret_key"]}
    keys = MemoryMetadataRepository({f"doc_{i:03d}.v1": {} for i in range(100)})

    def stage(suffix: str, src: Any, out: Any, script: str, cpu: str) -> PodTask:
        return PodTask(
            f"{name}{suffix}",
            manifest,
            executor=ex,
            env=creds,
            concurrency=100,
            inputs={"src": src},
            outputs={"out": out},
            params={"script": script, "endpoint": s3cfg["endpoint"], "timeline": str(timeline)},
            cpu=cpu,
        )

    stage1 = stage("a", keys, stage1_out, script1, "500m")
    stage2 = stage("b", stage1_out, stage2_out, script2, "250m")
    body = _body(stage1, "doc_000.v1")
    assert s3cfg["secret_key"] not in yaml.safe_dump(body["spec"]["containers"][0]["command"])
    pipeline = Pipeline([stage1, stage2], session, poll_interval="0.3s")
    summary = await pipeline.run()
    assert summary.ok, summary.as_dict()
    assert summary.succeeded == 200
    async with session:
        assert await stage2_out.read_text("doc_042.v1") == "V-DOC_042.V1"
        assert len(await stage2_out.keys()) == 100
        rec = await stage2.done.get("doc_007.v1")
        assert rec["success"] and rec["exit_code"] == 0 and rec["kube"]["node"] == kcfg["node"]
    assert ex.created == 200
    # quota: never more than 8 pods, never more than 3 CPUs requested (process lifetimes
    # lie within pod lifetimes, which lie within the quota slots)
    events = []
    for line in timeline.read_text().split("\n"):
        if line:
            kind, ts, stage = line.split()
            events.append((float(ts), 0 if kind == "e" else 1, 0.5 if stage == "1" else 0.25))
    assert len(events) == 400
    pods = cpu = peak_pods = peak_cpu = 0.0
    for _, start, c in sorted(events):
        pods += 1 if start else -1
        cpu += c if start else -c
        peak_pods, peak_cpu = max(peak_pods, pods), max(peak_cpu, cpu)
    assert peak_pods <= 8 and peak_cpu <= 3.0 + 1e-9, (peak_pods, peak_cpu)
    assert peak_pods >= 3  # the quota, not something else, was the limit
    assert ex.capacity.jobs == 0 and ex.capacity.cpu_used == 0
    # one watch per executor (both tasks share it), not one LIST per pod or per interval:
    # the run lists the pods once (again only if its resourceVersion expired); the other
    # LISTs are recovery's, one per task before its first listing
    watch = ex.watch
    assert watch.lists == 1 + watch.expired, (watch.lists, watch.expired)
    assert ex.cluster.calls["list_namespaced_pod"] <= watch.lists + 2
    await _no_pods_left(kcfg, name)
    async with session:
        for repo in (stage1_out, stage2_out):
            for key in await repo.keys():
                await repo.delete(key)
        await s3().delete_bucket(Bucket=bucket)


# ---------------------------------------------------------------------------- scripts
def _script_env(tmp_path: Path, kcfg: dict[str, Any], name: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PDT_KT_DIR=str(tmp_path),
        PDT_KT_KUBECONFIG=kcfg["kubeconfig"],
        PDT_KT_NAME=name,
        PYTHONPATH=str(HERE.parents[1]),
        **extra,
    )
    return env


def _inputs(tmp_path: Path, keys: list[str]) -> None:
    (tmp_path / "in").mkdir(exist_ok=True)
    for key in keys:
        (tmp_path / "in" / f"{key}.txt").write_text(f"text of {key}")


def test_function_command_runs_the_body_only(kcfg: dict[str, Any], name: str, tmp_path: Path) -> None:
    """What a function pod runs: the function for one key, its outputs written, and
    neither a claim nor a record (the scheduler that started the pod keeps those)."""
    _inputs(tmp_path, ["k_1"])
    env = _script_env(tmp_path, kcfg, name, POD_NAME="here")
    script = [sys.executable, str(SCRIPT)]
    proc = subprocess.run(
        [*script, FUNCTION_COMMAND, f"{name}fk", "k_1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "fkout" / "k_1.txt").read_text() == "TEXT OF K_1 (pod=here)"
    state = tmp_path / "state" / f"{name}fk"
    assert not list(state.glob("done/*")) and not list(state.glob("live/*"))
    (tmp_path / "fkout" / "k_1.txt").unlink()
    (tmp_path / "in" / "k_1.txt").unlink()
    failed = subprocess.run(
        [*script, FUNCTION_COMMAND, f"{name}fk", "k_1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert failed.returncode == 1 and "Traceback" in failed.stderr and "k_1" in failed.stderr.splitlines()[-1]
    assert not list(state.glob("done/*")) and not (tmp_path / "fkout" / "k_1.txt").exists()
    helped = subprocess.run([*script, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "launch" in helped.stdout and FUNCTION_COMMAND not in helped.stdout


def test_scheduler_sigkill_then_restart_adopts_pods(kcfg: dict[str, Any], name: str, tmp_path: Path) -> None:
    keys = [f"job_{i:02d}" for i in range(12)]
    _inputs(tmp_path, keys)
    env = _script_env(tmp_path, kcfg, name, PDT_KT_SLEEP="2.5")
    argv = [sys.executable, str(SCRIPT), "run", "--task", f"{name}sleep", "--no-status"]
    runs = tmp_path / "runs.log"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not (runs.exists() and len(runs.read_text().splitlines()) >= 12):
            assert first.poll() is None, "the first scheduler ended before it was killed"
            assert time.monotonic() < deadline, "pods did not start"
            time.sleep(0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    running = asyncio.run(_pods(kcfg, name))
    assert running, "every pod finished before the kill: nothing to adopt"
    by_key = {p.metadata.annotations["pydatatask.io/key"]: p for p in running}
    # a key whose record exists already needs no work: its pod must be deleted, not reaped
    done_dir = tmp_path / "state" / f"{name}sleep" / "done"
    done_dir.mkdir(parents=True, exist_ok=True)
    fake = sorted(by_key)[0]
    (done_dir / f"{fake}.yaml").write_text(
        yaml.safe_dump({"task": f"{name}sleep", "key": fake, "success": True, "marker": 1})
    )
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "adopting pod" in second.stderr and "left running by the interrupted job" in second.stderr
    # every key ran exactly once: one process per key, no duplicate pod
    lines = [line.split() for line in runs.read_text().splitlines()]
    assert sorted(k for k, _ in lines) == keys, lines
    uid_of = dict(lines)
    assert sorted(p.stem for p in done_dir.glob("*.yaml")) == keys, second.stdout + second.stderr
    for key in keys:
        rec = yaml.safe_load((done_dir / f"{key}.yaml").read_text())
        if key == fake:
            assert rec.get("marker") == 1  # untouched
            continue
        assert rec["success"], rec
        assert rec["kube"]["uid"] == uid_of[key]  # the very pod that ran, adopted or not
        assert (tmp_path / "out" / f"{key}.txt").read_text() == "done"
    adopted = [k for k in by_key if k != fake]
    assert adopted
    asyncio.run(_no_pods_left(kcfg, name))


# each run of the pod notes its key and shell pid in RUNS, then writes its output
OUT_POD = SH_POD + "    - {name: OUT, value: {{ o.path }}}\n    - {name: RUNS, value: {{ params.runs }}}\n"
OUT_SCRIPT = 'echo "$KEY $$" >> "$RUNS"; echo "made by $$" > "$OUT"'


async def test_finished_orphan_pod_with_unrecorded_outputs_is_adopted_not_rerun(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A pod of a dead scheduler that wrote its outputs before any record existed: the
    key is taken up again by adopting the pod (its success recorded, the work not redone).
    Deleting the pod first and cleaning its outputs afterwards lost the key for good when
    the scheduler died in between (CI, chaos seed 1344213550)."""

    runs = tmp_path / "runs.log"
    task, out = pod_task(
        session,
        kcfg,
        name,
        OUT_POD,
        ["orphan", "fresh"],
        tmp_path,
        extension=".txt",
        params={"runs": str(runs), "script": OUT_SCRIPT},
    )
    # the pod of a scheduler that is gone (another executor object of the same name, its
    # claims in memory gone with it)
    dead = _executor(session, kcfg, name)
    async with session:
        await dead.cluster.create_pod(dead.pod_body(task.render("orphan"), name, "orphan", task.resources))
    deadline = time.monotonic() + 30
    while not (await out.contains("orphan") and runs.exists()):
        assert time.monotonic() < deadline, "the orphan pod did not write its output"
        await asyncio.sleep(0.1)
    pods = await _pods(kcfg, name)
    assert [p.metadata.annotations["pydatatask.io/key"] for p in pods] == ["orphan"]
    orphan_uid = pods[0].metadata.uid
    before = await out.read_text("orphan")

    summary = await Pipeline([task], session).run()
    assert summary.succeeded == 2 and summary.failed == 0
    rec = await task.done.get("orphan")
    assert rec["success"] and rec["kube"]["uid"] == orphan_uid  # adopted, not re-created
    assert await out.read_text("orphan") == before
    lines = runs.read_text().split("\n")
    assert sorted(line.split()[0] for line in lines if line) == ["fresh", "orphan"]  # each ran once
    assert _created(task) == 1  # only "fresh" got a new pod
    await _no_pods_left(kcfg, name)


async def test_a_pod_its_stale_claim_does_not_name_is_adopted_not_lost(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A scheduler killed after it created a job's pod and before its claim noted the pod:
    the claim is stale and names no work, the pod ran to its end and wrote the output. The
    takeover finds the pod in the executor's list and adopts it (the success recorded, the
    output kept, the work not redone). Freeing the key instead removed the pod's output as
    partial, and the job was recorded as succeeded without it (or, when the pod wrote it
    after the cleanup, never run again) in a loaded run of the SIGKILL test above."""
    runs = tmp_path / "runs.log"
    task, out = pod_task(
        session,
        kcfg,
        name,
        OUT_POD,
        ["orphan"],
        tmp_path,
        extension=".txt",
        params={"runs": str(runs), "script": OUT_SCRIPT},
        live=YamlMetadataFileRepository(tmp_path / "live", fsync=False),
    )
    dead = _executor(session, kcfg, name)  # the executor object of the scheduler that is gone
    async with session:
        await dead.cluster.create_pod(dead.pod_body(task.render("orphan"), name, "orphan", task.resources))
        # its claim, as acquired before the pod was started: no "run" in it
        await task.live.put("orphan", make_claim("dead", name, "orphan", time.time() - 600))
    deadline = time.monotonic() + 30
    while not (await out.contains("orphan") and runs.exists()):
        assert time.monotonic() < deadline, "the orphan pod did not write its output"
        await asyncio.sleep(0.1)
    (pod,) = await _pods(kcfg, name)
    before = await out.read_text("orphan")

    summary = await Pipeline([task], session).run()
    assert summary.ok and summary.succeeded == 1, summary.as_dict()
    rec = await task.done.get("orphan")
    assert rec["success"] and rec["kube"]["uid"] == pod.metadata.uid  # adopted, not re-created
    assert await out.contains("orphan"), "the adopted pod's output was removed as partial"
    assert await out.read_text("orphan") == before
    assert [line.split()[0] for line in runs.read_text().splitlines()] == ["orphan"]  # ran once
    assert _created(task) == 0 and not await task.live.contains("orphan")
    await _no_pods_left(kcfg, name)


LATE_WRITER_POD = """
spec:
  terminationGracePeriodSeconds: 4
  containers:
  - name: main
    image: busybox
    command: ["sh", "-c", 'trap "sleep 1; echo late > \\"$OUT\\"; exit 1" TERM; touch "$STARTED"; sleep 60']
    env:
    - {name: OUT, value: {{ o.path }}}
    - {name: STARTED, value: {{ params.started }}}
"""


async def test_timed_out_pod_is_gone_before_its_outputs_are_removed(
    session: Session, kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A timed-out pod that writes its output during its grace period (after SIGTERM) must
    not leave that output behind next to a failure record: the task waits until the pod
    has left the API before it removes the partial outputs."""

    started = tmp_path / "started"
    task, out = pod_task(
        session,
        kcfg,
        name,
        LATE_WRITER_POD,
        ["slow"],
        tmp_path,
        extension=".txt",
        params={"started": str(started)},
        timeout="2s",
    )
    summary = await Pipeline([task], session).run()
    left_at_return = [p.metadata.name for p in await _pods(kcfg, name)]
    await _no_pods_left(kcfg, name, within=20)  # whatever the pod still does, it is done now
    assert summary.failed == 1
    rec = await task.done.get("slow")
    assert rec["error"]["type"].endswith("JobTimeoutError")
    assert started.exists()  # it really ran
    assert not await out.contains("slow"), "the pod's late write survived the cleanup"
    assert left_at_return == []
