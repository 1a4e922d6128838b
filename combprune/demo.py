"""The main job: prune small networks trained on embedded data, method by method.

``combprune demo`` (or ``python -m combprune.demo``) trains, on scikit-learn's 8x8 handwritten
digits (1797 images, embedded in scikit-learn, no download), a small MLP (64-64-32-10) and a
small CNN (two 3x3 convolutions, max-pool, linear head), seeded, in seconds on a CPU. It then
prunes copies of each with

* ``magnitude``, ``chita``, ``chita++`` at a few **sparsities** (fraction of weights removed),
* ``flop-magnitude`` and ``falcon`` at a few **FLOP budgets** (fraction of the model's FLOPs
  kept; FLOPs = 2 x MACs as counted by :mod:`torch.utils.flop_counter`),
* ``osscar`` (structured: fraction of neurons / channels removed per layer, no retraining)

and prints test accuracy, sparsity reached, FLOPs kept and pruning time for each, with no
fine-tuning after pruning (one-shot pruning, as in the papers' tables). ``--plot out.png``
writes accuracy versus sparsity.

The library logs; only :func:`main` prints.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["DemoRow", "load_digits_split", "make_mlp", "make_cnn", "train", "accuracy", "run_demo", "format_table", "plot_rows"]


@dataclass
class DemoRow:
    """One pruned model: what was asked, what was reached, how well it does."""

    model: str
    method: str
    budget: str  # e.g. "sparsity 0.9", "FLOPs 0.3", "dense"
    accuracy: float  # test accuracy, in [0, 1]
    sparsity: float  # fraction of prunable weights removed (reached)
    flops_kept: float  # fraction of the model's dense FLOPs kept (reached)
    params_kept: int
    time: float  # seconds spent pruning
    note: str = ""


def load_digits_split(*, seed: int = 0, n_test: int = 597):
    """scikit-learn's digits as float tensors: (X_train, y_train, X_test, y_test), X in (N, 1, 8, 8).

    Pixels (0..16) are scaled to [0, 1] and standardised with the training mean/std.
    """
    import torch
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    test, train = order[:n_test], order[n_test:]
    mean, std = X[train].mean(), X[train].std()
    X = (X - mean) / std
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return t(X[train][:, None]), t(y[train]), t(X[test][:, None]), t(y[test])


def make_mlp(seed: int = 0):
    """64-64-32-10 MLP with ReLU (flattens its 1x8x8 input)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def make_cnn(seed: int = 0):
    """conv3x3(1->8) ReLU, conv3x3(8->16) ReLU, maxpool 2, linear(16*4*4 -> 10)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def train(model, X, y, *, epochs: int = 15, batch_size: int = 64, lr: float = 3e-3, seed: int = 0):
    """Adam on cross-entropy, seeded minibatches; returns the model in eval mode."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch_size):
            idx = perm[i : i + batch_size]
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, X, y) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        return float((model(X).argmax(1) == y).float().mean())


def _available(name: str) -> bool:
    from combprune.registry import list_solvers

    return any(r["name"] == name and r["available"] for r in list_solvers())


def _missing_solvers(methods: Sequence[str]) -> dict[str, str]:
    """method -> the solver it needs, for the methods whose solver is not available."""
    from combprune.torch import resolve_method

    needs = {m: resolve_method(m).solver for m in methods}
    return {m: name for m, name in needs.items() if name and not _available(name)}


