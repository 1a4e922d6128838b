#!/usr/bin/env bash
# GPU checks in one go (a few minutes): the CuPy solver tests, then a sequential layer-wise prune
# of a BERT-base-sized encoder (random weights, from a config) with its blocks processed on CUDA,
# timed against the same prune on the CPU in the same run. Results: benchmarks/results/gpu_check.*
#
#   bash benchmarks/gpu_check.sh            # needs an NVIDIA GPU, torch with CUDA and cupy
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
$PY - <<'PYEOF'
import sys
import torch
try:
    import cupy
    ok = cupy.cuda.is_available()
except Exception:
    ok = False
if not (ok and torch.cuda.is_available()):
    sys.exit("gpu_check: needs an NVIDIA GPU with both CuPy and CUDA torch available")
PYEOF
$PY -m pytest -q -p no:xdist tests -k "cupy or gpu or cuda"
$PY - <<'PYEOF'
import copy, json, os, sys, time
import torch, transformers
sys.path.insert(0, "benchmarks")
from _common import machine_info, save_results
import combprune.torch as cpt

cfg = transformers.BertConfig(num_hidden_layers=4, hidden_size=768, num_attention_heads=12, intermediate_size=3072, vocab_size=1000)
torch.manual_seed(0)
dense = transformers.BertModel(cfg).eval()
ids = torch.randint(0, 1000, (64, 128))
rows = []
for device in ("cpu", "cuda"):
    model = copy.deepcopy(dense)
    t = time.perf_counter()
    report = cpt.prune_sequential(model, {"input_ids": ids}, method="sparsegpt", sparsity=0.5, device=device, progress=False)
    rows.append({"device": device, "method": "sparsegpt", "blocks": len(report.blocks), "sparsity": report.sparsity,
                 "time [s]": time.perf_counter() - t, "peak memory [MiB]": report.peak_memory_bytes / 2**20})
for r in rows:
    r["time / cpu time"] = r["time [s]"] / rows[0]["time [s]"]
print(save_results("gpu_check", rows, {"model": "BERT-base-sized encoder, 4 blocks, random weights", **machine_info()}))
PYEOF
