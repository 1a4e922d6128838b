"""The end-to-end sparse-training pipeline (docs/sparse_training.md) on scikit-learn digits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import combprune.torch as cpt
from combprune.torch._training import evaluate

torch.set_num_threads(1)


def loaders(seed: int = 0):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    ds = torch.utils.data.TensorDataset
    train = torch.utils.data.DataLoader(ds(X[:1200], y[:1200]), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = torch.utils.data.DataLoader(ds(X[1200:1500], y[1200:1500]), batch_size=512)
    return train, val


def make() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def test_full_pipeline_reaches_density_and_a_plain_accurate_model():
    torch.manual_seed(0)
    train, val = loaders()
    model = make()
    res = cpt.run_pipeline(model, train, density=0.1, val_loader=val, pre_epochs=4, post_epochs=4, mask_penalty=1e-4, progress=False)
    p = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert res.density == pytest.approx(cpt.k_from_sparsity(0.9, p) / p)
    nnz = sum(int((m.weight != 0).sum()) for m in model if isinstance(m, nn.Linear))
    assert nnz <= cpt.k_from_sparsity(0.9, p)
    stages = [r["stage"] for r in res.history]
    assert stages == ["pre-training"] * 4 + ["pruning"] + ["post-training"] * 4
    betas = [r["beta"] for r in res.history if r["stage"] == "pre-training"]
    assert betas[0] == 1.0 and all(b > a for a, b in zip(betas, betas[1:]))
    assert res.history[-1]["val_accuracy"] == evaluate(model, val) > 0.85  # 10 % of the weights, chance 0.1
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    x = next(iter(val))[0]
    assert torch.equal(fresh(x), model(x))
    assert not torch.nn.utils.parametrize.is_parametrized(model) and set(res.scores) == {"0.weight", "2.weight", "4.weight"}


def test_step_annealing_reaches_beta_max_at_the_end_of_the_schedule():
    """beta_anneal="step": beta grows after every optimisation step, geometrically from 1 to
    beta_max over beta_epochs * steps per epoch, then stays there."""
    torch.manual_seed(0)
    train, val = loaders()
    model = make()
    res = cpt.run_pipeline(model, train, density=0.2, pre_epochs=3, beta_epochs=2, beta_anneal="step", post_epochs=1, beta_max=50.0,
                           soft_skip=False, soft_activation=None, progress=False)
    betas = [r["beta"] for r in res.history if r["stage"] == "pre-training"]  # recorded at each epoch's end
    steps = len(train)
    assert betas[0] == pytest.approx(50.0 ** (steps / (2 * steps)), rel=1e-9)
    assert betas[1] == 50.0 and betas[2] == 50.0
    p = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    assert res.density == pytest.approx(cpt.k_from_sparsity(0.8, p) / p)


def test_mask_budget_keeps_the_learned_density_near_the_target():
    """mask_budget: the learned mask's penalty stops at the target density, the plain one goes
    far below it with a strong lambda."""
    learned = {}
    for budget in (False, True):
        torch.manual_seed(0)
        train, _ = loaders()
        res = cpt.run_pipeline(make(), train, density=0.2, pre_epochs=3, post_epochs=1, mask_penalty=1e-2, mask_budget=budget,
                               soft_skip=False, soft_activation=None, progress=False)
        learned[budget] = [r["density"] for r in res.history if r["stage"] == "pre-training"][-1]
    assert learned[False] < 0.1
    assert 0.15 < learned[True] < 0.3


def test_plain_arm_is_dense_training_magnitude_pruning_fine_tuning():
    torch.manual_seed(0)
    train, val = loaders()
    model = make()
    res = cpt.run_pipeline(model, train, density=0.2, pre_epochs=2, post_epochs=1, zero_init=False, learned_masks=False,
                           label_smoothing=0.0, soft_activation=None, soft_skip=False, progress=False)
    assert res.scores is None and [r["stage"] for r in res.history] == ["pre-training"] * 2 + ["pruning", "post-training"]
    assert res.history[1].get("beta") is None


def test_pipeline_on_a_vgg_style_cnn_ends_with_a_plain_cnn():
    """Convolutions with pooling between them: ZerO centre taps, learned masks on conv and linear
    weights, projection skips (1x1 convolutions, a Linear after the flatten), SiLU -> ReLU."""

    def make_cnn() -> nn.Sequential:
        return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32, 10))

    torch.manual_seed(0)
    train, val = loaders()
    model = make_cnn()
    res = cpt.run_pipeline(model, train, density=0.3, val_loader=val, pre_epochs=2, post_epochs=2, progress=False)
    assert set(res.masks) == {"1.weight", "4.weight", "8.weight"}
    assert res.history[-1]["skip_alpha"] == 0.0 and res.history[-1]["relu_weight"] == 1.0
    assert [type(m) for m in model] == [type(m) for m in make_cnn()]
    fresh = make_cnn()
    fresh.load_state_dict(model.state_dict())
    x = next(iter(val))[0]
    assert torch.equal(fresh(x), model(x))
    for name, m in res.masks.items():
        assert not model.get_parameter(name)[~m].any()
    assert res.history[-1]["val_accuracy"] > 0.3  # 30 % of the weights of a tiny CNN after 4 epochs; chance 0.1


def test_pipeline_mask_guided_chita_warm_start_runs():
    torch.manual_seed(0)
    train, _ = loaders()
    model = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    res = cpt.run_pipeline(model, train, density=0.2, pre_epochs=1, post_epochs=1, prune_method="chita", warm_start="scores",
                           prune_options={"n_samples": 128}, soft_skip=False, progress=False)
    assert res.density <= 0.2 + 1e-12


def test_gradual_step_shrinks_the_masks_from_the_learned_support_to_the_target():
    """prune_epochs > 0: the pruning stage cuts to the learned support only, the post-training's
    events shrink the masks monotonically to the target within the first prune_epochs epochs, and
    the model ends plain, with exact zeros off the returned masks."""
    torch.manual_seed(0)
    train, val = loaders()
    model = make()
    res = cpt.run_pipeline(model, train, density=0.05, val_loader=val, pre_epochs=3, post_epochs=4, prune_epochs=2, mask_penalty=1e-5,
                           prune_method="magnitude", progress=False, post_restore_best=True)
    p = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    cut = next(r for r in res.history if r["stage"] == "pruning")
    learned = sum(int((s > 0).sum()) for s in res.scores.values()) / p
    assert learned > 0.05 and cut["density"] == pytest.approx(learned, abs=2 / p) and cut["gradual_to"] == 0.05
    post = [r["density"] for r in res.history if r["stage"] == "post-training"]
    assert all(b <= a for a, b in zip([cut["density"]] + post, post)) and post[0] < cut["density"]
    assert post[1:] == [pytest.approx(cpt.k_from_sparsity(0.95, p) / p)] * 3  # at the target from the end of epoch prune_epochs
    assert res.density == pytest.approx(cpt.k_from_sparsity(0.95, p) / p)
    assert res.history[-1]["restored_epoch"] >= 2  # only epochs after the last event compete
    for name, m in res.masks.items():
        assert not model.get_parameter(name)[~m].any()
    assert not any(hasattr(mod, "weight_mask") for mod in model.modules())
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    x = next(iter(val))[0]
    assert torch.equal(fresh(x), model(x)) and evaluate(model, val) > 0.5


def test_gradual_step_without_learned_masks_starts_dense_and_is_one_shot_when_learned_support_is_small():
    torch.manual_seed(0)
    train, _ = loaders()
    res = cpt.run_pipeline(make(), train, density=0.2, pre_epochs=1, post_epochs=2, prune_epochs=1, learned_masks=False, soft_skip=False, progress=False)
    assert next(r for r in res.history if r["stage"] == "pruning")["density"] == 1.0
    assert res.history[-1]["density"] == pytest.approx(res.density) and res.density <= 0.2 + 1e-12
    # a learned support already below the target: one cut to the target, no events
    res = cpt.run_pipeline(make(), train, density=0.5, pre_epochs=2, post_epochs=1, prune_epochs=1, mask_penalty=0.1, score_lr=0.1,
                           prune_method="magnitude", soft_skip=False, progress=False)
    assert res.history[1]["density"] < 0.5  # the learned support at the end of the pre-training
    cut = next(r for r in res.history if r["stage"] == "pruning")
    assert "gradual_to" not in cut and cut["density"] == pytest.approx(res.density) == pytest.approx(res.history[-1]["density"])


@pytest.mark.parametrize("options, match", [
    ({"density": 0.0}, "density"),
    ({"density": 1.2}, "density"),
    ({"density": 0.1, "pre_epochs": 0}, "pre_epochs"),
    ({"density": 0.1, "post_epochs": 0}, "post_epochs"),
    ({"density": 0.1, "learned_masks": False, "prune_method": "mask"}, "prune_method"),
    ({"density": 0.1, "soft_activation_fraction": 1.5}, "soft_activation_fraction"),
    ({"density": 0.1, "mask_penalty": -1.0}, "mask_penalty"),
    ({"density": -0.5}, "density"),
    ({"density": 0.1, "pre_epochs": 2, "beta_epochs": 3}, "beta_epochs: the temperature schedule .* longer than the pre-training"),
    ({"density": 0.1, "beta_epochs": 0}, "beta_epochs"),
    ({"density": 0.1, "beta_anneal": "batch"}, "beta_anneal"),
    ({"density": 0.1, "post_epochs": 2, "soft_skip_epochs": 3}, "soft_skip_epochs: the schedule .* longer than the post-training"),
    ({"density": 0.1, "post_epochs": 2, "soft_activation_epochs": 5}, "soft_activation_epochs"),
    ({"density": 0.1, "soft_activation_epochs": 1.5}, "soft_activation_epochs"),
    ({"density": 0.1, "post_restore_best": True}, "restore_best: needs a val_loader"),
    ({"density": 0.1, "post_max_grad_norm": -1.0}, "max_grad_norm"),
    ({"density": 0.1, "post_warmup_fraction": 1.0}, "warmup_fraction"),
    ({"density": 0.1, "max_grad_norm": 0.0}, "max_grad_norm"),
    ({"density": 0.1, "mask_budget": "yes"}, "mask_budget"),
    ({"density": 0.1, "post_epochs": 2, "prune_epochs": 3}, "prune_epochs: the gradual pruning .* longer than the post-training"),
    ({"density": 0.1, "prune_epochs": -1}, "prune_epochs"),
    ({"density": 0.1, "prune_epochs": 1, "per_layer": True}, "per_layer"),
    ({"density": 1e-5}, "density: 1e-05 keeps none of the model's 17024 prunable weights; the smallest density that keeps one is 1/17024"),
    ({"density": 1e-3, "per_layer": True}, "density: 0.001 keeps none of the layer 4.weight's 640 prunable weights"),
    ({"density": 0.1, "prune_method": "frobnicate"}, "prune_method='frobnicate' .* unknown method"),
    ({"density": 0.1, "prune_method": "chita", "prune_options": {"l2": -1.0}}, "prune_method='chita' .* l2"),
])
def test_bad_options_fail_before_training(options, match):
    train, _ = loaders()
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=match):
        cpt.run_pipeline(model, train, progress=False, **options)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bad_models_and_options_fail_before_training():
    train, _ = loaders()
    with pytest.raises(TypeError, match="frobnicate"):
        cpt.run_pipeline(make(), train, density=0.1, frobnicate=1)
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=r"^prune_options: \['n_samples'\] only apply to .* not prune_method='magnitude'"):
        cpt.run_pipeline(model, train, density=0.1, prune_method="magnitude", prune_options={"n_samples": 64}, prune_epochs=0)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="model: no prunable layer"):
        cpt.run_pipeline(nn.Sequential(nn.Flatten()), train, density=0.1, soft_activation=None, soft_skip=False)
    with pytest.raises(ValueError, match="^targets"):  # explicit targets matching nothing: named as such
        cpt.run_pipeline(make(), train, density=0.1, targets=[r"nothing\.here"])
    conv = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 10))
    w = conv[3].weight.detach().clone()
    with pytest.raises(ValueError, match="soft_skip"):  # 4 -> 4 channels, but the 3x3 kernel without padding shrinks 6x6 to 4x4
        cpt.run_pipeline(conv, train, density=0.1)
    assert torch.equal(conv[3].weight, w) and isinstance(conv[2], nn.ReLU)


@pytest.mark.parametrize("loaders_, exc, match", [
    (lambda X, y: ([(X, y)], []), ValueError, "^val_loader: no batches"),
    (lambda X, y: ([{"x": X, "y": y}], None), TypeError, r"^train_loader: expected batches of \(inputs, targets\), got dict"),
    (lambda X, y: ([(X, y.float())], None), TypeError, r"^train_loader: the targets must be class indices .* got torch.float32 of shape \(64,\)"),
    (lambda X, y: ([(X, y)], [(X, torch.nn.functional.one_hot(y, 10))]), TypeError, r"^val_loader: the targets must be class indices .* shape \(64, 10\)"),
    (lambda X, y: ([(X, y + 5)], None), ValueError, r"^train_loader: class indices must lie in \[0, 10\) for the model's 10 outputs, got 5 \.\. 1[0-4]"),
])
def test_bad_loaders_are_named_before_training(loaders_, exc, match):
    X, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    train, val = loaders_(X, y)
    model = make()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(exc, match=match):
        cpt.run_pipeline(model, train, density=0.1, val_loader=val, pre_epochs=1, post_epochs=1, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_float64_model_with_soft_skip_projections_stays_float64():
    """The soft skips' projections (64 -> 128 and 128 -> 64 here) take the layer's dtype."""
    X = torch.randn(128, 64, dtype=torch.float64)
    y = torch.randint(0, 10, (128,))
    model = make().double()
    res = cpt.run_pipeline(model, [(X[:64], y[:64]), (X[64:], y[64:])], density=0.2, pre_epochs=1, post_epochs=1, progress=False)
    assert res.density == pytest.approx(0.2, abs=1e-3)
    assert all(p.dtype == torch.float64 for p in model.parameters()) and torch.isfinite(model(X)).all()


def test_checkpoints_resume_after_the_last_saved_stage(tmp_path):
    torch.manual_seed(0)
    train, val = loaders()
    opts = dict(density=0.2, pre_epochs=2, post_epochs=1, mask_penalty=1e-4, progress=False, checkpoint_dir=tmp_path)
    model = make()
    first = cpt.run_pipeline(model, train, val_loader=val, **opts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["post-training.pt", "pre-training.pt", "pruning.pt"]
    # everything saved: a fresh model is restored without training
    again = make()
    calls = []
    res = cpt.run_pipeline(again, train, val_loader=val, on_epoch=calls.append, **opts)
    assert calls == [] and res.history == first.history
    assert list(model.state_dict()) == list(again.state_dict())
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(res.masks[k], first.masks[k]) for k in first.masks)
    # resume after pruning: only the post-training runs
    (tmp_path / "post-training.pt").unlink()
    resumed = make()
    res = cpt.run_pipeline(resumed, train, val_loader=val, on_epoch=calls.append, **opts)
    assert [r["stage"] for r in calls] == ["post-training"]
    assert [r["stage"] for r in res.history] == ["pre-training"] * 2 + ["pruning", "post-training"]
    for name, m in res.masks.items():
        assert not resumed.get_parameter(name)[~m].any()
    with pytest.raises(ValueError, match="checkpoint_dir"):
        cpt.run_pipeline(make(), train, **{**opts, "density": 0.3})


def test_unusable_checkpoints_are_named_before_training_and_leave_the_model_unchanged(tmp_path):
    train, _ = loaders()
    opts = dict(density=0.2, pre_epochs=1, post_epochs=1, progress=False, checkpoint_dir=tmp_path)
    cpt.run_pipeline(make(), train, **opts)
    (tmp_path / "post-training.pt").write_bytes((tmp_path / "post-training.pt").read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match=r"^checkpoint_dir: .*post-training\.pt cannot be read"):
        cpt.run_pipeline(make(), train, **opts)
    (tmp_path / "post-training.pt").unlink()
    torch.manual_seed(1)
    other = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU(), nn.Linear(32, 10))  # 64 -> 32 hidden
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(ValueError, match=r"^checkpoint_dir: .*pruning\.pt holds the weights of a different model \(size mismatch"):
        cpt.run_pipeline(other, train, **opts)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # the first layer matched but was put back
    (tmp_path / "a_file").write_text("x")
    model = make()
    with pytest.raises(ValueError, match=r"^checkpoint_dir: .*a_file is a file, not a directory"):
        cpt.run_pipeline(model, train, **{**opts, "checkpoint_dir": tmp_path / "a_file"})


def test_integer_targets_of_any_width_train_and_a_bad_check_leaves_batch_norm_alone():
    """int32 class indices are converted for cross-entropy; the checking forward pass runs in
    eval mode, so a run refused before training leaves the running statistics unchanged."""
    X, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    res = cpt.run_pipeline(make(), [(X, y.int())], density=0.2, pre_epochs=1, post_epochs=1, progress=False)
    assert res.density == pytest.approx(0.2, abs=1e-3)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="class indices must lie in"):
        cpt.run_pipeline(model, [(X * 10 + 3, y + 10)], density=0.2, pre_epochs=1, post_epochs=1, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and model.training
