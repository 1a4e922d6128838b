"""Layer-wise structured pruning (OSSCAR): neurons, convolution channels and attention heads.

A *unit* is a pair of layers joined by per-feature operations: a **producer** whose output
features are the prunable groups and a **consumer** that reads them. Removing a group means
removing output features of the producer(s) and the matching input rows of the consumer; the
optimisation happens on the consumer (OSSCAR's layer-wise reconstruction), the producer is
only shrunk (:mod:`combprune.torch.physical`).

=============  =================================  ==========================================
kind           producer -> consumer               group = rows of the consumer's input
=============  =================================  ==========================================
``neuron``     Linear -> [act / BN1d] -> Linear   one input feature (one row of W_hat)
``channel``    Conv2d -> [BN2d / act] -> Conv2d   one input channel = its ``kh * kw`` rows of
                                                  the unfolded (im2col) input
``head``       q, k, v -> attention -> out proj   ``head_dim`` consecutive input rows of the
                                                  attention output projection (Hugging Face)
=============  =================================  ==========================================

Grouped-query attention and GPT-2's fused attention / Conv1D MLP are recognised by
:mod:`combprune.torch._groups`; a unit read by several consumers (a fan-out), or whose groups
must be kept equally in blocks (GQA query heads), is optimised through the reductions of
:mod:`combprune.torch._coupled` (the objective is the sum of the consumers' objectives).

For each unit, in forward order, the consumer's calibration input X (N x d; for a convolution
the im2col patches, N = samples x output positions; for a Linear applied to sequences, N =
samples x tokens) is accumulated as ``H = X^T X`` in float64 with a forward pre-hook, and
:class:`~combprune.problems.StructuredMIQP` ``(H, W_hat, groups, s, ridge)`` is solved with
``W_hat = consumer weight^T`` (rows = input features, d x m):

    minimize_W  1/2 ||X (W - W_hat)||_F^2 + (ridge/2) ||W - W_hat||_F^2
    s.t.        at most s groups of rows of W nonzero.

The solution W (kept rows reconstructed, pruned rows zero) is written into the consumer, so
the pruned model is exact to use as is; later units are calibrated on the outputs of the
already-pruned layers (the calibration batches are run again through the updated model).

Sparsity here is the **fraction of groups removed** per unit: ``floor(sparsity * G)`` groups are
removed, ``s = G - floor(sparsity * G)`` are kept (never more than asked for removed).
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from combprune.problems import StructuredMIQP, osscar_default_ridge

from . import _calibration, _coupled, _structured_ridge
from ._structured_ridge import check_ridge
from ._flops import layer_flops, model_flops
from ._select import PrunableParam, is_hf_conv1d, select_parameters
from .report import LayerReport

logger = logging.getLogger(__name__)

__all__ = [
    "StructuredUnit",
    "StructuredPlan",
    "UnsupportedGraphError",
    "discover_units",
    "unsupported_structures",
    "accumulate_gram",
    "layer_problem",
    "layer_grams",
    "StructuredSetup",
    "prune_structured",
    "KINDS",
]

KINDS: tuple[str, ...] = ("neuron", "channel", "head")

#: Modules acting on each feature / channel separately (a zero input row stays irrelevant).
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.Softplus, nn.Softsign, nn.Tanhshrink,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.elu, F.selu, F.celu, F.leaky_relu, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.mish, F.softplus, F.dropout, F.tanh, F.sigmoid, torch.relu, torch.tanh, torch.sigmoid,
    torch.nn.functional.dropout2d,
}
_ELEMENTWISE_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous"}
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


class UnsupportedGraphError(ValueError):
    """The model's layer graph has no structured pruning unit this adapter can handle safely."""


@dataclass(frozen=True)
class StructuredUnit:
    """A producer -> consumer pair whose shared features are pruned in groups.

    Attributes
    ----------
    kind : ``"neuron"``, ``"channel"`` or ``"head"``.
    consumer : qualified name of the layer whose input groups are optimised (Linear / Conv2d).
    producers : layers whose *output* features are the groups (one Linear/Conv2d; q, k, v for
        heads); they are shrunk by physical removal.
    norms : BatchNorm layers between producer and consumer (sliced by physical removal).
    attention : for heads, the Hugging Face module holding the head count
        (``num_attention_heads`` or ``num_heads``; see :func:`head_attrs`), else ``None``.
    n_groups : number of groups G.
    features_per_group : consumer input features (Linear ``in_features`` / Conv ``in_channels``)
        per group: 1 for neurons and channels, ``head_dim`` for heads.
    """

    kind: str
    consumer: str
    producers: tuple[str, ...]
    norms: tuple[str, ...] = ()
    attention: str | None = None
    n_groups: int = 0
    features_per_group: int = 1
    #: producers whose output features are not ``features_per_group`` consecutive features per
    #: group: ``(name, sizes)``, the output being consecutive segments, segment ``j`` holding
    #: ``sizes[j]`` consecutive features of each group in group order; the kept output features
    #: are the concatenation of ``repeat(keep, sizes[j])`` (GQA key/value projections: ``(hd,)``,
    #: one ``head_dim`` per KV head; GPT-2's fused ``c_attn``: ``(hd, hd, hd)`` for q | k | v;
    #: Phi-3's ``qkv_proj``: ``(r hd, hd, hd)``; a fused gate | up projection: ``(1, 1)``). See
    #: :mod:`combprune.torch._groups`.
    layout: tuple[tuple[str, tuple[int, ...]], ...] = ()
    #: further consumers reading the same groups (each with its own input X); the optimisation
    #: sums their reconstruction objectives (:mod:`combprune.torch._coupled`).
    extra_consumers: tuple[str, ...] = ()
    #: attributes of ``attention`` set by physical removal to ``factor x`` the kept groups (per
    #: block when ``even_blocks``); when empty: ``num_attention_heads`` / ``num_heads`` and
    #: ``all_head_size`` (BERT style).
    attention_attrs: tuple[tuple[str, int], ...] = ()
    #: when > 0, the groups form this many blocks of consecutive groups and every block keeps
    #: the same number of groups (GQA query heads inside each KV group).
    even_blocks: int = 0

    def attention_values(self, n_kept: int) -> dict[str, int]:
        """``attention_attrs`` evaluated for ``n_kept`` kept groups."""
        per = n_kept // max(self.even_blocks, 1)
        return {attr: per * factor for attr, factor in self.attention_attrs}

    @property
    def name(self) -> str:
        return self.consumer

    @property
    def consumers(self) -> tuple[str, ...]:
        """Every layer whose input groups are optimised: ``consumer`` first."""
        return (self.consumer, *self.extra_consumers)

    def producer_features_of(self, producer: str, keep: np.ndarray) -> np.ndarray:
        """Indices of the output features of ``producer`` (or a norm) that stay for ``keep``."""
        keep = np.asarray(keep, dtype=bool)
        for name, sizes in self.layout:
            if name == producer:
                return np.flatnonzero(np.concatenate([np.repeat(keep, size) for size in sizes]))
        return self.features_of(keep)

    def producer_size(self, producer: str) -> int:
        """Number of output features of ``producer`` the unit expects."""
        for name, sizes in self.layout:
            if name == producer:
                return self.n_groups * sum(sizes)
        return self.n_groups * self.features_per_group

    def features_of(self, keep: np.ndarray) -> np.ndarray:
        """Indices of the consumer input features of the kept groups (``keep``: (G,) bool)."""
        keep = np.asarray(keep, dtype=bool)
        return np.flatnonzero(np.repeat(keep, self.features_per_group))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "consumer": self.consumer,
            "producers": list(self.producers),
            "norms": list(self.norms),
            "attention": self.attention,
            "n_groups": self.n_groups,
            "features_per_group": self.features_per_group,
            "layout": [[name, list(sizes)] for name, sizes in self.layout],
            "extra_consumers": list(self.extra_consumers),
            "attention_attrs": [list(x) for x in self.attention_attrs],
            "even_blocks": self.even_blocks,
        }


