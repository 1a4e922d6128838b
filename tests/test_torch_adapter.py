"""Tests of the torch adapter (``combprune.torch``): small models, seconds."""

from __future__ import annotations

import hashlib
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn.utils.prune as torch_prune
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

import combprune
import combprune.torch as cpt
from combprune.registry import list_solvers
from combprune.torch import _calibration
from combprune.torch._calibration import collect
from combprune.torch._flops import layer_flops, model_flops
from combprune.torch._gradients import per_sample_gradients
from combprune.torch._select import select_parameters
from combprune.torch.masking import get_masks


prune_mod = sys.modules["combprune.torch.prune"]


def registered(name: str) -> bool:
    return any(r["name"] == name and r["available"] for r in list_solvers())


needs = lambda *names: pytest.mark.skipif(not all(registered(n) for n in names), reason=f"solver(s) {names} not registered")  # noqa: E731


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 2))


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 5),
    )


def data(shape, n=24, classes=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def model_hash(model: nn.Module) -> str:
    """Hash of everything observable: state dict keys/values, parameter names, hooks."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().numpy().tobytes())
    for name, _ in model.named_parameters():
        h.update(name.encode())
    for m in model.modules():
        h.update(str(len(m._forward_pre_hooks)).encode())
        h.update(str(sorted(k for k in m.__dict__ if not k.startswith("_"))).encode())
    return h.hexdigest()


# Per-sample gradients -------------------------------------------------------------------------
@pytest.mark.parametrize("masked", [False, True])
def test_per_sample_gradients_equal_loop(masked):
    model = small_cnn()
    model.eval()
    X, y = data((1, 7, 7), n=9, classes=5)
    reference = model
    if masked:  # gradients w.r.t. the effective (masked) weight = those of a plain copy
        torch_prune.random_unstructured(model[3], "weight", amount=0.3)
        reference = small_cnn().eval()
        with torch.no_grad():
            reference[3].weight.copy_(model[3].weight_orig * model[3].weight_mask)
    params = select_parameters(model)
    assert params[1].is_masked == masked
    A = per_sample_gradients(model, params, collect((X, y), None, torch.device("cpu")), chunk_size=4)
    ref_params = select_parameters(reference)
    rows = []
    for i in range(X.shape[0]):
        reference.zero_grad()
        nn.functional.cross_entropy(reference(X[i : i + 1]), y[i : i + 1]).backward()
        rows.append(torch.cat([p.storage.grad.reshape(-1) for p in ref_params]))
    assert A.shape == (9, sum(p.numel for p in params))
    torch.testing.assert_close(A, torch.stack(rows), rtol=1e-5, atol=1e-6)


def test_per_sample_gradients_wrt_subset_and_weights():
    model = tiny_mlp()
    X, y = data((3,), n=6)
    params = select_parameters(model)
    batches = collect((X, y), None, torch.device("cpu"))
    w = torch.cat([p.tensor.detach().reshape(-1) for p in params]) * 0.5
    full = per_sample_gradients(model, params, batches, weights=w)
    sub = per_sample_gradients(model, params, batches, weights=w, wrt=[1])
    torch.testing.assert_close(sub, full[:, 6:])
    before = [p.storage.detach().clone() for p in params]
    assert all(torch.equal(a, p.storage) for a, p in zip(before, params))  # model untouched


# FLOPs ------------------------------------------------------------------------------------------
def test_flops_linear_hand_count():
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 3, bias=False))
    X = torch.randn(2, 7, 4)  # 7 tokens per sample
    b = collect(X, None, torch.device("cpu"))[0]
    dense = layer_flops(model, select_parameters(model), b)
    assert dense == [2 * 4 * 6 * 7, 2 * 6 * 3 * 7]  # FLOPs = 2 x MACs, per sample
    assert model_flops(model, b) == sum(dense)


def test_flops_conv_hand_count():
    model = small_cnn()
    X, _ = data((1, 7, 7), n=3)
    b = collect(X, None, torch.device("cpu"))[0]
    dense = layer_flops(model, select_parameters(model), b)
    # conv1: 3 out x 1 in x 3x3, output 7x7; conv2: 4 x 3 x 3x3, output 3x3; linear 36 -> 5.
    assert dense == [2 * 3 * 1 * 9 * 49, 2 * 4 * 3 * 9 * 9, 2 * 36 * 5]
    # per-weight cost = 2 x output positions
    assert [d / p.numel for d, p in zip(dense, select_parameters(model))] == [2 * 49, 2 * 9, 2]


# Selection and calibration ------------------------------------------------------------------------
def test_select_defaults_targets_ignore():
    model = small_cnn()
    assert [p.name for p in select_parameters(model)] == ["0.weight", "3.weight", "6.weight"]
    assert [p.name for p in select_parameters(model, targets=nn.Conv2d)] == ["0.weight", "3.weight"]
    assert [p.name for p in select_parameters(model, ignore=[r"[03]"])] == ["6.weight"]
    assert [p.name for p in select_parameters(model, targets=r"6\.weight")] == ["6.weight"]
    assert [p.name for p in select_parameters(model, ignore=model[0])] == ["3.weight", "6.weight"]
    with pytest.raises(ValueError, match="targets: no prunable layer"):
        select_parameters(model, targets="nothing")
    with pytest.raises(ValueError, match="targets: no prunable layer"):
        select_parameters(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))
    with pytest.raises(ValueError, match="ignore: invalid regular expression"):
        select_parameters(model, ignore="(")


def test_calibration_forms_and_limit():
    X, y = data((3,), n=10)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=4)
    for source in (loader, [(X[:4], y[:4]), (X[4:], y[4:])], (X, y)):
        batches = collect(source, 7, torch.device("cpu"), need_targets=True)
        assert sum(b.size for b in batches) == 7
        torch.testing.assert_close(torch.cat([b.inputs for b in batches]), X[:7])
    assert collect(X, None, torch.device("cpu"))[0].targets is None
    with pytest.raises(ValueError, match="needs \\(inputs, targets\\)"):
        collect([X], None, torch.device("cpu"), need_targets=True)
    with pytest.raises(ValueError, match="n_samples"):
        collect(X, 0, torch.device("cpu"))


# Budgets ----------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(st.floats(0.0, 0.99), st.integers(1, 5000))
def test_k_from_sparsity_never_below_request(s, p):
    k = cpt.k_from_sparsity(s, p)
    assert 0 <= k <= p
    assert 1 - k / p >= s - 1e-9
    assert 1 - (k + 1) / p < s + 1e-9 or k == p  # the largest k that meets the request


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.95])
def test_magnitude_budget_exact(sparsity):
    model = small_cnn()
    X, y = data((1, 7, 7), classes=5)
    report = cpt.prune(model, (X, y), method="magnitude", sparsity=sparsity, progress=False)
    p = report.params
    assert report.k == cpt.k_from_sparsity(sparsity, p)
    nnz = sum(int((m.weight != 0).sum()) for m in (model[0], model[3], model[6]))
    assert nnz == report.kept == report.k  # distinct magnitudes: exactly k kept
    assert report.sparsity >= sparsity
    assert not report.budget_violations()


def test_bruteforce_global_optimum_and_flops():
    """Exact solver on a tiny model: both budgets hold exactly, objective is the optimum."""
    model = tiny_mlp()
    X, y = data((3,), n=16)
    report = cpt.prune(model, (X, y), method="bruteforce", sparsity=0.5, flop_budget=0.5, l2=1e-2, progress=False)
    assert report.kept <= report.k == 5
    assert report.effective_flops <= report.flop_limit * (1 + 1e-12)
    assert report.flop_limit == pytest.approx(0.5 * 20)  # 2x(3x2 + 2x2) FLOPs per sample
    assert report.layers[0].solver == "bruteforce"
    assert report.layers[0].gap == 0


def test_flop_budget_with_fixed_layers_and_unmet():
    model = tiny_mlp()
    X, y = data((3,), n=8)
    # ignore the first layer: its 12 FLOPs of the 20 are fixed -> at most 8/20 can be removed
    report = cpt.prune(model, (X, y), method="bruteforce", flop_budget=0.7, ignore="0", progress=False)
    assert report.flop_limit == pytest.approx(0.7 * 20 - 12)
    assert report.effective_flops <= report.flop_limit + 1e-12
    h = model_hash(model)
    with pytest.raises(ValueError, match="flop_budget: .* cannot be met"):
        cpt.prune(model, (X, y), method="bruteforce", flop_budget=0.5, ignore="0", progress=False)
    assert model_hash(model) == h


@needs("dual-sort")
@pytest.mark.parametrize("fb", [0.2, 0.5, 0.8])
def test_flop_magnitude_budgets_exact(fb):
    model = small_cnn()
    X, y = data((1, 7, 7), classes=5)
    report = cpt.prune(model, (X, y), method="flop-magnitude", flop_budget=fb, sparsity=0.5, progress=False)
    report.check_budgets()
    costs = [lr.dense_flops / lr.params for lr in report.layers]
    total = math.fsum(c * int((m.weight != 0).sum()) for c, m in zip(costs, (model[0], model[3], model[6])))
    assert total <= report.flop_limit * (1 + 1e-12)
    assert report.kept <= report.k


def test_blocks_when_memory_is_small():
    model = tiny_mlp()
    X, y = data((3,), n=8)
    # room for 5 columns of 8 floats (twice, for the solver's copy) plus their working vectors:
    # blocks of 5 weights (layer 0 split, then the rest)
    report = cpt.prune(model, (X, y), method="bruteforce", sparsity=0.4, max_memory=5 * (2 * 8 * 4 + 128), progress=False)
    assert report.kept <= report.k == 6
    assert len({(lr.objective) for lr in report.layers}) >= 1


# Apply modes ------------------------------------------------------------------------------------
def test_mask_and_permanent_agree():
    X, y = data((1, 7, 7), classes=5)
    a, b = small_cnn(), small_cnn()
    ra = cpt.prune(a, (X, y), method="magnitude", sparsity=0.6, apply="mask", progress=False)
    rb = cpt.prune(b, (X, y), method="magnitude", sparsity=0.6, apply="permanent", progress=False)
    assert hasattr(a[0], "weight_orig") and hasattr(a[0], "weight_mask")
    assert not hasattr(b[0], "weight_mask")
    assert int(a[0].weight_mask.sum()) == ra.layers[0].kept
    a.eval(), b.eval()
    torch.testing.assert_close(a(X), b(X))
    assert ra.kept == rb.kept
    # pruning a masked model again replaces its mask (no nested containers)
    cpt.prune(a, (X, y), method="magnitude", sparsity=0.8, apply="mask", progress=False)
    nnz = sum(int(m.weight_mask.sum()) for m in (a[0], a[3], a[6]))
    assert nnz == cpt.k_from_sparsity(0.8, ra.params)
    cpt.prune(a, (X, y), method="magnitude", sparsity=0.8, apply="permanent", progress=False)
    assert not hasattr(a[0], "weight_mask")


def test_structured_group_magnitude_mask_equals_permanent():
    torch.manual_seed(0)
    X, y = data((8,), n=32, classes=4)
    mk = lambda: nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 4))  # noqa: E731
    torch.manual_seed(0)
    a = mk()
    torch.manual_seed(0)
    b = mk()
    ra = cpt.prune(a, (X, y), method="group-magnitude", sparsity=0.5, apply="mask", progress=False)
    cpt.prune(b, (X, y), method="group-magnitude", sparsity=0.5, apply="permanent", progress=False)
    torch.testing.assert_close(a(X), b(X))
    assert {lr.kind for lr in ra.layers} == {"structured"}
    assert int(a[0].weight_mask.sum(1).gt(0).sum()) == 6


# Failure leaves the model unchanged ---------------------------------------------------------------
def test_failure_while_applying_restores_model(monkeypatch):
    model = small_cnn()
    X, y = data((1, 7, 7), classes=5)
    cpt.prune(model, (X, y), method="magnitude", sparsity=0.3, progress=False)  # already masked
    h = model_hash(model)
    calls = {"n": 0}
    original = prune_mod._apply_param

    def flaky(p, values, mask, apply):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return original(p, values, mask, apply)

    monkeypatch.setattr(prune_mod, "_apply_param", flaky)
    for apply in ("mask", "permanent"):
        calls["n"] = 0
        with pytest.raises(cpt.PruningError, match="restored"):
            cpt.prune(model, (X, y), method="magnitude", sparsity=0.7, apply=apply, progress=False)
        assert model_hash(model) == h


def test_infeasible_solver_result_restores_model():
    from combprune.result import Result, Status

    @combprune.register_solver("test-cheat", problems=combprune.L0Regression, exact=False)
    def cheat(problem, *, deadline, seed=None):
        x = np.asarray(problem.w_bar, dtype=np.float64)  # keeps every weight: violates k
        return Result(x=x, support=x != 0, objective=problem.objective(x), status=Status.FEASIBLE)

    model = tiny_mlp()
    X, y = data((3,), n=8)
    h = model_hash(model)
    with pytest.raises(cpt.PruningError, match="infeasible"):
        cpt.prune(model, (X, y), method="test-cheat", sparsity=0.5, progress=False)
    assert model_hash(model) == h


# Bad inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), "sparsity: must lie in \\[0, 1\\)"),
        (dict(sparsity=-0.1), "sparsity: must lie"),
        (dict(sparsity=float("nan")), "sparsity: must lie"),
        (dict(flop_budget=0.0), "flop_budget: must lie in \\(0, 1\\]"),
        (dict(flop_budget=1.5), "flop_budget: must lie"),
        (dict(), "sparsity: give sparsity"),
        (dict(sparsity=0.5, method="nope"), "method: unknown method"),
        (dict(sparsity=0.5, apply="physical"), "apply: 'physical'"),
        (dict(sparsity=0.5, apply="zap"), "apply: expected"),
        (dict(sparsity=0.5, targets="nothing"), "targets: no prunable layer"),
        (dict(sparsity=0.5, schedule="cosine"), "schedule"),
        (dict(sparsity=0.5, stages=0), "stages"),
        (dict(sparsity=0.5, l2=-1.0), "l2"),
        (dict(sparsity=0.5, device="cuda"), "model: is on cpu"),
        (dict(sparsity=0.5, n_samples=0), "n_samples"),
    ],
)
def test_bad_inputs(kwargs, match):
    model = tiny_mlp()
    X, y = data((3,), n=8)
    kwargs.setdefault("method", "magnitude")
    h = model_hash(model)
    with pytest.raises(ValueError, match=match):
        cpt.prune(model, (X, y), progress=False, **kwargs)
    assert model_hash(model) == h


@pytest.mark.parametrize("calibration", [[], iter([]), [torch.empty(0, 3)]])
def test_empty_calibration(calibration):
    with pytest.raises(ValueError, match="calibration: .*empty"):
        cpt.prune(tiny_mlp(), calibration, method="bruteforce", sparsity=0.5, progress=False)


def test_missing_targets_for_gradient_method():
    X, _ = data((3,), n=8)
    with pytest.raises(ValueError, match="calibration: this method needs"):
        cpt.prune(tiny_mlp(), X, method="bruteforce", sparsity=0.5, progress=False)
    # a loss_fn that needs no targets works with inputs alone
    report = cpt.prune(tiny_mlp(), X, method="bruteforce", sparsity=0.5, loss_fn=lambda out, _: out.pow(2).mean(), progress=False)
    assert report.kept <= 5


def test_model_on_several_devices():
    model = tiny_mlp()
    model[2].weight = nn.Parameter(torch.empty(2, 2, device="meta"))
    X, y = data((3,), n=8)
    with pytest.raises(ValueError, match="model: parameters are on several devices"):
        cpt.prune(model, (X, y), method="magnitude", sparsity=0.5, progress=False)


def test_inputs_are_moved_to_model_device():
    model = tiny_mlp().double()
    X, y = data((3,), n=8)
    batches = _calibration.collect((X.double(), y), None, _calibration.model_device(model))
    assert batches[0].inputs.device == torch.device("cpu")


# Report -----------------------------------------------------------------------------------------------
def test_report_exports(tmp_path):
    model = small_cnn()
    X, y = data((1, 7, 7), classes=5)
    report = cpt.prune(model, (X, y), method="magnitude", sparsity=0.5, progress=False)
    d = json.loads(report.to_json(tmp_path / "r.json" if False else None))
    assert d["totals"]["kept"] == report.kept and d["totals"]["budgets_met"]
    assert d["totals"]["flop_unit"] == "FLOPs"
    csv = report.to_csv(str(tmp_path / "r.csv"))
    assert csv.splitlines()[0].startswith("name,kind,params,kept,sparsity")
    assert csv.splitlines()[-1].startswith("TOTAL,")
    text = str(report)
    assert "TOTAL" in text and "2 x MACs" in text
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(report)
    assert "TOTAL" in console.export_text()
    report.k = report.kept - 1
    with pytest.raises(cpt.BudgetError, match="nnz"):
        report.check_budgets()


def test_progress_bars_and_no_print(capsys):
    model = tiny_mlp()
    X, y = data((3,), n=8)
    cpt.prune(model, (X, y), method="bruteforce", sparsity=0.5, progress=False)
    out = capsys.readouterr()
    assert out.out == ""


# Registered gradient solvers -------------------------------------------------------------------------
@needs("chita")
def test_chita_beats_magnitude_on_local_model():
    torch.manual_seed(0)
    X, y = data((1, 7, 7), n=64, classes=5)
    a, b = small_cnn(), small_cnn()
    ra = cpt.prune(a, (X, y), method="chita", sparsity=0.7, l2=1e-3, progress=False)
    cpt.prune(b, (X, y), method="magnitude", sparsity=0.7, progress=False)
    ra.check_budgets()
    a.eval(), b.eval()
    la = nn.functional.cross_entropy(a(X), y).item()
    lb = nn.functional.cross_entropy(b(X), y).item()
    assert la <= lb + 1e-6


@needs("dfo", "dual-sort")
def test_falcon_flop_budget_exact():
    X, y = data((1, 7, 7), n=32, classes=5)
    model = small_cnn()
    report = cpt.prune(model, (X, y), method="falcon", flop_budget=0.3, sparsity=0.5, progress=False)
    report.check_budgets()
    assert report.effective_flops <= report.flop_limit * (1 + 1e-12)


# Multi-stage -------------------------------------------------------------------------------------------
def test_multistage_relinearises_and_meets_budgets():
    """Any gradient method with stages > 1 runs the multi-stage driver; budgets hold at the end."""
    model = tiny_mlp()
    X, y = data((3,), n=12)
    report = cpt.prune(model, (X, y), method="bruteforce", sparsity=0.6, flop_budget=0.5, stages=3, schedule="linear", progress=False)
    assert [r["stage"] for r in report.stages] == [1, 2, 3]
    ks = [r["k"] for r in report.stages]
    assert ks == sorted(ks, reverse=True) and ks[-1] == report.k == 4
    assert report.stages[-1]["flop_budget"] == pytest.approx(report.flop_limit)
    assert all("result" not in r for r in report.stages)
    json.loads(report.to_json())
    report.check_budgets()


@needs("chita")
@pytest.mark.parametrize("method, budget", [("chita++", dict(sparsity=0.8)), ("falcon++", dict(flop_budget=0.3))])
def test_plus_plus_methods_small_cnn(method, budget):
    X, y = data((1, 7, 7), n=32, classes=5)
    model = small_cnn()
    report = cpt.prune(model, (X, y), method=method, stages=3, progress=False, **budget)
    report.check_budgets()
    assert len(report.stages) == 3
    m = cpt.measure(model, X)
    if "sparsity" in budget:
        assert m["sparsity"] >= budget["sparsity"] - 1e-12
    else:
        assert report.effective_flops <= report.flop_limit * (1 + 1e-12)


def test_explicit_schedule_repeats_target():
    model = tiny_mlp()
    X, y = data((3,), n=12)
    report = cpt.prune(model, (X, y), method="bruteforce", sparsity=0.6, schedule=[0.3, 0.6, 0.6], progress=False)
    assert [r["k"] for r in report.stages] == [7, 4, 4]
    report.check_budgets()
    with pytest.raises(ValueError, match="schedule: the last sparsity"):
        cpt.prune(tiny_mlp(), (X, y), method="bruteforce", sparsity=0.6, schedule=[0.3, 0.5], progress=False)
    with pytest.raises(ValueError, match="schedule: sparsities must be non-decreasing"):
        cpt.prune(tiny_mlp(), (X, y), method="bruteforce", sparsity=0.6, schedule=[0.6, 0.3, 0.6], progress=False)


@needs("osscar")
def test_osscar_physical_equals_masked_and_is_smaller():
    X, y = data((8,), n=64, classes=4)

    def mk():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)).eval()

    a, b = mk(), mk()
    h = model_hash(a)
    with pytest.raises(ValueError, match="flop_budget: 0.01 .* cannot be met"):  # one neuron per layer keeps more
        cpt.prune(a, (X, y), method="osscar", flop_budget=0.01, progress=False)
    assert model_hash(a) == h
    cpt.prune(a, (X, y), method="osscar", sparsity=0.5, apply="mask", progress=False)
    report = cpt.prune(b, (X, y), method="osscar", sparsity=0.5, apply="physical", progress=False)
    assert report.apply == "physical" and {lr.kind for lr in report.layers} == {"structured"}
    assert b[0].out_features == 8 and b[2].in_features == 8
    torch.testing.assert_close(a(X), b(X), rtol=1e-5, atol=1e-5)
    assert sum(p.numel() for p in b.parameters()) < sum(p.numel() for p in mk().parameters())


def test_single_dict_batch_is_one_batch_not_its_keys():
    from combprune.torch._calibration import collect

    batch = {"x": torch.randn(3, 4)}
    batches = collect(batch, None, torch.device("cpu"))
    assert len(batches) == 1 and isinstance(batches[0].inputs, dict)
    assert torch.equal(batches[0].inputs["x"], batch["x"])


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 30), st.integers(0, 30), st.integers(1, 7))
def test_per_sample_gradients_columns_are_a_slice_of_the_matrix(lo, width, chunk):
    """``columns`` keeps a slice of the wrt weights' gradients, whatever the chunking of the samples."""
    model = tiny_mlp()
    X, y = data((3,), n=6)
    params = select_parameters(model)
    batches = collect((X, y), None, torch.device("cpu"))
    full = per_sample_gradients(model, params, batches)
    lo = min(lo, full.shape[1])
    hi = min(full.shape[1], lo + width)
    part = per_sample_gradients(model, params, batches, columns=(lo, hi), chunk_size=chunk)
    torch.testing.assert_close(part, full[:, lo:hi])


def _with_nan(X: torch.Tensor) -> torch.Tensor:
    X = X.clone()
    X[3, 0] = float("nan")
    return X


@pytest.mark.parametrize("method, kwargs", [("chita", {}), ("chita", {"l2": 1e-3}), ("chita++", {"l2": 1e-3, "stages": 2}),
                                            ("falcon", {"flop_budget": 0.6}), ("osscar", {})])
def test_nan_in_the_calibration_inputs_is_named_and_the_model_restored(method, kwargs):
    """NaN inputs make NaN gradients (gradient methods) or NaN layer statistics (structured):
    a clear error naming the calibration data, never a solver's internal array name."""
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    X, y = data((6,), n=60, classes=3)
    before = model_hash(model)
    with pytest.raises(ValueError, match="^calibration: the .* not finite"):
        cpt.prune(model, (_with_nan(X), y), method=method, sparsity=0.5, progress=False, **kwargs)
    assert model_hash(model) == before


def test_a_sparsity_that_removes_every_weight_is_refused():
    model = tiny_mlp()  # 10 prunable weights: 0.95 removes ceil(9.5) = 10
    X, y = data((3,))
    with pytest.raises(ValueError, match=r"^sparsity: 0.95 removes all 10 prunable weights .* 1 - 1/10 = 0.9"):
        cpt.prune(model, (X, y), method="magnitude", sparsity=0.95, progress=False)
    report = cpt.prune(model, (X, y), method="magnitude", sparsity=0.9, progress=False)
    assert sum(int((m.weight != 0).sum()) for m in model if isinstance(m, nn.Linear)) == 1 and report.sparsity == pytest.approx(0.9)


def test_loss_fn_per_sample_losses_are_averaged_and_a_wrong_shape_is_named():
    """reduction='none' gives the same gradients and the same automatic choice as the mean;
    a loss of the wrong shape, or not a tensor, is an error naming loss_fn."""
    X, y = data((6,), n=80, classes=3)
    F = torch.nn.functional

    def pruned(loss_fn, **kw):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
        report = cpt.prune(model, (X, y), method="chita", sparsity=0.6, loss_fn=loss_fn, progress=False, **kw)
        return model[0].weight.detach().clone(), report

    for kw in ({"l2": 1e-3}, {}):  # fixed ridge; automatic ridge (held-back losses)
        w_mean, r_mean = pruned(lambda out, t: F.cross_entropy(out, t), **kw)
        w_none, r_none = pruned(lambda out, t: F.cross_entropy(out, t, reduction="none"), **kw)
        assert torch.allclose(w_mean, w_none, atol=1e-6) and r_mean.info["l2"] == pytest.approx(r_none.info["l2"])
    with pytest.raises(ValueError, match=r"^loss_fn: expected the mean loss of a batch of 1 .* shape \(1, 3\)"):
        pruned(lambda out, t: F.cross_entropy(out, t, reduction="none")[:, None] * torch.ones(1, 3), l2=1e-3)
    with pytest.raises(TypeError, match="^loss_fn: expected a tensor"):
        pruned(lambda out, t: (F.cross_entropy(out, t), 0), l2=1e-3)


@pytest.mark.parametrize("method", ["magnitude", "chita", "osscar"])
def test_a_nan_weight_is_named_before_anything_changes(method):
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].bias[1] = float("inf")
    X, y = data((6,), n=60, classes=3)
    before = model_hash(model)
    with pytest.raises(ValueError, match=r"^model: parameter 2\.bias contains NaN or inf"):
        cpt.prune(model, (X, y), method=method, sparsity=0.5, progress=False)
    assert model_hash(model) == before


