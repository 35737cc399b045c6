"""PodTask on a KubeExecutor: a scheduler SIGKILLed after a pod job ended badly but before
its partial outputs were removed. The job's pod must outlive its containers (held by the
executor's finalizer) until the outputs are gone, so that the next scheduler finds the
cleanup pending (through the stale claim in a durable ``live``, or, with claims in memory,
through the pod itself), does it, and runs the key again.

Runs against the real kube-apiserver and test kubelet (see test_kube.py); the scheduler is
a script that kills itself (SIGKILL) at the named step, as in test_process_local.py.
"""

from __future__ import annotations

import asyncio
import os
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

from pydatatask import FileRepository, MemoryMetadataRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pod_state import CLEANUP_FINALIZER
from pydatatask.executor.pods import pod_name
from pydatatask.pipeline import Pipeline
from pydatatask.task.pod import PodTask
from tests.kube_support import SH_POD, WatchedPodTask, let_go, no_pods_left, pod_task, pods
from tests.kube_support import make_executor as _executor

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]

# The pod writes a partial output and then fails (retry mode) or hangs; once its flag
# exists (the second run), it writes the finished output and succeeds.
DYING_SCHEDULER = """
import asyncio, os, signal, sys
from pydatatask import FileRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor, PodHandle
from pydatatask.executor.pods import pod_name
from pydatatask.pipeline import Pipeline
from pydatatask.task import RetryPolicy
from pydatatask.task.pod import PodTask
from tests.kube_support import kube_resource, sh_pod

root, name, kubeconfig, namespace, mode, live, die = sys.argv[1:8]
session = Session()
kube = kube_resource(session, kubeconfig)


class DyingPodTask(PodTask):
    async def cleanup_outputs(self, key, *args, **kwargs):
        if die == "die":  # the job's pod has stopped; its partial outputs are still there
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().cleanup_outputs(key, *args, **kwargs)


class DyingPodHandle(PodHandle):
    async def _await_stopped(self):
        if die == "die" and mode == "grace":  # the pod was told to stop; its grace period runs
            os.kill(os.getpid(), signal.SIGKILL)
        return await super()._await_stopped()


class DyingKubeExecutor(KubeExecutor):
    async def start(self, work, slot):
        handle = await super().start(work, slot)
        handle.__class__ = DyingPodHandle
        return handle


MANIFEST = sh_pod({"OUT": "{{ out.path }}"}, grace=2)
SCRIPT = (
    f'echo "$$" >> {root}/runs; if [ -e {root}/flag ]; then echo done > "$OUT"; exit 0; fi; '
    + ("trap 'sleep 1; echo late > $OUT; exit 1' TERM; " if mode == "grace" else "")
    + f'touch {root}/flag; echo partial > "$OUT"; touch {root}/started; '
    + ("exit 3" if mode == "retry" else "sleep 60")
)
executor = DyingKubeExecutor(kube, name=name, namespace=namespace)
task = DyingPodTask(
    name,
    MANIFEST,
    executor=executor,
    inputs={"src": FileRepository(root + "/src")},
    outputs={"out": FileRepository(root + "/out")},
    params={"script": SCRIPT},
    timeout="2s" if mode in ("timeout", "grace") else None,
    retry=RetryPolicy(max_attempts=2, backoff=0.2, jitter=0) if mode == "retry" else None,
)
# memory: claims and records gone with the process
state = root + "/state" if live == "durable" else None
pipeline = Pipeline([task], session, state_dir=state, poll_interval="0.2s")


async def started():
    while not os.path.exists(root + "/started"):
        await asyncio.sleep(0.05)


async def main():
    run = asyncio.ensure_future(pipeline.run())
    if die == "die" and mode in ("cancel", "deleted"):
        await started()
        if mode == "cancel":  # what Ctrl-C does to a running job
            run.cancel()
        else:  # someone else deletes the pod (kubectl delete pod, an eviction)
            await executor.cluster.delete_pod(pod_name(name, "k"))
    try:
        summary = await run
    except asyncio.CancelledError:
        print("CANCELLED", flush=True)
        return
    print("OK" if summary.ok else "FAILED", summary.succeeded, summary.failed, flush=True)


asyncio.run(main())
"""


