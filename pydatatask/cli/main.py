"""Argument parsing and the subcommands. See ``docs/cli.rst`` for the reference.

Exit status: 0 the command did what was asked; 1 it failed (a job failed, a key is
missing, a job is not ready, ...); 2 usage error (bad arguments, unknown task or link,
invalid key); 128+N stopped by signal N (130 for Ctrl-C, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .._taskgroups import first_error
from ..durations import parse_duration
from ..errors import ConfigurationError, InvalidKeyError, KeyNotFoundError, PydatataskError
from ..executor.kubernetes import FUNCTION_COMMAND
from ..keys import validate_key
from ..logs import LOG_FORMATS, JsonFormatter
from ..repository.base import BlobRepository, MetadataRepository, Repository
from . import output
from .serve import add_run_options, add_serve_parser, cmd_serve, serving

if TYPE_CHECKING:
    from ..pipeline.pipeline import Pipeline
    from ..pipeline.scheduler import Scheduler

__all__ = ("main", "run_cli", "build_parser", "EXIT_OK", "EXIT_FAILURE", "EXIT_USAGE")

log = logging.getLogger("pydatatask.cli")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line (exit status 2)."""


class CommandFailed(Exception):
    """The command could not do what was asked (exit status 1)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see `{self.prog} --help`)")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (so a live display can redirect it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname_lower = record.levelname.lower()
        return super().format(record)


# ---------------------------------------------------------------- the parser
def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except (ConfigurationError, ValueError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _refresh(text: str) -> float:
    seconds = _duration(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive duration")
    return seconds


def _positive_int(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return n


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`run_cli`."""
    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more logging (-vv: debug)"
    )
    common.add_argument(
        "--log-format", choices=LOG_FORMATS, default=argparse.SUPPRESS, help="text (default) or json lines"
    )
    data = _Parser(add_help=False)
    data.add_argument("--json", action="store_true", help="print JSON for machines")

    parser = _Parser(
        prog=prog,
        description="Run and inspect a pydatatask pipeline.",
        epilog="exit status: 0 ok, 1 failure, 2 usage error, 130/143 interrupted (SIGINT/SIGTERM)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text (default) or json: one object per event",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def add(name: str, help: str, *, json: bool = True) -> argparse.ArgumentParser:
        parents = [common, data] if json else [common]
        p: argparse.ArgumentParser = sub.add_parser(name, help=help, description=help, parents=parents)
        return p

    p = add("run", "run every ready job until nothing is ready or running")
    p.add_argument("--forever", action="store_true", help="keep polling for new keys until interrupted")
    p.add_argument(
        "--task", action="append", metavar="TASK", help="only run this task (repeatable); others are read"
    )
    p.add_argument("--max-jobs", type=_positive_int, metavar="N", help="at most N jobs at once")
    p.add_argument("--timeout", type=_duration, metavar="DURATION", help="stop the run after this long")
    p.add_argument(
        "--grace",
        type=_duration,
        default=10.0,
        metavar="DURATION",
        help="on Ctrl-C/SIGTERM, wait this long for running jobs before cancelling them (default 10s)",
    )
    p.add_argument("--no-status", action="store_true", help="do not print the status table at the end")
    p.add_argument(
        "--rerun-stale",
        action="store_true",
        help="redo the stale keys (changed inputs, task version or missing outputs) and what is downstream of them",
    )
    p.add_argument(
        "--refresh",
        type=_refresh,
        metavar="DURATION",
        help="list each repository again after this long, for changes from outside the run "
        "(default: the pipeline's, else 2s for memory and files, 30s for remote stores)",
    )
    add_run_options(p)

    p = add("serve", "serve the web page, /api and /metrics of the pipeline's repositories", json=False)
    add_serve_parser(p)

    p = add(
        "status",
        "counts and keys per task: ready, running, retrying, succeeded, failed, blocked, corrupt, stale",
    )
    p.add_argument("tasks", nargs="*", metavar="TASK", help="only these tasks")
    p.add_argument("--all", action="store_true", help="list every key, not samples")

    p = add("rm", "remove outputs and job records so the keys run again")
    p.add_argument("target", metavar="TASK[.LINK]", help="a task (its outputs, records, logs) or one link")
    p.add_argument("keys", nargs="*", metavar="KEY")
    p.add_argument("--all", action="store_true", help="every key (asks for confirmation)")
    p.add_argument("--cascade", action="store_true", help="also remove the keys from downstream tasks")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")

    p = add("ls", "list the keys of a repository, sorted")
    p.add_argument("spec", metavar="TASK.LINK")

    p = add("cat", "print a value: blob bytes raw, metadata as YAML")
    p.add_argument("spec", metavar="TASK.LINK")
    p.add_argument("key", metavar="KEY")

    p = add("inject", "store a value (from FILE or stdin; YAML for metadata)")
    p.add_argument("spec", metavar="TASK.LINK")
    p.add_argument("key", metavar="KEY")
    p.add_argument("file", nargs="?", metavar="FILE", help="read from FILE ('-' or absent: stdin)")

    p = add("launch", "run one job now, in this process, and print its record")
    p.add_argument("task", metavar="TASK")
    p.add_argument("key", metavar="KEY")
    p.add_argument("--force", action="store_true", help="run even if the key is not ready")

    # hidden (no help): what a function task's pod runs, see pydatatask.task.function_pod
    p = sub.add_parser(FUNCTION_COMMAND, parents=[common])
    p.add_argument("task", metavar="TASK")
    p.add_argument("key", metavar="KEY")

    p = add("logs", "print the log of a job")
    p.add_argument("task", metavar="TASK")
    p.add_argument("key", metavar="KEY")

    p = add("graph", "draw the tasks and the repositories they read and write")
    p.add_argument("--format", choices=("text", "dot", "mermaid"), default="text")

    p = add("why", "explain why a key is or is not ready for a task")
    p.add_argument("task", metavar="TASK")
    p.add_argument("key", metavar="KEY")
    return parser


# ---------------------------------------------------------------- helpers
def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _out_bytes(data: bytes) -> None:
    sys.stdout.flush()
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        buffer.write(data)
        buffer.flush()


def _read_stdin() -> bytes:
    buffer = getattr(sys.stdin, "buffer", None)
    if buffer is not None:
        return bytes(buffer.read())
    return sys.stdin.read().encode("utf-8")


def _task_name(pipeline: Pipeline, name: str) -> str:
    if name not in pipeline.tasks:
        raise UsageError(f"no task named {name!r}; tasks: {', '.join(pipeline.tasks)}")
    return name


def _repo(pipeline: Pipeline, spec: str) -> Repository:
    if "." not in spec:
        _task_name(pipeline, spec)
    try:
        return pipeline.repository(spec)[2]
    except ConfigurationError as exc:
        raise UsageError(str(exc)) from None


def _key(key: str) -> str:
    try:
        return validate_key(key)
    except InvalidKeyError as exc:
        raise UsageError(str(exc)) from None


def _text_or_base64(data: bytes, name: str) -> dict[str, str]:
    """``{name: text}`` for UTF-8 bytes, ``{"base64": ...}`` otherwise (``--json`` of bytes)."""
    try:
        return {name: data.decode("utf-8")}
    except UnicodeDecodeError:
        import base64

        return {"base64": base64.b64encode(data).decode("ascii")}


def _yaml(value: Any) -> str:
    from ..repository.serialized import yaml_dumps

    return yaml_dumps(value).decode("utf-8")


# ---------------------------------------------------------------- commands
async def _cmd_run(pipeline: Pipeline, args: argparse.Namespace) -> int:
    for name in args.task or []:
        _task_name(pipeline, name)
    if args.allow_actions and args.serve is None:
        raise UsageError("--allow-actions goes with --serve [HOST:]PORT")
    live = sys.stdout.isatty() and not args.json
    progress = output.RunProgress(live=live, stream=sys.stderr if args.json else sys.stdout)
    signals: list[int] = []
    before = getattr(pipeline, "scheduler", None)

    def current() -> Scheduler | None:
        s: Scheduler | None = getattr(pipeline, "scheduler", None)
        return None if s is before else s

    def on_signal(signum: int) -> None:
        signals.append(signum)
        scheduler = current()
        if scheduler is None:
            return  # not started yet: on_progress stops it at its first tick
        if len(signals) == 1:
            scheduler.request_stop()
        else:
            log.warning("second signal: cancelling %d running job(s) now", len(scheduler.running))
            for job in list(scheduler.running.values()):
                job.cancel()

    def on_progress(scheduler: Scheduler) -> None:
        if signals and not scheduler.summary.interrupted:
            scheduler.request_stop()
        progress(scheduler)

    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, int(sig))
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not the main thread
            pass
    names = args.task or list(pipeline.tasks)
    try:
        async with serving(pipeline, args):
            with progress:
                summary = await pipeline.run(
                    forever=args.forever,
                    tasks=args.task,
                    max_jobs=args.max_jobs,
                    timeout=args.timeout,
                    grace=args.grace,
                    on_progress=on_progress,
                    rerun_stale=args.rerun_stale,
                    refresh=args.refresh,
                )
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    result = summary.as_dict()
    signal_name = signal.Signals(signals[0]).name if signals else None
    if args.json:
        if signal_name:
            result["signal"] = signal_name
        _out(output.dump_json(result))
    else:
        _out(output.format_summary(result, signal_name))
        if not args.no_status:
            status = await pipeline.status()
            status = {n: status[n] for n in names}
            _out("\n")
            output.print_table(("task", *output.STATUS_COLUMNS), output.status_rows(status))
            _out(output.format_status({n: {**s, "ready": []} for n, s in status.items()}))
    if signals:
        return 128 + signals[0]
    return EXIT_OK if summary.ok else EXIT_FAILURE


