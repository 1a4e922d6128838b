"""The sequential engine: block discovery, statistics, pruned weights, errors, report."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import combprune as cp
import combprune.torch as cpt
from combprune.problems import LayerwiseL0
from combprune.torch._sequential_blocks import find_blocks

transformers = pytest.importorskip("transformers")


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    return transformers.GPT2Model(cfg).eval()


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaModel(cfg).eval()


def token_batches(n_batches=3, batch=4, length=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 50, (batch, length), generator=g)} for _ in range(n_batches)]


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("build, path", [(tiny_bert, "encoder.layer"), (tiny_gpt2, "h"), (tiny_llama, "layers")])
def test_blocks_found_and_every_linear_pruned(build, path):
    model = build()
    assert find_blocks(model) == list(model.get_submodule(path))
    rep = cpt.prune_sequential(model, token_batches(), method="sparsegpt", sparsity=0.5, progress=False)
    assert len(rep.blocks) == 2
    assert len(rep.layers) == (6 if build is tiny_bert else 4 if build is tiny_gpt2 else 7) * 2
    for row in rep.layers:
        assert row.name.startswith(f"{path}.{row.block}.")
        layer = model.get_submodule(row.name.rsplit(".", 1)[0])
        assert int((layer.weight != 0).sum()) == row.nnz <= row.params - row.params // 2
        assert 0 <= row.relative_error < 1 and row.dense_flops > 0 and row.rank == 0
    assert isinstance(rep, cpt.PruneReport) and not rep.budget_violations() and rep.k == rep.kept
    assert rep.sparsity >= 0.5 and rep.peak_memory_bytes > 0 and rep.method == "sparsegpt" and "rel. error" in str(rep)


def tiny_gptj(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPTJConfig(vocab_size=50, n_embd=16, n_layer=2, n_head=2, rotary_dim=4, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPTJModel(cfg).eval()


def tiny_bloom(seed=0):
    torch.manual_seed(seed)
    return transformers.BloomModel(transformers.BloomConfig(vocab_size=50, hidden_size=16, n_layer=2, n_head=2)).eval()


def tiny_gemma2(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.Gemma2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    num_key_value_heads=2, head_dim=4, sliding_window=3, max_position_embeddings=16)
    return transformers.Gemma2Model(cfg).eval()


def tiny_t5(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.T5Config(vocab_size=50, d_model=16, d_kv=4, d_ff=32, num_layers=3, num_heads=4)
    return transformers.T5EncoderModel(cfg).eval()


@pytest.mark.parametrize("build, name", [(tiny_bert, "encoder.layer.1.attention.self.query"), (tiny_gptj, "h.1.attn.q_proj"),
                                         (tiny_bloom, "h.1.self_attention.query_key_value"), (tiny_gemma2, "layers.2.self_attn.q_proj"),
                                         (tiny_t5, "encoder.block.2.layer.0.SelfAttention.q")])
def test_statistics_are_the_layer_inputs_after_earlier_blocks_are_pruned(build, name):
    """The H of a block's first layer is the Gram matrix of its input in the pruned model (GPT-J
    and BLOOM pass their KV cache under other names: no run of a block may see an earlier run's
    keys; Gemma-2's layer 1 attends globally with a mask of its own, layers 0 and 2 through a
    sliding window shorter than the sequence, and T5 passes its position bias from block 1 on:
    block 1's outputs, block 2's inputs, come from block 1's own inputs, not block 0's)."""
    model = build()
    batches = token_batches()
    ref = build()
    rep = cpt.prune_sequential(model, batches, method="wanda", sparsity=0.5, ridge=0.0, progress=False)
    # redo the layer by hand on the pruned model's activations
    seen = []
    layer = model.get_submodule(name)
    h = layer.register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 16).double()))
    dense = ref.get_submodule(name).weight.detach()
    with torch.no_grad():
        for b in batches:
            model(**b, **({} if build is tiny_t5 else {"use_cache": False}))
    h.remove()
    X = torch.cat(seen).numpy()
    prob = LayerwiseL0.from_activations(X, dense.T.double().numpy(), k=dense.numel() // 2, ridge=0.0)
    expect = cp.solve(prob, "wanda").x
    np.testing.assert_allclose(layer.weight.detach().T.double().numpy(), expect, rtol=1e-6, atol=1e-7)
    row = next(r for r in rep.layers if r.name == f"{name}.weight")
    assert row.relative_error == pytest.approx(prob.relative_error(expect), rel=1e-6)


def test_layerwise_reconstructs_better_than_the_baselines():
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt", "layerwise"):
        model = tiny_bert()
        rep = cpt.prune_sequential(model, token_batches(), method=method, pattern="2:4", progress=False)
        errors[method] = [r.relative_error for r in rep.layers]
    # block 0 sees identical inputs for every method: layer by layer, layerwise is best
    for i in range(6):
        assert errors["layerwise"][i] <= min(errors[m][i] for m in ("magnitude", "wanda", "sparsegpt")) + 1e-12


def test_granularity_output_keeps_the_same_count_per_output():
    model = tiny_bert()
    cpt.prune_sequential(model, token_batches(), method="layerwise", sparsity=0.75, granularity="output", progress=False)
    w = model.encoder.layer[0].intermediate.dense.weight
    assert torch.all((w != 0).sum(dim=1) <= 4)


@pytest.mark.parametrize(
    "kwargs, exc, field",
    [
        ({"method": "chita", "sparsity": 0.5}, ValueError, "method"),
        ({}, ValueError, "sparsity"),
        ({"sparsity": 0.5, "pattern": "2:4"}, ValueError, "sparsity"),
        ({"sparsity": 1.0}, ValueError, "sparsity"),
        ({"pattern": "2:3"}, ValueError, "pattern"),  # 3 does not divide 16
        ({"pattern": "4:2"}, ValueError, "pattern"),
        ({"sparsity": 0.5, "blocks": "encoder.nothing"}, ValueError, "blocks"),
        ({"sparsity": 0.5, "ridge": -1.0}, ValueError, "ridge"),
        ({"sparsity": 0.5, "granularity": "row"}, ValueError, "granularity"),
    ],
)
def test_bad_input_names_the_argument_and_leaves_the_model_unchanged(kwargs, exc, field):
    model = tiny_bert()
    before = weights(model)
    with pytest.raises(exc, match=f"^{field}"):
        cpt.prune_sequential(model, token_batches(), progress=False, **kwargs)
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


class _ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc1, self.fc2 = nn.Conv1d(2, 3, 3), nn.Linear(12, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).flatten(1))))


def test_models_without_repeated_blocks(caplog):
    """An nn.Sequential: its children are the blocks (the second layer sees the pruned first);
    any other model: one block; convolutions are named as left dense."""
    X = torch.randn(16, 6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    dense_second = model[2].weight.detach().clone()
    rep = cpt.prune_sequential(model, X, method="wanda", sparsity=0.5, ridge=0.0, progress=False)
    assert [r.name for r in rep.layers] == ["0.weight", "2.weight"] and [r.kept for r in rep.layers] == [24, 8]
    with torch.no_grad():
        A = torch.relu(model[0](X)).double().numpy()  # the pruned first layer's outputs
    expect = cp.solve(LayerwiseL0.from_activations(A, dense_second.T.double().numpy(), k=8, ridge=0.0), "wanda").x
    np.testing.assert_allclose(model[2].weight.detach().T.double().numpy(), expect, rtol=1e-6, atol=1e-7)
    conv = _ConvNet()
    conv_before = conv.conv.weight.detach().clone()
    with caplog.at_level("WARNING", logger="combprune"):
        rep = cpt.prune_sequential(conv, torch.randn(16, 2, 6), sparsity=0.5, progress=False)
    assert [r.name for r in rep.layers] == ["fc1.weight", "fc2.weight"] and rep.info["stacks"] == [""]
    assert "convolutions left dense: conv" in caplog.text and torch.equal(conv.conv.weight, conv_before)
    # the override works on any model
    stack = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    rep = cpt.prune_sequential(stack, torch.randn(8, 4), sparsity=0.5, blocks=list(stack), progress=False)
    assert [r.nnz for r in rep.layers] == [8, 8]


def test_failure_midway_restores_the_pruned_blocks(monkeypatch):
    model = tiny_bert()
    before = weights(model)
    import combprune.torch.sequential as seq

    real = seq._LayerStep._solve
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:  # block 1, second layer
            raise RuntimeError("solver crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(seq._LayerStep, "_solve", failing)
    with pytest.raises(RuntimeError, match="solver crashed"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, method="wanda", progress=False)
    after = weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_calibration_too_short_and_empty():
    with pytest.raises(ValueError, match="^calibration"):
        cpt.prune_sequential(tiny_bert(), [], sparsity=0.5, progress=False)
    model = tiny_bert()
    before = weights(model)
    with pytest.raises(ValueError, match="^calibration: the model failed on the first batch"):  # 32 tokens > 16 positions
        cpt.prune_sequential(model, [{"input_ids": torch.randint(0, 50, (2, 32))}], sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_report_serialises():
    rep = cpt.prune_sequential(tiny_gpt2(), token_batches(1), method="magnitude", sparsity=0.5, progress=False)
    out = rep.to_dict()
    assert out["method"] == "magnitude" and len(out["layers"]) == 8 and out["totals"]["sparsity"] >= 0.5
    assert out["info"]["calibration_samples"] == 4 and len(out["blocks"]) == 2 and out["peak_memory_bytes"] > 0
    assert all(row["relative_error"] is not None and row["block"] in (0, 1) for row in out["layers"])
    assert "block" in rep.to_csv().splitlines()[0]


def test_disk_offload_gives_the_same_model_and_frees_idle_blocks(tmp_path):
    pytest.importorskip("safetensors")
    ref = tiny_bert()
    cpt.prune_sequential(ref, token_batches(), method="sparsegpt", sparsity=0.5, progress=False)
    model = tiny_bert()
    on_meta = []
    hook = model.encoder.layer[0].register_forward_hook(
        lambda m, a, o: on_meta.append(model.encoder.layer[1].attention.self.query.weight.is_meta))
    rep = cpt.prune_sequential(model, token_batches(), method="sparsegpt", sparsity=0.5, progress=False,
                               offload="disk", offload_dir=str(tmp_path))
    hook.remove()
    assert any(on_meta)  # block 1 was on disk while block 0 was processed
    assert sorted(os.listdir(tmp_path)) == ["block0.pruned.safetensors", "block0.safetensors",
                                            "block1.pruned.safetensors", "block1.safetensors"]
    for key, value in ref.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert rep.sparsity >= 0.5
    with pytest.raises(ValueError, match="^offload"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, offload="ram", progress=False)


def test_disk_offload_failure_restores_the_dense_model(tmp_path, monkeypatch):
    import combprune.torch.sequential as seq

    model = tiny_bert()
    before = weights(model)
    calls = {"n": 0}
    real = seq._LayerStep._solve

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 9:
            raise RuntimeError("solver crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(seq._LayerStep, "_solve", failing)
    with pytest.raises(RuntimeError, match="solver crashed"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, method="wanda", progress=False,
                             offload="disk", offload_dir=str(tmp_path))
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_nm_group_not_dividing_a_later_layer_is_refused_before_anything_changes(monkeypatch):
    import combprune.torch.sequential as seq

    stack = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 4))  # 4 divides 8 but not 6
    before = weights(stack)
    solved = []
    monkeypatch.setattr(seq._LayerStep, "_solve", lambda *a, **k: solved.append(1))
    with pytest.raises(ValueError, match="^pattern: group size m=4 does not divide the input size 6 of 1"):
        cpt.prune_sequential(stack, torch.randn(8, 8), pattern="2:4", blocks=list(stack), progress=False)
    assert not solved and all(torch.equal(before[k], v) for k, v in weights(stack).items())


def test_mixed_or_missing_devices_name_the_argument():
    model = tiny_bert()
    model.encoder.layer[1].output.dense.weight = nn.Parameter(torch.empty(16, 32, device="meta"))
    with pytest.raises(ValueError, match="^model: parameters are on several devices"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, progress=False)
    model = tiny_bert()
    before = weights(model)
    with pytest.raises(ValueError, match="^device"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, device="gpu0", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="^device: 'cuda' was requested but CUDA is not available"):
            cpt.prune_sequential(model, token_batches(), sparsity=0.5, device="cuda", progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_nan_weights_and_nan_activations_are_named_and_leave_the_model_unchanged():
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].attention.output.dense.weight[0, 0] = float("nan")
    before = weights(model)
    for method in ("layerwise", "osscar"):
        with pytest.raises(ValueError, match=r"^model: parameter encoder\.layer\.0\.attention\.output\.dense\.weight contains NaN"):
            cpt.prune_sequential(model, token_batches(), method=method, sparsity=0.5, progress=False)
    same = lambda a, b: torch.equal(a.nan_to_num(), b.nan_to_num()) and torch.equal(a.isnan(), b.isnan())  # noqa: E731
    assert all(same(before[k], v) for k, v in weights(model).items())
    # finite weights but activations that overflow to inf in block 0: the layer statistics say so
    model = tiny_bert()
    with torch.no_grad():
        model.encoder.layer[0].attention.output.dense.weight.mul_(1e37)
    before = weights(model)
    with pytest.raises(ValueError, match=r"^calibration: the inputs or outputs of layer .* \(block 0\) are not finite"):
        cpt.prune_sequential(model, token_batches(), sparsity=0.5, progress=False)
    assert all(same(before[k], v) for k, v in weights(model).items())


@pytest.mark.parametrize("granularity, match", [("layer", r"0.999 removes all 256 weights of encoder\.layer\.0\.attention\.\S+ .* 1 - 1/256"),
                                                ("output", r"0.97 removes all 16 inputs per output of encoder\.layer\.0\.attention\.\S+ .* 1 - 1/16")])
def test_a_sparsity_that_empties_a_layer_is_refused_before_anything_changes(granularity, match):
    model = tiny_bert()
    before = weights(model)
    sparsity = 0.999 if granularity == "layer" else 0.97
    with pytest.raises(ValueError, match="^sparsity: " + match):
        cpt.prune_sequential(model, token_batches(), sparsity=sparsity, granularity=granularity, progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


NATIVE_SLOTS = ("self_attn.in_proj_weight[q]", "self_attn.in_proj_weight[k]", "self_attn.in_proj_weight[v]",
                "self_attn.out_proj.weight", "linear1.weight", "linear2.weight")


class _NativeEncoder(nn.Module):
    """torch's own TransformerEncoder under a path no Hugging Face model uses (``enc.layers``)."""

    def __init__(self, stacks: int = 1, decoder_first: bool = False, unused: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(8, 16)
        make = lambda: nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2)  # noqa: E731
        if decoder_first:  # registered before the stack the forward pass enters first
            self.dec = make()
        self.enc = make()
        if not decoder_first:
            self.dec = make() if stacks == 2 else None
        self.unused = make() if unused else None
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.enc(self.emb(x))
        return self.head((self.dec(h) if self.dec is not None else h).mean(1))


