r"""Multi-stage pruning (CHITA++ / FALCON++): a schedule of budgets, re-linearising each stage.

A one-shot solve uses a local quadratic model of the loss around the dense weights; at high
sparsity the solution leaves the region where that model is accurate. The multi-stage driver
walks the budget down, ``k_1 > k_2 > ... > k_T = k`` (and ``F_1 > ... > F_T = F`` for a FLOP
budget), and at every stage asks the caller for a *fresh* problem linearised at the current
weights (new gradients, ``w_bar`` = the current weights), then solves it::

    w_0 = initial weights
    for t = 1..T:   problem_t = build(w_{t-1}, k_t, F_t);   w_t = solve(problem_t).x

The rebuild is a callback, so this module knows nothing about torch; the torch adapter
supplies ``build``. This module registers no solver.

``build`` may return a :class:`ChosenPoint` instead of a bare problem: the problem and a point
the caller already chose for it (the torch adapter's per-stage ``l2="auto"`` solves candidate
ridges on part of the samples and scores them on the rest). An intermediate stage then moves
to that point without a solve (it is the point whose quality was measured, and a solve would
repeat the winning candidate's work); the last stage is always solved, warm started from the
point when the solver takes a ``warm_start``; with ``keep_solve`` the caller may reject that
solve (``keep_solve(x, point)`` False: the point is kept instead, the stage marked unsolved).
A point infeasible for the stage's budgets is ignored (with a warning): the stage is solved
as without it.

Schedules (``sparsity_schedule``), sparsity = fraction of weights removed, from a base
sparsity ``s_0`` to the target ``s_T`` over T stages (t = 1..T):

* ``"poly"`` (cubic, the papers' default, Zhu & Gupta): ``s_t = s_T + (s_0 - s_T)(1 - t/T)^3``
  (large steps first, small steps at high sparsity);
* ``"exp"``: density ``d = 1 - s`` geometric, ``d_t = d_0 (d_T / d_0)^{t/T}``;
* ``"linear"``: ``s_t = s_0 + (s_T - s_0) t / T``;
* ``"const"``: ``s_t = s_T`` at every stage (repeated re-linearisation at the target).

FLOP budgets follow the same schedule applied to the fraction of FLOPs removed,
``1 - F / F_dense``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from combprune import backend
from combprune.api import solve
from combprune.registry import free_warm_start
from combprune.result import Result, Status

logger = logging.getLogger(__name__)

__all__ = ["multistage", "sparsity_schedule", "SCHEDULES", "ChosenPoint"]

SCHEDULES = ("poly", "exp", "linear", "const")


def sparsity_schedule(target: float, n_stages: int, *, kind: str = "poly", base: float = 0.0) -> np.ndarray:
    """Sparsities (fraction removed) ``s_1 <= ... <= s_T = target`` for ``n_stages`` stages.

    ``base`` is the sparsity before the first stage (``s_0``; the papers start CHITA++ from
    0.2-0.3 for 15-20 stages). See the module docstring for the four ``kind`` s.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"kind: expected one of {SCHEDULES}, got {kind!r}")
    if isinstance(n_stages, bool) or not isinstance(n_stages, (int, np.integer)) or n_stages < 1:
        raise ValueError(f"n_stages: expected an integer >= 1, got {n_stages!r}")
    for name, v in (("target", target), ("base", base)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"{name}: expected a sparsity in [0, 1], got {v!r}")
    target, base = float(target), float(base)
    if base > target:
        raise ValueError(f"base: the base sparsity {base} exceeds the target {target}")
    t = np.arange(1, n_stages + 1) / n_stages
    if kind == "poly":
        s = target + (base - target) * (1.0 - t) ** 3
    elif kind == "linear":
        s = base + (target - base) * t
    elif kind == "const":
        s = np.full(n_stages, target)
    else:
        d0, dT = 1.0 - base, 1.0 - target
        if dT <= 0:
            s = np.where(t < 1, 1.0 - d0 * (1e-12 / d0) ** t, 1.0)
        else:
            s = 1.0 - d0 * (dT / d0) ** t
    s[-1] = target
    return np.clip(s, 0.0, 1.0)


