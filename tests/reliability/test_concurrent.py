"""Two and four ``run`` processes started at once on one pipeline: every job runs exactly once.

Each scheduler is a real subprocess (``python tests/reliability/pipelines/counted.py run``)
over the same repositories. Every job appends ``KEY PID`` to ``runs.log`` with O_APPEND
before it writes its output, so a job executed twice shows up as two lines.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from .harness import ChaosHarness, count_lines, finish, open_backend, processes_with_env, start_script

# keys per backend in the quick mode (CI): as many as keep each test near 10-20 s on a
# loaded 2-core machine; the full mode (--reliability-full) uses 2,000 keys on every backend
KEYS = {"files": 600, "s3": 80, "mongo": 200}
FULL_KEYS = 2000


#: keys per call of the batched runs (a prime, so batches end at odd places)
BATCH = 7
_MARKS = {"files": (), "s3": (pytest.mark.s3,), "mongo": (pytest.mark.mongo,)}


def _case(backend: str, schedulers: int, batch: int | None) -> Any:
    name = f"{backend}-{schedulers}" + (f"-batch{batch}" if batch else "")
    return pytest.param(backend, schedulers, batch, marks=_MARKS[backend], id=name)


@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    ("backend", "schedulers", "batch"),
    [_case(b, n, None) for b in ("files", "s3", "mongo") for n in (2, 4)]
    # batched (claims acquired in bulk race): four schedulers on every backend, two on
    # Mongo (the cheapest); the other pairs add run time and no new interleaving
    + [_case("files", 4, BATCH), _case("s3", 4, BATCH), _case("mongo", 2, BATCH), _case("mongo", 4, BATCH)],
)
async def test_concurrent_schedulers_run_each_job_once(
    backend: str,
    schedulers: int,
    batch: int | None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    figures: dict[str, Any],
) -> None:
    services = None if backend == "files" else request.getfixturevalue("services")
    ns = f"conc{uuid.uuid4().hex[:10]}"
    full = bool(request.config.getoption("--reliability-full"))
    keys = [f"k{i:05d}" for i in range(FULL_KEYS if full else KEYS[backend])]
    async with open_backend(backend, tmp_path / "data", ns, services) as store:
        harness = ChaosHarness(store, keys, __import__("random").Random(0), faults=())
        await harness.prepare()
        env = {**harness.env, "PDT_REL_CONCURRENCY": "16"}
        if batch:
            # as many keys under way as unbatched (16 jobs), in calls of BATCH
            env.update(PDT_REL_BATCH=str(batch), PDT_REL_CONCURRENCY=str(-(-16 // batch)))
        t0 = time.monotonic()
        procs = await asyncio.gather(
            *(start_script(harness.script, ["run", "--json"], env) for _ in range(schedulers))
        )
        results = await asyncio.gather(*(finish(p, 1500 if full else 100) for p in procs))
        elapsed = time.monotonic() - t0
        for r in results:
            assert r.returncode == 0, r.stderr[-2000:]
        per_process = [json.loads(r.stdout)["succeeded"] for r in results]

        runs = count_lines(store.data / "runs.log")
        done = count_lines(store.data / "done.log")
        twice = sorted(k for k, n in runs.items() if n > 1)
        assert not twice, f"{len(twice)} job(s) ran more than once: {twice[:10]}"
        never = sorted(set(keys) - set(runs))
        if never:
            state = await store.state()
            claims = await _claims(store, never[:3])
            detail = {k: (state.records.get(k), claims.get(k), k in state.outputs) for k in never[:3]}
            stderr = "\n---\n".join(r.stderr[-1500:] for r in results)
            raise AssertionError(f"{len(never)} key(s) never ran: {never[:10]} {detail}\n{stderr}")
        assert sorted(done.values()) == [1] * len(keys)
        assert sum(per_process) == len(keys), per_process
        problems = await harness.check()
        assert not problems, "; ".join(map(str, problems))
        assert not processes_with_env(harness.marker)
        pids = {line.split()[1] for line in (store.data / "runs.log").read_text().splitlines()}
        figures.update(
            backend=backend,
            schedulers=schedulers,
            batch=batch or 1,
            keys=len(keys),
            jobs=sum(runs.values()),
            duplicates=len(twice),
            lost=len(set(keys) - set(store_outputs(await store.state()))),
            schedulers_that_ran_jobs=len(pids),
            jobs_per_scheduler=per_process,
            seconds=round(elapsed, 1),
        )


def store_outputs(state: Any) -> dict[str, bytes]:
    return state.outputs  # type: ignore[no-any-return]


async def _claims(store: Any, keys: list[str]) -> dict[str, Any]:
    """The claim documents/values of ``keys`` (for failure messages)."""
    if store.name == "mongo":
        return {d["_id"]: d async for d in store.db[f"{store.ns}_live"].find({"_id": {"$in": keys}})}
    return {}
