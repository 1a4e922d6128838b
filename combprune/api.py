"""``combprune.solve``: the one entry point (cvxpy style: the problem is data, the solver a name)."""

from __future__ import annotations

import inspect
import logging
from typing import Any

from ._validation import check_bool, check_seed, check_time_limit
from .registry import get_solver
from .result import STATUS_MESSAGES, Deadline, Result

logger = logging.getLogger(__name__)

__all__ = ["solve"]


def solve(problem: Any, solver: str | None = None, *, time_limit: float | None = None, seed: int | None = None, **options: Any) -> Result:
    """Solve ``problem`` with the registered solver ``solver``.

    Parameters
    ----------
    problem : an ``L0Regression``, ``FlopNnzILP`` or ``StructuredMIQP`` (or a plugin's formulation).
    solver : registered name (``combprune.list_solvers()``); default: the formulation's
        recommended solver (``chita``, ``dual-sort``, ``osscar``).
    time_limit : wall-clock seconds; the solver then returns its best feasible point with
        status ``time_limit``.
    seed : seed of any randomness in the solver.
    **options : solver-specific keyword options (unknown names raise ``TypeError``).

    Returns
    -------
    Result with ``x`` in the array namespace and device of the problem's data.
    """
    from combprune.problems import Problem

    if not isinstance(problem, Problem):
        raise TypeError(f"problem: expected a combprune problem (L0Regression, FlopNnzILP, StructuredMIQP), got {type(problem).__name__}")
    name = solver if solver is not None else problem.default_solver
    spec = get_solver(name)
    if not spec.supports(problem):
        supported = ", ".join(cls.__name__ for cls in spec.problems)
        raise ValueError(f"solver: {name!r} solves {supported}, not {type(problem).__name__}")
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        valid = ", ".join(spec.options) or "none"
        raise TypeError(f"options: solver {name!r} got unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    _check_bool_options(spec.func, options)
    deadline = Deadline(check_time_limit(time_limit))
    seed = check_seed(seed)
    spec.ensure_available()
    logger.debug("solving %r with %s (time_limit=%s)", problem, name, time_limit)
    result = spec.func(problem, deadline=deadline, seed=seed, **options)
    result.solver = name
    result.time = deadline.elapsed()
    if not result.message:
        result.message = STATUS_MESSAGES[result.status]
    logger.info("%s: %s", name, result)
    return result


def _check_bool_options(func: Any, options: dict[str, Any]) -> None:
    """Options whose declared default is a bool must be given as a bool (not ``"no"`` or 1)."""
    params = inspect.signature(func).parameters
    for key, value in options.items():
        if isinstance(params[key].default, bool):
            check_bool(key, value)