def _budgets(schedule: Any, p: int, k: int | None, flop_budget: float | None, dense_flops: float | None, n_stages: int, base: float) -> list[tuple[int, float | None]]:
    if isinstance(schedule, str):
        if k is None:
            raise ValueError("k: a named schedule needs the target number of weights kept")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= p:
            raise ValueError(f"k: expected an integer in [0, {p}], got {k!r}")
        s = sparsity_schedule(1.0 - k / p, n_stages, kind=schedule, base=min(base, 1.0 - k / p))
        ks = [int(round((1.0 - si) * p)) for si in s]
        ks[-1] = int(k)
        ks = list(np.maximum.accumulate(np.array(ks)[::-1])[::-1])  # non-increasing
        ks = [max(int(kk), int(k)) for kk in ks]
        if flop_budget is None:
            return [(kk, None) for kk in ks]
        if dense_flops is None or not float(dense_flops) > 0:
            raise ValueError("dense_flops: a FLOP budget with a named schedule needs the dense model's FLOPs (> 0)")
        target_f = 1.0 - float(flop_budget) / float(dense_flops)
        if not 0.0 <= target_f <= 1.0:
            raise ValueError(f"flop_budget: must lie in [0, dense_flops], got {flop_budget!r}")
        sf = sparsity_schedule(target_f, n_stages, kind=schedule, base=min(base, target_f))
        Fs = [float(dense_flops) * (1.0 - x) for x in sf]
        Fs[-1] = float(flop_budget)
        return list(zip(ks, Fs))
    try:
        items = list(schedule)
    except TypeError:
        raise ValueError(f"schedule: expected one of {SCHEDULES} or a sequence of k (or (k, F) pairs), got {schedule!r}") from None
    if not items:
        raise ValueError("schedule: empty sequence")
    out: list[tuple[int, float | None]] = []
    for item in items:
        if isinstance(item, (tuple, list)):
            if len(item) != 2:
                raise ValueError(f"schedule: expected (k, F) pairs, got {item!r}")
            kk, FF = item
        else:
            kk, FF = item, None
        if isinstance(kk, bool) or not isinstance(kk, (int, np.integer)) or not 0 <= kk <= p:
            raise ValueError(f"schedule: k values must be integers in [0, {p}], got {kk!r}")
        out.append((int(kk), None if FF is None else float(FF)))
    return out


@dataclass(frozen=True)
class ChosenPoint:
    """A stage's problem with a point already chosen for it (what ``build`` may return)."""

    problem: Any
    x: Any


def _stage_result(problem: Any, point: ChosenPoint | None, last: bool, solver: str, options: dict[str, Any],
                  keep_solve: Callable[[np.ndarray, ChosenPoint], bool] | None = None, **kwargs: Any) -> Result:
    """The stage's result: the chosen point itself (intermediate stages, when feasible), else a
    solve (warm started from a feasible point when the solver takes one), unless ``keep_solve``
    rejects the solve in favour of the point."""
    if point is None:
        return solve(problem, solver=solver, **kwargs, **options)
    x = np.asarray(backend.to_numpy(point.x), dtype=np.float64).reshape(-1)
    violations = problem.check(x)

    def the_point(message: str) -> Result:
        return Result(x=x, support=x != 0, objective=problem.objective(x), status=Status.FEASIBLE, solver=solver,
                      message=message, info={"chosen_point": True})

    if not last and not violations:
        return the_point("the chosen point (no solve)")
    if violations:
        logger.warning("multistage: the chosen point is infeasible for the stage (%s); solving without it", "; ".join(violations))
        return solve(problem, solver=solver, **kwargs, **options)
    if free_warm_start(solver, options):
        options = dict(options, warm_start=x)
    result = solve(problem, solver=solver, **kwargs, **options)
    if keep_solve is not None and result.x is not None and not keep_solve(np.asarray(backend.to_numpy(result.x), dtype=np.float64), point):
        logger.info("multistage: the last stage's solve was rejected (keep_solve); keeping its chosen point")
        return the_point("the chosen point (the solve from it was rejected by keep_solve)")
    return result


