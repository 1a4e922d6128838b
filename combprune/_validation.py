"""Input validation shared by the formulations and solvers.

Every check raises a :class:`ValueError` (or :class:`TypeError` for a wrong kind of object)
whose message starts with the name of the offending argument, in the style of scikit-learn's
``check_array``.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from typing import Any

import numpy as np

from . import backend


def check_array(
    name: str,
    value: Any,
    *,
    ndim: int | tuple[int, ...],
    shape: tuple[int | None, ...] | None = None,
    dtype_kind: str = "float",
    nonnegative: bool = False,
) -> Any:
    """Validate an array and return it in its own namespace (NumPy, torch, CuPy).

    Parameters
    ----------
    name : the argument's name, used in every error message.
    ndim : the allowed number(s) of dimensions.
    shape : expected sizes, ``None`` for "any" in a position.
    dtype_kind : ``"float"`` (real floating point; integer and bool input is converted to
        float64) or ``"int"`` (integer labels).
    nonnegative : reject negative entries.

    NumPy input comes back as a read-only view, so a problem cannot be mutated through it.
    """
    if value is None:
        raise ValueError(f"{name}: expected an array, got None")
    if isinstance(value, np.ma.MaskedArray):
        # the mask would hide NaN/Inf (and any value) from validation and from every solver
        raise TypeError(f"{name}: masked arrays are not supported; pass value.filled(fill) or value.compressed()")
    if not backend.is_array(value):
        try:
            value = np.asarray(value)
        except Exception as exc:  # pragma: no cover - exotic objects
            raise TypeError(f"{name}: cannot be converted to an array ({exc})") from exc
        if value.dtype == object:
            raise TypeError(f"{name}: expected a numeric array, got objects")
    if backend.is_torch(value) and value.dtype == _torch_bfloat16():
        # NumPy has no bfloat16: formulations and solvers compute in float32 (or float64)
        value = value.float()
    xp = backend.namespace(value)
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if value.ndim not in allowed:
        raise ValueError(f"{name}: expected {' or '.join(map(str, allowed))}-D array, got shape {tuple(value.shape)}")
    if shape is not None:
        for axis, (got, want) in enumerate(zip(value.shape, shape)):
            if want is not None and got != want:
                raise ValueError(
                    f"{name}: expected size {want} along axis {axis}, got shape {tuple(value.shape)}"
                )
    if dtype_kind == "float":
        if xp.isdtype(value.dtype, "complex floating"):
            raise TypeError(f"{name}: complex dtype {value.dtype} is not supported")
        if not xp.isdtype(value.dtype, "real floating"):
            if not xp.isdtype(value.dtype, ("integral", "bool")):
                raise TypeError(f"{name}: expected a real numeric dtype, got {value.dtype}")
            value = xp.astype(value, xp.float64)
        if math.prod(value.shape):
            if not bool(xp.all(xp.isfinite(value))):
                raise ValueError(f"{name}: contains NaN or Inf")
    elif dtype_kind == "int":
        if xp.isdtype(value.dtype, "real floating"):
            if not bool(xp.all(value == xp.round(value))):
                raise TypeError(f"{name}: expected integer labels, got non-integral floats")
            value = xp.astype(value, xp.int64)
        elif not xp.isdtype(value.dtype, "integral"):
            raise TypeError(f"{name}: expected an integer dtype, got {value.dtype}")
    else:  # pragma: no cover - programming error
        raise AssertionError(dtype_kind)
    if nonnegative and math.prod(value.shape) and bool(xp.any(value < 0)):
        raise ValueError(f"{name}: must be non-negative")
    if isinstance(value, np.ndarray):
        value = value.view()
        value.flags.writeable = False
    return value


def _torch_bfloat16() -> Any:
    import torch

    return torch.bfloat16


def check_int(name: str, value: Any, *, low: int, high: int) -> int:
    """Validate an integer in ``[low, high]`` (bools rejected; integral floats accepted)."""
    if isinstance(value, bool) or value is None:
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        ivalue = int(value)
    elif isinstance(value, numbers.Real) and float(value).is_integer():
        ivalue = int(value)
    else:
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if not low <= ivalue <= high:
        raise ValueError(f"{name}: must lie in [{low}, {high}], got {ivalue}")
    return ivalue


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """Validate a finite real scalar, optionally bounded below / above."""
    if isinstance(value, bool) or value is None or not isinstance(value, numbers.Real):
        if backend.is_array(value) and math.prod(getattr(value, "shape", ())) == 1:
            value = float(backend.to_numpy(value).reshape(()))
        else:
            raise TypeError(f"{name}: expected a real number, got {value!r}")
    fvalue = float(value)
    if not math.isfinite(fvalue):
        raise ValueError(f"{name}: must be finite, got {fvalue}")
    if low is not None and (fvalue < low or (not low_inclusive and fvalue == low)):
        op = ">=" if low_inclusive else ">"
        raise ValueError(f"{name}: must be {op} {low}, got {fvalue}")
    if high is not None and fvalue > high:
        raise ValueError(f"{name}: must be <= {high}, got {fvalue}")
    return fvalue


def check_time_limit(time_limit: Any) -> float | None:
    """``None`` (no limit) or a positive finite number of seconds."""
    if time_limit is None:
        return None
    return check_scalar("time_limit", time_limit, low=0.0, low_inclusive=False)


def check_seed(seed: Any) -> int | None:
    """``None`` or a non-negative integer seed."""
    if seed is None:
        return None
    return check_int("seed", seed, low=0, high=2**63 - 1)


def read_toml(path: str | os.PathLike[str], error: type[Exception] = ValueError) -> dict[str, Any]:
    """The parsed TOML file ``path``; an unreadable or invalid file raises ``error`` naming it."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise error(f"{os.fspath(path)}: cannot read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{os.fspath(path)}: invalid TOML ({exc})") from None
