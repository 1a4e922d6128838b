"""Shared helpers of the benchmark scripts: timing and result files.

``timeit(fn, repeat=3, warmup=0)`` returns the best wall time (seconds) over ``repeat`` calls
and the last return value; ``save_results(name, rows, meta)`` writes
``benchmarks/results/<name>.json`` (``{"meta": ..., "rows": [...]}``) and
``benchmarks/results/<name>.md`` (a markdown table of the rows, columns in first-seen order,
preceded by the meta as a bullet list) and returns the markdown text.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from typing import Any, Callable

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

__all__ = ["timeit", "save_results", "markdown_table", "machine_info", "RESULTS_DIR"]


def timeit(fn: Callable[[], Any], repeat: int = 3, warmup: int = 0) -> tuple[float, Any]:
    """Best-of-``repeat`` wall-clock seconds of ``fn()`` (after ``warmup`` untimed calls)."""
    out = None
    for _ in range(warmup):
        out = fn()
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def machine_info() -> dict[str, Any]:
    """Python, NumPy and CPU facts worth recording next to timings."""
    import numpy as np

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        if math.isnan(x):
            return "-"
        if x == 0 or 1e-3 <= abs(x) < 1e6:
            return f"{x:.4g}"
        return f"{x:.3e}"
    return str(x)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of ``rows`` (dicts); columns in first-seen order, missing cells ``-``."""
    cols: list[str] = []
    for row in rows:
        for key in row:
            if key not in cols:
                cols.append(key)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def save_results(name: str, rows: list[dict[str, Any]], meta: dict[str, Any] | None = None) -> str:
    """Write ``results/<name>.json`` and ``results/<name>.md``; return the markdown."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    meta = dict(meta or {})
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows}, fh, indent=2, default=float)
    header = [f"# {name}", ""] + [f"- {k}: {_fmt(v) if not isinstance(v, str) else v}" for k, v in meta.items()]
    md = "\n".join(header + ["", markdown_table(rows), ""])
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "w") as fh:
        fh.write(md)
    return md
