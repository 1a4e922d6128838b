"""Choosing the prunable parameters of a model (``targets`` / ``ignore``).

By default every ``weight`` of a :class:`torch.nn.Linear`, of a convolution
(``Conv1d``/``Conv2d``/``Conv3d``) and of a Hugging Face ``Conv1D`` (the transposed linear
layer of GPT-2 / GPT-style models) is prunable; biases, normalisation layers (BatchNorm,
LayerNorm, GroupNorm, ...) and embeddings are not. A weight *tied* to a module that is never
pruned (GPT-2's ``lm_head`` shares the token embedding matrix) is left out of the default
selection too, so that pruning never zeroes embeddings behind the user's back; name it in
``targets`` to prune it anyway. The selection is logged (``logging``, level INFO). ``targets`` and ``ignore`` refine the
choice; each accepts one item or a list of

* a module instance (``model.fc1``),
* a module class (``torch.nn.Linear``): every module of that type,
* a string: a regular expression matched (``re.fullmatch``) against the module's qualified
  name (``"features.0"``) or the parameter's (``"features.0.weight"``), e.g. ``r"fc\\d"``.

``targets`` replaces the default selection (a module type given in ``targets`` is pruned even
if it is not Linear/Conv, through its ``weight``; a module without a ``weight``, such as the
experts of a mixture-of-experts block, through its parameters of two or more dimensions);
``ignore`` removes from it. Large weight tensors the default selection leaves dense are
reported (:func:`unselected_weights`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["PrunableParam", "select_parameters", "unselected_weights", "with_unselected", "DEFAULT_TYPES", "NOT_PRUNED_TYPES", "is_hf_conv1d",
           "UNSELECTED_REPORT_FRACTION"]

logger = logging.getLogger(__name__)

#: Module types whose ``weight`` is pruned by default (plus Hugging Face ``Conv1D``, see
#: :func:`is_hf_conv1d`; matched by name so that transformers stays optional), and torch's
#: ``nn.MultiheadAttention``, whose in-projection weights are pruned (:func:`_weight_names`).
DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention)


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for ``transformers.pytorch_utils.Conv1D``: a linear layer storing ``weight`` as (in, out)."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")

#: Module types never pruned unless named explicitly in ``targets`` by instance or name.
NOT_PRUNED_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Embedding,
    nn.EmbeddingBag,
)


@dataclass(frozen=True)
class PrunableParam:
    """One prunable weight: ``module_name`` + ``param_name`` (normally ``"weight"``).

    ``tensor`` is the current effective weight; for a module already pruned through
    :mod:`torch.nn.utils.prune` that is ``weight_orig * weight_mask``.
    """

    module_name: str
    param_name: str
    module: nn.Module

    @property
    def name(self) -> str:
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name

    @property
    def is_masked(self) -> bool:
        """True when the module already carries a torch pruning mask for this parameter."""
        return hasattr(self.module, self.param_name + "_mask") and hasattr(self.module, self.param_name + "_orig")

    @property
    def storage(self) -> nn.Parameter:
        """The ``nn.Parameter`` that holds the values (``weight_orig`` for masked modules)."""
        return getattr(self.module, self.param_name + "_orig") if self.is_masked else getattr(self.module, self.param_name)

    @property
    def tensor(self) -> torch.Tensor:
        """Current effective values (mask applied)."""
        if self.is_masked:
            return getattr(self.module, self.param_name + "_orig") * getattr(self.module, self.param_name + "_mask")
        return getattr(self.module, self.param_name)

    @property
    def numel(self) -> int:
        return self.storage.numel()

    @property
    def shape(self) -> torch.Size:
        return self.storage.shape


Spec = Any  # nn.Module | type | str


def _as_list(spec: Spec | Iterable[Spec] | None) -> list[Spec]:
    if spec is None:
        return []
    if isinstance(spec, (str, nn.Module, type)):
        return [spec]
    try:
        items = list(spec)
    except TypeError:
        raise TypeError(f"expected a module, a module type, a regex string or a list of them, got {spec!r}") from None
    return items


def _compile(name: str, items: list[Spec]) -> list[Spec]:
    out: list[Spec] = []
    for item in items:
        if isinstance(item, str):
            try:
                out.append(re.compile(item))
            except re.error as exc:
                raise ValueError(f"{name}: invalid regular expression {item!r} ({exc})") from None
        elif isinstance(item, nn.Module) or (isinstance(item, type) and issubclass(item, nn.Module)):
            out.append(item)
        else:
            raise TypeError(f"{name}: expected a module, a module type or a regex string, got {item!r}")
    return out


def _matches(items: list[Spec], module_name: str, module: nn.Module, param_name: str) -> bool:
    full = f"{module_name}.{param_name}" if module_name else param_name
    for item in items:
        if isinstance(item, re.Pattern):
            if item.fullmatch(module_name) or item.fullmatch(full):
                return True
        elif isinstance(item, nn.Module):
            if item is module:
                return True
        elif isinstance(module, item):
            return True
    return False


def _tensor_names(module: nn.Module) -> list[str]:
    """The parameters of two or more dimensions of a module without a ``weight`` (plain or
    torch-masked), e.g. the 3-D ``gate_up_proj`` / ``down_proj`` of a mixture-of-experts block:
    prunable when ``targets`` names them (or their module)."""
    if isinstance(module, NOT_PRUNED_TYPES):
        return []
    out = []
    for n, p in module._parameters.items():
        if p is not None and p.ndim >= 2:
            out.append(n[: -len("_orig")] if n.endswith("_orig") and hasattr(module, n[: -len("_orig")] + "_mask") else n)
    return out


def _weight_names(module: nn.Module) -> list[str]:
    """The prunable weights of ``module`` (plain or torch-masked): ``["weight"]`` when it has one;
    for ``nn.MultiheadAttention`` its in-projection, one fused ``in_proj_weight`` (or
    ``q_/k_/v_proj_weight`` when the key / value sizes differ); its ``out_proj`` is a Linear
    module of its own."""
    names = ["in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"] if isinstance(module, nn.MultiheadAttention) else ["weight"]
    return [n for n in names if module._parameters.get(n) is not None or module._parameters.get(n + "_orig") is not None]


def select_parameters(
    model: nn.Module,
    targets: Spec | Iterable[Spec] | None = None,
    ignore: Spec | Iterable[Spec] | None = None,
    *,
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES,
) -> list[PrunableParam]:
    """The prunable weights of ``model``, in module registration order.

    Raises ``ValueError`` naming ``targets``/``ignore`` when nothing is left to prune, or when a
    target matches no module with a weight.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    tgt = _compile("targets", _as_list(targets))
    ign = _compile("ignore", _as_list(ignore))
    never_pruned = _never_pruned_storages(model) if not tgt else {}
    chosen: list[PrunableParam] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for pname in _weight_names(module) or (_tensor_names(module) if tgt else []):
            if tgt:
                ok = _matches(tgt, module_name, module, pname)
            else:
                ok = (isinstance(module, types) or is_hf_conv1d(module)) and not isinstance(module, NOT_PRUNED_TYPES)
            if not ok or _matches(ign, module_name, module, pname):
                continue
            param = PrunableParam(module_name, pname, module)
            if id(param.storage) in never_pruned:
                logger.info(
                    "not pruning %s: its weight is tied to %s, which is never pruned (name it in targets= to prune it)",
                    param.name, never_pruned[id(param.storage)],
                )
                continue
            if id(param.storage) in seen:  # tied weights are pruned once
                continue
            seen.add(id(param.storage))
            chosen.append(param)
    if not chosen:
        kinds = ", ".join(t.__name__ for t in types)
        what = f"targets={targets!r}" if tgt else f"the default types ({kinds})"
        extra = f" after ignore={ignore!r}" if ign else ""
        raise ValueError(f"targets: no prunable layer matched {what}{extra} in {type(model).__name__}")
    logger.info(
        "selected %d prunable weights (%d parameters) in %s: %s",
        len(chosen), sum(p.numel for p in chosen), type(model).__name__, ", ".join(p.name for p in chosen),
    )
    return chosen


