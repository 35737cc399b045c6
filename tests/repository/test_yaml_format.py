"""The YAML writer: block style for flat records, exact round trips for everything."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pydatatask.repository.serialized import yaml_dumps, yaml_loads

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text()
    | st.sampled_from(
        ["yes", "No", "null", "~", "1.5", "0x1f", "1e5", "2026-11-23", "a: b", "- x", "#", "", " "]
    )
)
names = st.text(min_size=1) | st.sampled_from(["true", "on", "key", "a.b", "_x"])


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(names, scalars, max_size=8))
def test_flat_mappings_round_trip(value: dict[str, Any]) -> None:
    assert yaml_loads(yaml_dumps(value)) == value


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
    )
)
def test_any_value_round_trips(value: Any) -> None:
    assert yaml_loads(yaml_dumps(value)) == value


def test_records_are_plain_block_yaml() -> None:
    record = {
        "task": "count",
        "key": "moby-dick_v2.txt",
        "success": True,
        "attempts": 1,
        "start_time": "2026-11-23T01:02:03.123456+00:00",
        "duration": 0.25,
        "exit_code": None,
    }
    text = yaml_dumps(record).decode()
    assert text == (
        "task: count\nkey: moby-dick_v2.txt\nsuccess: true\nattempts: 1\n"
        'start_time: "2026-11-23T01:02:03.123456+00:00"\nduration: 0.25\nexit_code: null\n'
    )
    assert yaml.safe_load(text) == record


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        names,
        scalars | st.dictionaries(names, scalars, max_size=4) | st.lists(scalars, max_size=4),
        max_size=6,
    )
)
def test_records_with_one_nested_level_round_trip(value: dict[str, Any]) -> None:
    assert yaml_loads(yaml_dumps(value)) == value


def test_a_record_with_input_versions_is_plain_block_yaml() -> None:
    record = {
        "key": "k1",
        "version": None,
        "inputs": {"src": "1532020-17-1796127318125248498", "etag": '"9b2cf535f27731c974343645a3985328"'},
        "upstream": {},
        "outputs": ["mid"],
        "wrote": [],
    }
    text = yaml_dumps(record).decode()
    assert text == (
        "key: k1\nversion: null\ninputs:\n"
        '  src: "1532020-17-1796127318125248498"\n'
        '  etag: "\\"9b2cf535f27731c974343645a3985328\\""\n'
        "upstream: {}\noutputs:\n- mid\nwrote: []\n"
    )
    assert yaml.safe_load(text) == record
