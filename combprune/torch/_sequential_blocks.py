"""Block discovery, block input capture and per-layer statistics for the sequential engine.

See ``docs/large_models.md``. Blocks are the repeated modules of a model (an ``nn.ModuleList`` of
modules of one class), in one or more stacks (an encoder and a decoder): the known Hugging Face
paths and every outermost such list holding linear layers.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ._attention import attention_inputs, in_projections, out_projection_input
from ._calibration import Batch, forward

logger = logging.getLogger(__name__)

__all__ = ["KNOWN_BLOCK_PATHS", "find_stacks", "find_blocks", "forward_order", "input_sources",
           "stack_inputs", "linear_layers", "Slot", "weight_slots", "BlockInput", "run_block", "GramHooks"]

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


def _given_blocks(model: nn.Module, blocks: Any, hint: str) -> list[nn.Module]:
    """One stack given by the user: a dotted path, an ``nn.ModuleList`` / ``nn.Sequential`` or a list of modules."""
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


def find_stacks(model: nn.Module, blocks: Any = None) -> list[tuple[str, list[nn.Module]]]:
    """The stacks of repeated blocks of ``model`` as ``(path, blocks)``, in module order.

    ``blocks``: one stack (a dotted path, an ``nn.ModuleList`` or a list of modules) or several
    (a list of dotted paths, e.g. ``["model.encoder.layers", "model.decoder.layers"]``). By
    default every list of repeated blocks found: the known Hugging Face paths
    (:data:`KNOWN_BLOCK_PATHS`) and every outermost ``nn.ModuleList`` of blocks of one class
    holding linear layers (:func:`_outermost_block_lists`), so that the encoder and the decoder of an encoder-decoder model
    are both found; lists inside another (the experts of a block) are not stacks. A model with no
    such list is one stack: the children of an ``nn.Sequential``, else the model as one block.
    """
    hint = ("pass blocks= with the repeated blocks: a dotted path such as blocks='encoder.layer' or "
            "blocks='model.layers', the nn.ModuleList itself (blocks=model.encoder.layer), or a list of paths "
            "for several stacks")
    names = {id(m): name for name, m in model.named_modules()}
    if blocks is not None:
        if isinstance(blocks, (list, tuple)) and blocks and all(isinstance(b, str) for b in blocks):
            return [(path, _given_blocks(model, path, hint)) for path in blocks]
        found = _given_blocks(model, blocks, hint)
        return [(names.get(id(found[0]), "").rpartition(".")[0], found)]
    lists = {id(found): found for _, found in _outermost_block_lists(model)}
    for path in KNOWN_BLOCK_PATHS:
        found = _get_path(model, path)
        if _is_block_list(found):
            lists.setdefault(id(found), found)
    paths = sorted((names[key], found) for key, found in lists.items())
    stacks = [(path, list(found)) for path, found in paths if not any(path.startswith(outer + ".") for outer, _ in paths)]
    if not stacks:
        return [_whole_model(model)]
    order = {id(m): i for i, m in enumerate(model.modules())}
    return sorted(stacks, key=lambda stack: order[id(stack[1][0])])


def _whole_model(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """A model without repeated blocks: the children of an ``nn.Sequential`` (each one's output
    is the next one's input) or, otherwise, the model as one block."""
    if isinstance(model, nn.Sequential) and len(model) > 1:
        logger.info("blocks: no repeated blocks in %s; its %d children are the blocks", type(model).__name__, len(model))
        return "", list(model)
    logger.info("blocks: no repeated blocks in %s; the whole model is one block (every layer from the dense inputs; "
                "pass blocks= to prune block by block)", type(model).__name__)
    return "", [model]


def find_blocks(model: nn.Module, blocks: Any = None) -> list[nn.Module]:
    """Every block of every stack of :func:`find_stacks`, in module order."""
    return [block for _, stack in find_stacks(model, blocks) for block in stack]


def _outermost_block_lists(model: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """Every ``nn.ModuleList`` of blocks of one type holding linear layers (blocks, not bare
    linear layers such as a list of heads; a list of one block when that block holds two or more,
    e.g. a one-layer decoder), except those inside another such list (e.g. the experts inside
    each block), as (path, list)."""
    found: list[tuple[str, nn.ModuleList]] = []
    for name, mod in model.named_modules():
        if not (_is_block_list(mod) and not _is_linear(mod[0]) and len(linear_layers(mod[0])) >= (1 if len(mod) >= 2 else 2)):
            continue
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue  # named_modules walks parents first: an outer list is already in
        found.append((name, mod))
    return found


def forward_order(model: nn.Module, stacks: list[tuple[str, list[nn.Module]]], batch: Batch) -> list[tuple[str, list[nn.Module]]]:
    """The stacks in the order one forward pass of ``batch`` enters them (an encoder before its
    decoder); a stack the pass never enters is left out with a warning (none entered: an error)."""
    if len(stacks) == 1:
        return stacks
    entered: list[int] = []

    def hook(index: int):
        def pre(module: nn.Module, args: tuple) -> None:
            if index not in entered:
                entered.append(index)
            if len(entered) == len(stacks):
                raise _Captured
        return pre

    handles = [stack[0].register_forward_pre_hook(hook(i)) for i, (_, stack) in enumerate(stacks)]
    try:
        _run_until_captured(model, batch, "the first batch")
    finally:
        for h in handles:
            h.remove()
    for i, (path, _) in enumerate(stacks):
        if i not in entered:
            logger.warning("blocks: the forward pass on the calibration batches never enters %s; left dense", path or "<blocks>")
    if not entered:
        raise ValueError("blocks: the model's forward pass never reached any of the blocks; check blocks=")
    return [stacks[i] for i in entered]


class _Captured(Exception):
    """Raised by the block-0 hook to stop the forward pass once its inputs are stored."""


def _run_until_captured(model: nn.Module, batch: Batch, where: str) -> bool:
    """Run ``model`` on ``batch`` until a hook raises :class:`_Captured` (``True``) or to the end
    (``False``); a failure of the model is a ``ValueError`` naming the calibration and ``where``."""
    try:
        forward(model, batch.inputs)
    except _Captured:
        return True
    except Exception as exc:
        raise ValueError(f"calibration: the model failed on {where} ({type(exc).__name__}: {exc}); "
                         "check the batches' shapes (sequence length)") from exc
    return False


class BlockInput:
    """The positional and keyword arguments of one calibration batch at a block's entrance."""

    def __init__(self, args: tuple, kwargs: dict[str, Any]) -> None:
        self.args, self.kwargs = args, kwargs

    @property
    def hidden(self) -> torch.Tensor:
        return self.args[0] if self.args else self.kwargs["hidden_states"]

    def others(self) -> tuple[tuple, dict[str, Any]]:
        """The inputs other than the hidden states."""
        return (self.args[1:], self.kwargs) if self.args else ((), {k: v for k, v in self.kwargs.items() if k != "hidden_states"})

    def with_hidden(self, hidden: torch.Tensor) -> "BlockInput":
        if self.args:
            return BlockInput((hidden, *self.args[1:]), self.kwargs)
        return BlockInput(self.args, {**self.kwargs, "hidden_states": hidden})

    def to(self, device: torch.device) -> "BlockInput":
        def move(v: Any) -> Any:
            return v.to(device) if isinstance(v, torch.Tensor) else v
        return BlockInput(tuple(move(a) for a in self.args), {k: move(v) for k, v in self.kwargs.items()})


def _block_input(args: tuple, kwargs: dict[str, Any]) -> BlockInput:
    """A block's call as the engine replays it: no KV cache (every run of a block, statistics
    then outputs, would append to it), tensors detached."""
    kwargs = {k: None if _is_cache(k, v) else v for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    args = tuple(None if _is_cache("", a) else a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    return BlockInput(args, kwargs)


def stack_inputs(model: nn.Module, blocks: Sequence[nn.Module], batches: Sequence[Batch]) -> list[list[BlockInput]]:
    """The inputs of each of ``blocks`` (per block, per batch): each batch runs until the last
    of them is entered (forward pre-hooks; the pass stops there). The hidden states are kept for
    the first block only (the engine gives the others the previous block's outputs)."""
    store: list[list[BlockInput]] = [[] for _ in blocks]
    pending: set[int] = set()

    def hook(i: int):
        def pre(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if i in pending:
                pending.discard(i)
                call = _block_input(args, kwargs)
                store[i].append(call if i == 0 else call.with_hidden(None))
            if not pending:
                raise _Captured
        return pre

    handles = [block.register_forward_pre_hook(hook(i), with_kwargs=True) for i, block in enumerate(blocks)]
    try:
        for n, batch in enumerate(batches):
            pending.update(range(len(blocks)))
            if not _run_until_captured(model, batch, f"batch {n} before its blocks"):
                missed = "the first block" if 0 in pending else f"{len(pending)} of the blocks whose inputs it needs"
                raise ValueError(f"blocks: the model's forward pass on batch {n} never reached {missed}; check blocks=")
    finally:
        for h in handles:
            h.remove()
    return store


def _same(a: Any, b: Any) -> bool:
    """Equal block inputs: the same object, equal tensors (shape, dtype, values), or equal
    containers / plain values."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device):
            return False
        # NaN where both are NaN counts as equal (non-finite activations are reported later, by name)
        return bool(torch.equal(a, b)) or (a.is_floating_point() and bool(torch.all((a == b) | (a.isnan() & b.isnan()))))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - incomparable values are different inputs
        return False


def input_sources(model: nn.Module, stacks: list[tuple[str, list[nn.Module]]], batch: Batch) -> list[list[int]]:
    """Per stack, per block ``i``: the first block of the stack whose inputs other than the hidden
    states equal block ``i``'s on ``batch`` (one forward pass).

    The engine feeds block ``i`` the previous block's output with the other inputs of that
    source block. Most stacks take the same other inputs everywhere (all sources 0); Gemma-2/3
    give sliding-window and full-attention layers different masks, T5 passes its position bias
    from the second block on, and Swin's stages take their own spatial sizes. A stack whose
    block does not take the previous block's output as its hidden states is a ``ValueError``
    naming ``blocks``. Only the other inputs are kept (references), and each block's output only
    until the next block is entered.
    """
    n_blocks = sum(len(stack) for _, stack in stacks)
    others: dict[tuple[int, int], tuple[tuple, dict[str, Any]]] = {}
    last_output: dict[int, tuple[int, Any]] = {}  # per stack: (block, its output)
    finished: set[tuple[int, int]] = set()
    broken: list[tuple[int, int]] = []

    def pre(s: int, i: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            if (s, i) in others:
                return
            call = _block_input(args, kwargs)
            previous = last_output.pop(s, None)
            if i and previous is not None and previous[0] == i - 1 and not _same(call.hidden, previous[1]):
                broken.append((s, i))
            others[(s, i)] = call.others()
        return hook

    def post(s: int, i: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if (s, i) in finished:
                return
            finished.add((s, i))
            last_output[s] = (i, output[0] if isinstance(output, (tuple, list)) else output)
            if len(finished) == n_blocks:
                raise _Captured
        return hook

    handles = []
    for s, (_, stack) in enumerate(stacks):
        for i, block in enumerate(stack):
            handles += [block.register_forward_pre_hook(pre(s, i), with_kwargs=True), block.register_forward_hook(post(s, i))]
    try:
        _run_until_captured(model, batch, "the first batch")
    finally:
        for h in handles:
            h.remove()
    if broken:
        s, i = broken[0]
        raise ValueError(f"blocks: block {i} of {stacks[s][0] or '<blocks>'} does not take block {i - 1}'s output as its input "
                         "(something runs between them), so the blocks cannot be pruned in sequence; pass blocks= "
                         "with lists whose blocks follow each other directly")
    sources: list[list[int]] = []
    for s, (_, stack) in enumerate(stacks):
        own: list[int] = []
        for i in range(len(stack)):
            if (s, i) not in others:
                own.append(own[-1] if own else 0)  # never entered on this batch: as the previous block
                continue
            own.append(next(j for j in range(i + 1) if j == i or ((s, j) in others and _same(others[(s, j)], others[(s, i)]))))
        sources.append(own)
    return sources


#: Keyword names under which Hugging Face blocks receive their KV cache.
_CACHE_NAMES = ("past_key_values", "past_key_value", "layer_past")


def _is_cache(name: str, value: Any) -> bool:
    """A KV cache argument: a known keyword, or a ``transformers`` ``Cache`` object under any name."""
    if name in _CACHE_NAMES:
        return True
    try:
        from transformers.cache_utils import Cache
    except ImportError:
        return False
    return isinstance(value, Cache)


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


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, *_conv1d_type()))


def linear_layers(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """``nn.Linear`` and Hugging Face ``Conv1D`` layers of ``block``, in module order."""
    return [(name, mod) for name, mod in block.named_modules() if _is_linear(mod)]


@dataclass(frozen=True)
class Slot:
    """One weight matrix the engine reconstructs: ``module.<param>`` (rows ``rows`` of it for a
    fused attention in-projection), as the ``(d_in, d_out)`` matrix W of the formulation.
    ``name`` is relative to the block: ``"fc1.weight"``, ``"self_attn.in_proj_weight[q]"``."""

    name: str
    module: nn.Module
    param: str = "weight"
    rows: slice | None = None

    @property
    def tensor(self) -> torch.Tensor:
        """The stored weights (a row view for a fused in-projection), ``(d_out, d_in)`` except for ``Conv1D``."""
        w = getattr(self.module, self.param).detach()
        return w[self.rows] if self.rows is not None else w

    def matrix(self) -> torch.Tensor:
        """W of shape ``(d_in, d_out)``: the transpose of the stored weights, except for ``Conv1D``."""
        return self.tensor if _is_conv1d(self.module) else self.tensor.T

    def write(self, W: torch.Tensor) -> None:
        """Write a ``(d_in, d_out)`` matrix back in the parameter's layout, dtype and device."""
        target = self.tensor
        with torch.no_grad():
            target.copy_((W if _is_conv1d(self.module) else W.T).to(dtype=target.dtype, device=target.device))


def _is_conv1d(module: nn.Module) -> bool:
    return isinstance(module, _conv1d_type())


def weight_slots(block: nn.Module) -> list[Slot]:
    """Every weight matrix of ``block`` the layer-wise engine prunes, in module order: each
    ``nn.Linear`` / ``Conv1D`` weight, and for each ``nn.MultiheadAttention`` its query, key and
    value projections then its ``out_proj`` (which the attention never calls as a module)."""
    slots: list[Slot] = []
    attention_out = {id(m.out_proj) for m in block.modules() if isinstance(m, nn.MultiheadAttention)}
    for name, module in block.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, nn.MultiheadAttention):
            for label, param, rows in in_projections(module):
                slots.append(Slot(f"{prefix}{param}[{label}]" if rows is not None else f"{prefix}{param}", module, param, rows))
            slots.append(Slot(f"{prefix}out_proj.weight", module.out_proj))
        elif _is_linear(module) and id(module) not in attention_out:
            slots.append(Slot(f"{prefix}weight", module))
    return slots


class GramHooks:
    """Hooks accumulating, per slot of :func:`weight_slots`, ``H = sum x^T x`` (float64) of
    its input rows and ``out_sq = ||X W_hat||_F^2`` (float64) of its dense output without bias
    (the denominator of the relative reconstruction error, at O(N m) cost).

    Linear layers: a forward pre-hook (inputs) and a forward hook (outputs). An
    ``nn.MultiheadAttention``: one forward hook per call, the query / key / value for its
    projections (``out_sq`` from ``x W^T``) and, for ``out_proj``, the heads' outputs of the same
    call (:func:`~._attention.out_projection_input`) and the attention's output. Run the block
    under :func:`~._attention.fused_attention_off`.
    """

    def __init__(self, slots: Sequence[Slot]) -> None:
        self.H: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.out_sq: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []
        projections: dict[int, list[Slot]] = {}
        for slot in slots:
            if isinstance(slot.module, nn.MultiheadAttention):
                projections.setdefault(id(slot.module), []).append(slot)
        layer_name = {id(s.module): s.name for s in slots if not isinstance(s.module, nn.MultiheadAttention)}
        attention_out = {id(group[0].module.out_proj) for group in projections.values()}
        for slot in slots:
            if not isinstance(slot.module, nn.MultiheadAttention) and id(slot.module) not in attention_out:
                self._handles.append(slot.module.register_forward_pre_hook(self._input_hook(slot.name)))
                self._handles.append(slot.module.register_forward_hook(self._output_hook(slot.name)))
        for group in projections.values():
            mha = group[0].module
            hook = self._attention_hook(group, layer_name[id(mha.out_proj)])
            self._handles.append(mha.register_forward_hook(hook, with_kwargs=True))

    def _add(self, name: str, x: torch.Tensor, out_sq: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        if name not in self.H:
            self.H[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
            self.rows[name] = 0
            self.out_sq[name] = torch.zeros((), dtype=torch.float64, device=x.device)
        self.H[name].addmm_(x.T, x)
        self.rows[name] += int(x.shape[0])
        self.out_sq[name] += out_sq

    def _input_hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            self._add(name, args[0].detach(), torch.zeros((), dtype=torch.float64, device=args[0].device))
        return hook

    def _output_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            self.out_sq[name] += _without_bias(out, getattr(module, "bias", None)).square().sum()
        return hook

    def _attention_hook(self, projections: list[Slot], out_name: str):
        def hook(mha: nn.MultiheadAttention, args: tuple, kwargs: dict[str, Any], out: Any) -> None:
            heads = out_projection_input(mha, args, kwargs).detach()
            for slot, x in zip(projections, attention_inputs(args, kwargs)):
                x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
                self._add(slot.name, x, (x @ slot.matrix().to(torch.float64)).square().sum())
            self._add(out_name, heads, _without_bias(out[0], mha.out_proj.bias).square().sum())
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _without_bias(y: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    y = y.detach().to(torch.float64)
    return y - bias.detach().to(torch.float64) if bias is not None else y
