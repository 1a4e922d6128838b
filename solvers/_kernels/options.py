"""Option checks of the solver kernels (``ValueError`` naming the option).

Kept here (not in a solver module) so that every solver module and kernel can use them without
importing another solver; the declared-options layer of :mod:`combprune.registry` validates
options before a solver runs, these remain the solvers' own guards.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["check_positive_int", "check_positive_float"]


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def check_positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} finite number, got {value!r}")
    return v
