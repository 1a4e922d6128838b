"""The method table of the torch adapter: method name -> kind of problem and solver.

This table is the only place where the adapter names solvers. A method is

* ``"magnitude"`` kind: a selection on the weights' magnitudes (``w^2`` as values of FALCON's
  FLOP-NNZ ILP when a FLOP budget is given);
* ``"gradient"`` kind: an :class:`~combprune.problems.L0Regression` on per-sample gradients
  (CHITA / FALCON), one- or multi-stage;
* ``"structured"`` kind: layer-wise :class:`~combprune.problems.StructuredMIQP` problems
  (neurons, channels, heads; OSSCAR);
* ``"layerwise"`` kind: one :class:`~combprune.problems.LayerwiseL0` per linear layer, solved
  block by block by the sequential engine (:func:`combprune.torch.prune_sequential`; SparseGPT,
  Wanda and combprune's own layer-wise solver).

Any registered solver of ``L0Regression`` (gradient based) or ``FlopNnzILP`` (magnitude based)
is accepted as a method name too, so a plugin solver is usable through the adapter with no edit
here (see ``docs/writing_a_solver.md``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from combprune import problems as _problems
from combprune.registry import UnknownSolverError, get_solver, list_solvers

logger = logging.getLogger(__name__)

__all__ = ["Method", "METHODS", "resolve_method", "FLOP_SELECTION_SOLVER"]


@dataclass(frozen=True)
class Method:
    """How the adapter runs one method."""

    kind: str  # "magnitude" | "gradient" | "structured" | "layerwise"
    solver: str | None
    multistage: bool = False
    flop_aware: bool = False
    description: str = ""


#: Built-in method names.
METHODS: dict[str, Method] = {
    "magnitude": Method("magnitude", None, description="global top-k |w| (FLOP-aware ILP when flop_budget is given)"),
    "flop-magnitude": Method("magnitude", "dual-sort", flop_aware=True, description="FLOP-aware magnitude: max sum w^2 under NNZ and FLOP budgets (FALCON's ILP)"),
    "chita": Method("gradient", "chita", description="CHITA: l0-constrained regression on per-sample gradients"),
    "chita++": Method("gradient", "chita", multistage=True, description="CHITA++: multi-stage CHITA, re-linearised at every stage"),
    "falcon": Method("gradient", "dfo", flop_aware=True, description="FALCON: DFO under NNZ and FLOP budgets"),
    "falcon++": Method("gradient", "dfo", multistage=True, flop_aware=True, description="FALCON++: multi-stage FALCON"),
    "osscar": Method("structured", "osscar", description="OSSCAR: layer-wise structured pruning (neurons, channels, heads)"),
    "group-magnitude": Method("structured", "group-magnitude", description="structured magnitude baseline (group norms)"),
    "layerwise": Method("layerwise", "layerwise", description="layer-wise reconstruction (LayerwiseL0), block by block: combprune's solver"),
    "sparsegpt": Method("layerwise", "sparsegpt", description="SparseGPT: OBS column sweep per layer, block by block"),
    "wanda": Method("layerwise", "wanda", description="Wanda: |W| x input norm per output, block by block"),
}

#: Solver of FALCON's FLOP-NNZ selection (magnitude with a FLOP budget, block budget shares).
FLOP_SELECTION_SOLVER: str = METHODS["flop-magnitude"].solver  # type: ignore[assignment]


def resolve_method(method: str, structured: bool = False) -> Method:
    """The :class:`Method` of a name from :data:`METHODS` or of a registered solver's name."""
    if not isinstance(method, str):
        raise TypeError(f"method: expected a method name (str), got {type(method).__name__}")
    if method in METHODS:
        m = METHODS[method]
        if structured and m.kind != "structured":
            raise ValueError(f"method: {method!r} is unstructured; structured=True needs 'osscar' or 'group-magnitude'")
        return m
    if structured:
        return Method("structured", method)
    try:
        spec = get_solver(method)
    except UnknownSolverError:
        names = sorted(METHODS) + sorted(r["name"] for r in list_solvers(_problems.L0Regression))
        raise ValueError(f"method: unknown method {method!r}; choose one of {', '.join(dict.fromkeys(names))}") from None
    if issubclass(_problems.L0Regression, spec.problems):
        return Method("gradient", method)
    if issubclass(_problems.FlopNnzILP, spec.problems):
        return Method("magnitude", method, flop_aware=True)
    if issubclass(_problems.LayerwiseL0, spec.problems):
        return Method("layerwise", method)
    raise ValueError(f"method: solver {method!r} solves {[c.__name__ for c in spec.problems]}; the torch adapter needs an L0Regression, FlopNnzILP or LayerwiseL0 solver")
