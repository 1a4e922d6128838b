"""``combprune.torch.Pruner``: one validated configuration, reused on models and budgets."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import combprune.torch as cpt


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def data(n: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"sparsity": 1.5}, "sparsity"),
        ({"sparsity": 0.5, "apply": "physcal"}, "apply"),
        ({"sparsity": 0.5, "first_order": "no"}, "first_order"),
        ({"sparsity": 0.5, "stages": 0}, "stages"),
        ({"sparsity": 0.5, "l2": -1.0}, "l2"),
        ({"sparsity": 0.5, "time_limit": float("inf")}, "time_limit"),
        ({"sparsity": 0.5, "n_samples": 0}, "n_samples"),
        ({"sparsity": 0.5, "solver": "no-such-solver"}, "method"),
        ({"sparsity": 0.5, "chunk_sz": 3}, "chunk_sz"),
        ({}, "sparsity"),
    ],
)
def test_bad_configuration_is_rejected_at_construction_naming_the_argument(kwargs, name):
    with pytest.raises((ValueError, TypeError), match=name):
        cpt.Pruner("chita", **kwargs)


def test_pruner_and_prune_give_the_same_weights():
    X, y = data()
    a, b = mlp(), mlp()
    ra = cpt.prune(a, (X, y), method="chita", sparsity=0.6, l2=1e-2, progress=False)
    rb = cpt.Pruner("chita", sparsity=0.6, l2=1e-2, progress=False).prune(b, (X, y))
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    assert ra.sparsity == rb.sparsity


def test_one_pruner_prunes_several_models_and_with_budget_changes_only_the_budget():
    X, y = data()
    pruner = cpt.Pruner("magnitude", sparsity=0.5, progress=False)
    m1, m2 = mlp(0), mlp(1)
    assert pruner.prune(m1, (X, y)).sparsity == pytest.approx(0.5, abs=1 / 176)
    assert pruner.prune(m2, (X, y)).sparsity == pytest.approx(0.5, abs=1 / 176)
    harder = pruner.with_budget(sparsity=0.8)
    assert harder.config.sparsity == 0.8 and pruner.config.sparsity == 0.5
    assert harder.get_params()["progress"] is False
    assert harder.prune(m1, (X, y)).sparsity == pytest.approx(0.8, abs=1 / 176)
    with pytest.raises(ValueError, match="sparsity"):
        pruner.with_budget(sparsity=1.0)


def test_failed_prune_leaves_the_model_unchanged_and_pruner_reusable():
    X, _ = data()
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    pruner = cpt.Pruner("chita", sparsity=0.5, progress=False)
    with pytest.raises(ValueError, match="calibration"):
        pruner.prune(model, X)  # gradient methods need targets
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert pruner.prune(model, data()).sparsity >= 0.5


def test_method_table_is_the_only_source_of_solver_names():
    for name, spec in cpt.METHODS.items():
        assert cpt.resolve_method(name) is spec
    assert cpt.resolve_method("iht").kind == "gradient"  # any registered L0Regression solver
    assert cpt.resolve_method("highs").kind == "magnitude"  # any registered FlopNnzILP solver
    with pytest.raises(ValueError, match="method"):
        cpt.resolve_method("osscar-typo")


def test_layerwise_methods_run_block_by_block_through_the_pruner():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 50, (16, 8))
    report = cpt.Pruner("sparsegpt", pattern="2:4", progress=False).prune(model, {"input_ids": ids})
    assert isinstance(report, cpt.PruneReport) and report.sparsity == pytest.approx(0.5) and len(report.blocks) == 2
    assert isinstance(report, cpt.SequentialReport)  # the former name still works
    weight = model.encoder.layer[0].intermediate.dense.weight.detach()
    assert torch.all((weight.reshape(weight.shape[0], -1, 4) != 0).sum(-1) <= 2)  # 2 of every 4 inputs per output
    assert cpt.resolve_method("wanda").kind == "layerwise"
    with pytest.raises(ValueError, match="flop_budget"):
        cpt.Pruner("layerwise", flop_budget=0.5)
    with pytest.raises(ValueError, match="pattern"):
        cpt.Pruner("chita", sparsity=0.5, pattern="2:4")


@pytest.mark.parametrize("method", ["magnitude", "chita"])
def test_bfloat16_models_are_pruned_in_float64_and_written_back_in_bfloat16(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).to(torch.bfloat16)
    X, y = data()
    report = cpt.prune(model, (X.to(torch.bfloat16), y), method=method, sparsity=0.5, l2=1e-3, first_order=False, progress=False)
    assert report.sparsity >= 0.5
    assert model[0].weight.dtype == torch.bfloat16 and int((model[0].weight == 0).sum()) > 0


def test_flat_loss_warns_and_points_to_the_layerwise_methods(caplog):
    """Zero per-sample gradients (a loss that ignores the model) are said, not passed over."""
    X, y = data()
    with caplog.at_level("WARNING", logger="combprune.torch.prune"):
        report = cpt.prune(mlp(), (X, y), method="chita", sparsity=0.5, l2=1e-3, first_order=False, progress=False,
                           loss_fn=lambda out, t: (0.0 * out).sum())
    warned = [r.getMessage() for r in caplog.records if "near) zero" in r.getMessage()]
    assert len(warned) == 1 and "method='layerwise'" in warned[0]
    assert report.info["gradients_degenerate"] is True
    caplog.clear()
    with caplog.at_level("WARNING", logger="combprune.torch.prune"):
        report = cpt.prune(mlp(), (X, y), method="chita", sparsity=0.5, l2=1e-3, first_order=False, progress=False)
    assert report.info["gradients_degenerate"] is False and not any("near) zero" in r.getMessage() for r in caplog.records)


def test_calibration_without_targets_points_to_the_layerwise_methods():
    X, _ = data()
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="^calibration: .*method='layerwise'"):
        cpt.prune(model, X, method="chita", sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
