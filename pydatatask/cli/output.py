"""Human output of the CLI: plain tables, the status report, run progress and summaries.

``rich`` is imported inside the functions that draw on a terminal, never at module
level, so ``import pydatatask`` (and this module) stays light.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from ..pipeline.pipeline import STATUS_COLUMNS

if TYPE_CHECKING:
    from ..pipeline.scheduler import Scheduler

__all__ = (
    "format_table",
    "print_table",
    "status_rows",
    "format_status",
    "format_summary",
    "progress_rows",
    "RunProgress",
    "dump_json",
    "STATUS_COLUMNS",
)

#: the job states ``status`` counts, in order (``ready`` is the pending state)
PROGRESS_HEADERS = ("task", "succeeded", "failed", "running", "retrying", "ready", "blocked", "corrupt")
SAMPLES = 5


def dump_json(value: Any) -> str:
    """Indented JSON (non-JSON values such as datetimes as strings), ending in a newline."""
    return json.dumps(value, indent=2, default=str, ensure_ascii=False) + "\n"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Aligned plain-text columns: the first column left-aligned, numbers right-aligned."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines) + "\n"


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, stream: TextIO | None = None, title: str = ""
) -> None:
    """A rich table on a terminal, :func:`format_table` otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title or None, title_justify="left")
        for i, h in enumerate(headers):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*(str(c) for c in row))
        Console(file=stream).print(table)
    else:
        if title:
            stream.write(title + "\n")
        stream.write(format_table(headers, rows))


def status_rows(status: dict[str, dict[str, Any]]) -> list[list[Any]]:
    """One row per task: name and the count of each status column."""
    return [[name, *(len(s[c]) for c in STATUS_COLUMNS)] for name, s in status.items()]


def _sample(keys: list[str], all_keys: bool) -> str:
    if all_keys or len(keys) <= SAMPLES:
        return ", ".join(keys)
    return ", ".join(keys[:SAMPLES]) + f", ... (+{len(keys) - SAMPLES} more)"


def format_status(status: dict[str, dict[str, Any]], *, all_keys: bool = False) -> str:
    """Key samples (or every key) of each non-empty column except ``succeeded`` unless ``all_keys``.

    Retrying keys come with the time of their next attempt; each corrupt key shown gets a
    line of its own naming what is corrupt, where it is stored and why; each stale key shown
    a line per reason (which input changed, from which version to which).
    """
    lines: list[str] = []
    for name, s in status.items():
        for col in STATUS_COLUMNS:
            keys = s.get(col) or []
            if not keys or (col == "succeeded" and not all_keys):
                continue
            lines.append(f"{name} {col} ({len(keys)}): {_sample(keys, all_keys)}")
            shown = keys if all_keys else keys[:SAMPLES]
            if col == "retrying":
                when = s.get("next_attempt") or {}
                lines.extend(f"  {k}: next attempt at {when.get(k, '?')}" for k in shown)
            elif col == "corrupt":
                details = s.get("corrupt_details") or {}
                for k in shown:
                    info = details.get(k) or {}
                    lines.append(f"  {k}: {info.get('what', 'value')}: {info.get('message', '?')}")
            elif col == "held":
                by = s.get("held_details") or {}
                lines.extend(f"  {k}: {_held_by(by.get(k) or {})}" for k in shown)
            elif col == "stale":
                why = s.get("stale_details") or {}
                lines.extend(f"  {k}: {r.get('message', '?')}" for k in shown for r in why.get(k) or [])
    return "\n".join(lines) + ("\n" if lines else "")


def _held_by(info: dict[str, str]) -> str:
    member = info.get("key", "?")
    if info.get("task"):
        return f"waits for {info['task']} {member!r}"
    return f"waits for member {member!r} (gated upstream)"


def format_summary(summary: dict[str, Any], signal_name: str | None = None) -> str:
    """The end-of-run summary for humans."""
    head = "run interrupted" if summary["interrupted"] else "run finished"
    if summary["timed_out"]:
        head = "run timed out"
    lines = [
        f"{head} after {summary['elapsed']:.2f}s: "
        f"{summary['succeeded']} job(s) succeeded, {summary['failed']} failed"
    ]
    for name, counts in summary["per_task"].items():
        lines.append(f"  {name}: {counts['succeeded']} succeeded, {counts['failed']} failed")
    for err in summary["errors"][:10]:
        lines.append(f"  error: {err}")
    if len(summary["errors"]) > 10:
        lines.append(f"  ... and {len(summary['errors']) - 10} more error(s)")
    if signal_name:
        lines.append(f"stopped by {signal_name}; run again to do the remaining work")
    if summary["failed"]:
        lines.append("failed jobs are not retried by a rerun until `rm TASK KEY` removes their records")
    return "\n".join(lines) + "\n"


