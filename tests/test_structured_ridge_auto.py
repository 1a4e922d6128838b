"""``ridge="auto"`` for the structured methods: OSSCAR's ridge factor chosen per unit on held-back samples."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import combprune.torch as cpt
from combprune.torch._calibration import Batch, collect
from combprune.torch._structured_ridge import AUTO_RIDGE_GRID, HOLDOUT_EVERY, split_batches
from combprune.torch.sequential import prune_sequential
from combprune.torch.structured import prune_structured


def one_unit(seed: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear: one neuron unit (consumer "2")."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 4))


def data(seed: int, n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 100)
    return torch.randn(n, 6, generator=g)


def held_inputs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    fit, held = split_batches(collect(x, None, torch.device("cpu")))
    return torch.cat([b.inputs for b in fit]), torch.cat([b.inputs for b in held])


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 50), sparsity=st.sampled_from([0.3, 0.5, 0.7]))
def test_choice_is_the_argmin_of_the_held_back_error_and_equals_a_fixed_run(seed, sparsity):
    """Brute force over the grid through the public path: prune a copy on the fitting samples at
    each factor, measure 1/2 ||X_held (W - W_hat)||^2 on the held-back ones; auto must pick the
    argmin, report those errors, and end exactly where a fixed run at that factor on all samples ends."""
    dense, x = one_unit(seed), data(seed)
    x_fit, x_held = held_inputs(x)
    X_held = dense[1](dense[0](x_held)).double().detach()
    W_hat = dense[2].weight.double().T.detach()
    brute = {}
    for c in AUTO_RIDGE_GRID:
        m = copy.deepcopy(dense)
        prune_structured(m, x_fit, method="osscar", sparsity=sparsity, progress=False, ridge=c)
        D = m[2].weight.double().T.detach() - W_hat
        brute[c] = 0.5 * float(((X_held @ D) ** 2).sum())
    auto = copy.deepcopy(dense)
    rep = cpt.prune(auto, x, method="osscar", sparsity=sparsity, progress=False, ridge="auto", apply="permanent")
    choice = rep.info["ridge_auto"]["2"]
    for c in AUTO_RIDGE_GRID:
        assert choice["held_errors"][c] == pytest.approx(brute[c], rel=1e-6, abs=1e-12)
    best = min(brute.values())
    assert brute[choice["factor"]] <= best * (1 + 1e-6) + 1e-12
    fixed = copy.deepcopy(dense)
    rep_fixed = cpt.prune(fixed, x, method="osscar", sparsity=sparsity, progress=False, ridge=choice["factor"], apply="permanent")
    assert rep_fixed.info["structured_plan"]["keep"] == rep.info["structured_plan"]["keep"]
    torch.testing.assert_close(auto[2].weight, fixed[2].weight, rtol=1e-6, atol=1e-8)
    assert "ridge_auto" not in rep_fixed.info


def test_grid_extremes_are_chosen_when_the_held_back_data_asks_for_them():
    """Held-back rows from the fitting distribution: a small ridge fits best. Held-back rows
    unlike the fitting ones (noise-free fitting data of a tiny subspace): shrinking toward the
    dense weights (a large ridge) reconstructs them best."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Identity(), nn.Linear(12, 3))
    basis = torch.randn(2, 6)
    fit = torch.randn(40, 2) @ basis  # inputs on a 2-d subspace
    held = torch.randn(10, 6) * 3.0  # everything else
    batches = [fit[i : i + 4] for i in range(0, 40, 4)]
    cal = [torch.cat([b, held[i : i + 1]]) for i, b in enumerate(batches)]  # 5 per batch: the last is held back
    rep = cpt.prune(copy.deepcopy(model), cal, method="osscar", sparsity=0.5, progress=False, ridge="auto")
    errors = rep.info["ridge_auto"]["2"]["held_errors"]
    assert rep.info["ridge_auto"]["2"]["factor"] == min(errors, key=errors.get) == max(AUTO_RIDGE_GRID)
    same = [torch.randn(4, 2) @ basis for _ in range(10)]
    rep = cpt.prune(copy.deepcopy(model), [torch.cat([b[:4], (torch.randn(1, 2) @ basis)]) for b in same],
                    method="osscar", sparsity=0.5, progress=False, ridge="auto")
    errors = rep.info["ridge_auto"]["2"]["held_errors"]
    assert rep.info["ridge_auto"]["2"]["factor"] == min(errors, key=errors.get) == min(AUTO_RIDGE_GRID)


