"""torch.distributed on the sequential engine: 1 process against 2 gloo processes, same prune.

Model: a ``transformers.LlamaModel`` built from a config with random weights (hidden 384,
intermediate 1024, ``--layers`` blocks, 6 heads, vocabulary 1000), float32. Calibration:
``--samples`` random sequences of ``--seq`` tokens. For each method, the same prune runs

* in one process (no process group), and
* in 2 processes (gloo, ``torch.multiprocessing.spawn``): each rank keeps half of the
  calibration batches, the statistics of every layer are all-reduced, the layers of a block
  are solved round-robin and broadcast (``docs/large_models.md``).

Reported: wall time of the ``prune_sequential`` call (the slowest rank, after a barrier;
process start-up and model building excluded), the speed-up ``t(1 process) / t(2 processes)``,
the largest absolute weight difference between the two results and between the two ranks, and
whether the masks are identical, and the mean relative reconstruction error of the layers in
both runs (the float64 sums of H are added in another order with 2 ranks, which can move a
solver's choice between near-equal supports). Every process uses one torch / BLAS thread, so on this
2-core machine the speed-up is bounded by 2 (and by the shared cores' load).

    flock /tmp/cpu.lock .venv/bin/python benchmarks/distributed.py     # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402

METHODS = ("wanda", "sparsegpt", "layerwise")


def build(layers: int):
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(hidden_size=384, intermediate_size=1024, num_hidden_layers=layers,
                                   num_attention_heads=6, num_key_value_heads=6, vocab_size=1000,
                                   max_position_embeddings=512)
    return transformers.LlamaModel(cfg).eval()


def batches(samples: int, seq: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 1000, (1, seq), generator=g)} for _ in range(samples)]


def prune(method: str, args: argparse.Namespace) -> tuple[float, dict[str, torch.Tensor], float]:
    import combprune.torch as cpt

    model = build(args.layers)
    calib = batches(args.samples, args.seq)
    if tdist.is_initialized():
        tdist.barrier()
    t0 = time.perf_counter()
    rep = cpt.prune_sequential(model, calib, method=method, sparsity=0.5, progress=False)
    seconds = time.perf_counter() - t0
    return seconds, model.state_dict(), sum(r.relative_error for r in rep.layers) / len(rep.layers)


def worker(rank: int, world: int, init_file: str, out_dir: str, args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for method in METHODS:
            seconds, state, error = prune(method, args)
            torch.save({"time": seconds, "state": state, "error": error}, os.path.join(out_dir, f"{method}-{rank}.pt"))
    finally:
        tdist.destroy_process_group()


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def same_masks(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k] != 0, b[k] != 0) for k in a)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    args = ap.parse_args()
    os.environ.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    torch.set_num_threads(1)
    single = {m: prune(m, args) for m in METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(2, os.path.join(tmp, "init"), tmp, args), nprocs=2, join=True)
        ranks = {m: [torch.load(os.path.join(tmp, f"{m}-{r}.pt")) for r in range(2)] for m in METHODS}
    rows = []
    for m in METHODS:
        t1, ref, err1 = single[m]
        t2 = max(r["time"] for r in ranks[m])
        rows.append({"method": m, "1 process s": t1, "2 processes s": t2, "speed-up (1/2)": t1 / t2,
                     "max |W1 - W2|": max_diff(ref, ranks[m][0]["state"]),
                     "max |rank0 - rank1|": max_diff(ranks[m][0]["state"], ranks[m][1]["state"]),
                     "same masks": same_masks(ref, ranks[m][0]["state"]),
                     "mean rel. error 1 process": err1, "mean rel. error 2 processes": ranks[m][0]["error"]})
        print(rows[-1], flush=True)
    meta = {**machine_info(), "model": f"LlamaModel hidden 384, intermediate 1024, {args.layers} blocks, random weights",
            "calibration": f"{args.samples} random sequences x {args.seq} tokens", "sparsity": 0.5,
            "threads per process": 1, "backend": "gloo (CPU)",
            "note": "2 CPU cores shared with other sessions: the speed-up is bounded by 2"}
    print(save_results("distributed", rows, meta))


if __name__ == "__main__":
    main()
