"""Keeping pruned weights exactly zero while a model trains, for any optimiser.

Masks follow the convention of :mod:`torch.nn.utils.prune`, which is what
:func:`combprune.torch.prune` leaves on a model with ``apply="mask"``: a pruned module holds
the parameter ``weight_orig`` and the buffer ``weight_mask`` (1 = kept, 0 = pruned), and a
forward pre-hook recomputes ``weight = weight_orig * weight_mask``. So the effective weight of a
pruned entry is zero in every forward pass and its gradient is zero by the chain rule
(``d weight / d weight_orig = mask``). That alone does not keep ``weight_orig`` at zero:

* momentum and Adam moments accumulated *before* an entry was pruned keep moving it;
* decoupled weight decay and some optimisers change parameters whose gradient is zero.

Hence the three tools of this module, which together make every pruned entry of ``weight_orig``
exactly ``0.0`` after every ``optimizer.step()``:

* :func:`apply_masks` writes masks and zeroes ``weight_orig`` on the pruned entries;
* :func:`clear_optimizer_state` zeroes the optimiser state (SGD ``momentum_buffer``, Adam
  ``exp_avg`` / ``exp_avg_sq`` / ``max_exp_avg_sq``, any per-entry tensor of the parameter's
  shape) on the pruned entries, or drops all state (``reset=True``: CHITA resets momentum at
  every pruning event);
* :class:`MaskedTraining` hooks an optimiser: before each step the gradients of pruned entries
  are zeroed, after it ``weight_orig *= mask``. With the state cleared, SGD (momentum, weight
  decay) and Adam/AdamW already leave zeros at zero; the post-step multiplication makes it hold
  for any optimiser;
* :func:`make_permanent` ends it: ``weight = weight_orig * mask`` becomes a plain parameter again.

This is the one mechanism of the project for training with fixed or changing masks: the gradual
pruner (:mod:`.gradual`) and the sparse-training pipeline's post-pruning training
(:mod:`.post_training`) both use it.

Names are ``"<module>.<param>"`` (e.g. ``"fc1.weight"``), masks boolean tensors of the weight's
shape (``True`` = kept). See ``docs/gradual_pruning.md``.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

__all__ = ["masked_parameters", "get_masks", "apply_masks", "zero_pruned", "clear_optimizer_state", "MaskedTraining", "base_optimizer", "make_permanent", "parameter_order", "mask_density"]


def masked_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter, torch.Tensor]]:
    """``(name, weight_orig, weight_mask)`` of every parameter pruned with a torch mask."""
    for module_name, module in model.named_modules():
        for key in list(module._buffers):
            if not key.endswith("_mask"):
                continue
            pname = key[: -len("_mask")]
            orig = module._parameters.get(pname + "_orig")
            if orig is not None:
                yield (f"{module_name}.{pname}" if module_name else pname), orig, module._buffers[key]


def get_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The current masks of ``model`` as boolean tensors (copies), ``{name: mask}``."""
    return {name: mask.detach() != 0 for name, _, mask in masked_parameters(model)}


