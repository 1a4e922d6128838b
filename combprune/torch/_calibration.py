"""Calibration data: batches of (inputs, targets) or inputs alone, up to ``n_samples``.

Accepted forms of ``calibration``:

* a :class:`torch.utils.data.DataLoader` or any iterable of batches, a batch being
  ``(inputs, targets)`` (a tuple or list of two), ``inputs`` alone (a tensor), or a dict of
  tensors (Hugging Face style; ``labels`` is taken as the targets when present);
* a single tensor (one batch of inputs) or a tuple ``(X, y)`` of two tensors with the same first
  dimension (one batch of inputs and targets).

``inputs`` may be a tensor, a tuple of tensors (passed as positional arguments) or a dict
(passed as keyword arguments). The number of samples of a batch is the first dimension of its
first tensor. Batches are moved to the model's device (``Tensor.to``); the model itself must sit
on one device.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
from torch import nn

__all__ = ["Batch", "iter_batches", "collect", "model_device", "forward", "functional_forward", "eval_mode"]


@dataclass
class Batch:
    """One calibration batch on the model's device."""

    inputs: Any  # Tensor | tuple[Tensor, ...] | dict[str, Tensor]
    targets: torch.Tensor | None
    size: int
    #: The unpruned model's class probabilities ``(size, C)`` (float64, CPU) when the local model
    #: distils them (``distill=True``, :mod:`._fisher`); None otherwise.
    teacher: torch.Tensor | None = None

    def slice(self, start: int, stop: int) -> "Batch":
        return Batch(_map(self.inputs, lambda t: t[start:stop]), None if self.targets is None else self.targets[start:stop], stop - start,
                     None if self.teacher is None else self.teacher[start:stop])

    def take(self, index: torch.Tensor) -> "Batch":
        """The samples ``index`` (positions in this batch, repeats allowed), in that order.

        Tensors whose first dimension is the batch size are indexed; others (shared across
        the batch) are passed on as they are."""

        def pick(t: torch.Tensor) -> torch.Tensor:
            return t.index_select(0, index.to(t.device)) if t.ndim > 0 and t.shape[0] == self.size else t

        return Batch(_map(self.inputs, pick), None if self.targets is None else pick(self.targets), int(index.numel()),
                     None if self.teacher is None else pick(self.teacher))