@dataclass
class StructuredPlan:
    """Which groups of which units are kept: the input of physical removal.

    ``keep[unit.consumer]`` is a (G,) boolean array over the unit's groups.
    """

    units: list[StructuredUnit]
    keep: dict[str, np.ndarray] = field(default_factory=dict)
    #: a few calibration inputs (tensor / tuple / dict): :func:`~combprune.torch.physical.remove_pruned`
    #: checks on them that the smaller model's outputs equal the masked model's.
    example: Any = None
    #: structures the model has but this run cannot prune: (module name, reason).
    not_pruned: list[tuple[str, str]] = field(default_factory=list)
    #: with ``flop_budget``: ``flop_budget``, ``model_flops`` (dense FLOPs per sample of the whole
    #: model) and ``fraction`` (the uniform fraction of groups removed per unit); else empty.
    budget: dict[str, float] = field(default_factory=dict)
    #: with ``ridge="auto"``: per consumer, the chosen ridge factor and the held-back error of
    #: each factor tried (:mod:`combprune.torch._structured_ridge`); else empty.
    ridge_auto: dict[str, dict[str, Any]] = field(default_factory=dict)

    def unit(self, consumer: str) -> StructuredUnit:
        for u in self.units:
            if u.consumer == consumer:
                return u
        raise KeyError(consumer)

    @property
    def pruned_units(self) -> list[StructuredUnit]:
        """Units with at least one group removed."""
        return [u for u in self.units if u.consumer in self.keep and not np.all(self.keep[u.consumer])]

    def feature_keep(self, modules: Mapping[str, nn.Module]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """``(out_keep, in_keep)``: per layer name, boolean masks over its output features
        (producers; also BatchNorms) and input features (consumers) that stay."""
        out_keep: dict[str, np.ndarray] = {}
        in_keep: dict[str, np.ndarray] = {}
        for u in self.pruned_units:
            keep = self.keep[u.consumer]
            for name in u.consumers:
                feats = np.zeros(_in_features(modules[name]), dtype=bool)
                feats[u.features_of(keep)] = True
                in_keep[name] = feats
            for name in u.producers + u.norms:
                feats = np.zeros(u.producer_size(name), dtype=bool)
                feats[u.producer_features_of(name, keep)] = True
                out_keep[name] = feats
        return out_keep, in_keep

    def masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """``{layer name: weight mask}`` for consumers (0 on the input columns of removed groups)
        and producers (0 on the output rows of removed groups); 1 elsewhere.

        Suitable for :func:`torch.nn.utils.prune.custom_from_mask` on each layer's ``weight``.
        The masked model computes the same outputs as the physically smaller one (the consumer
        reads nothing of a removed feature; producer biases are not masked, they only feed
        zero columns).
        """
        modules = dict(model.named_modules())
        out_keep, in_keep = self.feature_keep(modules)
        out: dict[str, torch.Tensor] = {}
        for name in set(out_keep) | set(in_keep):
            layer = modules[name]
            if not isinstance(layer, (nn.Linear, nn.Conv2d)) and not is_hf_conv1d(layer):
                continue  # BatchNorm: nothing to mask
            weight = layer.weight
            mask = torch.ones_like(weight)
            view = mask.T if is_hf_conv1d(layer) else mask  # Conv1D stores (in, out)
            if name in out_keep:
                view[torch.as_tensor(~out_keep[name], device=weight.device)] = 0
            if name in in_keep:
                view[:, torch.as_tensor(~in_keep[name], device=weight.device)] = 0
            out[name] = mask
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": [u.to_dict() for u in self.units],
            "keep": {k: np.asarray(v, dtype=bool).tolist() for k, v in self.keep.items()},
        }


# ---------------------------------------------------------------------------------------------
# Discovery of producer/consumer units
# ---------------------------------------------------------------------------------------------
def _in_features(layer: nn.Module) -> int:
    if is_hf_conv1d(layer):
        return int(layer.weight.shape[0])
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def _out_features(layer: nn.Module) -> int:
    if is_hf_conv1d(layer):
        return int(layer.weight.shape[1])
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _first_int(mod: nn.Module, names: Iterable[str]) -> int | None:
    return next((getattr(mod, n) for n in names if isinstance(getattr(mod, n, None), int)), None)


def head_attrs(att: nn.Module) -> tuple[int | None, int | None]:
    """``(number of heads, head size)`` of a Hugging Face attention module: BERT's
    ``num_attention_heads`` / ``attention_head_size``, ``num_heads`` / ``head_dim``,
    DistilBERT's ``n_heads`` / ``attention_head_size``, T5's ``n_heads`` / ``key_value_proj_dim``,
    GPT-NeoX's ``head_size``."""
    return (_first_int(att, ("num_attention_heads", "num_heads", "n_heads")),
            _first_int(att, ("attention_head_size", "head_dim", "head_size", "key_value_proj_dim")))


#: Separate query / key / value projections and the output projection, by naming scheme:
#: LLaMA / OPT / ViT / CLIP, DistilBERT, T5.
PROJECTION_NAMES = ((("q_proj", "k_proj", "v_proj"), ("o_proj", "out_proj")), (("q_lin", "k_lin", "v_lin"), ("out_lin",)),
                    (("q", "k", "v"), ("o",)))

#: Feed-forward pairs ``consumer(act(producer(x)))`` by naming scheme, with the activation
#: attributes one of which the module must have: ViT / CLIP / OPT, DistilBERT, T5, GPT-NeoX /
#: BLOOM / Falcon.
FFN_NAMES = ((("fc1",), "fc2", ("activation_fn",)), (("lin1",), "lin2", ("activation",)), (("wi",), "wo", ("act",)),
             (("dense_h_to_4h",), "dense_4h_to_h", ("act", "gelu_impl", "activation_fn")),
             (("gate_proj", "up_proj"), "down_proj", ("act_fn",)), (("wi_0", "wi_1"), "wo", ("act",)))


def _linears(mod: nn.Module, names: Iterable[str]) -> bool:
    return all(isinstance(getattr(mod, n, None), nn.Linear) for n in names)