def run_demo(
    *,
    sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9),
    flop_budgets: Sequence[float] = (0.5, 0.3),
    structured_fractions: Sequence[float] = (0.25, 0.5),
    methods: Sequence[str] = ("magnitude", "chita", "chita++", "flop-magnitude", "falcon", "osscar"),
    models: Sequence[str] = ("mlp", "cnn"),
    epochs: int = 15,
    n_samples: int = 256,
    stages: int = 6,
    l2: float | None = None,
    seed: int = 0,
    progress: bool = False,
) -> list[DemoRow]:
    """Train, prune and evaluate; returns one :class:`DemoRow` per (model, method, budget).

    ``l2``: ridge of the gradient methods; ``None`` (default) leaves it to the library's
    automatic choice on held-back calibration images (``docs/torch_adapter.md``).
    """
    import torch

    import combprune.torch as cpt

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    Xtr, ytr, Xte, yte = load_digits_split(seed=seed)
    g = torch.Generator().manual_seed(seed)
    calib_idx = torch.randperm(len(ytr), generator=g)[:n_samples]
    calibration = [(Xtr[calib_idx[i : i + 64]], ytr[calib_idx[i : i + 64]]) for i in range(0, len(calib_idx), 64)]
    builders = {"mlp": make_mlp, "cnn": make_cnn}
    rows: list[DemoRow] = []
    skipped = _missing_solvers(methods)
    for m, name in skipped.items():
        logger.warning("demo: method %s skipped (solver %r is not available)", m, name)
    for model_name in models:
        t = time.perf_counter()
        dense = train(builders[model_name](seed), Xtr, ytr, epochs=epochs, seed=seed)
        logger.info("demo: trained %s in %.1fs", model_name, time.perf_counter() - t)
        n_params = int(cpt.measure(dense, Xte)["params"])
        rows.append(DemoRow(model_name, "dense", "-", accuracy(dense, Xte, yte), 0.0, 1.0, n_params, 0.0))
        jobs: list[tuple[str, str, dict[str, Any]]] = []
        for method in methods:
            if method in skipped:
                continue
            spec = cpt.resolve_method(method)
            if spec.kind == "structured":
                jobs += [(method, f"groups removed {s:g}", {"sparsity": s}) for s in structured_fractions]
            elif spec.flop_aware:
                jobs += [(method, f"FLOPs {f:g}", {"flop_budget": f}) for f in flop_budgets]
            else:
                jobs += [(method, f"sparsity {s:g}", {"sparsity": s}) for s in sparsities]
        for method, label, budget in jobs:
            model = copy.deepcopy(dense)
            spec = cpt.resolve_method(method)
            extra: dict[str, Any] = {}
            if spec.kind == "gradient" and l2 is not None:
                extra["l2"] = l2
            if spec.multistage:
                extra["stages"] = stages
            try:
                report = cpt.prune(model, calibration, method=method, n_samples=n_samples, progress=progress, **budget, **extra)
            except Exception as exc:  # one failing method must not end the demo
                logger.exception("demo: %s %s %s failed", model_name, method, label)
                rows.append(DemoRow(model_name, method, label, math.nan, math.nan, math.nan, 0, 0.0, note=f"failed: {exc}"))
                continue
            # Same yardstick for every method: nonzero Linear/Conv weights, FLOPs of the whole model.
            m = cpt.measure(model, Xte)
            rows.append(
                DemoRow(model_name, method, label, accuracy(model, Xte, yte), m["sparsity"], m["flops_kept"], int(m["nonzero"]), report.time)
            )
    return rows


