"""``torch.distributed`` glue of the sequential engine (no-ops in a single process).

Ranks split the calibration batches; the statistics of each layer are summed with
``all_reduce``; the owner of a layer broadcasts its pruned weights and its report row.
Works with gloo (CPU tensors) and NCCL (tensors on the rank's CUDA device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist

__all__ = ["Dist"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @classmethod
    def current(cls) -> "Dist":
        if tdist.is_available() and tdist.is_initialized():
            return cls(tdist.get_rank(), tdist.get_world_size())
        return cls()

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t

    def broadcast(self, t: torch.Tensor, src: int) -> torch.Tensor:
        if self.world > 1:
            t = t.contiguous()
            tdist.broadcast(t, src=src)
        return t

    def broadcast_object(self, obj: Any, src: int) -> Any:
        if self.world > 1:
            box = [obj]
            tdist.broadcast_object_list(box, src=src)
            return box[0]
        return obj

    def total(self, n: int) -> int:
        if self.world > 1:
            t = torch.tensor([n], dtype=torch.int64)
            tdist.all_reduce(t)
            return int(t.item())
        return n
