"""Randomized crash and outage rounds (see :mod:`tests.reliability.harness`).

Each round seeds a fresh namespace, runs the counted pipeline as a subprocess, injects one
or two faults at random points (SIGKILL of the scheduler's process group, or an outage of
the backend's server for 1-4 s), restores the server, reruns until the pipeline reports
success, then checks: every output present once with the right content, a success record
for every key and none without an output, no claim left, no temporary file or in-progress
multipart upload, no job recorded as succeeded twice, no process of the run left.

Outages: S3 is really stopped and started (``scripts/test-services stop s3``; SeaweedFS
keeps its data on disk). The Mongo test server keeps its data in memory, so a restart
would lose the inputs: a :class:`~tests.reliability.harness.TcpProxy` between the
pipeline and the server is cut instead (new connections refused, open ones dropped).

Quick mode (default): 2 rounds per backend. Full mode: ``--reliability-full`` (20 rounds)
or ``PDT_RELIABILITY_ROUNDS=N``. ``PDT_RELIABILITY_SEED=S`` replays a failing seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .harness import chaos_rounds

KEYS = {"files": 150, "s3": 30, "mongo": 30}


@pytest.mark.timeout(2400)
@pytest.mark.parametrize(
    "backend",
    ["files", pytest.param("s3", marks=pytest.mark.s3), pytest.param("mongo", marks=pytest.mark.mongo)],
)
async def test_crash_and_outage_rounds(
    backend: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    figures: dict[str, Any],
) -> None:
    services = None if backend == "files" else request.getfixturevalue("services")
    await chaos_rounds(
        backend,
        tmp_path,
        request.config,
        figures,
        services,
        keys=[f"k{j:04d}" for j in range(KEYS[backend])],
        extra_env=lambda rng: {
            "PDT_REL_SLEEP": str(round(rng.uniform(0.05, 0.2), 3)),
            "PDT_REL_CONCURRENCY": str(rng.choice([4, 8])),
            "PDT_REL_LEASE": "6s",
            "PDT_REL_CHECK": "1s",
        },
    )