def multistage(
    build: Callable[[Any, int, float | None], Any],
    schedule: str | Sequence[Any],
    solver: str = "chita",
    *,
    weights: Any,
    k: int | None = None,
    flop_budget: float | None = None,
    dense_flops: float | None = None,
    n_stages: int = 15,
    base: float = 0.0,
    time_limit: float | None = None,
    seed: int | None = None,
    callback: Callable[[int, Result], None] | None = None,
    polish: int = 0,
    accept: Callable[[ChosenPoint], bool] | None = None,
    keep_solve: Callable[[np.ndarray, ChosenPoint], bool] | None = None,
    **options: Any,
) -> Result:
    """Run ``solver`` over a schedule of budgets, rebuilding the problem at every stage.

    Parameters
    ----------
    build : ``build(weights, k, F) -> problem`` — the local model linearised at ``weights``
        (``w_bar = weights``) with budgets ``k`` and ``F`` (``F`` is None without FLOPs); or a
        :class:`ChosenPoint` (module docstring).
    schedule : ``"poly"``, ``"exp"``, ``"linear"``, ``"const"`` (with ``k``, ``n_stages``,
        ``base`` and, for FLOPs, ``flop_budget`` and ``dense_flops``), or an explicit sequence
        of ``k_t`` or ``(k_t, F_t)``.
    solver : registered solver name run at every stage (``options`` are passed to it).
    weights : the starting (dense) weights, any array namespace.
    time_limit : for the whole run; each stage gets an equal share of what is left.
    callback : called as ``callback(stage_index, stage_result)`` after each stage.
    polish, accept : up to ``polish`` more stages at the final budget after the schedule, each
        built like the others (``build`` must return a :class:`ChosenPoint`) and kept while
        ``accept(point)`` says so; the last kept stage (the schedule's last when none is) is
        then solved from its point, as the last stage is without polishing.
    keep_solve : ``keep_solve(x, point)`` after the last stage is solved from a
        :class:`ChosenPoint`: False keeps the point instead of the solution ``x`` (a caller
        that can measure both, e.g. on the samples the solve fitted).

    Returns
    -------
    Result of the last stage (``x`` = final weights) with ``solver = "multistage(<solver>)"``,
    ``iterations`` summed over stages, ``history`` the concatenation of the stages' histories
    (times from the start of the run; objectives of different stages belong to different local
    models), and ``info["stages"]``: for each stage ``k``, ``flop_budget``, ``sparsity``,
    ``objective``, ``status``, ``time``, ``solved`` (False where the stage took a
    :class:`ChosenPoint`), ``polish`` (True for a kept polishing stage) and the stage's full
    ``result``.
    """
    if not callable(build):
        raise TypeError(f"build: expected a callable build(weights, k, F), got {type(build).__name__}")
    if not isinstance(solver, str):
        raise TypeError(f"solver: expected a registered solver name, got {solver!r}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0 and math.isfinite(time_limit)):
        raise ValueError(f"time_limit: expected a positive number of seconds, got {time_limit!r}")
    if weights is None or not (backend.is_array(weights) or isinstance(weights, (list, tuple))):
        raise ValueError("weights: expected the starting weight vector")
    p = int(np.asarray(backend.to_numpy(weights) if backend.is_array(weights) else weights).reshape(-1).shape[0])
    if not isinstance(base, (int, float)) or not 0.0 <= float(base) < 1.0:
        raise ValueError(f"base: expected a sparsity in [0, 1), got {base!r}")
    if isinstance(polish, bool) or not isinstance(polish, int) or polish < 0:
        raise ValueError(f"polish: expected a number of stages >= 0, got {polish!r}")
    if polish and accept is None:
        raise ValueError("accept: polishing stages need accept(point), which decides whether a stage is kept")
    budgets = _budgets(schedule, p, k, flop_budget, dense_flops, n_stages, float(base))
    start = time.perf_counter()
    current = weights
    stages: list[dict[str, Any]] = []
    history: list[tuple[float, float]] = []
    iterations = 0
    result: Result | None = None
    last_point: ChosenPoint | None = None

    def record(t: int, kk: int, FF: float | None, t0: float, result: Result, polishing: bool = False) -> None:
        nonlocal iterations
        history.extend((t0 - start + h_t, h_v) for h_t, h_v in result.history)
        iterations += int(result.iterations)
        stages.append({
            "stage": t + 1, "k": kk, "flop_budget": FF, "sparsity": 1.0 - kk / p,
            "objective": result.objective, "status": result.status.value, "time": result.time,
            "solved": not result.info.get("chosen_point", False), "polish": polishing, "result": result,
        })
        logger.info("multistage stage %d: k=%d F=%s objective=%.6g (%.3gs)", t + 1, kk, FF, result.objective, result.time)
        if callback is not None:
            callback(t, result)

    for t, (kk, FF) in enumerate(budgets):
        t0 = time.perf_counter()
        stage_limit = None
        if time_limit is not None:
            left = time_limit - (t0 - start)
            if left <= 0:
                break
            stage_limit = left / (len(budgets) - t)
        built = build(current, kk, FF)
        point = built if isinstance(built, ChosenPoint) else None
        problem = built.problem if point is not None else built
        last = t == len(budgets) - 1 and not (polish and point is not None)
        result = _stage_result(problem, point, last, solver, options, keep_solve, time_limit=stage_limit, seed=seed)
        if result.x is None:
            raise RuntimeError(f"multistage: stage {t + 1} (k={kk}, F={FF}) returned no solution ({result.status.value})")
        record(t, kk, FF, t0, result)
        current = result.x
        last_point = point if result.info.get("chosen_point", False) else None
    if result is None:
        raise RuntimeError("multistage: time_limit expired before the first stage")
    completed = len(stages) == len(budgets)
    if completed and polish and last_point is not None:  # polishing stages at the final budget, then the last kept one solved
        kk, FF = budgets[-1]
        for _ in range(polish):
            t0 = time.perf_counter()
            if time_limit is not None and time_limit - (t0 - start) <= 0:
                break
            built = build(current, kk, FF)
            if not isinstance(built, ChosenPoint) or not accept(built):
                break
            result = _stage_result(built.problem, built, False, solver, options, seed=seed)
            if not result.info.get("chosen_point", False):
                break  # the point was infeasible for the stage: keep the previous one
            record(len(stages), kk, FF, t0, result, polishing=True)
            current, last_point = result.x, built
        t0 = time.perf_counter()
        left = None if time_limit is None else time_limit - (t0 - start)
        if left is None or left > 0:
            result = _stage_result(last_point.problem, last_point, True, solver, options, keep_solve, time_limit=left, seed=seed)
            stages[-1].update(objective=result.objective, status=result.status.value, time=stages[-1]["time"] + result.time,
                              solved=not result.info.get("chosen_point", False), result=result)
            history.extend((t0 - start + h_t, h_v) for h_t, h_v in result.history)
            iterations += int(result.iterations)
    status = result.status if completed else Status.TIME_LIMIT
    if status is Status.OPTIMAL:
        status = Status.FEASIBLE  # the composition is a heuristic even when each stage is exact
    return Result(
        x=result.x, support=result.support, objective=result.objective, status=status,
        solver=f"multistage({solver})", time=time.perf_counter() - start, iterations=iterations,
        history=history, info={"stages": stages, "schedule": [(kk, FF) for kk, FF in budgets], "completed": completed},
    )
