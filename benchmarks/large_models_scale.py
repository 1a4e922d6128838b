"""Scale of the sequential engine: a >= 1B-parameter decoder on one CPU machine, and time against hidden size.

Models are ``transformers.LlamaModel`` built from a config with random weights (no download):

* **1B**: TinyLlama-1.1B's shape (hidden 2048, intermediate 5632, 22 layers, 32 heads, 4
  key/value heads (GQA), vocabulary 32000; 1.03 B parameters without the LM head), float32,
  pruned with ``method="wanda"`` at 50 % with ``offload="disk"`` (every block in a safetensors
  file except during its turn), with ``--one-b-threads`` threads (it holds the machine's lock).
  Reported: the model's size, the process's peak resident memory (``ru_maxrss``, building the
  model included), the peak resident memory sampled every 0.1 s during the block loop (from
  block 0's first forward pass to the last block's last: blocks wait on disk) and during the
  whole call (which also writes the blocks out and loads the pruned model back), the time per
  block. SparseGPT over the 22
  blocks is estimated as 22 x its time on the hidden-2048 growth block, whose shapes are the
  1B block's (with full instead of grouped key/value heads: an upper bound).
* **growth**: hidden 256 / 512 / 1024 / 2048 (intermediate 2.75 x hidden, heads of size 64,
  one block, vocabulary 1000): time of the block for ``wanda``, ``sparsegpt`` and (up to
  hidden 1024, see ``LAYERWISE_MAX_HIDDEN``) ``layerwise``; the exponent a of
  ``time ~ hidden^a`` fitted by least squares on the log-log points of each method.

Calibration: ``--samples`` random token sequences of ``--seq`` tokens (timing and memory only;
the quality of the prune on real weights is ``benchmarks/large_models.py``'s subject). Each
measurement runs in its own subprocess (so each peak is its own); the 1B run and the growth
series each hold the CPU lock (``--lock``) once (about 8 and 5 minutes: the lock is shared
with other sessions and every new hold waits in its queue); growth runs with one thread.

    .venv/bin/python benchmarks/large_models_scale.py --lock /tmp/cpu.lock     # ~13 min on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402

ONE_B = {"hidden": 2048, "intermediate": 5632, "layers": 22, "heads": 32, "kv_heads": 4, "vocab": 32000}
GROWTH_HIDDEN = (256, 512, 1024, 2048)
GROWTH_METHODS = ("wanda", "sparsegpt", "layerwise")
#: layerwise (combprune's solver) takes ~14 s per block at hidden 512 on one thread and grows
#: about as hidden^3: it is timed up to this size only (three points for its fit).
LAYERWISE_MAX_HIDDEN = 1024


@contextlib.contextmanager
def cpu_lock(path: str | None):
    """Hold ``flock(path)`` (the machine's shared CPU lock) for the duration."""
    if not path:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssMonitor:
    """Samples the resident set size every ``period`` seconds in a thread; ``peak`` is the largest."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.peak, self._stop = period, rss_bytes(), threading.Event()
        self.samples: list[tuple[float, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.samples.append((time.perf_counter(), rss_bytes()))
            self.peak = max(self.peak, self.samples[-1][1])

    def peak_between(self, start: float, stop: float) -> int:
        return max((r for t, r in self.samples if start <= t <= stop), default=0)

    def __enter__(self) -> "RssMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def build(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int, seq: int):
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                                   num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                                   max_position_embeddings=max(seq, 128))
    return transformers.LlamaModel(cfg).eval()


def calibration(samples: int, seq: int, vocab: int) -> list[dict[str, Any]]:
    import torch

    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, vocab, (1, seq), generator=g)} for _ in range(samples)]


def job_one_b(args: argparse.Namespace) -> dict[str, Any]:
    """The 1B model: wanda over every block with disk offload."""
    import combprune.torch as cpt

    t0 = time.perf_counter()
    model = build(**ONE_B, seq=args.seq)
    out: dict[str, Any] = {"build_s": time.perf_counter() - t0, "params": sum(p.numel() for p in model.parameters()),
                           "model_bytes": sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers())),
                           "rss_after_build_bytes": rss_bytes()}
    batches = calibration(args.samples, args.seq, ONE_B["vocab"])
    calls: list[float] = []  # forward calls of the first and last block: the window of the block loop
    hooks = [model.layers[i].register_forward_hook(lambda *a: calls.append(time.perf_counter())) for i in (0, -1)]
    with tempfile.TemporaryDirectory(dir=args.offload_dir) as tmp, RssMonitor() as mon:
        rep = cpt.prune_sequential(model, batches, method="wanda", sparsity=0.5, offload="disk", offload_dir=tmp,
                                   progress=False)
    for h in hooks:
        h.remove()
    out.update(wanda_loop_peak_rss_bytes=mon.peak_between(min(calls), max(calls)), wanda_call_peak_rss_bytes=mon.peak,
               wanda_total_s=rep.time, wanda_block_s=[b.time for b in rep.blocks],
               wanda_sparsity=rep.sparsity, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return out


def job_growth(args: argparse.Namespace) -> dict[str, Any]:
    """One hidden size: time of one block for each method (no offload)."""
    import combprune.torch as cpt

    h = args.hidden
    cfg = {"hidden": h, "intermediate": int(2.75 * h), "layers": 1, "heads": h // 64, "kv_heads": h // 64, "vocab": 1000}
    batches = calibration(args.samples, args.seq, cfg["vocab"])
    out: dict[str, Any] = {"hidden": h, "intermediate": cfg["intermediate"]}
    for method in GROWTH_METHODS:
        if method == "layerwise" and h > LAYERWISE_MAX_HIDDEN:
            continue
        model = build(**cfg, seq=args.seq)
        rep = cpt.prune_sequential(model, batches, method=method, sparsity=0.5, progress=False)
        out[f"{method}_block_s"] = sum(b.time for b in rep.blocks) / len(rep.blocks)
        out[f"{method}_solve_s"] = sum(r.time for r in rep.layers) / len(rep.blocks)
    return out


def run_jobs(argvs: list[list[str]], lock: str | None, threads: int) -> list[dict[str, Any]]:
    """Run each ``--job ...`` in a fresh subprocess (``threads`` torch / BLAS threads), all
    within one hold of the CPU lock; their JSON results."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads)}
    outs = []
    with cpu_lock(lock):
        for argv in argvs:
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--threads", str(threads)], env=env,
                                  capture_output=True, text=True)
            if proc.returncode:
                raise SystemExit(f"job {argv} failed:\n{proc.stderr[-4000:]}")
            outs.append({**json.loads(proc.stdout.strip().splitlines()[-1]), "job_wall_s": time.perf_counter() - t0})
            print(outs[-1], flush=True)
    return outs