async def _cmd_status(pipeline: Pipeline, args: argparse.Namespace) -> int:
    names = [_task_name(pipeline, n) for n in args.tasks] or list(pipeline.tasks)
    full = await pipeline.status()
    status = {n: full[n] for n in names}
    if args.json:
        _out(
            output.dump_json(
                {
                    n: {
                        "counts": {c: len(s[c]) for c in output.STATUS_COLUMNS},
                        **{c: s[c] for c in output.STATUS_COLUMNS},
                        "next_attempt": s["next_attempt"],
                        "corrupt_details": s["corrupt_details"],
                        "stale_details": s["stale_details"],
                        "held_details": s["held_details"],
                    }
                    for n, s in status.items()
                }
            )
        )
        return EXIT_OK
    output.print_table(("task", *output.STATUS_COLUMNS), output.status_rows(status))
    _out(output.format_status(status, all_keys=args.all))
    return EXIT_OK


async def _cmd_rm(pipeline: Pipeline, args: argparse.Namespace) -> int:
    task_name, _, link = args.target.partition(".")
    _task_name(pipeline, task_name)
    if link:
        _repo(pipeline, args.target)
    if args.all and args.keys:
        raise UsageError("give keys or --all, not both")
    if not args.all and not args.keys:
        raise UsageError("give the keys to remove, or --all")
    keys = None if args.all else [_key(k) for k in args.keys]
    if args.all and not args.yes:
        what = (
            f"every key of {args.target} (with the job records and logs that go with them)"
            if link
            else f"every output, record and log of {task_name}"
        )
        if args.cascade:
            down = pipeline.graph.descendants(task_name)
            if down:
                what += f" and of the downstream task(s) {', '.join(down)}"
        if sys.stdin is None or not sys.stdin.isatty():
            raise CommandFailed(f"refusing to remove {what} without confirmation: add --yes")
        sys.stderr.write(f"remove {what}? [y/N] ")
        sys.stderr.flush()
        answer = await asyncio.to_thread(sys.stdin.readline)
        if answer.strip().lower() not in ("y", "yes"):
            raise CommandFailed("nothing removed")
    removed = await pipeline.remove(task_name, keys, link=link or None, cascade=args.cascade)
    if args.json:
        _out(output.dump_json([{"task": t, "link": lk, "key": k} for t, lk, k in removed]))
    elif not removed and args.all:
        _out(f"nothing to remove: {args.target} holds no keys\n")
    grouped: dict[tuple[str, str], list[str]] = {}
    for t, lk, k in removed:
        grouped.setdefault((t, lk), []).append(k)
    if not args.json:
        for (t, lk), ks in grouped.items():
            sample = ", ".join(ks[:10]) + (f", ... (+{len(ks) - 10} more)" if len(ks) > 10 else "")
            _out(f"removed {len(ks)} key(s) from {t}.{lk}: {sample}\n")
    absent = [k for k in keys or [] if k not in {key for _, _, key in removed}]
    if absent:
        where = f"{args.target}" + (" or downstream" if args.cascade else "")
        raise CommandFailed(
            f"nothing to remove for {len(absent)} key(s) in {where}: {', '.join(map(repr, absent[:10]))}"
            + (" ..." if len(absent) > 10 else "")
        )
    return EXIT_OK


