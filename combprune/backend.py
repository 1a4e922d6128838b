"""Array backend on the Python array API (via ``array-api-compat``).

combprune accepts NumPy arrays (the default), torch tensors and CuPy arrays. Solvers either
compute in the input's namespace (``namespace(x)``) or convert to NumPy on the host, and return
their results in the namespace and on the device of the input (``like``).

Conventions
-----------
* ``namespace(*arrays)`` returns the array-API-compatible namespace of the inputs
  (``array_api_compat.numpy`` for plain NumPy arrays).
* ``to_numpy(x)`` gives a NumPy view/copy on the host (zero-copy for CPU torch tensors).
* ``from_numpy(a, like=x)`` converts a NumPy result back to ``x``'s namespace, device and, where
  ``keep_dtype`` is set, dtype.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

__all__ = [
    "namespace",
    "is_array",
    "is_numpy",
    "is_torch",
    "is_cupy",
    "to_numpy",
    "from_numpy",
    "device_of",
    "cupy_available",
]


def is_array(x: Any) -> bool:
    """True for NumPy arrays, torch tensors, CuPy arrays (anything array-api-compat knows)."""
    return array_api_compat.is_array_api_obj(x) and not isinstance(x, (int, float, complex, bool))


def is_numpy(x: Any) -> bool:
    return array_api_compat.is_numpy_array(x)


def is_torch(x: Any) -> bool:
    return array_api_compat.is_torch_array(x)


def is_cupy(x: Any) -> bool:
    return array_api_compat.is_cupy_array(x)


def namespace(*arrays: Any):
    """Array-API namespace shared by ``arrays`` (NumPy's when none is an array)."""
    arrays = tuple(a for a in arrays if a is not None and is_array(a))
    if not arrays:
        return array_api_compat.array_namespace(np.empty(0))
    return array_api_compat.array_namespace(*arrays)


def device_of(x: Any):
    """The device of ``x`` (``"cpu"`` for NumPy)."""
    return array_api_compat.device(x)


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """Host NumPy array from any supported array (no copy where possible)."""
    if x is None:
        return None
    if is_numpy(x):
        out = x
    elif is_torch(x):
        out = x.detach().cpu().numpy()
    elif is_cupy(x):
        out = x.get()
    else:
        out = np.asarray(x)
    if dtype is not None and out.dtype != dtype:
        out = out.astype(dtype)
    return out


def from_numpy(a: np.ndarray, like: Any, *, keep_dtype: bool = False) -> Any:
    """Convert NumPy ``a`` to the namespace and device of ``like``.

    With ``keep_dtype`` the result takes ``like``'s floating dtype (for float inputs);
    otherwise NumPy's dtype is kept (mapped to the target library's equivalent).
    """
    if a is None or like is None or is_numpy(like) or not is_array(like):
        if keep_dtype and is_numpy(like) and a is not None and a.dtype.kind == "f" == like.dtype.kind:
            return a.astype(like.dtype, copy=False)
        return a
    if is_torch(like):
        import torch

        out = torch.from_numpy(np.ascontiguousarray(a)).to(like.device)
        if keep_dtype and out.is_floating_point() and like.is_floating_point():
            out = out.to(like.dtype)
        return out
    if is_cupy(like):
        import cupy

        with cupy.cuda.Device(like.device.id):
            out = cupy.asarray(a)
        if keep_dtype and out.dtype.kind == "f" == like.dtype.kind:
            out = out.astype(like.dtype)
        return out
    xp = namespace(like)
    out = xp.asarray(a, device=device_of(like))
    return out


def cupy_available() -> bool:
    """True when CuPy imports *and* a CUDA device can run kernels."""
    try:
        import cupy

        return bool(cupy.cuda.is_available())
    except Exception:
        return False