def test_blocks_found_outside_the_known_paths():
    model = _NativeEncoder().eval()
    assert find_blocks(model) == list(model.enc.layers)
    X = torch.randn(32, 5, 8)
    report = cpt.prune_sequential(model, X, sparsity=0.5, progress=False)
    pruned = {row.name for row in report.layers}
    assert pruned == {f"enc.layers.{i}.{n}" for i in range(2) for n in NATIVE_SLOTS}
    for i in range(2):
        attn = model.enc.layers[i].self_attn
        for rows in attn.in_proj_weight.detach().split(16):  # q, k, v: 16 x 16 each, half removed
            assert int((rows == 0).sum()) == 128
        for n in ("self_attn.out_proj.weight", "linear1.weight", "linear2.weight"):
            assert float((model.get_parameter(f"enc.layers.{i}.{n}") == 0).float().mean()) == pytest.approx(0.5)


class _CrossAttentionBlock(nn.Module):
    """Attention whose key and value come from other inputs of other sizes (separate
    ``q_/k_/v_proj_weight``), followed by a Linear layer."""

    def __init__(self):
        super().__init__()
        self.to_key, self.to_value = nn.Linear(16, 8), nn.Linear(16, 12)
        self.attn = nn.MultiheadAttention(16, 2, kdim=8, vdim=12, batch_first=True, dtype=torch.float64)
        self.fc = nn.Linear(16, 16)

    def forward(self, x):
        x = x.to(torch.float64)
        key, value = torch.tanh(self.to_key(x.float())).double(), torch.sin(self.to_value(x.float())).double()
        return self.fc(self.attn(x, key, value)[0].float())


