"""Coupled groups of Hugging Face attention and MLP blocks found from module structure.

No tracing: a block is recognised by its child modules and the attributes the Hugging Face
module itself uses in its forward pass (``head_dim``, ``num_heads``, ``split_size``,
``num_key_value_groups``); every shape is checked against them, and physical removal checks
the model's outputs anyway (:func:`combprune.torch.physical.remove_pruned`).

Grouped-query attention (LLaMA, Mistral, Qwen2, ...: ``q_proj``/``k_proj``/``v_proj``/``o_proj``
with ``head_dim`` and fewer key/value heads than query heads; query head ``h`` reads KV head
``h // r`` with ``r = n_q / n_kv``), two group layouts (``gqa=``):

``"kv"``     a group is one KV head **with its r query heads**: ``r * head_dim`` consecutive
             input features of ``o_proj`` and output rows of ``q_proj``, ``head_dim`` output
             rows of ``k_proj`` and ``v_proj``. ``r`` is unchanged, so is the module.
``"query"``  a group is one query head (``head_dim`` features of ``o_proj`` / rows of
             ``q_proj``), and every KV group keeps the **same number** of query heads (the
             module's ``num_key_value_groups`` becomes that number; keys and values stay).

GPT-2 (``c_attn`` fused q | k | v, a ``Conv1D`` storing its weight as (in, out)): a head ``h`` is
three slices of ``c_attn``'s output features, ``[h d, (h+1) d)`` in each of the q, k and v
thirds, and ``head_dim`` input features of ``c_proj``; the module's ``num_heads`` and
``split_size`` follow. GPT-2's MLP ``c_fc -> act -> c_proj`` (Conv1D) is a neuron unit.

GPT-NeoX, BLOOM and Falcon without multi-query (``query_key_value`` fused per head, a Linear of
``3 E`` outputs, and ``dense``): the fused output is viewed as ``(heads, 3, head_dim)``, so a head
``h`` is the ``3 head_dim`` consecutive output rows ``[3 h d, 3 (h+1) d)`` of
``query_key_value`` (its q, k and v) and ``head_dim`` input features of ``dense``. Multi-query
Falcon (one key and one value for every head, ``E + 2 head_dim`` outputs) is not recognised.

Falcon's grouped layout (``new_decoder_architecture``: Falcon-40B/180B; ``num_kv_heads`` KV
heads, ``query_key_value`` viewed as ``(n_kv, r + 2, head_dim)``, KV group ``j`` being its r
query heads, then its key, then its value): a group is one KV group, the ``(r + 2) head_dim``
consecutive rows of ``query_key_value`` and ``r head_dim`` input features of ``dense``; physical
removal sets the module's ``num_heads`` and ``num_kv_heads`` (``r`` unchanged).

Phi-3 (``qkv_proj`` fused in segments q | k | v with grouped-query attention, and ``o_proj``):
with ``gqa="kv"`` a group is one KV head with its r query heads, ``r * head_dim`` rows of the q
segment and ``head_dim`` rows of each of the k and v segments (layout ``(r hd, hd, hd)``) and
``r * head_dim`` input features of ``o_proj``. The module splits the fused output with the
config's head count, shared by every layer, so only masks apply (physical removal fails its
output check and is undone); ``gqa="query"`` is not offered (keys and values would stay whole
inside a fused producer). Its MLP ``down_proj(up * act(gate))`` with ``gate_up_proj`` fused
gate | up is a neuron unit of layout ``(1, 1)``.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ._select import is_hf_conv1d
from .structured import StructuredUnit, head_attrs

__all__ = ["GQA_MODES", "coupled_hf_units", "gqa_unit", "gpt2_units", "fused_qkv_unit", "grouped_fused_qkv_unit", "fused_gqa_unit",
           "fused_gate_up_unit",
           "covered_attention"]

GQA_MODES: tuple[str, ...] = ("kv", "query")


def _int_attr(mod: nn.Module, name: str) -> int | None:
    value = getattr(mod, name, None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def gqa_unit(name: str, mod: nn.Module, gqa: str = "kv") -> StructuredUnit | None:
    """The head unit of a LLaMA-style attention module (``None`` when ``mod`` is not one).

    Recognised: Linear ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, an integer ``head_dim``,
    no integer ``num_heads`` / ``num_attention_heads`` (those are the projection-style modules
    of :func:`combprune.torch.structured._hf_units`), ``n_q = q_proj.out / head_dim`` query heads,
    ``n_kv = k_proj.out / head_dim`` KV heads with ``n_kv | n_q``, ``o_proj.in = q_proj.out``,
    and ``num_key_value_groups == n_q / n_kv`` when the module has it.
    """
    if gqa not in GQA_MODES:
        raise ValueError(f"gqa: expected one of {GQA_MODES}, got {gqa!r}")
    children = dict(mod.named_children())
    if not all(isinstance(children.get(a), nn.Linear) for a in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return None
    hd = _int_attr(mod, "head_dim")
    if hd is None or hd <= 0 or _int_attr(mod, "num_heads") is not None or _int_attr(mod, "num_attention_heads") is not None:
        return None
    q, k, v, o = (children[a] for a in ("q_proj", "k_proj", "v_proj", "o_proj"))
    if q.out_features % hd or k.out_features % hd or k.out_features != v.out_features or o.in_features != q.out_features:
        return None
    n_q, n_kv = q.out_features // hd, k.out_features // hd
    if n_kv == 0 or n_q % n_kv:
        return None
    rep = n_q // n_kv
    if _int_attr(mod, "num_key_value_groups") not in (None, rep):
        return None
    p = f"{name}." if name else ""
    if gqa == "kv":
        return StructuredUnit(
            "head", f"{p}o_proj", (f"{p}q_proj", f"{p}k_proj", f"{p}v_proj"), n_groups=n_kv, features_per_group=rep * hd,
            layout=((f"{p}k_proj", (hd,)), (f"{p}v_proj", (hd,))),
        )
    if _int_attr(mod, "num_key_value_groups") is None:
        return None  # the kept-heads-per-KV-head count has nowhere to go
    return StructuredUnit(
        "head", f"{p}o_proj", (f"{p}q_proj",), attention=name, n_groups=n_q, features_per_group=hd,
        attention_attrs=(("num_key_value_groups", 1),), even_blocks=n_kv,
    )


def gpt2_units(name: str, mod: nn.Module) -> list[StructuredUnit]:
    """GPT-2 attention heads (fused ``c_attn``) and MLP neurons (``c_fc -> act -> c_proj``)."""
    children = dict(mod.named_children())
    p = f"{name}." if name else ""
    c_attn, c_proj, c_fc = children.get("c_attn"), children.get("c_proj"), children.get("c_fc")
    if c_proj is None or not is_hf_conv1d(c_proj):
        return []
    if c_attn is not None and is_hf_conv1d(c_attn) and "q_attn" not in children:
        heads, hd, split = (_int_attr(mod, a) for a in ("num_heads", "head_dim", "split_size"))
        if heads and hd and split == heads * hd and c_attn.weight.shape[1] == 3 * split and c_proj.weight.shape[0] == split:
            return [StructuredUnit(
                "head", f"{p}c_proj", (f"{p}c_attn",), attention=name, n_groups=heads, features_per_group=hd,
                layout=((f"{p}c_attn", (hd, hd, hd)),), attention_attrs=(("num_heads", 1), ("split_size", hd)),
            )]
        return []
    if c_fc is not None and is_hf_conv1d(c_fc) and hasattr(mod, "act") and c_fc.weight.shape[1] == c_proj.weight.shape[0]:
        return [StructuredUnit("neuron", f"{p}c_proj", (f"{p}c_fc",), n_groups=int(c_fc.weight.shape[1]))]
    return []


def fused_qkv_unit(name: str, mod: nn.Module) -> StructuredUnit | None:
    """The heads of an attention with ``query_key_value`` fused per head (module docstring)."""
    qkv, dense = getattr(mod, "query_key_value", None), getattr(mod, "dense", None)
    hd = head_attrs(mod)[1]
    if not (isinstance(qkv, nn.Linear) and isinstance(dense, nn.Linear) and hd):
        return None
    width = dense.in_features
    if width % hd or qkv.out_features != 3 * width or qkv.in_features != dense.out_features:
        return None
    p = f"{name}." if name else ""
    return StructuredUnit("head", f"{p}dense", (f"{p}query_key_value",), attention=name, n_groups=width // hd,
                          features_per_group=hd, layout=((f"{p}query_key_value", (3 * hd,)),))


def grouped_fused_qkv_unit(name: str, mod: nn.Module, gqa: str = "kv") -> StructuredUnit | None:
    """The KV-group unit of Falcon's grouped ``query_key_value`` (``new_decoder_architecture``;
    module docstring); ``None`` when ``mod`` is not one or ``gqa`` is not ``"kv"``."""
    qkv, dense = getattr(mod, "query_key_value", None), getattr(mod, "dense", None)
    heads, hd, n_kv = _int_attr(mod, "num_heads"), _int_attr(mod, "head_dim"), _int_attr(mod, "num_kv_heads")
    if gqa != "kv" or getattr(mod, "new_decoder_architecture", False) is not True or not (heads and hd and n_kv):
        return None
    if not (isinstance(qkv, nn.Linear) and isinstance(dense, nn.Linear)) or heads % n_kv or dense.in_features != heads * hd:
        return None
    rep = heads // n_kv
    if qkv.out_features != n_kv * (rep + 2) * hd or qkv.in_features != dense.out_features:
        return None
    p = f"{name}." if name else ""
    return StructuredUnit("head", f"{p}dense", (f"{p}query_key_value",), attention=name, n_groups=n_kv, features_per_group=rep * hd,
                          layout=((f"{p}query_key_value", ((rep + 2) * hd,)),), attention_attrs=(("num_heads", rep), ("num_kv_heads", 1)))


def fused_gqa_unit(name: str, mod: nn.Module, gqa: str = "kv") -> StructuredUnit | None:
    """The KV-head unit of a Phi-3 style attention, ``qkv_proj`` fused in segments (module
    docstring); ``None`` when ``mod`` is not one or ``gqa`` is not ``"kv"``."""
    qkv, o = getattr(mod, "qkv_proj", None), getattr(mod, "o_proj", None)
    hd = _int_attr(mod, "head_dim")
    if gqa != "kv" or not (isinstance(qkv, nn.Linear) and isinstance(o, nn.Linear) and hd and hd > 0):
        return None
    if o.in_features % hd or (qkv.out_features - o.in_features) % (2 * hd) or qkv.in_features != o.out_features:
        return None
    n_q, n_kv = o.in_features // hd, (qkv.out_features - o.in_features) // (2 * hd)
    if n_kv == 0 or n_q % n_kv or _int_attr(mod, "num_key_value_heads") not in (None, n_kv):
        return None
    rep = n_q // n_kv
    if _int_attr(mod, "num_key_value_groups") not in (None, rep):
        return None
    p = f"{name}." if name else ""
    return StructuredUnit("head", f"{p}o_proj", (f"{p}qkv_proj",), n_groups=n_kv, features_per_group=rep * hd,
                          layout=((f"{p}qkv_proj", (rep * hd, hd, hd)),))


def fused_gate_up_unit(name: str, mod: nn.Module) -> StructuredUnit | None:
    """The neurons of a gated MLP with ``gate_up_proj`` fused gate | up (Phi-3) feeding
    ``down_proj``; ``None`` when ``mod`` is not one."""
    fused, down = getattr(mod, "gate_up_proj", None), getattr(mod, "down_proj", None)
    if not (isinstance(fused, nn.Linear) and isinstance(down, nn.Linear) and fused.out_features == 2 * down.in_features):
        return None
    if fused.in_features != down.out_features:
        return None
    p = f"{name}." if name else ""
    return StructuredUnit("neuron", f"{p}down_proj", (f"{p}gate_up_proj",), n_groups=down.in_features,
                          layout=((f"{p}gate_up_proj", (1, 1)),))


def coupled_hf_units(model: nn.Module, gqa: str = "kv") -> list[StructuredUnit]:
    """GQA head units (layout ``gqa``), GPT-2 head and MLP units, fused-per-head and Falcon's
    grouped ``query_key_value`` head units and Phi-3's fused ``qkv_proj`` and ``gate_up_proj``
    units of ``model``."""
    if gqa not in GQA_MODES:
        raise ValueError(f"gqa: expected one of {GQA_MODES}, got {gqa!r}")
    units: list[StructuredUnit] = []
    for name, mod in model.named_modules():
        unit = gqa_unit(name, mod, gqa)
        if unit is not None:
            units.append(unit)
        units.extend(gpt2_units(name, mod))
        found = (fused_qkv_unit(name, mod), grouped_fused_qkv_unit(name, mod, gqa), fused_gqa_unit(name, mod, gqa), fused_gate_up_unit(name, mod))
        units.extend(u for u in found if u is not None)
    return units


def covered_attention(units: Iterable[StructuredUnit]) -> set[str]:
    """Names of the attention modules whose heads some unit of ``units`` prunes (the parent of
    its producers, and its ``attention`` module and that module's parent)."""
    out: set[str] = set()
    for u in units:
        if u.kind != "head":
            continue
        out |= {p.rsplit(".", 1)[0] if "." in p else "" for p in u.producers}
        if u.attention is not None:
            out |= {u.attention, u.attention.rsplit(".", 1)[0]}
    return out