def _map(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def _first_tensor(obj: Any) -> torch.Tensor | None:
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for v in obj:
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def model_device(model: nn.Module) -> torch.device:
    """The one device holding all of ``model``'s parameters and buffers.

    Raises ``ValueError`` naming ``model`` when they are spread over several devices.
    """
    devices = {t.device for t in list(model.parameters()) + list(model.buffers())}
    if not devices:
        return torch.device("cpu")
    if len(devices) > 1:
        raise ValueError(f"model: parameters are on several devices ({', '.join(sorted(map(str, devices)))}); move the model to one device first")
    return devices.pop()


def check_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    """The model's device; ``ValueError`` when ``device`` is given and the model is elsewhere."""
    actual = model_device(model)
    if device is not None:
        want = torch.device(device)
        if want.type != actual.type or (want.index is not None and actual.index is not None and want.index != actual.index):
            raise ValueError(f"model: is on {actual} but device={str(want)!r} was requested; call model.to({str(want)!r}) first")
    return actual


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run in ``eval()`` (dropout off, batch-norm statistics untouched) and restore each
    module's own mode afterwards (a model may hold frozen submodules in eval mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def check_finite_parameters(model: nn.Module) -> None:
    """``ValueError`` naming the first parameter holding NaN or inf (meta tensors are skipped):
    pruning a model whose outputs are NaN would fail deep inside a solver instead."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.is_floating_point() and p.device.type != "meta" and not bool(torch.isfinite(p).all()):
                raise ValueError(f"model: parameter {name} contains NaN or inf; pruning needs finite weights")


def _split(batch: Any) -> tuple[Any, torch.Tensor | None]:
    if isinstance(batch, dict):
        targets = batch.get("labels")
        return batch, targets
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2:
            return batch[0], batch[1]
        if len(batch) == 1:
            return batch[0], None
        raise ValueError(f"calibration: a batch must be (inputs, targets) or inputs alone, got a sequence of {len(batch)} items")
    if isinstance(batch, torch.Tensor):
        return batch, None
    raise TypeError(f"calibration: unsupported batch type {type(batch).__name__}; expected a tensor, (inputs, targets) or a dict")


def _normalise_source(calibration: Any) -> Iterable[Any]:
    if calibration is None:
        raise ValueError("calibration: no calibration data given (None)")
    if isinstance(calibration, (torch.Tensor, dict)):
        return [calibration]  # one batch (a dict is one keyword batch, never an iterable of keys)
    if (
        isinstance(calibration, tuple)
        and len(calibration) == 2
        and all(isinstance(t, torch.Tensor) for t in calibration)
        and calibration[0].ndim > 0
        and calibration[1].ndim > 0
        and calibration[0].shape[0] == calibration[1].shape[0]
    ):
        return [calibration]
    try:
        iter(calibration)
    except TypeError:
        raise TypeError(f"calibration: expected a DataLoader, an iterable of batches or a tensor, got {type(calibration).__name__}") from None
    return calibration


def iter_batches(calibration: Any, n_samples: int | None, device: torch.device, *, need_targets: bool = False) -> Iterator[Batch]:
    """Yield :class:`Batch` es on ``device`` until ``n_samples`` samples (all when ``None``).

    Raises ``ValueError`` naming ``calibration`` when it yields no sample, or when targets are
    needed (gradient-based methods with the default loss) and a batch that is not a dict has
    none (a dict batch without ``labels`` may hold what the model computes its own loss from,
    e.g. a question-answering model's ``start_positions`` / ``end_positions``; the default loss
    then takes ``outputs.loss`` and says so when there is none).
    """
    if n_samples is not None and (not isinstance(n_samples, int) or isinstance(n_samples, bool) or n_samples < 1):
        raise ValueError(f"n_samples: expected a positive integer, got {n_samples!r}")
    seen = 0
    for raw in _normalise_source(calibration):
        inputs, targets = _split(raw)
        first = _first_tensor(inputs)
        if first is None:
            raise TypeError("calibration: a batch contains no tensor")
        size = int(first.shape[0]) if first.ndim > 0 else 1
        if size == 0:
            continue
        if need_targets and targets is None and not isinstance(inputs, dict):
            raise ValueError(
                "calibration: this method needs (inputs, targets) batches (or pass loss_fn that uses outputs only); "
                "without targets, prune layer by layer from the inputs alone with method='layerwise', 'sparsegpt' or 'wanda'"
            )
        inputs = _map(inputs, lambda t: t.to(device, non_blocking=True))
        if isinstance(targets, torch.Tensor):
            targets = targets.to(device, non_blocking=True)
        batch = Batch(inputs, targets, size)
        if n_samples is not None and seen + size > n_samples:
            batch = batch.slice(0, n_samples - seen)
        seen += batch.size
        yield batch
        if n_samples is not None and seen >= n_samples:
            return
    if seen == 0:
        raise ValueError("calibration: the calibration data is empty (no sample)")


def collect(calibration: Any, n_samples: int | None, device: torch.device, *, need_targets: bool = False) -> list[Batch]:
    """All batches of :func:`iter_batches` as a list (at least one sample)."""
    return list(iter_batches(calibration, n_samples, device, need_targets=need_targets))


def forward(model: nn.Module, inputs: Any) -> Any:
    """Call ``model`` with a batch's inputs (tensor, positional tuple, or keyword dict)."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def functional_forward(model: nn.Module, overrides: dict[str, torch.Tensor], inputs: Any) -> Any:
    """:func:`forward` with some parameters replaced (:func:`torch.func.functional_call`)."""
    from torch.func import functional_call

    if isinstance(inputs, dict):
        return functional_call(model, overrides, (), inputs)
    if isinstance(inputs, (tuple, list)):
        return functional_call(model, overrides, tuple(inputs))
    return functional_call(model, overrides, (inputs,))
