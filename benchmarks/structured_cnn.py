"""Structured pruning of small CNNs with residual streams and depthwise convolutions (digits).

Data: scikit-learn's 8x8 digits (1797 images), a fixed split: 1000 train, 300 calibration
(taken from the remaining images, never used for training or testing), 497 test.
Models, trained here (Adam, ``--epochs`` epochs, seeds 0..``--seeds``-1):

* ``resnet``: stem conv (16) + BN, two basic blocks at 16 channels, one at 32 (stride 2,
  1x1 downsample), global average pool, linear classifier: residual streams at 16 and 32
  channels are units (every writer, BatchNorm and reader), plus each block's inner channels;
* ``mobilenet``: stem conv (16) + BN, three inverted-residual blocks (1x1 expand x4 -> BN ->
  ReLU6 -> depthwise 3x3 -> BN -> ReLU6 -> 1x1 project -> BN, a residual add where shapes
  match), pool, classifier: the expanded channels run through the depthwise convolutions.

Each trained model is pruned with ``cpt.prune(method, sparsity=f, apply="physical")`` for
``f`` in 0.5 / 0.7 (fraction of the groups of every unit removed) with ``osscar`` and
``group-magnitude``; test accuracy before and after a short fine-tuning (``--ft-epochs``, the
same optimiser), FLOPs per sample and parameters after / before (measured on the physically
smaller model). With ``--budget flops`` the models are pruned to 0.5 / 0.7 of their FLOPs
instead (``flop_budget=``: one uniform fraction of every unit's groups, the smallest meeting
the budget), so both methods are compared at the same FLOPs, and Torch-Pruning's magnitude and
Taylor importances join as baselines (``_tp_baselines.py``: one pruning ratio for every group,
bisected to the smallest whose FLOPs meet the budget; Taylor takes cross-entropy gradients on the
labelled calibration images); every arm's FLOPs are measured by ``cpt.model_flops`` on the
calibration images and reported per arm; results ``structured_cnn_flops``. A control
column, ``acc_bn_recal``: test accuracy once every BatchNorm's statistics are re-estimated on
the unlabelled calibration images (no weight changed), for every arm alike.
No hyper-parameter is tuned on the test split.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/structured_cnn.py [--budget flops]   # ~1 min (--budget flops, with the baselines)
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine_info, save_results  # noqa: E402
from _tp_baselines import prune_to_flops, tp_prune  # noqa: E402

import combprune.torch as cpt  # noqa: E402


class Basic(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.down = None
        if stride != 1 or c_in != c_out:
            self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x if self.down is None else self.down(x)
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class Inverted(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = nn.Conv2d(c_in, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.dw = nn.Conv2d(hidden, hidden, 3, stride=stride, padding=1, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.project = nn.Conv2d(hidden, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        out = nn.functional.relu6(self.bn1(self.expand(x)))
        out = nn.functional.relu6(self.bn2(self.dw(out)))
        out = self.bn3(self.project(out))
        return out + x if self.residual else out


class Net(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        if kind == "resnet":
            self.blocks = nn.Sequential(Basic(16, 16, 1), Basic(16, 16, 1), Basic(16, 32, 2))
        else:
            self.blocks = nn.Sequential(Inverted(16, 16, 1), Inverted(16, 16, 1), Inverted(16, 32, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.blocks(torch.relu(self.bn(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _data(split: int = 0):
    """(train, calibration inputs, test) of the digits, permuted with seed ``split`` (0: the reported split)."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(split))
    tr, ca, te = perm[:1000], perm[1000:1300], perm[1300:]
    return (X[tr], y[tr]), (X[ca], y[ca]), (X[te], y[te])


def _train(model: nn.Module, data, epochs: int, seed: int) -> nn.Module:
    X, y = data
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def _accuracy(model: nn.Module, data) -> float:
    X, y = data
    with torch.no_grad():
        return float((model.eval()(X).argmax(1) == y).float().mean())


