"""Sphinx configuration. The docs are built with ``-W -n``: every warning, and every
cross-reference that does not resolve, fails the build (scripts/test runs it)."""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from sphinx.util.inspect import signature as evaluated_signature
from sphinx.util.inspect import stringify_signature

project = "pydatatask"
author = "the pydatatask developers"
# docs/_ext: the reference of pipeline files, generated from the schema in the package
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "pipeline_schema"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
autodoc_member_order = "bysource"
html_static_path = ["_static"]

# --- references that cannot resolve -------------------------------------------------------
#
# Names of the standard library and of third-party libraries appear in signatures and
# docstrings. Resolving them would need each project's objects.inv, and the build runs
# without network access (intersphinx could only use a local copy, which Debian ships for
# the standard library alone: httpx, botocore, pymongo, kubernetes... would still be left).
# So they are ignored, one pattern per external module (and its submodules), never a
# catch-all: a reference to a pydatatask name that does not resolve still fails the build,
# and so does one to an external module not listed here (add it when a signature or a
# docstring first names it).
_EXTERNAL_MODULES = (
    "abc",
    "argparse",
    "asyncio",
    "_asyncio",  # asyncio.Future's real module, as signatures name it
    "collections",
    "concurrent.futures",
    "contextlib",
    "datetime",
    "enum",
    "os",
    "pathlib",
    "random",
    "shlex",
    "sys",
    "time",
    "httpx",
    "logging",
    "aiohttp",
)
nitpick_ignore_regex = [(r"py:.*", re.escape(module) + r"(\..+)?") for module in _EXTERNAL_MODULES]

nitpick_ignore = [
    # pymongo's collection class, named in a TYPE_CHECKING-only annotation of
    # repository/mongo.py, so Sphinx sees the bare name
    ("py:class", "AsyncCollection"),
    # aiohttp's application, as web/app.py's signature names it (``from aiohttp import web``)
    ("py:class", "web.Application"),
    # type variables: Sphinx renders them as references, but a TypeVar has no page
    ("py:class", "pydatatask.backoff.T"),
    ("py:class", "pydatatask.session.T"),
    ("py:obj", "pydatatask.session.T"),
    ("py:class", "pydatatask.executor.pods.T"),
    # private classes that public signatures or :show-inheritance: name; they are not part
    # of the API (what users rely on is documented on the public class)
    ("py:class", "pydatatask.repository.base._ReadContext"),
    ("py:class", "pydatatask.repository.base._WriteContext"),
    ("py:class", "pydatatask.repository.combinators._FirstHolder"),
    ("py:class", "pydatatask.repository.combinators._FirstHolderMetadata"),
    ("py:class", "pydatatask.repository.filesystem._LocalRoot"),
    ("py:class", "pydatatask.repository.memory._DictKeys"),
    ("py:class", "pydatatask.repository.s3._metadata._S3MetadataMixin"),
    ("py:class", "pydatatask.repository._filebundles.FileBundles"),
    ("py:class", "pydatatask.executor.pool._Gate"),
    ("py:class", "pydatatask.executor.pool._DaskStarted"),
    ("py:class", "pydatatask.executor.pool._DaskStartEvents"),
    ("py:class", "pydatatask.task.templates._Raw"),
    ("py:class", "_Failed"),  # execute(resume=...): a failed first call of execute_direct
    # the token of a context variable (the standard library documents no page for it)
    ("py:class", "contextvars.Token"),
]


# --- dataclass signatures -----------------------------------------------------------------
#
# A dataclass field with ``default_factory`` shows up in the signature as ``=<factory>``,
# which is not Python: Sphinx then cannot parse the signature, splits it at every comma
# (``dict[str, Any]`` becomes a reference to ``dict[str``) and shows it unformatted. Show
# the factory call instead (``extra: dict[str, Any] = dict()``), which is also what it means.
class _FactoryCall:
    def __init__(self, factory: Any) -> None:
        self.text = f"{getattr(factory, '__qualname__', 'factory')}()"

    def __repr__(self) -> str:
        return self.text


def _dataclass_signature(
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    if (
        what != "class"
        or not isinstance(obj, type)
        or not dataclasses.is_dataclass(obj)
        or signature is None
        or "<factory>" not in signature
    ):
        return None
    factories = {
        field.name: field.default_factory
        for field in dataclasses.fields(obj)
        if field.default_factory is not dataclasses.MISSING
    }
    # Sphinx's signature() evaluates string annotations, as autodoc does (inspect's does not)
    sig = evaluated_signature(obj, type_aliases=app.config.autodoc_type_aliases)
    params = [
        param.replace(default=_FactoryCall(factories[param.name])) if param.name in factories else param
        for param in sig.parameters.values()
    ]
    unqualified = app.config.autodoc_typehints_format == "short"
    text = stringify_signature(
        sig.replace(parameters=params), show_return_annotation=False, unqualified_typehints=unqualified
    )
    return text, return_annotation


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _dataclass_signature)
