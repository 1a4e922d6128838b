"""Physical removal of pruned neurons, convolution channels and attention heads.

Given a :class:`~combprune.torch.structured.StructuredPlan` (which groups of each unit are
kept), the model is made *smaller and dense*:

* ``neuron`` units (Linear -> [activation / BatchNorm1d] -> Linear): the producer loses the
  output rows (weight rows and bias entries) of removed neurons, a BatchNorm1d in between loses
  the matching affine parameters and running statistics, the consumer loses the matching
  weight columns;
* ``channel`` units (Conv2d -> [BatchNorm2d / activation] -> Conv2d): the same with output
  channels of the producer and input channels (``weight[:, c]``) of the consumer;
* ``head`` units (Hugging Face BERT-family attention): query, key and value lose the
  ``head_dim`` output rows of each removed head, the output projection the matching columns,
  and the self-attention module's ``num_attention_heads`` / ``num_heads`` / ``n_heads`` and
  ``all_head_size`` / ``inner_dim`` are updated.

Why outputs are unchanged: every operation between producer and consumer acts on each feature
(channel, head) separately, and the consumer's weights on a removed group are zero (the
structured solve wrote zeros there), so the removed features contributed nothing. This is
checked before anything is changed: a removed group with a nonzero consumer weight raises
``ValueError`` (the model has been edited since the plan was made). All new tensors are built
first and swapped in only when every check has passed, so a failure leaves the model as it was.

Hugging Face models: transformers 5.x has no ``prune_heads`` any more and its configs describe
uniform layers, so the new per-layer shapes are recorded in ``config.combprune_structure``
(saved by ``save_pretrained`` in ``config.json``); :func:`from_pretrained` rebuilds a model of
that shape and loads the weights through the model class's own ``from_pretrained``. A plain
``BertModel.from_pretrained`` on such a folder fails with a shape mismatch (it never silently
loads wrong weights).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ._select import is_hf_conv1d
from .structured import StructuredPlan, StructuredUnit, _in_features, _out_features, head_attrs

logger = logging.getLogger(__name__)

__all__ = ["remove_pruned", "apply_structure", "from_pretrained", "STRUCTURE_KEY"]

#: Attribute of a Hugging Face config that records the per-module shapes after removal.
STRUCTURE_KEY = "combprune_structure"


def _effective_weight(mod: nn.Module) -> torch.Tensor:
    """The module's weight with a torch pruning mask applied (``weight`` itself otherwise)."""
    return mod.weight.detach()


def _param_like(old: nn.Parameter | None, value: torch.Tensor | None) -> nn.Parameter | None:
    if value is None:
        return None
    return nn.Parameter(value.contiguous().clone(), requires_grad=True if old is None else old.requires_grad)