def test_attention_statistics_are_the_projections_inputs_and_the_heads_outputs():
    """H of q / k / v is the Gram of the query / key / value; H of out_proj the Gram of the heads'
    concatenated outputs, recovered independently from the attention's output through W_o^-1."""
    from combprune.torch._attention import fused_attention_off
    from combprune.torch._sequential_blocks import GramHooks, weight_slots

    torch.manual_seed(0)
    block = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0, dtype=torch.float64).eval()
    x = torch.randn(6, 5, 16, dtype=torch.float64)
    slots = weight_slots(block)
    assert [s.name for s in slots] == list(NATIVE_SLOTS)
    seen = {}
    block.self_attn.register_forward_hook(lambda m, a, o: seen.update(q=a[0], out=o[0]))
    hooks = GramHooks(slots)
    with torch.no_grad(), fused_attention_off():
        block(x)
    hooks.remove()
    X = seen["q"].reshape(-1, 16)
    Wo, bo = block.self_attn.out_proj.weight.detach(), block.self_attn.out_proj.bias.detach()
    heads = (seen["out"].reshape(-1, 16) - bo) @ torch.linalg.inv(Wo).T
    for label in "qkv":
        torch.testing.assert_close(hooks.H[f"self_attn.in_proj_weight[{label}]"], X.T @ X)
        W = next(s for s in slots if s.name.endswith(f"[{label}]")).matrix()
        torch.testing.assert_close(hooks.out_sq[f"self_attn.in_proj_weight[{label}]"], (X @ W).square().sum())
    torch.testing.assert_close(hooks.H["self_attn.out_proj.weight"], heads.T @ heads)
    torch.testing.assert_close(hooks.out_sq["self_attn.out_proj.weight"], (seen["out"].reshape(-1, 16) - bo).square().sum())
    assert hooks.rows["self_attn.out_proj.weight"] == 30 and "linear1.weight" in hooks.H