def fit_exponent(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lock", default=None, help="flock this file around each measurement (e.g. /tmp/cpu.lock)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--one-b-threads", type=int, default=2, help="threads of the 1B run (it holds the whole machine's lock)")
    ap.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--offload-dir", default=None)
    ap.add_argument("--job", choices=("one_b", "growth"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--hidden", type=int, default=512, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.job is not None:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(job_one_b(args) if args.job == "one_b" else job_growth(args)))
        return
    common = ["--samples", str(args.samples), "--seq", str(args.seq)]
    common += ["--offload-dir", args.offload_dir] if args.offload_dir else []
    one_b = run_jobs([["--job", "one_b", *common]], args.lock, args.one_b_threads)[0]
    growth = run_jobs([["--job", "growth", "--hidden", str(h), *common] for h in GROWTH_HIDDEN], args.lock, 1)
    rows = []
    for g in growth:
        rows.append({"model": f"hidden {g['hidden']} (1 block)", **{f"{m} s/block": g.get(f"{m}_block_s") for m in GROWTH_METHODS},
                     **{f"{m} / wanda": g[f"{m}_block_s"] / g["wanda_block_s"] for m in GROWTH_METHODS[1:] if f"{m}_block_s" in g}})
    exps = {m: fit_exponent([g["hidden"] for g in growth if f"{m}_block_s" in g],
                            [g[f"{m}_block_s"] for g in growth if f"{m}_block_s" in g]) for m in GROWTH_METHODS}
    rows.append({"model": "fitted exponent a (time ~ hidden^a)", **{f"{m} s/block": exps[m] for m in GROWTH_METHODS}})
    gib = 2.0**30
    wanda_block = sum(one_b["wanda_block_s"]) / len(one_b["wanda_block_s"])
    g2048 = next(g for g in growth if g["hidden"] == ONE_B["hidden"])
    rows.append({"model": f"1B ({one_b['params'] / 1e9:.2f} B params, 22 blocks, {args.one_b_threads} threads)",
                 "wanda s/block": wanda_block})
    meta = {**machine_info(), "threads": f"1 (growth), {args.one_b_threads} (1B run)",
            "calibration": f"{args.samples} random sequences x {args.seq} tokens",
            "one_b_config": ONE_B, "one_b_params": one_b["params"], "model_GiB": one_b["model_bytes"] / gib,
            "peak_rss_GiB (ru_maxrss, build included)": one_b["peak_rss_bytes"] / gib,
            "peak_rss / model size": one_b["peak_rss_bytes"] / one_b["model_bytes"],
            "wanda block-loop peak_rss_GiB (disk offload)": one_b["wanda_loop_peak_rss_bytes"] / gib,
            "wanda whole-call peak_rss_GiB": one_b["wanda_call_peak_rss_bytes"] / gib,
            "block-loop peak_rss / model size": one_b["wanda_loop_peak_rss_bytes"] / one_b["model_bytes"],
            "wanda total_s (22 blocks, disk offload)": one_b["wanda_total_s"], "build_s": one_b["build_s"],
            "sparsegpt 22 blocks estimated_s (22 x the hidden-2048 block, 1 thread, MHA)": 22 * g2048["sparsegpt_block_s"]}
    md = save_results("large_models_scale", rows, meta)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "large_models_scale.json"), "w") as fh:
        json.dump({"meta": meta, "rows": rows, "one_b": one_b, "growth": growth}, fh, indent=2)
    print(md)


if __name__ == "__main__":
    main()
