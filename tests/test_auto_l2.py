"""``l2="auto"`` / ``first_order="auto"``: the ridge chosen on held-back calibration samples."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from sklearn.datasets import load_digits
from torch import nn

import combprune.torch as cpt


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)


@pytest.fixture(scope="module")
def trained(digits):
    X, y = digits
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(X[:1200]), y[:1200]).backward()
        opt.step()
    return model


def _clone(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def test_auto_chooses_the_candidate_with_the_lowest_held_back_loss(trained, digits):
    X, y = digits
    model = _clone(trained)
    report = cpt.prune(model, [(X[:100], y[:100]), (X[100:200], y[100:200])], method="chita", sparsity=0.8, first_order="auto", progress=False)
    auto = report.info["auto"]
    cands = auto["candidates"]
    assert len(cands) >= 3 and {c["first_order"] for c in cands} == {False, True}
    best = min(cands, key=lambda c: c["held_out_loss"])
    assert (auto["l2"], auto["first_order"]) == (best["l2"], best["first_order"])
    assert report.info["l2"] == auto["l2"] and report.info["first_order"] == auto["first_order"]
    assert auto["held_back_samples"] == 40
    assert all(np.isclose(c["l2"], c["l2_relative"] * auto["fisher_scale"]) for c in cands)
    assert report.sparsity >= 0.8


def test_default_chooses_l2_without_the_first_order_term(trained, digits):
    """Defaults: l2 chosen on held-back samples, first_order=False (no candidate with the term)."""
    X, y = digits
    calib = [(X[:100], y[:100]), (X[100:200], y[100:200])]
    report = cpt.prune(_clone(trained), calib, method="chita", sparsity=0.8, progress=False)
    cands = report.info["auto"]["candidates"]
    assert len(cands) >= 2 and all(c["first_order"] is False for c in cands)
    assert report.info["first_order"] is False
    explicit = cpt.prune(_clone(trained), calib, method="chita", sparsity=0.8, first_order=False, progress=False)
    assert [c["l2"] for c in explicit.info["auto"]["candidates"]] == [c["l2"] for c in cands]


def test_auto_is_invariant_to_the_scale_of_the_loss(trained, digits):
    """The grid is relative to the Fisher: scaling the loss by 10 (Fisher by 100) changes nothing."""
    X, y = digits
    calib = (X[:160], y[:160])
    a, b = _clone(trained), _clone(trained)
    ra = cpt.prune(a, calib, method="chita", sparsity=0.7, l2="auto", first_order=False, progress=False)
    rb = cpt.prune(b, calib, method="chita", sparsity=0.7, l2="auto", first_order=False, progress=False,
                   loss_fn=lambda out, t: 10.0 * nn.functional.cross_entropy(out, t))
    assert [c["l2_relative"] for c in ra.info["auto"]["candidates"]] == [c["l2_relative"] for c in rb.info["auto"]["candidates"]]
    assert rb.info["auto"]["fisher_scale"] == pytest.approx(100 * ra.info["auto"]["fisher_scale"], rel=1e-3)
    assert 100 * ra.info["auto"]["l2"] == pytest.approx(rb.info["auto"]["l2"], rel=1e-3)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa != 0, pb != 0)


def test_explicit_auto_with_too_few_samples_says_how_many_are_needed(trained, digits):
    X, y = digits
    model = _clone(trained)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=r"calibration: 20 calibration samples are too few.*need at least 40"):
        cpt.prune(model, (X[:20], y[:20]), method="chita", sparsity=0.5, l2="auto", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_default_falls_back_to_fixed_values_loudly_on_tiny_calibration(trained, digits, caplog):
    X, y = digits
    with caplog.at_level(logging.WARNING, logger="combprune.torch._autotune"):
        report = cpt.prune(_clone(trained), (X[:20], y[:20]), method="chita", sparsity=0.5, progress=False)
    assert "too few" in caplog.text
    assert report.info["auto"]["skipped"] and report.info["l2"] == 1e-3 and report.info["first_order"] is False


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"l2": -1.0}, "l2"), ({"l2": float("nan")}, "l2"), ({"l2": "autos"}, "l2"), ({"l2_grid": []}, "l2_grid"),
     ({"l2_grid": [1.0, -2.0]}, "l2_grid"), ({"holdout": 0.0}, "holdout"), ({"holdout": 0.7}, "holdout"),
     ({"first_order": "yes"}, "first_order")],
)
def test_bad_auto_options_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cpt.Pruner("chita", sparsity=0.5, **kwargs)


def test_flat_loss_is_an_error_that_points_to_layerwise_methods(digits):
    X, y = digits
    model = nn.Sequential(nn.Linear(64, 10))
    with pytest.raises(ValueError, match="gradients are zero"):
        cpt.prune(model, (X[:100], y[:100]), method="chita", sparsity=0.5, progress=False,
                  loss_fn=lambda out, t: 0.0 * out.sum())


# The walk over the grid -----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(st.integers(2, 9), st.data())
def test_bracket_finds_the_minimum_of_a_unimodal_loss_in_few_steps(size, data):
    from combprune.torch._autotune import _bracket

    grid = [10.0 ** (2 - i) for i in range(size)]  # descending ridges
    best = data.draw(st.integers(0, size - 1), label="minimum")
    first = data.draw(st.integers(0, size - 1), label="start")
    values = {c: abs(i - best) + 0.5 * (i > best) for i, c in enumerate(grid)}  # unimodal, asymmetric
    seen: list[float] = []

    def loss_at(c, warm_from):
        assert warm_from is None or warm_from in seen  # warm starts come from evaluated points
        if c not in seen:
            seen.append(c)
        return values[c]

    _bracket(grid, first, loss_at)
    assert grid[best] in seen
    assert len(seen) <= abs(best - first) + 3


def test_per_stage_choice_records_every_stage_and_once_does_not(trained, digits):
    X, y = digits
    calib = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    per = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.8, stages=3, progress=False)
    assert per.info["auto"]["mode"] == "per-stage" and len(per.info["auto"]["stages"]) == 3
    assert all("l2" in s and s["l2"] > 0 for s in per.stages)
    assert per.info["l2"] == per.stages[-1]["l2"] and per.info["first_order"] == per.stages[-1]["first_order"]
    for s in per.info["auto"]["stages"]:  # each stage keeps its own best candidate
        assert s["l2"] == min(s["candidates"], key=lambda c: c["held_out_loss"])["l2"]
    assert len({s["first_order"] for s in per.stages}) == 1  # chosen at the first stage, then kept
    once = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.8, stages=3, auto_stages="once", progress=False)
    assert once.info["auto"]["mode"] == "once" and "stages" not in once.info["auto"]
    assert all("l2" not in s for s in once.stages)
    assert per.sparsity >= 0.8 and once.sparsity >= 0.8


def test_fresh_samples_use_every_whole_subset(trained, digits, caplog):
    X, y = digits
    calib = [(X[i : min(i + 100, 350)], y[i : min(i + 100, 350)]) for i in range(0, 350, 100)]  # 3.5 subsets of 100
    r = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.7, stages=4, n_samples=100, fresh_samples=True, l2=1e-3,
                  first_order=False, progress=False)
    assert r.info["fresh_samples"] == 3 and r.info["n_samples"] == 100
    same = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.7, stages=4, n_samples=100, l2=1e-3, first_order=False, progress=False)
    assert same.info["fresh_samples"] is None
    assert [s["objective"] for s in r.stages][1:] != [s["objective"] for s in same.stages][1:]
    with caplog.at_level(logging.WARNING, logger="combprune.torch.prune"):
        one = cpt.prune(_clone(trained), calib[:1], method="chita++", sparsity=0.7, stages=2, n_samples=100, fresh_samples=True,
                        l2=1e-3, first_order=False, progress=False)
    assert one.info["fresh_samples"] == 1 and "not two subsets" in caplog.text


@pytest.mark.parametrize(("kwargs", "name"), [({"auto_stages": "each"}, "auto_stages"), ({"fresh_samples": 1}, "fresh_samples"),
                                              ({"fresh_samples": True, "n_samples": None}, "fresh_samples")])
def test_bad_stage_options_name_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cpt.Pruner("chita++", sparsity=0.5, **kwargs)


def test_report_says_when_the_solution_is_magnitude_pruning(trained, digits, caplog):
    X, y = digits
    with caplog.at_level(logging.WARNING, logger="combprune.torch.prune"):
        big = cpt.prune(_clone(trained), (X[:200], y[:200]), method="chita", sparsity=0.8, l2=1e6, first_order=False, progress=False)
    assert big.info["same_support_as_magnitude"] is True and "magnitude pruning's support" in caplog.text
    auto = cpt.prune(_clone(trained), (X[:200], y[:200]), method="chita", sparsity=0.8, progress=False)
    assert auto.info["same_support_as_magnitude"] is False


def test_per_stage_falls_back_to_once_when_the_gradients_need_blocks(trained, digits, caplog):
    X, y = digits
    with caplog.at_level(logging.WARNING, logger="combprune.torch.prune"):
        r = cpt.prune(_clone(trained), (X[:200], y[:200]), method="chita++", sparsity=0.8, stages=2, max_memory=400 * (2 * 200 * 4 + 128),
                      progress=False)
    assert r.info["auto"]["mode"] == "once" and "choosing once instead" in caplog.text
    assert r.sparsity >= 0.8