def test_cross_attention_projections_are_solved_on_their_own_inputs():
    """Separate q / k / v weights of three input sizes: each is the LayerwiseL0 of its own input."""
    torch.manual_seed(0)
    model = nn.Sequential(*(_CrossAttentionBlock() for _ in range(2)))
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    X = torch.randn(8, 5, 16)
    seen = {}
    block = model[0]
    block.attn.register_forward_hook(lambda m, a, o: seen.setdefault("inputs", a))  # the statistics pass (dense block)
    report = cpt.prune_sequential(model, X, method="wanda", sparsity=0.5, ridge=0.0, blocks=list(model), progress=False)
    assert [r.name for r in report.layers[:4]] == ["0.to_key.weight", "0.to_value.weight", "0.attn.q_proj_weight", "0.attn.k_proj_weight"]
    for label, d in zip("qkv", (16, 8, 12)):
        A = seen["inputs"]["qkv".index(label)].reshape(-1, d).numpy()
        W_hat = dense[f"0.attn.{label}_proj_weight"].T.numpy()
        expect = cp.solve(LayerwiseL0.from_activations(A, W_hat, k=16 * d // 2, ridge=0.0), "wanda").x
        np.testing.assert_allclose(getattr(block.attn, f"{label}_proj_weight").detach().T.numpy(), expect, rtol=1e-9, atol=1e-12)
    out_row = next(r for r in report.layers if r.name == "0.attn.out_proj.weight")
    assert out_row.kept == 128 and 0 < out_row.relative_error < 1


def test_failure_midway_restores_attention_rows(monkeypatch):
    import combprune.torch.sequential as seq

    model = _NativeEncoder().eval()
    before = weights(model)
    real, calls = seq._LayerStep._solve, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == len(NATIVE_SLOTS) + 2:  # block 0 written (in_proj rows included), block 1 fails
            raise RuntimeError("solver crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(seq._LayerStep, "_solve", failing)
    with pytest.raises(RuntimeError, match="solver crashed"):
        cpt.prune_sequential(model, torch.randn(8, 5, 8), sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())


def test_user_hooks_on_the_attention_see_only_the_model_s_own_calls():
    """The heads' outputs come from a second run of the attention that no hook of it sees."""
    model = _NativeEncoder().eval()
    calls = []
    model.enc.layers[1].self_attn.register_forward_hook(lambda m, a, o: calls.append(a[0].shape))
    batches = [torch.randn(4, 5, 8), torch.randn(3, 5, 8)]
    cpt.prune_sequential(model, batches, sparsity=0.5, progress=False)
    # the dense pass on the first batch that checks the blocks' inputs, then the statistics pass
    # (the last block's outputs are not needed)
    assert calls == [(4, 5, 16), (4, 5, 16), (3, 5, 16)]


@pytest.mark.parametrize("decoder_first", [False, True])
def test_every_stack_is_pruned_in_the_order_the_forward_pass_enters_them(decoder_first):
    from combprune.torch._sequential_blocks import find_stacks

    X = torch.randn(16, 5, 8)
    model = _NativeEncoder(stacks=2, decoder_first=decoder_first).eval()
    assert [path for path, _ in find_stacks(model)] == (["dec.layers", "enc.layers"] if decoder_first else ["enc.layers", "dec.layers"])
    report = cpt.prune_sequential(model, X, sparsity=0.5, progress=False)
    assert report.info["stacks"] == ["enc.layers", "dec.layers"]  # the encoder first: the decoder sees its pruned outputs
    assert [b.index for b in report.blocks] == [0, 1, 2, 3] and {r.block for r in report.layers} == {0, 1, 2, 3}
    assert {r.name.split(".")[0] for r in report.layers} == {"enc", "dec"} and report.sparsity == pytest.approx(0.5)
    by_hand, reverse = (_NativeEncoder(stacks=2, decoder_first=decoder_first).eval() for _ in range(2))
    for path in ("enc.layers", "dec.layers"):  # one stack at a time, the encoder first
        cpt.prune_sequential(by_hand, X, sparsity=0.5, blocks=path, progress=False)
    for path in ("dec.layers", "enc.layers"):
        cpt.prune_sequential(reverse, X, sparsity=0.5, blocks=path, progress=False)
    for name, w in model.named_parameters():
        assert torch.equal(w, by_hand.get_parameter(name)), name
    assert not torch.equal(model.dec.layers[0].linear1.weight, reverse.dec.layers[0].linear1.weight)


def test_a_stack_the_forward_pass_never_enters_is_left_dense_with_a_warning(caplog):
    model = _NativeEncoder(unused=True).eval()
    unused = {k: v.clone() for k, v in model.unused.state_dict().items()}
    with caplog.at_level("WARNING", logger="combprune"):
        report = cpt.prune_sequential(model, torch.randn(8, 5, 8), sparsity=0.5, progress=False)
    assert report.info["stacks"] == ["enc.layers"]
    outside = report.info["outside_blocks"]
    assert {"emb", "head", "unused.layers.0.linear1"} <= set(outside) and not any(n.startswith("enc.") for n in outside)
    assert "never enters unused.layers; left dense" in caplog.text
    assert all(torch.equal(unused[k], v) for k, v in model.unused.state_dict().items())


def test_encoder_decoder_hf_model_prunes_both_stacks():
    cfg = transformers.BartConfig(vocab_size=50, d_model=16, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
                                  decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.BartModel(cfg).eval()
    report = cpt.prune_sequential(model, token_batches(), method="sparsegpt", sparsity=0.5, progress=False)
    assert report.info["stacks"] == ["encoder.layers", "decoder.layers"] and report.info["outside_blocks"] == []
    assert len(report.layers) == 2 * 6 + 10  # encoder: q, k, v, out, fc1, fc2; decoder: + cross-attention
    for row in report.layers:
        assert int((model.get_parameter(row.name) != 0).sum()) == row.kept == row.params // 2


def test_disk_offload_failure_in_a_later_stack_restores_every_stack_and_removes_the_temporary_files(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    import tempfile

    import combprune.torch.sequential as seq

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    model = _NativeEncoder(stacks=2).eval()
    before = weights(model)
    ok = _NativeEncoder(stacks=2).eval()
    cpt.prune_sequential(ok, torch.randn(8, 5, 8), sparsity=0.5, offload="disk", progress=False)
    assert os.listdir(tmp_path) == []  # the temporary directory is gone after a run
    real, calls = seq._LayerStep._solve, {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3 * len(NATIVE_SLOTS) + 1:  # the encoder done, the decoder's block 0 done, block 1 fails
            raise RuntimeError("solver crashed")
        return real(*args, **kwargs)

    monkeypatch.setattr(seq._LayerStep, "_solve", failing)
    with pytest.raises(RuntimeError, match="solver crashed"):
        cpt.prune_sequential(model, torch.randn(8, 5, 8), sparsity=0.5, offload="disk", progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
    assert os.listdir(tmp_path) == []


def test_targets_and_ignore_choose_the_reconstructed_layers():
    """The layer-wise methods honour targets / ignore (they used to ignore both silently): an
    ignored projection keeps every weight, the others are pruned; a selection with nothing
    inside the blocks names targets, before anything changes."""
    model = tiny_llama()
    before = weights(model)
    rep = cpt.prune(model, token_batches(), method="wanda", sparsity=0.5, ignore=r".*\.q_proj", progress=False)
    pruned = {row.name for row in rep.layers}
    assert pruned and not any(".q_proj" in name for name in pruned) and any(".k_proj" in name for name in pruned)
    for i in range(2):
        assert torch.equal(model.layers[i].self_attn.q_proj.weight, before[f"layers.{i}.self_attn.q_proj.weight"])
        assert int((model.layers[i].self_attn.k_proj.weight == 0).sum()) >= model.layers[i].self_attn.k_proj.weight.numel() // 2
    only = tiny_llama()
    rep = cpt.prune(only, token_batches(), method="sparsegpt", sparsity=0.5, targets=r"layers\.1\.mlp\..*", progress=False)
    assert {row.name.rsplit(".", 2)[0] for row in rep.layers} == {"layers.1.mlp"}
    assert torch.equal(only.layers[0].mlp.up_proj.weight, tiny_llama().layers[0].mlp.up_proj.weight)
    untouched = tiny_llama()
    with pytest.raises(ValueError, match="^targets: no selected weight lies inside the repeated blocks"):
        cpt.prune_sequential(untouched, token_batches(), method="wanda", sparsity=0.5, targets=nn.Embedding, progress=False)
    assert all(torch.equal(v, weights(tiny_llama())[k]) for k, v in weights(untouched).items())


def test_stages_with_inputs_of_their_own_are_pruned_in_sequence():
    """Swin's stages (the outermost block list) take their own spatial sizes: each stage runs
    with its own inputs (they used to get stage 0's and the engine crashed), and stage 1's first
    layer is solved on its input in the pruned model."""
    torch.manual_seed(0)
    build = lambda: transformers.SwinModel(transformers.SwinConfig(image_size=16, patch_size=2, embed_dim=8, depths=[1, 1],  # noqa: E731
                                                                    num_heads=[2, 2], window_size=4)).eval()
    model = build()
    torch.manual_seed(0)
    ref = build()
    g = torch.Generator().manual_seed(0)
    batches = [{"pixel_values": torch.randn(4, 3, 16, 16, generator=g)} for _ in range(2)]
    rep = cpt.prune_sequential(model, batches, method="wanda", sparsity=0.5, ridge=0.0, progress=False)
    assert rep.info["stacks"] == ["encoder.layers"] and {row.block for row in rep.layers} == {0, 1}
    name = "encoder.layers.1.blocks.0.attention.q_proj"
    seen = []
    h = model.get_submodule(name).register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, 16).double()))
    with torch.no_grad():
        for b in batches:
            model(**b)
    h.remove()
    dense = ref.get_submodule(name).weight.detach()
    prob = LayerwiseL0.from_activations(torch.cat(seen).numpy(), dense.T.double().numpy(), k=dense.numel() // 2, ridge=0.0)
    np.testing.assert_allclose(model.get_submodule(name).weight.detach().T.double().numpy(), cp.solve(prob, "wanda").x, rtol=1e-6, atol=1e-7)


def test_blocks_that_do_not_follow_each_other_are_refused():
    """Something between two blocks (here a scaling) breaks the engine's chain: a ValueError
    naming blocks, the model unchanged."""

    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)) for _ in range(2))

        def forward(self, x):
            return self.layers[1](2 * self.layers[0](x))

    model = Scaled()
    before = weights(model)
    with pytest.raises(ValueError, match="^blocks: block 1 of layers does not take block 0's output"):
        cpt.prune_sequential(model, [torch.randn(6, 8)], sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in weights(model).items())
