"""GradualPruner under torch.distributed: 2 processes, gloo backend, CPU."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from combprune.torch import GradualPruner
from combprune.torch.masking import get_masks

sklearn = pytest.importorskip("sklearn.datasets")

STEPS, BATCH = 16, 64


def _setup(world: int, rank: int):
    X, y = sklearn.load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    # each rank gets different calibration digits: identical masks can only come from the broadcast
    calib = (X[rank * 96 : (rank + 1) * 96], y[rank * 96 : (rank + 1) * 96])
    return X, y, model, calib


def _train(X, y, net, opt, pruner, world, rank):
    for step in range(STEPS):
        idx = torch.randint(0, X.shape[0], (BATCH,), generator=torch.Generator().manual_seed(step))
        part = idx.chunk(world)[rank]
        opt.zero_grad()
        nn.functional.cross_entropy(net(X[part]), y[part]).backward()
        opt.step()
        pruner.step()


def _pruner(net, calib, opt):
    return GradualPruner(net, calib, method="chita", sparsity=0.8, initial_sparsity=0.3, start=4, end=12, every=4, optimizer=opt,
                         progress=False, n_samples=96, l2=1e-2)


def _worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X, y, model, calib = _setup(world, rank)
        net = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        pruner = _pruner(net, calib, opt)
        _train(X, y, net, opt, pruner, world, rank)
        torch.save({"masks": get_masks(model), "weights": {k: v.clone() for k, v in model.state_dict().items()},
                    "history": [r.to_dict() for r in pruner.history]}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes each import torch and combprune (10-20 s)
def test_ranks_end_events_with_identical_masks_and_match_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert set(r0["masks"]) == {"0.weight", "2.weight"}
    assert all(torch.equal(r0["masks"][n], r1["masks"][n]) for n in r0["masks"])
    assert all(torch.equal(r0["weights"][k], r1["weights"][k]) for k in r0["weights"])
    assert [h["position"] for h in r0["history"]] == [h["position"] for h in r1["history"]] == [4, 8, 12]

    X, y, model, calib = _setup(1, 0)  # single process, rank 0's calibration digits, whole batches
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(X, y, model, opt, _pruner(model, calib, opt), 1, 0)
    single = get_masks(model)
    assert all(torch.equal(single[n], r0["masks"][n]) for n in single)
    for k, v in model.state_dict().items():
        assert torch.allclose(v, r0["weights"][k], atol=1e-4), k
