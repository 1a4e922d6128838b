"""``L0Regression``: sparse ridge regression around trained weights (CHITA; FALCON with FLOPs)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from combprune import backend
from combprune._validation import check_array, check_int, check_scalar

from ._base import Problem, check_layer
from .budget import FLOP_RTOL, Budget, flop_total, within_budget

__all__ = ["L0Regression", "FLOP_RTOL", "flop_total", "within_budget"]


class L0Regression(Problem):
    r"""Sparse (l0-constrained) ridge regression, CHITA's formulation (FALCON's with FLOPs).

    .. math::

        \min_w \; Q(w) = \tfrac12 \|b - A w\|_2^2 + \tfrac{\text{ridge}}{2} \|w - \bar w\|_2^2
        \quad \text{s.t.} \quad \|w\|_0 \le k, \quad \sum_{i: w_i \ne 0} f_i \le F .

    Parameters
    ----------
    A : (n, p) array, n calibration samples by p weights (NumPy, torch or CuPy; float32/float64).
    b : (n,) array.
    k : number of weights kept (``0 <= k <= p``); sparsity (fraction removed) is ``1 - k/p``.
    ridge : ``>= 0``; the absolute ridge of the objective above. See :meth:`from_gradients`
        for the papers' normalised ``l2`` (``ridge = n * l2``).
    w_bar : (p,) trained weights the ridge pulls towards (default zeros).
    flop_costs : (p,) non-negative FLOPs of each weight, FLOPs (not MACs) by convention of the
        torch adapter; must be given together with ``flop_budget``.
    flop_budget : F, the FLOPs kept, in the same unit as ``flop_costs``.
    layer : optional (p,) non-negative integer layer index of each weight (the torch adapter
        fills it); with ``flop_costs`` the costs must be constant within a layer. The FLOP-aware
        projections sort each layer once with it (default None: layers inferred from equal costs).

    Conventions: the FLOP constraint counts ``f_i`` for every ``w_i != 0`` exactly; a total
    passes ``check`` when it is ``<= F (1 + 1e-12)`` (summation-order slack only).
    The instance is immutable; NumPy inputs are stored as read-only views (not copied).
    """

    kind: ClassVar[str] = "l0_regression"
    sense: ClassVar[str] = "min"
    default_solver: ClassVar[str] = "chita"
    _array_fields: ClassVar[tuple[str, ...]] = ("A", "b", "w_bar", "flop_costs", "layer")
    _scalar_fields: ClassVar[tuple[str, ...]] = ("k", "ridge", "flop_budget")

    def __init__(
        self,
        A: Any,
        b: Any,
        k: int,
        *,
        ridge: float = 0.0,
        w_bar: Any = None,
        flop_costs: Any = None,
        flop_budget: float | None = None,
        layer: Any = None,
    ) -> None:
        A = check_array("A", A, ndim=2)
        n, p = A.shape
        if p == 0:
            raise ValueError("A: needs at least one column (p >= 1)")
        b = check_array("b", b, ndim=1, shape=(n,))
        xp = backend.namespace(A)
        if backend.namespace(b) is not xp:
            raise TypeError("b: must be the same array type as A")
        k = check_int("k", k, low=0, high=p)
        ridge = check_scalar("ridge", ridge, low=0.0)
        if w_bar is None:
            w_bar = xp.zeros(p, dtype=A.dtype, device=backend.device_of(A))
        w_bar = check_array("w_bar", w_bar, ndim=1, shape=(p,))
        if backend.namespace(w_bar) is not xp:
            raise TypeError("w_bar: must be the same array type as A")
        if (flop_costs is None) != (flop_budget is None):
            missing = "flop_budget" if flop_budget is None else "flop_costs"
            raise ValueError(f"{missing}: flop_costs and flop_budget must be given together")
        if flop_costs is not None:
            flop_costs = check_array("flop_costs", flop_costs, ndim=1, shape=(p,), nonnegative=True)
            flop_budget = check_scalar("flop_budget", flop_budget, low=0.0)
        layer = check_layer(layer, p, flop_costs)
        self.A, self.b, self.w_bar = A, b, w_bar
        self.k, self.ridge = k, ridge
        self.flop_costs, self.flop_budget = flop_costs, flop_budget
        self.layer = layer
        self._freeze()

    # Constructors ---------------------------------------------------------------------------
    @classmethod
    def from_gradients(
        cls,
        grads: Any,
        w_bar: Any,
        k: int,
        *,
        l2: float,
        first_order: bool = False,
        residual: Any = None,
        n_samples: int | None = None,
        flop_costs: Any = None,
        flop_budget: float | None = None,
        layer: Any = None,
    ) -> "L0Regression":
        r"""Build the local quadratic model of a network's loss from per-sample gradients.

        With ``grads`` = G (n x p, row i the gradient of sample i's loss at ``w_bar``), the
        empirical Fisher is ``H = G^T G / n`` and the local model of the *mean* loss is
        ``L(w) ~ L(w_bar) + g^T (w - w_bar) + 1/2 (w - w_bar)^T H (w - w_bar)`` with
        ``g = G^T 1 / n``. Multiplying by n gives ``Q(w)`` with ``A = G`` and

        * ``first_order=False`` (the papers' default, gradient term dropped): ``b = G w_bar``;
        * ``first_order=True``: ``b = G w_bar - 1_n``.

        The ridge is given relative to the normalised Fisher, as in CHITA/FALCON code:
        ``(l2/2) ||w - w_bar||^2`` added to the mean loss model, i.e. ``ridge = n * l2`` here.
        Typical values of ``l2``: 1e-4 to 1e-2.

        Another factor of the curvature (several rows per sample, e.g. the true Fisher,
        ``docs/torch_adapter.md``) gives ``grads`` with ``H = G^T G / n_samples`` and a
        ``residual`` r with ``G^T r = n g``: then ``b = G w_bar - r`` with the first-order term
        (``residual`` defaults to ``1_n``, the empirical Fisher's) and ``ridge = n_samples * l2``
        (``n_samples`` defaults to the rows of ``grads``).
        """
        A = check_array("grads", grads, ndim=2)
        w_bar = check_array("w_bar", w_bar, ndim=1, shape=(A.shape[1],))
        l2 = check_scalar("l2", l2, low=0.0)
        xp = backend.namespace(A)
        if backend.namespace(w_bar) is not xp:  # e.g. torch gradients with NumPy weights
            w_bar = backend.from_numpy(backend.to_numpy(w_bar), like=A)
        if residual is not None:
            residual = check_array("residual", residual, ndim=1, shape=(A.shape[0],))
            if backend.namespace(residual) is not xp:
                residual = backend.from_numpy(np.array(backend.to_numpy(residual)), like=A)
        b = A @ xp.astype(w_bar, A.dtype)
        if first_order:
            b = b - (1.0 if residual is None else xp.astype(residual, A.dtype))
        n = A.shape[0] if n_samples is None else check_int("n_samples", n_samples, low=1, high=max(1, A.shape[0]))
        return cls(A, b, k, ridge=n * l2, w_bar=w_bar, flop_costs=flop_costs, flop_budget=flop_budget, layer=layer)

    def with_ridge(self, ridge: float) -> "L0Regression":
        """The same instance with another ``ridge`` (``>= 0``), sharing the validated arrays.

        Only the ridge is checked: ``A``, ``b`` and ``w_bar`` were validated when this instance
        was built, so a ridge grid (``l2="auto"``) costs no pass over the data per value.
        """
        ridge = check_scalar("ridge", ridge, low=0.0)
        out = object.__new__(type(self))
        for name in self._array_fields + self._scalar_fields:
            object.__setattr__(out, name, getattr(self, name))
        object.__setattr__(out, "ridge", ridge)
        out._freeze()
        return out

    # Properties -----------------------------------------------------------------------------
    @property
    def n(self) -> int:
        return int(self.A.shape[0])

    @property
    def p(self) -> int:
        return int(self.A.shape[1])

    @property
    def budget(self) -> Budget:
        """The count ``k`` and the FLOP budget as one :class:`~combprune.problems.budget.Budget`."""
        return Budget.of(self.k, self.flop_costs, self.flop_budget)

    @property
    def has_flop_budget(self) -> bool:
        return self.flop_budget is not None

    @property
    def sparsity(self) -> float:
        """Fraction of weights removed, ``1 - k/p``."""
        return 1.0 - self.k / self.p

    # Evaluation -----------------------------------------------------------------------------
    def objective(self, w: Any) -> float:
        """``Q(w)`` as a Python float, evaluated entirely in float64.

        ``w`` is taken at its own precision (not rounded to ``A``'s dtype) and only the columns
        of ``A`` on the support of ``w`` are converted to float64, so the cost is
        O(n |supp w|) and float32 data gives the exact value of the formulation, not a
        float32 approximation of it.
        """
        xp = backend.namespace(self.A)
        device = backend.device_of(self.A)
        if backend.is_array(w) and backend.namespace(w) is not xp:
            w = backend.to_numpy(w)
        w = xp.asarray(w, device=device)
        if tuple(w.shape) != (self.p,):
            raise ValueError(f"w: expected shape ({self.p},), got {tuple(w.shape)}")
        w64 = xp.astype(w, xp.float64)
        nz = xp.nonzero(w64 != 0)[0]
        A_S = xp.astype(xp.take(self.A, nz, axis=1), xp.float64)
        r = xp.astype(self.b, xp.float64) - A_S @ xp.take(w64, nz, axis=0)
        d = w64 - xp.astype(self.w_bar, xp.float64)
        return float(0.5 * xp.sum(r * r) + 0.5 * self.ridge * xp.sum(d * d))

    def check(self, w: Any) -> list[str]:
        """Violated constraints of ``w`` (empty when feasible)."""
        w = backend.to_numpy(w)
        if w is None or w.shape != (self.p,):
            return [f"shape: expected ({self.p},), got {None if w is None else w.shape}"]
        if not np.all(np.isfinite(w)):
            return ["finite: w contains NaN or Inf"]
        return self.budget.violations(w != 0, count_key="nnz", count_text="nonzeros", count_name="k", cost_key="flops",
                                      cost_name="flop_budget")

    @classmethod
    def _from_saved(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> "L0Regression":
        return cls(
            arrays["A"],
            arrays["b"],
            meta["k"],
            ridge=meta["ridge"],
            w_bar=arrays.get("w_bar"),
            flop_costs=arrays.get("flop_costs"),
            flop_budget=meta.get("flop_budget"),
            layer=arrays.get("layer"),
        )

    def __repr__(self) -> str:
        flops = "" if self.flop_budget is None else f", flop_budget={self.flop_budget:.6g}"
        return f"L0Regression(n={self.n}, p={self.p}, k={self.k}, ridge={self.ridge:.6g}{flops}, dtype={self.A.dtype})"
