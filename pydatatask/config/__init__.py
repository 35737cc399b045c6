"""Pipelines declared in a YAML file (see ``docs/pipeline-files.rst``).

:func:`load_pipeline` reads a file, checks it against the JSON Schema shipped with the
package (:func:`pipeline_schema`), puts in the environment variables it names (a number
written ``"${N}"`` is converted, then checked as the schema says) and builds
the :class:`~pydatatask.pipeline.pipeline.Pipeline` it describes; :func:`validate_file` does the
same and also renders every task's templates for a sample key. Every error is a
:class:`~pydatatask.errors.PipelineFileError`, one line:
``file:line:column: path.in.document: what is wrong``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ._builder import Builder
from ._document import read_document
from ._environment import add_import_path, interpolate
from ._numbers import put_numbers
from ._schema import check, schema

if TYPE_CHECKING:
    from ..pipeline import Pipeline

__all__ = ("load_pipeline", "validate_file", "pipeline_schema", "SAMPLE_KEY")

#: the key :func:`validate_file` renders templates for
SAMPLE_KEY = "sample-key"


def pipeline_schema() -> dict[str, Any]:
    """The JSON Schema of pipeline files (a copy)."""
    import copy

    return copy.deepcopy(schema())


def _builder(file: str | os.PathLike[str], environ: Mapping[str, str] | None) -> Builder:
    doc = read_document(file)
    numbers = check(doc)
    env: Mapping[str, str] = os.environ if environ is None else environ
    values, secrets = interpolate(doc, env)
    put_numbers(doc, values, numbers, env)
    add_import_path([str(doc.directory / p) for p in values.get("python_path", [])])
    return Builder(doc, values, secrets)


def load_pipeline(file: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Pipeline:
    """The pipeline declared in ``file``.

    :param environ: where ``${ENV_VAR}`` are read (default :data:`os.environ`).
    :raises ~pydatatask.errors.PipelineFileError: naming the file, line, column and the
        path in the document of the first problem.
    """
    pipeline: Pipeline = _builder(file, environ).pipeline()
    return pipeline


def validate_file(file: str | os.PathLike[str], *, environ: Mapping[str, str] | None = None) -> Pipeline:
    """Check ``file`` as :func:`load_pipeline` does, then render the command, script or
    manifest of every task for the key :data:`SAMPLE_KEY`; return the pipeline."""
    builder = _builder(file, environ)
    pipeline: Pipeline = builder.pipeline()
    for name, task in pipeline.tasks.items():
        spec = builder.values["tasks"][name]
        field = next(
            (f for f in ("command", "script", "script_file", "manifest", "manifest_file") if f in spec), None
        )
        if field is None:
            continue
        try:
            _render(task)
        except ConfigurationError as exc:
            raise builder.error(
                ("tasks", name, field), f"{exc} (rendered for the key {SAMPLE_KEY!r})"
            ) from exc
    return pipeline


def _render(task: Any) -> None:
    from ..task.templates import job_context, render_command

    if hasattr(task, "render"):  # a pod task
        task.render(SAMPLE_KEY)
        return
    context = job_context(task, SAMPLE_KEY, task.params)
    context.update(attempt=1, job_dir="/tmp/job", host=task.hosts[0].name)
    render_command(task.template, context)