def _hf_units(model: nn.Module) -> list[StructuredUnit]:
    """Hugging Face transformer blocks, recognised by their module structure.

    Attention heads (no fused or grouped-query projections):

    * BERT family (BERT, RoBERTa, ELECTRA, ...): a self-attention module with
      ``query``/``key``/``value`` and ``num_attention_heads`` / ``attention_head_size``, whose
      parent has ``output.dense`` (the output projection);
    * projection style (:data:`PROJECTION_NAMES`: ViT, CLIP, OPT with ``q_proj``/``k_proj``/
      ``v_proj`` and ``o_proj`` or ``out_proj``; DistilBERT's ``q_lin``.. ``out_lin``; T5's
      ``q``/``k``/``v``/``o``) with a head count and size on the module (:func:`head_attrs`;
      LLaMA-style modules that read the head count from their config, or with grouped-query
      attention, are handled by :mod:`combprune.torch._groups`).

    FFN neurons: ``intermediate.dense`` (+ ``intermediate_act_fn``) -> ``output.dense``
    (BERT family) and the pairs of :data:`FFN_NAMES`: ``fc1 -> fc2`` (ViT, CLIP, OPT),
    ``lin1 -> lin2`` (DistilBERT), ``wi -> wo`` (T5), ``dense_h_to_4h -> dense_4h_to_h``
    (GPT-NeoX, BLOOM, Falcon), and the gated ``down_proj(act_fn(gate_proj(x)) * up_proj(x))``
    (LLaMA family) and ``wo(act(wi_0(x)) * wi_1(x))`` (T5 v1.1): the producers are gate and up.
    """
    units: list[StructuredUnit] = []
    for name, mod in model.named_modules():
        prefix = f"{name}." if name else ""
        children = dict(mod.named_children())
        out = children.get("output")
        # BERT family: mod is the parent (BertAttention)
        for attr, sub in children.items():
            if attr == "output" or not _linears(sub, ("query", "key", "value")):
                continue
            heads, hd = head_attrs(sub)
            dense = getattr(out, "dense", None)
            if heads is None or hd is None or not isinstance(dense, nn.Linear):
                continue
            if dense.in_features != heads * hd or any(getattr(sub, a).out_features != heads * hd for a in ("query", "key", "value")):
                continue
            units.append(StructuredUnit(
                "head", f"{prefix}output.dense", tuple(f"{prefix}{attr}.{a}" for a in ("query", "key", "value")),
                attention=f"{prefix}{attr}", n_groups=heads, features_per_group=hd,
            ))
        # projection style
        for qkv, outs in PROJECTION_NAMES:
            o_name = next((n for n in outs if isinstance(children.get(n), nn.Linear)), None)
            if o_name is None or not _linears(mod, qkv):
                continue
            heads, hd = head_attrs(mod)
            projections = [getattr(mod, a) for a in qkv]
            if heads is not None and hd is not None and children[o_name].in_features == heads * hd and all(
                p.out_features == heads * hd for p in projections
            ):
                units.append(StructuredUnit(
                    "head", f"{prefix}{o_name}", tuple(f"{prefix}{a}" for a in qkv),
                    attention=name, n_groups=heads, features_per_group=hd,
                ))
        # FFN neurons
        inter = children.get("intermediate")
        if (
            inter is not None
            and isinstance(getattr(inter, "dense", None), nn.Linear)
            and hasattr(inter, "intermediate_act_fn")
            and isinstance(getattr(out, "dense", None), nn.Linear)
            and out.dense.in_features == inter.dense.out_features
        ):
            units.append(
                StructuredUnit("neuron", f"{prefix}output.dense", (f"{prefix}intermediate.dense",), n_groups=inter.dense.out_features)
            )
        for producers, consumer, activations in FFN_NAMES:
            if not (_linears(mod, (*producers, consumer)) and any(hasattr(mod, a) for a in activations)):
                continue
            width = getattr(mod, consumer).in_features
            if all(getattr(mod, p).out_features == width for p in producers):
                units.append(StructuredUnit("neuron", f"{prefix}{consumer}", tuple(f"{prefix}{p}" for p in producers), n_groups=width))
    return units


def _is_elementwise(node: Any, modules: Mapping[str, nn.Module], prev: Any) -> bool:
    if node.op == "call_module":
        return isinstance(modules[node.target], ELEMENTWISE_MODULES)
    if node.op == "call_function":
        return node.target in _ELEMENTWISE_FUNCTIONS and node.args[:1] == (prev,)
    if node.op == "call_method":
        return node.target in _ELEMENTWISE_METHODS and node.args[:1] == (prev,)
    return False


def _fx_units(model: nn.Module) -> list[StructuredUnit]:
    """Linear -> [elementwise | BN1d] -> Linear and Conv2d -> [elementwise | BN2d | depthwise] ->
    Conv2d chains found by :func:`torch.fx.symbolic_trace` (every intermediate value read only
    by the next operation, or by several consumers at the end), plus the residual streams of
    :mod:`combprune.torch._streams`; any other reader of the features makes them unprunable."""
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means "cannot analyse"
        where = _untraceable_module(model)
        raise UnsupportedGraphError(
            f"model: cannot trace {type(model).__name__} with torch.fx ({type(exc).__name__}: {exc}); "
            + (f"the innermost module that fails is {where!r}; " if where else "the top-level forward itself fails; ")
            + "make its forward traceable (no data-dependent control flow, see torch.fx.wrap) or pass the "
            "producer/consumer pairs explicitly with pairs=[(producer, [norm, ...,] consumer), ...]"
        ) from exc
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    units = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        prod = modules[node.target]
        if isinstance(prod, nn.Linear):
            consumer_type, bn_type = nn.Linear, nn.BatchNorm1d
        elif _is_plain_conv(prod):
            consumer_type, bn_type = nn.Conv2d, nn.BatchNorm2d
        else:
            continue
        unit = _follow_chain(node, prod, consumer_type, bn_type, modules, calls)
        if unit is not None:
            units.append(unit)
    from ._streams import stream_units

    return units + stream_units(graph, modules, calls)


def _is_consumer_node(node: Any, cur: Any, prod: nn.Module, consumer_type: type, modules: Mapping[str, nn.Module], calls: Mapping[str, int]) -> bool:
    """``node`` calls a Linear (plain Conv2d) once per forward pass on ``cur`` alone, reading
    all of ``prod``'s features."""
    if node.op != "call_module" or calls[node.target] != 1:
        return False
    mod = modules[node.target]
    return (
        isinstance(mod, consumer_type) and (consumer_type is nn.Linear or _is_plain_conv(mod))
        and _in_features(mod) == _out_features(prod) and node.args == (cur,) and not node.kwargs
    )


def _is_depthwise(mod: nn.Module, channels: int) -> bool:
    """A depthwise Conv2d on ``channels`` channels (one filter per channel): per-channel."""
    return isinstance(mod, nn.Conv2d) and mod.groups == mod.in_channels == mod.out_channels == channels and mod.padding_mode == "zeros"


def _follow_chain(node: Any, prod: nn.Module, consumer_type: type, bn_type: type, modules: Mapping[str, nn.Module], calls: Mapping[str, int]) -> StructuredUnit | None:
    """Follow ``prod``'s output through per-feature operations (element-wise, BatchNorm,
    depthwise convolutions) to its consumer(s): one consumer, or several that all read the same
    value (a fan-out: one unit whose objective sums theirs). Any other reader: ``None``."""
    norms: list[str] = []
    cur = node
    n = _out_features(prod)
    kind = "neuron" if consumer_type is nn.Linear else "channel"
    while True:
        users = list(cur.users)
        if len(users) > 1:
            if all(_is_consumer_node(u, cur, prod, consumer_type, modules, calls) for u in users):
                names = [u.target for u in users]
                return StructuredUnit(kind, names[0], (node.target,), tuple(norms), n_groups=n, extra_consumers=tuple(names[1:]))
            return None
        if not users:
            return None
        nxt = users[0]
        if _is_consumer_node(nxt, cur, prod, consumer_type, modules, calls):
            return StructuredUnit(kind, nxt.target, (node.target,), tuple(norms), n_groups=n)
        if nxt.op == "call_module" and calls[nxt.target] == 1 and nxt.args[:1] == (cur,):
            mod = modules[nxt.target]
            if (isinstance(mod, bn_type) and mod.num_features == n) or (consumer_type is nn.Conv2d and _is_depthwise(mod, n) and len(nxt.args) == 1):
                norms.append(nxt.target)
                cur = nxt
                continue
            if isinstance(mod, (nn.Linear, nn.Conv2d)):
                return None
        if _is_elementwise(nxt, modules, cur):
            cur = nxt
            continue
        return None


