"""The curvature factor of the gradient methods: the empirical and the true Fisher (``fisher=``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call, jacrev

import combprune.torch as cpt
from combprune.problems import L0Regression
from combprune.torch import _fisher
from combprune.torch._calibration import collect
from combprune.torch._fisher import fisher_rows
from combprune.torch._gradients import flat_weights, per_sample_gradients
from combprune.torch._select import select_parameters


def mlp(seed: int, widths: tuple[int, ...] = (5, 4, 3), scale: float = 1.0) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    model = nn.Sequential(*layers[:-1])
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model.double()


def data(seed: int, n: int, d: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def gauss_newton(model: nn.Module, X: torch.Tensor) -> np.ndarray:
    """sum_i J_i^T (diag p_i - p_i p_i^T) J_i over the weight matrices (J: logits by weights)."""
    names = [n for n, p in model.named_parameters() if p.dim() == 2]
    params = {n: p.detach() for n, p in model.named_parameters()}
    total = 0.0
    for x in X:
        jac = jacrev(lambda w: functional_call(model, {**params, **w}, (x[None],))[0])({n: params[n] for n in names})
        J = torch.cat([jac[n].reshape(jac[n].shape[0], -1) for n in names], 1)
        p = torch.softmax(model(x[None])[0], 0).detach()
        total = total + J.T @ (torch.diag(p) - torch.outer(p, p)) @ J
    return total.numpy()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), classes=st.integers(2, 5))
def test_true_fisher_rows_factor_the_gauss_newton_matrix_and_the_gradient(seed, n, classes):
    """With no class dropped, A^T A is the Fisher (= Gauss-Newton) sum, A^T r the summed loss gradient."""
    model = mlp(seed, (4, 3, classes))
    X, y = data(seed, n, 4, classes)
    params = select_parameters(model)
    batches = collect((X, y), None, torch.device("cpu"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fisher, "MIN_CLASS_PROB", 0.0)
        mp.setattr(_fisher, "PROB_FLOOR", 0.0)
        rows = fisher_rows(model, params, batches, fisher="true", weights=flat_weights(params), dtype=torch.float64)
    assert rows.n_samples == n and rows.A.shape[0] == n * classes
    np.testing.assert_allclose(rows.A.T @ rows.A, gauss_newton(model, X), rtol=1e-8, atol=1e-10)
    G = per_sample_gradients(model, params, batches, dtype=torch.float64).numpy()
    np.testing.assert_allclose(rows.A.T @ rows.residual, G.sum(0), rtol=1e-8, atol=1e-10)


def test_true_fisher_drops_unlikely_classes_but_keeps_every_label():
    model = mlp(0, (5, 4, 6), scale=8.0)  # confident outputs: most classes below 1 %
    X, y = data(1, 12, 5, 6)
    params = select_parameters(model)
    rows = fisher_rows(model, params, collect((X, y), None, torch.device("cpu")), fisher="true", weights=flat_weights(params))
    probs = torch.softmax(model(X), 1).detach()
    kept = (probs >= _fisher.MIN_CLASS_PROB)
    kept[torch.arange(12), y] = True
    assert rows.A.shape[0] == int(kept.sum()) < 12 * 6
    np.testing.assert_array_equal(np.diff(rows.sample_rows), kept.sum(1).numpy())
    labels = rows.residual != 0
    assert labels.sum() == 12  # exactly one label row per sample, 1/sqrt(p_iy) on it (p floored)
    p_label = np.maximum(probs[torch.arange(12), y].numpy(), _fisher.PROB_FLOOR)
    assert (probs[torch.arange(12), y] < _fisher.PROB_FLOOR).any()  # the floor is exercised
    np.testing.assert_allclose(np.sort(rows.residual[labels]), np.sort(1 / np.sqrt(p_label)), rtol=1e-5)
    # the floor scales the row and its residual alike: A^T r is still the summed gradient
    G = per_sample_gradients(model, params, collect((X, y), None, torch.device("cpu"))).numpy()
    np.testing.assert_allclose(rows.A.T @ rows.residual, G.sum(0), rtol=1e-4, atol=1e-5)
    head = rows.head(5)
    assert head.n_samples == 5 and head.A.shape[0] == rows.sample_rows[5]


def test_empirical_rows_are_the_per_sample_gradients():
    model = mlp(2)
    X, y = data(2, 7, 5, 3)
    params = select_parameters(model)
    batches = collect((X, y), None, torch.device("cpu"))
    rows = fisher_rows(model, params, batches, fisher="empirical", weights=flat_weights(params))
    np.testing.assert_array_equal(rows.A, per_sample_gradients(model, params, batches).numpy())
    np.testing.assert_array_equal(rows.residual, np.ones(7))
    np.testing.assert_array_equal(rows.sample_rows, np.arange(8))


def test_local_model_with_a_residual_has_the_mean_gradient_and_the_sample_ridge():
    rng = np.random.default_rng(0)
    A, w, r = rng.standard_normal((12, 5)), rng.standard_normal(5), rng.standard_normal(12)
    problem = L0Regression.from_gradients(A, w, 3, l2=0.5, first_order=True, residual=r, n_samples=4)
    assert problem.ridge == 4 * 0.5
    np.testing.assert_allclose(-A.T @ (problem.b - A @ w), A.T @ r)  # gradient of Q at w_bar: n g = A^T r
    plain = L0Regression.from_gradients(A, w, 3, l2=0.5, first_order=True)
    np.testing.assert_allclose(plain.b, A @ w - 1.0)
    assert plain.ridge == 12 * 0.5
    with pytest.raises(ValueError, match="residual"):
        L0Regression.from_gradients(A, w, 3, l2=0.5, first_order=True, residual=r[:5])
    with pytest.raises(ValueError, match="n_samples"):
        L0Regression.from_gradients(A, w, 3, l2=0.5, n_samples=13)


def test_prune_with_the_true_fisher_one_shot_and_multi_stage():
    model = mlp(3, (8, 6, 4)).float()
    X, y = data(3, 60, 8, 4)
    X = X.float()
    report = cpt.prune(model, (X, y), method="chita", sparsity=0.5, fisher="true", progress=False)
    assert report.info["gradients"] == "vmap"
    kept = sum(layer.kept for layer in report.layers)
    assert kept == report.k and report.k == round(0.5 * sum(layer.params for layer in report.layers))
    model2 = mlp(3, (8, 6, 4)).float()
    report2 = cpt.prune(model2, (X, y), method="chita++", sparsity=0.7, stages=3, polish_stages=1, fisher="true", progress=False)
    assert sum(layer.kept for layer in report2.layers) <= report2.k
    assert all(np.isfinite(p.detach().numpy()).all() for p in model2.parameters())


def test_true_fisher_rejects_other_losses_and_shapes_before_any_gradient():
    model = mlp(4, (5, 4, 3)).float()
    X, y = data(4, 40, 5, 3)
    X = X.float()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="fisher: 'true' is the Fisher of the cross-entropy"):
        cpt.prune(model, (X, y), method="chita", sparsity=0.5, fisher="true", progress=False,
                  loss_fn=lambda out, t: nn.functional.cross_entropy(out, t, label_smoothing=0.2))
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="fisher: 'true' needs integer class targets"):
        cpt.prune(model, (X, torch.randn(40, 3)), method="chita", sparsity=0.5, fisher="true", progress=False,
                  loss_fn=lambda out, t: ((out - t) ** 2).mean())
    ignored = y.clone()
    ignored[0] = -100
    with pytest.raises(ValueError, match=r"fisher: 'true' needs every target to be a class index in \[0, 3\)"):
        cpt.prune(model, (X, ignored), method="chita", sparsity=0.5, fisher="true", progress=False)
    certain = nn.Sequential(nn.Linear(5, 3))
    with torch.no_grad():
        certain[0].weight.zero_()
        certain[0].bias.copy_(torch.tensor([0.0, 0.0, 2000.0]))  # labels 0 and 1 get probability exactly 0
    with pytest.raises(ValueError, match="fisher: 'true' needs every label to have a positive probability"):
        cpt.prune(certain, (X, torch.zeros(40, dtype=torch.long)), method="chita", sparsity=0.5, fisher="true", progress=False)
    token = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"fisher: 'true' needs class scores of shape \(samples, classes\)"):
        cpt.prune(token, (torch.randn(40, 2, 5), torch.randint(0, 3, (40, 2))), method="chita", sparsity=0.5, fisher="true", progress=False)
    # the NLL loss of log-softmax outputs is the same cross-entropy: accepted
    logsoft = nn.Sequential(mlp(4, (5, 4, 3)).float(), nn.LogSoftmax(dim=1))
    cpt.prune(logsoft, (X, y), method="chita", sparsity=0.5, fisher="true", loss_fn=nn.functional.nll_loss, progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "chita", "fisher": "gauss"}, "fisher: expected one of 'empirical', 'true'"),
    ({"method": "magnitude", "fisher": "true"}, "fisher: only the gradient-based methods"),
    ({"method": "wanda", "fisher": "true"}, "fisher: only the gradient-based methods"),
    ({"method": "chita++", "fisher": "empirical", "distill": True}, "distill: .* needs fisher='true'"),
    ({"method": "magnitude", "distill": True}, "distill: only the gradient-based methods"),
])
def test_fisher_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cpt.Pruner(sparsity=0.5, **kwargs)
    with pytest.raises(TypeError, match="distill: expected True, False or None"):
        cpt.Pruner(sparsity=0.5, method="chita", distill="yes")


def soft_cross_entropy_gradient(model: nn.Module, X: torch.Tensor, q: torch.Tensor) -> np.ndarray:
    """Gradient over the weight matrices of sum_i CE(softmax(z_i), q_i), by autograd."""
    model.zero_grad()
    loss = -(q * torch.log_softmax(model(X), 1)).sum()
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.dim() == 2]).numpy()


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), classes=st.integers(2, 5))
def test_distilled_rows_have_the_teachers_gradient_and_the_same_curvature(seed, n, classes):
    """With a teacher, A^T A is unchanged (the Fisher does not depend on the target) and A^T r is
    the gradient of the cross-entropy against the teacher's probabilities."""
    model, teacher = mlp(seed, (4, 3, classes)), mlp(seed + 1, (4, 3, classes))
    X, y = data(seed, n, 4, classes)
    params = select_parameters(model)
    batches = collect((X, y), None, torch.device("cpu"))
    q = torch.softmax(teacher(X), 1).detach()
    taught = [dataclasses.replace(batches[0], teacher=q)]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_fisher, "MIN_CLASS_PROB", 0.0)
        mp.setattr(_fisher, "PROB_FLOOR", 0.0)
        plain = fisher_rows(model, params, batches, fisher="true", weights=flat_weights(params), dtype=torch.float64)
        rows = fisher_rows(model, params, taught, fisher="true", weights=flat_weights(params), dtype=torch.float64)
    np.testing.assert_allclose(rows.A, plain.A, rtol=1e-12)
    np.testing.assert_allclose(rows.A.T @ rows.residual, soft_cross_entropy_gradient(model, X, q), rtol=1e-8, atol=1e-10)


