"""Gradual pruning of a small MLP on scikit-learn's digits inside a plain training loop.

    python examples/gradual_digits.py [--method chita] [--sparsity 0.9] [--plot gradual.png]

Trains a 64-64-10 MLP for 30 epochs (Adam); pruning events every 50 steps from step 50 to step
400 prune it to the cubic schedule's sparsity (0 at step 50, so the first event that prunes is at
step 100), ending at ``--sparsity``; the pruned weights
stay exactly zero while training goes on. Logs one line per event and, with ``--plot``, saves a
figure of held-out accuracy and sparsity against steps (needs ``matplotlib``: the ``plot`` extra).
Runs in a few seconds on one CPU core (``chita``: about half a minute).
"""

from __future__ import annotations

import argparse
import logging

import torch
from torch import nn

import combprune.torch as cpt
from combprune.torch.masking import get_masks


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", default="magnitude", help="any method of combprune.torch.prune (magnitude, chita, ...)")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--plot", default=None, help="save accuracy / sparsity against steps to this image file")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("gradual_digits")

    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:1400], order[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    pruner = cpt.GradualPruner(
        model, (X[train[:256]], y[train[:256]]), method=args.method, sparsity=args.sparsity,
        start=50, end=400, every=50, optimizer=opt, progress=False, n_samples=256, l2=1e-2,
    )
    curve = []
    step = 0
    for epoch in range(30):
        for batch in train[torch.randperm(len(train))].split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[batch]), y[batch]).backward()
            opt.step()
            pruner.step()  # after optimizer.step(): counts the step, runs the due event
            step += 1
            if step % 10 == 0:
                with torch.no_grad():
                    acc = float((model(X[test]).argmax(1) == y[test]).float().mean())
                kept = sum(int(m.sum()) for m in get_masks(model).values()) if pruner.history else None
                curve.append((step, acc, 0.0 if kept is None else 1 - kept / (64 * 64 + 64 * 10)))
    pruner.finalize()
    for r in pruner.history:
        log.info("step %4d  sparsity %.3f (target %.3f)  calibration loss %.3f -> %.3f", r.position, r.sparsity, r.sparsity_target, r.loss_before, r.loss_after)
    log.info("final: sparsity %.3f, held-out accuracy %.3f", curve[-1][2], curve[-1][1])
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, acc, sp = zip(*curve)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(steps, acc, label="held-out accuracy")
        ax.plot(steps, sp, label="sparsity")
        for r in pruner.history:
            ax.axvline(r.position, color="grey", lw=0.5)
        ax.set_xlabel("optimiser step")
        ax.set_ylim(0, 1)
        ax.legend(loc="lower right")
        ax.set_title(f"gradual {args.method} on digits")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        log.info("figure saved to %s", args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