class _TorchTransformer(nn.Module):
    """A classifier on torch's own TransformerEncoder (nn.MultiheadAttention inside)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.emb = nn.Linear(8, 16)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.enc(self.emb(x)).mean(1))


def test_multihead_attention_in_projections_are_pruned_and_costed():
    """torch's MultiheadAttention keeps q/k/v in one in_proj_weight (q_/k_/v_proj_weight when the
    key and value sizes differ): they are prunable weights, each costing 2 FLOPs per token like a
    Linear layer's, and so is the out_proj that attention never calls as a module."""
    names = [p.name for p in select_parameters(nn.Sequential(nn.MultiheadAttention(16, 2, kdim=8, vdim=8)))]
    assert names == ["0.q_proj_weight", "0.k_proj_weight", "0.v_proj_weight", "0.out_proj.weight"]
    model = _TorchTransformer().eval()
    X = torch.randn(6, 5, 8)
    params = select_parameters(model)
    assert "enc.layers.0.self_attn.in_proj_weight" in [p.name for p in params]
    batch = collect(X, None, torch.device("cpu"))[0]
    per_weight = [f / p.numel for f, p in zip(layer_flops(model, params, batch), params)]
    assert per_weight == pytest.approx([2 * 5] * (len(params) - 1) + [2])  # 5 tokens per sample; the head sees their mean
    attention = 2 * (2 * 5 * 5 * 16)  # Q K^T and softmax(.) V, per layer and sample
    assert model_flops(model, batch) == pytest.approx(sum(layer_flops(model, params, batch)) + 2 * attention)
    assert torch.backends.mha.get_fastpath_enabled()  # the fused path, switched off to count, is back on


