"""Batches across processes: two schedulers on one state directory, and a scheduler
SIGKILLed in the middle of a batch (pipeline: tests/task/batch_pipeline.py)."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from pathlib import Path

import yaml

from pydatatask import YamlMetadataFileRepository
from tests.reliability.harness import finish, kill_group, start_script

from .batch_pipeline import build, runs

SCRIPT = Path(__file__).with_name("batch_pipeline.py")
ENV = {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}


def _sources(data: Path, n: int) -> list[str]:
    keys = [f"k{i:03d}" for i in range(n)]
    (data / "src").mkdir(parents=True, exist_ok=True)
    for key in keys:
        (data / "src" / f"{key}.txt").write_text(f"v-{key}")
    return keys


def _batch_sizes(data: Path) -> list[int]:
    return [
        int(line.split()[3])
        for line in (data / "runs.log").read_text().splitlines()
        if line.startswith("start")
    ]


def _live_files(data: Path) -> list[str]:
    """What is left in ``live``: every name, hidden ones (the bundles' directory) too."""
    return sorted(os.listdir(data / "state" / "upper" / "live"))


def _records(data: Path) -> dict[str, dict[str, object]]:
    done = data / "state" / "upper" / "done"
    return {p.stem: yaml.safe_load(p.read_text()) for p in done.glob("*.yaml")}


async def test_two_schedulers_with_batches_never_run_a_key_twice(tmp_path: Path) -> None:
    keys = _sources(tmp_path, 120)
    procs = [await start_script(SCRIPT, [str(tmp_path), "10"], ENV) for _ in range(2)]
    results = [await finish(proc, 90) for proc in procs]
    for result in results:
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1])["ok"], result.stdout
    starts = Counter(k for event, k in runs(tmp_path) if event == "start")
    assert starts == Counter(dict.fromkeys(keys, 1))  # every key once, none twice
    assert max(_batch_sizes(tmp_path)) > 1  # they ran in batches
    records = _records(tmp_path)
    assert sorted(records) == keys and all(r["success"] for r in records.values())
    for key in keys:
        assert (tmp_path / "out" / f"{key}.txt").read_text() == f"V-{key.upper()}"
    assert _live_files(tmp_path) == [".pdt-lock"]


async def test_a_scheduler_killed_mid_batch_leaves_each_key_to_be_finished_once(tmp_path: Path) -> None:
    keys = _sources(tmp_path, 30)
    hold = tmp_path / "hold"
    hold.touch()
    proc = await start_script(SCRIPT, [str(tmp_path), "10"], ENV)
    try:
        for _ in range(400):
            # both batches of the first wave wrote their outputs and wait
            if len(list((tmp_path / "out").glob("*.txt"))) >= 20:
                break
            assert proc.returncode is None
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the batches never wrote their outputs")
    finally:
        kill_group(proc.pid)
        await finish(proc, 30)
    hold.unlink()
    killed = {k for event, k in runs(tmp_path) if event == "start"}
    assert len(killed) == 20 and not _records(tmp_path)
    live = tmp_path / "state" / "upper" / "live"
    assert not list(live.glob("*.yaml"))
    assert len(list((live / ".pdt-bundles").glob("*.json"))) == 2  # one claim file per batch
    repo = YamlMetadataFileRepository(live)
    claims = await repo.get_many(await repo.keys())  # read as one claim per key, naming its batch
    assert set(claims) == killed
    assert len({c["batch"] for c in claims.values()}) == 2
    # a new run takes the dead scheduler's claims over key by key and finishes every key once
    assert (await build(tmp_path, 10).run()).ok
    ends = Counter(k for event, k in runs(tmp_path) if event == "end")
    assert ends == Counter(dict.fromkeys(keys, 1))
    starts = Counter(k for event, k in runs(tmp_path) if event == "start")
    assert all(starts[k] == (2 if k in killed else 1) for k in keys)
    records = _records(tmp_path)
    assert sorted(records) == keys and all(r["success"] and r["batch"]["size"] > 1 for r in records.values())
    for key in keys:
        assert (tmp_path / "out" / f"{key}.txt").read_text() == f"V-{key.upper()}"
    assert _live_files(tmp_path) == [".pdt-lock"]
