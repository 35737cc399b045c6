"""A scheduler killed while the pod of a batch runs, on the test cluster (the real
kube-apiserver and the project's test kubelet, which runs each pod's command as a local
process): the scheduler started again finds the pod under every key of the batch, stops it
before it lets any of its keys go, and every key then runs once more and is recorded once.

The kill comes right after the pod is created, before the batch's claims name it: the
restarted scheduler then knows the pod only from the executor's list of the task's pods.
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

from pydatatask import FileRepository, MemoryMetadataRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.executor.pod_state import KEY_ANNOTATION, KEYS_ANNOTATION
from pydatatask.task.lifecycle import execute_batch
from pydatatask.task.recovery import adopt_orphans
from tests.kube_support import SH_POD, make_executor, settled

pytestmark = pytest.mark.kube

#: the scheduler: ``python sched.py ROOT KUBECONFIG NAME LOOPS KILL``. Each pod notes
#: ``pod UID KEY|KEY|...`` in ``runs``, then writes its uid to every key's output LOOPS times,
#: 0.2 s apart (a pod left running keeps rewriting them). With KILL=1 the scheduler kills
#: itself (SIGKILL) as soon as its pod is created.
SCHEDULER = r"""
import os, signal, sys
from pydatatask import FileRepository, Session
from pydatatask.executor.kubernetes import KubeExecutor
from pydatatask.task.pod import PodTask
from tests.kube_support import batch_scheduler, kube_resource, sh_pod

root, kubeconfig, name, loops, kill = sys.argv[1:6]
session = Session()
kube = kube_resource(session, kubeconfig)


class Killed(KubeExecutor):
    async def start(self, work, slot):
        handle = await super().start(work, slot)
        os.kill(os.getpid(), signal.SIGKILL)  # before the claims of the batch name the pod
        return handle


script = (
    'printf "pod %s %s\\n" "$POD_UID" "$(printf "%s" "$PDT_KEYS" | tr "\\n" "|")" >> "$RUNS"; n=0; '
    'while [ "$n" -lt "$LOOPS" ]; do '
    'printf "%s\\n" "$PDT_KEYS" | while IFS= read -r k; do printf "%s" "$POD_UID" > "$OUT/$k"; done; '
    'n=$((n+1)); sleep 0.2; done'
)
manifest = sh_pod({"OUT": "{{ o.root }}", "RUNS": "{{ params.runs }}", "LOOPS": "{{ params.loops }}"}, pod_uid=True)


class QuickPodTask(PodTask):
    @property
    def cancel_grace(self):
        return 1.0  # a stopped pod gets 1 s between TERM and KILL