def test_teacher_rows_keep_the_teachers_classes_and_renormalise():
    model = mlp(0, (5, 4, 6), scale=8.0)  # confident: most classes below 1 %
    X, y = data(1, 12, 5, 6)
    params = select_parameters(model)
    q = torch.softmax(mlp(7, (5, 4, 6), scale=3.0)(X), 1).detach()  # another model's beliefs
    batch = dataclasses.replace(collect((X, y), None, torch.device("cpu"))[0], teacher=q)
    rows = fisher_rows(model, params, [batch], fisher="true", weights=flat_weights(params))
    probs = torch.softmax(model(X), 1).detach()
    kept = (probs >= _fisher.MIN_CLASS_PROB) | (q >= _fisher.MIN_CLASS_PROB)  # the label itself is not a target
    np.testing.assert_array_equal(np.diff(rows.sample_rows), kept.sum(1).numpy())
    s = np.sqrt(np.maximum(probs[kept].numpy(), _fisher.PROB_FLOOR))
    target = torch.where(kept, q, torch.zeros_like(q))
    target = (target / target.sum(1, keepdim=True))[kept].numpy()
    np.testing.assert_allclose(rows.residual * s, target, rtol=1e-5)
    np.testing.assert_allclose(np.add.reduceat(rows.residual * s, rows.sample_rows[:-1]), np.ones(12), rtol=1e-5)
    assert batch.slice(2, 5).teacher.shape == (3, 6) and torch.equal(batch.take(torch.tensor([4, 4])).teacher, q[[4, 4]])


