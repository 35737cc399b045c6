"""The ``pydatatask`` console script: the commands of :func:`~pydatatask.cli.main.main` on pipelines
named on the command line.

::

    pydatatask -f pipeline.yaml COMMAND ...            # a pipeline file
    pydatatask -m package.module:pipeline COMMAND ...  # a Pipeline object (or a function returning one)
    pydatatask validate -f pipeline.yaml               # check a file, its imports and templates
    pydatatask -f a.yaml -f b.yaml status|graph|run    # several pipelines, side by side
    pydatatask -f a.yaml -f b.yaml serve               # one page listing them, a page each

Each ``-f``/``-m`` goes before the command. Several pipelines each keep their own
scheduler, state and quotas; ``run`` runs them at once in one event loop (``asyncio.gather``
of their runs) with one progress display, and prints each summary; ``status`` and ``graph`` print each pipeline in
turn under a ``# NAME`` line (with ``--json``: one JSON document per pipeline, in order).
``serve`` and ``run --serve`` serve them all on one port: the list of
them at ``/``, each one's page under ``/p/NAME/`` (NAME: the file's stem or the ``-m``
target, made unique). The other commands act on one pipeline. See ``docs/pipeline-files.rst``.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

from ..errors import PydatataskError
from . import output
from .main import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, build_parser, run_cli
from .serve import cmd_serve, serving

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline
    from ..pipeline.scheduler import Scheduler

__all__ = ("main", "run_command", "SEVERAL")

PROG = "pydatatask"
#: the commands that take several pipelines at once
SEVERAL = ("run", "serve", "status", "graph", "validate")

USAGE = f"""usage: {PROG} (-f FILE | -m MODULE:NAME)... COMMAND [options]
       {PROG} validate -f FILE...

  -f, --file FILE         a pipeline file (YAML, see the documentation on pipeline files)
  -m, --module MOD:NAME   a Pipeline in an importable module (or a function returning one)

commands: validate, and those of a pipeline script: run, serve, status, rm, ls, cat,
inject, launch, logs, graph, why ({PROG} -f FILE --help for their options)
"""


def _error(message: str) -> None:
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    sys.stderr.flush()


def _split(argv: list[str]) -> tuple[list[tuple[str, str]], list[str]]:
    """The ``-f``/``-m`` sources, and the rest of the command line (for the pipeline's parser)."""
    sources: list[tuple[str, str]] = []
    rest: list[str] = []
    i = 0
    command_seen = False
    while i < len(argv):
        token = argv[i]
        scanning = not command_seen or (rest and rest[0] == "validate")
        option, _, inline = token.partition("=")
        if scanning and option in ("-f", "--file", "-m", "--module"):
            kind = "file" if option in ("-f", "--file") else "module"
            if inline or "=" in token:
                sources.append((kind, inline))
            elif i + 1 < len(argv):
                sources.append((kind, argv[i + 1]))
                i += 1
            else:
                raise ValueError(f"{option} needs a value")
        elif scanning and len(token) > 2 and token[:2] in ("-f", "-m") and not token.startswith("--"):
            sources.append(("file" if token[1] == "f" else "module", token[2:]))
        else:
            if not token.startswith("-"):
                command_seen = True
            rest.append(token)
        i += 1
    return sources, rest


def _load_module(spec: str) -> Pipeline:
    from ..errors import ConfigurationError
    from ..pipeline.pipeline import Pipeline

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"-m {spec!r}: expected package.module:name")
    if "" not in sys.path and "." not in sys.path:  # as `python -m` does: the current folder imports
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"-m {spec!r}: cannot import {module_name}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"-m {spec!r}: {module_name} has no {attr!r}") from None
    if not isinstance(obj, Pipeline) and callable(obj):
        try:
            obj = obj()
        except TypeError as exc:
            raise ConfigurationError(f"-m {spec!r}: calling it without arguments failed: {exc}") from exc
    if not isinstance(obj, Pipeline):
        raise ConfigurationError(f"-m {spec!r} is a {type(obj).__name__}, not a pydatatask Pipeline")
    return obj


