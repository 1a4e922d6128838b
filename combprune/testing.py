"""Conformance checks every registered solver must pass (built-in or plugin).

>>> from combprune.testing import check_solver
>>> check_solver("chita")          # raises AssertionError naming the failed property  # doctest: +SKIP

For each formulation the solver declares, :func:`check_solver` solves a few small instances
(from :func:`conformance_instances`) and asserts:

* the point is finite and feasible (``problem.check(x) == []``);
* the reported objective equals the objective recomputed in float64 from ``x``;
* a reported bound is a valid bound on the optimum (``<=`` for minimisation, ``>=`` for
  maximisation) and ``gap`` is consistent with it;
* status ``optimal`` only when the point is optimal, the optimum being computed by the
  formulation's exact reference solver (``bruteforce``; instances are small enough for it);
* ``time_limit`` is honoured on a larger instance: the solver returns within
  ``max(1.5 x limit, limit + 0.5 s)`` with a feasible point;
* an unknown option is rejected with ``TypeError``;
* every option is declared (:mod:`combprune.params`), its default satisfies its declaration,
  and a value of no declared kind is rejected with ``InvalidOptionError`` naming the option;
* the same seed gives the same result.

A formulation added by a plugin registers its instances with :func:`register_instances`;
see ``docs/writing_a_solver.md``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import numpy as np

from combprune.api import solve
from combprune.params import InvalidOptionError, validate_options
from combprune.problems import FlopNnzILP, L0Regression, LayerwiseL0, Problem, StructuredMIQP
from combprune.problems.generators import random_flop_ilp, random_l0_regression, random_structured
from combprune.registry import get_solver
from combprune.result import Result, Status

__all__ = ["check_solver", "conformance_instances", "register_instances", "OBJECTIVE_RTOL", "time_limit_slack"]

#: Relative tolerance of objective recomputation and of optimality claims.
OBJECTIVE_RTOL = 1e-6

_INSTANCES: dict[type, tuple[Callable[[], list[Problem]], Callable[[], Problem], str]] = {}


def register_instances(cls: type, small: Callable[[], list[Problem]], large: Callable[[], Problem], *, reference: str = "bruteforce") -> None:
    """Declare the conformance instances of a formulation: tiny ones that the exact solver
    ``reference`` solves to proven optimality, and a larger one for the time-limit check."""
    _INSTANCES[cls] = (small, large, reference)


def conformance_instances(cls: type) -> tuple[list[Problem], Problem]:
    """(small instances, one larger instance) of formulation ``cls``."""
    if cls not in _INSTANCES:
        raise KeyError(f"no conformance instances registered for {cls.__name__}; call combprune.testing.register_instances")
    small, large, _ = _INSTANCES[cls]
    return small(), large()


register_instances(
    L0Regression,
    lambda: [
        random_l0_regression(12, 8, 3, design="correlated", seed=0),
        random_l0_regression(6, 9, 4, design="rank_deficient", ridge=1e-2, seed=1),
        random_l0_regression(10, 8, 4, flop_layers=3, flop_fraction=0.4, seed=2),
    ],
    lambda: random_l0_regression(300, 1500, 100, design="correlated", flop_layers=5, seed=3),
)
register_instances(
    FlopNnzILP,
    lambda: [random_flop_ilp(10, 4, seed=0), random_flop_ilp(12, 5, n_layers=3, ties=True, seed=1), random_flop_ilp(9, 9, budget_fraction=0.3, seed=2)],
    lambda: random_flop_ilp(60_000, 20_000, n_layers=30, seed=3),
)
register_instances(
    StructuredMIQP,
    lambda: [random_structured(8, 3, 2, seed=0), random_structured(9, 2, group_size=3, correlated=True, seed=1), random_structured(8, 3, with_costs=True, seed=2)],
    lambda: random_structured(1200, 64, group_size=4, seed=3),
)


def _layerwise(N: int, d: int, m: int, seed: int, **pattern: Any) -> LayerwiseL0:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, d)) @ (np.eye(d) + 0.3 * rng.standard_normal((d, d)))
    return LayerwiseL0.from_activations(X, rng.standard_normal((d, m)), **pattern)


register_instances(
    LayerwiseL0,
    lambda: [_layerwise(20, 6, 2, 0, k=5), _layerwise(16, 8, 2, 1, nm="2:4"), _layerwise(12, 6, 3, 2, k_col=2)],
    lambda: _layerwise(1024, 256, 256, 3, nm="2:4"),
    reference="layerwise-exact",
)


def time_limit_slack(limit: float) -> float:
    """Wall-clock seconds a solver may take under ``time_limit=limit``."""
    return max(1.5 * limit, limit + 0.5)


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= OBJECTIVE_RTOL * max(1.0, abs(a), abs(b))


def _fail(name: str, problem: Problem, what: str) -> AssertionError:
    return AssertionError(f"solver {name!r} on {problem!r}: {what}")


def _check_point(name: str, problem: Problem, res: Result) -> None:
    x = np.asarray(res.x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise _fail(name, problem, "the point has non-finite entries")
    violations = problem.check(res.x)
    if violations:
        raise _fail(name, problem, f"infeasible point: {'; '.join(violations)}")
    recomputed = problem.objective(x)
    if not (math.isfinite(res.objective) and _close(res.objective, recomputed)):
        raise _fail(name, problem, f"reported objective {res.objective!r} but the point's objective is {recomputed!r}")


def _check_against_optimum(name: str, problem: Problem, res: Result, optimum: float) -> None:
    sign = 1.0 if problem.sense == "min" else -1.0
    if sign * (res.objective - optimum) < -OBJECTIVE_RTOL * max(1.0, abs(optimum)):
        raise _fail(name, problem, f"objective {res.objective!r} is better than the proven optimum {optimum!r}")
    if res.status == Status.OPTIMAL and not _close(res.objective, optimum):
        raise _fail(name, problem, f"status optimal with objective {res.objective!r}, but the optimum is {optimum!r}")
    if res.bound is not None and sign * (res.bound - optimum) > OBJECTIVE_RTOL * max(1.0, abs(optimum)):
        raise _fail(name, problem, f"bound {res.bound!r} is not a valid {'lower' if sign > 0 else 'upper'} bound (optimum {optimum!r})")


def _optimum(problem: Problem) -> float:
    reference = _INSTANCES[type(problem)][2]
    res = solve(problem, reference)
    if res.status != Status.OPTIMAL:
        raise AssertionError(f"{reference} could not prove the optimum of conformance instance {problem!r}")
    return res.objective


def check_solver(name: str, *, formulations: Iterable[type] | None = None, time_limit: float = 0.3) -> None:
    """Run the conformance checks on solver ``name``; ``AssertionError`` names the failed property.

    ``formulations`` restricts the check to some of the solver's formulations (default: all it
    declares that have registered instances). Raises ``MissingDependencyError`` when the
    solver's optional dependency is missing.
    """
    spec = get_solver(name)
    spec.ensure_available()
    classes = [c for c in (formulations or spec.problems) if c in _INSTANCES]
    if not classes:
        raise AssertionError(f"solver {name!r}: none of its formulations {[c.__name__ for c in spec.problems]} has conformance instances")
    for cls in classes:
        small, large = conformance_instances(cls)
        for problem in small:
            res = solve(problem, name, seed=0)
            _check_point(name, problem, res)
            _check_against_optimum(name, problem, res, _optimum(problem))
            again = solve(problem, name, seed=0)
            if not (np.array_equal(np.asarray(again.x), np.asarray(res.x)) and again.status == res.status):
                raise _fail(name, problem, "two runs with seed=0 gave different results")
        try:
            solve(small[0], name, no_such_option_for_conformance=1)
        except TypeError as exc:
            if "no_such_option_for_conformance" not in str(exc):
                raise _fail(name, small[0], f"the error for an unknown option does not name it: {exc}") from None
        else:
            raise _fail(name, small[0], "an unknown option was accepted")
        _check_time_limit(name, large, time_limit)
    _check_declarations(name, small[0])


def _check_declarations(name: str, problem: Problem) -> None:
    spec = get_solver(name)
    undeclared = [opt for opt in spec.options if opt not in spec.params]
    if undeclared:
        raise _fail(name, problem, f"options {', '.join(undeclared)} have no declaration (register_solver(params=...))")
    for opt in spec.options:
        try:
            validate_options(spec.params, {opt: spec.defaults[opt]})
        except InvalidOptionError as exc:
            raise _fail(name, problem, f"the default of option {opt!r} violates its own declaration: {exc}") from None
        try:
            solve(problem, name, **{opt: object()})
        except InvalidOptionError as exc:
            if not str(exc).startswith(opt):
                raise _fail(name, problem, f"the error for a bad value of {opt!r} does not name it: {exc}") from None
        else:
            raise _fail(name, problem, f"option {opt!r} accepted an arbitrary object")


def _check_time_limit(name: str, problem: Problem, limit: float) -> None:
    """Returns in time with a feasible point; an exact solver may instead refuse an instance
    it cannot solve (``ValueError``), as long as it refuses in time."""
    t = time.perf_counter()
    try:
        res = solve(problem, name, time_limit=limit, seed=0)
    except ValueError:
        if not get_solver(name).exact or time.perf_counter() - t > time_limit_slack(limit):
            raise
        return
    elapsed = time.perf_counter() - t
    if elapsed > time_limit_slack(limit):
        raise _fail(name, problem, f"time_limit={limit} s but the solver returned after {elapsed:.2f} s")
    if res.status not in (Status.TIME_LIMIT, Status.FEASIBLE, Status.OPTIMAL):
        raise _fail(name, problem, f"under time_limit={limit} s the solver returned status {res.status!s} without a feasible point")
    _check_point(name, problem, res)