@given(sizes=st.lists(st.integers(1, 13), min_size=1, max_size=6))
def test_split_holds_back_one_sample_in_five_whole_and_in_order(sizes):
    batches, start = [], 0
    for n in sizes:
        batches.append(Batch(torch.arange(start, start + n).unsqueeze(1), None, n))
        start += n
    if start < HOLDOUT_EVERY:
        with pytest.raises(ValueError, match="ridge"):
            split_batches(batches)
        return
    fit, held = split_batches(batches)
    f = torch.cat([b.inputs for b in fit]).flatten().tolist()
    h = torch.cat([b.inputs for b in held]).flatten().tolist()
    assert len(h) == start // HOLDOUT_EVERY and sorted(f + h) == list(range(start))
    assert all(b.size == b.inputs.shape[0] > 0 for b in fit + held)
    assert split_batches(batches)[1][0].inputs.tolist() == held[0].inputs.tolist()  # deterministic


@pytest.mark.parametrize("ridge", ["best", -1.0, math.nan, math.inf, True, [1e-2]])
def test_bad_ridge_names_it_and_leaves_the_model_unchanged(ridge):
    model, x = one_unit(0), data(0)
    before = copy.deepcopy(model.state_dict())
    for call in (lambda: cpt.prune(model, x, method="osscar", sparsity=0.5, progress=False, ridge=ridge),
                 lambda: prune_structured(model, x, sparsity=0.5, progress=False, ridge=ridge)):
        with pytest.raises(ValueError, match="^ridge"):
            call()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_auto_needs_samples_to_hold_back_and_no_absolute_ridge():
    model, x = one_unit(0), data(0, n=HOLDOUT_EVERY - 1)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=f"^ridge: .*at least {HOLDOUT_EVERY} samples, got {HOLDOUT_EVERY - 1}"):
        cpt.prune(model, x, method="osscar", sparsity=0.5, progress=False, ridge="auto")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="^ridge: 'auto'.*solver_options"):
        cpt.prune(model, data(0), method="osscar", sparsity=0.5, progress=False, ridge="auto", solver_options={"ridge": 0.1})
    with pytest.raises(ValueError, match=r"^solver_options\['ridge'\]"):
        cpt.prune(model, data(0), method="osscar", sparsity=0.5, progress=False, solver_options={"ridge": "auto"})
    with pytest.raises(ValueError, match=r"^solver_options\['ridge'\]"):
        cpt.prune(model, data(0), method="osscar", sparsity=0.5, progress=False, solver_options={"ridge": -1.0})
    with pytest.raises(ValueError, match="^ridge: 'auto' is offered by the structured methods"):
        cpt.Pruner("sparsegpt", sparsity=0.5, ridge="auto")


def test_sequential_engine_auto_equals_the_whole_model_path():
    """One block: the sequential engine's auto run is the whole-model auto run step for step."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=16)
    torch.manual_seed(0)
    seq = transformers.BertModel(cfg).eval()
    whole = copy.deepcopy(seq)
    g = torch.Generator().manual_seed(0)
    cal = [{"input_ids": torch.randint(0, 50, (4, 8), generator=g)} for _ in range(3)]
    rep_s = cpt.prune(seq, cal, method="osscar", sparsity=0.5, sequential=True, progress=False, ridge="auto")
    rep_w = cpt.prune(whole, cal, method="osscar", sparsity=0.5, progress=False, ridge="auto")
    assert rep_s.info["structured_plan"]["keep"] == rep_w.info["structured_plan"]["keep"]
    assert set(rep_s.info["ridge_auto"]) == set(rep_w.info["ridge_auto"]) and len(rep_w.info["ridge_auto"]) == 2
    for name, choice in rep_w.info["ridge_auto"].items():
        assert rep_s.info["ridge_auto"][name]["factor"] == choice["factor"]
        for c in AUTO_RIDGE_GRID:
            assert rep_s.info["ridge_auto"][name]["held_errors"][c] == pytest.approx(choice["held_errors"][c], rel=1e-5)
    for (n, a), (_, b) in zip(seq.named_parameters(), whole.named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=n)
    with pytest.raises(ValueError, match="^ridge: 'auto' is offered by the structured methods"):
        prune_sequential(copy.deepcopy(whole), cal, method="sparsegpt", sparsity=0.5, ridge="auto", progress=False)
