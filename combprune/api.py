"""``combprune.solve``: the one entry point (cvxpy style: the problem is data, the solver a name)."""

from __future__ import annotations

import logging
from typing import Any

from ._validation import check_seed, check_time_limit
from .params import validate_options
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
    **options : solver-specific keyword options, checked against the solver's declarations
        (``combprune solvers --options NAME``); unknown names raise ``TypeError``, values
        outside a declaration :class:`combprune.params.InvalidOptionError`.

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
    options = validate_options(spec.params, options)
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

