"""Real architectures through the adapter: Conv1D selection, weight ties, attention FLOPs."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

import combprune.torch as cpt  # noqa: E402


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=50, n_positions=16, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _bert(impl: str) -> torch.nn.Module:
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=64, vocab_size=50)
    cfg._attn_implementation = impl
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def test_gpt2_default_selection_takes_conv1d_and_skips_tied_lm_head(caplog):
    model = _gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie under test
    with caplog.at_level(logging.INFO, logger="combprune.torch._select"):
        names = [p.name for p in cpt.select_parameters(model)]
    assert len(names) == 8 and all(".attn." in n or ".mlp." in n for n in names)
    assert "lm_head.weight" not in names
    assert "tied to transformer.wte" in caplog.text


def test_tied_lm_head_pruned_only_when_targeted():
    names = [p.name for p in cpt.select_parameters(_gpt2(), targets="lm_head")]
    assert names == ["lm_head.weight"]


def test_gpt2_magnitude_prune_leaves_embeddings_dense():
    model = _gpt2()
    wte = model.transformer.wte.weight.detach().clone()
    ids = torch.randint(0, 50, (4, 8))
    report = cpt.prune(model, {"input_ids": ids}, method="magnitude", sparsity=0.5, progress=False)
    assert torch.equal(model.transformer.wte.weight.detach(), wte)
    assert len(report.layers) == 8
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


def test_sdpa_and_eager_attention_count_the_same_flops():
    ids = torch.randint(0, 50, (3, 12))
    sdpa, eager = cpt.model_flops(_bert("sdpa"), {"input_ids": ids}), cpt.model_flops(_bert("eager"), {"input_ids": ids})
    assert sdpa == eager
    # attention itself is counted: 2 layers x (QK^T and AV) x 2 x heads x s x s x d_head per sample
    s, h, d = 12, 4, 8
    attention = 2 * 2 * (2 * h * s * s * d)
    model = _bert("sdpa")
    dense = sum(cpt.layer_flops(model, cpt.select_parameters(model), next(iter(_batches(ids)))))
    assert sdpa - dense == attention


def _batches(ids: torch.Tensor):
    from combprune.torch._calibration import iter_batches

    return iter_batches({"input_ids": ids}, None, torch.device("cpu"))


def test_model_flops_accepts_calibration_forms():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(5, 6)
    expected = 2 * (6 * 4 + 4 * 2)
    assert cpt.model_flops(model, x) == expected
    assert cpt.model_flops(model, (x, torch.zeros(5))) == expected
    assert cpt.model_flops(model, [x[:2], x[2:]]) == expected


def test_flops_are_averaged_over_the_batch_not_its_first_sample():
    """Sequence length varies per sample through a model that trims padding: the count is the mean."""

    class Trim(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
            return torch.stack([self.lin(x[i, : int(n)]).sum(0) for i, n in enumerate(lengths)])

    x = torch.randn(4, 10, 4)
    lengths = torch.tensor([1, 10, 10, 3])
    model = Trim()
    per_token = 2 * 4 * 4
    mean_tokens = float(lengths.float().mean())
    assert cpt.model_flops(model, {"x": x, "lengths": lengths}) == pytest.approx(per_token * mean_tokens)
    params = cpt.select_parameters(model)
    from combprune.torch._calibration import iter_batches

    batch = next(iter(iter_batches({"x": x, "lengths": lengths}, None, torch.device("cpu"))))
    assert cpt.layer_flops(model, params, batch) == [pytest.approx(per_token * mean_tokens)]


def test_per_sample_gradients_fall_back_from_vmap_on_padded_hf_batches():
    """BERT with a padding mask defeats vmap; the loop fallback gives autograd's gradients."""
    from combprune.torch._calibration import collect
    from combprune.torch._gradients import per_sample_gradients

    cfg = transformers.BertConfig(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, vocab_size=50, num_labels=3)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg).eval()
    ids = torch.randint(0, 50, (6, 8))
    mask = torch.ones_like(ids)
    mask[::2, 5:] = 0
    labels = torch.randint(0, 3, (6,))

    def loss(out, t):
        return torch.nn.functional.cross_entropy(out.logits, t)

    params = cpt.select_parameters(model)
    info: dict = {}
    G = per_sample_gradients(model, params, collect({"input_ids": ids, "attention_mask": mask, "labels": labels}, None, torch.device("cpu")), loss_fn=loss, info=info)
    assert info["method"] == "per-sample loop"
    for i in (0, 3):
        model.zero_grad()
        loss(model(input_ids=ids[i : i + 1], attention_mask=mask[i : i + 1]), labels[i : i + 1]).backward()
        reference = torch.cat([p.storage.grad.reshape(-1) for p in params])
        assert torch.allclose(G[i], reference, atol=1e-6)
    report = cpt.prune(model, {"input_ids": ids, "attention_mask": mask, "labels": labels}, method="chita", sparsity=0.5, l2=1e-3, first_order=False, loss_fn=loss, progress=False)
    assert report.info["gradients"] == "per-sample loop"


