"""combprune: neural-network pruning as mathematical optimisation.

Formulations are data objects (:mod:`combprune.problems`), solvers are registered by name
(:mod:`combprune.solvers`) and every solve returns one :class:`Result`::

    import combprune as cp
    prob = cp.problems.random_l0_regression(n=50, p=200, k=20)
    res = cp.solve(prob, solver="chita")
"""

from importlib.metadata import PackageNotFoundError, version

from . import backend, problems
from .api import solve
from .problems import FlopNnzILP, L0Regression, StructuredMIQP, load_problem
from .registry import (
    MissingDependencyError,
    UnknownSolverError,
    get_solver,
    list_solvers,
    register_solver,
)
from .result import Result, Status

try:
    __version__ = version("combprune")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "solve",
    "Result",
    "Status",
    "L0Regression",
    "FlopNnzILP",
    "StructuredMIQP",
    "load_problem",
    "list_solvers",
    "get_solver",
    "register_solver",
    "MissingDependencyError",
    "UnknownSolverError",
    "backend",
    "problems",
]
