"""Regression tests for template bugs found by the hostile-input property tests."""

from __future__ import annotations

import pytest
import yaml

from pydatatask.task.templates import render_yaml


@pytest.mark.parametrize("text", ["𐀀", "emoji 😀 in a param", "mixed é \x85 \x7f \u2028 \U0010ffff"])
def test_render_yaml_keeps_characters_outside_the_bmp(text: str) -> None:
    # json.dumps(ensure_ascii=True) wrote "😀" as "\ud83d\ude00", which YAML reads back as
    # two lone surrogates: a pod manifest got a corrupted string (found by hypothesis)
    out = render_yaml("v: {{ v }}\nw: {{ w }}\n", {"v": text, "w": [text, {text: text}]})
    assert yaml.safe_load(out) == {"v": text, "w": [text, {text: text}]}
    assert out.isascii()
