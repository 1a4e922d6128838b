"""Formulations as immutable, validated data objects (``combprune.problems``).

* :class:`L0Regression` — CHITA / FALCON sparse ridge regression (docs/formulations/l0_regression.md).
* :class:`FlopNnzILP` — FALCON's count + FLOP knapsack (docs/formulations/flop_nnz_ilp.md).
* :class:`StructuredMIQP` — OSSCAR's group-sparse layer reconstruction (docs/formulations/structured_miqp.md).
"""

from ._base import Problem, load_problem
from .flop_ilp import FlopNnzILP
from .generators import random_flop_ilp, random_l0_regression, random_problem, random_structured
from .l0_regression import L0Regression
from .layerwise import LayerwiseL0
from .structured import StructuredMIQP, osscar_default_ridge

__all__ = [
    "Problem",
    "L0Regression",
    "FlopNnzILP",
    "StructuredMIQP",
    "LayerwiseL0",
    "load_problem",
    "osscar_default_ridge",
    "random_l0_regression",
    "random_flop_ilp",
    "random_structured",
    "random_problem",
]
