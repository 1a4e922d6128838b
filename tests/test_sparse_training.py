"""Sparse-training stages (docs/sparse_training.md): ZerO init, learned masks, pruning to a
density and the soft post-training components."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard
from torch import nn

from combprune.torch import k_from_sparsity
from combprune.torch._training import evaluate, train_epoch
from combprune.torch.density_prune import prune_to_density
from combprune.torch.learned_masks import LearnedMasks
from combprune.torch.zero_init import zero_init_, zero_matrix

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


# Learned masks -----------------------------------------------------------------------------------


def test_learned_masks_gate_penalty_and_temperature():
    torch.manual_seed(0)
    model = mlp(6, 5, 3)
    w0 = model[0].weight.detach().clone()
    lm = LearnedMasks(model, init=0.5, penalty=0.1, beta=2.0, beta_growth=10.0, beta_max=200.0)
    assert lm.names == ["0.weight", "2.weight"]
    # the model code sees the gated weight
    assert torch.allclose(model[0].weight, w0 * torch.sigmoid(torch.tensor(1.0)))
    n = 6 * 5 + 5 * 3
    assert math.isclose(float(lm.penalty().detach()), 0.1 * n * float(torch.sigmoid(torch.tensor(1.0))), rel_tol=1e-6)
    assert {id(p) for p in lm.model_parameters()}.isdisjoint(id(s) for s in lm.score_parameters())
    assert len(list(lm.model_parameters())) == 4  # two weights, two biases
    assert lm.epoch_end() == 20.0 and lm.epoch_end() == 200.0 and lm.epoch_end() == 200.0
    assert lm.density() == 1.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 60), beta0=st.floats(0.1, 5.0), beta_max=st.floats(5.0, 500.0))
def test_learned_masks_step_annealing_follows_the_geometric_schedule(n, beta0, beta_max):
    """anneal="step": beta_t = beta_0 g^t after t steps, beta_max after n steps, and the gates
    use it; epoch_end changes nothing (and with anneal="epoch" step_end changes nothing)."""
    growth = (beta_max / beta0) ** (1.0 / n)
    lm = LearnedMasks(mlp(3, 2), beta=beta0, beta_growth=growth, beta_max=beta_max, anneal="step")
    for t in range(1, n + 1):
        beta = lm.step_end()
        assert beta == pytest.approx(min(beta0 * growth**t, beta_max), rel=1e-9)
        assert lm.epoch_end() == beta
    assert lm.beta == beta_max  # exactly, after n steps
    assert lm.step_end() == lm.beta <= beta_max  # capped
    gate = lm._gates["0.weight"][2]
    assert gate.beta == lm.beta
    assert torch.allclose(gate.gate(), torch.sigmoid(lm.beta * gate.score))
    per_epoch = LearnedMasks(mlp(3, 2), beta=beta0, beta_growth=growth, beta_max=beta_max)
    assert per_epoch.step_end() == beta0 and per_epoch.epoch_end() == pytest.approx(min(beta0 * growth, beta_max))


def test_learned_masks_penalty_drives_scores_negative_and_remove_bakes():
    torch.manual_seed(0)
    model = mlp(4, 3)
    lm = LearnedMasks(model, init=0.2, penalty=1.0, score_lr=0.05)
    x = torch.randn(8, 4)
    for _ in range(40):  # only the penalty: every score is pushed below zero
        lm.optimizer.zero_grad()
        lm.penalty().backward()
        lm.optimizer.step()
    assert lm.density() == 0.0 and lm.soft_density() < 0.5
    gated = model(x).detach()
    w_raw = model[0].parametrizations.weight.original.detach().clone()
    final = lm.remove(bake=True)
    assert not torch.nn.utils.parametrize.is_parametrized(model)
    assert isinstance(model[0].weight, nn.Parameter)
    assert list(model.state_dict()) == list(mlp(4, 3).state_dict())  # same parameters, same order
    assert torch.allclose(model(x), gated)
    assert torch.equal(final["0.weight"], lm.scores()["0.weight"])
    with pytest.raises(RuntimeError):
        lm.penalty()
    model2 = mlp(4, 3)
    lm2 = LearnedMasks(model2)
    raw = model2[0].parametrizations.weight.original.detach().clone()
    lm2.remove(bake=False)
    assert torch.equal(model2[0].weight, raw) and w_raw.shape == raw.shape


def _random_scores(lm, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for score in lm.score_parameters():
            score.copy_(torch.randn(score.shape, generator=g))


@settings(max_examples=30, deadline=None)
@given(rho=st.floats(0.01, 1.0), seed=st.integers(0, 100), lam=st.floats(0.0, 2.0))
def test_learned_masks_budget_penalises_only_the_scores_outside_the_top_k(rho, seed, lam):
    """target_density: lambda * sum of the gates whose score is below the k-th largest, k = round(rho n)."""
    lm = LearnedMasks(mlp(6, 5, 3), penalty=lam, target_density=rho)
    _random_scores(lm, seed)
    s = torch.cat([p.detach().flatten() for p in lm.score_parameters()])
    k = round(rho * s.numel())
    outside = torch.sort(s, descending=True).values[k:]
    assert float(lm.penalty().detach()) == pytest.approx(lam * float(torch.sigmoid(outside).sum()), rel=1e-5, abs=1e-6)


def test_learned_masks_budget_pushes_out_only_what_the_budget_cannot_keep():
    torch.manual_seed(0)
    densities = {}
    for target in (None, 0.4):
        lm = LearnedMasks(mlp(8, 10), penalty=1.0, target_density=target, score_lr=0.05)
        _random_scores(lm, 0)
        for _ in range(150):  # only the penalty
            lm.optimizer.zero_grad()
            lm.penalty().backward()
            lm.optimizer.step()
        densities[target] = lm.density()
    assert densities[None] == 0.0  # the plain regulariser drives every score below zero
    assert densities[0.4] == pytest.approx(0.4, abs=0.5 / 90)  # the budget one keeps the top 40 %


def test_learned_masks_bad_input():
    with pytest.raises(ValueError, match="penalty"):
        LearnedMasks(mlp(3, 2), penalty=-1.0)
    with pytest.raises(ValueError, match="beta_growth"):
        LearnedMasks(mlp(3, 2), beta_growth=0.5)
    with pytest.raises(ValueError, match="anneal"):
        LearnedMasks(mlp(3, 2), anneal="batch")
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="target_density"):
            LearnedMasks(mlp(3, 2), target_density=bad)
    with pytest.raises(ValueError, match="targets"):
        LearnedMasks(nn.Sequential(nn.ReLU()))
    model = mlp(3, 2)
    LearnedMasks(model)
    with pytest.raises(ValueError, match="model"):
        LearnedMasks(model, targets=[r"0"])


# Pruning to a density ----------------------------------------------------------------------------
def _nnz(model):
    return sum(int((m.weight != 0).sum()) for m in model.modules() if isinstance(m, nn.Linear))


def test_prune_to_density_magnitude_global_and_per_layer():
    torch.manual_seed(0)
    model = mlp(10, 20, 5)  # 300 weights
    w = [model[0].weight.detach().clone(), model[2].weight.detach().clone()]
    masks = prune_to_density(model, 0.1)
    assert _nnz(model) == 30 == sum(int(m.sum()) for m in masks.values())
    allw = torch.cat([v.abs().flatten() for v in w])
    thresh = allw.sort(descending=True).values[29]
    assert torch.equal(masks["0.weight"], w[0].abs() >= thresh)
    assert torch.equal(model[0].weight, w[0] * masks["0.weight"])
    model = mlp(10, 20, 5)
    masks = prune_to_density(model, 0.1, per_layer=True)
    assert int(masks["0.weight"].sum()) == 20 and int(masks["2.weight"].sum()) == 10


def test_prune_to_density_mask_guided_keeps_top_scores():
    torch.manual_seed(0)
    model = mlp(10, 20, 5)
    scores = {"0.weight": torch.randn(20, 10), "2.weight": torch.randn(5, 20)}
    w0 = model[0].weight.detach().clone()
    masks = prune_to_density(model, 0.05, method="mask", scores=scores)
    allv = torch.cat([scores["0.weight"].flatten(), scores["2.weight"].flatten()])
    thresh = allv.sort(descending=True).values[14]
    assert torch.equal(masks["0.weight"], scores["0.weight"] >= thresh)
    assert torch.equal(model[0].weight, w0 * masks["0.weight"])


def test_prune_to_density_chita_with_score_warm_start():
    torch.manual_seed(0)
    model = mlp(8, 6, 3)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    scores = {"0.weight": torch.randn(6, 8), "2.weight": torch.randn(3, 6)}
    masks = prune_to_density(model, 0.25, method="chita", calibration=(x, y), scores=scores, warm_start="scores", progress=False, n_samples=None)
    assert _nnz(model) <= 16 and sum(int(m.sum()) for m in masks.values()) == _nnz(model)
    with pytest.raises(ValueError, match="warm_start"):
        prune_to_density(mlp(8, 6, 3), 0.25, method="chita++", calibration=(x, y), scores=scores, warm_start="scores")


def test_prune_to_density_bad_input():
    for d in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="density"):
            prune_to_density(mlp(3, 2), d)
    with pytest.raises(ValueError, match="scores"):
        prune_to_density(mlp(3, 2), 0.5, method="mask")
    with pytest.raises(ValueError, match="calibration"):
        prune_to_density(mlp(3, 2), 0.5, method="chita")
    with pytest.raises(ValueError, match="targets"):
        prune_to_density(nn.Sequential(nn.ReLU()), 0.5)


@settings(max_examples=25, deadline=None)
@given(density=st.floats(0.001, 1.0), per_layer=st.booleans(), seed=st.integers(0, 10))
def test_prune_to_density_keeps_exactly_k(density, per_layer, seed):
    torch.manual_seed(seed)
    model = mlp(7, 9, 4)
    masks = prune_to_density(model, density, per_layer=per_layer, progress=False)
    sizes = [63, 36]
    if per_layer:
        expected = [k_from_sparsity(1 - density, n) for n in sizes]
        assert [int(m.sum()) for m in masks.values()] == expected
    else:
        assert sum(int(m.sum()) for m in masks.values()) == k_from_sparsity(1 - density, 99)
    assert _nnz(model) <= sum(int(m.sum()) for m in masks.values())
