"""Per-key results of a batch run as one process or one pod (see :doc:`/batches`).

A batch of keys (``batch=N`` on the task) runs as one command or one pod; each key still
gets its own record. What failed is told per key with JSON lines, one object a line::

    {"key": "images/IMG 0001.jpg", "ok": true}
    {"key": "images/IMG 0002.jpg", "ok": false, "error": "not a JPEG"}

A process writes them to the file named by ``$PDT_RESULTS``; a pod prints them to its log
between the lines :data:`RESULTS_BEGIN` and :data:`RESULTS_END` (a pod's termination
message is not used: the test cluster's kubelet cannot deliver one, and a log has no
size limit of 4 KiB). :func:`batch_failures` turns what was read into the failed keys:

* a key with an ``"ok": false`` line failed, with its ``error``;
* a key with an ``"ok": true`` line succeeded (its outputs are still checked);
* a key with no line succeeded if the batch exited 0 and every line could be read;
  otherwise it failed: a non-zero exit (or a failed pod), or a line that is not such an
  object (the command's report cannot be trusted for the keys it does not name).

A line naming a key that is not in the attempt is set aside (:attr:`Results.foreign`):
a pod that outlived its scheduler is adopted key by key, and the lines of the other keys
of its batch are no concern of the one adopting it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = (
    "RESULTS_BEGIN",
    "RESULTS_END",
    "RESULTS_FILE",
    "Results",
    "parse_results",
    "results_in_log",
    "batch_failures",
)

#: the line a pod prints before its result lines
RESULTS_BEGIN = "--- pydatatask results ---"
#: the line a pod prints after its result lines
RESULTS_END = "--- end of pydatatask results ---"
#: where ``$PDT_RESULTS`` points, relative to a process job's directory
RESULTS_FILE = ".pdt-results.jsonl"

_SHOWN = 80  # characters of a bad line shown in its error


@dataclass
class Results:
    """What a batch reported: keys reported ok, keys reported failed (with why), and the
    first line that could not be read (described), if any."""

    ok: set[str] = field(default_factory=set)
    failed: dict[str, str] = field(default_factory=dict)
    problem: str | None = None
    #: keys named by lines that are not keys of the attempt, in order, once each
    foreign: list[str] = field(default_factory=list)
    #: the closed blocks between the markers of a log
    blocks: int = 0
    #: whether a block of a log was left open (no end marker after it)
    unclosed: bool = False

    @property
    def complete(self) -> bool:
        """Whether a log held at least one results block, every one of them closed."""
        return self.blocks > 0 and not self.unclosed

    def notes(self) -> list[str]:
        """Lines for the batch's log: the problem, and the keys set aside."""
        lines = [f"results: {self.problem}"] if self.problem is not None else []
        if self.foreign:
            shown = ", ".join(repr(k) for k in self.foreign[:5])
            more = f" and {len(self.foreign) - 5} more" if len(self.foreign) > 5 else ""
            lines.append(f"results: set aside the lines of {shown}{more}: not keys of this attempt")
        return lines

    def note_problem(self, text: str) -> None:
        """Keep the first problem met."""
        if self.problem is None:
            self.problem = text


def _shown(line: str) -> str:
    return repr(line if len(line) <= _SHOWN else line[:_SHOWN] + "...")


def parse_results(
    lines: Iterable[str], keys: Sequence[str], where: str, results: Results | None = None
) -> Results:
    """Read result lines (blank lines are skipped) for the batch of ``keys``; ``where``
    names their source in problems (``"$PDT_RESULTS"``, ``"the log of pod X"``)."""
    results = results if results is not None else Results()
    wanted = set(keys)
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        try:
            entry = json.loads(text)
        except ValueError:
            results.note_problem(f"{where}, line {number}: not JSON: {_shown(text)}")
            continue
        key = entry.get("key") if isinstance(entry, dict) else None
        ok = entry.get("ok") if isinstance(entry, dict) else None
        if not isinstance(key, str) or not isinstance(ok, bool):
            results.note_problem(
                f'{where}, line {number}: not an object with "key" (a string) and "ok" (true or false): '
                f"{_shown(text)}"
            )
            continue
        if key not in wanted:
            if key not in results.foreign:
                results.foreign.append(key)
            continue
        if ok:
            results.ok.add(key)
            continue
        error = entry.get("error")
        # a key reported failed stays failed, whatever another line says of it
        results.failed.setdefault(
            key, str(error) if error not in (None, "") else "the command reported it failed"
        )
    return results


def results_in_log(text: str, keys: Sequence[str], where: str) -> Results:
    """The result lines of a log: every line between a :data:`RESULTS_BEGIN` line and the
    next :data:`RESULTS_END` line (a block left open counts as a problem)."""
    results = Results()
    block: list[str] | None = None
    for line in text.splitlines():
        marker = line.strip()
        if marker == RESULTS_BEGIN:
            if block is not None:
                parse_results(block, keys, where, results)
                results.unclosed = True
            block = []
        elif marker == RESULTS_END and block is not None:
            parse_results(block, keys, where, results)
            results.blocks += 1
            block = None
        elif block is not None:
            block.append(line)
    if block is not None:
        parse_results(block, keys, where, results)
        results.unclosed = True
    if results.unclosed:
        results.note_problem(f"{where}: {RESULTS_BEGIN!r} without {RESULTS_END!r} after it")
    return results


def batch_failures(keys: Sequence[str], results: Results, ended_ok: bool, why_not_ok: str) -> dict[str, str]:
    """``{key: why}`` for the keys of the batch that failed by :class:`Results` (see the
    module docstring); ``ended_ok``: the batch exited 0, else ``why_not_ok`` says how it
    ended (``"the command exited with status 3"``)."""
    failed: dict[str, str] = {}
    for key in keys:
        if key in results.failed:
            failed[key] = results.failed[key]
        elif key in results.ok:
            continue
        elif not ended_ok:
            failed[key] = why_not_ok
        elif results.problem is not None:
            failed[key] = f"no result for it, and {results.problem}"
    return failed
