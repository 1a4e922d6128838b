"""Argument checks of kernel functions that are also called directly, outside
:func:`combprune.solve` (``ValueError`` naming the argument). A solver's own options are
declared once (:mod:`combprune.params`) and checked by ``solve`` before the solver runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["check_positive_int"]


def check_positive_int(name: str, value: Any, *, allow_none: bool = False, low: int = 1) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)
