"""Gaps, summary tables, performance profiles, objective-versus-time plots and CSV export.

Gap to the best known
---------------------
Gaps are computed at report time from all records of an instance (``instance_hash``), so
adding a solver to a study updates everyone's gap. A record's point is *valid* when its
status is ``optimal``, ``feasible`` or ``time_limit``, its objective is finite and
``problem.check`` accepted it. With ``best`` the best valid objective of the instance
(the minimum for ``sense="min"``, the maximum for ``"max"``)::

    gap = (objective - best) / max(|best|, 1e-12)      (min)
    gap = (best - objective) / max(|best|, 1e-12)      (max)

so ``gap >= 0`` and 0 for the best point (relative differences below 1e-10 are rounding
noise and reported as 0). ``reference`` says where ``best`` comes from:
``"exact"`` when a solver proved optimality (status ``optimal``) at that value (within
``gap_tol``), else ``"best-found"`` (the gap is then only relative to the other solvers).
A valid point that beats a proven optimum by more than ``gap_tol`` is reported in
:attr:`StudyResults.warnings` (a solver bug: a wrong "optimal" claim or a wrong objective).
``bound_gap`` is the gap to the best proven bound of the instance (the largest lower bound
for ``min``), a certified gap where an exact solver stopped early. Records without a valid
point (failed, killed, infeasible answer) have ``gap = None`` and count as unsolved.

A record is *solved* when its gap is ``<= gap_tol``.
"""

from __future__ import annotations

import csv
import inspect
import itertools
import json
import math
import os
import statistics
from collections import defaultdict
from typing import Any, Iterable, Sequence

from .instances import GENERATORS

__all__ = ["StudyResults", "load_results", "format_table"]

VALID_STATUSES = ("optimal", "feasible", "time_limit")
FAILED_STATUSES = ("failed", "killed")
_EPS = 1e-12
NOISE = 1e-10  # relative differences below this are rounding noise and reported as gap 0


def _lookup(record: dict[str, Any], name: str) -> Any:
    """A field of a record: top level, then generator params, then problem metadata, then provenance."""
    if name in record:
        return record[name]
    source = record.get("source") or {}
    params = source.get("params") or {}
    for scope in (params, record.get("meta") or {}, source):
        if name in scope:
            return scope[name]
    generator = GENERATORS.get(source.get("generator", ""))
    if generator is not None:  # a generator parameter left at its default
        par = inspect.signature(generator).parameters.get(name)
        if par is not None and par.default is not inspect.Parameter.empty:
            return par.default
    return None


def _valid(rec: dict[str, Any]) -> bool:
    obj = rec.get("objective")
    return (rec.get("status") in VALID_STATUSES and obj is not None and math.isfinite(obj)
            and rec.get("feasible") is not False and not rec.get("objective_mismatch"))


