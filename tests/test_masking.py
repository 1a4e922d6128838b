"""Pruned weights stay exactly zero during training (combprune.torch.masking)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from combprune.torch.masking import MaskedTraining, apply_masks, clear_optimizer_state, get_masks, make_permanent, masked_parameters, parameter_order, zero_pruned

OPTIMISERS = {
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adam-amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3, amsgrad=True),
}


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def _random_masks(model, keep=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"{i}.weight": torch.rand(model[i].weight.shape, generator=g) < keep for i in (0, 2)}


def _pruned_values(model, masks):
    out = []
    for name, orig, _ in masked_parameters(model):
        out.append(orig.detach()[~masks[name]])
    model(torch.randn(2, 8))  # recompute weight = orig * mask
    out += [model[i].weight.detach()[~masks[f"{i}.weight"]] for i in (0, 2)]
    return torch.cat(out)


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_cleared_state_keeps_pruned_weights_zero(name):
    """Momentum / Adam moments built up before pruning are cleared: zeros stay exactly zero."""
    model = _mlp()
    opt = OPTIMISERS[name](model.parameters())
    _train(model, opt, 5)  # optimiser state exists for every entry
    masks = _random_masks(model)
    before = {n: model[int(n[0])].weight.detach().clone() for n in masks}
    apply_masks(model, masks)
    clear_optimizer_state(opt, model)
    _train(model, opt, 10, seed=2)
    vals = _pruned_values(model, masks)
    assert vals.numel() > 0 and torch.equal(vals, torch.zeros_like(vals))
    # the kept weights did train
    assert any(not torch.equal(model[int(n[0])].weight_orig.detach()[m], before[n][m]) for n, m in masks.items())


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_without_clearing_the_state_zeros_drift(name):
    """Why the state is cleared: stale momentum moves pruned entries of weight_orig."""
    model = _mlp()
    opt = OPTIMISERS[name](model.parameters())
    _train(model, opt, 5)
    masks = _random_masks(model)
    apply_masks(model, masks)
    _train(model, opt, 3, seed=2)
    orig = torch.cat([o.detach()[~masks[n]] for n, o, _ in masked_parameters(model)])
    assert orig.abs().max() > 0


class _Jitter(torch.optim.Optimizer):
    """An optimiser that moves every entry, gradient or not (worst case for masks)."""

    def __init__(self, params):
        super().__init__(params, {"lr": 0.1})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(group["lr"] * (1.0 + (p.grad if p.grad is not None else 0)))


@pytest.mark.parametrize("name", sorted(OPTIMISERS) + ["jitter"])
def test_masked_training_hooks_for_any_optimiser(name):
    model = _mlp()
    opt = _Jitter(model.parameters()) if name == "jitter" else OPTIMISERS[name](model.parameters())
    _train(model, opt, 3)
    masks = _random_masks(model, seed=3)
    apply_masks(model, masks)  # state deliberately not cleared: the hooks alone must hold
    seen_grads = []
    with MaskedTraining(model, opt):
        opt.register_step_pre_hook(lambda o, a, k: seen_grads.append(model[0].weight_orig.grad[~masks["0.weight"]].clone()))
        _train(model, opt, 6, seed=4)
        vals = _pruned_values(model, masks)
        assert torch.equal(vals, torch.zeros_like(vals))
        assert all(torch.equal(g, torch.zeros_like(g)) for g in seen_grads)
    # hooks removed: the jitter optimiser now moves pruned entries again
    if name == "jitter":
        _train(model, opt, 1)
        assert model[0].weight_orig.detach()[~masks["0.weight"]].abs().min() > 0


def test_masks_changed_after_attaching_are_honoured():
    model = _mlp()
    opt = _Jitter(model.parameters())
    with MaskedTraining(model, opt):
        _train(model, opt, 2)
        masks = _random_masks(model, keep=0.5)
        apply_masks(model, masks)
        _train(model, opt, 2)
        tighter = {n: m & _random_masks(model, keep=0.5, seed=9)[n] for n, m in masks.items()}
        apply_masks(model, tighter)
        _train(model, opt, 2)
        vals = _pruned_values(model, tighter)
        assert torch.equal(vals, torch.zeros_like(vals))


def test_apply_and_get_masks_round_trip_and_keep_parameter_identity():
    model = _mlp()
    w0 = model[0].weight
    masks = _random_masks(model)
    apply_masks(model, masks)
    assert model[0].weight_orig is w0  # an optimiser holding the parameter keeps working
    got = get_masks(model)
    assert set(got) == {"0.weight", "2.weight"} and all(torch.equal(got[n], masks[n]) for n in masks)
    x = torch.randn(4, 8)
    dense = _mlp()
    with torch.no_grad():
        for i in (0, 2):
            dense[i].weight.copy_(model[i].weight_orig * masks[f"{i}.weight"])
            dense[i].bias.copy_(model[i].bias)
    assert torch.allclose(model(x), dense(x))


def test_clear_state_reset_drops_everything():
    model = _mlp()
    opt = torch.optim.Adam(model.parameters())
    _train(model, opt, 2)
    apply_masks(model, _random_masks(model))
    assert clear_optimizer_state(opt, model, reset=True) == 4
    assert len(opt.state) == 0
    _train(model, opt, 1)  # works afresh
    assert opt.state[model[0].weight_orig]["step"] == 1


def test_zero_pruned_and_bad_input():
    model = _mlp()
    masks = _random_masks(model)
    apply_masks(model, masks)
    with torch.no_grad():
        model[0].weight_orig.add_(1.0)
    zero_pruned(model)
    assert torch.equal(model[0].weight_orig.detach()[~masks["0.weight"]], torch.zeros(int((~masks["0.weight"]).sum())))
    with pytest.raises(ValueError, match="^masks"):
        apply_masks(model, {"5.weight": masks["0.weight"]})
    with pytest.raises(ValueError, match="^masks"):
        apply_masks(model, {"0.weight": masks["2.weight"]})
    with pytest.raises(TypeError, match="^optimizer"):
        clear_optimizer_state("sgd", model)
    with pytest.raises(TypeError, match="^optimizer"):
        MaskedTraining(model, None)

_OPTS = {
    "sgd": lambda p, m, wd: torch.optim.SGD(p, lr=0.05, momentum=m, weight_decay=wd),
    "adam": lambda p, m, wd: torch.optim.Adam(p, lr=1e-2, betas=(m, 0.99), weight_decay=wd),
    "adamw": lambda p, m, wd: torch.optim.AdamW(p, lr=1e-2, betas=(m, 0.99), weight_decay=wd),
    "rmsprop": lambda p, m, wd: torch.optim.RMSprop(p, lr=1e-2, momentum=m, weight_decay=wd, centered=True),
    "adagrad": lambda p, m, wd: torch.optim.Adagrad(p, lr=1e-2, weight_decay=wd),
    "nadam": lambda p, m, wd: torch.optim.NAdam(p, lr=1e-2, betas=(m, 0.99), weight_decay=wd),
}


@settings(max_examples=25, deadline=None)
@given(st.sampled_from(sorted(_OPTS)), st.floats(0.0, 0.95), st.floats(0.0, 0.1), st.floats(0.05, 0.95), st.integers(0, 10_000), st.booleans())
def test_property_zeros_stay_zero_after_clearing_state(name, momentum, wd, keep, seed, hooks):
    """Any of these optimisers, any mask: clearing the state at the event (and, or not, the
    hooks) leaves every pruned entry exactly 0.0 after further steps."""
    model = _mlp(seed % 7)
    opt = _OPTS[name](model.parameters(), momentum, wd)
    _train(model, opt, 2, seed=seed)
    masks = _random_masks(model, keep=keep, seed=seed)
    apply_masks(model, masks)
    clear_optimizer_state(opt, model)
    ctx = MaskedTraining(model, opt) if hooks else None
    _train(model, opt, 3, seed=seed + 1)
    if ctx is not None:
        ctx.remove()
    vals = _pruned_values(model, masks)
    assert torch.equal(vals, torch.zeros_like(vals))


def test_make_permanent_restores_plain_parameters_in_their_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    keys = list(model.state_dict())
    order = parameter_order(model)
    masks = _random_masks(model)
    apply_masks(model, masks)
    weights = {n: model.get_parameter(n.replace("weight", "weight_orig")) for n in masks}
    assert make_permanent(model, order) == ["0.weight", "2.weight"]
    assert list(model.state_dict()) == keys and not list(masked_parameters(model))
    for name, m in masks.items():
        assert model.get_parameter(name) is weights[name]  # same Parameter: optimisers keep working
        assert not model.get_parameter(name)[~m].any()
    assert make_permanent(model) == []