def _load(kind: str, spec: str, *, validate: bool) -> Pipeline:
    if kind == "module":
        return _load_module(spec)
    from ..config import load_pipeline, validate_file

    return validate_file(spec) if validate else load_pipeline(spec)


class _Progress:
    """One progress display for several runs: a row per task of each pipeline
    (``PIPELINE: TASK``); a live table on a terminal, otherwise a line every 2 s and
    one at the end."""

    def __init__(self, names: list[str], *, live: bool, stream: TextIO) -> None:
        self.names = names  # the order of the rows
        self.live_mode = live
        self.stream = stream
        self.interval = 0.25 if live else 2.0
        self._last = float("-inf")
        self._t0 = time.monotonic()
        self._live: Any = None
        self.schedulers: dict[str, Scheduler] = {}
        self.bases: dict[str, dict[str, tuple[int, int]]] = {}

    def __enter__(self) -> _Progress:
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.schedulers:
            self._draw()  # the last figures of every run
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, name: str, scheduler: Scheduler) -> None:
        """The ``on_progress`` of the run of pipeline ``name``."""
        if self.schedulers.get(name) is not scheduler:
            self.schedulers[name] = scheduler
            self.bases[name] = {t: (len(f.succeeded), len(f.failed)) for t, f in scheduler.figures.items()}
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._draw()

    def _draw(self) -> None:
        rows = [
            [f"{name}: {row[0]}", *row[1:]]
            for name in self.names
            if (scheduler := self.schedulers.get(name)) is not None
            for row in output.progress_rows(scheduler, self.bases[name])
        ]
        elapsed = time.monotonic() - self._t0
        if self._live is not None:
            from rich.table import Table

            table = Table(title=f"pydatatask run - {elapsed:.1f}s", title_justify="left")
            for i, h in enumerate(output.PROGRESS_HEADERS):
                table.add_column(h, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*(str(c) for c in row))
            self._live.update(table, refresh=True)
        else:
            parts = [f"{r[0]} {r[1]} ok/{r[2]} failed/{r[3]} running/{r[5]} ready" for r in rows]
            self.stream.write(f"[{elapsed:7.1f}s] " + " | ".join(parts) + "\n")
            self.stream.flush()


def _page_names(sources: list[tuple[str, str]]) -> list[str]:
    """The names of the pages of the pipelines served together: the file's stem or the
    ``-m`` target, made unique (see :func:`pydatatask.web.several.page_names`)."""
    from pathlib import Path

    from ..web.several import page_names

    return page_names([Path(spec).stem if kind == "file" else spec for kind, spec in sources])


async def _run_several(
    named: list[tuple[str, Pipeline]], args: argparse.Namespace, pages: list[str] | None = None
) -> int:
    """``run`` of several pipelines at once: one scheduler each, one event loop; with
    ``--serve``, their pages (named ``pages``) from the live state of the schedulers."""
    signals: list[int] = []

    def on_signal(signum: int) -> None:
        signals.append(signum)
        for _, pipeline in named:
            scheduler = getattr(pipeline, "scheduler", None)
            if scheduler is not None:
                scheduler.request_stop()

    progress = _Progress(
        [name for name, _ in named],
        live=sys.stdout.isatty() and not args.json,
        stream=sys.stderr if args.json else sys.stdout,
    )

    def on_progress(name: str) -> Callable[[Scheduler], None]:
        def update(scheduler: Scheduler) -> None:
            if signals and not scheduler.summary.interrupted:
                scheduler.request_stop()
            progress.update(name, scheduler)

        return update

    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    served = {page: pipeline for page, (_, pipeline) in zip(pages, named, strict=True)} if pages else {}
    try:
        async with serving(served, args):
            with progress:
                summaries = await asyncio.gather(
                    *(
                        pipeline.run(
                            forever=args.forever,
                            tasks=[t for t in args.task or [] if t in pipeline.tasks] or None,
                            max_jobs=args.max_jobs,
                            timeout=args.timeout,
                            grace=args.grace,
                            on_progress=on_progress(name),
                            rerun_stale=args.rerun_stale,
                            refresh=args.refresh,
                        )
                        for name, pipeline in named
                    )
                )
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    results = {name: summary.as_dict() for (name, _), summary in zip(named, summaries, strict=True)}
    if args.json:
        sys.stdout.write(output.dump_json(results))
    else:
        for name, result in results.items():
            sys.stdout.write(f"# {name}\n" + output.format_summary(result))
    sys.stdout.flush()
    if signals:
        return 128 + signals[0]
    return EXIT_OK if all(s.ok for s in summaries) else EXIT_FAILURE


