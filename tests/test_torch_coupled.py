"""Coupled structured groups: stacked layer problems, equal counts per block, GQA / GPT-2 heads,
fan-out consumers and depthwise chains (combprune.torch._coupled, combprune.torch._groups)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import combprune
from combprune.problems import StructuredMIQP
from combprune.torch import _coupled
from combprune.torch.physical import from_pretrained, remove_pruned
from combprune.torch.structured import UnsupportedGraphError, discover_units, prune_structured
from test_torch_structured import _bert, _hash  # noqa: E402 - tests/ is on sys.path under pytest

SOLVERS = {s["name"] for s in combprune.list_solvers()}
METHOD = "osscar" if "osscar" in SOLVERS else "bruteforce"


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _problem(rng: np.random.Generator, n_groups: int, per_group: int, m: int, s: int, ridge: float) -> StructuredMIQP:
    d = n_groups * per_group
    X = rng.standard_normal((3 * d, d))
    return StructuredMIQP(X.T @ X, rng.standard_normal((d, m)), np.repeat(np.arange(n_groups), per_group), s, ridge=ridge)


def _best_over_subsets(problems, n_groups, s):
    """min over kept sets of size s of the summed re-fitted objectives (brute force)."""
    best = np.inf
    for kept in itertools.combinations(range(n_groups), s):
        keep = np.zeros(n_groups, dtype=bool)
        keep[list(kept)] = True
        best = min(best, sum(p.objective(_coupled.refit(p, keep)) for p in problems))
    return best


# ---------------------------------------------------------------------------------------------
# The stacking reduction
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    n_groups=st.integers(2, 4),
    layers=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.floats(0.0, 2.0)), min_size=2, max_size=3),
    seed=st.integers(0, 10_000),
)
def test_stacked_objective_is_the_sum_of_layer_objectives(n_groups, layers, seed):
    rng = np.random.default_rng(seed)
    problems = [_problem(rng, n_groups, k, m, n_groups - 1, ridge) for k, m, ridge in layers]
    stacked = _coupled.stack_problems(problems)
    assert stacked.n_groups == n_groups and stacked.d == sum(p.d for p in problems) and stacked.m == sum(p.m for p in problems)
    Ws = [rng.standard_normal((p.d, p.m)) for p in problems]
    W = np.zeros((stacked.d, stacked.m))
    r = c = 0
    for Wi in Ws:
        W[r : r + Wi.shape[0], c : c + Wi.shape[1]] = Wi
        r, c = r + Wi.shape[0], c + Wi.shape[1]
    assert stacked.objective(W) == pytest.approx(sum(p.objective(Wi) for p, Wi in zip(problems, Ws)), rel=1e-10)
    for a, b in zip(_coupled.split_solution(W, problems), Ws):
        np.testing.assert_array_equal(a, b)
    # off-diagonal blocks never lower the objective, so keeping the diagonal blocks is safe
    W_off = W + rng.standard_normal(W.shape)
    assert stacked.objective(W_off) >= sum(p.objective(Wi) for p, Wi in zip(problems, _coupled.split_solution(W_off, problems))) - 1e-9


def test_stacked_bruteforce_optimum_is_the_coupled_optimum():
    rng = np.random.default_rng(3)
    problems = [_problem(rng, 5, 2, 3, 2, 0.3), _problem(rng, 5, 1, 2, 2, 0.05)]
    stacked = _coupled.stack_problems(problems)
    res = combprune.solve(stacked, "bruteforce")
    parts = _coupled.split_solution(res.x, problems)
    total = sum(p.objective(W) for p, W in zip(problems, parts))
    assert total == pytest.approx(_best_over_subsets(problems, 5, 2), rel=1e-8)
    assert total == pytest.approx(res.objective, rel=1e-8)
    # the same kept groups in both layers
    assert np.array_equal(problems[0].group_support(parts[0]), problems[1].group_support(parts[1]))


def test_single_layer_stack_is_the_problem_itself():
    rng = np.random.default_rng(4)
    p = _problem(rng, 4, 2, 3, 2, 0.1)
    assert _coupled.stack_problems([p]) is p
    with pytest.raises(ValueError, match="same groups"):
        _coupled.stack_problems([p, _problem(rng, 3, 2, 3, 2, 0.1)])


@pytest.mark.parametrize("solver", ["bruteforce", METHOD])
def test_even_blocks_keep_equal_counts_and_never_beat_the_exhaustive_optimum(solver):
    rng = np.random.default_rng(5)
    p = _problem(rng, 6, 2, 3, 4, 0.1)  # 3 blocks of 2 groups, 1 kept per block

    def solve(q):
        return combprune.solve(q, solver)

    sol, keep = _coupled.solve_even_blocks(p, 3, 1, solve)
    assert keep.reshape(3, 2).sum(axis=1).tolist() == [1, 1, 1]
    assert sol.objective == pytest.approx(p.objective(sol.x))
    assert p.group_support(sol.x).tolist() == keep.tolist() and p.check(sol.x) == []
    best = min(
        p.objective(_coupled.refit(p, np.array([i == a for i in range(2)] + [i == b for i in range(2)] + [i == c for i in range(2)])))
        for a, b, c in itertools.product(range(2), repeat=3)
    )
    assert sol.objective >= best - 1e-9
    assert sol.objective <= 1.5 * best  # block-coordinate descent is near the optimum on this instance
    with pytest.raises(ValueError, match="n_blocks"):
        _coupled.solve_even_blocks(p, 4, 1, solve)


# ---------------------------------------------------------------------------------------------
# Fan-out consumers and depthwise chains (torch.fx)
# ---------------------------------------------------------------------------------------------
class FanOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 6)
        self.fc2 = nn.Linear(6, 3)
        self.fc3 = nn.Linear(6, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return torch.cat([self.fc2(h), self.fc3(h)], dim=-1)


def test_fan_out_unit_sums_the_consumers_objectives():
    torch.manual_seed(0)
    model = FanOut().eval()
    units = discover_units(model)
    assert [(u.consumers, u.producers) for u in units] == [(("fc2", "fc3"), ("fc1",))]
    x = torch.randn(40, 5)
    dense = FanOut().eval()
    dense.load_state_dict(model.state_dict())
    reports, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    keep = plan.keep["fc2"]
    assert keep.sum() == 3
    # the solve is the best kept set for the summed objective of both consumers
    X = torch.relu(dense.fc1(x)).double().numpy()
    from combprune.problems import osscar_default_ridge

    probs = [StructuredMIQP(X.T @ X, lay.weight.double().numpy().T, np.arange(6), 3, ridge=osscar_default_ridge(X.T @ X)) for lay in (dense.fc2, dense.fc3)]
    assert sum(p.objective(_coupled.refit(p, keep)) for p in probs) == pytest.approx(_best_over_subsets(probs, 6, 3), rel=1e-8)
    by = {r.name: r for r in reports}
    assert by["fc2.weight"].objective == pytest.approx(_best_over_subsets(probs, 6, 3), rel=1e-6)
    masked = model(x)
    remove_pruned(model, plan)
    assert model.fc1.out_features == 3 and model.fc2.in_features == 3 and model.fc3.in_features == 3
    torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


class Inverted(nn.Module):
    """MobileNet-style block: expand (1x1) -> BN -> ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> project (1x1)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 8, 1)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn2 = nn.BatchNorm2d(8)
        self.project = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = nn.functional.relu6(self.bn1(self.expand(x)))
        x = nn.functional.relu6(self.bn2(self.dw(x)))
        return self.project(x)