def _module_and_param(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module_name, _, pname = name.rpartition(".")
    try:
        module = model.get_submodule(module_name) if module_name else model
    except AttributeError:
        raise ValueError(f"masks: {name!r} names no module of {type(model).__name__}") from None
    if pname not in module._parameters and pname + "_orig" not in module._parameters:
        raise ValueError(f"masks: {type(module).__name__} {module_name!r} has no parameter {pname!r}")
    return module, pname


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Set the torch pruning masks of ``model`` to ``masks`` and zero the pruned entries.

    A parameter without a mask gets one (:func:`torch.nn.utils.prune.custom_from_mask`; the
    ``weight`` Parameter becomes ``weight_orig``, the same object, so an optimiser holding it
    keeps working); an existing mask is overwritten in place. ``weight_orig`` is multiplied by
    the mask and ``weight`` recomputed, so pruned entries are exactly zero everywhere.
    Everything is checked before the model is changed.
    """
    resolved = []
    for name, mask in masks.items():
        module, pname = _module_and_param(model, name)
        current = module._parameters.get(pname + "_orig", module._parameters.get(pname))
        if not isinstance(mask, torch.Tensor) or mask.shape != current.shape:
            got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ValueError(f"masks: {name!r} needs a tensor of shape {tuple(current.shape)}, got {got}")
        resolved.append((module, pname, mask.to(device=current.device, dtype=current.dtype)))
    with torch.no_grad():
        for module, pname, mask in resolved:
            if pname + "_mask" in module._buffers:
                module._buffers[pname + "_mask"].copy_(mask)
            else:
                torch_prune.custom_from_mask(module, pname, mask)
            orig = module._parameters[pname + "_orig"]
            orig.mul_(mask)
            setattr(module, pname, orig * module._buffers[pname + "_mask"])


def parameter_order(model: nn.Module) -> dict[str, list[str]]:
    """The registration order of each module's own parameters, ``{module name: [names]}``
    (to give :func:`make_permanent`: torch's pruning re-registers ``weight`` after ``bias``)."""
    return {name: list(module._parameters) for name, module in model.named_modules() if module._parameters}


def make_permanent(model: nn.Module, order: Mapping[str, list[str]] | None = None) -> list[str]:
    """Turn every torch pruning mask of ``model`` into zeros of a plain parameter.

    :func:`torch.nn.utils.prune.remove` on each masked parameter: ``weight = weight_orig * mask``
    becomes the ``weight`` Parameter (the same object as ``weight_orig``, so an optimiser holding
    it keeps working), the mask buffer and the forward pre-hook go. With ``order`` (from
    :func:`parameter_order` before the masks were applied) each module's parameters get their
    original order back, so ``state_dict()`` and ``parameters()`` list them as before. Returns
    the names made permanent.
    """
    names = [name for name, _, _ in masked_parameters(model)]
    for name in names:
        module_name, _, pname = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        torch_prune.remove(module, pname)
        wanted = (order or {}).get(module_name)
        if wanted is not None and set(wanted) == set(module._parameters):
            items = dict(module._parameters)
            module._parameters.clear()
            module._parameters.update((k, items[k]) for k in wanted)
    return names


def mask_density(masks: Mapping[str, torch.Tensor]) -> float:
    """Fraction of the entries kept over all ``masks`` (``True`` / nonzero = kept)."""
    kept = sum(int((m != 0).sum()) for m in masks.values())
    return kept / max(1, sum(m.numel() for m in masks.values()))


def zero_pruned(model: nn.Module, *, grads: bool = False) -> None:
    """``weight_orig *= weight_mask`` for every masked parameter (and its gradient with ``grads``)."""
    with torch.no_grad():
        for _, orig, mask in masked_parameters(model):
            target = orig.grad if grads else orig
            if target is not None:
                target.mul_(mask.to(target.dtype))


def base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimiser inside wrappers such as accelerate's ``AcceleratedOptimizer``
    (which subclass ``Optimizer`` without its hook tables and expose ``.optimizer``)."""
    while not hasattr(optimizer, "_optimizer_step_pre_hooks") and isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
        optimizer = optimizer.optimizer
    return optimizer


def clear_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module, *, reset: bool = False) -> int:
    """Clear the optimiser state of the pruned entries of ``model``'s masked parameters.

    Every state tensor of a parameter's shape (momentum buffers, Adam first and second moments,
    ...) is multiplied by the mask; scalar state such as Adam's ``step`` is kept. With
    ``reset=True`` the whole state of every parameter of the optimiser is dropped instead (the
    next step starts afresh, e.g. SGD momentum = gradient, Adam bias correction from step 1), as
    CHITA does at each pruning event. Returns the number of parameters whose state was touched.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    optimizer = base_optimizer(optimizer)
    if reset:
        count = len(optimizer.state)
        optimizer.state.clear()
        return count
    count = 0
    with torch.no_grad():
        for _, orig, mask in masked_parameters(model):
            state = optimizer.state.get(orig)
            if not state:
                continue
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.shape == orig.shape:
                    value.mul_(mask.to(value.dtype))
            count += 1
    return count


class MaskedTraining:
    """Hooks on an optimiser that keep the pruned entries of ``model`` exactly zero.

    Before ``optimizer.step()`` the gradients of pruned entries are zeroed; after it
    ``weight_orig *= mask``. The masks are read from the model at every step, so masks added or
    changed later (pruning events) are honoured. Use as a context manager or call
    :meth:`remove`.

    >>> with MaskedTraining(model, optimizer):          # doctest: +SKIP
    ...     for x, y in loader: ...; optimizer.step()
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
        self.model, self.optimizer = model, base_optimizer(optimizer)
        self._handles = [
            self.optimizer.register_step_pre_hook(lambda opt, args, kwargs: zero_pruned(self.model, grads=True)),
            self.optimizer.register_step_post_hook(lambda opt, args, kwargs: zero_pruned(self.model)),
        ]

    def remove(self) -> None:
        """Detach the hooks (idempotent)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "MaskedTraining":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
