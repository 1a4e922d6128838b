"""The Torch-Pruning baselines of the structured benchmarks (``benchmarks/_tp_baselines.py``):
equal-FLOP bisection, the lazy import naming the extra, bad input."""

from __future__ import annotations

import copy
import importlib.util
import os
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")
from torch import nn  # noqa: E402

import combprune.torch as cpt  # noqa: E402

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "_tp_baselines.py")
_spec = importlib.util.spec_from_file_location("combprune_tp_baselines", _PATH)
tpb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpb)


class Res(nn.Module):
    """Stem + one residual block (a residual stream Torch-Pruning must couple) + classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.stem, self.bn = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c1, self.c2 = nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(12, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = x + self.c2(torch.relu(self.c1(x)))
        return self.fc(x.mean((2, 3)))


def _setup():
    torch.manual_seed(0)
    model, X = Res().eval(), torch.randn(16, 1, 6, 6)
    y = torch.randint(0, 3, (16,))
    flops0 = cpt.model_flops(model, X)

    def backward(m):
        nn.functional.cross_entropy(m(X), y).backward()

    return model, X, flops0, backward


@pytest.mark.parametrize("method", ["tp-magnitude", "tp-taylor"])
@pytest.mark.parametrize("target", [0.5, 0.7])
def test_prune_to_flops_meets_the_target_with_the_smallest_ratio(method, target):
    dense, X, flops0, backward = _setup()
    before = {k: v.clone() for k, v in dense.state_dict().items()}

    def prune(m, r):
        return tpb.tp_prune(m, X[:1], method, r, ignored_layers=[m.fc], backward=backward)

    def frac(m):
        return cpt.model_flops(m, X) / flops0

    steps = 10
    model, ratio, f = tpb.prune_to_flops(dense, prune, frac, target, steps=steps)
    assert f <= target and f == pytest.approx(frac(model))
    assert model.fc.out_features == 3 and model.stem.out_channels < 8  # the stream shrank, classes kept
    assert model(X).shape == (16, 3)
    # one bisection resolution less no longer meets the target
    assert frac(prune(copy.deepcopy(dense), ratio - 0.8 / 2**steps)) > target
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in before.items())  # dense untouched


def test_bad_input_names_the_argument():
    dense, X, flops0, _ = _setup()
    with pytest.raises(ValueError, match="method"):
        tpb.tp_prune(dense, X[:1], "tp-random", 0.3, ignored_layers=[dense.fc])
    with pytest.raises(ValueError, match="backward"):
        tpb.tp_prune(dense, X[:1], "tp-taylor", 0.3, ignored_layers=[dense.fc])
    with pytest.raises(ValueError, match="target"):
        tpb.prune_to_flops(dense, lambda m, r: m, lambda m: 1.0, 0.5, steps=2)


def test_missing_torch_pruning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ImportError, match=r"combprune\[baselines\]"):
        tpb.torch_pruning()


@pytest.mark.parametrize("heads", [None, 1, 3])
def test_bert_heads_and_neurons_equals_the_masked_dense_model(heads):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=40, max_position_embeddings=16)
    dense = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    batch = {"input_ids": torch.randint(1, 50, (3, 7)), "attention_mask": torch.ones(3, 7, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0
    model = tpb.bert_heads_and_neurons(copy.deepcopy(dense), batch, "tp-magnitude", 0.5, heads)
    for layer in model.encoder.layer:
        att = layer.attention.self
        assert att.num_attention_heads == 4 - (2 if heads is None else heads)
        assert att.query.out_features == att.num_attention_heads * 8 == layer.attention.output.dense.in_features
        assert layer.intermediate.dense.out_features == 20 == layer.output.dense.in_features
        assert att.key.out_features == att.value.out_features == att.query.out_features
        assert layer.output.dense.out_features == 32  # the hidden size (residual stream) is kept
    with torch.no_grad():
        got = model(**batch).last_hidden_state
        want = tpb.bert_masked_like(dense, model)(**batch).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
