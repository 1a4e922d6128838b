"""torch.distributed (gloo, 2 processes on CPU) gives the same pruned model as one process."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import combprune.torch as cpt

transformers = pytest.importorskip("transformers")


def _model():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16)
    return transformers.BertModel(cfg).eval()


def _batches():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 50, (4, 8), generator=g)} for _ in range(4)]


METHODS = ("layerwise", "sparsegpt", "osscar")  # osscar: structured (heads, neurons)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for method in METHODS:
            model = _model()
            report = cpt.prune_sequential(model, _batches(), method=method, sparsity=0.5, progress=False)
            torch.save({"state": model.state_dict(), "ranks": [r.rank for r in report.layers],
                        "samples": report.info["calibration_samples"]}, os.path.join(out_dir, f"{method}-rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for method in METHODS:
        single = _model()
        cpt.prune_sequential(single, _batches(), method=method, sparsity=0.5, progress=False)
        outs = [torch.load(tmp_path / f"{method}-rank{r}.pt") for r in range(2)]
        if method != "osscar":
            assert outs[0]["ranks"] == [i % 2 for i in range(6)] * 2  # layers solved round-robin
        else:
            assert {r for r in outs[0]["ranks"] if r is not None} == {0, 1}  # units of a block round-robin
        assert outs[0]["samples"] == 16
        for key, value in single.state_dict().items():
            a, b = outs[0]["state"][key], outs[1]["state"][key]
            assert torch.equal(a, b), (method, key)  # every rank ends identical
            assert torch.equal(a != 0, value != 0), (method, key)  # same masks as one process
            torch.testing.assert_close(a, value, rtol=1e-4, atol=1e-6)
