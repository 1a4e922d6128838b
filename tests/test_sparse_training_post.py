"""Post-pruning training (docs/sparse_training.md): soft activations, soft skips, label smoothing,
frozen masks; the final model is a plain one."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from combprune.torch._training import evaluate, warmup_cosine
from combprune.torch.density_prune import prune_to_density
from combprune.torch.masking import get_masks, masked_parameters
from combprune.torch.post_training import PostTrainingConfig, SoftActivations, SoftReLU, SoftSkips, post_train, ramp

torch.set_num_threads(1)


def make_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def toy_loader(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 10, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=16, shuffle=True, generator=g)


@settings(max_examples=30, deadline=None)
@given(t=st.floats(0, 1), kind=st.sampled_from(["silu", "softplus"]))
def test_soft_relu_interpolates(t, kind):
    x = torch.linspace(-4, 4, 33, dtype=torch.float64)
    s = SoftReLU(kind)
    s.t = t
    soft = nn.functional.silu(x) if kind == "silu" else nn.functional.softplus(x)
    assert torch.allclose(s(x), (1 - t) * soft + t * torch.relu(x))
    s.t = 1.0
    assert torch.equal(s(x), torch.relu(x))


def test_ramp():
    assert [ramp(s, 10, 0.5) for s in (0, 1, 5, 9)] == [0.0, 0.2, 1.0, 1.0]


def test_soft_activations_swap_and_restore():
    model = make_mlp()
    relus = [model[1], model[3]]
    acts = SoftActivations(model)
    assert isinstance(model[1], SoftReLU) and isinstance(model[3], SoftReLU)
    acts.remove()
    assert model[1] is relus[0] and model[3] is relus[1]
    with pytest.raises(ValueError, match="soft_activation"):
        SoftActivations(nn.Sequential(nn.Linear(3, 3), nn.Tanh()))


def test_soft_skips_identity_projection_and_removal():
    torch.manual_seed(0)
    model = make_mlp()
    x = torch.randn(4, 10)
    plain = model(x).detach()
    skips = SoftSkips(model, alpha0=0.5)
    assert skips.projections[model[0]] is not None and skips.projections[model[2]] is None  # 10->16 projected, 16->16 identity
    h0 = model[0](x)
    assert torch.allclose(h0, nn.functional.linear(x, model[0].weight, model[0].bias) + 0.5 * skips.projections[model[0]](x))
    assert not torch.allclose(model(x), plain)
    skips.remove()
    assert torch.equal(model(x), plain)
    conv = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Conv2d(3, 2, 1))  # no padding: 3x3 shrinks
    SoftSkips(conv)
    with pytest.raises(ValueError, match="soft_skip"):
        conv(torch.randn(1, 3, 6, 6))
    with pytest.raises(ValueError, match="soft_skip"):
        SoftSkips(nn.Sequential(nn.Linear(3, 3)))


def test_post_train_ends_with_a_plain_model_with_exact_zeros():
    torch.manual_seed(0)
    model = make_mlp()
    loader = toy_loader()
    masks = prune_to_density(model, 0.3)
    cfg = PostTrainingConfig(epochs=4, lr=0.05, soft_activation="silu", soft_skip=True, soft_activation_fraction=1.0, soft_skip_fraction=0.5)
    hist = post_train(model, masks, loader, cfg, val_loader=loader, progress=False)
    assert len(hist) == 4 and all(0 <= r["val_accuracy"] <= 1 for r in hist)
    assert hist[-1]["relu_weight"] == 1.0 and hist[-1]["skip_alpha"] == 0.0 and abs(hist[-1]["label_smoothing"]) < 1e-12
    assert hist[0]["label_smoothing"] > 0 and hist[0]["relu_weight"] < 1 and hist[0]["skip_alpha"] > 0
    for name, m in masks.items():
        assert not model.get_parameter(name)[~m].any()
    assert all(abs(r["density"] - hist[0]["density"]) < 1e-12 for r in hist)
    fresh = make_mlp()
    fresh.load_state_dict(model.state_dict())  # same keys: no extra skip or activation state
    assert [type(m) for m in model.modules()] == [type(m) for m in fresh.modules()]
    x = torch.randn(8, 10)
    assert torch.equal(model(x), fresh(x))
    assert not model._forward_hooks and not model[0]._forward_hooks
    assert all(p.grad is None or not p.grad[~masks[n]].any() for n, p in model.named_parameters() if n in masks)


def test_post_train_constant_label_smoothing_and_plain_fine_tuning():
    torch.manual_seed(0)
    model = make_mlp()
    masks = prune_to_density(model, 0.5)
    hist = post_train(model, masks, toy_loader(), PostTrainingConfig(epochs=2, anneal_label_smoothing=False, label_smoothing=0.2, soft_activation=None, soft_skip=False), progress=False)
    assert [r["label_smoothing"] for r in hist] == [0.2, 0.2]
    assert isinstance(model[1], nn.ReLU)


def test_post_train_bad_input_before_training():
    conv = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    w = conv[0].weight.detach().clone()
    X = torch.randn(8, 3, 6, 6)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, torch.zeros(8, dtype=torch.long)), batch_size=4)
    masks = {"0.weight": torch.ones_like(w, dtype=torch.bool), "3.weight": torch.ones(2, 48, dtype=torch.bool)}
    with pytest.raises(ValueError, match="soft_skip"):
        post_train(conv, masks, loader, PostTrainingConfig(epochs=1), progress=False)
    assert torch.equal(conv[0].weight, w) and isinstance(conv[1], nn.ReLU) and not conv[0]._forward_hooks
    for bad, match in (({"epochs": 0}, "post_epochs"), ({"label_smoothing": 1.0}, "label_smoothing"),
                       ({"soft_skip_fraction": 0.0}, "soft_skip_fraction"), ({"soft_activation": "gelu"}, "soft_activation")):
        with pytest.raises(ValueError, match=match):
            post_train(make_mlp(), {"0.weight": torch.ones(16, 10, dtype=torch.bool)}, toy_loader(), PostTrainingConfig(**bad), progress=False)


def test_post_train_small_cnn_with_identity_and_projection_skips():
    torch.manual_seed(0)

    def make_cnn() -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                             nn.Conv2d(4, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3))

    model = make_cnn()
    skips = SoftSkips(model)
    convs = [model[0], model[2], model[4], model[7]]
    assert skips.projections[convs[1]] is None  # 4 -> 4, stride 1: identity
    assert skips.projections[convs[0]].stride == (1, 1) and skips.projections[convs[2]].stride == (2, 2)
    assert convs[3] not in skips.projections  # the logits layer gets no skip
    skips.remove()
    X = torch.randn(48, 1, 8, 8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, (X.mean((1, 2, 3)) > 0).long()), batch_size=16)
    masks = prune_to_density(model, 0.4)
    post_train(model, masks, loader, PostTrainingConfig(epochs=2), progress=False)
    fresh = make_cnn()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(X), model(X))
    for name, m in masks.items():
        assert not model.get_parameter(name)[~m].any()


def test_post_train_keeps_the_masks_with_the_shared_masking_mechanism():
    """During post-training the masks live on the model as torch pruning masks (combprune.torch.masking,
    as in gradual pruning): pruned entries of ``weight_orig`` are exact zeros after every epoch,
    and the end leaves plain parameters."""
    torch.manual_seed(1)
    model = make_mlp()
    masks = {"0.weight": torch.rand(16, 10) < 0.3, "2.weight": torch.rand(16, 16) < 0.3}
    seen = []

    def check(row):
        assert get_masks(model).keys() == masks.keys()
        for name, m in masks.items():
            assert torch.equal(get_masks(model)[name], m)
            orig = model.get_submodule(name.split(".")[0]).weight_orig
            assert not orig[~m].any() and orig[m].abs().sum() > 0
        seen.append(row["density"])

    before = model[0].weight.detach().clone()
    post_train(model, masks, toy_loader(), PostTrainingConfig(epochs=3, momentum=0.9, weight_decay=1e-3), progress=False, on_epoch=check)
    assert len(seen) == 3 and seen[0] == (masks["0.weight"].sum() + masks["2.weight"].sum()).item() / 416
    assert not list(masked_parameters(model)) and set(dict(model.named_parameters())) == set(dict(make_mlp().named_parameters()))
    assert not torch.equal(model[0].weight[masks["0.weight"]], before[masks["0.weight"]])  # the kept weights trained
    for name, m in masks.items():
        assert not model.get_parameter(name)[~m].any()


@pytest.mark.parametrize("masks", [{}, {"nope.weight": torch.ones(2, 3, dtype=torch.bool)}, {"0.weight": torch.ones(3, 3, dtype=torch.bool)}])
def test_post_train_bad_masks_leave_the_model_unchanged(masks):
    model = make_mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="masks"):
        post_train(model, masks, toy_loader(), PostTrainingConfig(epochs=1), progress=False)
    assert list(model.state_dict()) == list(before) and all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert isinstance(model[1], nn.ReLU) and not model[0]._forward_hooks


def test_post_train_schedules_in_epochs():
    torch.manual_seed(0)
    model = make_mlp()
    masks = prune_to_density(model, 0.5)
    cfg = PostTrainingConfig(epochs=4, soft_skip_epochs=1, soft_activation_epochs=2, soft_skip_fraction=1.0, soft_activation_fraction=1.0)
    assert cfg.fraction("soft_skip") == 0.25 and cfg.fraction("soft_activation") == 0.5
    hist = post_train(model, masks, toy_loader(), cfg, progress=False)
    assert [r["skip_alpha"] for r in hist] == [0.0] * 4  # decayed to 0 by the end of the first epoch
    assert hist[0]["relu_weight"] == pytest.approx(0.5) and [r["relu_weight"] for r in hist[1:]] == [1.0] * 3


@settings(max_examples=40, deadline=None)
@given(total=st.integers(1, 60), frac=st.floats(0, 0.95))
def test_warmup_cosine_rises_linearly_then_decays(total, frac):
    warmup = round(frac * total)
    f = [warmup_cosine(s, total, warmup) for s in range(total)]
    assert all(0 <= v <= 1 + 1e-12 for v in f)
    assert f[:warmup] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert all(a >= b - 1e-12 for a, b in zip(f[warmup:], f[warmup + 1:]))  # non-increasing after the warm-up
    if warmup < total:
        assert f[warmup] == pytest.approx(1.0)


def test_warmup_cosine_without_warmup_is_torch_cosine():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=17)
    for s in range(17):
        assert opt.param_groups[0]["lr"] == pytest.approx(0.3 * warmup_cosine(s, 17, 0))
        opt.step()
        sched.step()


def test_post_train_warmup_sets_the_learning_rate_per_epoch():
    torch.manual_seed(0)
    model = make_mlp()
    masks = prune_to_density(model, 0.5)
    loader = toy_loader()  # 6 batches: 24 steps, warm-up 12
    hist = post_train(model, masks, loader, PostTrainingConfig(epochs=4, lr=0.1, warmup_fraction=0.5), progress=False)
    assert [r["lr"] for r in hist] == pytest.approx([0.1 / 12, 0.1 * 7 / 12, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi * 6 / 12))])


def _one_step_change(max_grad_norm):
    torch.manual_seed(0)
    model = make_mlp()
    masks = prune_to_density(model, 0.5)
    X = torch.randn(16, 10) * 50
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, torch.zeros(16, dtype=torch.long)), batch_size=16)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    cfg = PostTrainingConfig(epochs=1, lr=0.5, momentum=0.0, label_smoothing=0.0, soft_activation=None, soft_skip=False, max_grad_norm=max_grad_norm)
    post_train(model, masks, loader, cfg, progress=False)
    return float((torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm())


def test_post_train_clips_the_gradient_norm():
    # one plain SGD step (lr 0.5, no momentum): the parameters move by lr * the clipped gradient
    assert _one_step_change(1e-3) == pytest.approx(0.5 * 1e-3, rel=1e-3)
    assert _one_step_change(None) > 0.5 * 1e-2


class _PoisonedLoader:
    """A loader whose passes from ``poison`` on (0-based) have NaN inputs: a diverged training."""

    def __init__(self, loader, poison: int) -> None:
        self.loader, self.poison, self.passes = loader, poison, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        bad = self.passes >= self.poison
        self.passes += 1
        for x, y in self.loader:
            yield (torch.full_like(x, float("nan")) if bad else x), y


def test_post_train_restore_best_keeps_the_best_plain_epoch():
    torch.manual_seed(0)
    model = make_mlp()
    loader = toy_loader()
    val = toy_loader(64, seed=1)
    masks = prune_to_density(model, 0.3)
    cfg = PostTrainingConfig(epochs=6, lr=0.05, soft_activation_fraction=0.5, soft_skip_fraction=0.25, restore_best=True)
    hist = post_train(model, masks, loader, cfg, val_loader=val, progress=False)
    plain = [r for r in hist if r["relu_weight"] == 1.0 and r["skip_alpha"] == 0.0]
    assert [r["epoch"] for r in plain] == [3, 4, 5, 6]  # the soft activations are annealed after epoch 3
    best = max(r["val_accuracy"] for r in plain)
    assert hist[-1]["restored_epoch"] == max(r["epoch"] for r in plain if r["val_accuracy"] == best)
    assert evaluate(model, val) == best
    for name, m in masks.items():
        assert not model.get_parameter(name)[~m].any()


def test_post_train_restore_best_stops_at_a_non_finite_loss():
    torch.manual_seed(0)
    model = make_mlp()
    val = toy_loader(64, seed=1)
    masks = prune_to_density(model, 0.3)
    cfg = PostTrainingConfig(epochs=5, soft_activation=None, soft_skip=False, restore_best=True)
    hist = post_train(model, masks, _PoisonedLoader(toy_loader(), poison=2), cfg, val_loader=val, progress=False)
    assert len(hist) == 3 and not math.isfinite(hist[-1]["loss"])
    assert hist[-1]["restored_epoch"] in (1, 2)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert evaluate(model, val) == max(r["val_accuracy"] for r in hist[:2])


def test_post_train_robustness_options_bad_input():
    model = make_mlp()
    w = model[0].weight.detach().clone()
    masks = {"0.weight": torch.ones(16, 10, dtype=torch.bool)}
    for bad, match in (({"warmup_fraction": 1.0}, "warmup_fraction"), ({"warmup_fraction": -0.1}, "warmup_fraction"),
                       ({"max_grad_norm": 0.0}, "max_grad_norm"), ({"max_grad_norm": float("inf")}, "max_grad_norm"),
                       ({"restore_best": 1}, "restore_best")):
        with pytest.raises(ValueError, match=match):
            post_train(model, masks, toy_loader(), PostTrainingConfig(**bad), val_loader=toy_loader(), progress=False)
    with pytest.raises(ValueError, match="restore_best"):
        post_train(model, masks, toy_loader(), PostTrainingConfig(restore_best=True), progress=False)
    assert torch.equal(model[0].weight, w) and isinstance(model[1], nn.ReLU) and not model[0]._forward_hooks