def test_depthwise_chain_is_one_unit_and_shrinks_physically():
    torch.manual_seed(1)
    model = Inverted().train()
    model(torch.randn(16, 3, 6, 6))
    model.eval()
    units = discover_units(model)
    assert [(u.producers, u.norms, u.consumer) for u in units] == [(("expand",), ("bn1", "dw", "bn2"), "project")]
    x = torch.randn(10, 3, 6, 6)
    reports, plan = prune_structured(model, x, method=METHOD, sparsity=0.5, progress=False)
    by = {r.name: r for r in reports}
    assert by["dw.weight"].kept == 4 * 9 and by["dw.weight"].params == 8 * 9
    masked = model(x)
    remove_pruned(model, plan)
    assert (model.dw.in_channels, model.dw.out_channels, model.dw.groups) == (4, 4, 4)
    assert model.expand.out_channels == 4 and model.bn2.num_features == 4 and model.project.in_channels == 4
    torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


def test_declared_coupled_pairs_and_bad_pairs_leave_the_model_unchanged():
    torch.manual_seed(2)
    model = FanOut().eval()
    units = discover_units(model, pairs=[("fc1", ("fc2", "fc3"))])
    assert units[0].consumers == ("fc2", "fc3")
    before = _hash(model)
    for pairs, match in [
        ([("fc1", ("fc2", "nope"))], "no module named 'nope'"),
        ([("fc1", ("fc2", "fc2"))], "distinct"),
        ([("fc1", ())], "pairs"),
        ([("fc2", "fc3")], "producer has 3 outputs"),
    ]:
        with pytest.raises(ValueError, match=match):
            prune_structured(model, torch.randn(8, 5), method="bruteforce", pairs=pairs, progress=False)
    assert _hash(model) == before
    model = Inverted().eval()
    with pytest.raises(UnsupportedGraphError, match="depthwise"):
        discover_units(model, pairs=[("expand", "expand", "project")])  # a 1x1 conv is no per-channel operation


