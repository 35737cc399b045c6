from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pydatatask import InvalidKeyError, is_valid_key, validate_key
from pydatatask.keys import MAX_KEY_BYTES, filter_valid_keys, key_segments
from pydatatask.testing import invalid_keys, long_key, odd_valid_keys, path_keys


@pytest.mark.parametrize("key", odd_valid_keys() + path_keys())
def test_valid(key: str) -> None:
    assert is_valid_key(key)
    assert validate_key(key) == key
    assert filter_valid_keys([key]) == ({key}, [])


@pytest.mark.parametrize("key", invalid_keys(), ids=ascii)
def test_invalid(key: object) -> None:
    assert not is_valid_key(key)
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    message = str(info.value)
    assert "\n" not in message
    shown = repr(key)
    assert shown in message if len(shown) <= 120 else shown[:100] in message
    assert isinstance(info.value, ValueError)
    if isinstance(key, str):
        assert filter_valid_keys([key]) == (set(), [key])


def test_reasons() -> None:
    with pytest.raises(InvalidKeyError, match="may not be empty"):
        validate_key("")
    with pytest.raises(InvalidKeyError, match="at most 1024 bytes in UTF-8, this one has 1025"):
        validate_key("x" * 1025)
    with pytest.raises(InvalidKeyError, match="this one has 1026"):
        validate_key("\u00e9" * 513)
    with pytest.raises(InvalidKeyError, match="a '..' segment"):
        validate_key("../etc")
    with pytest.raises(InvalidKeyError, match="a '.' segment"):
        validate_key("a/./b")
    with pytest.raises(InvalidKeyError, match="empty segment"):
        validate_key("a//b")
    with pytest.raises(InvalidKeyError, match="start with '/'"):
        validate_key("/etc/passwd")
    with pytest.raises(InvalidKeyError, match="end with '/'"):
        validate_key("dir/")
    with pytest.raises(InvalidKeyError, match=r"control character \(U\+0000\)"):
        validate_key("nul\0")
    with pytest.raises(InvalidKeyError, match=r"LINE SEPARATOR \(U\+2028\)"):
        validate_key("a\u2028b")
    with pytest.raises(InvalidKeyError, match="not int"):
        validate_key(3)


def test_nfd_is_refused_with_its_nfc_form() -> None:
    nfd = unicodedata.normalize("NFD", "corpus/\u00c9luard")
    assert nfd != "corpus/\u00c9luard"
    with pytest.raises(InvalidKeyError) as info:
        validate_key(nfd)
    assert "NFC" in str(info.value)
    assert ascii("corpus/\u00c9luard") in str(info.value)
    assert is_valid_key("corpus/\u00c9luard")


def test_long_keys_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key("y" * 5000)
    assert len(str(info.value)) < 300
    assert info.value.key == "y" * 5000


def test_limit_is_in_bytes() -> None:
    assert len(long_key().encode()) == MAX_KEY_BYTES
    assert is_valid_key(long_key())
    assert not is_valid_key(long_key() + "x")
    assert is_valid_key("\u00e9" * 512)


def test_segments() -> None:
    assert key_segments("images/2024/IMG 1.jpg") == ["images", "2024", "IMG 1.jpg"]
    with pytest.raises(InvalidKeyError):
        key_segments("a//b")


def _reference(key: str) -> bool:
    """The key rule, written out as plainly as possible."""
    return (
        key != ""
        and all(c.isprintable() for c in key)
        and len(key.encode("utf-8")) <= MAX_KEY_BYTES
        and unicodedata.is_normalized("NFC", key)
        and all(seg not in ("", ".", "..") for seg in key.split("/"))
    )


_pieces = st.sampled_from(
    [
        "a",
        "Z",
        "0",
        ".",
        "..",
        "/",
        "//",
        " ",
        "-",
        "_",
        "\0",
        "\n",
        "\t",
        "\x7f",
        "\u00e9",
        "e\u0301",
        "\u200b",
        "\u00a0",
        "\U0001f600",
        "$(x)",
        "{{ x }}",
        "\\",
        "%2F",
        "+",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(_pieces, min_size=1, max_size=10).map("".join), st.text(max_size=40)))
def test_rule_matches_its_statement(key: str) -> None:
    assert is_valid_key(key) == _reference(key)
    assert (key in filter_valid_keys([key])[0]) == _reference(key)
    if _reference(key):
        assert validate_key(key) == key
    else:
        with pytest.raises(InvalidKeyError):
            validate_key(key)


_plain_names = st.lists(
    st.sampled_from(["a", "Z", "0", "-", "_", " ", "a.b", "x/y"]), min_size=1, max_size=6
).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_plain_names, min_size=9, max_size=30),
    st.lists(st.lists(_pieces, min_size=0, max_size=8).map("".join), max_size=3),
)
def test_a_listing_is_split_as_each_name_alone(plain: list[str], odd: list[str]) -> None:
    # a listing of many names is checked at once in its common case (printable ASCII):
    # any odd name among them must still be told apart exactly as on its own
    names = plain + odd
    good, bad = filter_valid_keys(names)
    assert good == {n for n in names if _reference(n)}
    assert sorted(bad) == sorted(n for n in names if not _reference(n))


@pytest.mark.parametrize("name", [k for k in invalid_keys() if isinstance(k, str)] + ["x" * 1025], ids=ascii)
def test_an_invalid_name_among_many_valid_ones_is_rejected(name: str) -> None:
    names = [f"k{i:04d}" for i in range(20)]
    assert filter_valid_keys([*names, name]) == (set(names), [name])
    assert filter_valid_keys([name, *names]) == (set(names), [name])


# ---------------------------------------------------------------- names derived from path keys
_DNS_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_VALUE = r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?"


def test_pod_names_of_path_keys_are_dns_labels_and_distinct() -> None:
    import re

    from pydatatask.executor.pods import label_value, pod_name

    keys = ["a/b c/\u00e9", "a/b_c/\u00e9", "a/b-c/\u00e9", "a/b c/e", "A/B C/\u00c9", long_key()]
    names = [pod_name("t", k) for k in keys]
    for name in names:
        assert re.fullmatch(_DNS_LABEL, name), name
    assert len(set(names)) == len(names)
    assert pod_name("t", "a/b c/\u00e9") != pod_name("t", "a/b_c/\u00e9")
    labels = [label_value(k) for k in keys]
    for label in labels:
        assert re.fullmatch(_LABEL_VALUE, label), label
    assert len(set(labels)) == len(labels)


def test_commands_quote_path_keys() -> None:
    import shlex

    from pydatatask.task.templates import render_command

    for key in path_keys():
        command = render_command("process {{ key }} --out {{ key }}.txt", {"key": key})
        assert shlex.split(command) == ["process", key, "--out", key + ".txt"]
