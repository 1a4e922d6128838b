"""``l2="auto"`` / ``first_order="auto"``: the ridge chosen on held-back calibration samples."""

from __future__ import annotations

import dataclasses
import importlib
import logging

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from sklearn.datasets import load_digits
from torch import nn

import combprune.multistage
import combprune.torch as cpt
from combprune.torch._autotune import best_relative, one_se_rule, search
from combprune.torch.pruner import PruneConfig


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


def test_per_stage_choice_records_every_stage_and_once_does_not(trained, digits, monkeypatch):
    X, y = digits
    calib = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    stage_solves = []
    real = combprune.multistage.solve
    monkeypatch.setattr(combprune.multistage, "solve", lambda *a, **kw: stage_solves.append(kw.get("warm_start")) or real(*a, **kw))
    per = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.8, stages=3, polish_stages=0, progress=False)
    # stages 1-2 move to their winning candidate; only the last is solved again, on every sample, from its winner
    assert len(stage_solves) == 1 and stage_solves[0] is not None and [s["solved"] for s in per.stages] == [False, False, True]
    assert per.info["auto"]["mode"] == "per-stage" and len(per.info["auto"]["stages"]) == 3
    assert all("l2" in s and s["l2"] > 0 for s in per.stages)
    assert per.info["l2"] == per.stages[-1]["l2"] and per.info["first_order"] == per.stages[-1]["first_order"]
    for s in per.info["auto"]["stages"]:  # each stage keeps its own best candidate, with or without the term
        best = min(s["candidates"], key=lambda c: c["held_out_loss"])
        if best["first_order"] and not s["first_order_test"]["kept"]:  # the term lost the one-standard-error rule
            best = min((c for c in s["candidates"] if not c["first_order"]), key=lambda c: c["held_out_loss"])
        assert (s["l2"], s["first_order"]) == (best["l2"], best["first_order"])
        assert {c["first_order"] for c in s["candidates"]} == {False, True}  # the default chooses the term per stage
    for prev, s in zip(per.info["auto"]["stages"], per.info["auto"]["stages"][1:]):  # each walk starts at its previous best
        for first_order in (False, True):
            walk = [c for c in s["candidates"] if c["first_order"] is first_order]
            assert walk[0]["l2_relative"] == prev["best_relative"][first_order]
    once = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.8, stages=3, auto_stages="once", progress=False)
    assert once.info["auto"]["mode"] == "once" and "stages" not in once.info["auto"]
    assert all("l2" not in s for s in once.stages)
    assert per.sparsity >= 0.8 and once.sparsity >= 0.8


def test_polishing_stages_are_kept_while_the_held_back_loss_falls(trained, digits):
    X, y = digits
    calib = [(X[i : i + 100], y[i : i + 100]) for i in range(0, 300, 100)]
    report = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.95, stages=3, progress=False)
    choices = report.info["auto"]["stages"]
    polish = [c.get("polish") for c in choices[3:]]
    assert 1 <= len(polish) <= 5 and all(p == "kept" for p in polish[:-1])
    assert polish[-1] == "rejected" or len(polish) == 5
    for c in choices[3:]:  # a polishing stage starts inside its budget: no walk without the term
        without = [cand for cand in c["candidates"] if not cand["first_order"]]
        assert len(without) == 1 and without[0]["starting_point"]
    assert not any(cand.get("starting_point") for c in choices[:3] for cand in c["candidates"])
    kept = [c for c in choices if c.get("polish") != "rejected"]
    for prev, c in zip(kept[2:], kept[3:]):  # every kept polishing stage lowered the held-back loss
        assert c["held_out_loss"] < prev["held_out_loss"] * (1 - 1e-3)
    if polish[-1] == "rejected":
        assert choices[-1]["held_out_loss"] >= kept[-1]["held_out_loss"] * (1 - 1e-3)
    assert len(report.stages) == len(kept) and [s["polish"] for s in report.stages] == [False] * 3 + [True] * (len(kept) - 3)
    assert all(s["k"] == report.stages[2]["k"] for s in report.stages[2:]) and report.stages[-1]["solved"] is True
    assert report.info["l2"] == kept[-1]["l2"] and report.sparsity >= 0.95
    fixed = cpt.prune(_clone(trained), calib, method="chita++", sparsity=0.95, stages=3, l2=1e-3, first_order=False, progress=False)
    assert len(fixed.stages) == 3  # no per-stage choice, no polishing
    with pytest.raises(ValueError, match="^polish_stages: "):
        cpt.Pruner("chita++", sparsity=0.5, polish_stages=-1)


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