# ---------------------------------------------------------------------------------------------
# Hugging Face: grouped-query attention and GPT-2
# ---------------------------------------------------------------------------------------------
def _llama(seed: int = 0, heads: int = 4, kv: int = 2):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, num_attention_heads=heads, num_key_value_heads=kv, intermediate_size=12,
        num_hidden_layers=2, max_position_embeddings=20,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _gpt2(seed: int = 0):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_head=4, n_layer=2, n_positions=20, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _ids(seed: int = 0):
    torch.manual_seed(seed)
    return torch.randint(3, 40, (6, 10))


def _prune_remove_reload(model, tmp_path, **kwargs):
    ids = _ids()
    reports, plan = prune_structured(model, [{"input_ids": ids}], method=METHOD, progress=False, **kwargs)
    masked = model(input_ids=ids).logits
    remove_pruned(model, plan)
    torch.testing.assert_close(model(input_ids=ids).logits, masked, atol=1e-5, rtol=1e-5)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path)).eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, masked, atol=1e-5, rtol=1e-5)
    return reports, plan, loaded


def test_gqa_kv_heads_take_their_query_heads(tmp_path):
    model = _llama(heads=4, kv=2)
    units = [u for u in discover_units(model) if u.kind == "head"]
    assert [(u.consumer, u.n_groups, u.features_per_group) for u in units] == [
        (f"model.layers.{i}.self_attn.o_proj", 2, 2 * 4) for i in range(2)
    ]
    _, plan, loaded = _prune_remove_reload(model, tmp_path, sparsity={"head": 0.5})
    for m in (model, loaded):
        att = m.model.layers[0].self_attn
        assert (att.q_proj.out_features, att.k_proj.out_features, att.v_proj.out_features, att.o_proj.in_features) == (8, 4, 4, 8)
        assert att.num_key_value_groups == 2
        assert m.model.layers[0].mlp.down_proj.in_features == 12  # neurons not asked for


def test_gqa_query_heads_evenly_inside_each_kv_group(tmp_path):
    model = _llama(heads=8, kv=2)
    units = [u for u in discover_units(model, gqa="query") if u.kind == "head"]
    assert units[0].n_groups == 8 and units[0].even_blocks == 2 and units[0].producers == ("model.layers.0.self_attn.q_proj",)
    _, plan, loaded = _prune_remove_reload(model, tmp_path, sparsity={"head": 0.5}, gqa="query")
    for name, keep in plan.keep.items():
        if name.endswith("o_proj"):
            assert keep.reshape(2, 4).sum(axis=1).tolist() == [2, 2]
    for m in (model, loaded):
        att = m.model.layers[1].self_attn
        assert att.num_key_value_groups == 2 and att.q_proj.out_features == 4 * 2 and att.k_proj.out_features == 2 * 2
    with pytest.raises(ValueError, match="gqa"):
        discover_units(model, gqa="groups")


def test_gpt2_fused_heads_and_mlp(tmp_path):
    model = _gpt2()
    units = discover_units(model)
    assert {(u.kind, u.consumer) for u in units} == {
        (k, f"transformer.h.{i}.{c}") for i in range(2) for k, c in (("head", "attn.c_proj"), ("neuron", "mlp.c_proj"))
    }
    reports, plan, loaded = _prune_remove_reload(model, tmp_path, sparsity=0.5)
    for m in (model, loaded):
        attn, mlp = m.transformer.h[0].attn, m.transformer.h[0].mlp
        assert attn.c_attn.weight.shape == (16, 3 * 8) and attn.c_proj.weight.shape == (8, 16)
        assert (attn.num_heads, attn.split_size) == (2, 8)
        assert mlp.c_fc.weight.shape == (16, 32) and mlp.c_proj.weight.shape == (32, 16)
    by = {r.name: r for r in reports}
    assert by["transformer.h.0.attn.c_attn.weight"].kept == 16 * 24


