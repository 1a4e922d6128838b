"""Frozen masks during training: pruned weights stay exactly zero (docs/sparse_training.md).

A :class:`FrozenMask` holds one boolean mask per weight (``True`` = kept). On creation it writes
the zeros into the plain parameters; while attached, a gradient hook multiplies every gradient by
the mask, optimiser state (momentum, Adam moments) is cleared on the pruned entries and
:meth:`FrozenMask.apply_` re-zeroes the weights after each optimiser step. With zero gradients,
zero state and zero weights, SGD (with momentum and weight decay) and Adam/AdamW leave pruned
entries at exactly zero; the re-zeroing makes it hold for any optimiser. The model keeps its
plain parameters: no parametrisation, nothing to remove but the hooks.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

__all__ = ["FrozenMask"]


class FrozenMask:
    """Keep ``masks`` (weight name -> boolean tensor, ``True`` = kept) applied to ``model``."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        if not isinstance(masks, dict) or not masks:
            raise ValueError("masks: expected a non-empty dict of weight name -> boolean mask")
        self._params: dict[str, tuple[nn.Parameter, torch.Tensor]] = {}
        for name, mask in masks.items():
            try:
                param = model.get_parameter(name)
            except AttributeError:
                raise ValueError(f"masks: {name!r} is not a parameter of the model") from None
            if not isinstance(mask, torch.Tensor) or mask.shape != param.shape:
                raise ValueError(f"masks: {name!r} needs a tensor of shape {tuple(param.shape)}")
            self._params[name] = (param, mask.to(device=param.device, dtype=torch.bool))
        self._hooks = [p.register_hook(self._grad_hook(m)) for p, m in self._params.values()]
        self.apply_()

    @staticmethod
    def _grad_hook(mask: torch.Tensor):
        return lambda grad: grad * mask

    def apply_(self) -> None:
        """Write the zeros into the pruned entries (call after each optimiser step)."""
        with torch.no_grad():
            for p, m in self._params.values():
                p.mul_(m)

    def clear_state(self, optimizers: Iterable[torch.optim.Optimizer]) -> None:
        """Zero every optimiser-state tensor shaped like a masked weight on its pruned entries."""
        with torch.no_grad():
            for opt in optimizers:
                for p, m in self._params.values():
                    for value in opt.state.get(p, {}).values():
                        if isinstance(value, torch.Tensor) and value.shape == m.shape:
                            value.mul_(m)

    def masks(self) -> dict[str, torch.Tensor]:
        """Copies of the masks by weight name."""
        return {name: m.clone() for name, (_, m) in self._params.items()}

    def density(self) -> float:
        """Fraction of the masked weights kept."""
        kept = sum(int(m.sum()) for _, m in self._params.values())
        return kept / sum(m.numel() for _, m in self._params.values())

    def remove(self) -> None:
        """Detach the gradient hooks (the zeros stay in the weights)."""
        self.apply_()
        for h in self._hooks:
            h.remove()
        self._hooks = []