def run_command(argv: Sequence[str] | None = None) -> int:
    """The ``pydatatask`` command on ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        sources, rest = _split(args)
    except ValueError as exc:
        _error(f"{exc} (see `{PROG} --help`)")
        return EXIT_USAGE
    if not sources:
        if rest in (["-h"], ["--help"], []):
            (sys.stdout if rest else sys.stderr).write(USAGE)
            return EXIT_OK if rest else EXIT_USAGE
        _error(f"name the pipeline with -f FILE or -m MODULE:NAME before the command (see `{PROG} --help`)")
        return EXIT_USAGE
    command = next((t for t in rest if not t.startswith("-")), None)
    validating = command == "validate"
    if len(sources) > 1 and command not in SEVERAL and not {"-h", "--help"} & set(rest):
        _error(
            f"{command or 'the command'} works on one pipeline; give one -f or -m (several: {', '.join(SEVERAL)})"
        )
        return EXIT_USAGE
    named: list[tuple[str, Pipeline]] = []
    for kind, spec in sources:
        try:
            named.append((spec, _load(kind, spec, validate=validating)))
        except PydatataskError as exc:
            _error(str(exc))
            return EXIT_FAILURE
    if validating:
        extra = [t for t in rest if t != "validate"]
        if extra:
            _error(f"validate takes only -f/-m, not {' '.join(extra)}")
            return EXIT_USAGE
        for name, pipeline in named:
            sys.stdout.write(f"{name}: ok ({len(pipeline.tasks)} task(s): {', '.join(pipeline.tasks)})\n")
        return EXIT_OK
    if len(named) == 1:
        name, pipeline = named[0]
        return run_cli(
            pipeline, rest, prog=f"{PROG} -f {name}" if sources[0][0] == "file" else f"{PROG} -m {name}"
        )
    if command == "run":
        try:
            parsed = build_parser(PROG).parse_args(rest)
        except Exception as exc:
            _error(str(exc))
            return EXIT_USAGE
        if parsed.allow_actions and parsed.serve is None:
            _error("--allow-actions goes with --serve [HOST:]PORT")
            return EXIT_USAGE
        unknown = [t for t in parsed.task or [] if not any(t in p.tasks for _, p in named)]
        if unknown:
            _error(f"no pipeline has a task named {unknown[0]!r}")
            return EXIT_USAGE
        try:
            pages = _page_names(sources) if parsed.serve is not None else None
            return asyncio.run(_run_several(named, parsed, pages))
        except (PydatataskError, OSError) as exc:
            _error(str(exc))
            return EXIT_FAILURE
    if command == "serve":
        return _serve_several(sources, named, rest)
    status = EXIT_OK
    for name, pipeline in named:
        if "--json" not in rest:
            sys.stdout.write(f"# {name}\n")
            sys.stdout.flush()
        status = max(status, run_cli(pipeline, rest, prog=f"{PROG} -f {name}"))
    return status


def _serve_several(sources: list[tuple[str, str]], named: list[tuple[str, Pipeline]], rest: list[str]) -> int:
    """``serve`` of several pipelines: the list of them at ``/``, a page each under ``/p/NAME/``."""
    try:
        parsed = build_parser(PROG).parse_args(rest)
    except Exception as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        pages = _page_names(sources)
        served = {page: pipeline for page, (_, pipeline) in zip(pages, named, strict=True)}
        return asyncio.run(cmd_serve(served, parsed))
    except (PydatataskError, OSError) as exc:
        _error(str(exc))
        return EXIT_FAILURE


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The console script: ``sys.exit(run_command(argv))``."""
    sys.exit(run_command(argv))
