from __future__ import annotations

import pytest

from pydatatask import InvalidKeyError, is_valid_key, validate_key
from pydatatask.testing import invalid_keys, odd_valid_keys


@pytest.mark.parametrize("key", odd_valid_keys())
def test_valid(key: str) -> None:
    assert is_valid_key(key)
    assert validate_key(key) == key


@pytest.mark.parametrize("key", invalid_keys(), ids=repr)
def test_invalid(key: object) -> None:
    assert not is_valid_key(key)
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    assert repr(key) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_reasons() -> None:
    with pytest.raises(InvalidKeyError, match="may not be empty"):
        validate_key("")
    with pytest.raises(InvalidKeyError, match="at most 200"):
        validate_key("x" * 201)
    with pytest.raises(InvalidKeyError, match="may not start with '.'"):
        validate_key("../etc")
    with pytest.raises(InvalidKeyError, match="'/'"):
        validate_key("a/b")
    with pytest.raises(InvalidKeyError, match="not int"):
        validate_key(3)