@pytest.mark.parametrize("method, kwargs", [("chita", {"sparsity": 0.6}), ("falcon", {"flop_budget": 0.5})])
def test_a_torch_transformer_is_pruned_through_its_attention(method, kwargs):
    model = _TorchTransformer().eval()
    X, y = torch.randn(64, 5, 8), torch.randint(0, 3, (64,))
    report = cpt.prune(model, (X, y), method=method, progress=False, **kwargs)
    in_proj = model.enc.layers[0].self_attn.in_proj_weight
    assert 0.1 < float((in_proj == 0).float().mean()) < 0.9
    zeros = _TorchTransformer().eval()
    zeros.load_state_dict({k.replace("_orig", ""): v for k, v in model.state_dict().items() if not k.endswith("_mask")}, strict=False)
    with torch.no_grad():
        for name, mask in get_masks(model).items():
            zeros.get_parameter(name).mul_(mask)
        torch.testing.assert_close(model(X), zeros(X))  # the masked model (fused path in eval) computes with the zeros
    report.check_budgets()  # raises on a violated budget
    measured = cpt.measure(model, X)  # counted afresh on the pruned model
    fixed = measured["model_flops"] - report.dense_flops  # attention products, not prunable
    assert measured["effective_flops"] - fixed == pytest.approx(report.effective_flops)
    if method == "falcon":
        assert measured["flops_kept"] <= 0.5 + 1e-9  # the budget is a fraction of the whole model's FLOPs