async def _cmd_ls(pipeline: Pipeline, args: argparse.Namespace) -> int:
    repo = _repo(pipeline, args.spec)
    async with pipeline:
        keys = sorted(await repo.keys())
    if args.json:
        _out(output.dump_json(keys))
    elif keys:
        _out("".join(k + "\n" for k in keys))
    else:  # stdout stays empty for scripts; a person learns the listing was made
        sys.stderr.write(f"{args.spec} ({repo.describe()}) holds no keys\n")
    return EXIT_OK


async def _cmd_cat(pipeline: Pipeline, args: argparse.Namespace) -> int:
    repo = _repo(pipeline, args.spec)
    key = _key(args.key)
    async with pipeline:
        if isinstance(repo, MetadataRepository):
            value = await repo.get(key)
            _out(output.dump_json(value) if args.json else _yaml(value))
        elif isinstance(repo, BlobRepository):
            data = await repo.read_bytes(key)
            if args.json:
                _out(output.dump_json({"key": key, **_text_or_base64(data, "text")}))
            else:
                _out_bytes(data)
        else:
            raise CommandFailed(f"{args.spec} ({repo.describe()}) has no values to print")
    return EXIT_OK


async def _cmd_inject(pipeline: Pipeline, args: argparse.Namespace) -> int:
    _repo(pipeline, args.spec)
    key = _key(args.key)
    if args.file in (None, "-"):
        if sys.stdin is None:
            data = b""
        elif sys.stdin.isatty():
            raise UsageError("no FILE given and stdin is a terminal: pass a FILE or pipe the value in")
        else:
            data = await asyncio.to_thread(_read_stdin)
    else:
        try:
            data = await asyncio.to_thread(Path(args.file).read_bytes)
        except OSError as exc:
            raise CommandFailed(f"cannot read {args.file}: {exc.strerror or exc}") from None
    await pipeline.inject(args.spec, key, data)
    log.info("stored %d byte(s) under %r in %s", len(data), key, args.spec)
    if args.json:
        task_name, _, link = args.spec.partition(".")
        _out(output.dump_json({"task": task_name, "link": link, "key": key, "bytes": len(data)}))
    return EXIT_OK


