"""Randomized crash and outage rounds (see :mod:`tests.reliability.harness`).

Each round seeds a fresh namespace, runs the counted pipeline as a subprocess, injects one
or two faults at random points (SIGKILL of the scheduler's process group, or an outage of
the backend's server for 1-4 s), restores the server, reruns until the pipeline reports
success, then checks: every output present once with the right content, a success record
for every key and none without an output, no claim left, no temporary file or in-progress
multipart upload, no job recorded as succeeded twice, no process of the run left.

Outages: in the long mode S3 is really stopped and started (``scripts/test-services stop
s3``; SeaweedFS keeps its data on disk); the quick mode cuts a
:class:`~tests.reliability.harness.TcpProxy` in front of it instead, which is what a
client sees of a restart, in a fraction of the time and without stopping the server
other tests share. The Mongo test server keeps its data in memory, so a restart
would lose the inputs: a :class:`~tests.reliability.harness.TcpProxy` between the
pipeline and the server is cut instead (new connections refused, open ones dropped).

Quick mode (default): 2 rounds per backend. Full mode: ``--reliability-full`` (20 rounds)
or ``PDT_RELIABILITY_ROUNDS=N``. ``PDT_RELIABILITY_SEED=S`` replays a failing seed.

Each backend runs unbatched and batched (``batch=7``: one call for up to 7 keys, its claims,
records and releases in bulk); the quick mode's batched test is one round with a SIGKILL,
then an outage (files: a second SIGKILL), drawn while calls are under way.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from .harness import chaos_rounds, rounds_wanted

KEYS = {"files": 150, "s3": 30, "mongo": 30}
#: keys per call of the batched rounds: a fault lands while a call holds several keys
BATCH = 7
_MARKS = {"files": (), "s3": (pytest.mark.s3,), "mongo": (pytest.mark.mongo,)}


def _case(backend: str, batch: int | None) -> Any:
    name = backend + (f"-batch{batch}" if batch else "")
    return pytest.param(backend, batch, marks=_MARKS[backend], id=name)


def _settings(batch: int | None) -> Any:
    def pick(rng: random.Random) -> dict[str, str]:
        if not batch:
            return {
                "PDT_REL_SLEEP": str(round(rng.uniform(0.05, 0.2), 3)),
                "PDT_REL_CONCURRENCY": str(rng.choice([4, 8])),
                "PDT_REL_LEASE": "6s",
                "PDT_REL_CHECK": "1s",
            }
        # fewer, longer calls: a kill or an outage mostly finds calls under way, some keys
        # of a call written and others not
        return {
            "PDT_REL_SLEEP": str(round(rng.uniform(0.2, 0.4), 3)),
            "PDT_REL_CONCURRENCY": str(rng.choice([1, 2])),
            "PDT_REL_BATCH": str(batch),
            "PDT_REL_LEASE": "6s",
            "PDT_REL_CHECK": "1s",
        }

    return pick


@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    ("backend", "batch"),
    [_case(b, None) for b in ("files", "s3", "mongo")] + [_case(b, BATCH) for b in ("files", "s3", "mongo")],
)
async def test_crash_and_outage_rounds(
    backend: str,
    batch: int | None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    figures: dict[str, Any],
) -> None:
    services = None if backend == "files" else request.getfixturevalue("services")
    figures.update(batch=batch or 1)
    await chaos_rounds(
        backend,
        tmp_path,
        request.config,
        figures,
        services,
        keys=[f"k{j:04d}" for j in range(KEYS[backend])],
        extra_env=_settings(batch),
        # batched, quick mode: one round, a SIGKILL then an outage (a second kill on files)
        quick=1 if batch else 2,
        plan=("kill", "outage") if batch else (),
        # the quick mode cuts a proxy in front of the S3 server (the server other tests
        # share keeps running; a restart costs ~20 s); the long mode restarts the server
        s3_outage="restart" if rounds_wanted(request.config, quick=0) else "cut",
    )
