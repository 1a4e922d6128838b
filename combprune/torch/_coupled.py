r"""One group selection over several layers' quadratics, as reductions to ``StructuredMIQP``.

**Several consumers** (a group read by layers ``1..k``, each with its own calibration input
``X_i``, ``H_i = X_i^T X_i``, weights ``W_hat_i`` (d_i x m_i), ridge ``lam_i``): the coupled
objective is the sum of the layers' reconstruction objectives,

.. math::

    \sum_i \tfrac12 \operatorname{tr}\big((W_i - \hat W_i)^T (H_i + \lambda_i I)(W_i - \hat W_i)\big),
    \qquad \text{group } g \text{ kept in every layer or in none.}

:func:`stack_problems` writes it as one ``StructuredMIQP`` with ``d = sum d_i`` rows,
``m = sum m_i`` columns, block-diagonal ``H = diag(H_i + (lam_i - lam) I)`` with
``lam = min lam_i`` as the common ridge, block-diagonal ``W_hat`` (zero-padded columns) and the
group labels of the layers concatenated (group g = the union of its rows in every layer). For
a block-diagonal ``W`` the stacked objective is exactly the sum; an off-diagonal block ``W_ij``
(i != j) only adds ``1/2 tr(W_ij^T K_i W_ij) >= 0``, so the best ``W`` for any kept set is
block-diagonal (``G = K W_hat`` is block-diagonal, hence ``K_SS^{-1} G_S`` too) and
:func:`split_solution`, which keeps the diagonal blocks, never raises the objective. Any
StructuredMIQP solver (backward elimination, swaps, exact, brute force) therefore optimises
the summed costs unchanged, and one consumer is the original problem itself.

**Equal counts per block** (GQA query heads: every KV head keeps the same number of query
heads): :func:`solve_even_blocks` does block-coordinate descent. For block b, with the kept
rows F of the other blocks re-fitted optimally, the objective in the block's rows C is (with
``K = H + lam I``, ``G = K W_hat``) the Schur-complement problem

.. math::

    \tfrac12 W_C^T S W_C - W_C^T g + \text{const}, \qquad
    S = K_{CC} - K_{CF} K_{FF}^{-1} K_{FC}, \quad g = G_C - K_{CF} K_{FF}^{-1} G_F,

i.e. ``StructuredMIQP(H=S, W_hat=S^{-1} g, ridge=0)`` over the block's groups with ``s`` = the
per-block count (``S >= lam I`` is positive definite). Each block's choice is accepted only when
it does not raise the exact objective, so the objective never increases over the sweeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import scipy.linalg

from combprune.problems import StructuredMIQP

__all__ = ["stack_problems", "split_solution", "refit", "solve_even_blocks", "CoupledSolution"]


@dataclass
class CoupledSolution:
    """A solution assembled here (not by one solver call): ``x`` (d x m), its objective; no bound."""

    x: np.ndarray
    objective: float
    bound: float | None = None
    gap: float | None = None


def stack_problems(problems: Sequence[StructuredMIQP]) -> StructuredMIQP:
    """One ``StructuredMIQP`` whose objective on block-diagonal W is the sum of ``problems``'.

    All problems must have the same group labels (in any row order) and the same ``s``; a
    single problem is returned as it is.
    """
    problems = list(problems)
    if not problems:
        raise ValueError("problems: need at least one layer problem")
    if len(problems) == 1:
        return problems[0]
    first = problems[0]
    for p in problems[1:]:
        if not np.array_equal(p.group_labels, first.group_labels) or p.s != first.s:
            raise ValueError("problems: coupled layers must have the same groups and the same s")
    lam = min(p.ridge for p in problems)
    blocks = [np.asarray(p.H, dtype=np.float64) + (p.ridge - lam) * np.eye(p.d) for p in problems]
    H = scipy.linalg.block_diag(*blocks)
    W_hat = scipy.linalg.block_diag(*[np.asarray(p.W_hat, dtype=np.float64) for p in problems])
    groups = np.concatenate([np.asarray(p.groups) for p in problems])
    return StructuredMIQP(H, W_hat, groups, first.s, ridge=lam)


def split_solution(W: np.ndarray, problems: Sequence[StructuredMIQP]) -> list[np.ndarray]:
    """The diagonal blocks of a stacked solution ``W``: one (d_i x m_i) matrix per problem."""
    W = np.asarray(W, dtype=np.float64).reshape(sum(p.d for p in problems), -1)
    out, r, c = [], 0, 0
    for p in problems:
        out.append(W[r : r + p.d, c : c + p.m].copy())
        r, c = r + p.d, c + p.m
    return out


def _kg(problem: StructuredMIQP) -> tuple[np.ndarray, np.ndarray]:
    K = np.asarray(problem.H, dtype=np.float64) + problem.ridge * np.eye(problem.d)
    return K, K @ np.asarray(problem.W_hat, dtype=np.float64)


def refit(problem: StructuredMIQP, keep: np.ndarray) -> np.ndarray:
    """The best W keeping the (G,) groups ``keep``: ``W_S = K_SS^{-1} G_S``, other rows 0."""
    K, G = _kg(problem)
    rows = problem.rows_of(keep)
    W = np.zeros_like(G)
    if rows.any():
        W[rows] = scipy.linalg.solve(K[np.ix_(rows, rows)], G[rows], assume_a="pos")
    return W


def _block_problem(problem: StructuredMIQP, K: np.ndarray, G: np.ndarray, keep: np.ndarray, block: np.ndarray, s: int) -> StructuredMIQP:
    """The Schur-complement problem of the groups ``block`` with the other kept groups re-fitted."""
    gi = problem.group_index
    C = np.isin(gi, block)
    F = problem.rows_of(keep) & ~C
    S, g = K[np.ix_(C, C)], G[C]
    if F.any():
        factor = scipy.linalg.cho_factor(K[np.ix_(F, F)], lower=True)
        KFC = K[np.ix_(F, C)]
        S = S - KFC.T @ scipy.linalg.cho_solve(factor, KFC)
        g = g - KFC.T @ scipy.linalg.cho_solve(factor, G[F])
    S = 0.5 * (S + S.T)
    labels = np.searchsorted(block, gi[C])
    return StructuredMIQP(S, scipy.linalg.solve(S, g, assume_a="pos"), labels, s, ridge=0.0)


def solve_even_blocks(
    problem: StructuredMIQP, n_blocks: int, keep_per_block: int, solve: Callable[[StructuredMIQP], Any], *, sweeps: int = 2
) -> tuple[CoupledSolution, np.ndarray]:
    """Keep exactly ``keep_per_block`` groups in each of ``n_blocks`` blocks of consecutive groups.

    ``solve(problem)`` returns an object with ``x`` (any registered solver's result). Returns
    the re-fitted solution and the (G,) kept groups. The first sweep starts from every group
    kept; later sweeps re-solve each block given the others, accepting a change only when the
    exact objective does not rise.
    """
    G_count = problem.n_groups
    if n_blocks <= 0 or G_count % n_blocks:
        raise ValueError(f"n_blocks: {G_count} groups do not split into {n_blocks} equal blocks")
    size = G_count // n_blocks
    if not 1 <= keep_per_block <= size:
        raise ValueError(f"keep_per_block: expected 1..{size}, got {keep_per_block}")
    K, G = _kg(problem)
    keep = np.ones(G_count, dtype=bool)
    best = math.inf
    for sweep in range(sweeps):
        for b in range(n_blocks):
            block = np.arange(b * size, (b + 1) * size)
            sub = _block_problem(problem, K, G, keep, block, keep_per_block)
            result = solve(sub)
            chosen = sub.group_support(result.x) if result.x is not None else np.zeros(size, dtype=bool)
            chosen = _complete(sub, chosen, keep_per_block)
            trial = keep.copy()
            trial[block] = chosen
            if sweep == 0:
                keep = trial
                continue
            value = problem.objective(refit(problem, trial))
            if value <= best:
                keep, best = trial, value
        if sweep == 0:
            best = problem.objective(refit(problem, keep))
    W = refit(problem, keep)
    return CoupledSolution(W, problem.objective(W)), keep


def _complete(problem: StructuredMIQP, chosen: np.ndarray, s: int) -> np.ndarray:
    """Add groups greedily (best objective after a refit) until ``s`` are kept (a solver may
    keep fewer nonzero groups than allowed)."""
    chosen = np.asarray(chosen, dtype=bool).copy()
    while chosen.sum() < s:
        best, best_g = math.inf, -1
        for g in np.flatnonzero(~chosen):
            trial = chosen.copy()
            trial[g] = True
            value = problem.objective(refit(problem, trial))
            if value < best:
                best, best_g = value, int(g)
        chosen[best_g] = True
    return chosen
