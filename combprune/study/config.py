"""TOML study configurations (``combprune study CONFIG.toml``).

Format (every table and key is checked; an error names the field, e.g.
``solvers[2].options.max_iter: expected int, got str ('10')``)::

    [study]
    name = "l0-gap"                       # default: the file's stem
    output = "results/l0_gap.jsonl"       # JSON-lines records (default results/<name>.jsonl)
    executor = "process"                  # "process" (default) | "serial" | "ray"
    workers = 2                           # concurrent solves (process / ray)
    time_limit = 10.0                     # per-solve seconds (default: none)
    grace = 2.0                           # seconds past time_limit before a solve is killed
    seeds = [0, 1]                        # solver seeds (default [0])
    memory = "rss"                        # "rss" | "tracemalloc" | "none"
    gap_tol = 1e-6                        # "solved to optimality" threshold (relative gap)
    rerun_failed = false                  # re-run failed/killed solves on resume
    threads_per_worker = 1                # BLAS/OpenMP threads per process worker (default: unchanged)

    [[instances]]                         # generated: one instance per seed and sweep point
    generator = "l0_regression"           # "l0_regression" | "flop_nnz_ilp" | "structured_miqp"
    params = { n = 40, p = 12, k = 4 }    # the generator's keyword arguments
    sweep = { design = ["gaussian", "correlated"] }   # cartesian product, merged into params
    seeds = [0, 1, 2]                     # instance seeds (default [0])
    name = "tiny"                         # optional name prefix

    [[instances]]
    path = "instances/*.npz"              # files written by Problem.save (a glob)

    [[instances]]
    factory = "mypkg.layers:extract"      # a function returning problem(s), e.g. from a torch model
    params = { checkpoint = "model.ckpt" }

    [[solvers]]
    solver = "bruteforce"                 # a registered name ...
    label = "exact"                       # default: the solver's name
    options = { max_subsets = 100000 }    # checked against the solver's keyword options
    time_limit = 30.0                     # overrides study.time_limit
    seeds = [0]                           # overrides study.seeds

    [[solvers]]
    solver = "all"                        # ... or every available solver for the instances
    exclude = ["bruteforce"]
    exact = false                         # optional: only exact (true) / heuristic (false) ones

    [report]
    dir = "results/l0_gap_report"         # default: <output without .jsonl>_report
    group_by = ["p"]                      # extra summary columns (generator params, metadata)
    prefix = "study_"                     # output file name prefix
    plots = true

Relative paths are relative to the current working directory.
"""

from __future__ import annotations

import inspect
import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from combprune._validation import read_toml
from combprune.params import InvalidOptionError, validate_options
from combprune.registry import UnknownSolverError, get_solver, list_solvers

from .executors import DEFAULT_GRACE, EXECUTORS
from .instances import GENERATORS, Instance, from_factory, from_files, generate
from .report import StudyResults
from .runner import SolverRun, Study, expand_solvers
from .worker import MEMORY_METHODS

__all__ = ["ConfigError", "StudyConfig", "load_config", "run_config", "parse_config"]


class ConfigError(ValueError):
    """A malformed study configuration; the message starts with the offending field."""


def _tname(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "str", list: "array", dict: "table"}.get(type(value), type(value).__name__)


def _err(path: str, expected: str, value: Any) -> ConfigError:
    shown = repr(value)
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return ConfigError(f"{path}: expected {expected}, got {_tname(value)} ({shown})")