def test_structured_prune_of_a_gqa_llama_prunes_heads_and_what_is_left_alone_is_reported():
    cfg = transformers.LlamaConfig(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64, vocab_size=50)
    torch.manual_seed(0)
    model = transformers.LlamaModel(cfg).eval()
    ids = torch.randint(0, 50, (4, 8))
    report = cpt.prune(model, {"input_ids": ids}, method="osscar", sparsity=0.5, progress=False)
    assert report.not_pruned == [] and "over the pruned units only" not in str(report)
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"} <= {layer.name.split(".")[-2] for layer in report.layers}
    # GPT-2 cross-attention (q_attn + c_attn) is not recognised: listed with the reason
    gcfg = transformers.GPT2Config(n_embd=16, n_head=2, n_layer=1, vocab_size=30, n_positions=16, add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    gpt2 = transformers.GPT2Model(gcfg).eval()
    report = cpt.prune(gpt2, {"input_ids": torch.randint(0, 30, (4, 8))}, method="osscar", sparsity=0.5, progress=False)
    assert [name for name, _ in report.not_pruned] == ["h.0.crossattention"]
    assert "cross-attention" in report.not_pruned[0][1]
    assert "Not pruned: h.0.crossattention" in str(report) and "Budget met over the pruned units only" in str(report)


def test_structured_pairs_reach_prune_and_unstructured_methods_refuse_them():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    x = torch.randn(32, 6)
    report = cpt.prune(model, x, method="osscar", sparsity=0.5, pairs=[("0", "2")], progress=False)
    assert report.not_pruned == [] and any(layer.name == "2.weight" for layer in report.layers)
    with pytest.raises(ValueError, match="pairs"):
        cpt.Pruner("magnitude", sparsity=0.5, pairs=[("0", "2")])
    with pytest.raises(ValueError, match="pairs"):
        cpt.prune(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)), x, method="osscar", sparsity=0.5, pairs=[("0", "missing")], progress=False)


def test_causal_lm_gradients_are_those_of_the_model_s_own_shifted_loss():
    """Dict batches with labels: the default loss is ``outputs.loss`` (next-token, shifted), so
    the gradient methods run on a causal LM and the rows are each sample's own loss gradient."""
    from combprune.torch._calibration import collect
    from combprune.torch._gradients import per_sample_gradients

    model = _gpt2()
    ids = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids}
    params = cpt.select_parameters(model)
    G = per_sample_gradients(model, params, collect(batch, None, torch.device("cpu")))
    for i in (0, 3):
        model.zero_grad()
        model(input_ids=ids[i : i + 1], labels=ids[i : i + 1]).loss.backward()
        reference = torch.cat([p.storage.grad.reshape(-1) for p in params])
        assert torch.allclose(G[i], reference, atol=1e-6)
    for method in ("chita", "falcon"):
        pruned = _gpt2()
        report = cpt.prune(pruned, [batch, batch], method=method, sparsity=0.5, progress=False)
        assert report.sparsity == pytest.approx(0.5, abs=1e-3) and not report.budget_violations()


