"""ProcessTask with batch=N on the local machine: one process for the keys of a batch,
per-key results through $PDT_RESULTS, outputs committed key by key (real processes, real
files, no mocks)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pydatatask import (
    DirectoryRepository,
    FileRepository,
    LocalHost,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    ProcessTask,
)
from pydatatask.pipeline import Pipeline
from pydatatask.task import RetryPolicy
from pydatatask.task.batch_results import (
    RESULTS_BEGIN,
    RESULTS_END,
    batch_failures,
    parse_results,
    results_in_log,
)
from pydatatask.task.lifecycle import execute_batch
from pydatatask.task.templates import batch_context, render_command

ROOT = Path(__file__).resolve().parents[2]

#: keys a shell would misread, each a valid key (a path of one segment)
ODD = ["x;touch PWNED", "$(touch PWNED)", "`touch PWNED`", "a'b", 'q"uote', "with space", "|| touch PWNED &"]

#: for every key of the batch: the input, upper-cased, into the output; one line per run
UPPER = (
    "printf 'run %s %s\\n' $$ \"$(printf '%s' \"$PDT_KEYS\" | tr '\\n' ' ')\" >> {{ params.runs }}\n"
    "{% for b in batch %}tr a-z A-Z < {{ b.src.path }} > {{ b.out.path }}\n{% endfor %}"
)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _runs(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _pwned(root: Path) -> list[Path]:
    return list(root.rglob("PWNED")) + list(Path.cwd().glob("PWNED"))


def _hidden(root: Path) -> list[str]:
    return [p.name for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []


async def _inputs(root: Path, keys: list[str]) -> FileRepository:
    src = FileRepository(root, ".txt")
    for key in keys:
        await src.write_text(key, f"text of {key}\n")
    return src


def _task(tmp_path: Path, src: FileRepository, script: str, **kw: object) -> ProcessTask:
    kw.setdefault("outputs", {"out": FileRepository(tmp_path / "out", ".txt")})
    return ProcessTask(
        "up",
        script=script,
        executor=LocalHost(cpus=4, workdir=tmp_path / "jobs"),
        inputs={"src": src},
        params={"runs": str(tmp_path / "runs")},
        batch=8,
        **kw,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------- results and templates
def test_result_lines_say_which_keys_failed() -> None:
    keys = ["a", "b", "c", "d"]
    lines = [
        json.dumps({"key": "a", "ok": True}),
        "",
        json.dumps({"key": "b", "ok": False, "error": "bad input"}),
        json.dumps({"key": "c", "ok": False}),
        json.dumps({"key": "c", "ok": True}),  # reported failed once: stays failed
    ]
    results = parse_results(lines, keys, "$PDT_RESULTS")
    assert results.problem is None
    assert batch_failures(keys, results, True, "exit 3") == {
        "b": "bad input",
        "c": "the command reported it failed",
    }
    # a non-zero exit fails every key not reported ok
    assert batch_failures(keys, results, False, "exit 3") == {
        "b": "bad input",
        "c": "the command reported it failed",
        "d": "exit 3",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not JSON"),
        ('["a", true]', 'not an object with "key"'),
        ('{"key": "a", "ok": "yes"}', 'not an object with "key"'),
    ],
)
def test_a_bad_result_line_fails_the_keys_it_may_have_named(line: str, problem: str) -> None:
    keys = ["a", "b"]
    results = parse_results([json.dumps({"key": "b", "ok": True}), line], keys, "$PDT_RESULTS")
    assert results.problem is not None and problem in results.problem
    assert "\n" not in results.problem and "line 2" in results.problem
    failed = batch_failures(keys, results, True, "")
    assert list(failed) == ["a"] and problem in failed["a"]  # b said ok: it stays ok


def test_result_lines_of_keys_not_in_the_attempt_are_set_aside() -> None:
    lines = ['{"key": "other", "ok": false}', '{"key": "b", "ok": false}', '{"key": "other", "ok": true}']
    results = parse_results(lines, ["a", "b"], "the log")
    assert results.problem is None and results.foreign == ["other"]
    assert batch_failures(["a", "b"], results, True, "") == {"b": "the command reported it failed"}


def test_result_lines_in_a_log_between_the_markers() -> None:
    keys = ["a", "b"]
    log = "\n".join(
        [
            '{"key": "a", "ok": false}',  # outside the markers: ordinary output
            RESULTS_BEGIN,
            '{"key": "b", "ok": false, "error": "no"}',
            RESULTS_END,
            "more output",
        ]
    )
    results = results_in_log(log, keys, "the log")
    assert results.problem is None and results.failed == {"b": "no"} and results.ok == set()
    assert results.complete and results.blocks == 1
    assert not results_in_log("no results here", keys, "the log").complete
    unclosed = results_in_log(f"{RESULTS_BEGIN}\n" + '{"key": "a", "ok": true}', keys, "the log")
    assert unclosed.ok == {"a"} and unclosed.problem is not None and "without" in unclosed.problem
    assert not unclosed.complete
    assert batch_failures(keys, unclosed, True, "") == {"b": "no result for it, and " + unclosed.problem}


def test_batch_template_sees_every_key_quoted(tmp_path: Path) -> None:
    src = FileRepository(tmp_path / "in", ".txt")
    task = ProcessTask("t", "true", inputs={"src": src}, batch=10)
    context = batch_context(task, ODD, {})
    assert context["key"] == ODD[0] and context["keys"] == ODD
    assert context["src"] is context["batch"][0]["src"]  # the first key's, shared
    rendered = render_command(
        "printf '%s\\n' {{ keys }}; {% for b in batch %}printf '%s|%s\\n' {{ b.key }} {{ b.src.path }}; "
        "printf '%s\\n' {{ b.key | result_line(false, b.key ~ ' failed') }};{% endfor %}",
        context,
    )
    out = subprocess.run(
        ["/bin/sh", "-c", rendered], check=True, cwd=tmp_path, capture_output=True, text=True
    )
    lines = out.stdout.splitlines()
    n = len(ODD)
    assert lines[:n] == ODD
    rest = lines[n:]
    assert rest[0::2] == [f"{k}|{src.path(k).absolute()}" for k in ODD]
    assert [json.loads(line) for line in rest[1::2]] == [
        {"key": k, "ok": False, "error": f"{k} failed"} for k in ODD
    ]
    assert not _pwned(tmp_path)


# ---------------------------------------------------------------- batches that run
async def test_one_process_runs_every_key_of_the_batch(tmp_path: Path) -> None:
    keys = ["k0", "k1", "nested/k2", "k3", "k4"]
    src = await _inputs(tmp_path / "in", keys)
    logs = MemoryBlobRepository()
    task = _task(tmp_path, src, UPPER + "echo all done\n", logs=logs)
    records = await execute_batch(task, keys)
    runs = _runs(tmp_path / "runs")
    assert len(runs) == 1, runs  # one process for the five keys
    assert runs[0].split()[2:] == keys  # $PDT_KEYS: one key a line, in order
    out = FileRepository(tmp_path / "out", ".txt")
    assert sorted(records) == sorted(keys)
    ids = {r["batch"]["id"] for r in records.values()}
    assert len(ids) == 1
    for key in keys:
        assert await out.read_text(key) == f"TEXT OF {key.upper()}\n"
        record = records[key]
        assert record["success"] and record["exit_code"] == 0 and record["batch"]["size"] == 5
        assert await task.done.get(key) == record
        text = await logs.read_text(key)
        assert "all done" in text and "batch of 5 key(s)" in text
    assert _hidden(tmp_path / "out") == [] and list((tmp_path / "jobs").iterdir()) == []
    assert [k async for k in task.live] == []


async def test_the_scheduler_starts_one_process_per_batch(tmp_path: Path) -> None:
    keys = [f"k{i:02}" for i in range(12)]
    src = await _inputs(tmp_path / "in", keys)
    task = _task(tmp_path, src, UPPER, concurrency=2)
    task.batch = 5
    summary = await Pipeline([task]).run()
    assert summary.ok and summary.succeeded == 12, summary
    runs = [r.split()[2:] for r in _runs(tmp_path / "runs")]
    assert sorted(len(r) for r in runs) == [2, 5, 5], runs  # three processes for twelve keys
    assert sorted(k for r in runs for k in r) == keys
    out = FileRepository(tmp_path / "out", ".txt")
    for key in keys:
        assert await out.read_text(key) == f"TEXT OF {key.upper()}\n"
        assert (await task.done.get(key))["batch"]["size"] in (2, 5)


async def test_a_key_run_alone_in_a_batched_task_keeps_its_log(tmp_path: Path) -> None:
    """A key to redo runs as a single job (execute): still through the batch's template
    and results, its output in its log."""
    src = await _inputs(tmp_path / "in", ["solo"])
    logs = MemoryBlobRepository()
    task = _task(tmp_path, src, UPPER + "echo said {{ keys }}\n", logs=logs)
    record = await task.execute("solo")
    assert record is not None and record["success"], record
    assert await FileRepository(tmp_path / "out", ".txt").read_text("solo") == "TEXT OF SOLO\n"
    text = await logs.read_text("solo")
    assert "said solo" in text and "1 of 1 key(s) ok" in text


async def test_a_key_whose_input_is_gone_fails_alone(tmp_path: Path) -> None:
    meta = MemoryMetadataRepository({"a": {"n": 1}, "b": {"n": 2}})
    logs = MemoryBlobRepository()
    out = FileRepository(tmp_path / "out", ".txt")
    task = ProcessTask(
        "meta",
        script=(
            "printf 'run %s\\n' \"$PDT_KEYS\" >> {{ params.runs }}\n"
            "{% for b in batch %}cp {{ b.m.path }} {{ b.out.path }}\n{% endfor %}"
            "echo first={{ key }} $PDT_KEY {{ m.path }}\n"
        ),
        executor=LocalHost(workdir=tmp_path / "jobs"),
        inputs={"m": meta},
        outputs={"out": out},
        params={"runs": str(tmp_path / "runs")},
        logs=logs,
        batch=3,
    )
    records = await execute_batch(task, ["gone", "a", "b"])  # "gone" was listed, then removed
    assert not records["gone"]["success"] and records["gone"]["error"]["type"].endswith("KeyNotFoundError")
    assert _runs(tmp_path / "runs") == ["run a", "b"]  # one process, without the key that is gone
    for key, n in (("a", 1), ("b", 2)):
        assert records[key]["success"], records[key]
        assert await out.read_text(key) == f"n: {n}\n"
    text = await logs.read_text("a")
    assert "first=a a " in text and text.split("first=a a ")[1].split()[0].endswith("/in/m/a.yaml")
    assert "left out of the batch" in text and not await out.contains("gone")


async def test_keys_reported_failed_lose_their_outputs_and_are_retried_alone(tmp_path: Path) -> None:
    keys = ["a", "b", "c", "d"]
    src = await _inputs(tmp_path / "in", keys)
    script = UPPER + (
        # b always fails; c says ok but writes no output; d fails on its first try only
        "{% for b in batch %}"
        "if [ {{ b.key }} = b ]; then echo {{ b.key | result_line(false, 'b is bad') }} >> \"$PDT_RESULTS\"; "
        'elif [ {{ b.key }} = c ]; then rm {{ b.out.path }}; echo {{ b.key | result_line }} >> "$PDT_RESULTS"; '
        'elif [ {{ b.key }} = d ] && [ $PDT_ATTEMPT = 1 ]; then echo {{ b.key | result_line(false) }} >> "$PDT_RESULTS"; '
        "fi\n{% endfor %}"
    )
    task = _task(tmp_path, src, script, retry=RetryPolicy(max_attempts=2, backoff=0.01))
    records = await execute_batch(task, keys)
    out = FileRepository(tmp_path / "out", ".txt")
    runs = _runs(tmp_path / "runs")
    assert [r.split()[2:] for r in runs] == [keys, ["b", "c", "d"]]  # the retry: the failed keys only
    assert records["a"]["success"] and records["a"]["attempts"] == 1
    assert await out.read_text("a") == "TEXT OF A\n"
    assert records["d"]["success"] and records["d"]["attempts"] == 2
    assert await out.read_text("d") == "TEXT OF D\n"
    for key, why in (("b", "b is bad"), ("c", "did not write output")):
        record = records[key]
        assert not record["success"] and record["attempts"] == 2 and why in record["error"]["message"]
        assert record["exit_code"] == 0
        assert not await out.contains(key)
    assert _hidden(tmp_path / "out") == [] and list((tmp_path / "jobs").iterdir()) == []


async def test_a_non_zero_exit_fails_only_the_keys_not_reported_ok(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    src = await _inputs(tmp_path / "in", keys)
    logs = MemoryBlobRepository()
    script = UPPER + (
        "printf '%s\\n' {{ 'a' | result_line }} {{ 'c' | result_line }} >> \"$PDT_RESULTS\"\n"
        "echo gave up on b >&2; exit 4\n"
    )
    task = _task(tmp_path, src, script, logs=logs)
    records = await execute_batch(task, keys)
    out = FileRepository(tmp_path / "out", ".txt")
    assert len(_runs(tmp_path / "runs")) == 1
    for key in ("a", "c"):
        assert records[key]["success"] and records[key]["exit_code"] == 4
        assert await out.read_text(key) == f"TEXT OF {key.upper()}\n"
    failed = records["b"]
    assert not failed["success"] and failed["exit_code"] == 4
    assert (
        "exited with status 4" in failed["error"]["message"] and "gave up on b" in failed["error"]["message"]
    )
    assert not await out.contains("b")  # written, then removed: the key failed
    assert "gave up on b" in await logs.read_text("b")
    assert _hidden(tmp_path / "out") == []


async def test_odd_keys_in_one_batch_with_outputs_of_every_kind(tmp_path: Path) -> None:
    keys = ODD
    src = await _inputs(tmp_path / "in", keys)
    meta = MemoryMetadataRepository()
    blobs = MemoryBlobRepository()
    dirs = DirectoryRepository(tmp_path / "dirs")
    script = (
        "{% for b in batch %}"
        "printf '%s' {{ b.key }} > {{ b.out.path }}; printf 'key: %s\\n' {{ b.key | tojson | shquote }} > {{ b.meta.path }}; "
        "cat {{ b.src.path }} > {{ b.blob.path }}; printf x > {{ b.dir.path }}/f\n"
        "{% endfor %}"
    )
    out = FileRepository(tmp_path / "out", ".txt")
    task = _task(tmp_path, src, script, outputs={"out": out, "meta": meta, "blob": blobs, "dir": dirs})
    records = await execute_batch(task, keys)
    assert all(records[k]["success"] for k in keys), {k: r.get("error") for k, r in records.items()}
    for key in keys:
        assert await out.read_text(key) == key
        assert await meta.get(key) == {"key": key}
        assert await blobs.read_text(key) == f"text of {key}\n"
        assert (dirs.path(key) / "f").read_text() == "x"
    assert not _pwned(tmp_path)


async def test_a_batch_that_times_out_fails_every_key_and_stops_its_process(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    src = await _inputs(tmp_path / "in", keys)
    pid_file = tmp_path / "pid"
    script = UPPER + f"echo $$ > {pid_file}; sleep 300 & sleep 300\n"
    task = _task(tmp_path, src, script, timeout=0.8, kill_grace=0.3)
    records = await execute_batch(task, keys)
    out = FileRepository(tmp_path / "out", ".txt")
    for key in keys:
        record = records[key]
        assert not record["success"] and record["error"]["type"].endswith("JobTimeoutError")
        assert not await out.contains(key)
    assert not _alive(int(pid_file.read_text()))
    assert _hidden(tmp_path / "out") == [] and list((tmp_path / "jobs").iterdir()) == []


#: prints, then waits to be stopped; what it prints when stopped (TERM) is kept as well
STOPPED = (
    "echo printed by {{ keys | join(',') }} attempt {{ attempt }}\n"
    "echo warned on stderr >&2\n"
    "trap 'echo stopped by TERM; exit 1' TERM\n"
    "sleep 300 & wait $!\n"
)


async def test_a_batch_that_times_out_keeps_its_output_under_every_key(tmp_path: Path) -> None:
    keys = ["a", "b", "nested/c"]
    src = await _inputs(tmp_path / "in", keys)
    logs = MemoryBlobRepository()
    retry = RetryPolicy(max_attempts=2, backoff=0.05)
    task = _task(tmp_path, src, STOPPED, logs=logs, timeout=0.8, kill_grace=5, retry=retry)
    records = await execute_batch(task, keys)
    for key in keys:
        assert records[key]["attempts"] == 2
        assert records[key]["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        text = await logs.read_text(key)
        for attempt in (1, 2):  # the first attempt's log is kept when the second is appended
            assert f"printed by a,b,nested/c attempt {attempt}\n" in text, text
        assert text.count("warned on stderr") == 2 and text.count("stopped by TERM") == 2, text
        assert text.index("attempt 1\n") < text.index("timed out after 0.8s") < text.index("attempt 2\n")
    assert task._staged == {}  # the output files of the stopped attempts are gone with their log
    assert list((tmp_path / "jobs").iterdir()) == []


async def test_a_batch_that_times_out_keeps_its_stdout_and_stderr_under_every_key(tmp_path: Path) -> None:
    keys = ["a", "b"]
    src = await _inputs(tmp_path / "in", keys)
    stdout, stderr, logs = MemoryBlobRepository(), MemoryBlobRepository(), MemoryBlobRepository()
    task = _task(tmp_path, src, STOPPED, stdout=stdout, stderr=stderr, logs=logs, timeout=0.8, kill_grace=5)
    records = await execute_batch(task, keys)
    for key in keys:
        assert records[key]["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        assert await stdout.read_text(key) == "printed by a,b attempt 1\nstopped by TERM\n"
        assert (await stderr.read_text(key)).startswith("warned on stderr\n")
        assert "timed out after 0.8s" in await logs.read_text(key)


async def test_cancelling_a_batch_stops_its_process_and_frees_every_key(tmp_path: Path) -> None:
    keys = ["a", "b"]
    src = await _inputs(tmp_path / "in", keys)
    pid_file = tmp_path / "pid"
    task = _task(tmp_path, src, UPPER + f"echo $$ > {pid_file}; sleep 300\n")
    job = asyncio.create_task(execute_batch(task, keys))
    for _ in range(200):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        await asyncio.sleep(0.02)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not _alive(int(pid_file.read_text()))
    assert [k async for k in task.live] == [] and [k async for k in task.done] == []
    out = tmp_path / "out"
    assert not list(out.glob("*.txt")) and _hidden(out) == []


SCHEDULER = """
import asyncio, sys
from pydatatask import FileRepository, LocalHost, ProcessTask
from pydatatask.pipeline import Pipeline