def _int(path: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _err(path, "int", value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{path}: expected an int >= {minimum}, got {value}")
    return value


def _float(path: str, value: Any, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(path, "float", value)
    if not math.isfinite(value):
        raise ConfigError(f"{path}: expected a finite number, got {value}")
    if positive and not value > 0:
        raise ConfigError(f"{path}: expected a positive number, got {value}")
    if nonnegative and not value >= 0:
        raise ConfigError(f"{path}: expected a number >= 0, got {value}")
    return float(value)


def _seed(path: str, value: Any) -> int:
    return _int(path, value, 0)


def _str(path: str, value: Any, choices: Sequence[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _err(path, "str", value)
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _bool(path: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(path, "bool", value)
    return value


def _table(path: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _err(path, "table", value)
    return value


def _list(path: str, value: Any, item: Callable[[str, Any], Any]) -> list[Any]:
    if not isinstance(value, list):
        raise _err(path, "array", value)
    return [item(f"{path}[{i}]", v) for i, v in enumerate(value)]


def _no_unknown(path: str, table: dict[str, Any], allowed: Sequence[str]) -> None:
    for key in table:
        if key not in allowed:
            where = f"{path}.{key}" if path else key
            raise ConfigError(f"{where}: unknown field (expected one of {', '.join(allowed)})")


# ------------------------------------------------------------------------ solver options
def _check_options(path: str, solver: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` checked against the solver's declarations (the same ones ``combprune.solve``
    reads), with errors naming the field, e.g. ``solvers[1].options.max_iter: expected int``."""
    spec = get_solver(solver)
    for key in options:
        if key not in spec.options:
            valid = ", ".join(spec.options) or "none"
            raise ConfigError(f"{path}.{key}: unknown option of solver {solver!r} (valid options: {valid})")
    try:
        validate_options(spec.params, options, where=f"{path}.")
    except InvalidOptionError as exc:
        raise ConfigError(str(exc)) from None
    return dict(options)


# ------------------------------------------------------------------------------ sections
_STUDY_KEYS = ("name", "output", "executor", "workers", "time_limit", "grace", "seeds", "memory", "gap_tol",
               "rerun_failed", "start_method", "threads_per_worker", "ray_address")
_INSTANCE_KEYS = ("generator", "path", "factory", "params", "sweep", "seeds", "name")
_SOLVER_KEYS = ("solver", "label", "options", "time_limit", "seeds", "exclude", "exact")
_REPORT_KEYS = ("dir", "group_by", "prefix", "plots")


def _instances(path: str, entry: Any) -> list[Instance]:
    entry = _table(path, entry)
    _no_unknown(path, entry, _INSTANCE_KEYS)
    sources = [k for k in ("generator", "path", "factory") if k in entry]
    if len(sources) != 1:
        raise ConfigError(f"{path}: expected exactly one of 'generator', 'path', 'factory', got {sources or 'none'}")
    source = sources[0]
    name = _str(f"{path}.name", entry["name"]) if "name" in entry else None
    params = dict(_table(f"{path}.params", entry.get("params", {})))
    if source == "path":
        for key in ("params", "sweep", "seeds"):
            if key in entry:
                raise ConfigError(f"{path}.{key}: not allowed with 'path'")
        try:
            return from_files(_str(f"{path}.path", entry["path"]))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}.{exc}") from None
    if source == "factory":
        for key in ("sweep", "seeds"):
            if key in entry:
                raise ConfigError(f"{path}.{key}: not allowed with 'factory'")
        ref = _str(f"{path}.factory", entry["factory"])
        try:
            return from_factory(ref, name=name, **params)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{path}.factory: cannot import {ref!r} ({exc})") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: factory {ref!r} failed: {exc}") from None
    kind = _str(f"{path}.generator", entry["generator"], sorted(GENERATORS))
    seeds = _list(f"{path}.seeds", entry.get("seeds", [0]), _seed)
    sweep = _table(f"{path}.sweep", entry.get("sweep", {}))
    for key, values in sweep.items():
        _list(f"{path}.sweep.{key}", values, lambda p, v: v)
        if key in params:
            raise ConfigError(f"{path}.sweep.{key}: also given in params")
    sig = inspect.signature(GENERATORS[kind]).parameters
    for key in list(params) + list(sweep):
        if key not in sig or key == "seed":
            where = "params" if key in params else "sweep"
            valid = ", ".join(p for p in sig if p != "seed")
            raise ConfigError(f"{path}.{where}.{key}: unknown parameter of generator {kind!r} (valid: {valid})")
    out: list[Instance] = []
    for point in itertools.product(*sweep.values()):
        point_params = {**params, **dict(zip(sweep, point))}
        label = name
        if name and sweep:
            label = f"{name}[{','.join(f'{k}={v}' for k, v in zip(sweep, point))}]"
        try:
            out.extend(generate(kind, seeds=seeds, name=label, **point_params))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{path}: generator {kind!r} rejected {point_params}: {exc}") from None
    return out


def _solvers(path: str, entry: Any, study_kinds: list[type]) -> list[SolverRun]:
    entry = _table(path, entry)
    _no_unknown(path, entry, _SOLVER_KEYS)
    if "solver" not in entry:
        raise ConfigError(f"{path}.solver: missing (a registered solver name or 'all')")
    name = _str(f"{path}.solver", entry["solver"])
    time_limit = _float(f"{path}.time_limit", entry["time_limit"], positive=True) if "time_limit" in entry else None
    seeds = _list(f"{path}.seeds", entry["seeds"], _seed) if "seeds" in entry else None
    if name == "all":
        for key in ("label", "options"):
            if key in entry:
                raise ConfigError(f"{path}.{key}: not allowed with solver = 'all' (list the solver separately)")
        exclude = _list(f"{path}.exclude", entry.get("exclude", []), _str)
        known = {row["name"] for row in list_solvers()}
        for i, ex in enumerate(exclude):
            if ex not in known:
                raise ConfigError(f"{path}.exclude[{i}]: unknown solver {ex!r} (registered: {', '.join(sorted(known))})")
        exact = _bool(f"{path}.exact", entry["exact"]) if "exact" in entry else None
        names = expand_solvers(study_kinds, exclude=exclude, exact=exact)
        return [SolverRun(n, time_limit=time_limit, seeds=seeds) for n in names]
    for key in ("exclude", "exact"):
        if key in entry:
            raise ConfigError(f"{path}.{key}: only allowed with solver = 'all'")
    try:
        spec = get_solver(name)
    except UnknownSolverError as exc:
        raise ConfigError(f"{path}.solver: {str(exc).removeprefix('solver: ')}") from None
    if not any(issubclass(kind, spec.problems) for kind in study_kinds):
        solves = ", ".join(c.__name__ for c in spec.problems)
        raise ConfigError(f"{path}.solver: {name!r} solves {solves}, none of the study's instances")
    options = _check_options(f"{path}.options", name, _table(f"{path}.options", entry.get("options", {})))
    label = _str(f"{path}.label", entry["label"]) if "label" in entry else name
    return [SolverRun(name, options=options, label=label, time_limit=time_limit, seeds=seeds)]


@dataclass
class StudyConfig:
    """A parsed configuration: the :class:`Study` and where/how to report it."""

    study: Study
    report_dir: str | None
    group_by: list[str] = field(default_factory=list)
    prefix: str = "study_"
    plots: bool = True
    source: str = "<config>"

    def run(self, *, progress: bool = False) -> tuple[StudyResults, dict[str, str]]:
        """Run the study, then write the report (unless ``report_dir`` is None)."""
        results = self.study.run(progress=progress)
        return results, self.write_report(results)

    def write_report(self, results: StudyResults) -> dict[str, str]:
        if self.report_dir is None:
            return {}
        if self.plots:
            return results.report(self.report_dir, by=self.group_by, prefix=self.prefix)
        os.makedirs(self.report_dir, exist_ok=True)
        md = os.path.join(self.report_dir, f"{self.prefix}summary.md")
        with open(md, "w", encoding="utf-8") as fh:
            fh.write(results.summary_table(self.group_by) + "\n")
        return {
            "summary_md": md,
            "summary_csv": results.summary_to_csv(os.path.join(self.report_dir, f"{self.prefix}summary.csv"), self.group_by),
            "records_csv": results.to_csv(os.path.join(self.report_dir, f"{self.prefix}records.csv")),
        }


def parse_config(data: dict[str, Any], *, default_name: str = "study", overrides: dict[str, Any] | None = None) -> StudyConfig:
    """Build a :class:`StudyConfig` from a parsed TOML document (``overrides`` replace
    ``[study]`` keys, e.g. from command-line flags)."""
    _no_unknown("", data, ("study", "instances", "solvers", "report"))
    st = dict(_table("study", data.get("study", {})))
    st.update({k: v for k, v in (overrides or {}).items() if v is not None})
    _no_unknown("study", st, _STUDY_KEYS)
    name = _str("study.name", st.get("name", default_name))
    output = _str("study.output", st.get("output", os.path.join("results", f"{name}.jsonl")))
    executor = _str("study.executor", st.get("executor", "process"), EXECUTORS)
    workers = _int("study.workers", st["workers"], 1) if "workers" in st else None
    time_limit = _float("study.time_limit", st["time_limit"], positive=True) if "time_limit" in st else None
    grace = _float("study.grace", st.get("grace", DEFAULT_GRACE), nonnegative=True)
    seeds = _list("study.seeds", st.get("seeds", [0]), _seed)
    if not seeds:
        raise ConfigError("study.seeds: expected at least one seed")
    memory = _str("study.memory", st.get("memory", "rss"), MEMORY_METHODS)
    gap_tol = _float("study.gap_tol", st.get("gap_tol", 1e-6), nonnegative=True)
    rerun_failed = _bool("study.rerun_failed", st.get("rerun_failed", False))
    executor_options: dict[str, Any] = {}
    if "start_method" in st:
        if executor != "process":
            raise ConfigError("study.start_method: only with executor = 'process'")
        executor_options["start_method"] = _str("study.start_method", st["start_method"], ("spawn", "forkserver", "fork"))
    if "threads_per_worker" in st:
        if executor != "process":
            raise ConfigError("study.threads_per_worker: only with executor = 'process'")
        executor_options["threads"] = _int("study.threads_per_worker", st["threads_per_worker"], 1)
    if "ray_address" in st:
        if executor != "ray":
            raise ConfigError("study.ray_address: only with executor = 'ray'")
        executor_options["address"] = _str("study.ray_address", st["ray_address"])

    entries = data.get("instances")
    if entries is None:
        raise ConfigError("instances: missing (add at least one [[instances]] table)")
    entries = _list("instances", entries, lambda p, v: v)
    instances: list[Instance] = []
    for i, entry in enumerate(entries):
        instances.extend(_instances(f"instances[{i}]", entry))
    if not instances:
        raise ConfigError("instances: no instance")
    kinds = list(dict.fromkeys(type(inst.problem) for inst in instances))

    sentries = data.get("solvers")
    if sentries is None:
        raise ConfigError("solvers: missing (add at least one [[solvers]] table)")
    sentries = _list("solvers", sentries, lambda p, v: v)
    runs: list[SolverRun] = []
    labels: dict[str, str] = {}
    for i, entry in enumerate(sentries):
        for run in _solvers(f"solvers[{i}]", entry, kinds):
            if run.label in labels:
                raise ConfigError(f"solvers[{i}].label: duplicate label {run.label!r} (also in {labels[run.label]})")
            labels[run.label] = f"solvers[{i}]"
            runs.append(run)
    if not runs:
        raise ConfigError("solvers: no available solver for the study's instances")

    rep = _table("report", data.get("report", {}))
    _no_unknown("report", rep, _REPORT_KEYS)
    default_dir = (output[: -len(".jsonl")] if output.endswith(".jsonl") else output) + "_report"
    report_dir = _str("report.dir", rep.get("dir", default_dir))
    group_by = _list("report.group_by", rep.get("group_by", []), _str)
    prefix = _str("report.prefix", rep.get("prefix", "study_"))
    plots = _bool("report.plots", rep.get("plots", True))

    try:
        study = Study(
            instances, runs, seeds=seeds, time_limit=time_limit, grace=grace, output=output, executor=executor,
            workers=workers, memory=memory, gap_tol=gap_tol, rerun_failed=rerun_failed, name=name,
            executor_options=executor_options,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return StudyConfig(study=study, report_dir=report_dir, group_by=group_by, prefix=prefix, plots=plots)


def load_config(path: str | os.PathLike[str], **overrides: Any) -> StudyConfig:
    """Read and validate a TOML study configuration (errors: :class:`ConfigError` naming file and field)."""
    path = os.fspath(path)
    data = read_toml(path, ConfigError)
    stem = os.path.splitext(os.path.basename(path))[0]
    try:
        config = parse_config(data, default_name=stem, overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    config.source = path
    return config


def run_config(path: str | os.PathLike[str], *, progress: bool = False, **overrides: Any) -> tuple[StudyResults, dict[str, str]]:
    """Load ``path``, run its study (resuming from its output file) and write its report."""
    return load_config(path, **overrides).run(progress=progress)