def test_curvature_defaults_follow_the_method_and_the_data():
    """chita++ on a classifier: the true Fisher with distillation; one-shot chita and other
    losses: the empirical Fisher; an explicit choice is kept."""
    X, y = data(6, 80, 8, 4)
    X = X.float()
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita++", sparsity=0.7, stages=3, polish_stages=1, progress=False)
    assert report.info["fisher"] == "true" and report.info["distill"] is True
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita", sparsity=0.7, progress=False)
    assert report.info["fisher"] == "empirical" and report.info["distill"] is False
    mse = lambda out, t: ((out - nn.functional.one_hot(t, 4).float()) ** 2).mean()  # noqa: E731
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita++", sparsity=0.7, stages=3, loss_fn=mse, progress=False)
    assert report.info["fisher"] == "empirical" and report.info["distill"] is False
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita++", sparsity=0.7, stages=3, distill=False, progress=False)
    assert report.info["fisher"] == "true" and report.info["distill"] is False
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita", sparsity=0.7, fisher="true", distill=True, progress=False)
    assert report.info["fisher"] == "true" and report.info["distill"] is True
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita", sparsity=0.7, distill=True, progress=False)
    assert report.info["fisher"] == "true" and report.info["distill"] is True  # distillation asks for the true Fisher
    with pytest.raises(ValueError, match="distill: distillation needs the true Fisher"):
        cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="chita++", sparsity=0.7, stages=2, distill=True, loss_fn=mse, progress=False)
    # FALCON's FLOP-budgeted solves keep the empirical Fisher by default (not measured with the true one)
    report = cpt.prune(mlp(6, (8, 6, 4)).float(), (X, y), method="falcon++", sparsity=0.5, flop_budget=0.6, stages=2, progress=False)
    assert report.info["fisher"] == "empirical" and report.info["distill"] is False


