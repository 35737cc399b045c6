"""Reading a pipeline file: YAML into plain values, keeping where each value was written.

PyYAML's composer gives a node tree with a start mark (line, column) per node; the values
are built from the nodes here, with the safe loader's scalar rules, and every path in the
document (a tuple of mapping keys and list indexes) is mapped to the mark of its value, and
of its key for mapping entries, so that an error can name the line and column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import PipelineFileError

__all__ = ("Document", "Path_", "read_document", "format_path")

#: a place in the document: mapping keys and list indexes from the top
Path_ = tuple[str | int, ...]


def format_path(path: Path_) -> str:
    """``("tasks", "resize", "retry", "backoff")`` -> ``tasks.resize.retry.backoff``;
    list indexes as ``[0]``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + part
    return text


@dataclass
class Document:
    """The values of a pipeline file and where each was written."""

    file: str
    values: dict[str, Any]
    #: path -> (line, column) of the value, 1-based
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    #: path of a mapping entry -> (line, column) of its key
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    @property
    def directory(self) -> Path:
        """The folder of the file: relative paths in it are relative to this folder."""
        return Path(self.file).resolve().parent

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """The line and column of ``path`` (of its key with ``key=True``), or of the closest
        enclosing value that was written."""
        if key and path in self.key_marks:
            return self.key_marks[path]
        probe = path
        while probe:
            if probe in self.marks:
                return self.marks[probe]
            probe = probe[:-1]
        return self.marks.get((), (1, 1))

    def error(self, path: Path_, problem: str, *, key: bool = False) -> PipelineFileError:
        """A one-line error at ``path``."""
        line, column = self.where(path, key=key)
        return PipelineFileError(self.file, line, column, format_path(path), " ".join(problem.split()))


#: the only tags a mapping or a list may carry (no Python objects, no sets)
_TAGS: dict[type[yaml.Node], str] = {
    yaml.MappingNode: "tag:yaml.org,2002:map",
    yaml.SequenceNode: "tag:yaml.org,2002:seq",
}


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.loader = yaml.SafeLoader("")

    def build(self, node: yaml.Node, path: Path_) -> Any:
        self.doc.marks[path] = _mark(node)
        expected = _TAGS.get(type(node))
        if expected is not None and node.tag != expected:
            raise self.doc.error(
                path, f"the YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed here"
            )
        if isinstance(node, yaml.MappingNode):
            if node.tag == "tag:yaml.org,2002:merge" or any(
                k.tag == "tag:yaml.org,2002:merge" for k, _ in node.value
            ):
                raise self.doc.error(path, "merge keys (<<) are not supported: write the entries out")
            result: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.doc.error(path, "expected a plain key, found a mapping or a list as key")
                key = str(self.loader.construct_scalar(key_node))
                child = (*path, key)
                self.doc.key_marks[child] = _mark(key_node)
                if key in result:
                    raise self.doc.error(child, f"the key {key!r} is given twice", key=True)
                result[key] = self.build(value_node, child)
            return result
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as exc:
            raise self.doc.error(path, f"cannot read this value: {exc.problem}") from exc


def read_document(file: str | os.PathLike[str]) -> Document:
    """Parse ``file`` into a :class:`Document` (a :class:`~pydatatask.errors.PipelineFileError`
    naming the line and column when it is not YAML, or not a mapping at the top)."""
    name = os.fspath(file)
    try:
        text = Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise PipelineFileError(name, 1, 1, "", f"cannot read the file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise PipelineFileError(name, 1, 1, "", "the file is not UTF-8 text") from exc
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = " ".join(f"{exc.context or ''} {exc.problem or ''}".split())
        raise PipelineFileError(name, line, column, "", f"not valid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise PipelineFileError(name, 1, 1, "", f"not valid YAML: {' '.join(str(exc).split())}") from exc
    doc = Document(name, {})
    if node is None:
        raise PipelineFileError(name, 1, 1, "", "the file is empty: expected a mapping with tasks")
    if not isinstance(node, yaml.MappingNode):
        line, column = _mark(node)
        raise PipelineFileError(name, line, column, "", "expected a mapping at the top of the file")
    doc.values = _Builder(doc).build(node, ())
    return doc
