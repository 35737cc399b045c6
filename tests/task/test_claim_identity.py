"""Stale claims are judged by pid only within one boot and one PID namespace.

Two schedulers with the same hostname in different PID namespaces (containers with host
networking, pods on one node) see unrelated processes behind each other's pids. The
real-namespace tests run the schedulers under ``unshare --pid --fork --mount-proc``, where
each scheduler is pid 1 of its own namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pydatatask.repository.memory import MemoryMetadataRepository
from pydatatask.repository.serialized import yaml_loads
from pydatatask.task import FunctionTask
from pydatatask.task.records import (
    HOSTNAME,
    boot_id,
    make_claim,
    pid_is_comparable,
    pid_namespace,
    process_start_time,
)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("claim_ns_pipeline.py")
UNSHARE = ["unshare", "--pid", "--fork", "--mount-proc"]


async def _nothing(key: str, dst: Any) -> None:
    await dst.put(key, 1)


def _task() -> FunctionTask:
    return FunctionTask(
        "t", _nothing, inputs={"src": MemoryMetadataRepository()}, outputs={"dst": MemoryMetadataRepository()}
    )


async def _dead_pid() -> int:
    proc = await asyncio.create_subprocess_exec("true")
    await proc.wait()
    return proc.pid  # a pid that no longer runs


def _claim(**fields: Any) -> dict[str, Any]:
    return dict(make_claim("someone-else", "t", "k", time.time(), 60.0), **fields)


# ---------------------------------------------------------------------- identity
def test_claims_record_boot_id_and_pid_namespace() -> None:
    claim = make_claim("me", "t", "k", time.time())
    assert claim["boot_id"] == boot_id() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert claim["pid_namespace"] == os.readlink("/proc/self/ns/pid")
    assert claim["pid_namespace"].startswith("pid:[")
    assert claim["pid"] == os.getpid() and claim["pid_start"] == process_start_time(os.getpid())
    assert claim["host"] == HOSTNAME
    assert pid_is_comparable(claim)


def test_a_forked_child_claims_with_its_own_pid_and_start_time() -> None:
    """The identity is the child's after a fork, not the one computed at import."""
    code = (
        "import json, os, time\n"
        "from pydatatask.task.records import make_claim, process_start_time\n"
        "make_claim('parent', 't', 'k', time.time())\n"
        "time.sleep(0.05)\n"  # the child starts at least one clock tick later
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    c = make_claim('child', 't', 'k', time.time())\n"
        "    print(json.dumps([c['pid'], c['pid_start'], os.getpid(), process_start_time(os.getpid())]))\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env(), check=True
    )
    pid, start, real_pid, real_start = json.loads(out.stdout)
    assert pid == real_pid
    assert start == real_start, "a forked child's claim carried its parent's start time"