def _rel(diff: float, ref: float) -> float:
    """``max(diff, 0) / max(|ref|, 1e-12)``, with float noise (< 1e-12) reported as 0."""
    gap = max(0.0, diff) / max(abs(ref), _EPS)
    return 0.0 if gap < NOISE else gap


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return format(value, spec)
    return str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], *, formats: dict[str, str] | None = None) -> str:
    """A GitHub-markdown table of ``rows`` (floats with 3 significant digits unless ``formats``)."""
    formats = formats or {}
    cells = [[_fmt(r.get(c), formats.get(c, ".3g")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(r.get(c)) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "| " + " | ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)) + " |"

    sep = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(columns), sep] + [line(row) for row in cells])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


class StudyResults:
    """Records of a study with gaps computed across solvers (see the module docstring).

    ``records`` are the dicts of a results file; ``gap_tol`` is the relative gap under which
    a record counts as solved to optimality.
    """

    def __init__(self, records: Iterable[dict[str, Any]], *, gap_tol: float = 1e-6) -> None:
        self.gap_tol = float(gap_tol)
        self.records: list[dict[str, Any]] = [dict(r) for r in records]
        self.warnings: list[str] = []
        self._compute_gaps()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[str]:
        """Solver labels in order of first appearance."""
        return list(dict.fromkeys(r["label"] for r in self.records))

    @property
    def instances(self) -> list[str]:
        """Instance hashes in order of first appearance."""
        return list(dict.fromkeys(r["instance_hash"] for r in self.records))

    # ----------------------------------------------------------------------------- gaps
    def _compute_gaps(self) -> None:
        by_instance: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for rec in self.records:
            by_instance[rec["instance_hash"]].append(rec)
        for recs in by_instance.values():
            sense = recs[0].get("sense", "min")
            sign = 1.0 if sense == "min" else -1.0  # work with "smaller is better" values s*obj
            valid = [r for r in recs if _valid(r)]
            best = min((sign * r["objective"] for r in valid), default=None)
            optimal = [r for r in valid if r["status"] == "optimal"]
            bounds = [sign * r["bound"] for r in recs if r.get("bound") is not None and r.get("status") != "failed"]
            best_bound = max(bounds) if bounds else None
            reference = None
            if best is not None:
                certified = [r for r in optimal if _rel(sign * r["objective"] - best, best) <= self.gap_tol]
                reference = "exact" if certified else "best-found"
                for r in optimal:
                    if not certified or r not in certified:
                        r["optimal_refuted"] = True  # not counted as optimal in the summary
                        excess = _rel(sign * r["objective"] - best, best)
                        self.warnings.append(
                            f"instance {r['instance']} ({r['instance_hash'][:8]}): {r['label']} claims optimal "
                            f"{r['objective']:.10g} but a valid point with objective {sign * best:.10g} exists "
                            f"(relative excess {excess:.3g})"
                        )
            for r in recs:
                r["best_known"] = None if best is None else sign * best
                r["reference"] = reference
                if best is not None and _valid(r):
                    r["gap"] = _rel(sign * r["objective"] - best, best)
                    r["bound_gap"] = None if best_bound is None else _rel(sign * r["objective"] - best_bound, sign * r["objective"])
                else:
                    r["gap"] = None
                    r["bound_gap"] = None
                r["solved"] = r["gap"] is not None and r["gap"] <= self.gap_tol
        for r in self.records:
            if r.get("feasible") is False:
                self.warnings.append(
                    f"instance {r['instance']}: {r['label']} returned an infeasible point: {'; '.join(r.get('violations') or [])}"
                )
            if r.get("objective_mismatch"):
                self.warnings.append(f"instance {r['instance']}: {r['label']} reported an objective != problem.objective(x)")

    # --------------------------------------------------------------------------- summary
    def summary(self, by: Sequence[str] = ()) -> list[dict[str, Any]]:
        """One row per solver label (and per value of the fields ``by``, e.g. ``("p",)``).

        Columns: ``label``, the ``by`` fields, ``solves`` (records), ``instances``,
        ``mean_gap`` / ``median_gap`` / ``max_gap`` over records with a valid point,
        ``solved`` (share of records with gap <= gap_tol, failures counting as unsolved),
        ``ref_exact`` (share of records whose instance has a proven optimum, i.e. whose gap is
        exact rather than relative to the best point found), ``optimal`` (records with proven
        optimality; a claim refuted by a better valid point, see :attr:`warnings`, does not count), ``mean_time`` / ``median_time`` (seconds,
        all records; a killed solve counts its time until it was stopped), ``mean_iters``,
        ``peak_mem_mb`` (mean), ``failed``, ``killed``, ``infeasible`` (returned points that
        ``problem.check`` rejected).
        """
        for f in by:
            if self.records and all(_lookup(r, f) is None for r in self.records):
                raise ValueError(f"group_by: unknown field {f!r}: not a record field, generator parameter or problem metadata")
        groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
        for r in self.records:
            groups[(r["label"],) + tuple(_lookup(r, f) for f in by)].append(r)
        order = {label: i for i, label in enumerate(self.labels)}
        keys = sorted(groups, key=lambda k: (order[k[0]],) + tuple((v is None, _sortable(v)) for v in k[1:]))
        rows = []
        for key in keys:
            recs = groups[key]
            gaps = [r["gap"] for r in recs if r["gap"] is not None]
            times = [r["time"] for r in recs if r.get("time") is not None]
            iters = [r["iterations"] for r in recs if r.get("iterations") is not None]
            mems = [r["peak_memory_mb"] for r in recs if r.get("peak_memory_mb") is not None]
            row: dict[str, Any] = {"label": key[0]}
            row.update(zip(by, key[1:]))
            row.update(
                solves=len(recs),
                instances=len({r["instance_hash"] for r in recs}),
                mean_gap=_mean(gaps),
                median_gap=_median(gaps),
                max_gap=max(gaps) if gaps else None,
                solved=sum(r["solved"] for r in recs) / len(recs),
                ref_exact=sum(r.get("reference") == "exact" for r in recs) / len(recs),
                optimal=sum(r.get("status") == "optimal" and not r.get("optimal_refuted") for r in recs),
                mean_time=_mean(times),
                median_time=_median(times),
                mean_iters=_mean([float(i) for i in iters]),
                peak_mem_mb=_mean(mems),
                failed=sum(r.get("status") == "failed" for r in recs),
                killed=sum(r.get("status") == "killed" for r in recs),
                infeasible=sum(r.get("feasible") is False for r in recs),
            )
            rows.append(row)
        return rows

    SUMMARY_COLUMNS = (
        "solves", "mean_gap", "median_gap", "max_gap", "solved", "ref_exact", "optimal",
        "mean_time", "median_time", "peak_mem_mb", "failed", "killed",
    )

    def summary_table(self, by: Sequence[str] = ()) -> str:
        """:meth:`summary` as a markdown table (shares as percentages)."""
        rows = self.summary(by)
        for row in rows:
            row["solved"] = f"{100 * row['solved']:.0f}%"
            row["ref_exact"] = f"{100 * row['ref_exact']:.0f}%"
        return format_table(rows, ["label", *by, *self.SUMMARY_COLUMNS], formats={"mean_time": ".3g", "median_time": ".3g"})

    # ------------------------------------------------------------------------------- csv
    RECORD_COLUMNS = (
        "study", "instance", "instance_hash", "kind", "sense", "label", "solver", "exact", "options", "seed",
        "time_limit", "status", "objective", "bound", "best_known", "reference", "gap", "bound_gap", "solved",
        "solver_gap", "time", "wall_time", "iterations", "nnz", "peak_memory_mb", "memory_method", "feasible",
        "error", "params", "meta", "key",
    )

    def to_csv(self, path: str | os.PathLike[str]) -> str:
        """One row per record (options / params / meta as JSON text; no history)."""
        path = os.fspath(path)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.RECORD_COLUMNS)
            for r in self.records:
                row = []
                for c in self.RECORD_COLUMNS:
                    v = (r.get("source") or {}).get("params") if c == "params" else r.get(c)
                    row.append(json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else ("" if v is None else v))
                writer.writerow(row)
        return path

    def summary_to_csv(self, path: str | os.PathLike[str], by: Sequence[str] = ()) -> str:
        """:meth:`summary` as CSV."""
        path = os.fspath(path)
        rows = self.summary(by)
        columns = list(rows[0]) if rows else ["label"]
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: "" if v is None else v for k, v in row.items()})
        return path

    # ----------------------------------------------------------------------------- plots
    def profile_data(self, metric: str = "time", kind: str | None = None) -> tuple[list[str], dict[str, list[float]]]:
        """Per label, the sorted performance values over the problems (instances) of ``kind``.

        A solver's value on an instance is the median over its seeds of:
        ``metric="time"``: the solve time of a *solved* record (gap <= gap_tol; ``inf``
        otherwise; times floored at 1e-6 s), turned into the Dolan-Moré ratio
        ``r = t / min_s t`` over the solvers; ``metric="gap"``: the gap (``inf`` without a
        valid point). Only labels run on instances of ``kind`` are included (``kind=None``:
        every instance and label). Returns ``(instance hashes, {label: sorted values})``.
        """
        if metric not in ("time", "gap"):
            raise ValueError(f"metric: expected 'time' or 'gap', got {metric!r}")
        samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.records:
            if kind is not None and r.get("kind") != kind:
                continue
            if metric == "time":
                value = max(r["time"], 1e-6) if r["solved"] and r.get("time") is not None else math.inf
            else:
                value = r["gap"] if r["gap"] is not None else math.inf
            samples[r["instance_hash"]][r["label"]].append(value)
        cells = {h: {label: statistics.median(v) for label, v in per.items()} for h, per in samples.items()}
        problems = list(cells)
        labels = [label for label in self.labels if any(label in c for c in cells.values())]
        out: dict[str, list[float]] = {}
        for label in labels:
            values = []
            for prob in problems:
                v = cells[prob].get(label, math.inf)
                if metric == "time":
                    best = min(cells[prob].values())
                    v = v / best if math.isfinite(v) and math.isfinite(best) else math.inf
                values.append(v)
            out[label] = sorted(values)
        return problems, out

    def plot_profile(self, path: str | os.PathLike[str], metric: str = "time", *, title: str | None = None) -> str:
        """Performance profile (Dolan & Moré 2002) saved to ``path``, one panel per formulation.

        ``metric="time"``: share of problems a solver solves (gap <= gap_tol) within a factor
        tau of the fastest solver, against tau (log2 axis). ``metric="gap"``: share of problems
        whose gap is <= tau, against tau (log axis; gap 0 drawn at the left edge). Problems
        are instances (seeds: median, see :meth:`profile_data`); a solver never run on an
        instance of a formulation does not appear in that panel.
        """
        from matplotlib import rcParams

        kinds = list(dict.fromkeys(r.get("kind") for r in self.records)) or [None]
        fig, axes = _figure(1, len(kinds), figsize=(6.0 * len(kinds), 4.2))
        colors = rcParams["axes.prop_cycle"].by_key()["color"]
        style = {label: (colors[i % len(colors)], _LINESTYLES[i % len(_LINESTYLES)]) for i, label in enumerate(self.labels)}
        for ax, kind in zip(axes.flat, kinds):
            problems, data = self.profile_data(metric, kind)
            n = max(1, len(problems))
            finite = [v for vals in data.values() for v in vals if math.isfinite(v)]
            if metric == "time":
                lo, hi = 1.0, max([2.0] + [v * 1.25 for v in finite])
                ax.set_xscale("log", base=2)
                ax.set_xlabel(r"$\tau$ (time / fastest solver's time)")
                ax.set_ylabel(r"share of problems solved within $\tau$")
            else:
                positive = [v for v in finite if v > 0]
                lo = min([self.gap_tol / 10] + [v / 2 for v in positive])
                hi = max([1.0] + [v * 2 for v in positive])
                ax.set_xscale("log")
                ax.set_xlabel(r"$\tau$ (relative gap to the best known)")
                ax.set_ylabel(r"share of problems with gap $\leq \tau$")
            for label, values in data.items():
                xs, ys = [lo], [sum(v <= lo for v in values) / n]
                for v in values:
                    if math.isfinite(v) and v > lo:
                        xs.append(v)
                        ys.append(sum(w <= v for w in values) / n)
                xs.append(hi)
                ys.append(ys[-1])
                color, linestyle = style[label]
                ax.step(xs, ys, where="post", label=label, linewidth=1.6, color=color, linestyle=linestyle)
            ax.set_xlim(lo, hi)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small", loc="lower right")
            ax.set_title(f"{kind or 'all'}: {n} problems", fontsize=10)
        fig.suptitle(title or f"Performance profile ({metric})")
        fig.tight_layout()
        return _save(fig, path)

    def plot_objective_vs_time(
        self, path: str | os.PathLike[str], *, max_instances: int = 6, seed: Any = "first", title: str | None = None
    ) -> str:
        """Incumbent objective against time, one panel per instance.

        Up to ``max_instances`` panels, taken in turn from each formulation. Curves come from
        ``Result.history`` (improving incumbents), drawn as steps up to the solve's end and
        marked there with the final objective. The dashed line is the best known objective
        (``reference`` in the panel title). The objective axis is zoomed on the final values
        (up to 3 times their spread beyond the best), so early incumbents may leave the
        panel. ``seed="first"`` plots each label's first seed only, else the given seed.
        """
        from matplotlib import rcParams

        by_kind: dict[Any, list[str]] = defaultdict(list)
        for r in self.records:
            if r["instance_hash"] not in by_kind[r.get("kind")]:
                by_kind[r.get("kind")].append(r["instance_hash"])
        interleaved = [h for group in itertools.zip_longest(*by_kind.values()) for h in group if h is not None]
        hashes = interleaved[:max_instances]
        ncols = min(3, len(hashes)) or 1
        nrows = max(1, -(-len(hashes) // ncols))
        fig, axes = _figure(nrows, ncols, figsize=(4.2 * ncols, 3.3 * nrows))
        colors = rcParams["axes.prop_cycle"].by_key()["color"]
        color = {label: colors[i % len(colors)] for i, label in enumerate(self.labels)}
        for ax, h in zip(axes.flat, hashes):
            recs = [r for r in self.records if r["instance_hash"] == h]
            seen: set[str] = set()
            finals = []
            for r in recs:
                if seed == "first" and r["label"] in seen:
                    continue
                if seed != "first" and r.get("seed") != seed:
                    continue
                seen.add(r["label"])
                if not _valid(r):
                    continue
                finals.append(r["objective"])
                end = max(r.get("time") or 0.0, 1e-6)
                hist = [(max(t, 1e-6), v) for t, v in (r.get("history") or []) if v is not None]
                if hist:
                    xs = [t for t, _ in hist] + [end]
                    ys = [v for _, v in hist] + [r["objective"]]
                    ax.step(xs, ys, where="post", color=color[r["label"]], linewidth=1.4, label=r["label"])
                    ax.plot([end], [r["objective"]], "o", color=color[r["label"]], markersize=4)
                else:
                    ax.plot([end], [r["objective"]], "o", color=color[r["label"]], markersize=5, label=r["label"])
            best = recs[0].get("best_known")
            if best is not None:
                ax.axhline(best, color="0.3", linestyle="--", linewidth=0.9)
                spread = max(abs(v - best) for v in finals) if finals else 0.0
                if spread > 1e-9 * max(1.0, abs(best)):
                    lo, hi = (best - 0.1 * spread, best + 3 * spread) if recs[0].get("sense", "min") == "min" else (best - 3 * spread, best + 0.1 * spread)
                    ax.set_ylim(lo, hi)
            ax.set_xscale("log")
            ax.set_xlabel("time (s)")
            ax.set_ylabel("objective")
            ax.set_title(f"{recs[0]['instance']}\n({recs[0].get('sense', 'min')}, best: {recs[0].get('reference')})", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(hashes):]:
            ax.set_visible(False)
        handles, labels = {}, []
        for ax in axes.flat:
            for hnd, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in handles:
                    handles[lab] = hnd
                    labels.append(lab)
        if handles:
            fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncol=min(6, len(labels)), fontsize="small")
        fig.suptitle(title or "Objective vs time (incumbent history)")
        fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
        return _save(fig, path)

    # ----------------------------------------------------------------------------- report
    def report(self, out_dir: str | os.PathLike[str], *, by: Sequence[str] = (), prefix: str = "study_") -> dict[str, str]:
        """Write the summary (markdown + CSV), the records CSV and the three plots to ``out_dir``.

        Returns ``{"summary_md", "summary_csv", "records_csv", "profile_time", "profile_gap",
        "objective_vs_time"}`` -> paths.
        """
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {}
        md = os.path.join(out_dir, f"{prefix}summary.md")
        with open(md, "w", encoding="utf-8") as fh:
            fh.write(self.summary_table(by) + "\n")
            if self.warnings:
                fh.write("\nWarnings:\n\n" + "\n".join(f"- {w}" for w in self.warnings) + "\n")
        paths["summary_md"] = md
        paths["summary_csv"] = self.summary_to_csv(os.path.join(out_dir, f"{prefix}summary.csv"), by)
        paths["records_csv"] = self.to_csv(os.path.join(out_dir, f"{prefix}records.csv"))
        paths["profile_time"] = self.plot_profile(os.path.join(out_dir, f"{prefix}profile_time.png"), "time")
        paths["profile_gap"] = self.plot_profile(os.path.join(out_dir, f"{prefix}profile_gap.png"), "gap")
        paths["objective_vs_time"] = self.plot_objective_vs_time(os.path.join(out_dir, f"{prefix}objective_vs_time.png"))
        return paths


_LINESTYLES = ("-", "--", "-.", ":")


def _sortable(v: Any) -> Any:
    return (0, v, "") if _is_number(v) else (1, 0, str(v))


def _figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.2)) -> tuple[Any, Any]:
    """A figure on matplotlib's Agg canvas (no pyplot: the user's backend and state are untouched)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("study plots need matplotlib: install it with `pip install combprune[study]`") from exc
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig: Any, path: str | os.PathLike[str]) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def load_results(path: str | os.PathLike[str], *, gap_tol: float = 1e-6, study: str | None = None) -> StudyResults:
    """:class:`StudyResults` of a results file (optionally only the records of study ``study``)."""
    from .store import read_records

    records = read_records(path)
    if study is not None:
        records = [r for r in records if r.get("study") == study]
    return StudyResults(records, gap_tol=gap_tol)