class _TokenTagger(nn.Module):
    """Token-level logits (N, L, C) and, optionally, a torch.autograd.Function without
    setup_context (which no torch.func transform accepts)."""

    class _OldStyleTanh(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            y = torch.tanh(x)
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * (1 - y * y)

    def __init__(self, old_style: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.old_style = nn.Linear(6, 12), nn.Linear(12, 4), old_style

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(self._OldStyleTanh.apply(h) if self.old_style else torch.tanh(h))


@pytest.mark.parametrize("old_style", [False, True])
def test_default_loss_on_token_level_outputs_and_models_torch_func_cannot_transform(old_style):
    from combprune.torch._calibration import collect
    from combprune.torch._gradients import default_loss, per_sample_gradients

    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(5, 7, 6, generator=g), torch.randint(0, 4, (5, 7), generator=g)
    y[0, :3] = -100  # ignored positions
    model = _TokenTagger(old_style)
    logits = model(X)
    expect = F.cross_entropy(logits.reshape(-1, 4), y.reshape(-1), ignore_index=-100)
    assert torch.allclose(default_loss(logits, y), expect)
    assert torch.allclose(default_loss(logits.movedim(-1, 1), y), expect)  # torch's (N, C, L) convention unchanged
    params = cpt.select_parameters(model)
    info: dict = {}
    G = per_sample_gradients(model, params, collect((X, y), None, torch.device("cpu")), info=info)
    assert info["method"] == ("per-sample loop" if old_style else "vmap")
    for i in (0, 4):
        model.zero_grad()
        F.cross_entropy(model(X[i : i + 1]).reshape(-1, 4), y[i].reshape(-1)).backward()
        assert torch.allclose(G[i], torch.cat([p.storage.grad.reshape(-1) for p in params]), atol=1e-6)


def test_default_loss_names_loss_fn_when_the_model_returns_a_tuple():
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x), x.sum()

    with pytest.raises(TypeError, match="^loss_fn: .*returned a tuple: pass loss_fn="):
        cpt.prune(TupleOut(), (torch.randn(8, 4), torch.randint(0, 3, (8,))), method="chita", sparsity=0.5, progress=False)
