"""torch's own ``nn.MultiheadAttention`` as seen by the adapter: its inputs, its in-projection
weights, the input of its ``out_proj`` (which the functional attention reads without calling
the module), and a switch for torch's fused "fast path".

See ``docs/torch_adapter.md`` (one-shot methods, FLOPs) and ``docs/large_models.md`` (layer-wise
reconstruction).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["attention_inputs", "in_projections", "out_projection_input", "fused_attention_off"]


def attention_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """``[query, key, value]`` of one ``nn.MultiheadAttention`` call."""
    named = dict(zip(("query", "key", "value"), args))
    return [named.get(k, kwargs.get(k)) for k in ("query", "key", "value")]


def in_projections(mha: nn.MultiheadAttention) -> list[tuple[str, str, slice | None]]:
    """The query, key and value projections as ``(label, parameter name, rows)``: row blocks of
    the fused ``in_proj_weight`` (``(3 E, E)``), or the separate ``q_/k_/v_proj_weight`` when
    the key or value size differs from ``E`` (``rows`` is then ``None``)."""
    if mha.in_proj_weight is not None:
        e = mha.embed_dim
        return [(label, "in_proj_weight", slice(i * e, (i + 1) * e)) for i, label in enumerate("qkv")]
    return [(label, f"{label}_proj_weight", None) for label in "qkv"]


class _Forward(nn.Module):
    """Calls ``mha.forward`` directly: no hook of ``mha`` sees the extra run."""

    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.mha.forward(*args, **kwargs)


def out_projection_input(mha: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """The heads' concatenated outputs that ``mha.out_proj`` maps, for one call: the same
    attention run again with ``out_proj`` replaced by the identity (``torch.func.functional_call``:
    the module's own parameters are untouched, and its hooks do not fire)."""
    weight = mha.out_proj.weight
    swapped = {"mha.out_proj.weight": torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)}
    if mha.out_proj.bias is not None:
        swapped["mha.out_proj.bias"] = torch.zeros_like(mha.out_proj.bias)
    kwargs = dict(kwargs)
    if len(args) <= 4:  # need_weights is the 5th positional argument
        kwargs["need_weights"] = False
    return torch.func.functional_call(_Forward(mha), swapped, args, kwargs)[0]


@contextlib.contextmanager
def fused_attention_off() -> Iterator[None]:
    """Switch off torch's fused fast path of ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` (taken in eval mode without gradients): one native kernel that
    calls no submodule, so hooks and the FLOP counter would not see the layers. The outputs are
    the same."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
