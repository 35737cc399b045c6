"""``.. pipeline-schema::``: the reference of pipeline files, generated at build time from
the JSON Schema shipped in the package (``pydatatask/config/schema.json``), so the page
never drifts from what ``pydatatask validate`` checks."""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

from pydatatask.config._schema import ENVIRONMENT_NUMBER

SECTIONS = (
    ("resources", "resource", "Resources"),
    ("repositories", "repository", "Repositories"),
    ("executors", "executor", "Executors"),
    ("tasks", "task", "Tasks"),
)


def _type(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in spec:
        name = spec["$ref"].rsplit("/", 1)[1]
        target = defs[name]
        if "properties" in target or "oneOf" in target:
            return f"*{name.replace('_', ' ')}*"
        return _type(target, defs)
    if "allOf" in spec:
        return _type(spec["allOf"][0], defs)
    if "const" in spec:
        return f"``{spec['const']}``"
    if "enum" in spec:
        return " | ".join(f"``{v}``" for v in spec["enum"])
    if "oneOf" in spec:
        return " or ".join(_type(s, defs) for s in spec["oneOf"])
    kind = spec.get("type", "any")
    if isinstance(kind, list):
        if spec.get("pattern") == ENVIRONMENT_NUMBER:  # a number, or "${VAR}" holding one
            return " or ".join([*(k for k in kind if k != "string"), '``"${VAR}"``'])
        return " or ".join(kind)
    if kind == "array":
        return f"list of {_type(spec.get('items', {}), defs)}"
    if kind == "object" and isinstance(spec.get("additionalProperties"), dict):
        return f"mapping of name -> {_type(spec['additionalProperties'], defs)}"
    if kind == "string" and "pattern" in spec:
        return "string (" + spec.get("description", spec["pattern"]).split(",")[0].split(":")[0] + ")"
    return str(kind)


def _description(spec: dict[str, Any], defs: dict[str, Any]) -> str:
    text = spec.get("description", "")
    if not text and "$ref" in spec:
        target = defs[spec["$ref"].rsplit("/", 1)[1]]
        if "properties" not in target:
            text = target.get("description", "")
    return " ".join(text.split()).replace("*", r"\*").replace("|", r"\|")


def _table(spec: dict[str, Any], defs: dict[str, Any]) -> list[str]:
    required = set(spec.get("required", ()))
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 20 30 50",
        "",
        "   * - key",
        "     - value",
        "     - meaning",
    ]
    for name, field in spec.get("properties", {}).items():
        lines += [
            f"   * - ``{name}``" + (" (required)" if name in required else ""),
            f"     - {_type(field, defs)}",
            f"     - {_description(field, defs) or '-'}",
        ]
    return [*lines, ""]


def reference(schema: dict[str, Any]) -> list[str]:
    """The reST of the reference."""
    defs = schema["$defs"]
    lines = ["The top level", "-------------", "", *_table(schema, defs)]
    for _section, kind_def, title in SECTIONS:
        lines += [title, "-" * len(title), ""]
        kinds = defs[kind_def]["allOf"]
        for branch in kinds:
            kind = branch["if"]["properties"]["kind"]["const"]
            target = defs[branch["then"]["$ref"].rsplit("/", 1)[1]]
            heading = f"``kind: {kind}``"
            lines += [heading, "~" * len(heading), "", _description(target, defs), "", *_table(target, defs)]
    for name in ("retry", "output", "link", "hook", "pipeline"):
        spec = defs[name]
        title = name.replace("_", " ")
        lines += [f"*{title}*", "-" * (len(title) + 2), "", _description(spec, defs), ""]
        if "properties" in spec:
            lines += _table(spec, defs)
        for branch in spec.get("oneOf", ()):
            if "properties" in branch:
                lines += ["or a mapping:", "", *_table(branch, defs)]
    return lines


class PipelineSchema(SphinxDirective):
    """Renders the reference of the shipped schema."""

    def run(self) -> list[nodes.Node]:
        from pydatatask.config import pipeline_schema

        content = StringList(reference(pipeline_schema()), source="pydatatask/config/schema.json")
        container = nodes.section()
        container.document = self.state.document
        nested_parse_with_titles(self.state, content, container)
        return list(container.children)


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("pipeline-schema", PipelineSchema)
    return {"parallel_read_safe": True}
