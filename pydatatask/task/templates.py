"""Rendering commands and manifests from Jinja2 templates, safely.

Every ``{{ value }}`` in a **command** template is shell-quoted on the way out
(:func:`shlex.quote`), so a key like ``x;rm -rf ~`` or ``$(reboot)`` is one inert word.
In a **YAML** template (pod manifests) every value is emitted as a JSON string/number,
which YAML reads back verbatim. ``{{ value | raw }}`` opts out for trusted text.
Templates use ``StrictUndefined``: a misspelt name is an error, not an empty string.

The context of a job (:func:`job_context`)::

    key          the job key
    task         the task name
    params       the task's user parameters (``params=`` of the task)
    links        {link name: info}; each link is also available by its own name
    <link name>  info about the link for this key, e.g. for a FileRepository
                 {"kind": "file", "path": "/data/docs/k.txt", "root": "/data/docs", "exists": ...};
                 through a view, that of the repository (and key) the view reads from
    members      (fan-in tasks only) the members of the group, sorted, each
                 {"key": member key, "links": {input link name: info for the member}}
    keys         every key of the job: ``[key]``, or the keys of a batch (``batch=N``), in order
    batch        one entry per key of ``keys``: {"key": k, "links": {...}, <link name>: info
                 for k, ...}; in a batch ``key`` and the links' own names are the first key's

In a shell command a list is quoted word by word (``{{ keys }}`` is one word per key) and
``{{ k | result_line }}`` / ``{{ k | result_line(false, "why") }}`` is the quoted JSON line
a batched command writes to ``$PDT_RESULTS`` for key ``k`` (see
:mod:`pydatatask.task.batch_results`).

Secrets never go into the context: they reach processes through their environment.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..repository.base import Repository
from ..repository.filesystem import DirectoryRepository, FileRepository
from ..repository.view import read_source

if TYPE_CHECKING:
    import jinja2

__all__ = ("raw", "render_command", "render_yaml", "job_context", "batch_context", "link_info", "result_line")


class _Raw(str):
    """A value that the finaliser passes through unquoted."""


def raw(value: Any) -> _Raw:
    """Mark ``value`` as trusted: inserted without quoting."""
    return _Raw(value)


def result_line(key: Any, ok: bool = True, error: Any = None) -> str:
    """The JSON line that reports ``key`` of a batch as ok or failed (with ``error``), as
    read from ``$PDT_RESULTS`` or a pod's log (see :mod:`pydatatask.task.batch_results`)."""
    entry: dict[str, Any] = {"key": str(key), "ok": bool(ok)}
    if error is not None:
        entry["error"] = str(error)
    return json.dumps(entry, ensure_ascii=False)


def _shell_finalize(value: Any) -> Any:
    if isinstance(value, _Raw):
        return str(value)
    if value is None:
        return "''"
    if isinstance(value, (list, tuple)):
        return " ".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")


def _yaml_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _yaml_finalize(value: Any) -> Any:
    if isinstance(value, _Raw):
        return str(value)
    if isinstance(value, bool) or value is None or isinstance(value, (int, float)):
        return json.dumps(value)
    text = json.dumps(value if isinstance(value, (list, dict)) else str(value), ensure_ascii=False)
    # JSON's ASCII escapes write a character outside the BMP as a surrogate pair, which a
    # YAML parser reads back as two lone surrogates: escape every non-ASCII or unprintable
    # character with YAML's own \uXXXX / \UXXXXXXXX escapes instead
    return _NOT_PRINTABLE_ASCII.sub(_yaml_escape, text)


@functools.cache
def _env(finalize: Any) -> jinja2.Environment:
    import jinja2  # imported on first render: `import pydatatask` stays light

    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=finalize,
    )
    env.filters["raw"] = raw
    env.filters["shquote"] = lambda v: _Raw(shlex.quote(str(v)))
    env.filters["tojson"] = lambda v: _Raw(json.dumps(v))
    # a result line, quoted for the environment it is rendered in
    env.filters["result_line"] = lambda k, ok=True, error=None: _Raw(finalize(result_line(k, ok, error)))
    return env


@functools.lru_cache(maxsize=256)
def _compile(env: jinja2.Environment, template: str) -> jinja2.Template:
    """``env.from_string(template)``, compiled once per template text and environment."""
    return env.from_string(template)


