"""Staleness through fan-out and fan-in: a redone parent makes its children's downstream
jobs stale (also when the new children have the same versions), children no longer
written are orphans that ``--rerun-stale`` removes, groups go stale when a member is added,
removed or redone, deleted outputs of fan-out and fan-in jobs are stale, and the cascade
archive -> pages -> page statistics -> report is redone once, with two schedulers too."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pydatatask import (
    FileRepository,
    MemoryBlobRepository,
    MemoryMetadataRepository,
    YamlMetadataFileRepository,
)
from pydatatask.pipeline import Pipeline
from pydatatask.pipeline.staleness import UPSTREAM_STALE
from pydatatask.repository.base import BlobRepository, MetadataRepository
from pydatatask.repository.s3 import S3BucketRepository
from pydatatask.task import FanOut, FunctionTask
from tests.repository.test_s3 import bucket, client, prefix, s3conf  # noqa: F401 - fixtures

from .stale_fan_pipeline import build as build_files_pipeline
from .stale_support import kill_when, runs, start

SCRIPT = Path(__file__).with_name("stale_fan_pipeline.py")


class ContentVersions(MemoryBlobRepository):
    """Versions from the content, as S3 ETags are: identical bytes, the same version."""

    async def _list_versions(self) -> dict[str, str | None]:
        return {k: hashlib.md5(await self.read_bytes(k)).hexdigest() for k in await self.keys()}


class Archives:
    """archives -> unpack (fan-out, pages ``A/p1``...) -> page_stats -> report (fan-in per
    archive), noting every job."""

    def __init__(
        self,
        make_blobs: Callable[[str], BlobRepository],
        make_meta: Callable[[str], MetadataRepository],
    ) -> None:
        self.archives, self.pages = make_blobs("archives"), make_blobs("pages")
        self.stats, self.reports = make_meta("stats"), make_blobs("reports")
        self.calls: list[tuple[str, str]] = []

        async def unpack(key: str, archive: BlobRepository, pages: BlobRepository) -> None:
            self.calls.append(("unpack", key))
            text = (await archive.read_bytes(key)).decode()
            for number, page in enumerate(text.split("|"), start=1):
                await pages.write_bytes(f"{key}/p{number}", page.encode())

        async def count(key: str, page: BlobRepository, stats: MetadataRepository) -> None:
            self.calls.append(("page_stats", key))
            await stats.put(key, len((await page.read_bytes(key)).split()))

        async def report(
            key: str, members: list[str], stats: MetadataRepository, report: BlobRepository
        ) -> None:
            self.calls.append(("report", key))
            words = await stats.get_many(members)
            await report.write_bytes(key, " ".join(f"{m}={words[m]}" for m in members).encode())

        self.unpack = FunctionTask(
            "unpack", unpack, inputs={"archive": self.archives}, outputs={"pages": FanOut(self.pages)}
        )
        self.page_stats = FunctionTask(
            "page_stats", count, inputs={"page": self.pages}, outputs={"stats": self.stats}
        )
        self.report = FunctionTask(
            "report",
            report,
            inputs={"stats": self.stats},
            outputs={"report": self.reports},
            group_by=lambda page: page.rsplit("/", 1)[0],
        )
        self.pipeline = Pipeline([self.unpack, self.page_stats, self.report])

    async def fill(self, values: dict[str, str]) -> None:
        for key, value in values.items():
            await self.archives.write_bytes(key, value.encode())

    async def stale(self) -> dict[str, dict[str, list[str]]]:
        """``{task: {key: [kinds]}}`` of the stale keys."""
        status = await self.pipeline.status()
        return {
            name: {k: [r["kind"] for r in reasons] for k, reasons in s["stale_details"].items()}
            for name, s in status.items()
        }

    async def run(self, **kwargs: Any) -> list[tuple[str, str]]:
        self.calls.clear()
        summary = await self.pipeline.run(**kwargs)
        assert summary.ok, summary.as_dict()
        return sorted(self.calls)

    async def report_text(self, key: str) -> str:
        return (await self.reports.read_bytes(key)).decode()


@pytest.fixture(params=["memory", "files"])
def archives(request: pytest.FixtureRequest, tmp_path: Path) -> Archives:
    if request.param == "memory":
        return Archives(lambda name: MemoryBlobRepository(), lambda name: MemoryMetadataRepository())
    return Archives(
        lambda name: FileRepository(tmp_path / name, ".txt"),
        lambda name: YamlMetadataFileRepository(tmp_path / name),
    )


NOTHING: dict[str, dict[str, list[str]]] = {"unpack": {}, "page_stats": {}, "report": {}}


async def test_a_changed_archive_cascades_to_its_pages_and_its_report_once(archives: Archives) -> None:
    await archives.fill({"A": "one two|three|four five six", "B": "x|y z"})
    assert len(await archives.run()) == 2 + 5 + 2
    await archives.fill({"A": "one two|three 3"})  # re-uploaded: 2 pages now, not 3
    # what A's pages and report were made from is to be redone: they are stale upstream
    up = [UPSTREAM_STALE]
    assert await archives.stale() == {
        "unpack": {"A": ["input"]},
        "page_stats": {"A/p1": up, "A/p2": up, "A/p3": up},
        "report": {"A": up},
    }
    assert await archives.run() == []  # never without being asked
    assert await archives.run(rerun_stale=True) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
        ("unpack", "A"),
    ]
    assert await archives.report_text("A") == "A/p1=2 A/p2=2"
    assert await archives.report_text("B") == "B/p1=1 B/p2=2"
    # the page the new archive no longer has left nothing behind downstream
    assert await archives.pages.keys() == {"A/p1", "A/p2", "B/p1", "B/p2"}
    assert await archives.stats.keys() == {"A/p1", "A/p2", "B/p1", "B/p2"}
    assert await archives.page_stats.done.keys() == {"A/p1", "A/p2", "B/p1", "B/p2"}
    assert await archives.stale() == NOTHING
    assert await archives.run(rerun_stale=True) == []


async def test_a_child_whose_parent_was_redone_is_stale_and_one_no_longer_written_is_an_orphan(
    archives: Archives,
) -> None:
    await archives.fill({"A": "a|b c|d", "B": "x"})
    await archives.run()
    old_parent = await archives.unpack.done.get("A")
    child = await archives.page_stats.done.get("A/p1")
    assert child["upstream"] == {"page": old_parent["end_time"]}  # the parent's record made it
    await archives.fill({"A": "a|b c"})
    assert await archives.run(tasks=["unpack"], rerun_stale=True) == [("unpack", "A")]
    stale = await archives.stale()
    assert sorted(stale["page_stats"]) == ["A/p1", "A/p2", "A/p3"] and stale["report"] == {
        "A": [UPSTREAM_STALE]
    }
    assert "upstream" in stale["page_stats"]["A/p1"] and "upstream" in stale["page_stats"]["A/p2"]
    assert stale["page_stats"]["A/p3"] == ["orphan"]
    status = await archives.pipeline.status()
    (orphan,) = status["page_stats"]["stale_details"]["A/p3"]
    assert orphan["message"].startswith("its parent 'A' in task 'unpack' was redone and no longer writes it")
    (redone,) = [r for r in status["page_stats"]["stale_details"]["A/p1"] if r["kind"] == "upstream"]
    assert "redone by upstream task 'unpack' (the parent 'A' of this child)" in redone["message"]
    why = await archives.pipeline.why("page_stats", "A/p3")
    assert any("no longer writes it" in line for line in why), why
    assert await archives.run(rerun_stale=True) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
    ]
    assert not await archives.stats.contains("A/p3")
    assert not await archives.page_stats.done.contains("A/p3")
    assert await archives.report_text("A") == "A/p1=1 A/p2=2"


async def test_a_redone_parent_makes_its_children_stale_even_when_they_have_the_same_version() -> None:
    archives = Archives(lambda name: ContentVersions(), lambda name: MemoryMetadataRepository())
    await archives.fill({"A": "a|b c", "B": "x"})
    await archives.run()
    versions = await archives.pages.versions()
    await archives.pages.delete("A/p2")  # a deleted output of the fan-out job
    stale = await archives.stale()
    up = [UPSTREAM_STALE]
    # A/p2's own stats record belongs to a page no longer there (not in the universe)
    assert stale == {"unpack": {"A": ["output"]}, "page_stats": {"A/p1": up}, "report": {"A": up}}
    reasons = await archives.pipeline.why("unpack", "A")
    assert any(
        "output 'pages'" in r and "no longer has 1 of the 2 children of 'A' ('A/p2')" in r for r in reasons
    )
    assert await archives.run(rerun_stale=True) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
        ("unpack", "A"),
    ]
    assert await archives.pages.versions() == versions  # the same bytes, the same versions
    assert await archives.stale() == NOTHING


async def test_a_report_stale_itself_waits_for_its_archive_upstream_and_runs_once(archives: Archives) -> None:
    await archives.fill({"A": "a|b", "B": "x"})
    await archives.run()
    await archives.reports.delete("A")  # a deleted output of the fan-in job: stale
    assert await archives.stale() == {**NOTHING, "report": {"A": ["output"]}}
    why = await archives.pipeline.why("report", "A")
    assert any("output 'report'" in r and "no longer has 'A'" in r for r in why), why
    await archives.fill({"A": "a a|b|c"})  # and its archive changes too
    # the report is not redone before its pages are: once, at the end
    assert await archives.run(rerun_stale=True) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("page_stats", "A/p3"),  # a new page: an ordinary job
        ("report", "A"),
        ("unpack", "A"),
    ]
    assert await archives.report_text("A") == "A/p1=2 A/p2=1 A/p3=1"


# ---------------------------------------------------------------- groups
def first_part(key: str) -> str:
    return key.split(".")[0]


class Groups:
    """``up`` copies src to parts; ``sum`` adds the parts of each group (fan-in)."""

    def __init__(self, src: dict[str, int]) -> None:
        self.src = MemoryMetadataRepository(src)
        self.parts = MemoryMetadataRepository()
        self.totals = MemoryMetadataRepository()
        self.calls: list[tuple[str, str]] = []

        async def copy(key: str, src: MetadataRepository, dst: MetadataRepository) -> None:
            self.calls.append(("up", key))
            await dst.put(key, await src.get(key))

        def total(key: str, members: list[str], part: dict[str, int]) -> dict[str, Any]:
            self.calls.append(("sum", key))
            return {"total": sum(part.values())}

        self.up = FunctionTask("up", copy, inputs={"src": self.src}, outputs={"dst": self.parts})
        self.sum = FunctionTask(
            "sum", total, inputs={"part": self.parts}, outputs={"total": self.totals}, group_by=first_part
        )
        self.pipeline = Pipeline([self.up, self.sum])

    async def run(self, **kwargs: Any) -> list[tuple[str, str]]:
        self.calls.clear()
        assert (await self.pipeline.run(**kwargs)).ok
        return sorted(self.calls)

    async def reasons(self, key: str) -> list[str]:
        status = await self.pipeline.status()
        return [r["message"] for r in status["sum"]["stale_details"].get(key, [])]


async def test_a_group_is_stale_when_a_member_is_added_removed_or_redone() -> None:
    groups = Groups({"A.1": 1, "A.2": 2, "B.1": 10})
    await groups.run()
    assert await groups.reasons("A") == [] and await groups.reasons("B") == []

    await groups.src.put("A.3", 3)
    assert await groups.run() == [("up", "A.3")]  # the member is new: its group is not redone by itself
    assert await groups.reasons("A") == ["group 'A' changed since its record: 1 member(s) added ('A.3')"]
    why = await groups.pipeline.why("sum", "A")
    assert why[-1] == (
        "stale: group 'A' changed since its record: 1 member(s) added ('A.3'); `run --rerun-stale` redoes it"
    )
    assert await groups.run(rerun_stale=True) == [("sum", "A")]
    assert await groups.totals.get("A") == 6

    await groups.src.put("A.2", 20)
    assert await groups.run(tasks=["up"], rerun_stale=True) == [("up", "A.2")]
    assert await groups.reasons("A") == ["group 'A' changed since its record: 1 redone upstream ('A.2')"]
    assert await groups.reasons("B") == []
    assert await groups.run(rerun_stale=True) == [("sum", "A")]
    assert await groups.totals.get("A") == 24

    await groups.src.delete("A.1")
    await groups.parts.delete("A.1")
    assert await groups.reasons("A") == ["group 'A' changed since its record: 1 removed ('A.1')"]
    assert await groups.run(rerun_stale=True) == [("sum", "A")]
    assert await groups.totals.get("A") == 23
    assert (await groups.sum.done.get("A"))["members"] == ["A.2", "A.3"]
    assert await groups.reasons("A") == []


async def test_a_group_of_10000_members_keeps_a_small_record_and_sees_a_changed_value() -> None:
    members = {f"m{i:05d}": i for i in range(10_000)}
    parts, totals = MemoryMetadataRepository(members), MemoryMetadataRepository()

    def total(key: str, members: list[str], part: dict[str, int]) -> dict[str, Any]:
        return {"total": sum(part.values())}

    task = FunctionTask(
        "sum", total, inputs={"part": parts}, outputs={"total": totals}, group_by=lambda k: "all"
    )
    pipeline = Pipeline([task])
    assert (await pipeline.run()).ok
    record = await task.done.get("all")
    assert len(record["members"]) == 10_000
    assert record["upstream"]["part"].startswith("members:10000:") and len(record["upstream"]["part"]) < 64
    assert (await pipeline.status())["sum"]["stale"] == []
    await parts.put("m04711", -1)  # no upstream task: the member's version tells
    details = (await pipeline.status())["sum"]["stale_details"]["all"]
    assert [d["message"] for d in details] == [
        "group 'all' changed since its record: a member's value or upstream record changed"
    ]
    assert (await pipeline.run(rerun_stale=True)).succeeded == 1
    assert await totals.get("all") == sum(members.values()) - 4711 - 1


# ---------------------------------------------------------------- two schedulers
def test_two_schedulers_rerun_stale_redo_the_cascade_of_one_archive_exactly_once(tmp_path: Path) -> None:
    (tmp_path / "archives").mkdir()
    books = {"A": "one two\n---\nthree\n---\nfour five six", "B": "x\n---\ny z", "C": "c"}
    for key, text in books.items():
        (tmp_path / "archives" / f"{key}.txt").write_text(text)
    assert build_files_pipeline(tmp_path).run_sync().ok
    before = len(runs(tmp_path))
    (tmp_path / "archives" / "A.txt").write_text("one two\n---\nthree 3")  # re-uploaded
    procs = [start(SCRIPT, tmp_path, "--rerun-stale") for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["ok"], out
    assert sorted(runs(tmp_path)[before:]) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
        ("unpack", "A"),
    ]
    assert (tmp_path / "reports" / "A.md").read_text() == "A/p1 2\nA/p2 2\n"
    assert (tmp_path / "reports" / "B.md").read_text() == "B/p1 1\nB/p2 2\n"
    assert sorted(p.name for p in (tmp_path / "stats" / "A").iterdir()) == ["p1.yaml", "p2.yaml"]
    assert not (tmp_path / "pages" / "A" / "p3.txt").exists()
    status = asyncio.run(build_files_pipeline(tmp_path).status())
    assert all(s["stale"] == [] for s in status.values()), status
    for task in ("unpack", "page_stats", "report"):
        assert not list((tmp_path / "state" / task / "live").rglob("*.yaml"))


def test_a_scheduler_killed_while_redoing_the_archive_leaves_the_cascade_to_the_next_run(
    tmp_path: Path,
) -> None:
    (tmp_path / "archives").mkdir()
    for key, text in {"A": "one\n---\ntwo two\n---\nthree", "B": "b"}.items():
        (tmp_path / "archives" / f"{key}.txt").write_text(text)
    assert build_files_pipeline(tmp_path).run_sync().ok
    (tmp_path / "archives" / "A.txt").write_text("one 1\n---\ntwo two")
    hold = tmp_path / "hold-A"
    hold.touch()
    before = len(runs(tmp_path))
    proc = start(SCRIPT, tmp_path, "--rerun-stale")
    kill_when(proc, tmp_path, before, ("unpack", "A"), "the redo of unpack A never started")
    hold.unlink()
    assert not (tmp_path / "state" / "unpack" / "done" / "A.yaml").exists()  # the record went first
    assert not (tmp_path / "pages" / "A").exists() or not list((tmp_path / "pages" / "A").iterdir())
    assert build_files_pipeline(tmp_path).run_sync(rerun_stale=True).ok
    assert sorted(runs(tmp_path)[before:]) == [
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
        ("unpack", "A"),
        ("unpack", "A"),  # the killed attempt, then the one that finished
    ]
    assert (tmp_path / "reports" / "A.md").read_text() == "A/p1 2\nA/p2 2\n"
    assert sorted(p.name for p in (tmp_path / "stats" / "A").iterdir()) == ["p1.yaml", "p2.yaml"]
    assert sorted(p.name for p in (tmp_path / "pages" / "A").iterdir()) == ["p1.txt", "p2.txt"]
    for task in ("unpack", "page_stats", "report"):
        assert not list((tmp_path / "state" / task / "live").rglob("*.yaml"))
    status = asyncio.run(build_files_pipeline(tmp_path).status())
    assert all(s["stale"] == [] for s in status.values()), status


# ---------------------------------------------------------------- S3
@pytest.mark.s3
async def test_on_s3_a_new_etag_cascades_through_nested_keys_and_the_same_bytes_do_not(
    client: Any,  # noqa: F811 - the fixture
    bucket: str,  # noqa: F811
    prefix: str,  # noqa: F811
) -> None:
    def blobs(name: str) -> BlobRepository:
        return S3BucketRepository(client, bucket, f"{prefix}{name}/", ".txt")

    archives = Archives(blobs, lambda name: MemoryMetadataRepository())
    a, b = "books/Été 1", "books/b 2"
    await archives.fill({a: "one two|three|four", b: "x|y z"})
    assert len(await archives.run()) == 2 + 5 + 2
    await archives.fill({b: "x|y z"})  # uploaded again, the same bytes: the same ETag
    assert await archives.stale() == NOTHING
    await archives.fill({a: "one two|three 3"})  # a new ETag; the first page's bytes stay the same
    up = [UPSTREAM_STALE]
    assert await archives.stale() == {
        "unpack": {a: ["input"]},
        "page_stats": {f"{a}/p{i}": up for i in (1, 2, 3)},
        "report": {a: up},
    }
    assert await archives.run(rerun_stale=True) == [
        ("page_stats", f"{a}/p1"),
        ("page_stats", f"{a}/p2"),
        ("report", a),
        ("unpack", a),
    ]
    assert await archives.report_text(a) == f"{a}/p1=2 {a}/p2=2"
    assert await archives.pages.keys() == {f"{a}/p1", f"{a}/p2", f"{b}/p1", f"{b}/p2"}
    assert await archives.stats.keys() == {f"{a}/p1", f"{a}/p2", f"{b}/p1", f"{b}/p2"}
    assert await archives.stale() == NOTHING


async def test_an_orphan_two_stages_down_is_removed_once_the_stage_above_removed_its_output() -> None:
    archives = Archives(lambda name: MemoryBlobRepository(), lambda name: MemoryMetadataRepository())
    doubled = MemoryMetadataRepository()

    async def double(key: str, stats: MetadataRepository, doubled: MetadataRepository) -> None:
        archives.calls.append(("double", key))
        await doubled.put(key, 2 * await stats.get(key))

    twice = FunctionTask("double", double, inputs={"stats": archives.stats}, outputs={"doubled": doubled})
    archives.pipeline = Pipeline([archives.unpack, archives.page_stats, twice, archives.report])
    await archives.fill({"A": "a|b b|c"})
    await archives.run()
    await archives.fill({"A": "a a|b b"})
    assert await archives.run(rerun_stale=True) == [
        ("double", "A/p1"),
        ("double", "A/p2"),
        ("page_stats", "A/p1"),
        ("page_stats", "A/p2"),
        ("report", "A"),
        ("unpack", "A"),
    ]
    assert await doubled.keys() == {"A/p1", "A/p2"} and await doubled.get("A/p1") == 4
    assert await twice.done.keys() == {"A/p1", "A/p2"}
    assert (await archives.pipeline.status())["double"]["stale"] == []