def test_gpt2_and_llama_report_nothing_left_out():
    import combprune.torch as cpt

    for model in (_gpt2(), _llama()):
        report = cpt.prune(model, [{"input_ids": _ids()}], method=METHOD, sparsity=0.25, apply="physical", progress=False)
        assert report.not_pruned == []
        assert {"head", "neuron"} <= {u["kind"] for u in report.info["structured_plan"]["units"]}


def test_impossible_structured_requests_fail_before_anything_changes():
    import combprune.torch as cpt

    model = FanOut().eval()
    before = _hash(model)
    with pytest.raises(ValueError, match="sparsity: key 'head' matches no prunable unit"):
        cpt.prune(model, torch.randn(8, 5), method=METHOD, sparsity={"head": 0.5}, progress=False)
    with pytest.raises(ValueError, match="sparsity: key 'fc9' matches no prunable unit"):
        prune_structured(model, torch.randn(8, 5), method="bruteforce", sparsity={"fc9": 0.5}, progress=False)
    assert _hash(model) == before
    with pytest.raises(ValueError, match="gqa"):
        cpt.Pruner("osscar", sparsity=0.5, gqa="heads")
    with pytest.raises(ValueError, match="gqa"):
        cpt.Pruner("magnitude", sparsity=0.5, gqa="query")


def test_structured_report_says_what_the_fraction_counts():
    import combprune.torch as cpt

    model = _llama(heads=8, kv=2)
    report = cpt.prune(model, [{"input_ids": _ids()}], method=METHOD, sparsity={"head": 0.5, "neuron": 0.25}, gqa="query", apply="physical", progress=False)
    assert report.info["structures"] == {"head": {"groups": 16, "removed": 8}, "neuron": {"groups": 24, "removed": 6}}
    params = report.info["model_params"]
    assert params["after"] == sum(p.numel() for p in model.parameters()) < params["before"]
    text = str(report)
    assert "of the groups removed per unit (a fraction of structures, not of parameters)" in text
    assert "heads 8/16" in text and "k=None" not in text and "Not pruned" not in text


