"""The main example: a folder of text documents -> statistics -> reports -> a corpus summary.

Run it (README command (1) does this through ``bash scripts/example``)::

    python examples/documents/pipeline.py run       # progress, summary, status table
    python examples/documents/pipeline.py run       # again: nothing to do
    python examples/documents/pipeline.py status
    python examples/documents/pipeline.py rm stats doc-007 --cascade   # redo one document
    python examples/documents/pipeline.py rm summary summary           # rewrite the summary
    python examples/documents/pipeline.py graph --format mermaid

Everything lives under ``examples/documents/data/`` (or ``--data PATH`` /
``$PDT_EXAMPLE_DATA``)::

    docs/<key>.txt        the input documents (60 are generated on the first run)
    stats/<key>.yaml      stage 1, task ``stats``: words, lines, characters, top words
    reports/<key>.md      stage 2, task ``report``: a markdown report per document
    summary.md            stage 3, task ``summary``: the corpus summary, one fan-in job over
                          every document once all of them have their statistics
    state/<task>/...      job records (done), claims of running jobs (live), job logs

No server is involved. Kill a run midway (Ctrl-C, or even ``kill -9``) and run it again:
finished documents are not recomputed, interrupted ones are cleaned up and redone.
"""

from __future__ import annotations

import collections
import os
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydatatask import FileRepository, MetadataRepository, YamlMetadataFileRepository
from pydatatask.cli import main
from pydatatask.executor import PoolExecutor
from pydatatask.pipeline import Pipeline
from pydatatask.task import FunctionTask, JobContext, RetryPolicy

#: seconds of pretend work per document in ``stats`` (so the live progress has something
#: to show); set PDT_EXAMPLE_DELAY=0 for full speed
DELAY = float(os.environ.get("PDT_EXAMPLE_DELAY", "0.05"))
N_DOCUMENTS = 60
WORD = re.compile(r"[a-z']+")
STOPWORDS = frozenset("a an and the of to in is it that on for as with by was at be this".split())


# ---------------------------------------------------------------- the input documents
_VOCABULARY = (
    "river harbour ledger lantern orchard whale compass voyage archive meadow signal engine "
    "garden winter summer letter captain market village bridge mountain storm island paper "
    "window kettle harvest journey station candle forest silver thread machine ocean"
).split()
_GLUE = "the a of and to in on with by at from under over near".split()


