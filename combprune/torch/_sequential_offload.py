"""Disk offload of the blocks for the sequential engine (``offload="disk"``, safetensors).

Every tensor of a block (parameters and buffers, persistent or not) is written to
``<dir>/block<i>.safetensors`` and the block moves to the ``meta`` device (no memory). A block is
materialised (``to_empty`` + copy from its file) when its turn comes; its pruned tensors are
written to ``block<i>.pruned.safetensors`` and it goes back to ``meta``. At the end every block
is loaded from its pruned file (on success) or its dense file (on error), on its original device;
a temporary directory is removed afterwards, a directory given by the user keeps the files.
Needs the ``safetensors`` package (installed with ``transformers``; ``pip install safetensors``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Sequence

import torch
from torch import nn

__all__ = ["DiskOffload"]


def _tensors(block: nn.Module) -> dict[str, torch.Tensor]:
    named = list(block.named_parameters(remove_duplicate=False)) + list(block.named_buffers(remove_duplicate=False))
    return {name: t.detach().to("cpu").contiguous() for name, t in named}


def _load_into(block: nn.Module, path: str, device: torch.device) -> None:
    from safetensors.torch import load_file

    data = load_file(path)
    block.to_empty(device=device)
    with torch.no_grad():
        for name, t in list(block.named_parameters(remove_duplicate=False)) + list(block.named_buffers(remove_duplicate=False)):
            t.copy_(data[name])


class DiskOffload:
    """Blocks on disk between their turns (see the module docstring)."""

    def __init__(self, blocks: Sequence[nn.Module], directory: str | None, first: int = 0) -> None:
        try:
            from safetensors.torch import save_file
        except ImportError:
            raise ImportError("offload: offload='disk' needs safetensors: pip install safetensors "
                              "(or combprune[hf])") from None
        self._save = save_file
        self.temporary = directory is None
        self.dir = directory or tempfile.mkdtemp(prefix="combprune-offload-")
        self.first = first  # files are numbered by the blocks' index over all stacks
        os.makedirs(self.dir, exist_ok=True)
        self.blocks = list(blocks)
        self.homes = [next((p.device for p in b.parameters()), torch.device("cpu")) for b in self.blocks]
        self.pruned = [False] * len(self.blocks)
        for i, block in enumerate(self.blocks):
            self._save(_tensors(block), self._path(i, False))
            block.to("meta")

    def _path(self, i: int, pruned: bool) -> str:
        return os.path.join(self.dir, f"block{self.first + i}{'.pruned' if pruned else ''}.safetensors")

    def load(self, i: int, device: torch.device) -> None:
        """Materialise block i (dense) on ``device``."""
        _load_into(self.blocks[i], self._path(i, False), device)

    def release(self, i: int) -> None:
        """Write block i's pruned tensors to disk and free it."""
        self._save(_tensors(self.blocks[i]), self._path(i, True))
        self.pruned[i] = True
        self.blocks[i].to("meta")

    def finish(self, success: bool) -> None:
        """Every block back in memory on its original device: pruned on success, dense otherwise."""
        for i, block in enumerate(self.blocks):
            _load_into(block, self._path(i, success and self.pruned[i]), self.homes[i])

    def cleanup(self) -> None:
        """Remove the temporary directory (a directory given by the user keeps its files)."""
        if self.temporary:
            shutil.rmtree(self.dir, ignore_errors=True)
