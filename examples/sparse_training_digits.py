"""The sparse-training pipeline on scikit-learn's digits: keep 5 % of an MLP's weights.

    python examples/sparse_training_digits.py

Runs the full pipeline (ZerO init, learned masks, mask-guided pruning, soft post-training) and
the plain baseline (dense training, magnitude pruning, fine-tuning) with the same epochs, and
prints their held-out accuracy. See docs/sparse_training.md.
"""

from __future__ import annotations

import logging

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import combprune.torch as cpt
from combprune.torch._training import evaluate


def loaders(seed: int = 0):
    X, y = load_digits(return_X_y=True)
    X_tr, X_te, y_tr, y_te = train_test_split(X / 16.0, y, test_size=0.3, stratify=y, random_state=seed)
    ds = lambda a, b: torch.utils.data.TensorDataset(torch.tensor(a, dtype=torch.float32), torch.tensor(b))  # noqa: E731
    train = torch.utils.data.DataLoader(ds(X_tr, y_tr), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return train, torch.utils.data.DataLoader(ds(X_te, y_te), batch_size=1024)


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    train, test = loaders()
    plain_off = dict(zero_init=False, learned_masks=False, label_smoothing=0.0, soft_activation=None, soft_skip=False)
    for name, options in (("pipeline", dict(mask_penalty=1e-4)), ("plain", plain_off)):
        torch.manual_seed(0)
        model = mlp()
        result = cpt.run_pipeline(model, train, density=0.05, pre_epochs=10, post_epochs=10, **options)
        print(f"{name}: density {result.density:.4f}, test accuracy {evaluate(model, test):.3f}")


if __name__ == "__main__":
    main()