def remove_pruned(model: nn.Module, plan: StructuredPlan, *, check: bool = True, atol: float = 1e-4) -> nn.Module:
    """Physically remove the groups that ``plan`` drops; returns ``model`` (changed in place).

    With ``check`` (default) and calibration inputs in ``plan.example`` (set by
    :func:`~combprune.torch.structured.prune_structured`), the model's outputs on them are
    compared before and after the removal; a difference above ``atol * max(1, max|output|)``
    (default ``1e-4``: float32 kernels sum in a different order on the smaller shapes, e.g.
    2.6e-5 relative on all-MiniLM-L6-v2 with a quarter of its heads and neurons removed, exactly
    0 in float64; a forward pass that does not follow the recognised pattern changes the outputs
    at the scale of the outputs)
    (an architecture whose forward pass does not follow the recognised pattern) undoes the
    removal and raises ``ValueError``.

    Modules keep their identity (parameters are replaced, ``in_features`` / ``out_features`` /
    ``in_channels`` / ``out_channels`` / ``num_features`` updated); a torch pruning mask on an
    affected layer is made permanent first (``torch.nn.utils.prune.remove``; this stays even
    when the output check then fails, as it does not change the outputs). For Hugging Face
    models the new shapes are recorded in ``model.config.combprune_structure`` (see
    :func:`from_pretrained`).

    Raises ``ValueError`` when the plan does not match the model (names, sizes) or a removed
    group still has nonzero consumer weights; the model is then unchanged.
    """
    if not isinstance(plan, StructuredPlan):
        raise TypeError(f"plan: expected a StructuredPlan, got {type(plan).__name__}")
    modules = dict(model.named_modules())
    for u in plan.pruned_units:
        for name in (u.consumer, *u.producers, *u.norms) + ((u.attention,) if u.attention else ()):
            if name not in modules:
                raise ValueError(f"plan: unit {u.consumer!r} names {name!r}, which {type(model).__name__} does not have")
        _check_unit(u, plan.keep[u.consumer], modules)

    out_keep, in_keep = plan.feature_keep(modules)
    updates: list[tuple[nn.Module, dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for name in set(out_keep) | set(in_keep):
        mod = modules[name]
        rows = torch.as_tensor(np.flatnonzero(out_keep[name]), device=_device(mod)) if name in out_keep else None
        cols = torch.as_tensor(np.flatnonzero(in_keep[name]), device=_device(mod)) if name in in_keep else None
        updates.append(_shrunk(name, mod, rows, cols))
    attention_updates = []
    for u in plan.pruned_units:
        if u.attention is not None:
            n = int(np.sum(plan.keep[u.consumer]))
            att = modules[u.attention]
            if u.attention_attrs:
                attrs = u.attention_values(n)
            else:
                attrs = {a: n for a in ("num_attention_heads", "num_heads", "n_heads") if isinstance(getattr(att, a, None), int)}
                attrs.update({a: n * u.features_per_group for a in ("all_head_size", "inner_dim")
                              if isinstance(getattr(att, a, None), int)})
            attention_updates.append((att, attrs))

    reference = _outputs(model, plan.example) if check and plan.example is not None else None
    for mod, *_ in updates:  # torch pruning masks become permanent (outputs unchanged)
        for pname in ("weight", "bias"):
            if hasattr(mod, pname + "_orig"):
                torch_prune.remove(mod, pname)
    saved = [_state_of(mod, params, buffers, attrs) for mod, params, buffers, attrs in updates]
    saved += [(att, {}, {}, {a: getattr(att, a) for a in attrs}) for att, attrs in attention_updates]

    # --- swap in the new tensors ----------------------------------------------------------------
    for mod, params, buffers, attrs in updates:
        _swap(mod, params, buffers, attrs)
    for att, attrs in attention_updates:
        _swap(att, {}, {}, attrs)
    if reference is not None:
        problem = _output_change(model, plan.example, reference, atol)
        if problem is not None:
            for mod, params, buffers, attrs in saved:
                _swap(mod, params, buffers, attrs)
            raise ValueError(problem[0]) from problem[1]
    if _is_hf(model):
        record = _structure_record(model, modules, set(out_keep) | set(in_keep), attention_updates)
        merged = dict(getattr(model.config, STRUCTURE_KEY, None) or {})
        merged.setdefault("base", record["base"])
        merged["modules"] = {**merged.get("modules", {}), **record["modules"]}
        merged["attention"] = {**merged.get("attention", {}), **record["attention"]}
        setattr(model.config, STRUCTURE_KEY, merged)
    logger.info("removed %d structured units physically", len(plan.pruned_units))
    return model


def _output_change(model: nn.Module, example: Any, reference: torch.Tensor, atol: float) -> tuple[str, Exception | None] | None:
    """``None`` when the model's outputs on ``example`` still match ``reference`` (within
    ``atol * max(1, max|reference|)``), else the error message and its cause."""
    try:
        after = _outputs(model, example)
    except Exception as exc:
        return (f"model: {type(model).__name__}'s forward pass fails after physical removal ({type(exc).__name__}: {exc}); "
                "it does not follow the recognised pattern (e.g. per-head position biases sized by the original head "
                "count), removal undone; use apply='mask' or 'permanent'"), exc
    scale = max(1.0, float(reference.abs().max())) if reference.numel() else 1.0
    if after.shape == reference.shape and torch.allclose(after, reference, rtol=0.0, atol=atol * scale):
        return None
    diff = float((after - reference).abs().max()) if after.shape == reference.shape else float("inf")
    return (f"model: outputs changed by {diff:.3g} after physical removal (> {atol:g} x {scale:.3g}); "
            f"{type(model).__name__}'s forward pass does not match the recognised pattern, removal undone"), None


def _check_unit(u: StructuredUnit, keep: Any, modules: Mapping[str, nn.Module]) -> None:
    """Raise ``ValueError`` unless the model still has the sizes ``u`` expects, ``keep`` keeps
    at least one group (per block for ``even_blocks``, equally many) and every consumer's
    weights on the removed groups are zero."""
    expected = u.n_groups * u.features_per_group
    sizes = {c: (_in_features(modules[c]), expected) for c in u.consumers}
    for name in u.producers + u.norms:
        mod = modules[name]
        have = mod.num_features if isinstance(mod, nn.modules.batchnorm._BatchNorm) else _out_features(mod)
        sizes[name] = (have, u.producer_size(name))
    wrong = {k: v[0] for k, v in sizes.items() if v[0] != v[1]}
    if wrong:
        raise ValueError(f"plan: unit {u.consumer!r} expects {expected} features but the model has {wrong} (already removed?)")
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (u.n_groups,) or not keep.any():
        raise ValueError(f"plan: unit {u.consumer!r} must keep at least one of its {u.n_groups} groups")
    if u.even_blocks and len(set(keep.reshape(u.even_blocks, -1).sum(axis=1).tolist())) != 1:
        raise ValueError(f"plan: unit {u.consumer!r} must keep equally many groups in each of its {u.even_blocks} blocks")
    dropped = np.ones(expected, dtype=bool)
    dropped[u.features_of(keep)] = False
    for name in u.consumers:
        cons = modules[name]
        mask = torch.as_tensor(dropped, device=cons.weight.device)
        w = _effective_weight(cons)
        if torch.count_nonzero(w[mask] if is_hf_conv1d(cons) else w[:, mask]):
            raise ValueError(
                f"plan: {name!r} has nonzero weights on removed groups; removing them would change the outputs "
                "(was the model modified after prune_structured?)"
            )
    if u.attention is None:
        return
    att = modules[u.attention]
    if u.attention_attrs:
        current = {a: getattr(att, a, None) for a, _ in u.attention_attrs}
        if current != u.attention_values(u.n_groups):
            raise ValueError(f"plan: {u.attention!r} has {current}, expected {u.attention_values(u.n_groups)}")
    elif any(have is not None and have != want for have, want in zip(head_attrs(att), (u.n_groups, u.features_per_group))):
        # attributes the module does not hold (GPT-NeoX reads its head count from the config) are not checked
        raise ValueError(f"plan: {u.attention!r} does not have {u.n_groups} heads of size {u.features_per_group}")


def _outputs(model: nn.Module, example: Any) -> torch.Tensor:
    """The first tensor of the model's output on ``example`` (eval mode, no gradients)."""
    from ._calibration import _first_tensor, forward

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = _first_tensor(forward(model, example))
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("plan: the model's output contains no tensor to check; pass check=False")
    return out.detach().float().clone()


def _state_of(mod: nn.Module, params: Mapping[str, Any], buffers: Mapping[str, Any], attrs: Mapping[str, Any]):
    """The current values of what an update will replace (for undoing it)."""
    return (
        mod,
        {p: mod._parameters.get(p) for p in params},
        {b: mod._buffers.get(b) for b in buffers},
        {a: getattr(mod, a) for a in attrs},
    )


def _swap(mod: nn.Module, params: Mapping[str, Any], buffers: Mapping[str, Any], attrs: Mapping[str, Any]) -> None:
    for pname, value in params.items():
        setattr(mod, pname, value)
    for bname, value in buffers.items():
        mod._buffers[bname] = value
    for attr, value in attrs.items():
        setattr(mod, attr, value)


def _device(mod: nn.Module) -> torch.device:
    return next(iter(mod.parameters())).device


def _shrunk(name: str, mod: nn.Module, rows: torch.Tensor | None, cols: torch.Tensor | None):
    """New parameters / buffers / size attributes of ``mod`` keeping output ``rows`` and input
    ``cols`` (None: all)."""
    params: dict[str, Any] = {}
    buffers: dict[str, Any] = {}
    attrs: dict[str, Any] = {}
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        if cols is not None:
            raise ValueError(f"plan: BatchNorm {name!r} cannot be a consumer")
        for pname in ("weight", "bias"):
            p = getattr(mod, pname)
            params[pname] = _param_like(p, None if p is None else p.detach()[rows])
        for bname in ("running_mean", "running_var"):
            b = getattr(mod, bname)
            if b is not None:
                buffers[bname] = b[rows].clone()
        attrs["num_features"] = int(rows.numel())
        return mod, params, buffers, attrs
    conv1d = is_hf_conv1d(mod)
    if not isinstance(mod, (nn.Linear, nn.Conv2d)) and not conv1d:
        raise ValueError(f"plan: cannot shrink {name!r} of type {type(mod).__name__} (Linear, Conv1D, Conv2d, BatchNorm only)")
    w = _effective_weight(mod)
    w = w.T if conv1d else w  # (out, in, ...) from here on
    bias = None if mod.bias is None else mod.bias.detach()
    if rows is not None:
        w = w[rows]
        bias = None if bias is None else bias[rows]
    if cols is not None:
        w = w[:, cols]
    params["weight"] = _param_like(getattr(mod, "weight_orig", mod.weight), w.T if conv1d else w)
    params["bias"] = _param_like(getattr(mod, "bias_orig", mod.bias), bias)
    if conv1d:
        attrs.update(nf=int(w.shape[0]))
    elif isinstance(mod, nn.Linear):
        attrs.update(out_features=int(w.shape[0]), in_features=int(w.shape[1]))
    elif mod.groups > 1:  # depthwise: one filter per channel
        if cols is not None:
            raise ValueError(f"plan: depthwise convolution {name!r} cannot be a consumer")
        attrs.update(out_channels=int(w.shape[0]), in_channels=int(w.shape[0]), groups=int(w.shape[0]))
    else:
        attrs.update(out_channels=int(w.shape[0]), in_channels=int(w.shape[1]))
    return mod, params, buffers, attrs


# ---------------------------------------------------------------------------------------------
# Hugging Face: record the shapes in the config, rebuild at load time
# ---------------------------------------------------------------------------------------------
def _is_hf(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return config is not None and hasattr(config, "to_dict") and hasattr(model, "save_pretrained")


def _base(model: nn.Module) -> tuple[nn.Module, str]:
    """The Hugging Face base model and its attribute prefix ("" when ``model`` is the base)."""
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and isinstance(getattr(model, prefix, None), nn.Module):
        return getattr(model, prefix), prefix + "."
    return model, ""


def _structure_record(model: nn.Module, modules: Mapping[str, nn.Module], names: set[str], attention_updates) -> dict[str, Any]:
    """``{"base": bool, "modules": {name: shape}, "attention": {name: attrs}}`` of the (already
    resized) modules; names are relative to the base model when all of them lie inside it (so
    any head class of the architecture can load the weights)."""
    _, prefix = _base(model)
    inverse = {id(m): n for n, m in modules.items()}
    att_names = [inverse[id(att)] for att, _ in attention_updates]
    use_base = bool(prefix) and all(n.startswith(prefix) for n in list(names) + att_names)

    def strip(n: str) -> str:
        return n[len(prefix):] if use_base else n

    return {
        "base": use_base,
        "modules": {strip(n): _shape_entry(modules[n]) for n in sorted(names)},
        "attention": {strip(n): dict(attrs) for (_, attrs), n in zip(attention_updates, att_names)},
    }


def _shape_entry(mod: nn.Module) -> dict[str, Any]:
    if is_hf_conv1d(mod):
        return {"type": "Conv1D", "in_features": int(mod.weight.shape[0]), "out_features": mod.nf, "bias": mod.bias is not None}
    if isinstance(mod, nn.Linear):
        return {"type": "Linear", "in_features": mod.in_features, "out_features": mod.out_features, "bias": mod.bias is not None}
    if isinstance(mod, nn.Conv2d):
        return {"type": "Conv2d", "in_channels": mod.in_channels, "out_channels": mod.out_channels, "groups": mod.groups, "bias": mod.bias is not None}
    if isinstance(mod, nn.modules.batchnorm._BatchNorm):
        return {"type": type(mod).__name__, "num_features": mod.num_features}
    raise ValueError(f"cannot record the shape of {type(mod).__name__}")


def apply_structure(model: nn.Module, structure: Mapping[str, Any]) -> nn.Module:
    """Resize ``model``'s modules (uninitialised tensors) to the shapes in ``structure``
    (a ``config.combprune_structure`` record); used when loading a pruned checkpoint."""
    root = _base(model)[0] if structure.get("base") else model
    modules = dict(root.named_modules())
    for name, entry in structure.get("modules", {}).items():
        if name not in modules:
            raise ValueError(f"{STRUCTURE_KEY}: the model has no module {name!r}")
        mod = modules[name]
        w = mod.weight
        kw = {"device": w.device, "dtype": w.dtype}
        if entry["type"] == "Linear":
            shape = (entry["out_features"], entry["in_features"])
            mod.in_features, mod.out_features = entry["in_features"], entry["out_features"]
            out = entry["out_features"]
        elif entry["type"] == "Conv1D":
            shape = (entry["in_features"], entry["out_features"])
            mod.nf = out = entry["out_features"]
        elif entry["type"] == "Conv2d":
            mod.groups = entry.get("groups", 1)
            shape = (entry["out_channels"], entry["in_channels"] // mod.groups, *mod.kernel_size)
            mod.in_channels, mod.out_channels = entry["in_channels"], entry["out_channels"]
            out = entry["out_channels"]
        else:
            n = entry["num_features"]
            mod.num_features = n
            for pname in ("weight", "bias"):
                if getattr(mod, pname) is not None:
                    setattr(mod, pname, nn.Parameter(torch.empty(n, **kw)))
            for bname in ("running_mean", "running_var"):
                if getattr(mod, bname, None) is not None:
                    mod._buffers[bname] = torch.empty(n, **kw)
            continue
        mod.weight = nn.Parameter(torch.empty(shape, **kw))
        if mod.bias is not None:
            mod.bias = nn.Parameter(torch.empty(out, **kw))
    for name, attrs in structure.get("attention", {}).items():
        if name not in modules:
            raise ValueError(f"{STRUCTURE_KEY}: the model has no module {name!r}")
        for attr, value in attrs.items():
            setattr(modules[name], attr, value)
    return model


_PRUNED_CLASSES: dict[type, type] = {}


def _pruned_class(model_class: type) -> type:
    """A subclass of ``model_class`` whose ``__init__`` applies ``config.combprune_structure``."""
    if model_class not in _PRUNED_CLASSES:

        def __init__(self, config, *args, **kwargs):  # noqa: N807
            model_class.__init__(self, config, *args, **kwargs)
            structure = getattr(config, STRUCTURE_KEY, None)
            if structure:
                apply_structure(self, structure)

        _PRUNED_CLASSES[model_class] = type(model_class.__name__, (model_class,), {"__init__": __init__, "__module__": model_class.__module__})
    return _PRUNED_CLASSES[model_class]


def from_pretrained(path: str, model_class: type | None = None, **kwargs: Any) -> nn.Module:
    """Load a Hugging Face model saved (``save_pretrained``) after :func:`remove_pruned`.

    ``model_class`` defaults to the saved ``config.architectures[0]`` (e.g. ``BertModel``); extra
    keyword arguments go to its ``from_pretrained``. The model is built at the pruned shapes of
    ``config.combprune_structure`` and then loaded by transformers itself; the returned object
    is a plain ``model_class`` instance. Folders without that record load as usual.
    """
    import transformers

    config = kwargs.pop("config", None) or transformers.AutoConfig.from_pretrained(path)
    if model_class is None:
        archs = getattr(config, "architectures", None) or []
        if not archs or not hasattr(transformers, archs[0]):
            raise ValueError(f"model_class: {path!r} names no known architecture ({archs}); pass model_class=")
        model_class = getattr(transformers, archs[0])
    if not getattr(config, STRUCTURE_KEY, None):
        return model_class.from_pretrained(path, config=config, **kwargs)
    model = _pruned_class(model_class).from_pretrained(path, config=config, **kwargs)
    model.__class__ = model_class
    return model