@pytest.fixture
async def name(kcfg: dict[str, Any]) -> AsyncIterator[str]:
    """The test's task name; pods of it still held at the end are let go (and the test
    fails through its own checks), so that nothing stays Terminating in the namespace."""
    task = "kc" + secrets.token_hex(3)
    yield task
    await let_go(kcfg, label=f"pydatatask.io/task={task}")


async def _pods(kcfg: dict[str, Any], task: str) -> list[Any]:
    return await pods(kcfg, label=f"pydatatask.io/task={task}")


async def _no_pods_left(kcfg: dict[str, Any], task: str, within: float = 20.0) -> None:
    await no_pods_left(kcfg, within, label=f"pydatatask.io/task={task}")


def _scheduler(tmp_path: Path, kcfg: dict[str, Any], name: str, mode: str, live: str, die: bool) -> Any:
    script = tmp_path / "sched.py"
    script.write_text(DYING_SCHEDULER)
    argv = [
        sys.executable,
        str(script),
        str(tmp_path),
        name,
        kcfg["kubeconfig"],
        kcfg["namespace"],
        mode,
        live,
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*argv, "die" if die else "live"], env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.parametrize("live", ["durable", "memory"])
@pytest.mark.parametrize("mode", ["timeout", "cancel", "deleted", "retry", "grace"])
def test_scheduler_killed_before_the_partial_outputs_are_removed(
    kcfg: dict[str, Any], name: str, tmp_path: Path, mode: str, live: str
) -> None:
    """timeout: the pod timed out; cancel: the run was cancelled (Ctrl-C); deleted: the pod
    was deleted by someone else; retry: the pod failed and the retry policy allows another
    attempt. In each case the scheduler dies just before removing the partial output;
    grace: it dies after a timeout while the pod still runs in its grace period (and
    writes its output once more).
    Before, the deleted pod left the API first: after the kill nothing said a cleanup was
    pending, and the partial output blocked the key for good (timeout, cancel, deleted);
    with claims in memory, the lifecycle let the pod go before the cleanup (every mode)."""
    (tmp_path / "src").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "src" / "k").write_text("input")
    first = _scheduler(tmp_path, kcfg, name, mode, live, die=True)
    assert first.returncode == -signal.SIGKILL, first.stdout + first.stderr
    if mode == "grace":  # the output the pod writes in its grace period, once it is done
        deadline = time.monotonic() + 20
        while (tmp_path / "out" / "k").read_text() != "late\n":
            assert time.monotonic() < deadline, "the pod did not write during its grace period"
            time.sleep(0.05)
    else:
        assert (tmp_path / "out" / "k").read_text() == "partial\n"
    done = tmp_path / "state" / name / "done"
    assert not done.exists() or not list(done.iterdir())  # no record
    held = asyncio.run(_pods(kcfg, name))  # what the next scheduler finds

    second = _scheduler(tmp_path, kcfg, name, mode, live, die=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "OK 1 0" in second.stdout, second.stdout + second.stderr
    assert (tmp_path / "out" / "k").read_text() == "done\n"
    if live == "durable":
        records = list(done.iterdir())
        assert [p.stem for p in records] == ["k"], records
        record = yaml.safe_load(records[0].read_text())
        assert record["success"] is True
    runs = (tmp_path / "runs").read_text().split()
    assert len(runs) == 2, runs  # the interrupted run and the one that finished
    asyncio.run(_no_pods_left(kcfg, name))
    # the key stayed claimed across the kill: its pod was held for the cleanup
    assert [p.metadata.annotations["pydatatask.io/key"] for p in held] == ["k"]
    assert CLEANUP_FINALIZER in (held[0].metadata.finalizers or [])
    if mode != "retry":
        assert held[0].metadata.deletion_timestamp is not None  # deleted, not gone


# ---------------------------------------------------------------------------- in-process
async def _sh_job(
    kcfg: dict[str, Any], name: str, tmp_path: Path, script: str, **kw: Any
) -> tuple[Any, Any, Session]:
    """A task ``name`` whose pod runs ``script`` for the one key ``k`` (see
    :func:`~tests.kube_support.pod_task`): task, output and session."""
    session = Session()
    task, out = pod_task(session, kcfg, name, SH_POD, ["k"], tmp_path, params={"script": script}, **kw)
    return task, out, session


async def test_an_orphan_is_adopted_by_one_scheduler_only(kcfg: dict[str, Any], name: str) -> None:
    """Two restarted schedulers (sharing their claims) both find the orphan of a dead one,
    whose claims were in memory: both offer it for adoption, one adopts it and records its
    end, the other finds the key claimed, then done; the pod ran once."""
    src = MemoryMetadataRepository({"k": {}})
    live, done = MemoryMetadataRepository(), MemoryMetadataRepository()
    sessions = [Session(), Session()]
    executors = [_executor(s, kcfg, name) for s in sessions]
    tasks = [
        PodTask(
            name,
            SH_POD,
            executor=ex,
            inputs={"src": src},
            live=live,
            done=done,
            params={"script": "sleep 30"},
        )
        for ex in executors
    ]
    dead = _executor(Session(), kcfg, name)  # the dead scheduler's (another run id)
    async with sessions[0], sessions[1]:
        body = dead.pod_body(tasks[0].render("k"), name, "k", tasks[0].resources)
        orphan = await executors[0].cluster.create_pod(body)
        for task in tasks:
            assert set(await task.executor.jobs(name)) == {"k"}  # each finds it, one adopts it
    results = await asyncio.gather(*(Pipeline([t], s).run() for t, s in zip(tasks, sessions, strict=True)))
    assert sum(r.succeeded for r in results) == 1 and not any(r.failed or r.errors for r in results), results
    assert sum(ex.created for ex in executors) == 0  # adopted, no second pod
    record = await done.get("k")
    assert record["success"] and record["kube"]["uid"] == orphan.metadata.uid
    await _no_pods_left(kcfg, name)


async def test_a_pod_deleted_by_hand_fails_the_job_and_its_outputs_go(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """A running pod deleted by someone else stays held (Terminating) until its job has
    removed the partial output and written the failure record; the job does not wait for
    a phase that never comes."""
    started = tmp_path / "started"
    task, out, session = await _sh_job(
        kcfg, name, tmp_path, f"echo partial > {tmp_path}/out/k; touch {started}; sleep 30"
    )
    run = asyncio.ensure_future(Pipeline([task], session).run())
    try:
        while not started.exists():
            assert not run.done(), run
            await asyncio.sleep(0.05)
        ex = task.executor
        assert isinstance(ex, KubeExecutor)
        await ex.cluster.delete_pod(pod_name(name, "k"))
        summary = await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
    assert summary.failed == 1, summary.as_dict()
    record = await task.done.get("k")
    assert "deleted" in record["error"]["message"]
    assert not await out.contains("k")
    await _no_pods_left(kcfg, name)


class FlakyFiles(FileRepository):
    """Deletes fail ``failures`` times (a backend that is down), then work."""

    def __init__(self, root: Path, failures: int) -> None:
        super().__init__(root)
        self.failures = failures

    async def _delete(self, key: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("backend down")
        await super()._delete(key)


async def test_a_failed_cleanup_keeps_the_pod_held_until_a_claim_check_removes_the_outputs(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """The partial output of a timed-out pod cannot be removed (its backend is down): the
    pod keeps holding the key, its claim marked stale, and the next claim check removes
    the output and lets the pod go. Letting it go at once would leave the output beside a
    failure record with nothing left to say it is debris."""
    flaky = FlakyFiles(tmp_path / "out", failures=1)
    task, out, session = await _sh_job(
        kcfg, name, tmp_path, f"echo partial > {tmp_path}/out/k; sleep 30", out=flaky, timeout="1s"
    )
    summary = await Pipeline([task], session, claim_check_interval=0).run()
    assert summary.failed == 1, summary.as_dict()
    assert flaky.failures == 0  # the first removal did fail
    record = await task.done.get("k")
    assert record["error"]["type"].endswith("JobTimeoutError")
    assert not await out.contains("k"), "the partial output stayed beside the failure record"
    await _no_pods_left(kcfg, name)


async def test_a_timed_out_attempt_holds_the_key_until_the_next_one_starts(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """With a retry policy, the timed-out pod holds the name through the cleanup and the
    retry delay (and the cleanup again after it), and is let go when the next attempt
    creates its pod. Before, it had left the API before the first cleanup."""
    from pydatatask.task import RetryPolicy

    flag = tmp_path / "flag"
    task, out, session = await _sh_job(
        kcfg,
        name,
        tmp_path,
        f"[ -e {flag} ] && {{ echo done > {tmp_path}/out/k; exit 0; }}; touch {flag}; "
        f"echo partial > {tmp_path}/out/k; sleep 30",
        cls=WatchedPodTask,
        timeout="1.5s",
        retry=RetryPolicy(max_attempts=2, backoff=0.5, jitter=0),
    )
    task.held = []
    summary = await Pipeline([task], session).run()
    assert summary.succeeded == 1, summary.as_dict()
    record = await task.done.get("k")
    assert record["attempts"] == 2
    assert await out.read_text("k") == "done\n"
    assert isinstance(task.executor, KubeExecutor) and task.executor.created == 2
    assert task.held == [True, True]  # after the timeout, and again after the retry delay
    await _no_pods_left(kcfg, name)


class RacedPodTask(PodTask):
    """Before its second attempt starts, another scheduler's pod of the job (a scheduler
    that lost its claim, or a second one without the same claims) writes the output."""

    async def prepare(self, job: Any) -> Any:
        work = await super().prepare(job)
        if job.attempt == 2:
            ex = self.executor
            assert isinstance(ex, KubeExecutor)
            other = KubeExecutor(ex.cluster, name=ex.name)  # another run id
            await ex.cluster.create_pod(other.pod_body(work.manifest, self.name, job.key, self.resources))
            out = self.links["o"].repository
            deadline = time.monotonic() + 30
            while not await out.contains(job.key):
                assert time.monotonic() < deadline, "the other scheduler's pod wrote nothing"
                await asyncio.sleep(0.05)
        return work


async def test_a_key_taken_by_another_scheduler_between_attempts_keeps_its_outputs(
    kcfg: dict[str, Any], name: str, tmp_path: Path
) -> None:
    """The next attempt finds the job's pod started by another scheduler: that job's
    output is not this attempt's partial output, and must not be removed. The claim
    holder adopts the pod (it does not start the work a second time) and records its end."""
    from pydatatask.task import RetryPolicy

    task, out, session = await _sh_job(
        kcfg,
        name,
        tmp_path,
        f"[ -e {tmp_path}/flag ] || {{ touch {tmp_path}/flag; exit 3; }}; echo theirs > {tmp_path}/out/k",
        cls=RacedPodTask,
        retry=RetryPolicy(max_attempts=2, backoff=0.2, jitter=0),
    )
    summary = await Pipeline([task], session).run()
    assert summary.succeeded == 1, summary.as_dict()
    assert await out.read_text("k") == "theirs\n"
    record = await task.done.get("k")
    assert record["attempts"] == 2
    assert isinstance(task.executor, KubeExecutor) and task.executor.created == 1  # the first attempt's
    await _no_pods_left(kcfg, name)
