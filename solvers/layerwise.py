r"""``layerwise``: the default solver of :class:`~combprune.problems.LayerwiseL0` (ALPS-style ADMM + exact refit).

With ``K = H + ridge I`` (eigendecomposition ``K = Q diag(lam) Q^T``, computed once) and
``G = K W_hat``, the problem ``min 1/2 tr((W - W_hat)^T K (W - W_hat))`` over the pattern set P
is split as ``W = Z``, ``Z in P`` and solved by ADMM with a growing penalty rho (ALPS, Meng et
al. 2024):

.. math::

    W^{t+1} &= (K + \rho I)^{-1} (G + \rho Z^t - V^t) = Q \operatorname{diag}\big(1/(\lambda + \rho)\big) Q^T (\cdots) \\
    Z^{t+1} &= \Pi_P(W^{t+1} + V^t / \rho) \quad \text{(largest magnitudes the pattern allows)} \\
    V^{t+1} &= V^t + \rho (W^{t+1} - Z^{t+1})

rho is multiplied by ``rho_growth`` every ``check_every`` iterations while the support still
moves (ALPS's schedule, ``docs/solvers/layerwise.md``); it stops when the support is unchanged
for ``patience`` checks, at ``max_iter`` or at the deadline. The iterations run in float32 (they
only choose a support). ADMM's final support is **refitted exactly** (``W_S = K_SS^{-1} G_S`` per output, one Cholesky
per column); if that is not better than SparseGPT's own point, SparseGPT's support is refitted
too and the better point is returned, so the result is never worse than ``sparsegpt``'s. An
optional local search (``local_rounds``) alternates a gradient step
``W - K (W - W_hat) / lambda_max`` + projection + exact refit while it improves (iterative hard
thresholding with exact backsolves).

``bound``: the ridge lower bound of the formulation (``docs/formulations/layerwise_l0.md``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from combprune.params import Interval, Options
from combprune.problems import LayerwiseL0
from combprune.registry import register_solver
from combprune.result import Deadline, History, Result, Status

from ._kernels.layerwise import dense_f64, finish, lower_bound, pattern_mask, refit, single_thread
from ._kernels.layerwise_exact import solve_exact
from ._kernels.obs_sweep import sparsegpt_weights

__all__ = ["layerwise", "layerwise_exact"]


class _Best:
    """Best refitted point seen, with the objective computed from ``1/2 tr(D^T K D)``."""

    def __init__(self, K: np.ndarray, W_hat: np.ndarray, G: np.ndarray, history: History) -> None:
        self.K, self.W_hat, self.G, self.history = K, W_hat, G, history
        self.W: np.ndarray | None = None
        self.value = math.inf
        self.source = ""

    def offer(self, mask: np.ndarray, source: str) -> np.ndarray:
        """Refit the support ``mask`` exactly and keep it when it improves."""
        return self.accept(refit(self.K, self.G, mask), source)

    def accept(self, W: np.ndarray, source: str) -> np.ndarray:
        """Keep the feasible point ``W`` as it is when it improves (no refit)."""
        D = W - self.W_hat
        value = 0.5 * float(np.sum(D * (self.K @ D)))
        if value < self.value:
            self.W, self.value, self.source = W, value, source
            self.history.record(value)
        return W


def _admm(problem: LayerwiseL0, K: np.ndarray, G: np.ndarray, Z: np.ndarray, best: _Best, deadline: Deadline,
          max_iter: int, rho0: float, rho_growth: float, check_every: int, patience: int) -> int:
    lam, Q = np.linalg.eigh(K)
    scale = float(np.mean(np.diag(K)))
    # the iterations only choose a support (refitted exactly in float64 later): float32 halves their cost
    Q, lam, Z = Q.astype(np.float32), lam.astype(np.float32), Z.astype(np.float32)
    QtG = Q.T @ G.astype(np.float32)
    rho = np.float32(rho0 * scale)
    V = np.zeros_like(Z)
    support = Z != 0
    stable = 0
    it = 0
    for it in range(1, max_iter + 1):
        W = Q @ ((QtG + Q.T @ (rho * Z - V)) / (lam + rho)[:, None])
        U = W + V / rho
        new_support = pattern_mask(problem, np.abs(U))
        Z = np.where(new_support, U, 0.0)
        V += rho * (W - Z)
        if it % check_every == 0:
            changed = int(np.count_nonzero(new_support != support))
            support = new_support
            stable = stable + 1 if changed == 0 else 0
            if stable >= patience or deadline.expired():
                break
            rho = np.float32(rho * rho_growth)
    best.offer(support, "admm")
    return it


def _local_search(problem: LayerwiseL0, K: np.ndarray, best: _Best, deadline: Deadline, rounds: int) -> int:
    step = 1.0 / float(np.linalg.eigvalsh(K)[-1])
    done = 0
    for done in range(1, rounds + 1):
        if deadline.expired():
            break
        W = best.W
        U = W - step * (K @ (W - best.W_hat))
        before = best.value
        best.offer(pattern_mask(problem, np.abs(U)), "iht")
        if best.value >= before * (1 - 1e-12):
            break
    return done


def _check_option(name: str, value: Any, low: float, integer: bool) -> None:
    ok = isinstance(value, (int, np.integer) if integer else (int, float, np.floating)) and not isinstance(value, bool)
    if not ok or not (value >= low and math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind} >= {low}, got {value!r}")


@register_solver(
    "layerwise",
    problems=LayerwiseL0,
    exact=False,
    description="ADMM with a growing penalty (ALPS-style) warm started from SparseGPT, exact per-output refits, IHT polish.",
    params={
        "max_iter": Interval(int, 1, None),
        "rho0": Interval(float, 1e-12, None),
        "rho_growth": Interval(float, 1, None),
        "check_every": Interval(int, 1, None),
        "patience": Interval(int, 1, None),
        "local_rounds": Interval(int, 0, None),
    },
)
def layerwise(problem: LayerwiseL0, *, deadline: Deadline, seed: int | None = None, max_iter: int = 300,
              rho0: float = 0.1, rho_growth: float = 1.3, check_every: int = 3, patience: int = 3,
              local_rounds: int = 0) -> Result:
    """Default solver of ``LayerwiseL0`` (see the module docstring).

    Options
    -------
    max_iter : ADMM iterations at most.
    rho0 : initial penalty relative to ``mean(diag(H + ridge I))``.
    rho_growth : factor applied to rho every ``check_every`` iterations (> 1).
    patience : stop after this many checks with an unchanged support.
    local_rounds : IHT-with-refit rounds after ADMM (0 to skip).

    ``iterations`` counts ADMM iterations plus local-search rounds; ``info["source"]`` says
    which stage produced the returned point (``sparsegpt``, ``admm`` or ``iht``).
    """
    _check_option("max_iter", max_iter, 0, True)
    _check_option("rho0", rho0, 1e-12, False)
    _check_option("rho_growth", rho_growth, 1.0, False)
    _check_option("check_every", check_every, 1, True)
    _check_option("patience", patience, 1, True)
    _check_option("local_rounds", local_rounds, 0, True)
    K, W_hat, G = dense_f64(problem)
    history = History(deadline, "min")
    best = _Best(K, W_hat, G, history)
    iterations = 0
    with single_thread():
        warm = sparsegpt_weights(problem, K, W_hat)
        if max_iter and not deadline.expired():
            iterations += _admm(problem, K, G, warm, best, deadline, int(max_iter), float(rho0), float(rho_growth),
                                int(check_every), int(patience))
        D = warm - W_hat
        if best.value >= 0.5 * float(np.sum(D * (K @ D))):  # ADMM did not beat SparseGPT's own point
            if deadline.expired():
                best.accept(warm, "sparsegpt")  # no time left for the exact refit: SparseGPT's point is feasible
            else:
                best.offer(warm != 0, "sparsegpt")
        if local_rounds:
            iterations += _local_search(problem, K, best, deadline, int(local_rounds))
    status = Status.TIME_LIMIT if deadline.expired() else Status.FEASIBLE
    result = finish(problem, best.W, bound=lower_bound(problem, W_hat), iterations=iterations, status=status,
                    info={"source": best.source})
    result.history = history.points
    return result


@register_solver(
    "layerwise-exact",
    problems=LayerwiseL0,
    exact=True,
    description="Exact LayerwiseL0 for tiny layers: per-output L0Regression reductions solved by bruteforce or cvxpy.",
    params={
        "inner": Options({"bruteforce", "cvxpy"}),
        "max_subsets": Interval(int, 1, None),
    },
)
def layerwise_exact(problem: LayerwiseL0, *, deadline: Deadline, seed: int | None = None, inner: str = "bruteforce",
                    max_subsets: int = 200_000) -> Result:
    """Exact solve through the reduction of ``docs/formulations/layerwise_l0.md``.

    Options
    -------
    inner : ``"bruteforce"`` or ``"cvxpy"``, the exact ``L0Regression`` solver used per output.
    max_subsets : refuse N:M instances needing more supports per output than this.
    """
    return solve_exact(problem, deadline=deadline, seed=seed, inner=inner, max_subsets=max_subsets)