def _never_pruned_storages(model: nn.Module) -> dict[int, str]:
    """``id`` of each weight owned by a never-pruned module (embeddings, norms) -> that module's name."""
    out: dict[int, str] = {}
    for name, module in model.named_modules():
        if isinstance(module, NOT_PRUNED_TYPES):
            for pname in _weight_names(module):
                out.setdefault(id(PrunableParam(name, pname, module).storage), name or type(module).__name__)
    return out


#: A weight tensor outside the default types is reported as left dense when it holds at least
#: this fraction of the default types' weights (smaller ones, such as ViT's position embeddings
#: or class token, are not weights a pruning method is expected to touch).
UNSELECTED_REPORT_FRACTION = 0.01


def unselected_weights(model: nn.Module) -> list[tuple[str, str]]:
    """Large weight tensors the default selection leaves dense, ``(name, reason)``.

    Parameters of two or more dimensions owned by a module that is neither a default type
    (:data:`DEFAULT_TYPES`, Hugging Face ``Conv1D``) nor a never-pruned one (embeddings,
    norms), not tied to a never-pruned weight, and holding at least
    :data:`UNSELECTED_REPORT_FRACTION` of the default types' weights: e.g. the 3-D expert
    tensors of transformers' mixture-of-experts blocks (Mixtral, Qwen-MoE: ``experts.gate_up_proj``
    of shape (experts, 2 I, H)), which would otherwise stay dense behind a report that counts
    only the Linear layers.
    """
    never = _never_pruned_storages(model)
    default = [m for m in model.modules() if isinstance(m, DEFAULT_TYPES) or is_hf_conv1d(m)]
    total = sum(p.numel() for m in default for p in m.parameters(recurse=False) if p.ndim >= 2)
    owners = {id(p) for m in default for p in m.parameters(recurse=False)}
    out: list[tuple[str, str]] = []
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        if isinstance(module, NOT_PRUNED_TYPES) or isinstance(module, DEFAULT_TYPES) or is_hf_conv1d(module):
            continue
        for pname, param in module.named_parameters(recurse=False):
            if param.ndim < 2 or id(param) in never or id(param) in owners or id(param) in seen:
                continue
            seen.add(id(param))
            if param.numel() < UNSELECTED_REPORT_FRACTION * total:
                continue
            name = f"{module_name}.{pname}" if module_name else pname
            out.append((name, f"{param.ndim}-D parameter {tuple(param.shape)} of {type(module).__name__}, outside the Linear / "
                              "convolution layers: left dense (name it in targets= to prune it by magnitude or gradients)"))
    return out


def with_unselected(model: nn.Module, not_pruned: list[tuple[str, str]], context: str) -> list[tuple[str, str]]:
    """``not_pruned`` (a report's) extended by :func:`unselected_weights`, with a warning naming
    them (``context``: who left them out, e.g. ``"prune wanda"``)."""
    listed = {name for name, _ in not_pruned}
    left = [item for item in unselected_weights(model) if item[0] not in listed]
    if left:
        logger.warning("%s: %d weight tensor(s) outside the Linear / convolution layers left out (dense): %s; name them in "
                       "targets= to include them", context, len(left), ", ".join(name for name, _ in left[:4]) + (", ..." if len(left) > 4 else ""))
    return [*not_pruned, *left]
