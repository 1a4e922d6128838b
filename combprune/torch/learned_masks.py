"""Learned masks by Continuous Sparsification (Savarese et al., NeurIPS 2020).

Every prunable weight ``w`` gets a score ``s`` and the network computes with the gated weight

.. math::

    \\tilde w = w \\odot \\sigma(\\beta s), \\qquad
    \\mathcal L = \\mathcal L_{data}(\\tilde w) + \\lambda \\sum_i \\sigma(\\beta s_i),

the temperature ``beta`` being multiplied by ``beta_growth`` at every epoch end
(``anneal="epoch"``, the paper's schedule) or after every optimisation step (``anneal="step"``:
the same geometric curve in smaller steps, :math:`\beta_t = \beta_0 g^t`), up to ``beta_max``
(~200), so that the gate tends to the hard mask :math:`1[s > 0]`. The scores have
their own optimiser. The gate is a :mod:`torch.nn.utils.parametrize` parametrisation of each
weight, so the user's model code is unchanged (``layer.weight`` is the gated weight) and
:meth:`LearnedMasks.remove` gives back plain parameters. See ``docs/sparse_training.md``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from ._select import select_parameters, with_unselected

__all__ = ["LearnedMasks"]


class _Gate(nn.Module):
    """The parametrisation ``w -> w * sigmoid(beta * s)``; ``s`` is this module's parameter."""

    def __init__(self, shape: torch.Size, init: float, beta: float, like: torch.Tensor) -> None:
        super().__init__()
        self.score = nn.Parameter(torch.full(shape, float(init), dtype=like.dtype, device=like.device))
        self.beta = beta

    def gate(self) -> torch.Tensor:
        return torch.sigmoid(self.beta * self.score)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gate()