def _bn_recalibrated(model: nn.Module, X: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are re-estimated on ``X`` (the unlabelled
    calibration images; cumulative average, weights untouched)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for idx in torch.arange(len(X)).split(100):
            model(X[idx])
    return model.eval()


def _tp_arm(dense: nn.Module, method: str, calib, target: float, flops0: float) -> tuple[nn.Module, float]:
    """A Torch-Pruning baseline at ``target`` of the dense FLOPs (bisection on its pruning ratio).

    The classifier is left whole (its outputs are the classes); ``tp-taylor`` takes the gradients
    of the cross-entropy on the labelled calibration images (labels osscar does not use).
    """
    X, y = calib

    def backward(model: nn.Module) -> None:
        for idx in torch.arange(len(y)).split(100):
            nn.functional.cross_entropy(model(X[idx]), y[idx], reduction="sum").div(len(y)).backward()

    def prune(model: nn.Module, ratio: float) -> nn.Module:
        return tp_prune(model, X[:1], method, ratio, ignored_layers=[model.fc], backward=backward)

    model, ratio, _ = prune_to_flops(dense, prune, lambda m: cpt.model_flops(m, X) / flops0, target)
    return model, ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ft-epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", choices=("groups", "flops"), default="groups",
                    help="groups: remove 0.5 / 0.7 of every unit's groups; flops: keep 0.5 / 0.7 of the model's FLOPs")
    args = ap.parse_args()
    key = "groups_removed" if args.budget == "groups" else "flops_kept"
    budget_arg = "sparsity" if args.budget == "groups" else "flop_budget"
    torch.set_num_threads(args.threads)
    train, (calib, calib_y), test = _data()
    methods = ("osscar", "group-magnitude") + (("tp-magnitude", "tp-taylor") if args.budget == "flops" else ())
    t0 = time.perf_counter()
    rows = []
    for kind in ("resnet", "mobilenet"):
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            dense = _train(Net(kind), train, args.epochs, seed)
            acc0, flops0 = _accuracy(dense, test), cpt.model_flops(dense, calib)
            params0 = sum(p.numel() for p in dense.parameters())
            for fraction in (0.5, 0.7):
                for method in methods:
                    if method.startswith("tp-"):
                        model, tp_ratio = _tp_arm(dense, method, (calib, calib_y), fraction, flops0)
                        units = "-"
                    else:
                        model, tp_ratio = copy.deepcopy(dense), "-"
                        with torch.no_grad():
                            report = cpt.prune(model, calib, method=method, apply="physical", progress=False,
                                               **{budget_arg: fraction})
                        units = len(report.info["structured_plan"]["units"])
                    acc = _accuracy(model, test)
                    acc_bn = _accuracy(_bn_recalibrated(model, calib), test)
                    flops = cpt.model_flops(model, calib) / flops0
                    params = sum(p.numel() for p in model.parameters()) / params0
                    acc_ft = _accuracy(_train(model, train, args.ft_epochs, seed + 100), test)
                    rows.append({
                        "model": kind, "seed": seed, key: fraction, "method": method, "dense_acc": acc0,
                        "acc": acc, "acc_bn_recal": acc_bn, "acc_finetuned": acc_ft, "flops_ratio": flops, "params_ratio": params,
                        "units": units, "tp_pruning_ratio": tp_ratio,
                    })
                    print(rows[-1], flush=True)
    summary = []
    for kind in ("resnet", "mobilenet"):
        for fraction in (0.5, 0.7):
            base = [r for r in rows if r["model"] == kind and r[key] == fraction and r["method"] == "osscar"]
            ref = {r["seed"]: r["acc"] for r in base}
            for method in methods:
                sel = [r for r in rows if r["model"] == kind and r[key] == fraction and r["method"] == method]
                summary.append({
                    "model": kind, key: fraction, "method": method,
                    "dense_acc_mean": float(np.mean([r["dense_acc"] for r in sel])),
                    "acc_mean": float(np.mean([r["acc"] for r in sel])), "acc_min": float(np.min([r["acc"] for r in sel])),
                    "acc_bn_recal_mean": float(np.mean([r["acc_bn_recal"] for r in sel])),
                    "bn_recal_over_osscar": float(np.mean([r["acc_bn_recal"] for r in sel])
                                                  / np.mean([r["acc_bn_recal"] for r in base])),
                    "acc_finetuned_mean": float(np.mean([r["acc_finetuned"] for r in sel])),
                    "acc_over_osscar": float(np.mean([r["acc"] for r in sel]) / np.mean(list(ref.values()))),
                    "osscar_ahead_seeds": sum(ref[r["seed"]] > r["acc"] for r in sel),
                    "flops_ratio": float(np.mean([r["flops_ratio"] for r in sel])),
                    "flops_ratio_max": float(np.max([r["flops_ratio"] for r in sel])),
                    "params_ratio": float(np.mean([r["params_ratio"] for r in sel])), "seeds": len(sel),
                })
    meta = {**machine_info(), "torch": torch.__version__, "epochs": args.epochs, "ft_epochs": args.ft_epochs,
            "split": "1000 train / 300 calibration / 497 test (seed 0)", "total_s": time.perf_counter() - t0}
    name = "structured_cnn" if args.budget == "groups" else "structured_cnn_flops"
    save_results(f"{name}_seeds", rows, meta)
    print(save_results(name, summary, meta))


if __name__ == "__main__":
    main()