def test_pid_namespace_is_unknown_when_proc_belongs_to_another_namespace() -> None:
    """In a new PID namespace without its own /proc, pids under /proc are the host's."""
    code = "from pydatatask.task.records import pid_namespace; print(pid_namespace())"
    own = subprocess.run(
        [*UNSHARE, sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env()
    )
    foreign = subprocess.run(
        ["unshare", "--pid", "--fork", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert own.returncode == 0 and foreign.returncode == 0, own.stderr + foreign.stderr
    assert own.stdout.strip().startswith("pid:[")
    assert own.stdout.strip() != pid_namespace()
    assert foreign.stdout.strip() == "None"


# ---------------------------------------------------------------------- decision table
async def test_same_namespace_live_process_is_not_stale() -> None:
    assert not _task().claims.is_stale(_claim(), owner="me")


async def test_same_namespace_dead_process_is_stale_at_once() -> None:
    assert _task().claims.is_stale(_claim(pid=await _dead_pid(), pid_start=None), owner="me")


async def test_same_namespace_reused_pid_is_stale_at_once() -> None:
    start = process_start_time(os.getpid())
    assert start is not None
    assert _task().claims.is_stale(_claim(pid_start=start + 1), owner="me")


async def test_other_namespace_is_judged_by_lease_only() -> None:
    task = _task()
    dead = await _dead_pid()
    other = _claim(pid=dead, pid_start=1, pid_namespace="pid:[1]")
    assert not task.claims.is_stale(other, owner="me")
    # pid 1 exists here too (another process than the claim's): still only the lease counts
    assert not task.claims.is_stale(dict(other, pid=1), owner="me")
    expired = dict(other, heartbeat=time.time() - 61)
    assert task.claims.is_stale(expired, owner="me")


async def test_other_boot_is_judged_by_lease_only() -> None:
    task = _task()
    claim = _claim(pid=await _dead_pid(), boot_id="00000000-0000-0000-0000-000000000000")
    assert not task.claims.is_stale(claim, owner="me")
    assert task.claims.is_stale(dict(claim, heartbeat=time.time() - 61), owner="me")


async def test_claims_without_boot_id_or_namespace_are_judged_by_lease_only() -> None:
    """A claim written by an older version: same hostname, dead pid, fresh lease."""
    task = _task()
    dead = await _dead_pid()
    now = time.time()
    old = {"owner": "old", "host": HOSTNAME, "pid": dead, "pid_start": 1, "heartbeat": now, "lease": 60.0}
    assert not task.claims.is_stale(old, owner="me")
    assert not task.claims.is_stale({k: v for k, v in old.items() if k != "lease"}, owner="me")
    assert task.claims.is_stale(dict(old, heartbeat=now - 61), owner="me")
    # no lease recorded: the task's lease applies
    task.claim_lease = 5.0
    assert task.claims.is_stale(
        {k: v for k, v in old.items() if k != "lease"} | {"heartbeat": now - 6}, owner="me"
    )
    # nothing to judge it by (no heartbeat, no start): never taken over
    assert not task.claims.is_stale({"owner": "old", "host": HOSTNAME, "pid": dead}, owner="me")
    for missing in ("boot_id", "pid_namespace"):
        partial = {k: v for k, v in _claim(pid=dead).items() if k != missing}
        assert not task.claims.is_stale(partial, owner="me")


async def test_own_claims_are_never_stale_and_a_non_mapping_is() -> None:
    task = _task()
    assert not task.claims.is_stale(_claim(owner="me", pid=await _dead_pid(), heartbeat=0.0), owner="me")
    assert task.claims.is_stale(["not", "a", "claim"], owner="me")


# ---------------------------------------------------------------------- real namespaces
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def _start(data: Path, lease: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*UNSHARE, sys.executable, str(SCRIPT), str(data), lease],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"the scheduler did not finish within {timeout} s: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-2000:]
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _runs(data: Path) -> list[list[str]]:
    log = data / "runs.log"
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for_runs(data: Path, n: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while len(_runs(data)) < n:
        if proc.poll() is not None:
            raise AssertionError(f"the scheduler exited early: {proc.stderr.read() if proc.stderr else ''}")
        assert time.monotonic() < deadline, "the job did not start"
        time.sleep(0.02)


def _claim_file(data: Path) -> Path:
    return data / "state" / "upper" / "live" / "k.yaml"


@pytest.fixture
def data(tmp_path: Path) -> Path:
    if shutil.which("unshare") is None:
        pytest.fail("these tests need unshare(1) (util-linux) and root", pytrace=False)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "k.txt").write_bytes(b"abc")
    return tmp_path


def test_a_live_claim_in_another_pid_namespace_is_not_taken_over(data: Path) -> None:
    """Scheduler 1 (pid 1 of its namespace) runs a slow job; scheduler 2 (pid 1 of another
    namespace, started later, so its start time differs) must leave the claim alone."""
    first = _start(data, "20s")
    try:
        _wait_for_runs(data, 1, first)
        claim = yaml_loads(_claim_file(data).read_bytes())
        assert claim["pid"] == 1 and claim["pid_namespace"] != pid_namespace()
        second = _finish(_start(data, "20s"))
        assert second["succeeded"] == 0 and second["ok"], second
        assert len(_runs(data)) == 1, f"the job ran twice: {_runs(data)}"
        assert yaml_loads(_claim_file(data).read_bytes())["owner"] == claim["owner"]
        (data / "release").touch()
        summary = _finish(first)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.communicate()
    assert summary["succeeded"] == 1 and summary["errors"] == [], summary
    assert (data / "out" / "k.txt").read_bytes() == b"ABC"
    assert len(_runs(data)) == 1
    assert not _claim_file(data).exists()


def test_a_dead_schedulers_claim_in_another_namespace_is_taken_over_after_its_lease(data: Path) -> None:
    """Scheduler 1 is killed during its job. While its lease is fresh, a scheduler in
    another namespace does not take the claim over (it cannot tell the pid is dead); once
    the lease has passed, it does, and the job runs again to completion."""
    lease = 5.0
    first = _start(data, f"{lease}s")
    try:
        _wait_for_runs(data, 1, first)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the namespace's pid 1 and everything in it
        first.communicate()
    claim = yaml_loads(_claim_file(data).read_bytes())
    second = _finish(_start(data, f"{lease}s"))
    assert second["succeeded"] == 0 and second["ok"], second
    assert len(_runs(data)) == 1 and _claim_file(data).exists()
    time.sleep(max(0.0, claim["heartbeat"] + lease - time.time()) + 0.1)
    (data / "release").touch()
    third = _finish(_start(data, f"{lease}s"))
    assert third["succeeded"] == 1 and third["ok"], third
    runs = _runs(data)
    # the job ran again, in the third scheduler's namespace (not compared with the dead one's:
    # the kernel reuses the number of a namespace once it is gone, as it did here at times)
    assert len(runs) == 2, runs
    assert (data / "out" / "k.txt").read_bytes() == b"ABC"
    assert not _claim_file(data).exists()
    assert yaml_loads((data / "state" / "upper" / "done" / "k.yaml").read_bytes())["success"] is True


async def test_a_running_scheduler_takes_over_a_foreign_claim_once_its_lease_passes(tmp_path: Path) -> None:
    """A claim that was fresh when a ``--forever`` scheduler first saw it is judged again
    when its lease runs out (its owner, in another namespace, stopped renewing it)."""
    from pydatatask.pipeline import Pipeline
    from pydatatask.repository import FileRepository, YamlMetadataFileRepository

    src = MemoryMetadataRepository({"k": 1})
    dst = FileRepository(tmp_path / "dst")
    live = YamlMetadataFileRepository(tmp_path / "live")
    foreign = dict(
        make_claim("elsewhere", "t", "k", time.time(), 0.6), host="other-host", pid=1, pid_namespace="pid:[1]"
    )
    await live.put("k", foreign)

    async def make(key: str, dst: FileRepository) -> None:
        await dst.write_bytes(key, b"done")

    task = FunctionTask("t", make, inputs={"src": src}, outputs={"dst": dst}, live=live)
    pipeline = Pipeline([task], claim_check_interval="0.05s", poll_interval="0.05s")
    run = asyncio.create_task(pipeline.run(forever=True))
    try:
        for _ in range(200):  # 10 s
            if await dst.contains("k") or run.done():
                break
            await asyncio.sleep(0.05)
        assert await dst.contains("k"), "the expired claim was never taken over"
    finally:
        pipeline.scheduler.request_stop()
        summary = await run
    assert summary.succeeded == 1
    assert await live.keys() == set()
