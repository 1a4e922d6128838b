"""The :class:`Study`: instances x solver runs x seeds, executed and recorded resumably."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

from combprune.registry import get_solver, list_solvers

from .executors import DEFAULT_GRACE, Executor, Task, crashed_outcome, make_executor
from .instances import Instance, as_instances
from .report import StudyResults
from .store import RecordStore
from .worker import MEMORY_METHODS

#: Status of the marker record written before an in-process (serial) solve starts.
STARTED = "started"

logger = logging.getLogger(__name__)

__all__ = ["SolverRun", "Study", "record_key", "expand_solvers"]


@dataclass
class SolverRun:
    """One solver configuration of a study.

    Attributes
    ----------
    solver : registered name (``combprune.list_solvers()``).
    options : the solver's keyword options.
    label : the name in tables and plots, unique within a study (default: ``solver``).
    time_limit : per-solve seconds for this run (``None``: the study's).
    seeds : solver seeds for this run (``None``: the study's).
    """

    solver: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    time_limit: float | None = None
    seeds: Sequence[int | None] | None = None

    def __post_init__(self) -> None:
        if not self.label:
            self.label = self.solver
        self.options = dict(self.options)


def expand_solvers(
    problem_kinds: Iterable[type], *, exclude: Iterable[str] = (), exact: bool | None = None, available_only: bool = True
) -> list[str]:
    """Names of the registered solvers that handle any of ``problem_kinds`` (the ``"all"`` entry).

    ``exact=True``/``False`` keeps only exact / heuristic solvers; solvers whose optional
    dependency is missing are left out unless ``available_only=False``.
    """
    exclude = set(exclude)
    names: list[str] = []
    for cls in problem_kinds:
        for row in list_solvers(cls):
            if row["name"] in exclude or row["name"] in names:
                continue
            if available_only and not row["available"]:
                continue
            if exact is not None and (row["kind"] == "exact") != exact:
                continue
            names.append(row["name"])
    return names


def record_key(instance_hash: str, label: str, solver: str, options: dict[str, Any], seed: int | None, time_limit: float | None) -> str:
    """The identity of a record: a digest of instance hash, label, solver, options, seed, time limit."""
    blob = json.dumps(
        {"instance": instance_hash, "label": label, "solver": solver, "options": options, "seed": seed, "time_limit": time_limit},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def _as_run(item: Any) -> SolverRun:
    if isinstance(item, SolverRun):
        return item
    if isinstance(item, str):
        return SolverRun(item)
    if isinstance(item, dict):
        return SolverRun(**item)
    raise TypeError(f"solvers: expected a solver name, a SolverRun or a dict, got {type(item).__name__}")


class Study:
    """A set of problem instances solved by a set of solver runs, for every seed.

    Parameters
    ----------
    instances : problems, :class:`Instance` objects, ``.npz`` paths / globs, or lists of
        these (see :func:`combprune.study.generate`, :func:`~combprune.study.from_files`,
        :func:`~combprune.study.from_factory`). Repeats of one instance (same hash) are dropped.
    solvers : solver names, :class:`SolverRun` objects or dicts of their fields. A run is
        applied to the instances its solver supports (others are skipped).
    seeds : solver seeds (default ``(0,)``), overridable per run.
    time_limit : per-solve seconds (``None``: unlimited), overridable per run.
    grace : extra seconds before the process / Ray executors stop a solve that ignores its
        time limit (recorded with status ``"killed"``).
    output : JSON-lines results file; existing records with the same key are not re-run
        (resume). ``None`` keeps records in memory only.
    executor : ``"process"`` (default), ``"serial"``, ``"ray"`` or an :class:`Executor`.
    workers : concurrent solves of the process / Ray executor.
    memory : peak-memory method, ``"rss"`` (default), ``"tracemalloc"`` or ``"none"`` (see
        :mod:`combprune.study.worker`).
    gap_tol : relative gap under which a record counts as solved to optimality.
    rerun_failed : re-run solves recorded as ``"failed"`` or ``"killed"`` on resume.
    name : a study name stored in every record.
    """

    def __init__(
        self,
        instances: Any,
        solvers: Sequence[Any],
        *,
        seeds: Sequence[int | None] = (0,),
        time_limit: float | None = None,
        grace: float = DEFAULT_GRACE,
        output: str | os.PathLike[str] | None = None,
        executor: str | Executor | None = "process",
        workers: int | None = None,
        memory: str = "rss",
        gap_tol: float = 1e-6,
        rerun_failed: bool = False,
        name: str = "study",
        executor_options: dict[str, Any] | None = None,
    ) -> None:
        self.instances: list[Instance] = as_instances(instances)
        if not self.instances:
            raise ValueError("instances: a study needs at least one instance")
        self.runs = [_as_run(s) for s in solvers]
        if not self.runs:
            raise ValueError("solvers: a study needs at least one solver")
        labels: set[str] = set()
        for i, run in enumerate(self.runs):
            get_solver(run.solver)  # unknown names fail here, before any solve
            if run.label in labels:
                raise ValueError(f"solvers[{i}].label: duplicate label {run.label!r}")
            labels.add(run.label)
        if memory not in MEMORY_METHODS:
            raise ValueError(f"memory: expected one of {MEMORY_METHODS}, got {memory!r}")
        if time_limit is not None and time_limit <= 0:
            raise ValueError(f"time_limit: expected a positive number of seconds, got {time_limit}")
        if grace < 0:
            raise ValueError(f"grace: expected >= 0 seconds, got {grace}")
        self.seeds = list(seeds)
        self.time_limit = time_limit
        self.grace = float(grace)
        self.output = None if output is None else os.fspath(output)
        self.executor = executor
        self.workers = workers
        self.executor_options = dict(executor_options or {})
        self.memory = memory
        self.gap_tol = gap_tol
        self.rerun_failed = rerun_failed
        self.name = name

    # ------------------------------------------------------------------------------ tasks
    def tasks(self) -> list[Task]:
        """Every solve of the study, instance-major (so workers reuse cached problems)."""
        from combprune import __version__

        out = []
        for inst in self.instances:
            described = inst.describe()
            for run in self.runs:
                spec = get_solver(run.solver)
                if not spec.supports(inst.problem):
                    continue
                limit = run.time_limit if run.time_limit is not None else self.time_limit
                for seed in run.seeds if run.seeds is not None else self.seeds:
                    key = record_key(inst.hash, run.label, run.solver, run.options, seed, limit)
                    payload = {
                        "solver": run.solver, "options": dict(run.options), "seed": seed,
                        "time_limit": limit, "memory": self.memory, "spec": spec,
                    }
                    head = {
                        "key": key, "study": self.name, **described,
                        "label": run.label, "solver": run.solver, "exact": spec.exact,
                        "options": dict(run.options), "seed": seed, "time_limit": limit,
                        "combprune_version": __version__,
                    }
                    kill_after = None if limit is None else limit + self.grace
                    out.append(Task(key=key, instance_hash=inst.hash, payload=payload, kill_after=kill_after, head=head))
        if not out:
            raise ValueError("solvers: none of the solvers supports any of the study's instances")
        return out

    # ------------------------------------------------------------------------------- run
    def run(
        self,
        *,
        progress: bool = False,
        executor: str | Executor | None = None,
        callback: Callable[[dict[str, Any]], None] | None = None,
    ) -> StudyResults:
        """Run the solves not yet in ``output`` and return the study's records.

        Each record is appended to ``output`` as its solve ends. ``progress`` shows a tqdm
        bar; ``callback(record)`` is called for every new record.
        """
        store = RecordStore(self.output)
        store.lock()
        try:
            return self._run(store, progress, executor, callback)
        finally:
            store.unlock()

    def _run(self, store: RecordStore, progress: bool, executor: str | Executor | None,
             callback: Callable[[dict[str, Any]], None] | None) -> StudyResults:
        tasks = self.tasks()
        for t in tasks:  # a serial solve that never finished took the process down with it
            rec = store.get(t.key)
            if rec is not None and rec.get("status") == STARTED:
                store.append({**t.head, **crashed_outcome(
                    "the process died during this solve (serial executor); it is recorded as failed and "
                    "skipped on resume; use executor='process' to isolate it, or rerun_failed=True to retry", 0.0)})
        if self.rerun_failed:
            for t in tasks:
                rec = store.get(t.key)
                if rec is not None and rec.get("status") in ("failed", "killed"):
                    store.discard(t.key)
        todo = [t for t in tasks if t.key not in store]
        logger.info("study %s: %d solves, %d already recorded", self.name, len(tasks), len(tasks) - len(todo))
        problems = {inst.hash: inst.problem for inst in self.instances}
        ex = make_executor(executor or self.executor, workers=self.workers, **self.executor_options)
        if ex.name == "serial" and any(t.kill_after is not None for t in todo):
            logger.info("serial executor: time limits rely on each solver checking its deadline")
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=self.name, unit="solve")
        try:
            for task, outcome in self._outcomes(ex, todo, problems, store):
                record = {**task.head, **outcome}
                record["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
                store.append(record)
                if callback is not None:
                    callback(record)
                if bar is not None:
                    bar.set_postfix_str(f"{task.head['label']}: {outcome['status']}", refresh=False)
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        records = [store.get(t.key) for t in tasks]
        return StudyResults([r for r in records if r is not None], gap_tol=self.gap_tol)

    @staticmethod
    def _outcomes(ex: Executor, todo: list, problems: dict, store: RecordStore) -> Iterator[tuple[Any, dict[str, Any]]]:
        """``ex.run``; in-process (serial) solves are first marked ``started`` in the store, so
        a solve that kills the process is recorded as failed on resume instead of crashing it
        again (the process executor isolates each solve in a worker and needs no marker)."""
        if ex.name != "serial":
            yield from ex.run(todo, problems)
            return
        for task in todo:
            store.append({**task.head, "status": STARTED})
            yield from ex.run([task], problems)