def _positive(name: str, value: Any, *, minimum: float = 0.0, strict: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ValueError(f"{name}: must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return float(value)


class LearnedMasks:
    """Continuous-Sparsification gates on the prunable weights of ``model`` (module doc).

    Parameters
    ----------
    model : the network; its prunable weights (``targets`` / ``ignore`` as in
        :func:`combprune.torch.select_parameters`) get a score each.
    init : initial score ``s_0`` (the gate starts at ``sigmoid(beta * s_0)``).
    penalty : ``lambda`` of the sparsity regulariser ``lambda * sum(sigmoid(beta * s))``.
    target_density : ``None`` (the regulariser above) or a budget ``rho`` in (0, 1]: only the
        gates outside the ``k = round(rho * n)`` largest scores (``n`` gated weights, all layers
        together) are penalised, ``lambda * sum_{i: s_i < s_(k)} sigmoid(beta s_i)`` with
        ``s_(k)`` the k-th largest score: the weights the budget cannot keep are pushed out while
        the k best compete on the data loss alone, so the learned mask ends near the target
        density instead of wherever ``lambda`` drives it.
    beta : initial temperature ``beta_0``.
    beta_growth : factor applied to ``beta`` at every :meth:`epoch_end` (``anneal="epoch"``) or
        every :meth:`step_end` (``anneal="step"``); >= 1.
    anneal : ``"epoch"`` or ``"step"``: when ``beta`` grows (a per-epoch jump rescales every
        gate at once, which can destabilise SGD; per step spreads it; docs/sparse_training.md).
    beta_max : cap of ``beta``.
    score_optimizer : ``callable(params) -> torch.optim.Optimizer`` for the scores
        (default Adam, learning rate ``score_lr``).
    score_lr : learning rate of the default score optimiser.

    Usage: add :meth:`penalty` to the loss, step :attr:`optimizer` with the weights' optimiser,
    call :meth:`step_end` after every optimisation step and :meth:`epoch_end` after every epoch, and :meth:`remove` at the end. Create the weights'
    optimiser on :meth:`model_parameters` (the scores are parameters of the model while the
    gates are attached).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        init: float = 0.5,
        penalty: float = 1e-5,
        target_density: float | None = None,
        beta: float = 1.0,
        beta_growth: float = 1.5,
        beta_max: float = 200.0,
        anneal: str = "epoch",
        score_optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None = None,
        score_lr: float = 0.01,
        targets: Any = None,
        ignore: Any = None,
    ) -> None:
        if not isinstance(init, (int, float)) or isinstance(init, bool) or not math.isfinite(init):
            raise ValueError(f"init: expected a finite number, got {init!r}")
        self.lam = _positive("penalty", penalty, strict=False)
        if target_density is not None and not (_positive("target_density", target_density) <= 1):
            raise ValueError(f"target_density: must lie in (0, 1], got {target_density!r}")
        self.target_density = target_density
        self.beta = _positive("beta", beta)
        self.beta_growth = _positive("beta_growth", beta_growth, minimum=1.0, strict=False)
        self.beta_max = _positive("beta_max", beta_max)
        if anneal not in ("epoch", "step"):
            raise ValueError(f"anneal: expected 'epoch' or 'step', got {anneal!r}")
        self.anneal = anneal
        score_lr = _positive("score_lr", score_lr)
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module, "weight"):
                raise ValueError(f"model: {name or type(module).__name__}.weight is already parametrised; remove it first")
        params = select_parameters(model, targets, ignore)
        for p in params:
            if p.is_masked:
                raise ValueError(f"model: {p.name} carries a torch pruning mask; make it permanent first")
        if targets is None:
            with_unselected(model, [], "learned masks")  # a warning naming large weights left dense
        self.model = model
        self.names = [p.name for p in params]
        self._gates: dict[str, tuple[nn.Module, str, _Gate]] = {}
        self._order = {id(p.module): list(p.module._parameters) for p in params}  # restored by remove()
        for p in params:
            gate = _Gate(p.shape, init, self.beta, p.storage)
            parametrize.register_parametrization(p.module, p.param_name, gate)
            self._gates[p.name] = (p.module, p.param_name, gate)
        self._final: dict[str, torch.Tensor] | None = None
        scores = self.score_parameters()
        self.optimizer = score_optimizer(scores) if score_optimizer is not None else torch.optim.Adam(scores, lr=score_lr)

    # Parameters -----------------------------------------------------------------------------------
    def score_parameters(self) -> list[nn.Parameter]:
        """The score tensors (one per gated weight), trained by :attr:`optimizer`."""
        return [g.score for _, _, g in self._gates.values()]

    def model_parameters(self) -> Iterator[nn.Parameter]:
        """The model's parameters other than the scores (for the weights' optimiser)."""
        ids = {id(s) for s in self.score_parameters()}
        return (p for p in self.model.parameters() if id(p) not in ids)

    # Training -------------------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """``lambda * sum_i sigmoid(beta * s_i)`` over every gated weight; with ``target_density``
        the sum runs over the scores below the k-th largest only (``target_density`` above)."""
        self._check_attached()
        gates = [g for _, _, g in self._gates.values()]
        if self.target_density is None:
            return self.lam * sum(g.gate().sum() for g in gates)
        n = sum(g.score.numel() for g in gates)
        k = round(self.target_density * n)
        if k >= n:
            return self.lam * gates[0].score.sum() * 0.0
        threshold = torch.topk(torch.cat([g.score.detach().flatten() for g in gates]), k).values[-1] if k else math.inf
        return self.lam * sum(torch.where(g.score < threshold, g.gate(), 0.0).sum() for g in gates)

    def step_end(self) -> float:
        """With ``anneal="step"``: multiply ``beta`` by ``beta_growth`` (capped at ``beta_max``).
        Returns the (new) ``beta``; with ``anneal="epoch"`` nothing changes."""
        return self._grow() if self.anneal == "step" else self.beta

    def epoch_end(self) -> float:
        """With ``anneal="epoch"``: multiply ``beta`` by ``beta_growth`` (capped at ``beta_max``).
        Returns the (new) ``beta``; with ``anneal="step"`` nothing changes."""
        return self._grow() if self.anneal == "epoch" else self.beta

    def _grow(self) -> float:
        """``beta <- min(beta * growth, beta_max)``; within 1e-12 (relative) of ``beta_max`` it
        snaps to it, so that ``growth = (beta_max / beta_0) ** (1 / n)`` ends exactly at ``beta_max``
        after ``n`` steps despite rounding."""
        self._check_attached()
        beta = self.beta * self.beta_growth
        self.beta = self.beta_max if beta >= self.beta_max * (1.0 - 1e-12) else beta
        for _, _, g in self._gates.values():
            g.beta = self.beta
        return self.beta

    # Inspection -----------------------------------------------------------------------------------
    def scores(self) -> dict[str, torch.Tensor]:
        """Detached copies of the scores by weight name (also after :meth:`remove`)."""
        if self._final is not None:
            return {k: v.clone() for k, v in self._final.items()}
        return {name: g.score.detach().clone() for name, (_, _, g) in self._gates.items()}

    def hard_masks(self) -> dict[str, torch.Tensor]:
        """The limit masks ``s > 0`` (boolean) by weight name."""
        return {k: v > 0 for k, v in self.scores().items()}

    def density(self) -> float:
        """Fraction of the gated weights with ``s > 0`` (the hard mask's density)."""
        masks = self.hard_masks()
        return sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())

    def soft_density(self) -> float:
        """Mean gate ``sigmoid(beta * s)`` over the gated weights."""
        self._check_attached()
        with torch.no_grad():
            total = sum(float(g.gate().sum()) for _, _, g in self._gates.values())
        return total / sum(g.score.numel() for _, _, g in self._gates.values())

    # Removal --------------------------------------------------------------------------------------
    def remove(self, *, bake: bool = True) -> dict[str, torch.Tensor]:
        """Remove the gates and return the final scores.

        ``bake=True`` leaves the gated values ``w * sigmoid(beta s)`` in the weights (the
        function the model computed is kept); ``bake=False`` restores the raw ``w``.
        """
        self._check_attached()
        final = self.scores()
        for module, pname, _ in self._gates.values():
            parametrize.remove_parametrizations(module, pname, leave_parametrized=bake)
            # the weight comes back last; put the parameters back in their original order
            order = self._order[id(module)]
            ordered = {k: module._parameters[k] for k in order} | {k: v for k, v in module._parameters.items() if k not in order}
            module._parameters.clear()
            module._parameters.update(ordered)
        self._final = final
        self._gates = {}
        return {k: v.clone() for k, v in final.items()}

    def _check_attached(self) -> None:
        if self._final is not None:
            raise RuntimeError("LearnedMasks: the gates were removed")