async def _cmd_call_function(pipeline: Pipeline, args: argparse.Namespace) -> int:
    from ..task.function_pod import call_function

    task = pipeline.task(_task_name(pipeline, args.task))
    key = _key(args.key)
    async with pipeline.session:
        try:
            text = await call_function(task, key)
        except Exception:
            traceback.print_exc(file=sys.stderr)  # the pod's log: the whole story
            raise
    sys.stderr.write(text)
    return EXIT_OK


async def _cmd_launch(pipeline: Pipeline, args: argparse.Namespace) -> int:
    _task_name(pipeline, args.task)
    key = _key(args.key)
    try:
        record = await pipeline.launch(args.task, key, force=args.force)
    except ConfigurationError as exc:
        raise CommandFailed(str(exc)) from None
    if record is None:
        raise CommandFailed(f"{args.task} {key!r} is claimed by another scheduler; not launched")
    _out(output.dump_json(record) if args.json else _yaml(record))
    if not record.get("success"):
        err = record.get("error") or {}
        why = err.get("message") or f"exit code {record.get('exit_code')}"
        raise CommandFailed(f"job {args.task} {key!r} failed: {why}")
    return EXIT_OK


async def _cmd_logs(pipeline: Pipeline, args: argparse.Namespace) -> int:
    task = pipeline.tasks[_task_name(pipeline, args.task)]
    key = _key(args.key)
    logs = task.logs
    if logs is None:
        raise CommandFailed(f"task {task.name!r} has no logs repository (give it logs= or use state_dir)")
    async with pipeline:
        try:
            data = await logs.read_bytes(key)
        except KeyNotFoundError:
            if await task.done.contains(key):
                why = "its job wrote no log"
            elif await task.live.contains(key):
                why = "its job is running; the log is stored when it ends"
            else:
                why = "no job of it has run"
            raise CommandFailed(f"task {task.name!r} has no log for {key!r}: {why}") from None
    if args.json:
        _out(output.dump_json({"task": task.name, "key": key, **_text_or_base64(data, "log")}))
    else:
        _out_bytes(data)
    return EXIT_OK


