"""Job records kept by an in-memory ``done`` (``put_now``): small, and read back exactly."""

from __future__ import annotations

import math
import time
import tracemalloc
from typing import Any

from pydatatask import MemoryMetadataRepository
from pydatatask.repository.listing import cached_versions, listing_scope
from pydatatask.task.records import make_record, utcnow_iso


def _record(task: str, i: int, **fields: Any) -> dict[str, Any]:
    start = 1_796_170_000.0 + i * 0.013
    extra = {"version": None, "inputs": {"src": "0"}, "upstream": {"src": utcnow_iso(start - 0.5)}}
    extra.update(fields)
    return make_record(
        task=task,
        key=f"k{i:07d}",
        success=True,
        attempts=1,
        start=start,
        end=start + 4e-5,
        runner="in-process",
        extra=extra,
    )


def _same(a: Any, b: Any) -> bool:
    """Equal, with the same types and the same order of fields all the way down."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b) or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


async def test_records_read_back_field_for_field_whatever_differs_between_them() -> None:
    repo = MemoryMetadataRepository()
    records = [_record("count", i) for i in range(50)]
    # then records that differ from the first ones where those were all alike
    records += [
        _record("count", 50, attempts=3),
        _record("count", 51, success=1),  # equal to True, not the same value
        _record("count", 52, exit_code=0.0),
        _record("count", 53, error={"type": "ValueError", "message": "bad", "traceback": "..."}),
        _record("count", 54, host="elsewhere"),
        _record("count", 55, host="".join(["v", "m2"])),  # an equal text of another object
        _record("count", 56, start_time="2026-12-02T00:00:00.000001+01:00"),
        _record("count", 57, start_time="0999-01-01T00:00:00.000000+00:00"),
        _record("count", 58, start_time="2026-12-02T00:00:00.00000١+00:00"),  # an Arabic digit
        _record("count", 59, start_time="2026-13-02T00:00:00.000000+00:00"),
        _record("count", 60, start_time=1_796_170_000.5),
        _record("count", 61, inputs={"src": None}),
        _record("count", 62, inputs={"src": "0", "other": [1, {"x": (1, 2)}]}),
        _record("count", 63, inputs={}),
        _record("count", 64, upstream={"src": -0.0}),
        _record("count", 65, duration=math.nan),
        _record("count", 66, version=("a", "tuple")),
        _record("count", 67, extra_field=[]),
        _record("other", 68),
    ]
    records += [_record("count", i, attempts=i) for i in range(69, 200)]  # more variants than kept
    for record in records:
        repo.put_now(record["key"], record)
    for record in records:
        got = await repo.get(record["key"])
        assert _same(got, record), (record, got)
        assert got is not record
    many = await repo.get_many([r["key"] for r in records])
    assert all(_same(many[r["key"]], r) for r in records)


async def test_a_record_read_is_a_copy_of_its_own() -> None:
    repo = MemoryMetadataRepository()
    for i in range(5):
        repo.put_now(f"k{i:07d}", _record("count", i))
    first = await repo.get("k0000004")
    first["inputs"]["src"] = "changed"
    first["upstream"].clear()
    first["task"] = "changed"
    again = await repo.get("k0000004")
    assert again == _record("count", 4)
    assert await repo.get("k0000003") == _record("count", 3)


async def test_a_record_kept_takes_well_under_the_dict_it_was() -> None:
    repo = MemoryMetadataRepository()
    records = [_record("count", i) for i in range(3000)]
    for record in records[:10]:  # the field names learnt
        repo.put_now(record["key"], record)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for record in records[10:]:
            repo.put_now(record["key"], record)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # the record's key, end time and upstream time are the caller's (shared); what the
    # store adds per record: its tuple, a number for its start time, the duration, the
    # upstream dict's own values and the store's dict entry (about 230 bytes; a dict of
    # the record's packed fields took over 500). The bound leaves room for what else the
    # process allocates meanwhile (after other tests in the same process: 308 seen)
    assert used / len(records[10:]) < 400


async def test_the_versions_of_two_listings_are_the_same_texts() -> None:
    repo = MemoryMetadataRepository()
    with listing_scope():
        assert await cached_versions(repo) == {}  # versions counted from now on
    for i in range(100):
        await repo.put(f"k{i}", {"n": i})
    with listing_scope():
        first = await cached_versions(repo)
    await repo.put("k0", {"n": "again"})
    with listing_scope():
        second = await cached_versions(repo)
    assert first is not second and first["k0"] != second["k0"]
    # a version is made once, when its key is written: not again by every listing
    assert all(first[k] is second[k] for k in first if k != "k0")
    assert len(set(second.values())) == 100


async def test_start_times_of_any_second_read_back() -> None:
    repo = MemoryMetadataRepository()
    now = time.time()
    texts = [utcnow_iso(ts) for ts in (0.0, 951_782_400.5, now, now + 86_400 * 365 * 50, 8_000_000_000.25)]
    texts += [
        "1969-12-31T23:59:59.999999+00:00",
        "0001-01-01T00:00:00.000000+00:00",
        "2300-01-01T00:00:00.000001+00:00",  # beyond what a float holds to the microsecond
        "9999-12-31T23:59:59.999999+00:00",
    ]
    records = [_record("count", i) for i in range(5)] + [
        _record("count", 5 + i, start_time=text) for i, text in enumerate(texts)
    ]
    for record in records:
        repo.put_now(record["key"], record)
    for record in records:
        assert _same(await repo.get(record["key"]), record)


async def test_a_record_stored_from_its_key_and_times_reads_back_as_if_put() -> None:
    """``maker_now``: a record stored from the fields that differ (its key, times, input
    versions and times) reads back as :meth:`put_now` of the whole dict would, field for field."""
    names = ("key", "start_time", "end_time", "duration", "inputs", "upstream")
    made = MemoryMetadataRepository()
    whole = MemoryMetadataRepository()
    # (a field of their own: the fields shared are learnt per field names, in the process)
    records = [_record("t", i, inputs={"src": str(i)}, made_from_fields=1) for i in range(40)]
    for r in records[:3]:
        made.put_now(r["key"], r)
    put = made.maker_now(records[2]["key"], names)
    assert put is not None
    for i, r in enumerate(records):
        whole.put_now(r["key"], r)
        if i < 3:
            continue
        start: Any = r["start_time"]
        if i % 2:  # the start as whole microseconds, as the job lifecycle hands it over
            start = round((1_796_170_000.0 + i * 0.013) * 1_000_000)
        assert put(r["key"], (r["key"], start, r["end_time"], r["duration"], r["inputs"], r["upstream"]))
    for r in records:
        got = await made.get(r["key"])
        assert _same(got, await whole.get(r["key"])), (got, r)
        assert _same(got, r)
        assert made.field_now(r["key"], "start_time") == r["start_time"]
    assert set(made._data) == set(whole._data)


async def test_a_record_that_does_not_pack_from_its_fields_is_left_to_the_caller() -> None:
    """``maker_now`` is None for a value that is not packed or a field records share, and
    its ``put`` stores nothing (False) for a value it cannot keep so."""
    repo = MemoryMetadataRepository()
    records = [_record("t", i, left_to_the_caller=1) for i in range(3)]
    for r in records:
        repo.put_now(r["key"], r)
    assert repo.maker_now(records[0]["key"], ("key",)) is None  # kept plain (the first two)
    assert repo.maker_now(records[2]["key"], ("key", "task")) is None  # shared by all of them
    assert repo.maker_now("absent", ("key",)) is None
    put = repo.maker_now(records[2]["key"], ("key", "start_time"))
    assert put is not None
    assert not put("k9", ("k9", ["a list"]))
    assert not put("k9", ("k9", "not a time"))
    assert not put("k9", ("k9", 10**30))
    assert not repo.holds("k9")
    assert put("k9", ("k9", records[1]["start_time"]))
    got = await repo.get("k9")
    assert got == {**records[2], "key": "k9", "start_time": records[1]["start_time"]}
