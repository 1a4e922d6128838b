"""Sparse-training stages (docs/sparse_training.md): ZerO init, learned masks, pruning to a
density, frozen masks and the soft post-training components."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard
from torch import nn

from combprune.torch.zero_init import zero_init_, zero_matrix
from combprune.torch._training import evaluate, train_epoch

torch.set_num_threads(1)


def digits(seed: int = 0, batch: int = 64):
    """sklearn digits as (train loader, test loader), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    ds = torch.utils.data.TensorDataset
    g = torch.Generator().manual_seed(seed)
    train = torch.utils.data.DataLoader(ds(X[:1400], y[:1400]), batch_size=batch, shuffle=True, generator=g)
    test = torch.utils.data.DataLoader(ds(X[1400:], y[1400:]), batch_size=512)
    return train, test


def mlp(*sizes: int, bias: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# ZerO ----------------------------------------------------------------------------------------------
def test_zero_matrix_small_shapes_match_the_formula():
    assert torch.equal(zero_matrix(2, 3), torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    assert torch.equal(zero_matrix(3, 3), torch.eye(3))
    # m = 3 > n = 2: c = 2, p = 4, H_4[:3, :2] / 2
    H4 = torch.tensor(hadamard(4), dtype=torch.float32)
    assert torch.equal(zero_matrix(3, 2), H4[:3, :2] / 2)
    # m = 5 > n = 3: c = 3, p = 8, H_8[:5, :3] / 2^(3/2)
    H8 = torch.tensor(hadamard(8), dtype=torch.float64)
    assert torch.allclose(zero_matrix(5, 3, dtype=torch.float64), H8[:5, :3] / 2**1.5, rtol=0, atol=1e-15)


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40))
def test_zero_matrix_properties(m, n):
    W = zero_matrix(m, n, dtype=torch.float64)
    assert W.shape == (m, n)
    if m <= n:  # partial identity: W W^T = I_m
        assert torch.equal(W @ W.T, torch.eye(m, dtype=torch.float64))
    else:
        c = math.ceil(math.log2(m))
        assert torch.allclose(W.abs(), torch.full((m, n), 2 ** (-c / 2), dtype=torch.float64))
        if m == 2**c:  # whole Hadamard rows: orthonormal columns
            assert torch.allclose(W.T @ W, torch.eye(n, dtype=torch.float64), atol=1e-12)


def test_zero_init_linear_conv_and_biases():
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    zero_init_(model)
    w = model[0].weight
    assert torch.equal(w[:, :, 1, 1], zero_matrix(5, 3))
    w_off = w.clone()
    w_off[:, :, 1, 1] = 0
    assert not w_off.any()
    assert torch.equal(model[3].weight, zero_matrix(7, 80))
    assert not model[0].bias.any() and not model[3].bias.any()
    # an identity conv (3 -> 3, centre tap) passes its input through
    conv = zero_init_(nn.Conv2d(3, 3, 3, padding=1))
    x = torch.randn(2, 3, 6, 6)
    assert torch.allclose(conv(x), x)


def test_zero_init_bad_input():
    with pytest.raises(ValueError, match="module"):
        zero_init_(nn.Sequential(nn.ReLU()))
    with pytest.raises(TypeError, match="module"):
        zero_init_("not a module")
    with pytest.raises(ValueError, match="m"):
        zero_matrix(0, 3)


def test_zero_initialised_mlp_trains_on_digits():
    torch.manual_seed(0)
    train, test = digits()
    model = zero_init_(mlp(64, 128, 64, 10))
    before = evaluate(model, test)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(8):
        train_epoch(model, train, [opt], nn.functional.cross_entropy)
    after = evaluate(model, test)
    assert after > 0.9 > before + 0.3  # chance is 0.1
