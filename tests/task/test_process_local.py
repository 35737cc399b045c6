"""ProcessTask on the local machine: real processes, real files, no mocks."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pydatatask import (
    ConfigurationError,
    DirectoryRepository,
    FileRepository,
    LocalHost,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    ProcessTask,
)
from pydatatask._procfs import boot_id, pid_namespace
from pydatatask.executor import Hosts, parse_memory
from pydatatask.pipeline import Pipeline
from pydatatask.task import RetryPolicy
from pydatatask.task.records import make_claim
from pydatatask.task.templates import job_context, render_command

EVIL = [
    "x;touch PWNED",
    "$(touch PWNED)",
    "`touch PWNED`",
    "a'b",
    'a"b;touch PWNED"',
    "a\nb\ntouch PWNED",
    "|| touch PWNED &",
]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _max_overlap(lines: list[str]) -> int:
    events = []
    for line in lines:
        kind, ts = line.split()[:2]
        events.append((int(ts), 1 if kind == "start" else -1))
    events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
    cur = best = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def _group_members(pgid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry))
    return found


def _cmdlines() -> list[bytes]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                out.append(Path(f"/proc/{entry}/cmdline").read_bytes())
            except OSError:
                continue
    return out


def _hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


async def test_three_stage_pipeline(tmp_path: Path) -> None:
    docs = FileRepository(tmp_path / "docs", ".txt")
    upper = FileRepository(tmp_path / "upper", ".txt")
    counts = MemoryMetadataRepository()
    final = DirectoryRepository(tmp_path / "final")
    for k in ("moby-dick_v2", "a.b", "k3"):
        await docs.write_text(k, f"hello {k}\n")
    host = LocalHost(workdir=tmp_path / "jobs")
    t1 = ProcessTask(
        "upper",
        "tr a-z A-Z < {{ doc.path }} > {{ up.path }}",
        executor=host,
        inputs={"doc": docs},
        outputs={"up": upper},
    )
    t2 = ProcessTask(
        "count",
        script="n=$(wc -c < {{ up.path }})\nprintf 'chars: %s\\nkey: %s\\n' $n \"$PDT_KEY\" > {{ stats.path }}\n",
        executor=host,
        inputs={"up": upper},
        outputs={"stats": counts},
    )
    t3 = ProcessTask(
        "bundle",
        "cp {{ up.path }} {{ out.path }}/copy.txt && cat {{ st.path }} > {{ out.path }}/stats.yaml",
        executor=host,
        inputs={"up": upper, "st": counts},
        outputs={"out": final},
    )
    summary = await Pipeline([t1, t2, t3]).run()
    assert summary.ok, summary
    assert summary.succeeded == 9
    assert await upper.read_text("moby-dick_v2") == "HELLO MOBY-DICK_V2\n"
    assert await counts.get("a.b") == {"chars": len("hello a.b\n"), "key": "a.b"}
    assert (final.path("k3") / "copy.txt").read_text() == "HELLO K3\n"
    assert "chars: 9" in (final.path("k3") / "stats.yaml").read_text()
    record = await t1.done.get("k3")
    assert record["success"] and record["exit_code"] == 0 and record["host"] == host.name
    assert _hidden(tmp_path / "upper") == [] and _hidden(tmp_path / "final") == []
    assert list((tmp_path / "jobs").iterdir()) == []  # job directories are removed


async def test_injection_through_params_paths_and_templates(tmp_path: Path) -> None:
    evil = [v.replace("PWNED", str(tmp_path / "PWNED")) for v in EVIL]
    evil_root = tmp_path / "in;touch PWNED;$(touch PWNED)`touch PWNED`'"
    src = DirectoryRepository(evil_root)
    (await src.mkdir("x")).joinpath("f").write_text("data")
    tasks = []
    outs = []
    for i, value in enumerate(evil):
        out = FileRepository(tmp_path / f"out{i}")
        outs.append(out)
        tasks.append(
            ProcessTask(
                f"t{i}",
                "cd {{ d.path }} && printf '%s|' {{ params.v }} {{ key }} > {{ o.path }} && cat f >> {{ o.path }}",
                executor=LocalHost(workdir=tmp_path / "jobs"),
                inputs={"d": src},
                outputs={"o": out},
                params={"v": value},
            )
        )
    summary = await Pipeline(tasks).run()
    assert summary.ok, summary
    for value, out in zip(evil, outs, strict=True):
        assert await out.read_text("x") == f"{value}|x|data"
    assert not _pwned(tmp_path)


def _pwned(root: Path) -> list[Path]:
    return list(root.rglob("PWNED")) + list(Path.cwd().glob("PWNED"))


def test_injection_through_template_rendering(tmp_path: Path) -> None:
    evil_root = tmp_path / "in;touch PWNED;$(touch PWNED)`touch PWNED`'"
    task = ProcessTask("t", "true", inputs={"d": DirectoryRepository(evil_root)})
    ctx = job_context(task, "x", {"v": EVIL})
    rendered = render_command("printf '%s\\n' {{ params.v }} {{ d.path }} {{ key }}", ctx)
    out = subprocess.run(
        ["/bin/sh", "-c", rendered], check=True, cwd=tmp_path, capture_output=True, text=True
    )
    assert out.stdout == "".join(v + "\n" for v in EVIL) + f"{evil_root}/x\nx\n"
    for value in EVIL:
        rendered = render_command("echo {{ v }} > /dev/null", {"v": value})
        subprocess.run(["/bin/sh", "-c", rendered], check=True, cwd=tmp_path)
    assert not _pwned(tmp_path)


async def test_nonzero_exit_is_a_failure_record_with_logs(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"x")
    out = FileRepository(tmp_path / "out")
    logs = MemoryBlobRepository()
    task = ProcessTask(
        "fail",
        "echo partial > {{ o.path }}; echo to-stdout; echo to-stderr >&2; exit 3",
        inputs={"i": src},
        outputs={"o": out},
        logs=logs,
    )
    summary = await Pipeline([task]).run()
    assert summary.failed == 1
    record = await task.done.get("k")
    assert record["success"] is False and record["exit_code"] == 3
    assert record["host"] == task.hosts[0].name
    assert "status 3" in record["error"]["message"] and "to-stderr" in record["error"]["message"]
    log_text = await logs.read_text("k")
    assert "to-stdout" in log_text and "to-stderr" in log_text and "status 3" in log_text
    assert not await out.contains("k") and _hidden(tmp_path / "out") == []


async def test_stdout_and_stderr_repositories(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"hello")
    out_repo, err_repo = MemoryBlobRepository(), MemoryBlobRepository()
    task = ProcessTask(
        "split", "cat {{ i.path }}; echo oops >&2", inputs={"i": src}, stdout=out_repo, stderr=err_repo
    )
    assert (await Pipeline([task]).run()).ok
    assert await out_repo.read_text("k") == "hello"
    assert await err_repo.read_text("k") == "oops\n"


async def test_retry_then_success(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"x")
    out = FileRepository(tmp_path / "out")
    logs = MemoryBlobRepository()
    counter = tmp_path / "counter"
    task = ProcessTask(
        "flaky",
        "n=$(cat {{ params.c }} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{ params.c }}; "
        'echo "try $n"; [ $n -ge 2 ] && echo done > {{ o.path }}',
        inputs={"i": src},
        outputs={"o": out},
        logs=logs,
        params={"c": str(counter)},
        retry=RetryPolicy(max_attempts=3, backoff=0.05),
    )
    assert (await Pipeline([task]).run()).ok
    record = await task.done.get("k")
    assert record["success"] and record["attempts"] == 2 and record["exit_code"] == 0
    assert await out.read_text("k") == "done\n"
    text = await logs.read_text("k")
    assert "try 1" in text and "try 2" in text and "attempt 1 failed" in text


@pytest.mark.parametrize("ignore_term", [False, True])
async def test_timeout_kills_the_process_tree(tmp_path: Path, ignore_term: bool) -> None:
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"x")
    pids = tmp_path / "pids"
    trap = "trap '' TERM; " if ignore_term else ""
    task = ProcessTask(
        "slow",
        trap + "echo $$ >> {{ params.p }}; sh -c 'sleep 300 & echo $! >> \"$1\"; sleep 300' x {{ params.p }} "
        "& echo $! >> {{ params.p }}; sleep 300",
        inputs={"i": src},
        outputs={"o": FileRepository(tmp_path / "out")},
        params={"p": str(pids)},
        timeout=0.7,
        kill_grace=0.5,
    )
    t0 = time.monotonic()
    summary = await Pipeline([task]).run()
    elapsed = time.monotonic() - t0
    assert summary.failed == 1
    record = await task.done.get("k")
    assert record["error"]["type"].endswith("JobTimeoutError")
    listed = [int(p) for p in pids.read_text().split()]
    assert len(listed) == 3
    assert not any(_alive(p) for p in listed), [p for p in listed if _alive(p)]
    assert elapsed < 5
    if ignore_term:
        assert elapsed >= 1.1  # waited kill_grace before SIGKILL


async def test_a_job_that_times_out_keeps_what_it_printed(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"x")
    logs = MemoryBlobRepository()
    task = ProcessTask(
        "slow",
        script=(
            "echo printed by {{ key }}; echo warned on stderr >&2\n"
            "trap 'echo stopped by TERM; exit 1' TERM\n"
            "sleep 300 & wait $!\n"
        ),
        inputs={"i": src},
        logs=logs,
        executor=LocalHost(workdir=tmp_path / "jobs"),
        timeout=0.7,
        kill_grace=5,
    )
    record = await task.execute("k")
    assert record is not None and record["error"]["type"] == "pydatatask.errors.JobTimeoutError"
    lines = (await logs.read_text("k")).splitlines()
    for line in ("printed by k", "warned on stderr", "stopped by TERM"):  # also what it printed when stopped
        assert line in lines, lines
    assert list((tmp_path / "jobs").iterdir()) == []


async def test_cancellation_kills_the_process_tree(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    task = ProcessTask("c", "echo $$ > {{ params.p }}; sleep 300 & sleep 300", params={"p": str(pids)})
    job = asyncio.create_task(task.execute("k"))
    for _ in range(100):
        if pids.exists() and pids.read_text().strip():
            break
        await asyncio.sleep(0.05)
    pid = int(pids.read_text())
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not _alive(pid)
    assert _group_members(pid) == []
    assert not await task.live.contains("k") and not await task.done.contains("k")


async def test_quota_limits_concurrent_processes(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    for i in range(10):
        await src.write_bytes(f"k{i}", b"x")
    events = tmp_path / "events"
    host = LocalHost("two", cpus=2, memory="1Gi", workdir=tmp_path / "jobs")
    task = ProcessTask(
        "q",
        'echo "start $(date +%s%N)" >> {{ params.f }}; sleep 0.25; echo "end $(date +%s%N)" >> {{ params.f }}',
        executor=host,
        inputs={"i": src},
        params={"f": str(events)},
        cpu=1,
        memory="100Mi",
        concurrency=10,
    )
    assert (await Pipeline([task]).run()).succeeded == 10
    lines = events.read_text().splitlines()
    assert len(lines) == 20
    assert _max_overlap(lines) == 2
    assert host.used_cpus == 0 and host.running == 0


async def test_jobs_spread_over_hosts_and_memory_counts(tmp_path: Path) -> None:
    a = LocalHost("a", cpus=8, memory="1Gi", workdir=tmp_path / "jobs")
    b = LocalHost("b", cpus=8, memory="1Gi", workdir=tmp_path / "jobs")
    task = ProcessTask("m", "true", executor=Hosts([a, b]), memory="512Mi")
    slots = [task.acquire_slot() for _ in range(5)]
    assert slots[4] is None  # memory: two jobs per host
    assert sorted(s.place for s in slots[:4]) == ["a", "a", "b", "b"]
    for s in slots[:4]:
        task.release_slot(s)
    assert a.used_memory == 0 and b.running == 0


async def test_job_larger_than_every_host_is_a_configuration_error(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    task = ProcessTask("big", "true", executor=LocalHost(cpus=2, memory="1Gi"), inputs={"i": src}, cpu=3)
    with pytest.raises(ConfigurationError, match="more than any host"):
        await Pipeline([task]).run()
    task = ProcessTask(
        "big2", "true", executor=LocalHost(cpus=2, memory="1Gi"), inputs={"i": src}, memory="2Gi"
    )
    with pytest.raises(ConfigurationError, match="more than any host"):
        await task.validate()


def test_parse_memory() -> None:
    assert parse_memory("512Mi") == 512 * 2**20
    assert parse_memory("2Gi") == 2 * 2**30
    assert parse_memory("1G") == 10**9
    assert parse_memory("1000M") == 10**9
    assert parse_memory("1.5Gi") == 3 * 2**29
    assert parse_memory(1024) == 1024
    for bad in ("", "12 parsecs", "-1Gi", "Gi", "1Gix"):
        with pytest.raises(ConfigurationError, match="invalid memory size"):
            parse_memory(bad)
    with pytest.raises(ConfigurationError):
        ProcessTask("x", command="true", script="true")
    with pytest.raises(ConfigurationError):
        ProcessTask("x", "true", env={"NOT VALID": "1"})


async def test_launch_rate(tmp_path: Path) -> None:
    src = MemoryBlobRepository()
    for i in range(4):
        await src.write_bytes(f"k{i}", b"x")
    starts = tmp_path / "starts"
    task = ProcessTask(
        "r",
        "date +%s%N >> {{ params.f }}",
        executor=LocalHost(cpus=8, workdir=tmp_path / "jobs", launch_rate=5),
        inputs={"i": src},
        params={"f": str(starts)},
    )
    assert (await Pipeline([task]).run()).succeeded == 4
    times = sorted(int(x) for x in starts.read_text().split())
    gaps = [(b - a) / 1e9 for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) > 0.12, gaps


async def test_secrets_only_in_the_environment(tmp_path: Path) -> None:
    secret = "s3cr3t-" + os.urandom(8).hex()
    src = MemoryBlobRepository()
    await src.write_bytes("k", b"x")
    out = FileRepository(tmp_path / "out")
    logs = MemoryBlobRepository()
    task = ProcessTask(
        "sec",
        'printf %s "$AWS_SECRET_ACCESS_KEY" | sha256sum > {{ o.path }}; sleep 1',
        inputs={"i": src},
        outputs={"o": out},
        logs=logs,
        env={"AWS_SECRET_ACCESS_KEY": lambda: secret},
    )
    run = asyncio.create_task(Pipeline([task]).run())
    seen_job = False
    while not run.done():
        for cmdline in _cmdlines():
            assert secret.encode() not in cmdline
            seen_job = seen_job or b"sha256sum" in cmdline
        await asyncio.sleep(0.05)
    assert (await run).ok and seen_job
    assert (await out.read_text("k")).split()[0] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in str(await task.done.get("k")) and secret not in await logs.read_text("k")


SCHEDULER = """
import sys
from pydatatask import FileRepository, LocalHost, ProcessTask
from pydatatask.pipeline import Pipeline
import asyncio