def _render(env: jinja2.Environment, template: str, context: dict[str, Any], what: str) -> str:
    import jinja2

    try:
        return _compile(env, template).render(**context)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigurationError(
            f"{what} template has a syntax error at line {exc.lineno}: {exc.message}"
        ) from exc
    except jinja2.UndefinedError as exc:
        names = ", ".join(sorted(context))
        raise ConfigurationError(
            f"{what} template uses an undefined name: {exc.message} (available: {names})"
        ) from exc


def render_command(template: str, context: dict[str, Any]) -> str:
    """Render a shell command/script; every interpolated value is shell-quoted."""
    return _render(_env(_shell_finalize), template, context, "command")


def render_yaml(template: str, context: dict[str, Any]) -> str:
    """Render a YAML document (pod manifest); every interpolated value is JSON-encoded."""
    return _render(_env(_yaml_finalize), template, context, "manifest")


def link_info(repo: Repository, key: str) -> dict[str, Any]:
    """What a program needs to reach ``key`` in ``repo``: paths, bucket/object, image, ...

    Through a view, the information is that of the repository (and key) the view reads
    ``key`` from, where that is one value (a translated key names the child's key);
    ``repository`` still describes the view.
    """
    source, source_key = read_source(repo, key)
    if source is not repo:
        through = link_info(source, source_key)
        through["repository"] = repo.describe()
        return through
    info: dict[str, Any] = {"kind": type(repo).__name__, "repository": repo.describe()}
    if isinstance(repo, FileRepository):
        info.update(kind="file", path=str(repo.path(key).absolute()), root=str(repo.root.absolute()))
        return info
    if isinstance(repo, DirectoryRepository):
        info.update(kind="directory", path=str(repo.path(key).absolute()), root=str(repo.root.absolute()))
        return info
    blobs = getattr(repo, "blobs", None)
    if isinstance(blobs, Repository):  # serialized metadata over a blob store
        inner = link_info(blobs, key)
        inner["format"] = getattr(repo, "format_name", "")
        return inner
    if hasattr(repo, "bucket") and hasattr(repo, "object_name"):
        info.update(
            kind="s3",
            bucket=repo.bucket,
            prefix=getattr(repo, "prefix", ""),
            suffix=getattr(repo, "suffix", ""),
            object=repo.object_name(key),
            url=repo.url(key) if hasattr(repo, "url") else f"s3://{repo.bucket}/{repo.object_name(key)}",
            endpoint=getattr(repo, "endpoint_url", None),
        )
        return info
    if hasattr(repo, "image") and callable(repo.image):
        info.update(kind="docker", image=repo.image(key))
        return info
    for attr in ("database_name", "collection_name"):
        if hasattr(repo, attr):
            info[attr] = getattr(repo, attr)
    return info


def job_context(task: Any, key: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template context of one job of ``task`` (see the module docstring)."""
    links = {name: link_info(link.repository, key) for name, link in task.links.items()}
    context: dict[str, Any] = {
        "key": key,
        "task": task.name,
        "params": dict(params or {}),
        "links": links,
        "keys": [key],
        "batch": [_batch_entry(key, links)],
    }
    for name, info in links.items():
        if name not in context:
            context[name] = info
    if getattr(task, "group_by", None) is not None:
        inputs = [(n, lk.repository) for n, lk in task.links.items() if lk.kind == "input"]
        context["members"] = [
            {"key": m, "links": {n: link_info(repo, m) for n, repo in inputs}}
            for m in task._job_members.get(key, ())
        ]
    return context


def batch_context(task: Any, keys: list[str], params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template context of a batch of ``task`` over ``keys`` (not empty): that of the
    first key (:func:`job_context`), with ``keys`` and one ``batch`` entry per key. The
    first entry's link infos are the very dicts of ``links``: a change to one shows in
    both."""
    if not keys:
        raise ConfigurationError(f"task {task.name!r}: a batch needs at least one key")
    context = job_context(task, keys[0], params)
    entries = context["batch"]
    for key in keys[1:]:
        links = {name: link_info(link.repository, key) for name, link in task.links.items()}
        entries.append(_batch_entry(key, links))
    context["keys"] = list(keys)
    return context


def _batch_entry(key: str, links: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"key": key, "links": links}
    for name, info in links.items():
        entry.setdefault(name, info)
    return entry
