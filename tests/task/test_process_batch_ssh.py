"""ProcessTask with batch=N over SSH, against the real sshd of scripts/test-services: one
remote process for the keys of a batch, inputs staged and outputs brought back key by key,
per-key results read back from the remote $PDT_RESULTS (no mocks)."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path
from typing import Any

import pytest

from pydatatask import FileRepository, MemoryBlobRepository, MemoryMetadataRepository, ProcessTask
from pydatatask.executor import SSHHost
from pydatatask.task import RetryPolicy
from pydatatask.task.lifecycle import execute_batch
from tests.conftest import service
from tests.task.test_process_ssh import connector, remote

pytestmark = pytest.mark.ssh

ODD = ["x;touch PWNED", "$(touch PWNED)", "a'b", "with space", "nested/k 1"]


def _local_temps(task: str) -> list[Path]:
    """The local temporary files the output of the task's remote processes goes to."""
    return list(Path(tempfile.gettempdir()).glob(f"pdt-{task}-*"))


@pytest.fixture
def ssh(services: dict[str, Any]) -> dict[str, Any]:
    return service(services, "ssh")


async def test_a_batch_over_ssh_with_a_partial_failure(ssh: dict[str, Any], tmp_path: Path) -> None:
    keys = [*ODD, "bad", "unsaid"]
    marker = f"/tmp/pdt-batch-{secrets.token_hex(4)}"
    src = MemoryBlobRepository()
    meta_in = MemoryMetadataRepository()
    for key in keys:
        await src.write_bytes(key, f"text of {key}\n".encode())
        await meta_in.put(key, {"n": 1})
    files = FileRepository(tmp_path / "files", ".txt")
    meta_out = MemoryMetadataRepository()
    logs = MemoryBlobRepository()
    host = SSHHost(connect=connector(ssh), name="batch", cpus=4)
    script = (
        'echo "run $$" >> {{ params.runs }}\n'
        "{% for b in batch %}"
        "tr a-z A-Z < {{ b.src.path }} > {{ b.files.path }}; sed 's/^n: 1$/n: 2/' {{ b.m.path }} > {{ b.mo.path }}\n"
        "{% endfor %}"
        # bad: its outputs written, then reported failed; unsaid: no line, and the exit is not 0
        "printf '%s\\n' {% for k in keys if k != 'bad' and k != 'unsaid' %}{{ k | result_line }} {% endfor %}"
        "{{ 'bad' | result_line(false, 'bad is bad') }} >> \"$PDT_RESULTS\"\n"
        "echo finished >&2; exit 5\n"
    )
    task = ProcessTask(
        "sshbatch",
        script=script,
        executor=host,
        inputs={"src": src, "m": meta_in},
        outputs={"files": files, "mo": meta_out},
        params={"runs": f"{marker}.runs"},
        logs=logs,
        batch=10,
        retry=RetryPolicy(max_attempts=1),
    )
    try:
        records = await execute_batch(task, keys)
        runs = await remote(ssh, f"cat {marker}.runs; rm -f {marker}.runs")
        left = await remote(ssh, "ls /tmp/pdt-jobs 2>/dev/null | grep -c '^sshbatch[.]' || true")
    finally:
        await host.aclose()
    assert runs.count("run ") == 1, runs  # one remote process for the seven keys
    for key in ODD:
        record = records[key]
        assert record["success"] and record["exit_code"] == 5 and record["host"] == "batch", record
        assert await files.read_text(key) == f"TEXT OF {key.upper()}\n"
        assert await meta_out.get(key) == {"n": 2}
        assert "finished" in await logs.read_text(key)
    bad, unsaid = records["bad"], records["unsaid"]
    assert not bad["success"] and "bad is bad" in bad["error"]["message"]
    assert not unsaid["success"] and "exited with status 5" in unsaid["error"]["message"]
    assert "finished" in unsaid["error"]["message"]  # the end of its output
    for key in ("bad", "unsaid"):
        assert not await files.contains(key) and not await meta_out.contains(key)
    assert left.strip() == "0"  # no job directory of the task left on the host
    assert (await remote(ssh, "ls -d /tmp/*PWNED* ~/*PWNED* 2>/dev/null; echo end")).strip() == "end"


async def test_a_batch_over_ssh_that_times_out_keeps_its_output_under_every_key(
    ssh: dict[str, Any], tmp_path: Path
) -> None:
    keys = ["a", "with space"]
    src = MemoryBlobRepository()
    for key in keys:
        await src.write_bytes(key, b"x\n")
    logs = MemoryBlobRepository()
    host = SSHHost(connect=connector(ssh), name="batch", cpus=4)
    name = "sshstop" + secrets.token_hex(3)
    task = ProcessTask(
        name,
        script=(
            "echo printed by {{ keys | join(',') }}; echo warned on stderr >&2\n"
            "trap 'echo stopped by TERM; exit 1' TERM\n"
            "sleep 300 & wait $!\n"
        ),
        executor=host,
        inputs={"src": src},
        logs=logs,
        batch=10,
        timeout=1.5,
        kill_grace=10,
    )
    try:
        records = await execute_batch(task, keys)
        left = await remote(ssh, f"ls /tmp/pdt-jobs 2>/dev/null | grep -c '^{name}[.]' || true")
    finally:
        await host.aclose()
    for key in keys:
        assert records[key]["error"]["type"] == "pydatatask.errors.JobTimeoutError"
        lines = (await logs.read_text(key)).splitlines()
        for line in ("printed by a,with space", "warned on stderr", "stopped by TERM"):
            assert line in lines, lines
    assert left.strip() == "0"
    # the local files the remote output went to are gone with the log
    assert _local_temps(name) == []