def test_magnitude_support_chosen_by_auto_is_not_a_warning(trained, digits, caplog):
    """From a model already pruned to the budget, the chosen solution keeps magnitude's support:
    the held-back samples chose it, so it is logged as information, not warned about."""
    X, y = digits
    sparse = _clone(trained)
    cpt.prune(sparse, (X[:200], y[:200]), method="magnitude", sparsity=0.8, progress=False)
    with caplog.at_level(logging.INFO, logger="combprune.torch.prune"):
        r = cpt.prune(sparse, (X[:200], y[:200]), method="chita", sparsity=0.8, progress=False)
    assert r.info["same_support_as_magnitude"] is True and r.info["auto"]["mode"] == "once"
    hits = [rec for rec in caplog.records if "magnitude pruning's support" in rec.getMessage()]
    assert hits and all(rec.levelno == logging.INFO for rec in hits) and "chosen on held-back samples" in hits[0].getMessage()


def test_per_stage_falls_back_to_once_when_the_gradients_need_blocks(trained, digits, caplog):
    X, y = digits
    with caplog.at_level(logging.WARNING, logger="combprune.torch.prune"):
        r = cpt.prune(_clone(trained), (X[:200], y[:200]), method="chita++", sparsity=0.8, stages=2, max_memory=400 * (2 * 200 * 4 + 128),
                      progress=False)
    assert r.info["auto"]["mode"] == "once" and "choosing once instead" in caplog.text
    assert r.sparsity >= 0.8


@pytest.mark.parametrize("kw, expected", [
    ({"method": "chita++", "stages": 3}, None),  # automatic, chosen at every stage
    ({"method": "chita++", "stages": 3, "l2": 1e-3}, False),  # a fixed ridge: no search at all
    ({"method": "chita"}, False),  # one-shot: the term never won on validation
    ({"method": "chita++", "stages": 3, "first_order": True}, True),
])
def test_first_order_default_is_automatic_only_per_stage(kw, expected):
    cfg = PruneConfig.build(sparsity=0.5, **kw)
    assert cfg.first_order is expected


def test_best_relative_keeps_untried_terms():
    record = {"candidates": [
        {"first_order": False, "l2_relative": 1.0, "held_out_loss": 0.5},
        {"first_order": False, "l2_relative": 0.1, "held_out_loss": 0.4},
        {"first_order": True, "l2_relative": 100.0, "held_out_loss": float("nan")},
    ]}
    assert best_relative(record, {True: 10.0}) == {False: 0.1, True: 10.0}


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-5, 5), min_size=2, max_size=40), st.lists(st.floats(-5, 5), min_size=2, max_size=40),
       st.floats(0.01, 100), st.floats(-10, 10))
def test_first_order_test_is_the_one_standard_error_rule(a, b, scale, shift):
    n = min(len(a), len(b))
    with_term, without = np.array(a[:n]), np.array(b[:n])
    test = one_se_rule(with_term, without)
    d = with_term - without
    assert test["kept"] == bool(d.mean() < -d.std(ddof=1) / np.sqrt(n))
    moved = one_se_rule(scale * with_term + shift, scale * without + shift)  # units and offsets do not matter
    assert np.isclose(moved["mean_difference"], scale * test["mean_difference"], atol=1e-9)
    if abs(test["mean_difference"] + test["standard_error"]) > 1e-9 * (1 + abs(test["mean_difference"])):
        assert moved["kept"] == test["kept"]


