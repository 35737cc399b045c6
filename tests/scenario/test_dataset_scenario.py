"""A dataset as a user meets it, end to end, in real subprocesses: ``.tar.gz`` archives on
the S3 test server under nested keys with spaces and non-ASCII names -> pages (fan-out,
nested local files) -> page statistics (nested files) -> one report per archive (fan-in).

The run is killed (``SIGKILL`` of its process group) during each stage, then run again
until done; every output must then exist once and be correct (checked against figures
the test computes itself from the archives), with no debris, and each job's work done
once per success record (only jobs that were killed may have run more than once). Then
one archive is uploaded again with other content (one page changed, one removed): exactly
its keys are stale and ``run --rerun-stale`` redoes exactly them. Then a report is deleted
by hand: it shows as stale and ``run --rerun-stale`` restores it alone.

Checks that do not stop the scenario are collected and reported together at the end, so
one failure does not hide the others.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import service
from tests.reliability.harness import (
    BUCKET,
    ROOT,
    ensure_bucket,
    finish,
    kill_group,
    s3_client,
    s3_empty,
    s3_names,
    s3_uploads,
    start_script,
)

pytestmark = pytest.mark.s3

SCRIPT = Path(__file__).resolve().parent / "dataset_pipeline.py"
TASKS = ("unpack", "page_stats", "report")
#: archive key (under ``NS/incoming/``, before ``.tar.gz``) -> number of text files in it
ARCHIVES = {
    "2026/Ünïcödé set/book one": 12,
    "2026/Ünïcödé set/book two": 7,
    "2025/straße & co/Ça va (draft) 1": 5,
    "misc/plain": 9,
}
CHANGED = "2026/Ünïcödé set/book one"
WORDS = ("naïve", "café", "Ünïcödé", "straße", "日本語", "word", "ø", "line")

Logged = list[tuple[str, str, int]]


# ---------------------------------------------------------------- the data and what it must give
def make_archive(name: str, files: int, edition: int = 0) -> bytes:
    """A ``.tar.gz`` of ``files`` text files (and a directory entry, which is no page)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        folder = tarfile.TarInfo(f"{name}/notes")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i in range(files):
            count = 3 + (7 * i + len(name) + edition) % 17
            lines = [
                " ".join(WORDS[(i + j + k) % len(WORDS)] for k in range(count)) for j in range(1 + i % 4)
            ]
            if edition and i == 2:
                lines.append("an added line in the second edition")
            body = ("\n".join(lines) + "\n").encode()
            info = tarfile.TarInfo(f"{name}/chapter {i:02d}.txt")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def expected_outputs(archives: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    """``{"pages": {key: text}, "stats": {key: figures}, "reports": {key: text}}``, computed
    here from the archives, independently of the pipeline's code."""
    pages: dict[str, str] = {}
    stats: dict[str, dict[str, int]] = {}
    reports: dict[str, str] = {}
    for key, data in archives.items():
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            bodies = [tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()]  # type: ignore[union-attr]
        rows = []
        total = 0
        for n, body in enumerate(bodies, start=1):
            text = body.decode()
            page = f"{key}/page-{n:04d}"
            pages[page] = text
            words = len(text.split())
            total += words
            stats[page] = {"words": words, "lines": text.count("\n"), "characters": len(text)}
            rows.append(f"page-{n:04d}\t{words}\t{text.count(chr(10))}\t{len(text)}\n")
        reports[key] = f"{key}\n{len(bodies)} pages, {total} words\n" + "".join(rows)
    return {"pages": pages, "stats": stats, "reports": reports}


# ---------------------------------------------------------------- reading what is there
def visible_files(folder: Path, suffix: str) -> dict[str, bytes]:
    """``{key: bytes}`` of a file repository: every visible file, keyed by its path."""
    found: dict[str, bytes] = {}
    # os.walk passes over a directory removed while it walks (a run may be deleting pages)
    for top, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for file in files:
            if file.startswith("."):
                continue
            path = Path(top, file)
            name = path.relative_to(folder).as_posix()
            try:
                body = path.read_bytes()
            except FileNotFoundError:
                continue
            found[name[: -len(suffix)] if name.endswith(suffix) else f"<unexpected> {name}"] = body
    return found


def debris(data: Path) -> list[str]:
    """Hidden temporaries, and empty directories below a repository's root, left in the
    local trees."""
    roots = {data / sub for sub in ("pages", "stats", "reports")}
    roots |= {data / "state" / task / kind for task in TASKS for kind in ("done", "live", "logs")}
    found: list[str] = []
    for sub in ("pages", "stats", "reports", "state"):
        root = data / sub
        if not root.exists():
            continue
        for path in root.rglob("*"):
            if path in roots or path.parent == data / "state":
                continue
            if path.name.startswith(".") and path.name != ".pdt-lock":
                found.append(str(path.relative_to(data)))
            elif path.is_dir() and not any(p.name != ".pdt-lock" for p in path.iterdir()):
                found.append(f"{path.relative_to(data)}/ (empty directory)")
    return sorted(found)


def read_log(path: Path) -> Logged:
    if not path.exists():
        return []
    return [
        (d["task"], d["key"], d["pid"])
        for d in (json.loads(line) for line in path.read_text().splitlines() if line)
    ]


class Scenario:
    """One namespace: the bucket prefix ``NS/``, a local directory, the runs made, the pids killed."""

    def __init__(self, client: Any, conf: dict[str, Any], data: Path, state: str) -> None:
        self.client = client
        self.ns = f"scn{uuid.uuid4().hex[:10]}"
        self.prefix = f"{self.ns}/"
        self.data = data
        self.state = state
        self.killed: set[int] = set()
        self.history: list[str] = []
        self.problems: list[str] = []
        self.env = {
            "PDT_SCN_DATA": str(data),
            "PDT_SCN_S3": json.dumps({**conf, "bucket": BUCKET}),
            "PDT_SCN_PREFIX": self.prefix,
            "PDT_SCN_STATE": state,
            "PYTHONPATH": str(ROOT),
        }

    def expect(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(what)

    # ------------------------------------------------------------ inputs
    async def upload(self, key: str, body: bytes) -> None:
        await self.client.put_object(Bucket=BUCKET, Key=f"{self.prefix}incoming/{key}.tar.gz", Body=body)

    # ------------------------------------------------------------ runs
    async def cli(self, *args: str, **env: str) -> tuple[int | None, str, str]:
        t0 = time.monotonic()
        proc = await start_script(SCRIPT, list(args), {**self.env, **env})
        result = await finish(proc, 60)
        self.history.append(f"{' '.join(args)} -> {result.returncode} ({time.monotonic() - t0:.1f} s)")
        return result.returncode, result.stdout, result.stderr

    async def run_ok(self, *args: str, **env: str) -> dict[str, Any]:
        code, out, err = await self.cli("run", "--json", *args, **env)
        assert code == 0, f"run {' '.join(args)} exited {code}: {out[-2000:]}\n{err[-3000:]}\n{self.history}"
        summary: dict[str, Any] = json.loads(out)
        return summary

    async def status(self) -> dict[str, Any]:
        code, out, err = await self.cli("status", "--json")
        assert code == 0, f"status exited {code}: {err[-3000:]}"
        result: dict[str, Any] = json.loads(out)
        return result

    async def run_killed(self, until: Callable[[], bool], stage: str, *args: str, **env: str) -> None:
        """Start ``run ARGS``, SIGKILL its process group as soon as ``until()`` holds; a job
        of the task ``stage`` must have been running then."""
        what = f"in {stage}" + (f" ({' '.join(args)})" if args else "")
        proc = await start_script(SCRIPT, ["run", "--json", *args], {**self.env, **env})
        try:
            deadline = time.monotonic() + 40

            def in_flight() -> bool:
                runs, dones = self.logs()
                done = set(dones)
                return any(pid == proc.pid and t == stage and (t, k, pid) not in done for t, k, pid in runs)

            while not (until() and in_flight()):
                if proc.returncode is not None or time.monotonic() > deadline:
                    out, err = await proc.communicate()
                    pytest.fail(
                        f"the run to be killed {what} ended (or stalled) first: {proc.returncode}\n"
                        f"{out.decode()[-1000:]}\n{err.decode()[-2000:]}\n{self.history}"
                    )
                await asyncio.sleep(0.02)
        finally:
            kill_group(proc.pid)
            await proc.communicate()
        self.killed.add(proc.pid)
        runs, dones = self.logs()
        cut = [k for t, k, pid in runs if pid == proc.pid and t == stage and (t, k, pid) not in dones]
        self.history.append(f"run killed {what} (pid {proc.pid}, {len(cut)} {stage} job(s) cut off)")
        self.expect(bool(cut), f"the kill {what} cut off no {stage} job")

    # ------------------------------------------------------------ state
    def outputs(self) -> dict[str, dict[str, bytes]]:
        return {
            "pages": visible_files(self.data / "pages", ".txt"),
            "stats": visible_files(self.data / "stats", ".json"),
            "reports": visible_files(self.data / "reports", ".txt"),
        }

    def _state_repo(self, task: str, kind: str) -> Any:
        from pydatatask import YamlMetadataFileRepository, YamlMetadataS3Repository

        if self.state == "s3":
            return YamlMetadataS3Repository(self.client, BUCKET, f"{self.prefix}state/{task}/{kind}/")
        return YamlMetadataFileRepository(self.data / "state" / task / kind)

    async def records(self, task: str) -> dict[str, Any]:
        return {k: v async for k, v in self._state_repo(task, "done").items()}

    async def claims(self) -> list[str]:
        return [f"{t}: {k}" for t in TASKS for k in await self._state_repo(t, "live").keys()]

    def logs(self) -> tuple[Logged, Logged]:
        return read_log(self.data / "runs.log"), read_log(self.data / "done.log")

    # ------------------------------------------------------------ the checks
    async def check_outputs(self, archives: dict[str, bytes], when: str) -> None:
        """Every output exactly once and correct, a success record for each key and no
        other, no claim, no debris, no upload in progress, nothing else under the prefix."""
        want = expected_outputs(archives)
        have = self.outputs()
        for name in ("pages", "stats", "reports"):
            wrong = sorted(set(have[name]) ^ set(want[name]))
            self.expect(not wrong, f"{when}: {name}: keys differ from the expected ones: {wrong[:8]}")
        for page, text in want["pages"].items():
            if page in have["pages"]:
                self.expect(have["pages"][page].decode() == text, f"{when}: page {page!r} has wrong content")
        for page, figures in want["stats"].items():
            if page in have["stats"]:
                got = json.loads(have["stats"][page])
                self.expect(got == figures, f"{when}: stats of {page!r}: {got} != {figures}")
        for key, text in want["reports"].items():
            if key in have["reports"]:
                got_text = have["reports"][key].decode()
                self.expect(got_text == text, f"{when}: report {key!r}:\n{got_text!r}\n!= {text!r}")
        keys = {"unpack": set(archives), "page_stats": set(want["pages"]), "report": set(archives)}
        for task in TASKS:
            records = await self.records(task)
            failed = sorted(k for k, r in records.items() if not (isinstance(r, dict) and r.get("success")))
            self.expect(not failed, f"{when}: {task}: records that are not successes: {failed[:8]}")
            differ = sorted(set(records) ^ keys[task])
            self.expect(not differ, f"{when}: {task}: records differ from the keys: {differ[:8]}")
        unpacked = await self.records("unpack")
        for key in archives:
            children = (unpacked.get(key) or {}).get("children", {}).get("pages")
            pages = sorted(p for p in want["pages"] if p.rsplit("/", 1)[0] == key)
            self.expect(children == pages, f"{when}: unpack record of {key!r} lists children {children}")
        claims = await self.claims()
        self.expect(not claims, f"{when}: claims left: {claims[:8]}")
        left = debris(self.data)
        self.expect(not left, f"{when}: debris: {left[:8]}")
        uploads = [u["Key"] for u in await s3_uploads(self.client, BUCKET, self.prefix)]
        self.expect(not uploads, f"{when}: multipart uploads in progress: {uploads[:8]}")
        names = [n[len(self.prefix) :] for n in await s3_names(self.client, BUCKET, self.prefix)]
        allowed = {f"incoming/{k}.tar.gz" for k in archives}
        other = sorted(n for n in names if n not in allowed and not n.startswith("state/"))
        self.expect(not other, f"{when}: unexpected objects under the prefix: {other[:8]}")

    def check_once(self, runs: Logged, dones: Logged, keys: dict[str, set[str]], when: str) -> None:
        """Each (task, key) of ``keys`` recorded as succeeded exactly once, and run again
        only by processes that were killed; nothing else ran."""
        ran = {(t, k) for t, k, _ in runs} | {(t, k) for t, k, _ in dones}
        wanted = {(t, k) for t, ks in keys.items() for k in ks}
        self.expect(not ran - wanted, f"{when}: jobs of unexpected keys ran: {sorted(ran - wanted)[:8]}")
        done_count = Counter((t, k) for t, k, _ in dones)
        twice = sorted(tk for tk, n in done_count.items() if n > 1)
        self.expect(not twice, f"{when}: succeeded more than once: {twice[:8]}")
        done_by = set(dones)
        runs_by = set(runs)
        for task, key in sorted(wanted):
            mine = [pid for t, k, pid in runs if (t, k) == (task, key)]
            # a run that did not end in the success hook must have been killed
            unfinished = [pid for pid in mine if (task, key, pid) not in done_by and pid not in self.killed]
            self.expect(
                not unfinished, f"{when}: {task} {key!r} ran without success in a live run {unfinished}"
            )
            survivors = [pid for pid in mine if pid not in self.killed]
            self.expect(
                len(survivors) <= 1, f"{when}: {task} {key!r} ran {len(survivors)} times in runs not killed"
            )
            if done_count[(task, key)] == 0:
                # killed between its success record and the hook: it ran in a killed process
                self.expect(
                    bool(mine) and not survivors,
                    f"{when}: {task} {key!r} never ran to success ({len(mine)} run(s))",
                )
        orphans = sorted(d for d in done_by if d not in runs_by)
        self.expect(not orphans, f"{when}: success hooks without a run: {orphans[:8]}")


@pytest.fixture
async def scenario_s3(services: dict[str, Any]) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    conf = service(services, "s3")
    async with s3_client(conf) as client:
        await ensure_bucket(client)
        yield client, conf


def _stale(status: dict[str, Any]) -> dict[str, list[str]]:
    return {t: sorted(status[t]["stale"]) for t in TASKS}


@pytest.mark.parametrize("state", ["files", "s3"])
async def test_dataset_killed_in_every_stage_then_changed_then_deleted(
    scenario_s3: tuple[Any, dict[str, Any]], tmp_path: Path, state: str
) -> None:
    client, conf = scenario_s3
    sc = Scenario(client, conf, tmp_path / "data", state)
    sc.data.mkdir()
    archives = {key: make_archive(key.rsplit("/", 1)[1], files) for key, files in ARCHIVES.items()}
    try:
        await asyncio.gather(*(sc.upload(k, v) for k, v in archives.items()))
        want = expected_outputs(archives)
        n_pages = len(want["pages"])
        all_keys = {"unpack": set(archives), "page_stats": set(want["pages"]), "report": set(archives)}

        # 1. killed while unpacking: as soon as the first page file is there
        await sc.run_killed(lambda: bool(sc.outputs()["pages"]), "unpack", PDT_SCN_UNPACK_DELAY="0.25")
        unpacked = await sc.records("unpack")
        assert len(unpacked) < len(archives), f"every archive was unpacked before the kill: {sc.history}"
        stats_now = sc.outputs()["stats"]
        ungated = sorted(p for p in stats_now if p.rsplit("/", 1)[0] not in unpacked)
        sc.expect(not ungated, f"after kill 1: stats of pages whose unpack has no record: {ungated[:5]}")

        # 2. killed while counting pages: as soon as the first statistics file is there
        await sc.run_killed(
            lambda: bool(sc.outputs()["stats"]),
            "page_stats",
            # long enough that the job seen under way is still running when the kill lands
            # (at 0.2 s a starved test process sometimes killed it just after it ended)
            PDT_SCN_STATS_DELAY="0.5",
            PDT_SCN_CONCURRENCY="1",
        )
        assert len(sc.outputs()["stats"]) < n_pages, f"every page was counted before the kill: {sc.history}"
        counted = await sc.records("page_stats")
        early = sorted(
            a
            for a in sc.outputs()["reports"]
            if any(p not in counted for p in want["pages"] if p.startswith(a + "/"))
        )
        sc.expect(not early, f"after kill 2: reports of archives whose pages were not all counted: {early}")

        # 3. killed while reporting: one report at a time, killed once one is written and the next started
        before = set(sc.outputs()["reports"])

        def report_in_progress() -> bool:
            runs = [k for t, k, pid in sc.logs()[0] if t == "report" and pid not in sc.killed]
            written = set(sc.outputs()["reports"]) - before
            return bool(written) and len(runs) > len(written)

        await sc.run_killed(report_in_progress, "report", PDT_SCN_REPORT_DELAY="0.6", PDT_SCN_CONCURRENCY="1")
        assert len(sc.outputs()["reports"]) < len(archives), (
            f"every report was written before the kill: {sc.history}"
        )

        # 4. rerun until done (one run must do it), then nothing is left to do
        await sc.run_ok()
        await sc.check_outputs(archives, "after the kills")
        runs, dones = sc.logs()
        sc.check_once(runs, dones, all_keys, "after the kills")
        summary = await sc.run_ok()
        sc.expect(summary["succeeded"] == 0, f"a run after completion did work: {summary}")
        status = await sc.status()
        sc.expect(
            all(not v for v in _stale(status).values()), f"stale keys before any change: {_stale(status)}"
        )
        mark = len(runs), len(dones)

        # 5. one archive uploaded again: page 3 changed, the last page gone (new ETag)
        old_pages = sorted(p for p in want["pages"] if p.startswith(CHANGED + "/"))
        archives[CHANGED] = make_archive(CHANGED.rsplit("/", 1)[1], ARCHIVES[CHANGED] - 1, edition=1)
        await sc.upload(CHANGED, archives[CHANGED])
        want = expected_outputs(archives)
        new_pages = sorted(p for p in want["pages"] if p.startswith(CHANGED + "/"))
        assert len(new_pages) == len(old_pages) - 1
        status = await sc.status()
        stale = _stale(status)
        sc.expect(stale["unpack"] == [CHANGED], f"after the upload: stale unpack keys {stale['unpack']}")
        sc.expect(
            stale["page_stats"] == old_pages,
            f"after the upload: stale page_stats keys {stale['page_stats']}, expected the {len(old_pages)} pages of {CHANGED!r}",
        )
        sc.expect(stale["report"] == [CHANGED], f"after the upload: stale report keys {stale['report']}")
        await sc.run_ok("--rerun-stale")
        await sc.check_outputs(archives, "after the upload and --rerun-stale")
        runs, dones = sc.logs()
        redone = {"unpack": {CHANGED}, "page_stats": set(new_pages), "report": {CHANGED}}
        sc.check_once(runs[mark[0] :], dones[mark[1] :], redone, "the redo of the uploaded archive")
        for task, keys in redone.items():
            ran = Counter(k for t, k, _ in runs[mark[0] :] if t == task)
            sc.expect(set(ran) == keys, f"the redo ran {task} on {sorted(ran)}, expected {sorted(keys)}")
        status = await sc.status()
        sc.expect(all(not v for v in _stale(status).values()), f"stale keys after the redo: {_stale(status)}")
        mark = len(runs), len(dones)

        # 6. another archive uploaded again with two more pages; the redo is killed once it
        #    has counted a page of it, and run again
        grown = "misc/plain"
        archives[grown] = make_archive("plain", ARCHIVES[grown] + 2, edition=2)
        await sc.upload(grown, archives[grown])
        want = expected_outputs(archives)
        grown_pages = sorted(p for p in want["pages"] if p.startswith(grown + "/"))

        def counted_one() -> bool:
            return any(t == "page_stats" and k.startswith(grown + "/") for t, k, _ in sc.logs()[1][mark[1] :])

        await sc.run_killed(
            counted_one, "page_stats", "--rerun-stale", PDT_SCN_STATS_DELAY="0.3", PDT_SCN_CONCURRENCY="1"
        )
        await sc.run_ok("--rerun-stale")
        await sc.check_outputs(archives, "after a second upload, a killed --rerun-stale and another")
        runs, dones = sc.logs()
        redone = {"unpack": {grown}, "page_stats": set(grown_pages), "report": {grown}}
        sc.check_once(runs[mark[0] :], dones[mark[1] :], redone, "the killed redo of the grown archive")
        for task, keys in redone.items():
            ran = Counter(k for t, k, _ in runs[mark[0] :] if t == task)
            sc.expect(
                set(ran) == keys, f"the killed redo ran {task} on {sorted(ran)}, expected {sorted(keys)}"
            )
        status = await sc.status()
        sc.expect(
            all(not v for v in _stale(status).values()), f"stale keys after the killed redo: {_stale(status)}"
        )
        mark = len(runs), len(dones)

        # 7. a report deleted by hand
        gone = "2025/straße & co/Ça va (draft) 1"
        (sc.data / "reports" / f"{gone}.txt").unlink()
        status = await sc.status()
        stale = _stale(status)
        sc.expect(
            stale == {"unpack": [], "page_stats": [], "report": [gone]},
            f"after deleting a report: stale keys {stale}",
        )
        kinds = [d["kind"] for d in status["report"]["stale_details"].get(gone, [])]
        sc.expect(
            "output" in kinds, f"the deleted report's stale reason: {status['report']['stale_details']}"
        )
        await sc.run_ok("--rerun-stale")
        await sc.check_outputs(archives, "after deleting a report and --rerun-stale")
        runs, dones = sc.logs()
        sc.check_once(runs[mark[0] :], dones[mark[1] :], {"report": {gone}}, "the redo of the deleted report")

        assert not sc.problems, (
            f"{len(sc.problems)} problem(s) (state in {state}):\n"
            + "\n".join(f"- {p}" for p in sc.problems)
            + f"\nhistory: {sc.history}"
        )
    finally:
        await s3_empty(client, BUCKET, sc.prefix)