def _untraceable_module(model: nn.Module) -> str | None:
    """Name of the innermost submodule whose own forward torch.fx cannot trace (descending
    through the first failing child at each level), or ``None`` when every child traces."""
    import torch.fx

    prefix, mod, found = "", model, None
    while True:
        for name, child in mod.named_children():
            if not list(child.children()) and isinstance(child, (nn.Linear, nn.Conv2d, *ELEMENTWISE_MODULES)):
                continue  # leaf layers are never traced into
            try:
                torch.fx.symbolic_trace(child)
            except Exception:  # noqa: BLE001 - any failure marks the child
                found = f"{prefix}{name}"
                prefix, mod = f"{found}.", child
                break
        else:
            return found


def _has_matrix(mod: nn.Module) -> bool:
    """Layers with a weight matrix that structured pruning slices (not norms)."""
    return isinstance(mod, (nn.Linear, nn.Conv2d)) or is_hf_conv1d(mod)


def _is_plain_conv(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv2d) and mod.groups == 1 and mod.padding_mode == "zeros"


def _is_linear_like(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Linear) or is_hf_conv1d(mod)


def _declared_units(model: nn.Module, pairs: Iterable[Any]) -> list[StructuredUnit]:
    """Units declared as ``(producer, [norm or depthwise conv, ...,] consumer)``; the consumer
    may be a tuple of layers that all read the features (a coupled unit)."""
    modules = dict(model.named_modules())
    units = []
    for pair in pairs:
        ok = isinstance(pair, (tuple, list)) and len(pair) >= 2 and all(isinstance(p, str) for p in pair[:-1])
        last = pair[-1] if ok else None
        consumers = (last,) if isinstance(last, str) else tuple(last) if isinstance(last, (tuple, list)) else ()
        if not ok or not consumers or not all(isinstance(c, str) for c in consumers) or len(set(consumers)) != len(consumers):
            raise ValueError(
                f"pairs: each pair is (producer, [batchnorm, ...,] consumer) module names (the consumer may be a tuple "
                f"of distinct names), got {pair!r}"
            )
        for p in (*pair[:-1], *consumers):
            if p not in modules:
                raise ValueError(f"pairs: {type(model).__name__} has no module named {p!r}")
        prod, norms = modules[pair[0]], pair[1:-1]
        if _is_linear_like(prod) and all(_is_linear_like(modules[c]) for c in consumers):
            kind, bn = "neuron", nn.BatchNorm1d
        elif _is_plain_conv(prod) and all(_is_plain_conv(modules[c]) for c in consumers):
            kind, bn = "channel", nn.BatchNorm2d
        else:
            raise UnsupportedGraphError(
                f"pairs: {pair!r}: supported pairs are Linear -> Linear (or Hugging Face Conv1D) and Conv2d -> Conv2d "
                f"(groups=1, zero padding), got {type(prod).__name__} -> {', '.join(type(modules[c]).__name__ for c in consumers)}"
            )
        n = _out_features(prod)
        for c in consumers:
            if _in_features(modules[c]) != n:
                raise ValueError(f"pairs: {pair!r}: producer has {n} outputs but consumer {c!r} {_in_features(modules[c])} inputs")
        for name in norms:
            mod = modules[name]
            if not ((isinstance(mod, bn) and mod.num_features == n) or (kind == "channel" and _is_depthwise(mod, n))):
                raise UnsupportedGraphError(
                    f"pairs: {pair!r}: {name!r} must be a {bn.__name__} with {n} features"
                    + (f" or a depthwise Conv2d on {n} channels" if kind == "channel" else "")
                )
        units.append(StructuredUnit(kind, consumers[0], (pair[0],), tuple(norms), n_groups=n, extra_consumers=consumers[1:]))
    return units


