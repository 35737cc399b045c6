"""KubeExecutor against the real kube-apiserver and the project's test kubelet (which runs
each pod's command as a local process, so a pod can write into the test's tmp_path).

Every test uses its own executor name (hence its own label selector) and task names with
a random prefix, and checks that no pod of them is left behind.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydatatask import Session
from pydatatask.errors import ConfigurationError, JobError
from pydatatask.executor.base import Executor, FunctionCall, Outcome, PodWork, ProcessWork, Resources, Work
from pydatatask.executor.kubernetes import FUNCTION_COMMAND, KubeExecutor, PodHandle, PodNameTakenError
from pydatatask.executor.pod_state import CLEANUP_FINALIZER
from pydatatask.testing.executor import ExecutorTests
from tests.kube_support import executor_pods as pods_of
from tests.kube_support import make_executor as make
from tests.kube_support import no_executor_pods_left as no_pods_left

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]


def sh(script: str) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c", script]}]}}


@pytest.fixture
def name() -> str:
    return "x" + secrets.token_hex(3)


async def run(
    ex: KubeExecutor, work: PodWork | FunctionCall, resources: Resources | None = None
) -> PodHandle:
    slot = ex.acquire(resources or Resources())
    assert slot is not None
    try:
        return await ex.start(work, slot)
    finally:
        ex.release(slot)


# ---------------------------------------------------------------------------- the suite
class TestKubeExecutorConformance(ExecutorTests):
    """The executor conformance suite on pods of the test cluster."""

    survives_scheduler = True
    adopts = True

    @pytest.fixture
    async def executor(self, kcfg: dict[str, Any], name: str) -> AsyncIterator[Executor]:
        self.kcfg, self.name = kcfg, name
        self.session = Session()
        ex = make(self.session, kcfg, name)
        self.api = ex.cluster._api  # the other executors of a test share this client
        async with self.session:
            yield ex
            await ex.aclose()
        await no_pods_left(kcfg, name)

    def limited(self, max_jobs: int) -> Executor:
        api = getattr(self, "api", object())  # test_capacity makes no request
        return KubeExecutor(api, name=getattr(self, "name", "q"), max_pods=max_jobs)

    def _pod(self, script: str) -> PodWork:
        return PodWork(sh(script), job=("t", secrets.token_hex(4)))

    def work_ok(self) -> Work:
        return self._pod("true")

    def check_ok(self, outcome: Outcome) -> None:
        assert outcome.ok and outcome.exit_code == 0 and outcome.place == self.kcfg["node"], outcome

    def work_fails(self) -> Work:
        return self._pod("exit 3")

    def check_failed(self, outcome: Outcome) -> None:
        # a failed pod has both: its exit status and an error naming the container
        assert not outcome.ok and outcome.exit_code == 3, outcome
        assert "container main exited with 3" in str(outcome.error), outcome

    def work_sleeps(self, seconds: float) -> Work:
        return self._pod(f"sleep {seconds}")

    def work_prints(self, text: str) -> Work | None:
        return self._pod(f"echo {text!r}")

    def work_traps_term(self, marker: Path) -> Work | None:
        return self._pod(
            f"trap 'echo term >> {marker}; exit 0' TERM; echo ready > {marker}; while true; do sleep 0.1; done"
        )

    def work_counted(self, marker: Path, seconds: float) -> Work:
        return self._pod(f"echo run >> {marker}; sleep {seconds:g}")

    def subprocess_setup(self) -> str:
        return f"""
            from pydatatask import Session
            from pydatatask.executor.base import PodWork
            from pydatatask.executor.kubernetes import KubeExecutor
            from pydatatask.executor.pods import api_client
            session = Session()

            @session.resource
            async def kube():
                async with api_client({self.kcfg["kubeconfig"]!r}) as api:
                    yield api

            await session.__aenter__()
            executor = KubeExecutor(kube, name={self.name!r}, namespace={self.kcfg["namespace"]!r})
            manifest = {{"spec": {{"containers": [{{"name": "main", "image": "busybox", "command": ["sleep", "60"]}}]}}}}
            work = PodWork(manifest, job=("t", "killed"))
        """


# ---------------------------------------------------------------------------- without a cluster
def test_quota_counts_pods_cpu_memory_and_launch_rate() -> None:
    ex = KubeExecutor(object(), name="q", max_pods=2, max_cpu="1", max_memory="1Gi")
    a = ex.acquire(Resources(cpu=0.5, memory=1 << 29))
    assert a is not None and a.place == "default"
    assert ex.acquire(Resources(cpu=0.6)) is None  # CPU: 0.5 + 0.6 > 1
    b = ex.acquire(Resources(cpu=0.5))
    assert b is not None
    assert ex.acquire(Resources()) is None  # two pods
    ex.release(b)
    assert ex.acquire(Resources(memory=1 << 30)) is None  # memory: 512Mi + 1Gi > 1Gi
    assert ex.acquire(Resources(memory=1 << 29)) is not None
    assert not ex.fits_at_all(Resources(cpu=2))
    with pytest.raises(ConfigurationError, match="can never run"):
        ex.acquire(Resources(cpu=2))
    slow = KubeExecutor(object(), name="r", launch_rate=0.001)
    first = slow.acquire(Resources())
    assert first is not None
    slow.release(first)
    assert slow.acquire(Resources()) is None  # the next launch is 1000 s away


def test_pod_body_names_labels_and_holds_the_job() -> None:
    ex = KubeExecutor(
        object(), name="b", namespace="ns", env={"TOKEN": {"secretKeyRef": {"name": "s", "key": "t"}}}
    )
    key = "images/2024/IMG 0001.jpg"
    manifest = sh("true")
    body = ex.pod_body(manifest, "my_task", key, Resources(cpu=0.5, memory=1 << 20))
    assert "metadata" not in manifest  # the manifest itself is left alone
    meta = body["metadata"]
    assert meta["namespace"] == "ns" and len(meta["name"]) <= 63
    assert meta["annotations"]["pydatatask.io/key"] == key
    assert meta["annotations"]["pydatatask.io/task"] == "my_task"
    assert meta["labels"]["pydatatask.io/executor"] == "b"
    assert json.loads(meta["annotations"]["pydatatask.io/run"])["run"] == ex.run_id
    assert meta["finalizers"] == [CLEANUP_FINALIZER]
    assert body["spec"]["restartPolicy"] == "Never"
    container = body["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"cpu": "0.5", "memory": str(1 << 20)}
    assert container["env"] == [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}}]
    with pytest.raises(ConfigurationError, match="spec.containers"):
        ex.pod_body({"spec": {}}, "t", "k", Resources())


def test_function_pods_run_the_pipeline_script() -> None:
    ex = KubeExecutor(object(), name="f", image="registry/pipeline:1", script_path="/app/pipeline.py")
    call = FunctionCall(lambda: None, job=("count", "a b"))
    container = ex.function_manifest(call)["spec"]["containers"][0]
    assert container["image"] == "registry/pipeline:1"
    assert container["command"] == ["python3", "/app/pipeline.py"]
    assert container["args"] == [FUNCTION_COMMAND, "count", "a b"]
    with pytest.raises(ConfigurationError, match="image= and script_path="):
        KubeExecutor(object(), name="g").function_manifest(call)

    async def coro() -> None:
        pass

    with pytest.raises(ConfigurationError, match="event loop only"):
        ex.function_manifest(FunctionCall(coro, is_async=True, job=("count", "a")))


async def test_work_it_does_not_carry_is_refused() -> None:
    ex = KubeExecutor(object(), name="p")
    slot = ex.acquire(Resources())
    assert slot is not None
    with pytest.raises(ConfigurationError, match="does not run process work"):
        await ex.start(ProcessWork("true", job=("t", "k")), slot)


# ---------------------------------------------------------------------------- pods
async def test_outcome_exit_code_and_logs(kcfg: dict[str, Any], name: str) -> None:
    session = Session()
    ex = make(session, kcfg, name)
    async with session:
        ok = await run(ex, PodWork(sh('echo "hello $0"; echo err >&2'), job=("t", "good key")))
        bad = await run(ex, PodWork(sh("echo working; exit 3"), job=("t", "bad")))
        await ok.started()
        outcome = await ok.wait()
        assert outcome.ok and outcome.exit_code == 0 and outcome.place == kcfg["node"]
        assert outcome.extra["kube"]["phase"] == "Succeeded"
        text = (await ok.logs()).decode()
        assert "hello" in text and "err" in text and f"pod {ok.name} container main" in text
        failed = await bad.wait()
        assert not failed.ok and failed.exit_code == 3
        assert isinstance(failed.error, JobError) and "exited with 3" in str(failed.error)
        assert "working" in (await bad.logs()).decode()
        assert bad.info["key"] == "bad" and bad.info["uid"] == bad.uid
        for handle in (ok, bad):
            await handle.close()
            await handle.close()  # idempotent
    await no_pods_left(kcfg, name)


async def test_timeout_from_started_then_cancel_with_grace_lets_the_pod_clean_up(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    script = f"trap 'echo stopped > {marker}; exit 0' TERM; echo up; while true; do sleep 0.1; done"
    session = Session()
    ex = make(session, kcfg, name)
    other = make(session, kcfg, name)  # another scheduler, same executor name
    async with session:
        handle = await run(ex, PodWork(sh(script), job=("t", "k")))
        await handle.started()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(handle.wait()), 0.5)
        await handle.cancel(5)
        assert marker.read_text() == "stopped\n"  # TERM first, and the pod had time to act
        # the cancelled pod still holds the job's name until it is closed
        with pytest.raises(PodNameTakenError, match="another scheduler"):
            await run(other, PodWork(sh("true"), job=("t", "k")))
        held = await pods_of(kcfg, name)
        assert [p.metadata.uid for p in held] == [handle.uid]
        assert held[0].metadata.deletion_timestamp is not None
        recovered = await other.recover(handle.info)
        assert recovered is not None and not recovered.adoptable  # deleted: not to be adopted
        await handle.close()
        assert await other.recover(handle.info) is None
        # this executor's next attempt of the job may start at once
        again = await run(ex, PodWork(sh("true"), job=("t", "k")))
        assert (await again.wait()).ok
        await again.close()
    await no_pods_left(kcfg, name)


async def test_two_executors_never_run_one_job_twice(kcfg: dict[str, Any], name: str) -> None:
    """Five schedulers start the same job at once: one pod exists, the others adopt it."""
    session = Session()
    executors = [make(session, kcfg, name) for _ in range(5)]
    async with session:
        handles = await asyncio.gather(*(run(e, PodWork(sh("sleep 0.5"), job=("t", "k"))) for e in executors))
        assert sum(e.created for e in executors) == 1
        assert len({h.uid for h in handles}) == 1
        assert sum(h.adoptable for h in handles) == 4
        for handle in handles:
            assert (await handle.wait()).ok
        for handle in handles:
            await handle.close()
    await no_pods_left(kcfg, name)


async def test_a_pod_held_for_another_job_is_never_taken(kcfg: dict[str, Any], name: str) -> None:
    session = Session()
    ex, other = make(session, kcfg, name), make(session, kcfg, name)
    async with session:
        body = ex.pod_body(sh("sleep 30"), "t", "k", Resources())
        body["metadata"]["annotations"]["pydatatask.io/key"] = "another key"  # same name, other job
        await ex.cluster.create_pod(body)
        with pytest.raises(PodNameTakenError, match="held for another job"):
            await run(other, PodWork(sh("true"), job=("t", "k")))
        info = {"pod": body["metadata"]["name"], "task": "t", "key": "another key"}
        pod = await ex.cluster.read_pod(info["pod"])
        handle = await ex.recover({**info, "uid": pod.metadata.uid})
        assert handle is not None
        await handle.cancel(0)
        await handle.close()
    await no_pods_left(kcfg, name)


async def test_recover_adopts_a_running_or_finished_pod_and_lists_orphans(
    kcfg: dict[str, Any], name: str
) -> None:
    session = Session()
    ex = make(session, kcfg, name)
    later = make(session, kcfg, name)  # the executor of the next scheduler process
    async with session:
        running = await run(ex, PodWork(sh("sleep 1; echo late"), job=("t", "run")))
        finished = await run(ex, PodWork(sh("exit 4"), job=("t", "fin")))
        await finished.wait()
        orphans = await later.jobs("t")
        assert orphans == {"run": running.info, "fin": finished.info}
        assert await later.jobs("other") == {}
        adopted = {key: await later.recover(json.loads(json.dumps(info))) for key, info in orphans.items()}
        assert all(h is not None and h.adoptable for h in adopted.values())
        first, second = adopted["run"], adopted["fin"]
        assert first is not None and second is not None
        outcome = await first.wait()
        assert outcome.ok and "late" in (await first.logs()).decode()
        assert (await second.wait()).exit_code == 4
        await first.close()
        await second.close()
        assert await later.recover(running.info) is None
        assert await later.jobs("t") == {}
        with pytest.raises(ConfigurationError, match="not the information of a pod job"):
            await later.recover({"pod": 3})
    await no_pods_left(kcfg, name)


async def test_pending_timeout_names_the_reason(kcfg: dict[str, Any], name: str) -> None:
    manifest = sh("true")
    manifest["spec"]["nodeSelector"] = {"no-such-label": "x"}
    session = Session()
    ex = make(session, kcfg, name, pending_timeout="1s")
    async with session:
        handle = await run(ex, PodWork(manifest, job=("t", "k")))
        await handle.started()
        outcome = await handle.wait()
        assert isinstance(outcome.error, JobError) and "still Pending after 1s" in str(outcome.error)
        await handle.close()
    await no_pods_left(kcfg, name)


SCHEDULER = """
import asyncio, json, sys
from pydatatask import Session
from pydatatask.executor.base import PodWork, Resources
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pods import api_client