executor = (Killed if kill == "1" else KubeExecutor)(kube, name=name)
task = QuickPodTask(
    name,
    manifest,
    executor=executor,
    inputs={"src": FileRepository(root + "/in")},
    outputs={"o": FileRepository(root + "/out")},
    params={"script": script, "runs": root + "/runs", "loops": loops},
    batch=6,
)
batch_scheduler(task, session, root)
"""

KEYS = ["k0", "k1", "k2", "k3", "k4", "k5"]


def test_a_scheduler_killed_after_starting_a_batch_pod_then_every_key_is_done_once(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    for d in ("in", "out"):
        (tmp_path / d).mkdir()
    for key in KEYS:
        (tmp_path / "in" / key).write_text(key)
    script = tmp_path / "sched.py"
    script.write_text(SCHEDULER)
    name = "b" + secrets.token_hex(3)
    # the order in which the restarted scheduler recovers the claims (a set's) is fixed
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), PYTHONHASHSEED="0")
    argv = [sys.executable, str(script), str(tmp_path), kcfg["kubeconfig"], name]
    runs = tmp_path / "runs"
    try:
        first = subprocess.run([*argv, "150", "1"], env=env, capture_output=True, text=True, timeout=60)
        assert first.returncode == -9, first.stdout + first.stderr
        deadline = time.monotonic() + 30
        while not (runs.exists() and runs.read_text().strip()):  # the orphaned pod runs
            assert time.monotonic() < deadline, "the batch's pod did not start"
            time.sleep(0.05)
        second = subprocess.run([*argv, "1", "0"], env=env, capture_output=True, text=True, timeout=90)
        assert "OK 6" in second.stdout, second.stdout + second.stderr
        lines = runs.read_text().splitlines()
        old_uid, old_keys = lines[0].split()[1:]
        assert sorted(old_keys.split("|")) == KEYS, lines
        again = [k for line in lines[1:] for k in line.split()[2].split("|")]
        assert sorted(again) == KEYS, lines  # every key once more, none twice
        new_uids = {line.split()[1] for line in lines[1:]}
        for key in KEYS:
            record = yaml.safe_load((tmp_path / "state" / name / "done" / f"{key}.yaml").read_text())
            assert record["success"], record
            # written by the pod that ran it again, not by the one left running
            assert (tmp_path / "out" / key).read_text() in new_uids, (key, old_uid, lines)
        assert list((tmp_path / "state" / name / "live").glob("*.yaml")) == []
        assert "adopting pod" not in second.stderr, second.stderr
    finally:
        asyncio.run(settled(kcfg, name))


async def test_the_pod_of_a_batch_names_every_key_and_is_listed_under_each(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    name = "b" + secrets.token_hex(3)
    session = Session()
    executor = make_executor(session, kcfg, name)
    from pydatatask.task.pod import PodTask

    task = PodTask(
        name,
        SH_POD,
        executor=executor,
        inputs={"src": MemoryMetadataRepository({k: {} for k in KEYS[:3]})},
        outputs={"o": FileRepository(tmp_path / "out")},
        params={"script": "true"},
        batch=3,
    )
    async with session:
        try:
            assert isinstance(executor, KubeExecutor)
            body = executor.pod_body(
                task.render(KEYS[0], keys=KEYS[:3]), name, KEYS[0], task.resources, KEYS[:3]
            )
            assert body["metadata"]["annotations"][KEY_ANNOTATION] == KEYS[0]
            assert body["metadata"]["annotations"][KEYS_ANNOTATION] == '["k0", "k1", "k2"]'
            one = executor.pod_body(task.render(KEYS[0]), name, KEYS[0], task.resources)
            assert KEYS_ANNOTATION not in one["metadata"]["annotations"]
            records = await execute_batch(task, KEYS[:3])
            assert sorted(records) == KEYS[:3]
        finally:
            await settled(kcfg, name)


async def test_an_orphaned_batch_pod_that_no_claim_names_is_stopped_and_its_keys_freed(
    kcfg: dict[str, Any], tmp_path: Path
) -> None:
    """A batch's pod left by a scheduler whose claims are gone: not adopted for its first
    key alone (its pod would go while the other keys wait on it); stopped, every key's
    partial output removed, every key free to run again."""
    from pydatatask.task.pod import PodTask

    name = "b" + secrets.token_hex(3)
    (tmp_path / "out").mkdir()
    session = Session()
    dead = make_executor(session, kcfg, name)
    later = make_executor(session, kcfg, name)
    out = FileRepository(tmp_path / "out")

    def task_on(executor: KubeExecutor) -> PodTask:
        return PodTask(
            name,
            SH_POD + "    - {name: OUT, value: {{ o.root }}}\n",
            executor=executor,
            inputs={"src": MemoryMetadataRepository({k: {} for k in KEYS[:3]})},
            outputs={"o": out},
            # keeps rewriting every key's output until stopped
            params={
                "script": 'while true; do for k in $PDT_KEYS; do echo x > "$OUT/$k"; done; sleep 0.1; done'
            },
            batch=3,
        )

    async with session:
        try:
            assert isinstance(dead, KubeExecutor) and isinstance(later, KubeExecutor)
            first = task_on(dead)
            body = dead.pod_body(
                first.render(KEYS[0], keys=KEYS[:3]), name, KEYS[0], first.resources, KEYS[:3]
            )
            await dead.cluster.create_pod(body)
            for _ in range(300):
                if all((tmp_path / "out" / k).exists() for k in KEYS[:3]):
                    break
                await asyncio.sleep(0.05)
            task = task_on(later)
            found = await later.jobs(name)
            assert sorted(found) == KEYS[:3] and len({found[k]["uid"] for k in found}) == 1, found
            assert await adopt_orphans(task) == []  # not adopted for one key
            await asyncio.sleep(0.5)  # the pod, if still running, would write again
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [], "partial outputs left"
            assert not await task.live.keys()
            assert await later.jobs(name) == {}
        finally:
            await settled(kcfg, name)