def format_table(rows: Sequence[DemoRow]) -> str:
    """Plain-text table of the demo rows."""
    header = ["model", "method", "budget", "test acc %", "sparsity", "FLOPs kept", "weights kept", "time [s]"]
    body = [
        [
            r.model, r.method, r.budget, "failed" if math.isnan(r.accuracy) else f"{100 * r.accuracy:.2f}",
            "-" if math.isnan(r.sparsity) else f"{r.sparsity:.3f}", "-" if math.isnan(r.flops_kept) else f"{r.flops_kept:.3f}",
            f"{r.params_kept:,}", f"{r.time:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(h), *(len(b[j]) for b in body)) if body else len(h) for j, h in enumerate(header)]
    fmt = lambda cells: "  ".join(c.ljust(w) if j < 3 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    lines = [fmt(header), "  ".join("-" * w for w in widths)]
    prev = None
    for r, b in zip(rows, body):
        if prev is not None and r.model != prev:
            lines.append("")
        prev = r.model
        lines.append(fmt(b))
    return "\n".join(lines)


def plot_rows(rows: Sequence[DemoRow], path: str) -> None:
    """Accuracy versus sparsity reached, one panel per model, one line per method."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - matplotlib is in the plot extra
        raise ImportError("plotting needs matplotlib: install it with `pip install combprune[plot]`") from exc
    models = list(dict.fromkeys(r.model for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r.model == model and not math.isnan(r.accuracy)]
        dense = next((r for r in mine if r.method == "dense"), None)
        for method in dict.fromkeys(r.method for r in mine if r.method != "dense"):
            pts = sorted((r.sparsity, 100 * r.accuracy) for r in mine if r.method == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        if dense is not None:
            ax.axhline(100 * dense.accuracy, color="gray", ls="--", lw=1, label="dense")
        ax.set_title(f"{model.upper()} on sklearn digits (one-shot, no fine-tuning)")
        ax.set_xlabel("sparsity (fraction of weights removed)")
        ax.set_ylabel("test accuracy [%]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser, *, common: bool = True) -> argparse.ArgumentParser:
    """Arguments of the network demo; ``common=False`` leaves out ``--seed`` and ``--json``
    (for a parser that already defines them, such as ``combprune demo``)."""
    p.add_argument("--plot", metavar="PNG", help="write accuracy versus sparsity to this image (matplotlib)")
    p.add_argument("--quick", action="store_true", help="fewer budgets, shorter training (a smoke run)")
    p.add_argument("--models", default="mlp,cnn", help="comma-separated: mlp, cnn (default both)")
    p.add_argument("--methods", default="magnitude,chita,chita++,flop-magnitude,falcon,osscar", help="comma-separated method names")
    p.add_argument("--sparsities", default="0.5,0.7,0.8,0.9", help="sparsities (fraction of weights removed)")
    p.add_argument("--flop-budgets", default="0.5,0.3", help="fractions of the model's FLOPs kept")
    p.add_argument("--structured", default="0.25,0.5", help="fractions of neurons/channels removed (osscar)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs")
    p.add_argument("--n-samples", type=int, default=256, help="calibration samples")
    p.add_argument("--stages", type=int, default=6, help="stages of chita++ / falcon++")
    p.add_argument("--l2", type=float, default=None,
                   help="ridge relative to the normalised Fisher (default: chosen automatically on held-back calibration images)")
    p.add_argument("--out", metavar="JSON", help="write the rows to this JSON file")
    p.add_argument("--progress", action="store_true", help="show progress bars")
    if common:
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    return p


def run_from_args(args: argparse.Namespace) -> tuple[list[DemoRow], str]:
    """Run the demo for parsed ``combprune demo`` arguments.

    Returns the rows and the text to show (the table, or JSON with ``--json``); writes
    ``--out`` JSON and the ``--plot`` figure. Printing is left to the command line.
    """
    floats = lambda s: tuple(float(v) for v in s.split(",") if v.strip())  # noqa: E731
    kwargs: dict[str, Any] = dict(
        sparsities=floats(args.sparsities), flop_budgets=floats(args.flop_budgets), structured_fractions=floats(args.structured),
        methods=tuple(m.strip() for m in args.methods.split(",") if m.strip()), models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        epochs=args.epochs, n_samples=args.n_samples, stages=args.stages, l2=args.l2, seed=args.seed, progress=args.progress,
    )
    if args.quick:
        kwargs.update(sparsities=(0.5, 0.9), flop_budgets=(0.3,), structured_fractions=(0.5,), epochs=min(args.epochs, 10), n_samples=min(args.n_samples, 128), stages=min(args.stages, 3))
    for name in ("sparsities", "flop_budgets", "structured_fractions"):
        if not kwargs[name]:
            raise ValueError(f"--{name.replace('_', '-')}: is empty")
    t = time.perf_counter()
    rows = run_demo(**kwargs)
    if getattr(args, "json", False):
        text = json.dumps([asdict(r) for r in rows], indent=2)
    else:
        lines = [
            "combprune demo: one-shot pruning of networks trained on sklearn digits (1200 train / 597 test images)",
            "sparsity = fraction of Linear/Conv weights removed; FLOPs kept = fraction of the model's FLOPs (2 x MACs)",
            "",
            format_table(rows),
        ]
        skipped = list(_missing_solvers(kwargs["methods"]))
        if skipped:
            lines += ["", f"skipped (solver not registered): {', '.join(skipped)}"]
        lines += ["", f"total {time.perf_counter() - t:.1f}s"]
        text = "\n".join(lines)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=2)
    if args.plot:
        plot_rows(rows, args.plot)
    return rows, text