kubeconfig, namespace, name, marker = sys.argv[1:]
session = Session()

@session.resource
async def kube():
    async with api_client(kubeconfig) as api:
        yield api

async def main():
    ex = KubeExecutor(kube, name=name, namespace=namespace)
    async with session:
        manifest = {"spec": {"containers": [{"name": "main", "image": "busybox", "command": ["sh", "-c",
                    f"while [ ! -e {marker} ]; do sleep 0.1; done; echo finished"]}]}}
        handle = await ex.start(PodWork(manifest, job=("t", "k")), ex.acquire(Resources()))
        await handle.started()
        print(json.dumps(handle.info), flush=True)
        await handle.wait()

asyncio.run(main())
"""


async def test_the_pod_of_a_sigkilled_scheduler_is_recovered_by_the_next(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    marker = tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SCHEDULER,
        kcfg["kubeconfig"],
        kcfg["namespace"],
        name,
        str(marker),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        info = json.loads(await proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    session = Session()
    ex = make(session, kcfg, name)
    async with session:
        assert await ex.jobs("t") == {"k": info}
        handle = await ex.recover(info)
        assert handle is not None and handle.adoptable
        marker.touch()  # the pod outlived its scheduler and finishes now
        outcome = await handle.wait()
        assert outcome.ok and "finished" in (await handle.logs()).decode()
        await handle.close()
    await no_pods_left(kcfg, name)
