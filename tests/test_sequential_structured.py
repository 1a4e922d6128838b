"""Structured methods (osscar, group-magnitude) on the sequential engine: FFN neurons and heads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import combprune.torch as cpt
from combprune.torch import structured as S

transformers = pytest.importorskip("transformers")


def tiny_bert(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=4,
                                  intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def tiny_llama(layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaModel(cfg).eval()


def batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 50, (4, 8), generator=g)} for _ in range(n)]


def effective(model):
    """name -> effective weight (weight_orig * weight_mask when masked)."""
    return {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def removed_groups(mask_cols: torch.Tensor, size: int) -> np.ndarray:
    """Groups (of ``size`` consecutive input columns) whose columns are all masked."""
    dead = (mask_cols == 0).all(dim=0).reshape(-1, size)
    assert torch.all(dead.all(dim=1) | ~dead.any(dim=1)), "a group is partly removed"
    return dead.all(dim=1).numpy()


@pytest.mark.parametrize("method", ["osscar", "group-magnitude"])
def test_bert_heads_and_neurons_masked_block_by_block(method):
    model = tiny_bert()
    rep = cpt.prune(model, batches(), method=method, sparsity=0.5, sequential=True, progress=False)
    assert isinstance(rep, cpt.PruneReport) and len(rep.blocks) == 2 and rep.peak_memory_bytes > 0
    for b, layer in enumerate(model.encoder.layer):
        att = layer.attention
        heads = removed_groups(att.output.dense.weight_mask, 4)  # 4 heads of size 4
        assert heads.sum() == 2
        rows = np.repeat(heads, 4)
        for proj in (att.self.query, att.self.key, att.self.value):  # producers: output rows of the removed heads
            assert torch.equal((proj.weight_mask == 0).all(dim=1), torch.as_tensor(rows))
        neurons = removed_groups(layer.output.dense.weight_mask, 1)
        assert neurons.sum() == 16
        assert torch.equal((layer.intermediate.dense.weight_mask == 0).all(dim=1), torch.as_tensor(neurons))
    consumers = [r for r in rep.layers if r.relative_error is not None]
    assert [r.block for r in consumers] == [0, 0, 1, 1] and all(r.relative_error >= 0 for r in consumers)
    out = model(**batches(1, seed=5)[0]).last_hidden_state
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("gqa", ["kv", "query"])
def test_gqa_llama_prunes_ffn_neurons_and_grouped_query_heads(gqa):
    """4 query heads of size 4 sharing 2 KV heads: "kv" removes one KV head with its 2 query
    heads, "query" one query head inside each KV group (the KV projections stay whole)."""
    model = tiny_llama()
    rep = cpt.prune(model, batches(), method="osscar", sparsity=0.5, sequential=True, progress=False, gqa=gqa)
    for layer in model.layers:
        neurons = removed_groups(layer.mlp.down_proj.weight_mask, 1)
        assert neurons.sum() == 12
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
            assert torch.equal((proj.weight_mask == 0).all(dim=1), torch.as_tensor(neurons))
        heads = removed_groups(layer.self_attn.o_proj.weight_mask, 4)
        assert heads.sum() == 2
        assert torch.equal((layer.self_attn.q_proj.weight_mask == 0).all(dim=1), torch.as_tensor(np.repeat(heads, 4)))
        kv_removed = (layer.self_attn.k_proj.weight_mask == 0).all(dim=1) if hasattr(layer.self_attn.k_proj, "weight_mask") else torch.zeros(8, dtype=torch.bool)
        if gqa == "kv":
            assert heads.tolist() in ([True, True, False, False], [False, False, True, True])
            assert torch.equal(kv_removed, torch.as_tensor(np.repeat(heads[::2], 4)))
        else:
            assert heads[:2].sum() == 1 and heads[2:].sum() == 1 and not kv_removed.any()
    assert rep.not_pruned == []
    assert torch.isfinite(model(**batches(1, seed=5)[0]).last_hidden_state).all()


@pytest.mark.parametrize("build, layers", [(tiny_bert, 1), (tiny_llama, 1), (tiny_bert, 2)])
def test_sequential_equals_the_whole_model_path(build, layers):
    """One block: the same procedure step for step; two blocks: block 1 sees the pruned block 0 in both."""
    seq, whole = build(layers), build(layers)
    rep_s = cpt.prune(seq, batches(), method="osscar", sparsity=0.5, sequential=True, progress=False)
    rep_w = cpt.prune(whole, batches(), method="osscar", sparsity=0.5, progress=False)
    assert not rep_w.blocks and rep_s.blocks
    assert rep_s.info["structured_plan"]["keep"] == rep_w.info["structured_plan"]["keep"]
    a, b = effective(seq), effective(whole)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-7)
    assert [r.name for r in rep_s.layers] == [r.name for r in rep_w.layers]
    for rs, rw in zip(rep_s.layers, rep_w.layers):
        assert rs.kept == rw.kept and rs.dense_flops == rw.dense_flops
        if rw.objective is not None:
            assert rs.objective == pytest.approx(rw.objective, rel=1e-6)


def test_disk_offload_and_blocks_make_structured_methods_sequential(tmp_path):
    pytest.importorskip("safetensors")
    ref = tiny_bert()
    cpt.prune(ref, batches(), method="group-magnitude", sparsity=0.25, sequential=True, progress=False)
    model = tiny_bert()
    rep = cpt.prune(model, batches(), method="group-magnitude", sparsity=0.25, offload="disk",
                    offload_dir=str(tmp_path), progress=False)  # offload= chooses the sequential engine
    assert len(rep.blocks) == 2
    for name, w in effective(ref).items():
        torch.testing.assert_close(effective(model)[name], w)


def test_failure_in_block_one_restores_the_model(monkeypatch):
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    real = S.StructuredSetup.solve_unit
    calls = {"n": 0}

    def failing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the first unit of block 1
            raise RuntimeError("solver crashed")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(S.StructuredSetup, "solve_unit", failing)
    with pytest.raises(RuntimeError, match="solver crashed"):
        cpt.prune_sequential(model, batches(), method="osscar", sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"method": "osscar", "pattern": "2:4"}, "pattern"),
        ({"method": "osscar", "sparsity": 1.0}, "sparsity"),
        ({"method": "osscar", "sparsity": 0.5, "apply": "zeros"}, "apply"),
        ({"method": "osscar", "sparsity": 0.5, "kinds": ("filters",)}, "kinds"),
        ({"method": "chita", "sparsity": 0.5}, "method"),
        ({"method": "osscar"}, "sparsity"),
    ],
)
def test_bad_structured_arguments_name_the_argument(kwargs, field):
    model = tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=f"^{field}"):
        cpt.prune_sequential(model, batches(), progress=False, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_pruner_sequential_option_is_validated():
    with pytest.raises(ValueError, match="^sequential"):
        cpt.Pruner("sparsegpt", sparsity=0.5, sequential=False)
    with pytest.raises(ValueError, match="^sequential"):
        cpt.Pruner("chita", sparsity=0.5, sequential=True)
    with pytest.raises(TypeError, match="^sequential"):
        cpt.Pruner("osscar", sparsity=0.5, sequential="yes")
    assert cpt.Pruner("osscar", sparsity=0.5, blocks="encoder.layer").config.runs_sequentially
    assert not cpt.Pruner("osscar", sparsity=0.5).config.runs_sequentially
