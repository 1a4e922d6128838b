r"""``group-magnitude``: keep the groups with the largest weight norms, then refit them exactly.

The baseline against which ``osscar``'s search is measured: the *selection* uses only the
dense weights, the *refit* is the same exact least-squares solve as ``osscar``'s, so a study
can separate the value of the search from the value of the refit (``refit=False`` gives
plain structured magnitude pruning, ``W = W_hat`` on the kept rows).

Selection rule (value of a group ``v_g = ||W_hat_g||_F^2``, the squared Frobenius norm of its
rows of the dense weights):

* count budget only: the ``s`` groups of largest ``v_g`` (ties: lower group number first);
* with a cost budget ``sum_{g kept} c_g <= C`` (and possibly ``#kept <= s``): the better, in
  total kept value ``sum v_g``, of two greedy fills, one in decreasing ``v_g / c_g`` (groups
  of cost 0 first) and one in decreasing ``v_g``; each skips any group that no longer fits
  and stops at ``s`` groups. (The classical 1/2-approximation of this knapsack; FALCON's
  FLOP-aware magnitude pruning solves the same ILP per weight.)

Refit: ``W_S = K_SS^{-1} (K W_hat)_S`` with ``K = H + ridge I``, by Cholesky in float64
(:mod:`._kernels.structured`); with ``ridge = 0`` a singular ``K_SS`` raises a ``ValueError``
naming ``ridge``.
"""

from __future__ import annotations

from combprune.params import Boolean
from combprune.problems import StructuredMIQP
from combprune.registry import register_solver
from combprune.result import Deadline, Result

from ._kernels.structured import group_magnitude_result

__all__ = ["group_magnitude"]


@register_solver(
    "group-magnitude",
    problems=StructuredMIQP,
    exact=False,
    description="Keep the groups of largest weight norm, then refit the kept rows exactly.",
    params={
        "refit": Boolean(),
    },
)
def group_magnitude(problem: StructuredMIQP, *, deadline: Deadline, seed: int | None = None, refit: bool = True) -> Result:
    """Structured magnitude pruning with an optional exact refit (``refit=True``).

    ``iterations`` is 1; ``info["values"]`` holds the group values ``||W_hat_g||_F^2``.
    Status ``feasible`` (``time_limit`` if the deadline had passed by the end). The refit is
    skipped (``info["refit"] = False``) when its estimated cost, ``SECONDS_PER_FLOP`` per
    flop, exceeds the time left.
    """
    return group_magnitude_result(problem, deadline, refit=refit)