root = sys.argv[1]
task = ProcessTask(
    "tick",
    script=(
        'for i in $(seq 1 12); do for k in $PDT_KEYS; do echo "$k $$ $(date +%s%N)" >> {{ params.f }}; done; '
        'sleep 0.1; done\\n'
        '{% for b in batch %}echo ok > {{ b.o.path }}\\n{% endfor %}'
    ),
    inputs={"i": FileRepository(root + "/src")},
    outputs={"o": FileRepository(root + "/out")},
    params={"f": root + "/ticks"},
    executor=LocalHost(cpus=8),
    kill_grace="1s",
    batch=3,
)
summary = asyncio.run(Pipeline([task], state_dir=root + "/state", claim_check_interval="1s").run())
print("OK" if summary.ok else "FAILED", summary.succeeded, flush=True)
"""


def test_a_scheduler_killed_mid_batch_then_every_key_runs_once_more(tmp_path: Path) -> None:
    keys = ["a", "b", "c"]
    (tmp_path / "src").mkdir()
    for k in keys:
        (tmp_path / "src" / k).write_text(k)
    script = tmp_path / "sched.py"
    script.write_text(textwrap.dedent(SCHEDULER))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    first = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env)
    ticks = tmp_path / "ticks"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        lines = _runs(ticks)
        if all(sum(line.startswith(k + " ") for line in lines) >= 2 for k in keys):
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    old_pids = {int(line.split()[1]) for line in _runs(ticks)}
    assert len(old_pids) == 1  # the three keys in one process
    assert any(_alive(p) for p in old_pids)  # it outlives its scheduler
    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert "OK 3" in second.stdout, second.stdout + second.stderr
    assert not any(_alive(p) for p in old_pids)
    runs: dict[tuple[str, int], list[int]] = {}
    for line in _runs(ticks):
        k, pid, ts = line.split()
        runs.setdefault((k, int(pid)), []).append(int(ts))
    for k in keys:
        spans = sorted((min(v), max(v)) for (key, _), v in runs.items() if key == k)
        assert len(spans) == 2, spans  # the interrupted run and one rerun
        assert spans[0][1] < spans[1][0], f"two runs of {k} overlapped: {spans}"
        assert (tmp_path / "out" / k).read_text() == "ok\n"
    assert list((tmp_path / "state" / "tick" / "live").glob("*.yaml")) == []
