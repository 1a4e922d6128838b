"""Layer-wise structured pruning (combprune.torch.structured) and physical removal."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune as torch_prune

import combprune
from combprune.problems import osscar_default_ridge
from combprune.torch import structured as S
from combprune.torch._calibration import collect
from combprune.torch.physical import STRUCTURE_KEY, from_pretrained, remove_pruned
from combprune.torch.structured import UnsupportedGraphError, discover_units, prune_structured

SOLVERS = {s["name"] for s in combprune.list_solvers()}
HAS_OSSCAR = "osscar" in SOLVERS


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


def _hash(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _mlp(seed: int = 0, sizes=(6, 8, 5, 3), bn: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU() if i % 2 == 0 else nn.GELU())
            if bn and i == 0:
                layers.append(nn.BatchNorm1d(sizes[i + 1]))
    model = nn.Sequential(*layers)
    model.train()
    with torch.no_grad():
        model(torch.randn(32, sizes[0]))  # non-trivial BatchNorm running statistics
    return model.eval()


class ConvBNConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.c2 = nn.Conv2d(6, 5, 3, stride=2, padding=1, dilation=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.c3 = nn.Conv2d(5, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.c1(x)))
        x = torch.relu(self.bn2(self.c2(x)))
        return self.c3(x).mean(dim=(2, 3))


def _convnet(seed: int = 0) -> ConvBNConv:
    torch.manual_seed(seed)
    m = ConvBNConv().train()
    with torch.no_grad():
        m(torch.randn(8, 3, 8, 8))
    return m.eval()


def _bert(seed: int = 0, cls=None):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_attention_heads=4, intermediate_size=12, num_hidden_layers=2,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    cls = cls or transformers.BertForSequenceClassification
    return cls(cfg).eval()


# ---------------------------------------------------------------------------------------------
# X^T X accumulation and the per-layer problem
# ---------------------------------------------------------------------------------------------
def test_gram_linear_sequence_input_equals_dense():
    torch.manual_seed(1)
    layer = nn.Linear(5, 3)
    x = torch.randn(4, 7, 5)
    H = None
    for rows in S.layer_rows(layer, x, max_rows=6):  # chunked
        H = S.accumulate_gram(H, rows)
    X = x.reshape(-1, 5).double()
    torch.testing.assert_close(H, X.T @ X)
    assert H.dtype == torch.float64


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2), (1, "same", 1)])
def test_gram_conv_im2col_equals_dense(stride, padding, dilation):
    torch.manual_seed(2)
    layer = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, dilation=dilation)
    x = torch.randn(5, 3, 9, 9)
    chunks = list(S.layer_rows(layer, x, max_rows=50))
    assert len(chunks) > 1  # memory-bounded: unfolded a few samples at a time
    X = torch.cat(chunks).double()
    # rows of X times W_hat reproduce the convolution (im2col row order = weight.reshape order)
    out = (X @ S.weight_matrix(layer).double() + layer.bias.double()).reshape(5, -1, 4).transpose(1, 2)
    torch.testing.assert_close(out.reshape(layer(x).shape).float(), layer(x), atol=1e-5, rtol=1e-5)
    H = None
    for rows in chunks:
        H = S.accumulate_gram(H, rows)
    torch.testing.assert_close(H, X.T @ X)
    # the hook-based accumulation through a model gives the same matrix
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    H2 = S._grams_of(model, [layer], ["conv"], collect(x, None, torch.device("cpu")))[0]
    X2 = torch.cat(list(S.layer_rows(layer, model[0](x)))).double()
    torch.testing.assert_close(H2, X2.T @ X2)


def test_group_labels_per_layer_type():
    lin = nn.Linear(6, 2)
    u = S.StructuredUnit("neuron", "b", ("a",), n_groups=6)
    assert S.group_labels(u, lin).tolist() == list(range(6))
    conv = nn.Conv2d(3, 2, (2, 3))
    u = S.StructuredUnit("channel", "b", ("a",), n_groups=3)
    assert S.group_labels(u, conv).tolist() == [0] * 6 + [1] * 6 + [2] * 6
    head = nn.Linear(8, 8)
    u = S.StructuredUnit("head", "o", ("q", "k", "v"), attention="s", n_groups=4, features_per_group=2)
    assert S.group_labels(u, head).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_objective_equals_reconstruction_error(kind):
    torch.manual_seed(3)
    if kind == "linear":
        layer = nn.Linear(6, 4)
        x = torch.randn(30, 6)
        unit = S.StructuredUnit("neuron", "l", ("p",), n_groups=6)
    else:
        layer = nn.Conv2d(4, 3, 3, padding=1, stride=2)
        x = torch.randn(6, 4, 7, 7)
        unit = S.StructuredUnit("channel", "l", ("p",), n_groups=4)
    H = None
    for rows in S.layer_rows(layer, x):
        H = S.accumulate_gram(H, rows)
    problem = S.layer_problem(unit, layer, H, s=2)
    assert problem.ridge == pytest.approx(osscar_default_ridge(H.numpy()))
    res = combprune.solve(problem, "bruteforce")
    dense_out = layer(x).double()
    W_hat = S.weight_matrix(layer).double().clone()
    S._set_weight_matrix(layer, torch.as_tensor(res.x))
    err = 0.5 * float(((layer(x).double() - dense_out) ** 2).sum())
    W = S.weight_matrix(layer).double()
    err += 0.5 * problem.ridge * float(((W - W_hat) ** 2).sum())
    assert res.objective == pytest.approx(err, rel=1e-4)
    assert problem.group_support(res.x).sum() == 2


def test_report_objective_of_first_unit_is_its_reconstruction_error():
    model = _mlp(bn=False)
    x = torch.randn(40, 6)
    dense = _mlp(bn=False)
    reports, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    byname = {r.name: r for r in reports}
    X = dense[1](dense[0](x)).double()  # input of the first consumer (unchanged by pruning)
    W_hat, W = dense[2].weight.double().T, model[2].weight.double().T
    err = 0.5 * float(((X @ (W - W_hat)) ** 2).sum()) + 0.5 * osscar_default_ridge((X.T @ X).numpy()) * float(((W - W_hat) ** 2).sum())
    assert byname["2.weight"].objective == pytest.approx(err, rel=1e-6)
    assert byname["2.weight"].groups_kept == 4 and byname["2.weight"].solver == "bruteforce"
    # kept counts describe the physically smaller model
    assert byname["0.weight"].kept == 4 * 6
    assert byname["2.weight"].kept == (5 - 2) * 4
    # FLOPs per calibration sample, 2 x MACs; effective = dense x kept / params
    assert byname["2.weight"].dense_flops == 2 * 8 * 5
    assert byname["2.weight"].effective_flops == pytest.approx(2 * 4 * 3)
    assert all(r.kind == "structured" and r.flop_unit == "FLOPs" for r in reports)


def test_later_units_see_pruned_inputs():
    """Sequential procedure: the second unit's X^T X is computed on the pruned first layer's outputs."""
    model = _mlp(bn=False)
    x = torch.randn(40, 6)
    seen = []
    orig = S.layer_problem

    def spy(unit, layer, H, s, ridge=None):
        seen.append((unit.consumer, H.clone()))
        return orig(unit, layer, H, s, ridge)

    import unittest.mock as mock

    with mock.patch.object(S, "layer_problem", spy):
        prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    assert [n for n, _ in seen] == ["2", "4"]
    X = model[3](model[2](model[1](model[0](x)))).double()  # with the pruned layer "2"
    torch.testing.assert_close(seen[1][1], X.T @ X)


# ---------------------------------------------------------------------------------------------
# Discovery and errors
# ---------------------------------------------------------------------------------------------
def test_discovery_mlp_conv_bert():
    units = discover_units(_mlp())
    assert [(u.kind, u.producers, u.consumer, u.norms) for u in units] == [
        ("neuron", ("0",), "3", ("2",)),
        ("neuron", ("3",), "5", ()),
    ]
    units = discover_units(_convnet())
    assert [(u.kind, u.producers, u.consumer, u.norms) for u in units] == [
        ("channel", ("c1",), "c2", ("bn1",)),
        ("channel", ("c2",), "c3", ("bn2",)),
    ]
    units = discover_units(_bert())
    assert [u.kind for u in units] == ["head", "neuron", "head", "neuron"]
    assert units[0].features_per_group == 4 and units[0].n_groups == 4


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.fc2(h) + h  # the features of fc1 have a second reader


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.fc2(torch.relu(self.fc1(x)))


def test_unsupported_graphs_give_clear_errors():
    with pytest.raises(UnsupportedGraphError, match="no prunable producer"):
        discover_units(Residual())
    with pytest.raises(UnsupportedGraphError, match="pairs="):
        discover_units(Untraceable())
    # declared pairs make the untraceable model prunable
    model = Untraceable()
    units = discover_units(model, pairs=[("fc1", "fc2")])
    assert units[0].consumer == "fc2"
    with pytest.raises(ValueError, match="no module named"):
        discover_units(model, pairs=[("fc1", "nope")])
    with pytest.raises(UnsupportedGraphError, match="Linear -> Linear"):
        discover_units(_convnet(), pairs=[("c1", "bn1")])
    with pytest.raises(ValueError, match="pairs"):
        discover_units(model, pairs=["fc1"])


class Shared(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + self.fc2(x)


class Reordered(nn.Module):
    """Registration order differs from the forward order."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Linear(3, 2)
        self.b = nn.Linear(4, 3)
        self.a = nn.Linear(5, 4)

    def forward(self, x):
        return self.c(torch.tanh(self.b(torch.relu(self.a(x)))))


