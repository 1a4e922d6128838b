"""FLOP budgets: a small CNN on digits pruned to 50 %, 30 %, 20 % of its FLOPs.

The demo's CNN (two 3x3 convolutions, max-pool, linear head) trained on scikit-learn's digits
(seeded) is pruned one-shot, without fine-tuning, by ``flop-magnitude`` (FALCON's ILP with
values w^2), ``falcon`` (DFO on the local quadratic model under the NNZ and FLOP budgets) and
``falcon++`` (multi-stage FALCON). FLOPs = 2 x MACs of one forward pass on one 8x8 image as
counted by :mod:`torch.utils.flop_counter`; the budget is the fraction of the model's FLOPs kept
(``flop_budget``), with ``--sparsity`` optionally adding an NNZ budget. Accuracy is on the 597
held-out digits; each method is also run on several seeds of the calibration subset.

    python benchmarks/flops_cnn.py [--quick]

Writes ``benchmarks/results/flops_cnn.json`` and ``.md`` (``flops_cnn_quick.*`` with ``--quick``); pruning time is a ratio to the
flop-magnitude time of the same run.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.demo import accuracy, load_digits_split, make_cnn, train  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budgets", default="0.5,0.3,0.2", help="fractions of the model's FLOPs kept")
    ap.add_argument("--methods", default="flop-magnitude,falcon,falcon++")
    ap.add_argument("--sparsity", type=float, default=None, help="optional NNZ budget too (fraction removed)")
    ap.add_argument("--n-samples", type=int, default=512, help="calibration digits for the gradients")
    ap.add_argument("--l2", type=float, default=1e-2, help="ridge of falcon / falcon++ (relative to the normalised Fisher)")
    ap.add_argument("--stages", type=int, default=8, help="stages of falcon++")
    ap.add_argument("--schedule", default="poly")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3, help="calibration subsets (seeds) per budget")
    ap.add_argument("--quick", action="store_true", help="budget 0.3 only, one seed, 4 stages")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [m.strip() for m in args.methods.split(",")]
    seeds, stages = args.seeds, args.stages
    if args.quick:
        budgets, seeds, stages = [0.3], 1, min(stages, 4)
    Xtr, ytr, Xte, yte = load_digits_split(seed=0)
    dense = train(make_cnn(0), Xtr, ytr, epochs=args.epochs, seed=0)
    dense_acc = 100 * accuracy(dense, Xte, yte)
    info = cpt.measure(dense, Xte)
    print(f"dense CNN: {dense_acc:.2f} %, {int(info['params'])} weights, {info['model_flops']:.0f} FLOPs per image")
    rows = []
    for budget in budgets:
        accs: dict[str, list[float]] = {m: [] for m in methods}
        times: dict[str, list[float]] = {m: [] for m in methods}
        kept: dict[str, list[float]] = {m: [] for m in methods}
        for seed in range(seeds):
            idx = torch.from_numpy(np.random.default_rng(seed).permutation(len(ytr))[: args.n_samples])
            calibration = [(Xtr[idx[i : i + 128]], ytr[idx[i : i + 128]]) for i in range(0, len(idx), 128)]
            for method in methods:
                model = copy.deepcopy(dense)
                kw = {} if method == "flop-magnitude" else {"l2": args.l2}
                if method.endswith("++"):
                    kw.update(stages=stages, schedule=args.schedule)
                t = time.perf_counter()
                report = cpt.prune(model, calibration, method=method, flop_budget=budget, sparsity=args.sparsity, n_samples=args.n_samples, progress=False, **kw)
                times[method].append(time.perf_counter() - t)
                report.check_budgets()
                m = cpt.measure(model, Xte)
                assert m["flops_kept"] <= budget + 1e-9, (method, m)
                accs[method].append(100 * accuracy(model, Xte, yte))
                kept[method].append(m["flops_kept"])
                print(f"  FLOPs {budget:g} seed {seed} {method:>14}: {accs[method][-1]:6.2f} % (FLOPs kept {m['flops_kept']:.4f}, sparsity {m['sparsity']:.3f}, {times[method][-1]:.2f}s)", flush=True)
        row: dict = {"FLOPs kept (budget)": budget}
        for method in methods:
            row[f"{method} acc % (mean)"] = float(np.mean(accs[method]))
            row[f"{method} acc % (min)"] = float(np.min(accs[method]))
        ref = float(np.mean(times[methods[0]]))
        for method in methods:
            row[f"{method} FLOPs kept"] = float(np.max(kept[method]))
            if method != methods[0]:
                row[f"{method} time / {methods[0]} time"] = float(np.mean(times[method])) / ref
        rows.append(row)
    meta = {
        "model": "CNN conv3x3(1->8)-ReLU-conv3x3(8->16)-ReLU-maxpool2-linear(256->10), sklearn digits",
        "dense accuracy %": dense_acc,
        "model FLOPs per image (2 x MACs)": info["model_flops"],
        "calibration digits": args.n_samples,
        "seeds": seeds,
        "falcon": f"l2={args.l2}, sparsity={args.sparsity}",
        "falcon++": f"l2={args.l2}, stages={stages}, schedule={args.schedule}",
        "flop-magnitude time (s, mean of the last budget)": ref,
        **machine_info(),
    }
    print(save_results("flops_cnn_quick" if args.quick else "flops_cnn", rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
