"""ZerO initialisation (Zhao et al., arXiv 2110.12661): deterministic, identity/Hadamard weights.

For a weight matrix W of shape (m, n) (m outputs, n inputs):

.. math::

    W = \\begin{cases} I^*_{m,n} & m \\le n \\\\
        I^*_{m,p}\\, H_p\\, I^*_{p,n} / 2^{c/2} & m > n,\\ c = \\lceil \\log_2 m \\rceil,\\ p = 2^c
        \\end{cases}

with :math:`I^*_{a,b}` the partial identity (ones on the main diagonal of an a x b matrix) and
:math:`H_p` the Sylvester Hadamard matrix (entries +-1, :math:`H_p^T H_p = p I`), so that
:math:`H_p / 2^{c/2}` is orthogonal. Convolutions get the same matrix on the centre tap of the
kernel (identity / centre-tap kernels), zero elsewhere; biases are zero. See
``docs/sparse_training.md``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import hadamard
from torch import nn

__all__ = ["zero_matrix", "zero_init_"]


def zero_matrix(m: int, n: int, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ZerO matrix of shape (m, n) (module doc): partial identity or scaled Hadamard block."""
    for name, v in (("m", m), ("n", n)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: expected a positive integer, got {v!r}")
    if m <= n:
        return torch.eye(m, n, dtype=dtype)
    c = math.ceil(math.log2(m))
    p = 2**c
    h = torch.as_tensor(hadamard(p), dtype=torch.float64)[:m, :n] / 2 ** (c / 2)
    return h.to(dtype)


def _init_weight(weight: torch.Tensor) -> None:
    m, n = weight.shape[0], weight.shape[1]
    mat = zero_matrix(m, n, dtype=weight.dtype).to(weight.device)
    with torch.no_grad():
        weight.zero_()
        centre = tuple(k // 2 for k in weight.shape[2:])  # () for Linear
        weight[(slice(None), slice(None)) + centre] = mat


def zero_init_(module: nn.Module) -> nn.Module:
    """ZerO-initialise, in place, every ``nn.Linear`` and convolution inside ``module``.

    Convolution weights (out, in / groups, *kernel) get the ZerO matrix of shape
    (out, in / groups) on the centre tap (``k // 2`` in each kernel dimension). Biases become 0.
    Returns ``module``. Raises ``ValueError`` naming ``module`` when it holds no such layer.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module: expected an nn.Module, got {type(module).__name__}")
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    if not layers:
        raise ValueError("module: no nn.Linear or convolution layer to initialise")
    for layer in layers:
        _init_weight(layer.weight)
        if layer.bias is not None:
            with torch.no_grad():
                layer.bias.zero_()
    return module