root = sys.argv[1]
src = FileRepository(root + "/src")
task = ProcessTask(
    "tick",
    'for i in $(seq 1 12); do echo "{{ key }} $$ $(date +%s%N)" >> {{ params.f }}; sleep 0.1; done; echo ok > {{ o.path }}',
    inputs={"i": src},
    outputs={"o": FileRepository(root + "/out")},
    params={"f": root + "/ticks"},
    executor=LocalHost(cpus=8),
    kill_grace="1s",
)
summary = asyncio.run(Pipeline([task], state_dir=root + "/state", claim_check_interval="1s").run())
print("OK" if summary.ok else "FAILED", summary.succeeded, flush=True)
"""


def test_restart_after_killed_scheduler(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    for k in keys:
        (tmp_path / "src").mkdir(exist_ok=True)
        (tmp_path / "src" / k).write_text(k)
    script = tmp_path / "sched.py"
    script.write_text(textwrap.dedent(SCHEDULER))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    ticks = tmp_path / "ticks"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        lines = ticks.read_text().splitlines() if ticks.exists() else []
        if all(sum(line.startswith(k + " ") for line in lines) >= 2 for k in keys):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    old_pids = {int(line.split()[1]) for line in ticks.read_text().splitlines()}
    assert any(_alive(p) for p in old_pids)  # the orphans outlive the scheduler
    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert "OK 3" in second.stdout, second.stdout + second.stderr
    assert not any(_alive(p) for p in old_pids)
    runs: dict[tuple[str, int], list[int]] = {}
    for line in ticks.read_text().splitlines():
        k, pid, ts = line.split()
        runs.setdefault((k, int(pid)), []).append(int(ts))
    for k in keys:
        spans = sorted((min(v), max(v)) for (key, _), v in runs.items() if key == k)
        assert len(spans) == 2, spans  # the interrupted run and the rerun
        assert spans[0][1] < spans[1][0], f"two runs of {k} overlapped: {spans}"
        assert (tmp_path / "out" / k).read_text() == "ok\n"
    assert list((tmp_path / "state" / "tick" / "live").glob("*.yaml")) == []


async def test_local_processes_are_reaped_without_a_thread_each(tmp_path: Path) -> None:
    """LocalHost waits for its children through pidfds on the event loop: no waiter thread
    per child (asyncio's default in 3.11, which cost more than short jobs themselves), no
    zombie left, exit statuses and signals reported as the wrapper sees them."""
    import threading

    from pydatatask.executor.base import ProcessWork, Resources

    host = LocalHost(cpus=100, workdir=tmp_path / "jobs")
    threads = threading.active_count()
    commands = ["exit 0", "exit 3", "kill -9 $$", "sleep 0.3; exit 7"] * 5
    handles = []
    for command in commands:
        slot = host.acquire(Resources(cpu=1))
        assert slot is not None
        handles.append(await host.start(ProcessWork(command=command), slot))
    from pydatatask.executor import local

    if local._PIDFD:  # kernels without pidfds (< 5.3) use asyncio's watcher, a thread per child
        # no waiter thread per child (asyncio names them waitpid-N); the starts run in the
        # loop's executor, a pool of a few threads whatever the number of children
        assert not [t.name for t in threading.enumerate() if t.name.startswith("waitpid-")]
        assert threading.active_count() <= threads + min(32, (os.cpu_count() or 1) + 4)
    outcomes = await asyncio.gather(*(h.wait() for h in handles))
    # "kill -9 $$" kills the wrapper's subshell: the wrapper reports 128+9 as its status
    assert [o.exit_code for o in outcomes] == [0, 3, 137, 7] * 5
    for handle in handles:
        pid = handle.info["pid"]
        assert isinstance(pid, int)
        with pytest.raises(ChildProcessError):  # reaped already: no zombie left to wait for
            os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: never blocks
        await handle.close()
    assert list((tmp_path / "jobs").iterdir()) == []


KILLED_WHILE_MAKING_DIRS = """
import asyncio, os, signal, sys
from pydatatask import FileRepository, LocalHost, ProcessTask
from pydatatask.executor import local
from pydatatask.pipeline import Pipeline

root, die = sys.argv[1], sys.argv[2] == "die"


class DyingHost(LocalHost):
    async def _new_job_dir(self, path, subdirs=()):
        await super()._new_job_dir(path, subdirs)
        if die:  # the scheduler is killed right after making a job directory
            os.kill(os.getpid(), signal.SIGKILL)


# the same where the directory is made in the step that also stages and starts the job
_make_job_dir = local._make_job_dir


def dying_make_job_dir(path, subdirs):
    _make_job_dir(path, subdirs)
    if die:
        os.kill(os.getpid(), signal.SIGKILL)


local._make_job_dir = dying_make_job_dir


task = ProcessTask(
    "mk",
    "echo ok > {{ o.path }}",
    inputs={"i": FileRepository(root + "/src")},
    outputs={"o": FileRepository(root + "/out")},
    executor=DyingHost(workdir=root + "/jobs"),
)
summary = asyncio.run(Pipeline([task], state_dir=root + "/state", claim_check_interval="1s").run())
print("OK" if summary.ok else "FAILED", summary.succeeded, flush=True)
"""


def test_scheduler_killed_after_making_a_job_directory_leaves_nothing(tmp_path: Path) -> None:
    """The claim names the job directory before it is made: the next run removes it.
    (Made first and recorded later, a kill in between left the directory for good; the
    SSH chaos rounds found it, seed 1295190327.)"""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a").write_text("a")
    script = tmp_path / "sched.py"
    script.write_text(KILLED_WHILE_MAKING_DIRS)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    first = subprocess.run([sys.executable, str(script), str(tmp_path), "die"], env=env, timeout=60)
    assert first.returncode == -signal.SIGKILL
    assert len(list((tmp_path / "jobs").iterdir())) == 1  # the directory it made
    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "live"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "OK 1" in second.stdout, second.stdout + second.stderr
    assert (tmp_path / "out" / "a").read_text() == "ok\n"
    assert list((tmp_path / "jobs").iterdir()) == []
    assert list((tmp_path / "state" / "mk" / "live").glob("*.yaml")) == []


def _stat_start(pid: int) -> int:
    data = Path(f"/proc/{pid}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2 :].split()[19])


async def test_recovery_of_a_job_that_never_wrote_its_pid_file_kills_nothing(tmp_path: Path) -> None:
    """A started job's run info names its pid but not its start time (the job's shell
    writes both to .pdt-pid): a scheduler killed before the shell wrote the file leaves a
    pid that may be taken by another process by the time of recovery. Recovery then
    stops nothing (the process group is stopped only by the pid file), removes the job
    directory and runs the job again."""
    src = FileRepository(tmp_path / "src")
    await src.write_text("k", "x")
    task = ProcessTask(
        "t",
        "echo ran > {{ o.path }}",
        executor=LocalHost("here", workdir=tmp_path / "jobs"),
        inputs={"i": src},
        outputs={"o": FileRepository(tmp_path / "out")},
    )
    pipeline = Pipeline([task], state_dir=tmp_path / "state", claim_check_interval="0.1s")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)  # noqa: ASYNC220 - killed below
    try:
        job_dir = tmp_path / "jobs" / "t.k.0123456789ab"
        job_dir.mkdir(parents=True)
        run = {
            "host": "here",
            "dir": str(job_dir),
            "pid": bystander.pid,
            "boot_id": boot_id(),
            "pid_namespace": pid_namespace(),
        }
        claim = dict(make_claim("dead", "t", "k", 0.0, 1.0), pid=2**22 + 4321, heartbeat=0.0, run=run)
        await task.live.put("k", claim)
        summary = await pipeline.run()
        assert bystander.poll() is None, "recovery killed a process the job's pid file does not name"
    finally:
        bystander.kill()
        bystander.wait()
    assert summary.succeeded == 1
    assert (tmp_path / "out" / "k").read_text() == "ran\n"
    assert list((tmp_path / "jobs").iterdir()) == []


@pytest.mark.parametrize("where", ["another boot", "another PID namespace"])
async def test_recovery_does_not_kill_a_pid_recorded_elsewhere(tmp_path: Path, where: str) -> None:
    """A claim left by a scheduler on another boot, or in another container, names a pid
    that means nothing here: recovery must not kill the process that has it now (here a
    bystander started with the very pid and start time the job directory records), it
    removes the job directory and runs the job again. (Recovery used to kill by the pid
    and start time alone.)"""
    src = FileRepository(tmp_path / "src")
    await src.write_text("k", "x")
    host = LocalHost("here", workdir=tmp_path / "jobs")
    task = ProcessTask(
        "t",
        "echo ran > {{ o.path }}",
        executor=host,
        inputs={"i": src},
        outputs={"o": FileRepository(tmp_path / "out")},
    )
    pipeline = Pipeline([task], state_dir=tmp_path / "state", claim_check_interval="0.1s")
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)  # noqa: ASYNC220 - killed below
    try:
        start = _stat_start(bystander.pid)
        job_dir = tmp_path / "jobs" / "t.k.0123456789ab"
        job_dir.mkdir(parents=True)
        (job_dir / ".pdt-pid").write_text(f"{bystander.pid} {start}\n")
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()  # noqa: ASYNC240 - procfs
        ns = os.readlink("/proc/self/ns/pid")
        if where == "another boot":
            boot = "00000000-0000-0000-0000-000000000000"
        else:
            ns = "pid:[1]"
        run = {"host": "here", "dir": str(job_dir), "pid": bystander.pid, "pid_start": start}
        claim = {
            "owner": "elsewhere",
            "task": "t",
            "key": "k",
            "host": "elsewhere",
            "pid": bystander.pid,
            "pid_start": start,
            "boot_id": boot,
            "pid_namespace": ns,
            "started": 0.0,
            "heartbeat": 0.0,
            "lease": 1.0,
            "run": {**run, "boot_id": boot, "pid_namespace": ns},
            # the same, as the claims of the version before the executor layer named it
            "job": {**run, "pid_file": f"{job_dir}/ctl/pid", "exit_file": f"{job_dir}/ctl/exit"},
        }
        await task.live.put("k", claim)
        summary = await pipeline.run()
        assert bystander.poll() is None, "recovery killed a process it cannot know"
    finally:
        bystander.kill()
        bystander.wait()
    assert summary.succeeded == 1
    assert (tmp_path / "out" / "k").read_text() == "ran\n"
    assert list((tmp_path / "jobs").iterdir()) == []
    assert not await task.live.contains("k")


def _own_group_in_the_schedulers_session(printed: str) -> None:
    # a session per job (setsid) makes a scheduling group per job where autogroups are on
    pid, pgrp, sid = (int(v) for v in printed.split())
    assert pgrp == pid != os.getpgrp()
    assert sid == os.getsid(0)


@pytest.mark.parametrize(
    ("command", "script", "expected"),
    [
        pytest.param(
            # one directory per job: the control files and the log live in it, hidden; only
            # inputs that are not local files add in/<link>/; with the claims in this
            # process's memory no pid file (nothing would read it after a crash)
            '[ "$(pwd -P)" = "$(cd "$PDT_JOB_DIR" && pwd -P)" ] && find . | LC_ALL=C sort > {{ o.path }}',
            False,
            "".join(f"{p}\n" for p in (".", "./.pdt-log", "./in", "./in/i", "./in/i/k")),
            id="the job directory is the working directory and the only one",
        ),
        pytest.param(
            "read -r _ _ _ _ pgrp sid _ < /proc/$$/stat; echo $$ $pgrp $sid > {{ o.path }}",
            False,
            _own_group_in_the_schedulers_session,
            id="a process group of its own in the scheduler's session",
        ),
        pytest.param(
            # the script's path was relative to a working directory the job had already left
            "echo from a script > {{ o.path }}\n",
            True,
            "from a script\n",
            id="a relative workdir runs scripts",
        ),
        pytest.param(
            # Python ignores SIGPIPE; a job must not inherit that (`yes | head` would never end)
            "yes | head -n 2 > {{ o.path }}",
            False,
            "y\ny\n",
            id="python's ignored signals restored",
        ),
    ],
)
async def test_what_the_process_of_a_job_finds(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    script: bool,
    expected: str | Callable[[str], None],
) -> None:
    monkeypatch.chdir(tmp_path)
    out = FileRepository(tmp_path / "out")
    task = ProcessTask(
        "t",
        command=None if script else command,
        script=command if script else None,
        executor=LocalHost("here", workdir="jobs" if script else tmp_path / "jobs"),
        inputs={"i": MemoryBlobRepository({"k": b"x"})},
        outputs={"o": out},
        timeout="20s",
    )
    summary = await Pipeline([task]).run()
    assert summary.succeeded == 1, summary
    printed = await out.read_text("k")
    if callable(expected):
        expected(printed)
    else:
        assert printed == expected
    assert list((tmp_path / "jobs").iterdir()) == []


async def test_a_job_whose_claim_is_stored_writes_its_pid_and_start_time(tmp_path: Path) -> None:
    """With claims in files (what a scheduler started after a crash reads), the job's shell
    writes ``<pid> <start time>`` to ``.pdt-pid`` before the command runs, and the start
    time is the process's own (field 22 of ``/proc/PID/stat``): what recovery goes by."""
    out = FileRepository(tmp_path / "out")
    task = ProcessTask(
        "t",
        "find . | LC_ALL=C sort > {{ o.path }}; read -r p s < .pdt-pid; "
        "read -r _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ _ st _ < /proc/$$/stat; "
        'echo "$p $s $$ $st" >> {{ o.path }}',
        executor=LocalHost("here", workdir=tmp_path / "jobs"),
        inputs={"i": MemoryBlobRepository({"k": b"x"})},
        outputs={"o": out},
        timeout="20s",
    )
    summary = await Pipeline([task], state_dir=tmp_path / "state").run()
    assert summary.succeeded == 1, summary
    *listing, ids = (await out.read_text("k")).splitlines()
    assert listing == [".", "./.pdt-log", "./.pdt-pid", "./in", "./in/i", "./in/i/k"]
    pid, start, own_pid, own_start = ids.split()
    assert (pid, start) == (own_pid, own_start)
    assert list((tmp_path / "jobs").iterdir()) == []


def _marked(token: str) -> list[int]:
    """Pids of the processes whose environment holds ``PDT_MARK=token``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if f"PDT_MARK={token}".encode() in f.read().split(b"\0") and _alive(int(entry)):
                        found.append(int(entry))
            except OSError:
                continue
    return found


async def test_cancelled_while_jobs_start_leaves_no_process(tmp_path: Path) -> None:
    # a job is started in a thread: one whose caller is cancelled meanwhile is stopped too
    for delay in (0.0, 0.005, 0.02, 0.05):
        token = f"{os.getpid()}-{time.monotonic_ns()}"
        task = ProcessTask(
            "t",
            "sleep 30",
            executor=LocalHost("here", cpus=8, workdir=tmp_path / "jobs"),
            inputs={"i": MemoryBlobRepository({f"k{i}": b"x" for i in range(16)})},
            env={"PDT_MARK": token},
            concurrency=8,
            kill_grace="0.2s",
        )
        run = asyncio.create_task(Pipeline([task]).run())
        await asyncio.sleep(delay)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert _marked(token) == [], f"processes left after a cancellation {delay}s in"