def generate_documents(folder: Path, n: int = N_DOCUMENTS, seed: int = 7) -> None:
    """Write ``n`` small synthetic documents, the same every time (skipped if ``folder`` exists)."""
    if folder.exists():
        return
    rng = random.Random(seed)
    tmp = folder.with_name(folder.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    for i in range(1, n + 1):
        favourite = rng.sample(_VOCABULARY, 3)
        lines = []
        for _ in range(rng.randint(5, 25)):
            words = [rng.choice(favourite if rng.random() < 0.4 else _VOCABULARY + _GLUE) for _ in range(12)]
            lines.append(" ".join(words).capitalize() + ".")
        name = f"doc-{i:03d}" if i % 20 else f"notes_v{i // 20}.final"  # odd but valid keys
        (tmp / f"{name}.txt").write_text("\n".join(lines) + "\n")
    tmp.rename(folder)  # the folder appears complete or not at all


# ---------------------------------------------------------------- stage 1: stats
def document_stats(key: str, doc: bytes) -> dict[str, Any]:
    """A function run on a pool: gets the input *value* (bytes), returns ``{output: value}``.

    It runs in a thread pool; being a module-level function it would run unchanged in a
    ``ProcessPoolExecutor`` or a Dask ``distributed.Client``.
    """
    time.sleep(DELAY)
    text = doc.decode("utf-8")
    words = WORD.findall(text.lower())
    top = collections.Counter(w for w in words if w not in STOPWORDS).most_common(5)
    return {
        "stats": {
            "words": len(words),
            "lines": text.count("\n"),
            "characters": len(text),
            "top_words": [[w, c] for w, c in top],
        }
    }


# ---------------------------------------------------------------- stage 2: report
async def write_report(
    key: str, job: JobContext, stats: MetadataRepository, docs: FileRepository, report: FileRepository
) -> None:
    """An async FunctionTask function: gets the repositories themselves and writes its output.

    ``stats`` is the output of the ``stats`` task, so this task waits for the *success
    record* of ``stats`` for each key (not merely for the YAML file to exist).
    """
    s = await stats.get(key)
    first = (await docs.read_text(key)).splitlines()[0]
    job.log(f"{key}: {s['words']} words")
    lines = [
        f"# {key}",
        "",
        f"> {first}",
        "",
        "| words | lines | characters |",
        "|------:|------:|-----------:|",
        f"| {s['words']} | {s['lines']} | {s['characters']} |",
        "",
        "Most frequent words: " + ", ".join(f"{w} ({c})" for w, c in s["top_words"]),
        "",
    ]
    async with report.open(key, "wb") as f:  # becomes visible only if the job succeeds
        await f.write("\n".join(lines).encode())


# ---------------------------------------------------------------- stage 3: summary
def whole_corpus(key: str) -> str:
    """The group of every document: one ``summary`` job over the whole corpus (a fan-in)."""
    return "summary"


def corpus_summary(key: str, members: list[str], stats: dict[str, Any]) -> dict[str, Any]:
    """A fan-in function: one call for the group ``summary``, with ``stats`` as
    ``{document: statistics}`` of every member.

    The job starts once ``stats`` has a success record for every document it knows and
    none is still waiting or running; the record lists the members it summed up.
    """
    total: collections.Counter[str] = collections.Counter()
    for value in stats.values():
        total.update({w: c for w, c in value["top_words"]})
    words = sum(v["words"] for v in stats.values())
    longest = sorted(stats, key=lambda k: (-stats[k]["words"], k))[:3]
    text = "\n".join(
        [
            "# Corpus summary",
            "",
            f"- documents: {len(members)}",
            f"- words: {words}",
            f"- longest: {', '.join(longest)}",
            f"- most frequent words: {', '.join(w for w, _ in total.most_common(8))}",
            "",
        ]
    )
    # stderr: stdout belongs to the CLI (`run --json` prints only JSON there)
    print(f"corpus summary: {len(members)} documents, {words} words", file=sys.stderr)
    return {"summary": text}


# ---------------------------------------------------------------- the pipeline
def build_pipeline(data: Path) -> Pipeline:
    """The three stages over the folder ``data``."""
    docs = FileRepository(data / "docs", ".txt")
    stats = YamlMetadataFileRepository(data / "stats")
    reports = FileRepository(data / "reports", ".md")

    pipeline = Pipeline(
        [
            FunctionTask(
                "stats",
                document_stats,
                executor=PoolExecutor(ThreadPoolExecutor(8), name="pool"),
                inputs={"doc": docs},
                outputs={"stats": stats},
                concurrency=8,
                # a flaky disk or network share: try again twice, 0.2 s then 0.4 s later
                retry=RetryPolicy(max_attempts=3, backoff="200ms", retry_on=(OSError,)),
            ),
            FunctionTask(
                "report",
                write_report,
                inputs={"stats": stats},
                outputs={"report": reports},
                timeout="30s",
            ).link("docs", docs),  # read, but not a readiness condition ("other" role)
            FunctionTask(
                "summary",
                corpus_summary,
                inputs={"stats": stats},
                outputs={"summary": FileRepository(data, ".md")},  # data/summary.md
                group_by=whole_corpus,
            ),
        ],
        state_dir=data / "state",
    )
    return pipeline


def _data_dir(argv: list[str]) -> tuple[Path, list[str]]:
    """``--data PATH`` (first argument), else ``$PDT_EXAMPLE_DATA``, else ``./data`` next to this file."""
    data = os.environ.get("PDT_EXAMPLE_DATA") or str(Path(__file__).resolve().parent / "data")
    if argv[:1] == ["--data"] and len(argv) > 1:
        data, argv = argv[1], argv[2:]
    elif argv and argv[0].startswith("--data="):
        data, argv = argv[0].split("=", 1)[1], argv[1:]
    return Path(data), argv


if __name__ == "__main__":
    data_dir, args = _data_dir(sys.argv[1:])
    generate_documents(data_dir / "docs")
    main(build_pipeline(data_dir), args)