def progress_rows(scheduler: Scheduler, base: dict[str, tuple[int, int]] | None = None) -> list[list[Any]]:
    """Per selected task: succeeded and failed (all runs), running, retrying (in backoff),
    ready (queued), blocked and corrupt.

    ``base`` holds each task's (succeeded, failed) counts at the first tick; adding this
    run's outcomes from the run summary gives exact totals without re-counting records.
    """
    from ..task.records import JobState

    running: dict[str, int] = {}
    retrying: dict[str, int] = {}
    for ident in scheduler.running:
        t = ident[0]
        counts = retrying if scheduler.states.get(ident) is JobState.RETRYING else running
        counts[t] = counts.get(t, 0) + 1
    rows: list[list[Any]] = []
    for task in scheduler.selected:
        fig = scheduler.figures.get(task.name)
        ok0, failed0 = (base or {}).get(task.name, (0, 0))
        if base is not None:  # records this run replaced (redone stale keys) count once
            gone_ok, gone_failed = scheduler.replaced.get(task.name, (0, 0))
            ok0, failed0 = ok0 - gone_ok, failed0 - gone_failed
        this_run = scheduler.summary.per_task.get(task.name, {})
        rows.append(
            [
                task.name,
                ok0 + this_run.get("succeeded", 0),
                failed0 + this_run.get("failed", 0),
                running.get(task.name, 0),
                retrying.get(task.name, 0),
                len(scheduler.queues.get(task.name, ())),
                len(fig.blocked) if fig is not None else 0,
                len(fig.corrupt) if fig is not None else 0,
            ]
        )
    return rows


class RunProgress:
    """The ``on_progress`` callback of ``run``.

    On a terminal: a rich ``Live`` table redrawn at most ``1/interval`` times a second.
    Otherwise: one line every ``interval`` seconds (failures are logged separately), so
    a run of 10,000 jobs prints a few lines, not 10,000.
    """

    def __init__(self, *, live: bool, stream: TextIO, interval: float | None = None) -> None:
        self.live_mode = live
        self.stream = stream
        self.interval = interval if interval is not None else (0.25 if live else 2.0)
        self._last = float("-inf")
        self._t0 = time.monotonic()
        self._live: Any = None
        self._scheduler: Scheduler | None = None
        self._base: dict[str, tuple[int, int]] | None = None

    def __enter__(self) -> RunProgress:
        if self.live_mode:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(console=Console(file=self.stream), auto_refresh=False, transient=False)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            if self._scheduler is not None:
                self._draw(self._scheduler)
            self._live.stop()
            self._live = None

    def __call__(self, scheduler: Scheduler) -> None:
        if self._scheduler is not scheduler:
            # first call: after the first listing, before any job of this run has ended
            self._scheduler = scheduler
            self._base = {
                name: (len(fig.succeeded), len(fig.failed)) for name, fig in scheduler.figures.items()
            }
        now = time.monotonic()
        if now - self._last < self.interval:
            return
        self._last = now
        self._draw(scheduler)

    def _draw(self, scheduler: Scheduler) -> None:
        rows = progress_rows(scheduler, self._base)
        elapsed = time.monotonic() - self._t0
        if self._live is not None:
            from rich.table import Table

            table = Table(title=f"pydatatask run - {elapsed:.1f}s", title_justify="left")
            for i, h in enumerate(PROGRESS_HEADERS):
                table.add_column(h, justify="left" if i == 0 else "right")
            for row in rows:
                table.add_row(*(str(c) for c in row))
            self._live.update(table, refresh=True)
        else:
            parts = []
            for r in rows:
                text = f"{r[0]} {r[1]} ok/{r[2]} failed/{r[3]} running/{r[5]} ready"
                extra = [
                    f"{n} {h}" for n, h in zip(r[4:], PROGRESS_HEADERS[4:], strict=True) if n and h != "ready"
                ]
                parts.append("/".join([text, *extra]))
            self.stream.write(f"[{elapsed:7.1f}s] " + " | ".join(parts) + "\n")
            self.stream.flush()
