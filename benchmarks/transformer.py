"""Benchmark 3 (structured): FFN neurons and attention heads of a small transformer removed
physically by ``osscar`` and by ``group-magnitude``.

Model: a Hugging Face ``BertForSequenceClassification`` (random init from a ``BertConfig``),
trained briefly on a synthetic task where both attention and the FFN matter: a sequence of
noise tokens with marker tokens of C classes sprinkled in; the label is the class whose marker
occurs most often (ties impossible by construction). Pruning then hurts, and the methods can
be told apart.

For each method and each fraction (25 %, 50 %) the same fraction of the FFN neurons of every
layer *and* of the attention heads of every layer is removed
(:func:`combprune.torch.structured.prune_structured` then
:func:`combprune.torch.physical.remove_pruned`), and we report on held-out data:

* task loss (cross-entropy) and accuracy;
* reconstruction error: the sum over pruned layers of the layer-wise objective
  ``1/2 ||X (W - W_hat)||_F^2 + ridge/2 ||W - W_hat||_F^2`` (what the solvers minimise, on the
  calibration data), and the relative squared error of the last hidden states versus the dense
  model, ``||h - h_dense||^2 / ||h_dense||^2`` on held-out data;
* parameter count of the physically smaller model (all parameters, embeddings included, and
  encoder-only);
* measured CPU inference time of the physically smaller model as a speed-up ratio against the
  dense model timed in the same run (best of ``--repeat`` forward passes on a fixed batch,
  ``torch.set_num_threads(--threads)``).

    .venv/bin/python benchmarks/transformer.py            # full (a few minutes of CPU)
    .venv/bin/python benchmarks/transformer.py --quick    # smaller model, fewer steps
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import machine_info, save_results, timeit  # noqa: E402

from combprune.torch.physical import remove_pruned  # noqa: E402
from combprune.torch.structured import prune_structured  # noqa: E402


def make_data(n: int, seq_len: int, vocab: int, n_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, seq_len) with [CLS]=1 first, markers 2..2+C-1, noise tokens above; labels."""
    noise_low = 2 + n_classes
    ids = torch.randint(noise_low, vocab, (n, seq_len), generator=gen)
    ids[:, 0] = 1
    labels = torch.empty(n, dtype=torch.long)
    slots = seq_len - 1
    for i in range(n):
        counts = torch.randint(0, max(2, slots // (2 * n_classes)), (n_classes,), generator=gen)
        winner = int(torch.randint(0, n_classes, (1,), generator=gen))
        counts[winner] = int(counts.max()) + 1 + int(torch.randint(0, 2, (1,), generator=gen))
        pos = torch.randperm(slots, generator=gen)[: int(counts.sum())] + 1
        markers = torch.repeat_interleave(torch.arange(n_classes) + 2, counts)
        ids[i, pos] = markers
        labels[i] = winner
    return ids, labels


def make_count_data(n: int, seq_len: int, vocab: int, n_classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (n, seq_len) with [CLS]=1 first and tokens 2..vocab-1 after it; the label of
    each token is how often it occurs in its sequence (1, 2, ..., >= n_classes), minus one;
    the [CLS] position is ignored (-100). Needs attention (comparing tokens) and the FFN
    (turning a match count into a class); a small model does not solve it exactly."""
    ids = torch.randint(2, vocab, (n, seq_len), generator=gen)
    ids[:, 0] = 1
    same = ids[:, :, None] == ids[:, None, :]
    labels = same.sum(-1).clamp(max=n_classes) - 1
    labels[:, 0] = -100
    return ids, labels


def build_model(args: argparse.Namespace):
    from transformers import BertConfig, BertForSequenceClassification, BertForTokenClassification

    torch.manual_seed(args.seed)
    cfg = BertConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.ffn, max_position_embeddings=args.seq_len, num_labels=args.classes,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return (BertForTokenClassification if args.task == "count" else BertForSequenceClassification)(cfg)


def train(model, ids, labels, args: argparse.Namespace) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(args.seed + 1)
    model.train()
    losses = []
    for step in range(args.steps):
        idx = torch.randint(0, ids.shape[0], (args.batch,), generator=gen)
        out = model(input_ids=ids[idx], labels=labels[idx])
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(out.loss.detach()))
        if (step + 1) % max(1, args.steps // 5) == 0:
            print(f"  step {step + 1}/{args.steps}: loss {np.mean(losses[-20:]):.4f}", flush=True)
    return losses


@torch.no_grad()
def evaluate(model, ids, labels, chunk: int = 256) -> tuple[float, float, torch.Tensor]:
    model.eval()
    loss, correct, hidden = 0.0, 0, []
    for s in range(0, ids.shape[0], chunk):
        out = model(input_ids=ids[s : s + chunk], output_hidden_states=True)
        y = labels[s : s + chunk].reshape(-1)
        logits = out.logits.reshape(y.shape[0], -1)
        keep = y != -100
        loss += float(F.cross_entropy(logits[keep], y[keep], reduction="sum"))
        correct += int((logits[keep].argmax(-1) == y[keep]).sum())
        hidden.append(out.hidden_states[-1])
    n = int((labels != -100).sum())
    return loss / n, correct / n, torch.cat(hidden)


def n_params(model) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    encoder = sum(p.numel() for p in model.bert.encoder.parameters())
    return total, encoder


@torch.no_grad()
def paired_times(dense, pruned, ids, repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` forward times of the two models, measured alternately (so that a
    change of machine load hits both) after two warm-up calls each."""
    dense.eval()
    pruned.eval()
    best_d, best_p = float("inf"), float("inf")
    for _ in range(repeat):
        best_d = min(best_d, timeit(lambda: dense(input_ids=ids), repeat=1, warmup=0 if best_d < float("inf") else 2)[0])
        best_p = min(best_p, timeit(lambda: pruned(input_ids=ids), repeat=1, warmup=0 if best_p < float("inf") else 2)[0])
    return best_d, best_p


#: benchmark rows: (label, registered solver, solver options)
METHODS = {
    "osscar": ("osscar", {}),
    "group-magnitude": ("group-magnitude", {}),
    "group-magnitude (no refit)": ("group-magnitude", {"refit": False}),
}


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller model and fewer training steps")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--ffn", type=int, default=512)
    parser.add_argument("--seq-len", type=int, default=32)
    parser.add_argument("--task", choices=["count", "majority"], default="count",
                        help="count: per-token class = occurrences of the token in its sequence; majority: sequence class = most frequent marker")
    parser.add_argument("--vocab", type=int, default=14)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--n-train", type=int, default=4096)
    parser.add_argument("--n-test", type=int, default=1024)
    parser.add_argument("--n-calib", type=int, default=256, help="calibration sequences (each gives seq-len rows of X)")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--time-limit", type=float, default=None, help="solver time limit per layer (seconds)")
    parser.add_argument("--cache", default=None, help="state-dict file of the trained dense model (loaded if it exists, written otherwise)")
    parser.add_argument("--time-batch", type=int, default=256, help="sequences per timed forward pass")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the timings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="transformer", help="results/<name>.json|md")
    args = parser.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.ffn, args.steps = 2, 64, 4, 256, 150
        args.n_train, args.n_test, args.n_calib, args.time_batch, args.repeat = 2048, 512, 128, 128, 5
        if args.name == "transformer":
            args.name = "transformer_quick"

    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    data = make_count_data if args.task == "count" else make_data
    train_ids, train_y = data(args.n_train, args.seq_len, args.vocab, args.classes, gen)
    test_ids, test_y = data(args.n_test, args.seq_len, args.vocab, args.classes, gen)
    model = build_model(args)
    print(f"training {args.layers}-layer BERT (hidden {args.hidden}, {args.heads} heads, FFN {args.ffn}) for {args.steps} steps", flush=True)
    t0 = time.perf_counter()
    if args.cache and os.path.exists(args.cache):
        model.load_state_dict(torch.load(args.cache))
        print(f"  loaded the trained model from {args.cache}")
    else:
        train(model, train_ids, train_y, args)
        if args.cache:
            torch.save(model.state_dict(), args.cache)
    train_s = time.perf_counter() - t0
    model.eval()
    calib = [{"input_ids": train_ids[s : s + 64]} for s in range(0, args.n_calib, 64)]
    time_ids = test_ids[: args.time_batch]

    threads = torch.get_num_threads()
    dense_loss, dense_acc, dense_hidden = evaluate(model, test_ids, test_y)
    dense_total, dense_enc = n_params(model)
    torch.set_num_threads(args.threads)
    dense_time = paired_times(model, model, time_ids, 2)[0]
    torch.set_num_threads(threads)
    rows = [{
        "method": "dense", "fraction removed": 0.0, "heads kept/layer": args.heads, "FFN kept/layer": args.ffn,
        "test loss": dense_loss, "test acc": dense_acc, "layer obj (sum)": 0.0, "hidden rel. err": 0.0,
        "params": dense_total, "encoder params": dense_enc, "param ratio": 1.0,
        "infer ms": 1e3 * dense_time, "speed-up": 1.0, "prune s": 0.0,
    }]
    print(f"dense: loss {dense_loss:.4f} acc {dense_acc:.4f} params {dense_total:,} infer {1e3 * dense_time:.1f} ms", flush=True)
    for frac in args.fractions:
        for method in args.methods:
            solver, options = METHODS[method]
            options = dict(options, time_limit=args.time_limit)
            pruned = copy.deepcopy(model)
            t0 = time.perf_counter()
            reports, plan = prune_structured(
                pruned, calib, method=solver, sparsity=frac, n_samples=args.n_calib, solver_options=options, progress=False
            )
            remove_pruned(pruned, plan)
            prune_s = time.perf_counter() - t0
            loss, acc, hidden = evaluate(pruned, test_ids, test_y)
            rel = float(((hidden - dense_hidden) ** 2).sum() / (dense_hidden**2).sum())
            obj = float(sum(r.objective for r in reports if r.objective is not None))
            total, enc = n_params(pruned)
            torch.set_num_threads(args.threads)
            t_dense, t_small = paired_times(model, pruned, time_ids, args.repeat)
            torch.set_num_threads(threads)
            layer0 = pruned.bert.encoder.layer[0]
            row = {
                "method": method, "fraction removed": frac,
                "heads kept/layer": layer0.attention.self.num_attention_heads,
                "FFN kept/layer": layer0.intermediate.dense.out_features,
                "test loss": loss, "test acc": acc, "layer obj (sum)": obj, "hidden rel. err": rel,
                "params": total, "encoder params": enc, "param ratio": total / dense_total,
                "infer ms": 1e3 * t_small, "speed-up": t_dense / t_small, "prune s": prune_s,
            }
            rows.append(row)
            print(
                f"{method:>26} {frac:.2f}: loss {loss:.4f} acc {acc:.4f} obj {obj:.4g} rel {rel:.3g} "
                f"params {total:,} speed-up {row['speed-up']:.2f}x (prune {prune_s:.1f} s)",
                flush=True,
            )
    meta = {
        "model": f"{type(model).__name__}, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, FFN {args.ffn}, seq {args.seq_len}",
        "task": (
            f"per token: occurrences of the token in its sequence (1..{args.classes}+), vocabulary {args.vocab - 2}"
            if args.task == "count" else f"majority marker among {args.classes} classes"
        ) + f" (synthetic), {args.n_train} train / {args.n_test} test sequences; loss and accuracy on the test set",
        "training": f"{args.steps} AdamW steps, batch {args.batch}, {train_s:.1f} s",
        "calibration": f"{args.n_calib} training sequences ({args.n_calib * args.seq_len} token rows per layer)",
        "pruning": "same fraction of FFN neurons and of attention heads removed in every layer, then physical removal",
        "ridge": "OSSCAR default 1e-2 * mean(diag(X^T X)) per layer",
        "timing": f"best of {args.repeat} forward passes on {args.time_batch} sequences, torch threads = {args.threads}; "
        "speed-up = dense time / pruned time, dense and pruned models timed alternately in the same run "
        "(the dense row's infer ms is from a separate short measurement)",
        "methods": "osscar and group-magnitude both refit the kept weights exactly (W_S = K_SS^-1 G_S); "
        "'no refit' keeps the largest-norm groups with their dense weights (plain structured magnitude pruning)",
        "hidden rel. err": "||h_L - h_L,dense||^2 / ||h_L,dense||^2 of the last hidden states on the test set",
        "layer obj (sum)": "sum over pruned layers of 1/2||X(W - W_hat)||^2 + ridge/2||W - W_hat||^2 (calibration data)",
        "torch": torch.__version__,
        "total_s": round(time.perf_counter() - t_start, 1),
        **machine_info(),
    }
    md = save_results(args.name, rows, meta)
    print(md)
    return md


if __name__ == "__main__":
    main()