async def _cmd_graph(pipeline: Pipeline, args: argparse.Namespace) -> int:
    graph = pipeline.graph
    if args.json:
        drawing = graph.drawing().as_dict()
        drawing["dependencies"] = [asdict(e) for e in graph.edges]
        _out(output.dump_json(drawing))
    elif args.format == "dot":
        _out(graph.to_dot())
    elif args.format == "mermaid":
        _out(graph.to_mermaid())
    else:
        _out(graph.to_text())
    return EXIT_OK


async def _cmd_why(pipeline: Pipeline, args: argparse.Namespace) -> int:
    _task_name(pipeline, args.task)
    key = _key(args.key)
    reasons = await pipeline.why(args.task, key)
    if args.json:
        _out(output.dump_json({"task": args.task, "key": key, "ready": not reasons, "reasons": reasons}))
    elif not reasons:
        _out(f"{args.task} {key}: ready\n")
    else:
        _out(f"{args.task} {key}: not ready\n" + "".join(f"  - {r}\n" for r in reasons))
    return EXIT_OK


COMMANDS: dict[str, Callable[[Pipeline, argparse.Namespace], Coroutine[Any, Any, int]]] = {
    "run": _cmd_run,
    "status": _cmd_status,
    "rm": _cmd_rm,
    "ls": _cmd_ls,
    "cat": _cmd_cat,
    "inject": _cmd_inject,
    "launch": _cmd_launch,
    FUNCTION_COMMAND: _cmd_call_function,
    "logs": _cmd_logs,
    "graph": _cmd_graph,
    "why": _cmd_why,
    "serve": cmd_serve,
}


# ---------------------------------------------------------------- entry points
def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def run_cli(pipeline: Pipeline, argv: Sequence[str] | None = None, *, prog: str | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status.

    Never calls :func:`sys.exit`; every error is one ``error: ...`` line on stderr
    (a traceback only for unexpected errors with ``-v``).
    """
    parser = build_parser(prog)
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)
    verbose: int = args.verbose
    pkg_log = logging.getLogger("pydatatask")
    handler = _StderrHandler()
    if args.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_Formatter("%(levelname_lower)s: %(message)s"))
    old_level = pkg_log.level
    pkg_log.addHandler(handler)
    pkg_log.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING)
    try:
        return asyncio.run(COMMANDS[args.command](pipeline, args))
    except BaseExceptionGroup as group:
        # the package unwraps its task groups; this is the last line of defence
        return _report(first_error(group), group, verbose)
    except (Exception, KeyboardInterrupt) as exc:
        return _report(exc, exc, verbose)
    finally:
        pkg_log.removeHandler(handler)
        pkg_log.setLevel(old_level)


def _report(exc: BaseException, raised: BaseException, verbose: int) -> int:
    """Print the one-line error for ``exc`` (``raised`` is what reached :func:`run_cli`, for
    the traceback with ``-v``) and return the exit status."""
    if isinstance(exc, (UsageError, InvalidKeyError)):
        _error(_one_line(exc))
        return EXIT_USAGE
    if isinstance(exc, (CommandFailed, PydatataskError, KeyError, OSError)):
        _error(_one_line(exc))
        if verbose and not isinstance(exc, CommandFailed):
            traceback.print_exception(raised, file=sys.stderr)
        return EXIT_FAILURE
    if isinstance(exc, KeyboardInterrupt):
        _error("interrupted")
        return 128 + signal.SIGINT
    if not isinstance(exc, Exception):
        raise exc  # SystemExit and the like, out of a task group: not ours to report
    if verbose:
        traceback.print_exception(raised, file=sys.stderr)
    _error(
        f"unexpected {type(exc).__name__}: {_one_line(exc)}"
        + ("" if verbose else " (run with -v for the traceback)")
    )
    return EXIT_FAILURE


def main(pipeline: Pipeline, argv: Sequence[str] | None = None) -> NoReturn:
    """The command line of ``pipeline``: ``sys.exit(run_cli(pipeline, argv))``."""
    sys.exit(run_cli(pipeline, argv))