# ---------------------------------------------------------------------------------------------
# Residual streams (torch.fx channel spaces)
# ---------------------------------------------------------------------------------------------
class Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(6, 6, 1), Block(6, 6, 1))
        self.layer2 = nn.Sequential(Block(6, 8, 2))
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = self.pool(self.relu(self.bn(self.stem(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avg(x), 1))


def _resnet(seed: int = 0) -> TinyResNet:
    torch.manual_seed(seed)
    model = TinyResNet().train()
    model(torch.randn(16, 3, 8, 8))
    return model.eval()


def test_residual_streams_are_units_with_every_writer_and_reader():
    model = _resnet()
    streams = [u for u in discover_units(model) if len(u.producers) > 1]
    assert [(u.producers, u.norms, u.consumers) for u in streams] == [
        (("stem", "layer1.0.conv2", "layer1.1.conv2"), ("bn", "layer1.0.bn2", "layer1.1.bn2"),
         ("layer1.0.conv1", "layer1.1.conv1", "layer2.0.down.0", "layer2.0.conv1")),
        (("layer2.0.down.0", "layer2.0.conv2"), ("layer2.0.down.1", "layer2.0.bn2"), ("fc",)),
    ]
    # the chains inside the blocks are units too; every layer consumes for one unit at most
    chains = [u.consumer for u in discover_units(model) if len(u.producers) == 1]
    assert chains == ["layer1.0.conv2", "layer1.1.conv2", "layer2.0.conv2"]


@pytest.mark.parametrize("method", ["bruteforce", METHOD])
def test_residual_stream_pruning_is_exact_physically(method):
    model = _resnet(1)
    x = torch.randn(12, 3, 8, 8)
    reports, plan = prune_structured(model, x, method=method, sparsity=0.5, progress=False)
    stream = next(u for u in plan.units if len(u.producers) == 3)
    assert plan.keep[stream.consumer].sum() == 3
    masked = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    remove_pruned(model, plan)
    assert model.stem.out_channels == 3 and model.layer1[1].conv2.out_channels == 3 and model.layer2[0].down[0].in_channels == 3
    assert model.fc.in_features == 4 and model.layer2[0].down[1].num_features == 4
    assert sum(p.numel() for p in model.parameters()) < n_before
    torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


class Concat(nn.Module):
    """The sum of two branches is concatenated: no stream unit (never a wrong one)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 5), nn.Linear(4, 5), nn.Linear(10, 2)

    def forward(self, x):
        s = self.a(x) + self.b(x)
        return self.c(torch.cat([s, s], dim=-1))


def test_blocked_streams_are_not_units():
    with pytest.raises(UnsupportedGraphError, match="no prunable producer"):
        discover_units(Concat())


class LinearStream(nn.Module):
    """h = fc0(x); h = h + fc2(gelu(fc1(h))); out = head(h): the stream of fc0 and fc2."""

    def __init__(self) -> None:
        super().__init__()
        self.fc0, self.fc1, self.fc2, self.head = nn.Linear(4, 6), nn.Linear(6, 5), nn.Linear(5, 6), nn.Linear(6, 2)

    def forward(self, x):
        h = self.fc0(x)
        h = h + self.fc2(nn.functional.gelu(self.fc1(h)))
        return self.head(h)


def test_linear_residual_stream():
    torch.manual_seed(3)
    model = LinearStream().eval()
    stream = next(u for u in discover_units(model) if len(u.producers) > 1)
    assert (stream.kind, stream.producers, stream.consumers) == ("neuron", ("fc0", "fc2"), ("fc1", "head"))
    x = torch.randn(30, 4)
    _, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    masked = model(x)
    remove_pruned(model, plan)
    assert (model.fc0.out_features, model.fc2.out_features, model.fc1.in_features, model.head.in_features) == (3, 3, 3, 3)
    torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)


class Wrapper(nn.Module):
    """An untraceable block inside a traceable model: the error names it."""

    def __init__(self) -> None:
        super().__init__()
        from test_torch_structured import Untraceable

        self.pre = nn.Linear(4, 4)
        self.body = nn.Sequential(Untraceable())

    def forward(self, x):
        return self.body(self.pre(x))


def test_untraceable_model_error_names_the_module_and_the_way_out():
    model = Wrapper()
    before = _hash(model)
    with pytest.raises(UnsupportedGraphError, match=r"innermost module that fails is 'body\.0'.*pairs="):
        prune_structured(model, torch.randn(8, 4), method="bruteforce", progress=False)
    assert _hash(model) == before


# ---------------------------------------------------------------------------------------------
# flop_budget for the structured methods (one uniform fraction of groups per unit)
# ---------------------------------------------------------------------------------------------
def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)).eval()


def _one_group_slack(report) -> float:
    """Sum over units of the FLOPs of one group (or block of groups): removing one more in every
    unit lowers the model's FLOPs by at most this much."""
    dense = {r.name.rsplit(".", 1)[0]: r.dense_flops for r in report.layers}
    total = 0.0
    for u in report.info["structured_plan"]["units"]:
        layers = u["producers"] + [u["consumer"]] + u["extra_consumers"]
        total += sum(dense.get(n, 0.0) for n in layers) / (u["n_groups"] // max(u["even_blocks"], 1))
    return total


@pytest.mark.parametrize("which,budget", [("mlp", 0.3), ("mlp", 0.5), ("mlp", 0.8), ("llama", 0.6), ("llama", 0.8), ("llama", 0.95), ("bert", 0.7)])
def test_structured_flop_budget_is_met_and_close(which, budget):
    import combprune.torch as cpt

    model = {"mlp": _mlp, "llama": lambda: _llama(heads=8, kv=2), "bert": _bert}[which]()
    data = torch.randn(32, 8) if which == "mlp" else [{"input_ids": _ids() % 16 if which == "bert" else _ids()}]
    before = cpt.model_flops(model, data)
    report = cpt.prune(model, data, method=METHOD, flop_budget=budget, apply="physical", progress=False)
    report.check_budgets()
    info = report.info["flop_budget"]
    assert info["model_flops"] == pytest.approx(before) and info["reached"] <= budget + 1e-12
    assert budget - info["reached"] <= _one_group_slack(report) / before + 1e-12
    measured = cpt.model_flops(model, data) / before  # the physically smaller model, counted afresh
    assert measured <= info["reached"] + 1e-9  # attention-score FLOPs shrink with heads: counted as fixed
    if which == "mlp":
        assert measured == pytest.approx(info["reached"])
    kept = [np.mean(k) for k in report.info["structured_plan"]["keep"].values()]
    assert all(abs((1 - k) - info["fraction"]) < 0.5 for k in kept)
    assert "model FLOPs kept <=" in str(report) and "budgets met" in str(report)


def test_impossible_structured_flop_budget_leaves_the_model_unchanged():
    import combprune.torch as cpt

    model = _llama()
    before = _hash(model)
    with pytest.raises(ValueError, match="flop_budget: 0.01 of the model's .* cannot be met by structured pruning"):
        cpt.prune(model, [{"input_ids": _ids()}], method=METHOD, flop_budget=0.01, apply="physical", progress=False)
    assert _hash(model) == before
    with pytest.raises(ValueError, match="flop_budget"):
        prune_structured(_mlp(), torch.randn(8, 8), method=METHOD, flop_budget=1.5, progress=False)


def test_structured_flop_budget_with_sparsity_respects_both():
    import combprune.torch as cpt

    data = torch.randn(32, 8)
    loose = cpt.prune(_mlp(), data, method=METHOD, sparsity=0.75, flop_budget=0.9, progress=False)
    loose.check_budgets()
    assert loose.info["flop_budget"]["fraction"] == 0.75 and loose.info["structures"]["neuron"]["removed"] == 12 + 9
    tight = cpt.prune(_mlp(), data, method=METHOD, sparsity=0.1, flop_budget=0.4, progress=False)
    alone = cpt.prune(_mlp(), data, method=METHOD, flop_budget=0.4, progress=False)
    assert tight.info["flop_budget"] == alone.info["flop_budget"] and tight.info["flop_budget"]["fraction"] > 0.1
    with pytest.raises(ValueError, match="flop_budget: with a FLOP budget"):
        cpt.Pruner("osscar", sparsity={"neuron": 0.5}, flop_budget=0.5)
    with pytest.raises(ValueError, match="flop_budget: the sequential engine"):
        cpt.Pruner("osscar", flop_budget=0.5, sequential=True)


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(2, 9), min_size=1, max_size=3), budget=st.floats(0.05, 1.0))
def test_uniform_fraction_is_the_smallest_breakpoint_meeting_the_budget(widths, budget):
    from combprune.problems.budget import within_budget
    from combprune.torch._calibration import collect
    from combprune.torch._structured_budget import _candidates, uniform_fraction
    from combprune.torch.structured import StructuredSetup

    torch.manual_seed(0)
    sizes = [3, *widths, 2]
    layers = [m for a, b in zip(sizes, sizes[1:]) for m in (nn.Linear(a, b), nn.ReLU())][:-1]
    model = nn.Sequential(*layers).eval()
    setup = StructuredSetup.build(model, method=METHOD, sparsity=None, targets=None, ignore=None, solver_options=None,
                                  kinds=("neuron",), pairs=None, flop_budget=budget)
    before = _hash(model)
    try:
        setup.prepare(model, collect(torch.randn(4, 3), None, torch.device("cpu")))
    except ValueError as err:  # infeasible: the largest fraction is too many FLOPs
        assert "flop_budget" in str(err)
        return
    info = setup.plan.budget
    M, cands = info["model_flops"], _candidates(setup)
    f, flops = uniform_fraction(setup, M, budget)
    assert f == info["fraction"] and within_budget(flops, budget * M)
    i = int(np.searchsorted(cands, f))
    if i > 0:  # one breakpoint lower misses the budget
        assert not within_budget(_flops_at(setup, M, cands[i - 1]), budget * M)
    assert _hash(model) == before


def _flops_at(setup, M, f):
    from combprune.torch._structured_budget import plan_model_flops
    from combprune.torch.structured import StructuredPlan

    plan = StructuredPlan(setup.units)
    for u in setup.units:
        plan.keep[u.consumer] = np.arange(u.n_groups) >= setup.n_remove(u, float(f))
    return plan_model_flops(plan, setup.modules, setup.dense_flops, M)