@pytest.mark.parametrize("gain, kept", [(0.5, True), (0.01, False)])
def test_search_keeps_the_term_only_beyond_one_standard_error(gain, kept):
    """Both walks run; the term's best candidate has the lower mean loss, but it wins only when the
    paired per-sample gain exceeds one standard error (noise: +-1 per sample)."""
    noise = np.tile([1.0, -1.0], 50)

    def one_shot(trial, warm):
        return np.array([trial.l2, float(trial.first_order)])

    def loss(w):
        return 1.0 + abs(np.log10(w[0])) * 0.1 - (gain if w[1] else 0.0)

    def sample_losses(w):
        return loss(w) + (noise if w[1] else 0.0)

    cfg = PruneConfig.build(method="chita++", sparsity=0.5, stages=3)
    chosen, record, _ = search(cfg, 1.0, one_shot, loss, None, sample_losses=sample_losses)
    assert {c["first_order"] for c in record["candidates"]} == {False, True}
    assert chosen.first_order is kept and record["first_order"] is kept and record["first_order_test"]["kept"] is kept
    assert chosen.l2 == 1.0  # the ridge nearest the scale has the lowest loss in either walk


@pytest.mark.parametrize("gain, kept", [(0.5, True), (0.01, False)])
def test_search_takes_a_known_minimiser_without_the_term_instead_of_its_walk(gain, kept):
    """With the stage's start inside the budget, the model without the term is minimised by the
    start for every ridge: that walk becomes one candidate (no solve), the term's walk is unchanged
    and still has to beat the start by one standard error."""
    noise = np.tile([1.0, -1.0], 50)
    start = np.array([7.0, 0.0])
    solved = []

    def one_shot(trial, warm):
        solved.append(trial.first_order)
        return np.array([trial.l2, float(trial.first_order)])

    def loss(w):
        return 1.0 if w is start else 1.0 + abs(np.log10(w[0])) * 0.1 - (gain if w[1] else 0.0)

    def sample_losses(w):
        return loss(w) + (noise if w[1] else 0.0)

    cfg = PruneConfig.build(method="chita++", sparsity=0.5, stages=3)
    chosen, record, best = search(cfg, 1.0, one_shot, loss, None, start={False: 0.1, True: 1.0}, sample_losses=sample_losses,
                                  minimiser_without=start)
    assert solved and all(solved)  # no solve without the term
    without = [c for c in record["candidates"] if not c["first_order"]]
    assert len(without) == 1 and without[0]["starting_point"] and without[0]["l2_relative"] == 0.1
    assert chosen.first_order is kept and (best is start) is not kept
    assert best_relative(record, {False: 0.1, True: 1.0})[False] == 0.1



def test_a_final_solve_that_raises_the_calibration_loss_is_replaced_by_the_chosen_candidate(monkeypatch, caplog):
    """The one-shot solve on all samples after l2="auto" is the one point no held-back loss
    measured: when it raises the calibration loss beyond one standard error (here: a solver
    that returns its solution scaled 30x, same support), the chosen candidate is the result."""
    torch.manual_seed(0)
    X, y = torch.randn(100, 6), torch.randint(0, 3, (100,))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    engine = importlib.import_module("combprune.torch.prune")  # the module (cpt.prune is the function)
    real = engine.solve
    rows = []

    def corrupting(problem, solver=None, **kw):
        res = real(problem, solver, **kw)
        rows.append(problem.A.shape[0])
        if problem.A.shape[0] == 100:  # the final solve: every calibration sample
            res = dataclasses.replace(res, x=res.x * 30.0)
        return res

    monkeypatch.setattr(engine, "solve", corrupting)
    with caplog.at_level(logging.INFO, logger="combprune.torch.prune"):
        report = cpt.prune(model, (X, y), method="chita", sparsity=0.5, progress=False)
    assert rows[-1] == 100 and all(r == 80 for r in rows[:-1])  # candidates on the kept 80, then the final solve
    assert "raised their loss beyond one standard error" in caplog.text
    loss = nn.functional.cross_entropy(model(X), y).item()
    assert loss < 5.0 and sum(layer.kept for layer in report.layers) == report.k