def test_distillation_keeps_the_first_order_term_small_at_the_unpruned_model():
    """At the unpruned weights the model is its own teacher: A^T r vanishes (up to the dropped classes)."""
    model = mlp(8, (6, 5, 4))
    X, y = data(8, 30, 6, 4)
    params = select_parameters(model)
    batch = collect((X, y), None, torch.device("cpu"))[0]
    taught = _fisher.with_teacher(model, params, [batch], flat_weights(params), None)
    rows = fisher_rows(model, params, taught, fisher="true", weights=flat_weights(params), dtype=torch.float64)
    labels = fisher_rows(model, params, [batch], fisher="true", weights=flat_weights(params), dtype=torch.float64)
    assert np.linalg.norm(rows.A.T @ rows.residual) < 1e-2 * np.linalg.norm(labels.A.T @ labels.residual)


def test_true_fisher_in_blocks_and_with_a_flop_budget(caplog):
    """The blocked path (max_memory too small for one matrix: the Fisher's scale estimated on the fly) and FALCON's FLOP budget."""
    X, y = data(5, 60, 8, 4)
    X = X.float()
    model = mlp(5, (8, 6, 4)).float()
    with caplog.at_level("INFO", logger="combprune.torch.prune"):
        report = cpt.prune(model, (X, y), method="chita", sparsity=0.6, fisher="true", max_memory=20_000, progress=False)
    assert "blocks in turn" in caplog.text
    assert sum(layer.kept for layer in report.layers) == report.k
    assert report.info["auto"]["mode"] == "once" and report.info["fisher"] == "true"
    model = mlp(5, (8, 6, 4)).float()
    report = cpt.prune(model, (X, y), method="falcon", sparsity=0.5, flop_budget=0.6, fisher="true", progress=False)
    report.check_budgets()
    assert report.effective_flops <= report.flop_limit * (1 + 1e-9)
