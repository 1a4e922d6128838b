"""The local model's curvature and target on MLPNet: empirical Fisher, true Fisher, true Fisher with distillation.

The MLPNet checkpoint (784-40-20-10, ``../shared/data``) is pruned with ``chita`` and
``chita++`` (automatic ridge on held-back calibration digits, the default cross-entropy loss)
with ``fisher="empirical"`` (the papers'), ``fisher="true", distill=False`` (the Fisher of the
model's own class probabilities, the labels as targets) and, for ``chita++``,
``fisher="true", distill=True`` (the same curvature, the unpruned model's probabilities as
targets: ``chita++``'s default on classifiers; ``docs/torch_adapter.md``, "The curvature").
The class cut (1 %) and the distillation were chosen on validation splits 3-6; the splits
reported here (default 1 and 2) chose nothing.

Times are CPU seconds (``time.process_time``, one thread everywhere) of one ``cpt.prune``
call; ``... / empirical`` are ratios in the same run.

    python benchmarks/fisher.py --checkpoint ../shared/data/mlpnet_mnist_93.97.ckpt --splits 1,2
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, save_results  # noqa: E402
from mlpnet import accuracy, load_mlpnet, mnist_split  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch._fisher import MIN_CLASS_PROB  # noqa: E402


#: The arms: name -> keyword arguments of ``cpt.prune``.
ARMS = {
    "empirical": {"fisher": "empirical"},
    "true": {"fisher": "true", "distill": False},
    "true + distill": {"fisher": "true", "distill": True},
}


def run(model, calib, method: str, sparsity: float, **kw):
    """(pruned copy, CPU seconds)."""
    m = copy.deepcopy(model)
    t = time.process_time()
    cpt.prune(m, calib, method=method, sparsity=sparsity, progress=False, **kw)
    return m, time.process_time() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--splits", default="1,2", help="seeds of the calibration/evaluation splits")
    ap.add_argument("--sparsities", default="0.9,0.95,0.98")
    ap.add_argument("--methods", default="chita,chita++")
    ap.add_argument("--n-grad", type=int, default=1000)
    ap.add_argument("--n-eval", type=int, default=4000)
    ap.add_argument("--name", default="fisher")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dense = load_mlpnet(args.checkpoint)
    rows = []
    for split in (int(s) for s in args.splits.split(",")):
        Xg, yg, Xe, ye = mnist_split(split, args.n_grad, args.n_eval)
        calib = [(Xg[i : i + 250], yg[i : i + 250]) for i in range(0, len(yg), 250)]
        run(dense, calib, "chita", 0.9, fisher="empirical")  # warm-up (imports, vmap tracing)
        for s in (float(v) for v in args.sparsities.split(",")):
            for method in args.methods.split(","):
                row = {"split": split, "sparsity": s, "method": method}
                for arm, kw in ARMS.items():
                    if kw.get("distill") and not cpt.resolve_method(method).multistage:
                        row.update({f"{arm} %": "-", f"{arm} / empirical CPU": "-"})  # one-shot: no first-order term to distil
                        continue
                    pruned, seconds = run(dense, calib, method, s, **kw)
                    row[f"{arm} %"] = accuracy(pruned, Xe, ye)
                    if arm == "empirical":
                        row["empirical CPU [s]"] = t_emp = seconds
                    else:
                        row[f"{arm} / empirical CPU"] = seconds / t_emp
                rows.append(row)
                print({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    meta = {
        "checkpoint": os.path.basename(args.checkpoint), "calibration digits": args.n_grad, "evaluation digits": args.n_eval,
        "splits": args.splits, "defaults": "l2 and (chita++) first_order automatic on 20 % of the calibration digits held back, cross-entropy",
        "true Fisher": f"rows sqrt(p_ic) grad(-log p_ic) for classes with p_ic >= {MIN_CLASS_PROB:g} and the target's classes "
        "(the label, or with distill the unpruned model's classes with q_ic >= that)",
        "time": "CPU seconds, 1 thread", **machine_info(),
    }
    print(save_results(args.name, rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
