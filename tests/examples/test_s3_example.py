"""The object-store example against the local S3 server: killed midway, rerun, checked."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import yaml

from tests.examples.s3_support import (
    ROOT,
    example_env,
    names,
    no_upload_left,
    read,
    remove_bucket,
    run,
    run_killed,
)

pytestmark = pytest.mark.s3

SCRIPT = ROOT / "examples" / "s3_dataset" / "pipeline.py"
N = 300


async def test_example_killed_midway_then_rerun_completes_exactly_once(
    s3: tuple[Any, dict[str, Any]],
) -> None:
    client, conf = s3
    bucket = f"pdt-example-{uuid.uuid4().hex[:10]}"
    await client.create_bucket(Bucket=bucket)
    sem = asyncio.Semaphore(32)

    async def upload(i: int) -> None:
        async with sem:
            body = f"document {i}\n" + " ".join(f"word{j % (i + 3)}" for j in range(50)) + "\n"
            await client.put_object(Bucket=bucket, Key=f"ds/docs/d{i:03d}.txt", Body=body.encode())

    await asyncio.gather(*(upload(i) for i in range(N)))
    env = example_env(conf, bucket, delay="0.03", concurrency="8")

    # first run: killed (SIGKILL, no chance to clean up) once part of the work is done
    await run_killed(SCRIPT, env, client, bucket, "ds/stats/", 40)
    stats_at_kill = len(await names(client, bucket, "ds/stats/"))
    assert stats_at_kill < N, "the run finished before it was killed: nothing was tested"

    # second run: completes the rest
    code, out, err = await run(SCRIPT, env, "run", "--json", within=180)
    assert code == 0, err.decode()[-3000:]

    keys = {f"d{i:03d}" for i in range(N)}
    found = await names(client, bucket)
    by_prefix: dict[str, list[str]] = {}
    for name in found:
        by_prefix.setdefault(name.split("/")[1] if name.count("/") >= 2 else name, []).append(name)
    assert sorted(n[len("ds/stats/") : -len(".yaml")] for n in by_prefix["stats"]) == sorted(keys)
    assert sorted(n[len("ds/words/") : -len(".json")] for n in by_prefix["words"]) == sorted(keys)
    state = by_prefix["state"]
    assert [n for n in state if "/live/" in n] == [], "claims were left behind"
    for task in ("stats", "words"):
        records = [n for n in state if n.startswith(f"ds/state/{task}/done/")]
        assert len(records) == N
    # every record is a success record, and no object outside the expected layout exists
    sample = await read(client, bucket, f"ds/state/words/done/d{N - 1:03d}.yaml")
    assert yaml.safe_load(sample)["success"] is True
    assert len(found) == N * 5 + 1, sorted(set(found) - {n for v in by_prefix.values() for n in v})
    summary = await read(client, bucket, "ds/summary.yaml")
    assert yaml.safe_load(summary)["documents"] == N
    await no_upload_left(client, bucket)

    # a third run has nothing to do
    code, out, err = await run(SCRIPT, env, "run", "--json", within=180)
    assert code == 0 and b'"succeeded": 0' in out, out.decode() + err.decode()[-2000:]

    await remove_bucket(client, bucket, found)
