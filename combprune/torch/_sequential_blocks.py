"""Block discovery, block-0 input capture and per-layer statistics for the sequential engine.

See ``docs/large_models.md``. Blocks are the repeated modules of a model (an ``nn.ModuleList`` of
modules of one class); the known Hugging Face paths are tried first, then the only such list
holding linear layers anywhere in the model (outermost lists only).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch
from torch import nn

from ._calibration import Batch, forward

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_BLOCK_PATHS", "find_blocks", "capture_block_inputs", "linear_layers", "weight_matrix",
           "set_weight_matrix", "BlockInput", "run_block", "GramHooks"]

#: Dotted paths of the repeated blocks in Hugging Face models, tried in this order.
KNOWN_BLOCK_PATHS = ("model.layers", "model.decoder.layers", "decoder.layers", "encoder.layer", "transformer.h",
                     "bert.encoder.layer", "roberta.encoder.layer", "gpt_neox.layers", "layers", "h")


def _get_path(model: nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_block_list(obj: Any) -> bool:
    return isinstance(obj, nn.ModuleList) and len(obj) > 0 and len({type(b) for b in obj}) == 1


def find_blocks(model: nn.Module, blocks: Any = None) -> list[nn.Module]:
    """The repeated blocks of ``model`` (``blocks``: a dotted path, an ``nn.ModuleList`` or a list of modules)."""
    hint = ("pass blocks= with the repeated blocks: a dotted path such as blocks='encoder.layer' or "
            "blocks='model.layers', or the nn.ModuleList itself (blocks=model.encoder.layer)")
    if blocks is not None:
        if isinstance(blocks, str):
            found = _get_path(model, blocks)
            if not isinstance(found, (nn.ModuleList, nn.Sequential)) or len(found) == 0:
                raise ValueError(f"blocks: {blocks!r} is not a non-empty nn.ModuleList of {type(model).__name__}; {hint}")
            blocks = list(found)
        elif isinstance(blocks, (nn.ModuleList, nn.Sequential, list, tuple)):
            blocks = list(blocks)
        else:
            raise TypeError(f"blocks: expected a dotted path, an nn.ModuleList or a list of modules, got {type(blocks).__name__}")
        inside = {id(m) for m in model.modules()}
        if not blocks or not all(isinstance(b, nn.Module) and id(b) in inside for b in blocks):
            raise ValueError(f"blocks: every block must be a submodule of the model; {hint}")
        return blocks
    for path in KNOWN_BLOCK_PATHS:
        found = _get_path(model, path)
        if _is_block_list(found):
            return list(found)
    lists = _outermost_block_lists(model)
    if len(lists) == 1:
        path, found = lists[0]
        logger.info("blocks: using %s (%d %s blocks), the only list of repeated blocks with linear layers", path, len(found), type(found[0]).__name__)
        return list(found)
    several = f"; found several lists of repeated blocks ({', '.join(path for path, _ in lists)}): choose one" if lists else ""
    raise ValueError(f"blocks: no repeated blocks found in {type(model).__name__} (tried {', '.join(KNOWN_BLOCK_PATHS)}){several}; {hint}")


def _outermost_block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` of two or more blocks of one type holding linear layers, except
    those inside another such list (e.g. the experts inside each block), as (path, list)."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if not (_is_block_list(mod) and len(mod) >= 2 and linear_layers(mod[0])):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # named_modules walks parents first: an outer list is already in
        found.append((name, mod))
    return found


class _Captured(Exception):
    """Raised by the block-0 hook to stop the forward pass once its inputs are stored."""


class BlockInput:
    """The positional and keyword arguments of one calibration batch at a block's entrance."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def with_hidden(self, hidden: torch.Tensor) -> "BlockInput":
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden})

    def to(self, device: torch.device) -> "BlockInput":
        def move(v: Any) -> Any:
            return v.to(device) if isinstance(v, torch.Tensor) else v
        return BlockInput(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()})


def capture_block_inputs(model: nn.Module, first: nn.Module, batches: Sequence[Batch]) -> list[BlockInput]:
    """Run each batch up to ``first`` (a forward pre-hook raises once the inputs are stored)."""
    store: list[BlockInput] = []

    def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        kwargs = dict(kwargs)
        if "past_key_values" in kwargs:  # no KV cache across calibration batches
            kwargs["past_key_values"] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        store.append(BlockInput(tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs))
        raise _Captured

    handle = first.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for i, batch in enumerate(batches):
            try:
                forward(model, batch.inputs)
            except _Captured:
                continue
            except Exception as exc:
                raise ValueError(f"calibration: the model failed on batch {i} before its first block "
                                 f"({type(exc).__name__}: {exc}); check the batches' shapes (sequence length)") from exc
            raise ValueError("blocks: the model's forward pass never reached the first block; check blocks=")
    finally:
        handle.remove()
    return store


def run_block(block: nn.Module, inp: BlockInput) -> torch.Tensor:
    """The block's output hidden states (first element when the block returns a tuple)."""
    out = block(*inp.args, **inp.kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def _conv1d_type() -> tuple[type, ...]:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:
        return ()
    return (Conv1D,)


def linear_layers(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """``nn.Linear`` and Hugging Face ``Conv1D`` layers of ``block``, in module order."""
    types = (nn.Linear, *_conv1d_type())
    return [(name, mod) for name, mod in block.named_modules() if isinstance(mod, types)]


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The (d_in, d_out) matrix W of the formulation: ``weight.T`` for Linear, ``weight`` for Conv1D."""
    return layer.weight.detach().T if isinstance(layer, nn.Linear) else layer.weight.detach()


def set_weight_matrix(layer: nn.Module, W: torch.Tensor) -> None:
    """Write a (d_in, d_out) matrix back in the layer's layout, dtype and device."""
    target = W.T if isinstance(layer, nn.Linear) else W
    with torch.no_grad():
        layer.weight.copy_(target.to(dtype=layer.weight.dtype, device=layer.weight.device))


class GramHooks:
    """Forward pre-hooks accumulating ``H = sum x^T x`` (float64) of every layer's input, and
    forward hooks accumulating ``out_sq = ||X W_hat||_F^2 = sum ||y - bias||^2`` (float64) of its
    dense output (the denominator of the relative reconstruction error, at O(N m) cost)."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module]]) -> None:
        self.H: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.out_sq: dict[str, torch.Tensor] = {}
        self._handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in layers]
        self._handles += [layer.register_forward_hook(self._out_hook(name)) for name, layer in layers]

    def _out_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            y = out.detach().to(torch.float64)
            if getattr(module, "bias", None) is not None:
                y = y - module.bias.detach().to(torch.float64)
            total = y.square().sum()
            self.out_sq[name] = total if name not in self.out_sq else self.out_sq[name] + total
        return hook

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float64)
            if name not in self.H:
                self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
                self.rows[name] = 0
            self.H[name].addmm_(x.T, x)
            self.rows[name] += int(x.shape[0])
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