def test_shared_consumer_is_refused_and_forward_order_is_used():
    with pytest.raises(UnsupportedGraphError, match="called 2 times"):
        prune_structured(Shared(), torch.randn(8, 4), method="bruteforce", pairs=[("fc1", "fc2")], progress=False)
    torch.manual_seed(0)
    model = Reordered().eval()
    _, plan = prune_structured(model, torch.randn(16, 5), method="bruteforce", sparsity=0.5, progress=False)
    assert [u.consumer for u in plan.units] == ["b", "c"]


class Permuting(nn.Module):
    """Looks like an HF MLP (fc1, activation_fn, fc2) but permutes the features in between."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)
        self.activation_fn = nn.GELU()

    def forward(self, x):
        return self.fc2(self.activation_fn(self.fc1(x)).flip(-1))


def test_output_check_undoes_removal_of_a_non_matching_graph():
    torch.manual_seed(0)
    model = Permuting().eval()
    _, plan = prune_structured(model, torch.randn(16, 4), method="bruteforce", sparsity=0.5, progress=False)
    before = _hash(model)
    with pytest.raises(ValueError, match="outputs changed"):
        remove_pruned(model, plan)
    assert _hash(model) == before and model.fc1.out_features == 6 and model.fc2.in_features == 6


class FusedNoHeadCount(nn.Module):
    """A fused q|k|v projection with no head count on the module: not analysable."""

    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(8, 24)
        self.c_proj = nn.Linear(8, 8)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(8, dim=-1)
        return self.c_proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


def test_unsupported_hf_attention_raises():
    with pytest.raises(UnsupportedGraphError, match="no prunable producer"):
        discover_units(FusedNoHeadCount())


def test_bad_arguments():
    model = _mlp()
    x = torch.randn(10, 6)
    with pytest.raises(ValueError, match="sparsity"):
        prune_structured(model, x, method="bruteforce", sparsity=1.0, progress=False)
    with pytest.raises(ValueError, match="sparsity"):
        prune_structured(model, x, method="bruteforce", sparsity={"neuron": -0.1}, progress=False)
    with pytest.raises(ValueError, match="kinds"):
        prune_structured(model, x, method="bruteforce", kinds=("filters",), progress=False)
    with pytest.raises(ValueError, match="method"):
        prune_structured(model, x, method="dual-sort", progress=False)
    with pytest.raises(ValueError, match="targets"):
        prune_structured(model, x, method="bruteforce", targets=["0"], progress=False)  # a producer, no unit
    with pytest.raises(ValueError, match="calibration"):
        prune_structured(model, [], method="bruteforce", progress=False)


def test_sparsity_dict_and_targets():
    model = _mlp(bn=False)
    x = torch.randn(20, 6)
    reports, plan = prune_structured(model, x, method="bruteforce", sparsity={"4": 0.4}, progress=False)
    assert plan.keep["2"].all() and plan.keep["4"].sum() == 3
    model = _mlp(bn=False)
    reports, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, targets=["4"], progress=False)
    assert [u.consumer for u in plan.units] == ["4"]


# ---------------------------------------------------------------------------------------------
# Failures leave the model unchanged
# ---------------------------------------------------------------------------------------------
def test_failing_structured_prune_leaves_model_unchanged(monkeypatch):
    model = _mlp()
    before = _hash(model)
    calls = {"n": 0}
    real = combprune.solve

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the first layer has already been rewritten
            raise RuntimeError("solver crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(combprune, "solve", flaky)
    with pytest.raises(RuntimeError, match="solver crashed"):
        prune_structured(model, torch.randn(20, 6), method="bruteforce", sparsity=0.5, progress=False)
    assert calls["n"] == 2
    assert _hash(model) == before
    assert not model.training


def test_failing_physical_removal_leaves_model_unchanged():
    model = _mlp()
    x = torch.randn(20, 6)
    _, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    with torch.no_grad():  # edit a removed column: removal would change the outputs
        dropped = int(np.flatnonzero(~plan.keep["5"])[0])
        model[5].weight[0, dropped] = 1.0
    before = _hash(model)
    with pytest.raises(ValueError, match="nonzero weights on removed groups"):
        remove_pruned(model, plan)
    assert _hash(model) == before
    # a plan applied twice is refused (sizes no longer match)
    model = _mlp()
    _, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    remove_pruned(model, plan)
    before = _hash(model)
    with pytest.raises(ValueError, match="already removed"):
        remove_pruned(model, plan)
    assert _hash(model) == before


# ---------------------------------------------------------------------------------------------
# Physical removal preserves outputs
# ---------------------------------------------------------------------------------------------
def _assert_physical_equals_masked(model, calib, inputs, method, sparsity, call=lambda m, x: m(x)):
    _, plan = prune_structured(model, calib, method=method, sparsity=sparsity, progress=False)
    n_before = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        masked = call(model, inputs)
    remove_pruned(model, plan)
    with torch.no_grad():
        small = call(model, inputs)
    torch.testing.assert_close(small, masked, atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in model.parameters()) < n_before
    return plan


def test_physical_mlp_with_batchnorm():
    model = _mlp()
    x = torch.randn(50, 6)
    plan = _assert_physical_equals_masked(model, x, torch.randn(17, 6), "bruteforce", 0.5)
    assert model[0].out_features == 4 and model[2].num_features == 4 and model[3].in_features == 4
    assert model[3].out_features == 3 and model[5].in_features == 3
    assert model[0].weight.shape == (4, 6) and model[2].running_mean.shape == (4,)
    assert plan.to_dict()["keep"]["3"].count(True) == 4


def test_physical_conv_bn_conv():
    model = _convnet()
    x = torch.randn(6, 3, 8, 8)
    _assert_physical_equals_masked(model, x, torch.randn(3, 3, 8, 8), "bruteforce", 0.5)
    assert model.c1.out_channels == 3 and model.bn1.num_features == 3 and model.c2.in_channels == 3
    assert model.c2.weight.shape == (3, 3, 3, 3) and model.c3.weight.shape == (2, 3, 1, 1)


def test_masks_match_physical_and_masked_modules_can_be_removed():
    model = _mlp()
    x = torch.randn(30, 6)
    _, plan = prune_structured(model, x, method="bruteforce", sparsity=0.5, progress=False)
    with torch.no_grad():
        ref = model(x)
    for name, mask in plan.masks(model).items():
        torch_prune.custom_from_mask(dict(model.named_modules())[name], "weight", mask)
    assert torch.count_nonzero(model[0].weight) == 4 * 6  # producer rows masked too
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=1e-6)
    remove_pruned(model, plan)
    assert not any(hasattr(m, "weight_orig") for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["bruteforce"] + (["osscar"] if HAS_OSSCAR else []))
def test_physical_bert_heads_and_ffn_and_round_trip(tmp_path, method):
    transformers = pytest.importorskip("transformers")
    model = _bert()
    torch.manual_seed(5)
    ids = torch.randint(0, 40, (8, 10))
    mask = torch.ones_like(ids)
    mask[:, 8:] = 0
    calib = [{"input_ids": ids, "attention_mask": mask}]
    test_ids = torch.randint(0, 40, (3, 10))

    def call(m, x):
        return m(input_ids=x).logits

    _assert_physical_equals_masked(model, calib, test_ids, method, 0.5, call)
    att = model.bert.encoder.layer[0].attention.self
    assert att.num_attention_heads == 2 and att.all_head_size == 8 and att.query.out_features == 8
    assert model.bert.encoder.layer[1].intermediate.dense.out_features == 6
    record = getattr(model.config, STRUCTURE_KEY)
    assert record["base"] and record["attention"]["encoder.layer.0.attention.self"]["num_attention_heads"] == 2
    with torch.no_grad():
        ref = call(model, test_ids)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path)).eval()
    assert type(loaded) is transformers.BertForSequenceClassification
    with torch.no_grad():
        torch.testing.assert_close(call(loaded, test_ids), ref, atol=1e-6, rtol=1e-6)
    base = from_pretrained(str(tmp_path), transformers.BertModel).eval()  # another head class
    with torch.no_grad():
        torch.testing.assert_close(base(input_ids=test_ids).last_hidden_state, model.bert(input_ids=test_ids).last_hidden_state)
    # pruning the loaded model again, then saving and loading, still round-trips
    _, plan = prune_structured(loaded, calib, method="bruteforce", sparsity={"head": 0.5}, progress=False)
    remove_pruned(loaded, plan)
    assert loaded.bert.encoder.layer[0].attention.self.num_attention_heads == 1
    loaded.save_pretrained(tmp_path / "again")
    again = from_pretrained(str(tmp_path / "again")).eval()
    with torch.no_grad():
        torch.testing.assert_close(call(again, test_ids), call(loaded, test_ids))
    # the plain loader refuses the smaller checkpoint instead of loading wrong weights
    with pytest.raises(Exception):
        transformers.BertForSequenceClassification.from_pretrained(str(tmp_path))


def _hf_case(name: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    pixels = torch.randn(4, 3, 8, 8)
    ids = torch.randint(3, 40, (4, 10))
    if name == "vit":
        cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=12, num_labels=3)
        return transformers.ViTForImageClassification(cfg), pixels, lambda m, x: m(pixel_values=x).logits, ("head", "neuron")
    if name == "opt":
        cfg = transformers.OPTConfig(vocab_size=40, hidden_size=16, num_attention_heads=4, ffn_dim=12, num_hidden_layers=2, max_position_embeddings=20, word_embed_proj_dim=16)
        return transformers.OPTForCausalLM(cfg), [{"input_ids": ids}], lambda m, x: m(input_ids=ids).logits, ("head", "neuron")
    if name == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=40, n_embd=16, n_head=4, n_layer=2, n_positions=20, bos_token_id=0, eos_token_id=0)
        return transformers.GPT2LMHeadModel(cfg), [{"input_ids": ids}], lambda m, x: m(input_ids=ids).logits, ("head", "neuron")
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=16, num_attention_heads=4, num_key_value_heads=2, intermediate_size=12, num_hidden_layers=2, max_position_embeddings=20)
    return transformers.LlamaForCausalLM(cfg), [{"input_ids": ids}], lambda m, x: m(input_ids=ids).logits, ("head", "neuron")


@pytest.mark.parametrize("name", ["vit", "opt", "llama", "gpt2"])
def test_physical_projection_style_hf_models(tmp_path, name):
    model, calib, call, kinds = _hf_case(name)
    model.eval()
    assert {u.kind for u in discover_units(model)} == set(kinds)
    inputs = calib if isinstance(calib, torch.Tensor) else None
    _assert_physical_equals_masked(model, calib, inputs, "osscar" if HAS_OSSCAR else "bruteforce", 0.5, call)
    with torch.no_grad():
        ref = call(model, inputs)
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(call(loaded, inputs), ref)


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 7), min_size=3, max_size=4),
    sparsity=st.sampled_from([0.0, 0.25, 0.5, 0.75]),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["bruteforce", "group-magnitude"] if "group-magnitude" in SOLVERS else ["bruteforce"]),
)
def test_property_physical_equals_masked_mlp(sizes, sparsity, seed, method):
    model = _mlp(seed, tuple(sizes), bn=seed % 2 == 0)
    torch.manual_seed(seed)
    x = torch.randn(12, sizes[0])
    _, plan = prune_structured(model, x, method=method, sparsity=sparsity, progress=False)
    for u in plan.units:
        assert plan.keep[u.consumer].sum() == u.n_groups - int(np.floor(sparsity * u.n_groups + 1e-9))
    with torch.no_grad():
        masked = model(x)
    remove_pruned(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(model(x), masked, atol=1e-5, rtol=1e-5)
