"""``import pydatatask`` in a fresh interpreter: wall time and peak RSS.

Each measurement is a new ``python -c`` that times the import with ``perf_counter`` and
reports its peak RSS (VmHWM). ``python`` is the bare interpreter (nothing imported), for
scale; ``0.4.7`` is the same import in the 0.4.7 virtualenv. Target: <= 0.25 s and
<= 40 MB.
"""

from __future__ import annotations

import sys

from . import Options, Point, ScenarioResult, Verdict, ratio

NAME = "import_cost"
TITLE = "import pydatatask in a fresh interpreter"

CODE = """
import sys, time, json
t0 = time.perf_counter()
if sys.argv[1] != "-":
    __import__(sys.argv[1])
t = time.perf_counter() - t0
hwm = 0.0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = float(line.split()[1]) / 1024
print("BENCH-RESULT " + json.dumps({"seconds": t, "peak_rss_mb": hwm, "modules": len(sys.modules)}))
"""


def points(opts: Options) -> list[Point]:
    series = ["ours", "python"] + (["0.4.7"] if opts.with_047 else [])
    return [Point("import", 1, {}, series)]


def command(series: str, params: dict[str, object], python047: str | None) -> list[str]:
    if series == "0.4.7":
        assert python047
        return [python047, "-I", "-c", CODE, "pydatatask"]
    return [sys.executable, "-c", CODE, "pydatatask" if series == "ours" else "-"]


def verdicts(res: ScenarioResult) -> list[Verdict]:
    t = res.median("import", "ours")
    rss = res.median("import", "ours", "peak_rss_mb")
    old_t = res.median("import", "0.4.7")
    old_rss = res.median("import", "0.4.7", "peak_rss_mb")
    out = [
        Verdict("<= 0.25 s", "n/a" if t is None else f"{t:.3f} s", None if t is None else t <= 0.25),
        Verdict(
            "<= 40 MB RSS", "n/a" if rss is None else f"{rss:.1f} MiB", None if rss is None else rss <= 40
        ),
    ]
    r, r2 = ratio(old_t, t), ratio(old_rss, rss)
    out.append(
        Verdict(
            "ratio to 0.4.7 printed",
            "n/a" if r is None or r2 is None else f"{r:.1f}x faster, {r2:.1f}x less RSS than 0.4.7",
            None,
        )
    )
    return out