_FAMILIES = {
    "distilbert": lambda: transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=4, hidden_dim=64)),
    "t5-gated": lambda: transformers.T5EncoderModel(transformers.T5Config(vocab_size=50, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4,
                                                                         feed_forward_proj="gated-gelu")),
    "gpt-neox": lambda: transformers.GPTNeoXModel(transformers.GPTNeoXConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                                             num_attention_heads=4, intermediate_size=64)),
    "bloom": lambda: transformers.BloomModel(transformers.BloomConfig(vocab_size=50, hidden_size=32, n_layer=1, n_head=4)),
    "falcon": lambda: transformers.FalconModel(transformers.FalconConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                                         num_attention_heads=4, multi_query=False)),
    "falcon-grouped": lambda: transformers.FalconModel(transformers.FalconConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1,
                                                                                 num_attention_heads=4, num_kv_heads=2,
                                                                                 new_decoder_architecture=True)),
    "phi3": lambda: transformers.Phi3Model(transformers.Phi3Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                                   num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)),
}


@pytest.mark.parametrize("family", sorted(_FAMILIES))
def test_structured_units_of_more_families_match_the_forward_pass(family):
    """Heads (separate or fused-per-head q/k/v) and FFN neurons are found by name; with the
    removed groups zeroed in the consumers, the producers' rows of those groups no longer reach
    the output: changing them changes nothing (a wrong head layout would feed kept heads)."""
    torch.manual_seed(0)
    model = _FAMILIES[family]().eval()
    ids = [{"input_ids": torch.randint(1, 50, (4, 8), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    report = cpt.prune(model, ids, method="osscar", sparsity=0.5, apply="permanent", progress=False)
    units = report.info["structured_plan"]["units"]
    assert sorted(u["kind"] for u in units) == ["head", "neuron"] and not report.not_pruned
    with torch.no_grad():
        before = model(**ids[0]).last_hidden_state
        modules = dict(model.named_modules())
        for u in units:
            keep = np.asarray(report.info["structured_plan"]["keep"][u["consumer"]])
            assert keep.sum() == len(keep) // 2
            layout = dict(u["layout"])
            for producer in u["producers"]:
                sizes = layout.get(producer, [u["features_per_group"]])
                rows = np.flatnonzero(np.concatenate([np.repeat(~keep, size) for size in sizes]))
                modules[producer].weight[rows] += torch.randn(len(rows), modules[producer].weight.shape[1])
        after = model(**ids[0]).last_hidden_state
    torch.testing.assert_close(after, before)


@pytest.mark.parametrize("family", ["distilbert", "gpt-neox", "falcon-grouped", "bloom", "t5-gated", "phi3"])
def test_physical_removal_on_more_families_shrinks_or_says_why_and_restores(family):
    """DistilBERT, GPT-NeoX and grouped Falcon shrink (the same outputs); BLOOM's ALiBi and T5's relative
    position bias are sized by the original head count, and Phi-3 splits its fused q | k | v
    with the config's head count, shared by all layers: a clear error, the model unchanged."""
    torch.manual_seed(0)
    model = _FAMILIES[family]().eval()
    ids = [{"input_ids": torch.randint(1, 50, (4, 8), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    n_params = sum(p.numel() for p in model.parameters())
    if family in ("distilbert", "gpt-neox", "falcon-grouped"):
        cpt.prune(model, ids, method="osscar", sparsity=0.5, apply="physical", progress=False)
        assert sum(p.numel() for p in model.parameters()) < n_params
        return
    with pytest.raises(ValueError, match="forward pass fails after physical removal.*use apply=.mask."):
        cpt.prune(model, ids, method="osscar", sparsity=0.5, apply="physical", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_phi3_fused_heads_need_the_kv_layout_and_say_so():
    """Phi-3's fused q | k | v keeps keys and values whole under gqa='query': its heads are left
    dense with a reason naming qkv_proj, while the fused gate | up MLP neurons are still pruned,
    and physically (both halves of gate_up_proj shrink; the outputs equal the masked model's)."""
    ids = [{"input_ids": torch.randint(1, 50, (4, 8), generator=torch.Generator().manual_seed(0))}]
    torch.manual_seed(0)
    model = _FAMILIES["phi3"]().eval()
    report = cpt.prune(model, ids, method="osscar", sparsity=0.5, gqa="query", progress=False)
    assert [u["kind"] for u in report.info["structured_plan"]["units"]] == ["neuron"]
    assert len(report.not_pruned) == 1 and "qkv_proj" in report.not_pruned[0][1] and "gqa='kv'" in report.not_pruned[0][1]
    torch.manual_seed(0)
    shrunk = _FAMILIES["phi3"]().eval()
    cpt.prune(shrunk, ids, method="osscar", sparsity=0.5, gqa="query", apply="physical", progress=False)
    assert shrunk.layers[0].mlp.gate_up_proj.out_features == 64 and shrunk.layers[0].mlp.down_proj.in_features == 32
    with torch.no_grad():
        torch.testing.assert_close(shrunk(**ids[0]).last_hidden_state, model(**ids[0]).last_hidden_state)


def _mixtral() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=4,
                                     num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32)
    return transformers.MixtralForCausalLM(cfg).eval()


@pytest.mark.parametrize("method", ["magnitude", "wanda", "osscar"])
def test_mixture_of_experts_tensors_left_dense_are_named_not_hidden(method, caplog):
    """transformers' MoE blocks hold their experts as 3-D parameters (experts, out, in), outside
    any Linear: the default selection leaves them dense, and every path says so in
    report.not_pruned and a warning (the report used to count the Linear layers only, silently)."""
    model = _mixtral()
    experts = {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." in n}
    ids = torch.randint(1, 50, (8, 8), generator=torch.Generator().manual_seed(0))
    with caplog.at_level(logging.WARNING):
        report = cpt.prune(model, [{"input_ids": ids, "labels": ids}], method=method, sparsity=0.5, progress=False)
    named = {name for name, _ in report.not_pruned}
    assert set(experts) <= named and all("3-D parameter" in reason for name, reason in report.not_pruned if name in experts)
    assert all(torch.equal(p, experts[n]) for n, p in model.named_parameters() if n in experts)
    assert any("left out (dense)" in r.getMessage() and "experts" in r.getMessage() for r in caplog.records)


def test_mixture_of_experts_tensors_pruned_when_targeted_and_a_flop_budget_refused():
    """Named in targets, the expert tensors are pruned by magnitude and by gradients; torch's FLOP
    counter sees no FLOPs in their grouped products, so a FLOP budget (which would treat them as
    free) is refused naming flop_budget, the model unchanged."""
    ids = torch.randint(1, 50, (48, 8), generator=torch.Generator().manual_seed(0))
    calib = [{"input_ids": ids, "labels": ids}]
    targets = [torch.nn.Linear, r".*experts\.(gate_up|down)_proj"]
    for method in ("magnitude", "chita"):
        model = _mixtral()
        report = cpt.prune(model, calib, method=method, sparsity=0.5, targets=targets, progress=False)
        expert_layers = [row for row in report.layers if ".experts." in row.name]
        assert len(expert_layers) == 2 and all(0 < row.kept < row.params for row in expert_layers)
        for row in expert_layers:  # the masked tensor the forward pass reads
            module, attr = row.name.rsplit(".", 1)
            assert int(torch.count_nonzero(getattr(model.get_submodule(module), attr))) == row.kept
        assert report.sparsity == pytest.approx(0.5, abs=1e-3) and not report.not_pruned
    model = _mixtral()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="^flop_budget: torch's FLOP counter attributes no FLOPs to model.layers.0.mlp.experts"):
        cpt.prune(model, calib, method="falcon", flop_budget=0.5, targets=targets, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_small_tensors_outside_linear_layers_are_not_reported():
    """Position embeddings and class tokens (below 1 % of the Linear weights) are not weights a
    pruning method should touch: not reported; a large raw weight matrix is."""

    class Net(torch.nn.Module):
        def __init__(self, raw: int) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 64)
            self.pos = torch.nn.Parameter(torch.randn(1, 2, 16))  # 32 < 1 % of 4096
            self.raw = torch.nn.Parameter(torch.randn(raw, 64))

        def forward(self, x):
            return torch.nn.functional.linear(self.fc(x), self.raw) + self.pos.sum()

    for raw, reported in ((64, True), (0, False)):
        report = cpt.prune(Net(raw), torch.randn(16, 64), method="magnitude", sparsity=0.5, progress=False)
        assert [name for name, _ in report.not_pruned] == (["raw"] if reported else [])


def test_training_time_selections_name_the_expert_tensors_they_leave_dense(caplog):
    """Learned masks, the density cut by magnitude and measure select like the one-shot adapter,
    and warn the same way about large tensors outside the Linear layers."""
    example = {"input_ids": torch.randint(1, 50, (2, 8), generator=torch.Generator().manual_seed(0))}
    for build in (lambda m: cpt.LearnedMasks(m), lambda m: cpt.prune_to_density(m, 0.5, method="magnitude", progress=False),
                  lambda m: cpt.measure(m, example)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            build(_mixtral())
        assert any("left out (dense)" in r.getMessage() and "experts.gate_up_proj" in r.getMessage() for r in caplog.records)


def test_per_sample_gradients_hold_the_other_parameters_fixed():
    """Only the prunable weights are differentiated: Swin's relative position bias (a parameter,
    not pruned) reaches a fused attention kernel as its attn_mask, which refuses an input that
    requires grad; the gradient methods failed there. The rows still equal autograd's."""
    from combprune.torch._calibration import collect
    from combprune.torch._gradients import per_sample_gradients

    torch.manual_seed(0)
    model = transformers.SwinForImageClassification(transformers.SwinConfig(
        image_size=16, patch_size=2, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=3)).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"pixel_values": torch.randn(6, 3, 16, 16, generator=g), "labels": torch.randint(0, 3, (6,), generator=g)}
    params = cpt.select_parameters(model)
    G = per_sample_gradients(model, params, collect(batch, None, torch.device("cpu")))
    model.zero_grad()
    model(pixel_values=batch["pixel_values"][2:3], labels=batch["labels"][2:3]).loss.backward()
    torch.testing.assert_close(G[2], torch.cat([p.storage.grad.reshape(-1) for p in params]), atol=1e-5, rtol=1e-4)
    report = cpt.prune(model, [batch], method="chita", sparsity=0.5, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)


def test_dict_batches_without_labels_use_the_model_s_own_loss_or_say_what_is_missing():
    """A question-answering batch carries its targets as start_positions / end_positions (no
    labels): the gradient methods take the model's own loss (refused before); a dict batch for a
    model that returns no loss is a ValueError naming loss_fn, the model unchanged."""
    from combprune.torch._calibration import collect
    from combprune.torch._gradients import per_sample_gradients

    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    model = transformers.BertForQuestionAnswering(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(1, 50, (6, 8), generator=g), "start_positions": torch.randint(0, 8, (6,), generator=g),
             "end_positions": torch.randint(0, 8, (6,), generator=g)}
    params = cpt.select_parameters(model)
    G = per_sample_gradients(model, params, collect(batch, None, torch.device("cpu")))
    model.zero_grad()
    model(**{k: v[4:5] for k, v in batch.items()}).loss.backward()
    torch.testing.assert_close(G[4], torch.cat([p.storage.grad.reshape(-1) for p in params]), atol=1e-6, rtol=1e-5)
    report = cpt.prune(model, [batch], method="chita", sparsity=0.5, progress=False)
    assert report.sparsity == pytest.approx(0.5, abs=1e-3)
    bare = transformers.BertModel(cfg).eval()
    before = {k: v.clone() for k, v in bare.state_dict().items()}
    with pytest.raises(ValueError, match="^loss_fn: the default loss needs targets or a model that returns its own loss"):
        cpt.prune(bare, [{"input_ids": batch["input_ids"]}], method="chita", sparsity=0.5, progress=False)
    assert all(torch.equal(before[k], v) for k, v in bare.state_dict().items())
