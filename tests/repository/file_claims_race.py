"""Batch claims racing over one local ``live`` directory, for tests/repository/test_file_bundles.py.

``python tests/repository/file_claims_race.py LIVE START ROUNDS KEYS`` waits until the file
``START`` exists, then for each round ``r`` claims the keys ``r<r>-k<i>`` (``i < KEYS``)
with one :meth:`~pydatatask.task.claims.Claims.acquire_many` (keeping them: nothing is
released) and prints, as JSON on its last line, the keys it holds by round.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path

from pydatatask import YamlMetadataFileRepository
from pydatatask.task.claims import Claims


async def main(live: Path, start: Path, rounds: int, keys: int) -> dict[str, list[str]]:
    claims = Claims(YamlMetadataFileRepository(live), "t", f"racer-{os.getpid()}", lease=600)
    deadline = time.monotonic() + 30
    while not os.path.exists(start):  # noqa: ASYNC240 - one stat of a local file
        assert time.monotonic() < deadline, "never started"
        await asyncio.sleep(0.001)
    held: dict[str, list[str]] = {}
    for r in range(rounds):
        wanted = [f"r{r:02d}-k{i:02d}" for i in range(keys)]
        got = await claims.acquire_many(wanted, batch=f"b{r}")
        held[str(r)] = sorted(got)
    return held


if __name__ == "__main__":
    live, start, rounds, keys = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    print(json.dumps(asyncio.run(main(live, start, rounds, keys))))