def _attention_modules(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    """Modules that look like attention: q/k/v projections (separate, or fused as GPT-2's
    ``c_attn`` or GPT-NeoX's / BLOOM's / Falcon's ``query_key_value``), or torch's own
    ``nn.MultiheadAttention``."""
    schemes = [set(qkv) for qkv, _ in PROJECTION_NAMES] + [{"query", "key", "value"}, {"c_attn"}, {"query_key_value"}, {"qkv_proj"}]
    for name, mod in model.named_modules():
        children = {child for child, _ in mod.named_children()}
        if isinstance(mod, nn.MultiheadAttention) or any(scheme <= children for scheme in schemes):
            yield name, mod


def unsupported_structures(model: nn.Module, units: Iterable[StructuredUnit]) -> list[tuple[str, str]]:
    """Attention modules of ``model`` with no head unit among ``units``, each with the reason.

    Structured pruning only touches what it recognises; this lists what it leaves alone so that
    the report (and a log warning) can say so instead of passing over it silently.
    """
    from ._groups import covered_attention

    covered = covered_attention(units)
    out: list[tuple[str, str]] = []
    for name, mod in _attention_modules(model):
        if name in covered:
            continue
        children = dict(mod.named_children())
        if "q_attn" in children:
            reason = "GPT-2 cross-attention (separate q_attn, fused k/v c_attn): heads are not pruned"
        elif "qkv_proj" in children:
            reason = ("fused q | k | v projection (qkv_proj): heads are pruned with gqa='kv' (a KV head with its query heads) "
                      "when its shapes match head_dim: heads are not pruned")
        elif "c_attn" in children:
            reason = "fused q/k/v projection without matching num_heads / head_dim / split_size: heads are not pruned"
        elif "k_proj" in children and isinstance(children["k_proj"], nn.Linear) and isinstance(children.get("q_proj"), nn.Linear) and (
            children["k_proj"].out_features != children["q_proj"].out_features
        ):
            reason = "grouped-query attention without an integer head_dim or with inconsistent shapes: heads are not pruned"
        elif head_attrs(mod) == (None, None):
            reason = "number of heads / head size not found on the module (read from the config): heads are not pruned"
        else:
            reason = "attention layout not recognised: heads are not pruned"
        out.append((name or type(mod).__name__, reason))
    return out


def discover_units(model: nn.Module, *, pairs: Iterable[Any] | None = None, gqa: str = "kv") -> list[StructuredUnit]:
    """All structured pruning units of ``model`` (in module registration order).

    ``pairs`` declares units explicitly as ``(producer, [batchnorm, ...,] consumer)`` module
    names (the caller vouches that only per-feature operations sit between them). Otherwise:
    Hugging Face BERT-family blocks are recognised by their module structure, and any other
    model is traced with :mod:`torch.fx`. Grouped-query attention and GPT-2's fused attention
    and MLP are found by :mod:`combprune.torch._groups` (``gqa``: ``"kv"`` prunes KV heads with
    their query heads, ``"query"`` query heads evenly inside each KV group). Raises
    :class:`UnsupportedGraphError` when nothing safe is found.
    """
    from ._groups import GQA_MODES, coupled_hf_units

    if gqa not in GQA_MODES:
        raise ValueError(f"gqa: expected one of {GQA_MODES}, got {gqa!r}")
    if pairs is not None:
        units = _declared_units(model, pairs)
    else:
        units = _hf_units(model) + coupled_hf_units(model, gqa)
        if not units:
            units = _fx_units(model)
    if not units:
        raise UnsupportedGraphError(
            f"model: found no prunable producer -> consumer pair in {type(model).__name__} "
            "(supported: Linear -> [activation/BN1d] -> Linear, Conv2d -> [BN2d/activation] -> Conv2d with a single "
            "reader of the features, and Hugging Face attention heads of the BERT family and of models with separate "
            "q_proj/k_proj/v_proj and equal head counts (ViT, CLIP, OPT), plus their FFN neurons); "
            "declare pairs explicitly with pairs=[(producer, consumer), ...]"
        )
    consumers = [c for u in units for c in u.consumers]
    if len(set(consumers)) != len(consumers):
        raise UnsupportedGraphError(f"model: a layer is the consumer of several units ({consumers})")
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(units, key=lambda u: order[u.consumer])


# ---------------------------------------------------------------------------------------------
# X^T X accumulation
# ---------------------------------------------------------------------------------------------
def _conv_padding(layer: nn.Conv2d) -> tuple[int, int]:
    if isinstance(layer.padding, str):
        if layer.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(layer.kernel_size, layer.dilation):
            total = d * (k - 1)
            if total % 2:
                raise UnsupportedGraphError(f"{layer}: padding='same' with an even kernel is asymmetric; not supported")
            pads.append(total // 2)
        return tuple(pads)  # type: ignore[return-value]
    return tuple(layer.padding)  # type: ignore[return-value]


def layer_rows(layer: nn.Module, x: torch.Tensor, *, max_rows: int = 65536) -> Iterable[torch.Tensor]:
    """The consumer's input as rows of X (chunks of at most about ``max_rows`` rows).

    Linear: ``x.reshape(-1, in_features)``. Conv2d: im2col patches (``F.unfold``) of shape
    ``(samples x output positions, C_in * kh * kw)``, channel-major like
    ``weight.reshape(C_out, -1)``; unfolded a few samples at a time to bound memory.
    """
    if isinstance(layer, nn.Linear) or is_hf_conv1d(layer):
        rows = x.reshape(-1, _in_features(layer))
        for start in range(0, rows.shape[0], max_rows):
            yield rows[start : start + max_rows]
        return
    if not _is_plain_conv(layer):
        raise UnsupportedGraphError(f"{type(layer).__name__}: only Linear and Conv2d (groups=1, zero padding) consumers are supported")
    if x.ndim == 3:
        x = x.unsqueeze(0)
    pad = _conv_padding(layer)
    per_sample = None
    start = 0
    while start < x.shape[0]:
        if per_sample is None:
            stop = start + 1
        else:
            stop = start + max(1, max_rows // max(per_sample, 1))
        cols = F.unfold(x[start:stop], layer.kernel_size, dilation=layer.dilation, padding=pad, stride=layer.stride)
        per_sample = cols.shape[2]
        yield cols.transpose(1, 2).reshape(-1, cols.shape[1])
        start = stop


def accumulate_gram(H: torch.Tensor | None, rows: torch.Tensor) -> torch.Tensor:
    """``H + rows^T rows`` in float64 (``H`` None starts from zero)."""
    r = rows.detach().to(torch.float64)
    G = r.T @ r
    return G if H is None else H.add_(G)


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """``W_hat`` (d x m): the layer's weight with input features as rows (Conv: im2col rows)."""
    w = layer.weight.detach()
    if is_hf_conv1d(layer):  # stored (in, out) already
        return w
    return w.reshape(w.shape[0], -1).T if not isinstance(layer, nn.Linear) else w.T


def _set_weight_matrix(layer: nn.Module, W: torch.Tensor) -> None:
    with torch.no_grad():
        value = W if is_hf_conv1d(layer) else W.T.reshape(layer.weight.shape)
        layer.weight.copy_(value.to(layer.weight.dtype))


def group_labels(unit: StructuredUnit, layer: nn.Module) -> np.ndarray:
    """(d,) group of each input row of the consumer: features of one group are consecutive; a
    conv input channel owns ``kh * kw`` consecutive im2col rows."""
    per_feature = int(np.prod(layer.kernel_size)) if isinstance(layer, nn.Conv2d) else 1
    return np.repeat(np.arange(unit.n_groups), unit.features_per_group * per_feature)


def layer_problem(unit: StructuredUnit, layer: nn.Module, H: torch.Tensor, s: int, ridge: float | None = None) -> StructuredMIQP:
    """``StructuredMIQP(H, W_hat, groups, s, ridge)`` of one unit (NumPy float64 data);
    ``ridge=None`` takes OSSCAR's default ``1e-2 * mean(diag(H))``."""
    Hn = H.detach().cpu().double().numpy()
    Hn = 0.5 * (Hn + Hn.T)
    W_hat = weight_matrix(layer).detach().cpu().double().numpy()
    if ridge is None:
        ridge = osscar_default_ridge(Hn)
    return StructuredMIQP(Hn, W_hat, group_labels(unit, layer), s, ridge=ridge)


# ---------------------------------------------------------------------------------------------
# The sequential procedure
# ---------------------------------------------------------------------------------------------
class _StopForward(Exception):
    """Raised by a hook once the layer of interest has seen its input (skips the rest)."""


def _unit_sparsity(sparsity: float | Mapping[str, float], unit: StructuredUnit) -> float:
    if not isinstance(sparsity, Mapping):
        return float(sparsity)
    for key, value in sparsity.items():
        if key == unit.kind or key == unit.consumer or re.fullmatch(key, unit.consumer):
            return float(value)
    return 0.0


def _check_sparsity_keys(sparsity: float | Mapping[str, float], units: list[StructuredUnit], not_pruned: list[tuple[str, str]]) -> None:
    """A key of a ``sparsity`` dict that matches no prunable unit (a kind the model has none of,
    e.g. heads of attention modules left alone, or a consumer name / regex that matches none)
    makes the request impossible: ``ValueError`` naming the key and what was left alone, before
    anything changes."""
    if not isinstance(sparsity, Mapping):
        return
    for key, value in sparsity.items():
        if value == 0 or any(key == u.kind or key == u.consumer or re.fullmatch(key, u.consumer) for u in units):
            continue
        left = "; ".join(f"{name} ({reason})" for name, reason in not_pruned)
        raise ValueError(
            f"sparsity: key {key!r} matches no prunable unit (kinds {sorted({u.kind for u in units})}, consumers such as "
            f"{units[0].consumer!r})" + (f"; not pruned: {left}" if left else "")
        )


def _check_sparsity(sparsity: Any) -> float | dict[str, float]:
    items = sparsity.items() if isinstance(sparsity, Mapping) else [("sparsity", sparsity)]
    for key, value in items:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= float(value) < 1.0) or math.isnan(value):
            raise ValueError(f"sparsity: expected a fraction of groups removed in [0, 1), got {value!r} for {key!r}")
    return dict(sparsity) if isinstance(sparsity, Mapping) else float(sparsity)


def prune_structured(
    model: nn.Module,
    calibration: Any,
    *,
    method: str = "osscar",
    sparsity: float | Mapping[str, float] | None = None,
    targets: Any = None,
    ignore: Any = None,
    n_samples: int | None = 1000,
    solver_options: Mapping[str, Any] | None = None,
    progress: bool = True,
    kinds: Iterable[str] = KINDS,
    pairs: Iterable[Any] | None = None,
    gqa: str = "kv",
    flop_budget: float | None = None,
    ridge: float | str | None = None,
) -> tuple[list[LayerReport], StructuredPlan]:
    """Layer-wise structured pruning of ``model`` in place (OSSCAR's procedure).

    Parameters
    ----------
    model : the network; must sit on one device. Its weights are modified in place: each
        pruned consumer gets the solver's reconstructed weights, with the rows of removed
        groups set to zero (producers are left as they are; see
        :func:`combprune.torch.physical.remove_pruned` to shrink them). Train/eval mode is
        restored; calibration runs in eval mode without gradients.
    calibration : a DataLoader / iterable of batches (inputs, (inputs, targets) or HF dicts;
        targets are ignored), see :mod:`combprune.torch._calibration`.
    method : a registered solver of :class:`~combprune.problems.StructuredMIQP`:
        ``"osscar"``, ``"group-magnitude"``, ``"bruteforce"``, ...
    sparsity : fraction of **groups removed** per unit, in ``[0, 1)``: ``floor(sparsity * G)``
        groups removed. A dict maps a unit kind (``"neuron"``, ``"channel"``, ``"head"``), a
        consumer name or a regex (fullmatch) on it to a fraction; the first matching key wins
        and unmatched units are not pruned. ``None`` (default): 0.5, or 0 with ``flop_budget``.
    targets, ignore : which units to prune, by their **consumer** layer (the layer whose input
        groups are optimised: e.g. ``fc2`` for the neurons of ``fc1``; ``attention.output.dense``
        for heads); same syntax as :func:`combprune.torch._select.select_parameters`.
    n_samples : calibration samples (first dimension of the batches) used; ``None``: all.
    solver_options : ``ridge`` (float, absolute: ``lam`` itself, overriding ``ridge`` below),
        ``time_limit`` (seconds per layer) and ``seed`` are used here; every other key is
        passed to the solver.
    progress : a tqdm bar over units.
    kinds : unit kinds to prune (subset of ``("neuron", "channel", "head")``).
    pairs : declare units explicitly as ``(producer, [batchnorm, ...,] consumer)`` module names
        instead of discovering them (:func:`discover_units`); the consumer may be a tuple of
        layers reading the same features (their objectives are summed).
    gqa : grouped-query attention: ``"kv"`` (a group is a KV head with its query heads) or
        ``"query"`` (query heads, the same number kept in every KV group); see
        :mod:`combprune.torch._groups`.
    flop_budget : fraction of the model's dense FLOPs kept, in ``(0, 1]`` (FLOPs per sample,
        counted as for the unstructured methods, :func:`combprune.torch.model_flops`): every unit
        loses the same fraction f of its groups, the smallest f whose model FLOPs fit (found from
        the counts alone, before any solve; :mod:`combprune.torch._structured_budget`). With
        ``sparsity`` (one fraction) too, the larger fraction is used so both hold. ``ValueError``
        naming ``flop_budget`` before anything changes when the budget cannot be met.
    ridge : the ridge factor c of ``lam = c * mean(diag(X^T X))`` per consumer; ``None``:
        OSSCAR's default ``c = 1e-2``; ``"auto"``: chosen per unit among
        :data:`~combprune.torch._structured_ridge.AUTO_RIDGE_GRID` on the reconstruction error
        of held-back calibration samples (1 in 5; :mod:`combprune.torch._structured_ridge`),
        recorded in ``plan.ridge_auto``.

    Returns
    -------
    (reports, plan): one :class:`~combprune.torch.report.LayerReport` (kind ``"structured"``)
    per pruned unit's consumer weight (``objective`` = the layer's StructuredMIQP objective,
    i.e. ``1/2 ||X (W - W_hat)||_F^2 + ridge/2 ||W - W_hat||_F^2`` on the calibration input
    it saw) or producer (no objective), in module order, counting what physical removal keeps
    (``kept`` = kept output rows x kept input columns x kernel size; FLOPs per calibration
    sample measured by :func:`combprune.torch._flops.layer_flops`, FLOPs = 2 x MACs, effective
    FLOPs = dense x kept / params), and the :class:`StructuredPlan` (kept groups per unit).

    If anything fails, every weight written so far is restored and the exception re-raised:
    the model is left exactly as it was.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    if sparsity is None and flop_budget is None:
        sparsity = 0.5
    setup = StructuredSetup.build(model, method=method, sparsity=sparsity, targets=targets, ignore=ignore,
                                  solver_options=solver_options, kinds=kinds, pairs=pairs, gqa=gqa, flop_budget=flop_budget,
                                  ridge=ridge)
    batches = _calibration.collect(calibration, n_samples, _calibration.model_device(model))
    held: list[Any] = []
    if setup.auto_ridge:
        batches, held = _structured_ridge.split_batches(batches)  # ValueError naming ridge before any change
    setup.prepare(model, batches)
    plan, modules = setup.plan, setup.modules

    from tqdm.auto import tqdm

    originals: dict[str, torch.Tensor] = {}
    was_training = model.training
    solved: dict[str, Any] = {}
    model.eval()
    try:
        for unit in tqdm(setup.units, desc=f"{method} layers", disable=not progress, leave=False):
            t0 = time.perf_counter()
            if setup.n_remove(unit) == 0:
                plan.keep[unit.consumer] = np.ones(unit.n_groups, dtype=bool)
                continue
            layers = [modules[n] for n in unit.consumers]
            grams = _grams_of(model, layers, unit.consumers, batches)
            if setup.auto_ridge:
                Ws, keep, result, plan.ridge_auto[unit.consumer] = _structured_ridge.solve_unit_auto(
                    setup, unit, layers, grams, _grams_of(model, layers, unit.consumers, held))
            else:
                Ws, keep, result = setup.solve_unit(unit, layers, grams)
            for name, layer, W in zip(unit.consumers, layers, Ws):
                originals.setdefault(name, layer.weight.detach().clone())
                _set_weight_matrix(layer, W.to(layer.weight.device))
            plan.keep[unit.consumer] = keep
            solved[unit.consumer] = (result, time.perf_counter() - t0)
    except BaseException:
        with torch.no_grad():
            for name, w in originals.items():
                modules[name].weight.copy_(w)
        raise
    finally:
        model.train(was_training)
    return _reports(plan, modules, solved, setup.dense_flops, method), plan


@dataclass
class StructuredSetup:
    """The validated arguments, units and plan of one structured prune, shared by
    :func:`prune_structured` (whole model) and the sequential engine (block by block,
    :mod:`combprune.torch._sequential_structured`).

    Build with :meth:`build` (validation only; the model is not run), then :meth:`prepare`
    (forward order of the units, the plan, dense FLOPs: one forward pass of the first batch),
    then :meth:`solve_unit` for each unit whose ``H = X^T X`` the caller accumulated.
    """

    method: str
    sparsity: float | dict[str, float]
    units: list[StructuredUnit]
    ridge: float | None
    time_limit: float | None
    seed: int | None
    options: dict[str, Any]
    pairs: Any = None
    modules: dict[str, nn.Module] = field(default_factory=dict)
    not_pruned: list[tuple[str, str]] = field(default_factory=list)
    plan: StructuredPlan | None = None
    dense_flops: dict[str, float] = field(default_factory=dict)
    #: fraction of the model's dense FLOPs kept (``None``: not asked for); :meth:`prepare`
    #: raises ``sparsity`` to the smallest uniform fraction meeting it
    #: (:mod:`combprune.torch._structured_budget`).
    flop_budget: float | None = None
    #: the ridge factor c of ``lam = c * mean(diag H)`` when no absolute ``ridge`` is given
    #: (``None``: OSSCAR's default 1e-2); :meth:`solve_unit`'s ``relative_ridge`` overrides it.
    relative_ridge: float | None = None
    #: ``ridge="auto"``: the factor is chosen per unit on held-back samples
    #: (:func:`combprune.torch._structured_ridge.solve_unit_auto`).
    auto_ridge: bool = False

    @classmethod
    def build(cls, model: nn.Module, *, method: str, sparsity: Any, targets: Any, ignore: Any,
              solver_options: Mapping[str, Any] | None, kinds: Iterable[str], pairs: Iterable[Any] | None,
              gqa: str = "kv", flop_budget: float | None = None, ridge: float | str | None = None) -> "StructuredSetup":
        """Check every argument (errors name it) and discover the units to prune.

        With ``flop_budget`` (fraction of the model's dense FLOPs kept, in ``(0, 1]``),
        ``sparsity`` may be ``None`` (0) and must otherwise be one fraction: both are respected,
        the fraction of groups removed per unit is the larger of ``sparsity`` and the smallest
        one meeting the FLOP budget (:meth:`prepare`). ``ridge`` is the relative factor (or
        ``"auto"``); an absolute ``solver_options["ridge"]`` overrides a factor and cannot be
        combined with ``"auto"``."""
        import combprune

        if flop_budget is not None:
            if isinstance(flop_budget, bool) or not isinstance(flop_budget, (int, float)) or not 0.0 < float(flop_budget) <= 1.0:
                raise ValueError(f"flop_budget: expected a fraction of the model's FLOPs kept in (0, 1], got {flop_budget!r}")
            if isinstance(sparsity, Mapping):
                raise ValueError("flop_budget: with a FLOP budget, sparsity must be one fraction (or None), not a dict per kind / layer")
            sparsity = 0.0 if sparsity is None else sparsity
        sparsity = _check_sparsity(sparsity)
        kinds = tuple(kinds)
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise ValueError(f"kinds: expected a non-empty subset of {KINDS}, got {kinds!r}")
        options = dict(solver_options or {})
        absolute = options.pop("ridge", None)
        if isinstance(absolute, str):
            raise ValueError(f"solver_options['ridge']: expected a non-negative number (the absolute lam), got {absolute!r}; "
                             "pass ridge='auto' as an argument of its own to choose it")
        if absolute is not None:
            check_ridge(absolute, "solver_options['ridge']")
        ridge = None if ridge is None else check_ridge(ridge)
        if ridge == "auto" and absolute is not None:
            raise ValueError("ridge: 'auto' chooses the ridge itself; remove solver_options['ridge'] (an absolute ridge)")
        time_limit = options.pop("time_limit", None)
        seed = options.pop("seed", None)
        spec = combprune.get_solver(method)
        if not any(issubclass(StructuredMIQP, cls_) for cls_ in spec.problems):
            raise ValueError(f"method: solver {method!r} does not solve StructuredMIQP")
        modules = dict(model.named_modules())
        for name, mod in modules.items():
            if hasattr(mod, "weight_orig"):
                raise ValueError(f"model: {name!r} carries a torch.nn.utils.prune mask; call prune.remove on it first")
        found = discover_units(model, pairs=pairs, gqa=gqa)
        not_pruned = unsupported_structures(model, found) if pairs is None else []
        selected = {p.module_name for p in select_parameters(model, targets, ignore, types=(nn.Linear, nn.Conv2d))}
        units = [u for u in found if u.kind in kinds and all(c in selected for c in u.consumers)]
        if not units:
            raise ValueError(f"targets: no structured unit of kinds {kinds} has its consumer layer selected by targets={targets!r}, ignore={ignore!r}")
        _check_sparsity_keys(sparsity, units, not_pruned)
        return cls(method, sparsity, units, None if absolute is None else float(absolute), time_limit, seed, options, pairs=pairs,
                   modules=modules, not_pruned=not_pruned, flop_budget=None if flop_budget is None else float(flop_budget),
                   relative_ridge=ridge if isinstance(ridge, float) else None, auto_ridge=ridge == "auto")

    def prepare(self, model: nn.Module, batches: list[Any]) -> None:
        """Forward order of the units, the plan (with unsupported structures), the tied-weight
        check and the dense FLOPs of every touched layer, from one pass of ``batches[0]``."""
        modules = self.modules
        self.units = _forward_order(model, self.units, modules, batches[0])
        plan = StructuredPlan(self.units, example=batches[0].slice(0, min(8, batches[0].size)).inputs)
        plan.not_pruned = list(self.not_pruned)
        for name, reason in plan.not_pruned:
            logger.warning("%s: not pruned (%s)", name, reason)
        touched = sorted({n for u in self.units for n in (*u.consumers, *u.producers, *u.norms) if _has_matrix(modules[n])},
                         key=list(modules).index)
        owners: dict[int, list[str]] = {}
        for name, mod in model.named_modules(remove_duplicate=False):
            if isinstance(getattr(mod, "weight", None), nn.Parameter):
                owners.setdefault(id(mod.weight), []).append(name)
        for name in touched:
            tied = owners.get(id(modules[name].weight), [])
            if len(tied) > 1:  # masking one copy would untie it (or prune the other layer unseen)
                raise ValueError(f"model: {' and '.join(map(repr, tied))} share one weight Parameter (tied weights); "
                                 f"untie them or leave {name!r} out with ignore=")
        params = [PrunableParam(n, "weight", modules[n]) for n in touched]
        self.dense_flops = dict(zip(touched, layer_flops(model, params, batches[0])))
        if self.flop_budget is not None:
            from ._structured_budget import uniform_fraction

            total = model_flops(model, batches[0])
            fraction, planned = uniform_fraction(self, total, self.flop_budget)  # ValueError before any change
            logger.info("flop_budget %g: %.6g of %.6g FLOPs at a uniform fraction %.4f of groups removed", self.flop_budget, planned, total, fraction)
            self.sparsity = max(float(self.sparsity), fraction)
            plan.budget = {"flop_budget": self.flop_budget, "model_flops": total, "fraction": self.sparsity}
        self.plan = plan

    def n_remove(self, unit: StructuredUnit, fraction: float | None = None) -> int:
        """Groups removed from ``unit``: ``floor(sparsity * G)`` (``fraction`` instead of the
        setup's sparsity when given), rounded down to a multiple of ``unit.even_blocks`` when
        every block must keep the same number (GQA query heads)."""
        blocks = max(unit.even_blocks, 1)
        frac = _unit_sparsity(self.sparsity, unit) if fraction is None else fraction
        return blocks * int(math.floor(frac * (unit.n_groups // blocks) + 1e-9))

    def solve_unit(self, unit: StructuredUnit, layers: Sequence[nn.Module], grams: Sequence[torch.Tensor],
                   relative_ridge: float | None = None) -> tuple[list[torch.Tensor], np.ndarray, Any]:
        """Solve the unit's selection from each consumer's ``H``: ``(Ws, keep, result)`` with one
        (d x m) float64 reconstructed weight per consumer (removed rows zero) and ``keep`` the
        (G,) groups kept. Several consumers are stacked into one :class:`StructuredMIQP` whose
        objective is the sum of theirs (:mod:`combprune.torch._coupled`). Each consumer's ridge is
        the setup's (absolute), else ``c * mean(diag H)`` of that consumer's ``H`` with ``c`` =
        ``relative_ridge`` or the setup's factor, else OSSCAR's default. Raises ``RuntimeError`` when the solver returns no point or an
        infeasible one."""
        import combprune

        s = unit.n_groups - self.n_remove(unit)
        factor = self.relative_ridge if relative_ridge is None else relative_ridge

        def ridge_of(H: torch.Tensor) -> float | None:
            if self.ridge is not None or factor is None:
                return self.ridge
            return factor * float(torch.diagonal(H).mean())

        parts = [layer_problem(unit, layer, H, s, ridge_of(H)) for layer, H in zip(layers, grams)]
        problem = _coupled.stack_problems(parts)  # one consumer: parts[0] itself

        def solve(p: StructuredMIQP) -> Any:
            res = combprune.solve(p, self.method, time_limit=self.time_limit, seed=self.seed, **self.options)
            if res.x is None:
                raise RuntimeError(f"{unit.consumer}: solver {self.method!r} returned no solution (status {res.status.value})")
            violations = p.check(res.x)
            if violations:
                raise RuntimeError(f"{unit.consumer}: solver {self.method!r} returned an infeasible point: {violations}")
            return res

        if unit.even_blocks:
            result, keep = _coupled.solve_even_blocks(problem, unit.even_blocks, s // unit.even_blocks, solve)
        else:
            result = solve(problem)
            keep = problem.group_support(result.x)  # a selected group with all-zero weights counts as removed
        if int(keep.sum()) < s:
            logger.debug("%s: solver kept %d < s = %d nonzero groups", unit.consumer, int(keep.sum()), s)
        Ws = [torch.as_tensor(np.asarray(W, dtype=np.float64)) for W in _coupled.split_solution(result.x, parts)]
        return Ws, keep, result


def kept_weights(plan: StructuredPlan, modules: Mapping[str, nn.Module]) -> list[tuple[str, int, int]]:
    """``(layer name, weights, weights kept)`` for every weight matrix touched by a pruned unit of
    ``plan``, in module order, counting what physical removal keeps: ``kept = kept output
    features x kept input features x kernel`` (a depthwise / grouped conv: kept output channels
    x its weights per output channel). A layer's FLOPs scale the same way:
    ``effective = dense x kept / weights`` (used by the reports and by ``flop_budget``)."""
    out_keep, in_keep = plan.feature_keep(modules)
    names = [n for n in set(out_keep) | set(in_keep) if _has_matrix(modules[n])]
    rows = []
    for name in sorted(names, key=list(modules).index):
        layer = modules[name]
        n_out, n_in = _out_features(layer), _in_features(layer)
        k_out = int(out_keep[name].sum()) if name in out_keep else n_out
        k_in = int(in_keep[name].sum()) if name in in_keep else n_in
        params = layer.weight.numel()
        if getattr(layer, "groups", 1) > 1:  # depthwise: each output channel reads its own input channel
            kept = params // n_out * k_out
        else:
            kept = params // (n_out * n_in) * k_out * k_in
        rows.append((name, params, kept))
    return rows


def _reports(plan: StructuredPlan, modules: Mapping[str, nn.Module], solved: Mapping[str, Any], dense_flops: Mapping[str, float], method: str) -> list[LayerReport]:
    """One report per weight touched (consumer and/or producer of pruned units), counting what
    physical removal keeps: ``kept = kept output features x kept input features x kernel``."""
    reports = []
    for name, params, kept in kept_weights(plan, modules):
        dense = dense_flops[name]
        unit = next(u for u in plan.units if name in (*u.consumers, *u.producers, *u.norms))
        result, elapsed = solved.get(name, (None, 0.0))
        reports.append(LayerReport(
            name=f"{name}.weight", kind="structured", params=params, kept=kept, sparsity=1.0 - kept / params,
            dense_flops=dense, effective_flops=dense * kept / params, solver=method,
            objective=None if result is None else result.objective, bound=None if result is None else result.bound,
            gap=None if result is None else result.gap, time=elapsed, groups=unit.n_groups,
            groups_kept=int(plan.keep[unit.consumer].sum()),
        ))
    return reports


def _forward_order(model: nn.Module, units: list[StructuredUnit], modules: Mapping[str, nn.Module], batch: Any) -> list[StructuredUnit]:
    """``units`` sorted by the first call of their consumer in one forward pass of ``batch``.

    Raises :class:`UnsupportedGraphError` when a consumer is never called or called more than
    once per forward pass (a shared layer has no single input X to reconstruct).
    """
    calls: dict[str, list[int]] = {c: [] for u in units for c in u.consumers}
    counter = [0]
    handles = []
    for name in calls:

        def hook(_mod: nn.Module, _args: Any, name: str = name) -> None:
            counter[0] += 1
            calls[name].append(counter[0])

        handles.append(modules[name].register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _calibration.forward(model, batch.inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    for name, seen in calls.items():
        if len(seen) != 1:
            raise UnsupportedGraphError(
                f"{name}: called {len(seen)} times in one forward pass; structured pruning needs each consumer layer called exactly once"
            )
    return sorted(units, key=lambda u: min(calls[c][0] for c in u.consumers))


def _grams_of(model: nn.Module, layers: Sequence[nn.Module], names: Sequence[str], batches: list[Any]) -> list[torch.Tensor]:
    """Run the calibration batches through ``model`` until every one of ``layers`` (called
    ``names``); their inputs' ``X^T X``, checked finite."""
    grams = layer_grams(layers, [lambda b=b: _calibration.forward(model, b.inputs) for b in batches])
    check_finite_grams(grams, names)
    return grams


def layer_grams(layers: Sequence[nn.Module], runs: Iterable[Any]) -> list[torch.Tensor]:
    """Call each of ``runs`` (zero-argument callables running part of a model) until every one
    of ``layers`` has been called, accumulating ``X_i^T X_i`` (float64) of each one's input; the
    rest of each run is skipped.

    Returns one (d_i, d_i) float64 matrix per layer. The whole-model path runs the model on each
    calibration batch; the sequential engine runs one block on its captured inputs. The
    consumers of a coupled unit (several layers reading the same groups) share one pass.
    """
    grams: list[Any] = [None] * len(layers)
    seen: set[int] = set()

    def hook_for(i: int, layer: nn.Module) -> Any:
        def hook(_mod: nn.Module, args: tuple[Any, ...]) -> None:
            for rows in layer_rows(layer, args[0]):
                grams[i] = accumulate_gram(grams[i], rows)
            seen.add(i)
            if len(seen) == len(layers):
                raise _StopForward
        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i, layer)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for run in runs:
                seen.clear()
                try:
                    run()
                except _StopForward:
                    continue
                missing = ", ".join(type(layers[i]).__name__ for i in range(len(layers)) if i not in seen)
                raise UnsupportedGraphError(f"{missing} layer was not called during the forward pass; cannot calibrate it")
    finally:
        for handle in handles:
            handle.remove()
    return grams


def check_finite_grams(grams: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    """``ValueError`` naming the calibration data when a layer's ``X^T X`` holds NaN or inf.
    Called on the statistics every process shares (after the all-reduce), so that all raise."""
    for H, name in zip(grams, names):
        if not bool(torch.isfinite(H).all()):
            raise ValueError(
                f"calibration: the inputs of layer {name} are not finite (NaN or inf); "
                "check the calibration inputs, and the model's weights and activations, for NaN or inf"
            )
