"""Gradual pruning inside training loops (combprune.torch.GradualPruner)."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from torch import nn

import combprune.torch as cpt
from combprune.torch import gradual as gradual_mod
from combprune.torch.gradual import GradualPruner
from combprune.torch.masking import get_masks, masked_parameters

sklearn = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    X, y = sklearn.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32)
    return X[:1200], torch.tensor(y[:1200]), X[1200:], torch.tensor(y[1200:])


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def _batch(X, y, step, size=64):
    g = torch.Generator().manual_seed(1000 + step)  # the batch depends on the step only: resumable
    idx = torch.randint(0, X.shape[0], (size,), generator=g)
    return X[idx], y[idx]


def _train(model, opt, pruner, X, y, first, last):
    for step in range(first, last):
        xb, yb = _batch(X, y, step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        pruner.step()


def _kept(model):
    return sum(int(m.sum()) for m in get_masks(model).values())


def _assert_pruned_zero(model):
    model(torch.zeros(1, 64))  # refresh weight = orig * mask
    for name, orig, mask in masked_parameters(model):
        module = model.get_submodule(name.rpartition(".")[0])
        assert torch.equal(orig.detach()[mask == 0], torch.zeros(int((mask == 0).sum())))
        assert torch.equal(module.weight.detach()[mask == 0], torch.zeros(int((mask == 0).sum())))


@pytest.mark.parametrize("method, opts", [("magnitude", {}), ("chita", {"n_samples": 128, "l2": 1e-2})])
def test_plain_loop_reaches_target_and_keeps_zeros(digits, method, opts):
    X, y, Xt, yt = digits
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    calib = (X[:256], y[:256])
    pruner = GradualPruner(model, calib, method=method, sparsity=0.85, start=20, end=60, every=10, optimizer=opt, progress=False, **opts)
    assert pruner.events == (20, 30, 40, 50, 60)
    masks_seen = []
    for step in range(80):
        xb, yb = _batch(X, y, step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()
        if pruner.step() is not None:
            masks_seen.append(get_masks(model))
    p = 64 * 32 + 32 * 10
    assert _kept(model) == cpt.k_from_sparsity(0.85, p)  # exactly the target at `end`
    assert [r.position for r in pruner.history] == [30, 40, 50, 60]  # the event at start (s_0 = 0) prunes nothing
    assert [r.sparsity_target for r in pruner.history] == pytest.approx([0.85 * (1 - (1 - u) ** 3) for u in (0.25, 0.5, 0.75, 1)])
    assert all(r.revived == 0 for r in pruner.history)
    # each event's pruned set contains the previous one's
    for before, after in zip(masks_seen, masks_seen[1:]):
        assert all(not bool((after[n] & ~before[n]).any()) for n in before)
    _assert_pruned_zero(model)
    model.eval()
    acc = (model(Xt).argmax(1) == yt).float().mean().item()
    assert acc > 0.8  # 15 % of the weights left, still a working classifier
    pruner.finalize()
    assert not list(masked_parameters(model))
    assert (model[0].weight == 0).float().mean() > 0.5


def test_cubic_targets_and_no_event_at_zero_sparsity(digits):
    X, y, _, _ = digits
    model = _mlp()
    pruner = GradualPruner(model, (X[:64], y[:64]), method="magnitude", sparsity=0.9, start=0, end=30, every=10, progress=False)
    # s_t = s_f + (s_0 - s_f)(1 - (t - t0)/(n dt))^3 with s_0 = 0
    assert [pruner.targets(t)[0] for t in (0, 10, 20, 30)] == pytest.approx([0.0, 0.9 * (1 - (2 / 3) ** 3), 0.9 * (1 - (1 / 3) ** 3), 0.9])
    assert pruner.step() is None and not get_masks(model)  # the event at 0 prunes nothing
    for _ in range(9):
        pruner.step()
    assert pruner.history[-1].position == 10 and pruner.history[-1].sparsity >= pruner.targets(10)[0]


def _run(X, y, steps, state=None, stop=None):
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = GradualPruner(model, (X[:128], y[:128]), method="chita", sparsity=0.8, start=10, end=40, every=10, optimizer=opt, progress=False, n_samples=128)
    first = 0
    if state is not None:
        pruner.load_state_dict(torch.load(io.BytesIO(state["pruner"])))
        model.load_state_dict(torch.load(io.BytesIO(state["model"])))
        opt.load_state_dict(torch.load(io.BytesIO(state["opt"])))
        first = pruner.position
    _train(model, opt, pruner, X, y, first, stop if stop is not None else steps)
    return model, opt, pruner


def _save(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_kill_and_resume_reaches_the_same_masks(digits):
    X, y, _, _ = digits
    full, _, full_pruner = _run(X, y, 50)
    model, opt, pruner = _run(X, y, 50, stop=25)  # "killed" after step 25 (the event at 20 done)
    state = {"pruner": _save(pruner.state_dict()), "model": _save(model.state_dict()), "opt": _save(opt.state_dict())}
    del model, opt, pruner
    resumed, _, resumed_pruner = _run(X, y, 50, state=state)
    a, b = get_masks(full), get_masks(resumed)
    assert set(a) == set(b) and all(torch.equal(a[n], b[n]) for n in a)
    for (n1, w1), (n2, w2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert n1 == n2 and torch.allclose(w1, w2, atol=1e-6), n1
    assert [r.position for r in resumed_pruner.history] == [r.position for r in full_pruner.history] == [20, 30, 40]
    assert [r.sparsity for r in resumed_pruner.history] == [r.sparsity for r in full_pruner.history]


def test_optimizer_wrapper_path_and_epoch_unit(digits):
    X, y, _, _ = digits
    model = _mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    pruner = GradualPruner(model, (X[:64], y[:64]), method="magnitude", sparsity=0.7, initial_sparsity=0.3, start=5, end=15,
                           every=5, optimizer=opt, step_with_optimizer=True, reset_optimizer=True, progress=False)
    for step in range(20):
        xb, yb = _batch(X, y, step)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()  # no pruner.step(): the optimiser hook counts
    assert pruner.done and [r.position for r in pruner.history] == [5, 10, 15]
    assert _kept(model) == cpt.k_from_sparsity(0.7, 64 * 32 + 32 * 10)
    _assert_pruned_zero(model)

    model = _mlp()
    ep = GradualPruner(model, (X[:64], y[:64]), method="magnitude", sparsity=0.5, initial_sparsity=0.2, start=1, end=3, every=1, unit="epoch",
                       progress=False)
    with pytest.raises(RuntimeError, match="^epoch_end"):
        GradualPruner(_mlp(), (X[:64], y[:64]), method="magnitude", sparsity=0.5, start=1, end=3, every=1, progress=False).epoch_end()
    assert ep.step() is None and ep.position == 0  # steps are not counted in epoch mode
    for _ in range(3):
        ep.epoch_end()
    assert [r.position for r in ep.history] == [1, 2, 3] and ep.history[-1].sparsity == pytest.approx(0.5, abs=1e-3)


def test_flop_budget_schedule_falcon_style(digits):
    X, y, _, _ = digits
    model = _mlp()
    pruner = GradualPruner(model, (X[:64], y[:64]), method="flop-magnitude", sparsity=0.6, flop_budget=0.3, schedule="linear",
                           start=1, end=3, every=1, progress=False)
    assert pruner.targets(2) == pytest.approx((0.3, 0.65))  # half-way: s = 0.6/2, f = 1 - 0.7/2
    for _ in range(3):
        pruner.step()
    last = pruner.history[-1]
    assert last.flop_budget_target == pytest.approx(0.3) and last.flop_fraction <= 0.3 + 1e-9 and last.sparsity >= 0.6 - 1e-9


def test_failing_event_state_is_exactly_restored(digits, monkeypatch):
    X, y, _, _ = digits
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = GradualPruner(model, (X[:64], y[:64]), method="magnitude", sparsity=0.5, start=2, end=4, every=2, optimizer=opt, progress=False)
    _train(model, opt, pruner, X, y, 0, 3)
    model_sd = {k: v.clone() for k, v in model.state_dict().items()}
    opt_sd = {id(p): {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
    monkeypatch.setattr(gradual_mod, "clear_optimizer_state", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        pruner._advance(4)
    assert model.state_dict().keys() == model_sd.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in model_sd.items())
    for p, s in opt.state.items():
        assert all(torch.equal(s[k], v) for k, v in opt_sd[id(p)].items())


def test_structured_gradual_then_physical(digits):
    X, y, _, _ = digits
    model = _mlp()
    pruner = GradualPruner(model, (X[:128], y[:128]), method="group-magnitude", sparsity=0.5, start=1, end=2, every=1, progress=False)
    pruner.step()
    pruner.step()
    x = X[:16]
    with torch.no_grad():
        masked_out = model(x)
    pruner.finalize()
    assert model[0].out_features == 16 and model[2].in_features == 16
    assert torch.allclose(model(x), masked_out, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(start=10, end=10, every=1), ValueError, "^end"),
        (dict(start=10, end=5, every=1), ValueError, "^end"),
        (dict(every=0), ValueError, "^every"),
        (dict(sparsity=1.0), ValueError, "^sparsity"),
        (dict(sparsity=-0.2), ValueError, "^sparsity"),
        (dict(sparsity=None), ValueError, "^sparsity"),
        (dict(method="no-such-method"), ValueError, "^method"),
        (dict(unit="batch"), ValueError, "^unit"),
        (dict(flop_budget=0.0), ValueError, "^flop_budget"),
        (dict(flop_budget=0.5, initial_flop_budget=0.4), ValueError, "^initial_flop_budget"),
        (dict(schedule=[0.5, 0.3]), ValueError, "^schedule"),
        (dict(apply="physical"), ValueError, "^apply"),
        (dict(optimizer="adam"), TypeError, "^optimizer"),
        (dict(sparsity=0.99999), ValueError, r"^sparsity: 0.99999 removes all 2368 prunable weights .* the largest sparsity that keeps one"),
    ],
)
def test_bad_input_names_the_argument(digits, kwargs, exc, match):
    X, y, _, _ = digits
    args = dict(method="magnitude", sparsity=0.5, start=0, end=10, every=5, progress=False)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        GradualPruner(_mlp(), (X[:8], y[:8]), **args)


def test_bad_calibration(digits):
    X, y, _, _ = digits
    with pytest.raises(ValueError, match="^calibration"):
        GradualPruner(_mlp(), [], method="magnitude", sparsity=0.5, start=0, end=10, every=5, progress=False)
    with pytest.raises(TypeError, match="^calibration"):
        GradualPruner(_mlp(), iter([(X[:8], y[:8])]), method="magnitude", sparsity=0.5, start=0, end=10, every=5, progress=False)


def test_events_are_logged(digits, caplog):
    X, y, _, _ = digits
    pruner = GradualPruner(_mlp(), (X[:64], y[:64]), method="magnitude", sparsity=0.5, schedule="constant", start=1, end=2, every=1,
                           progress=False)
    with caplog.at_level(logging.INFO, logger="combprune.torch.gradual"):
        pruner.step()
    assert "gradual pruning: step 1" in caplog.text
    row = pruner.history[0].to_dict()
    assert set(row) >= {"position", "sparsity", "flop_fraction", "loss_before", "loss_after", "solver", "time"}
    assert np.isfinite(row["loss_after"]) and row["loss_after"] != row["loss_before"] and row["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_events_see_zero_gradients_for_pruned_weights(digits):
    """Why the gradient methods never revive a pruned weight: its column of A is zero."""
    X, y, _, _ = digits
    model = _mlp()
    cpt.prune(model, (X[:32], y[:32]), method="magnitude", sparsity=0.6, progress=False)
    params = cpt.select_parameters(model)
    pruned = torch.cat([(~get_masks(model)[p.name]).reshape(-1) for p in params])
    batches = cpt._calibration.collect((X[:16], y[:16]), None, torch.device("cpu"), need_targets=True)
    A = cpt.per_sample_gradients(model, params, batches)
    assert A[:, pruned].abs().max() > 0  # without the hooks cpt.prune differentiates pruned entries
    handles = gradual_mod._freeze_pruned(model)
    try:
        A_frozen = cpt.per_sample_gradients(model, params, batches)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(A_frozen[:, pruned], torch.zeros_like(A_frozen[:, pruned]))
    assert torch.allclose(A_frozen[:, ~pruned], A[:, ~pruned])  # the kept columns are unchanged


def test_structured_on_inputs_alone_records_no_loss(digits):
    X, _, _, _ = digits
    pruner = GradualPruner(_mlp(), X[:128], method="osscar", sparsity=0.5, schedule="constant", start=1, end=2, every=1, progress=False)
    pruner.step()
    row = pruner.history[0]
    assert row.loss_before is None and row.loss_after is None and row.sparsity > 0
