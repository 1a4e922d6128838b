"""Residual streams: channels shared by every layer that adds into a stream and every reader.

A *channel space* is the set of tensors of a traced (``torch.fx``) graph whose channel ``c`` is
the same feature: a Conv2d / Linear output starts one; per-channel operations keep it
(BatchNorm, depthwise convolutions, element-wise functions, pooling, ``flatten`` after a global
average pool); an addition of two tensors **joins** their spaces (a residual connection).
Channel ``c`` of a space is then one group: an output channel of every layer that produces into
the space (and of its BatchNorms / depthwise convolutions), and an input channel of every
Conv2d / Linear that reads it. Removing it is exact once every reader's weights on ``c`` are
zero, so the optimisation is on the readers: the sum of their reconstruction objectives
(:mod:`combprune.torch._coupled`).

Any other use of a tensor of the space (the model's output, a concatenation, a reshape, an
unknown function or module, a shared module) **blocks** the space: it is not a unit. Spaces with
a single producer are the chains of :func:`combprune.torch.structured._fx_units`; this module
adds the spaces with several producers (residual streams).
"""

from __future__ import annotations

import operator
from typing import Any, Mapping

import torch
from torch import nn

from .structured import (
    _ELEMENTWISE_FUNCTIONS,
    _ELEMENTWISE_METHODS,
    ELEMENTWISE_MODULES,
    StructuredUnit,
    _is_depthwise,
    _is_plain_conv,
    _out_features,
)

__all__ = ["stream_units"]

_ADDS = {operator.add, operator.iadd, torch.add}
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


class _Spaces:
    """Union-find over channel spaces with the roles of the modules in each."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.roles: list[tuple[int, str, str]] = []  # (space, role, module name)
        self.blocked: set[int] = set()

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        self.parent[max(ra, rb)] = min(ra, rb)
        return min(ra, rb)


def _tensor_args(node: Any) -> list[Any]:
    """Graph nodes among the (nested) arguments of ``node``."""
    out: list[Any] = []
    torch.fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n))
    return out


def _is_global_pool(node: Any, mod: nn.Module | None) -> bool:
    size = getattr(mod, "output_size", None) if mod is not None else (node.args[1] if len(node.args) > 1 else None)
    return size in (1, (1, 1))


def _step(node: Any, modules: Mapping[str, nn.Module], calls: Mapping[str, int], sp: _Spaces, state: dict[Any, tuple[int, str]]) -> tuple[int, str] | None:
    """The (space, layout) of ``node``'s output, recording roles; ``None`` when untracked.

    Layouts: ``"map"`` (N, C, H, W), ``"pooled"`` (N, C, 1, 1), ``"vec"`` (..., C).
    """
    src = node.args[0] if node.args else None
    s_in = state.get(src) if isinstance(src, torch.fx.Node) else None
    single = node.args[1:] == () and not node.kwargs
    if node.op == "call_module":
        mod = modules[node.target]
        once = calls[node.target] == 1
        if once and single and (_is_plain_conv(mod) or isinstance(mod, nn.Linear)):
            want = "map" if isinstance(mod, nn.Conv2d) else "vec"
            if s_in is not None:
                if s_in[1] not in (want, "input"):
                    sp.blocked.add(s_in[0])  # e.g. a Linear on the width of a feature map
                else:
                    sp.roles.append((s_in[0], "consumer", node.target))
            out = sp.new()
            sp.roles.append((out, "producer", node.target))
            return out, want
        if s_in is None or not single:
            return None
        n = None
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)) and once:
            n = mod.num_features
        elif once and s_in[1] == "map" and isinstance(mod, nn.Conv2d) and _is_depthwise(mod, mod.in_channels):
            n = mod.in_channels
        if n is not None:
            if (s_in[1] == "vec") != isinstance(mod, nn.BatchNorm1d):
                return None
            sp.roles.append((s_in[0], "member", node.target))
            return s_in
        if isinstance(mod, ELEMENTWISE_MODULES):
            return s_in
        if isinstance(mod, _POOLS) and s_in[1] == "map":
            return s_in
        if isinstance(mod, nn.AdaptiveAvgPool2d) and s_in[1] == "map" and _is_global_pool(node, mod):
            return s_in[0], "pooled"
        return None
    if node.op not in ("call_function", "call_method"):
        return None
    if node.target in _ADDS or (node.op == "call_method" and node.target in ("add", "add_")):
        other = node.args[1] if len(node.args) > 1 else None
        s_other = state.get(other) if isinstance(other, torch.fx.Node) else None
        if s_in is None or s_other is None or s_in[1] != s_other[1] or node.kwargs or len(node.args) != 2:
            return None
        return sp.union(s_in[0], s_other[0]), s_in[1]
    if s_in is None:
        return None
    if (node.target in _ELEMENTWISE_FUNCTIONS or (node.op == "call_method" and node.target in _ELEMENTWISE_METHODS)) and all(
        not isinstance(a, torch.fx.Node) for a in node.args[1:]
    ):
        return s_in
    if node.target is torch.nn.functional.adaptive_avg_pool2d and s_in[1] == "map" and _is_global_pool(node, None):
        return s_in[0], "pooled"
    is_flatten = node.target is torch.flatten or (node.op == "call_method" and node.target == "flatten")
    if is_flatten and s_in[1] == "pooled" and tuple(node.args[1:]) == (1,) and not node.kwargs:
        return s_in[0], "vec"
    return None


def stream_units(graph: Any, modules: Mapping[str, nn.Module], calls: Mapping[str, int]) -> list[StructuredUnit]:
    """Units of the channel spaces with two or more producers (residual streams) of ``graph``."""
    sp = _Spaces()
    state: dict[Any, tuple[int, str]] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            s = sp.new()
            sp.blocked.add(s)
            state[node] = (s, "input")  # the model's input: never prunable, whatever reads it
            continue
        result = _step(node, modules, calls, sp, state)
        if result is None:  # every space this node reads is used in an unknown way
            for arg in _tensor_args(node):
                if arg in state:
                    sp.blocked.add(state[arg][0])
        else:
            state[node] = result
    blocked = {sp.find(s) for s in sp.blocked}
    spaces: dict[int, dict[str, list[str]]] = {}
    for s, role, name in sp.roles:
        spaces.setdefault(sp.find(s), {"producer": [], "consumer": [], "member": []})[role].append(name)
    units = []
    for root, roles in spaces.items():
        producers, consumers = roles["producer"], roles["consumer"]
        if root in blocked or len(producers) < 2 or not consumers:
            continue
        n = {_out_features(modules[p]) for p in producers}
        members = roles["member"]
        n |= {modules[m].num_features if isinstance(modules[m], nn.modules.batchnorm._BatchNorm) else modules[m].in_channels for m in members}
        if len(n) != 1:
            continue
        kind = "channel" if isinstance(modules[producers[0]], nn.Conv2d) else "neuron"
        units.append(StructuredUnit(
            kind, consumers[0], tuple(producers), tuple(members), n_groups=n.pop(), extra_consumers=tuple(consumers[1:]),
        ))
    return units
