"""torch.distributed (gloo, 2 processes on CPU) gives the same pruned model as one process."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

import combprune.torch as cpt

transformers = pytest.importorskip("transformers")


def _run_two_ranks(worker, tmp_path) -> None:
    """Run ``worker`` on two gloo ranks; a rank stuck in a collective fails the test (3 minutes)."""
    ctx = mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 180
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("a rank hung in a collective")


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


def _nan_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Rank 1's calibration batches hold inf: both ranks must raise (the check runs on the
    reduced statistics), neither may hang in a collective."""
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for method in ("layerwise", "osscar"):
            model = _model()
            before = {k: v.clone() for k, v in model.state_dict().items()}
            batches = _batches()
            if rank == 1:  # inf inputs through the embeddings: give block 0 an infinite input via inputs_embeds
                batches = [{"inputs_embeds": torch.full((4, 8, 16), float("inf"))} for _ in batches]
            try:
                cpt.prune_sequential(model, batches, method=method, sparsity=0.5, progress=False)
                outcome = "no error"
            except ValueError as exc:
                outcome = str(exc)
            same = all(torch.equal(before[k], v) for k, v in model.state_dict().items())
            torch.save({"outcome": outcome, "same": same}, os.path.join(out_dir, f"nan-{method}-rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_non_finite_statistics_on_one_rank_raise_on_every_rank(tmp_path):
    _run_two_ranks(_nan_worker, tmp_path)
    for method in ("layerwise", "osscar"):
        outs = [torch.load(tmp_path / f"nan-{method}-rank{r}.pt") for r in range(2)]
        for out in outs:
            assert out["outcome"].startswith("calibration: the inputs") and "not finite" in out["outcome"], (method, out)
            assert "of layer encoder.layer.0." in out["outcome"] and "encoder.layer.0.encoder" not in out["outcome"], out
            assert out["same"], method


def _encoder_decoder():
    """torch's own modules: an encoder stack, then a decoder stack with cross-attention."""
    torch.manual_seed(0)
    emb = torch.nn.Linear(8, 16)
    enc = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 2)
    dec = torch.nn.TransformerDecoder(torch.nn.TransformerDecoderLayer(16, 2, 32, batch_first=True, dropout=0.0), 1)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.enc, self.dec = emb, enc, dec

        def forward(self, x):
            memory = self.enc(self.emb(x))
            return self.dec(memory[:, :3], memory)

    return Model().eval()


def _native_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _encoder_decoder()
        g = torch.Generator().manual_seed(2)
        report = cpt.prune_sequential(model, [torch.randn(4, 5, 8, generator=g) for _ in range(4)], sparsity=0.5, progress=False)
        torch.save({"state": model.state_dict(), "stacks": report.info["stacks"]}, os.path.join(out_dir, f"native-rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_prune_attention_slots_and_both_stacks_like_one_process(tmp_path):
    mp.spawn(_native_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = _encoder_decoder()
    g = torch.Generator().manual_seed(2)
    cpt.prune_sequential(single, [torch.randn(4, 5, 8, generator=g) for _ in range(4)], sparsity=0.5, progress=False)
    outs = [torch.load(tmp_path / f"native-rank{r}.pt") for r in range(2)]
    assert outs[0]["stacks"] == ["enc.layers", "dec.layers"]
    attn = single.dec.layers[0].multihead_attn.in_proj_weight
    assert int((attn == 0).sum()) == attn.numel() // 2  # the cross-attention's q, k, v pruned too
    for key, value in single.state_dict().items():
        a, b = outs[0]["state"][key], outs[1]["state"][key]
        assert torch.equal(a, b), key
        assert torch.equal(a != 0, value != 0), key
        torch.testing.assert_close(a, value, rtol=1e-4, atol=1e-6)


class _Routed(torch.nn.Module):
    """A two-expert block routed by the sign of the batch's first input: a rank's batches may
    never reach one expert."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x) if bool(x[0, 0] > 0) else self.b(x)


class _Stack(torch.nn.Module):
    """Two blocks in a ModuleList, run in turn."""

    def __init__(self, block: type) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([block(), block()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _routed():
    torch.manual_seed(0)
    return _Stack(_Routed).eval()


def _routed_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for sign in (1.0, -1.0, 1.0, -1.0):  # rank 0 gets the positive batches, rank 1 the negative ones
        x = torch.randn(6, 8, generator=g)
        x[0, 0] = sign * (abs(float(x[0, 0])) + 0.1)
        out.append(x)
    return out


def _routed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _routed()
        report = cpt.prune_sequential(model, _routed_batches(), method="sparsegpt", sparsity=0.5, progress=False)
        torch.save({"state": model.state_dict(), "not_pruned": report.not_pruned}, os.path.join(out_dir, f"routed-rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_a_layer_reached_on_one_rank_only_is_pruned_like_one_process(tmp_path):
    """Ranks agree on which layers saw input before their collectives (a layer only one rank's
    batches reach used to leave the ranks' all-reduces mismatched); the result is the single
    process's."""
    _run_two_ranks(_routed_worker, tmp_path)
    single = _routed()
    report = cpt.prune_sequential(single, _routed_batches(), method="sparsegpt", sparsity=0.5, progress=False)
    outs = [torch.load(tmp_path / f"routed-rank{r}.pt") for r in range(2)]
    for out in outs:
        for key, value in single.state_dict().items():
            torch.testing.assert_close(out["state"][key], value, rtol=1e-5, atol=1e-6)
        assert out["not_pruned"] == report.not_pruned
    assert torch.equal(outs[0]["state"]["layers.0.a.weight"], outs[1]["state"]["layers.0.a.weight"])
    assert int((single.layers[0].a.weight == 0).sum()) >= 32 and int((single.layers[0].b.weight == 0).sum()) >= 32


def _mlp_routed():
    torch.manual_seed(0)

    class Expert(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.act, self.down = torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8)

        def forward(self, x):
            return self.down(self.act(self.up(x)))

    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = Expert(), Expert()

        def forward(self, x):  # b only for batches of more than 4 samples
            return self.a(x) + self.b(x) if x.shape[0] > 4 else self.a(x)

    return _Stack(Block).eval()


_ROUTED_PAIRS = [(f"layers.{i}.{e}.up", f"layers.{i}.{e}.down") for i in range(2) for e in "ab"]


def _structured_routed_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = _mlp_routed()
        try:
            # rank 0: two batches of 6; rank 1: one of 6 (b is found), then one of 3 (b is not called)
            batches = _routed_batches()
            batches[3] = batches[3][:3]
            cpt.prune_sequential(model, batches, method="osscar", sparsity=0.5, pairs=_ROUTED_PAIRS, progress=False)
            outcome = "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is the test's subject
            outcome = f"{type(exc).__name__}: {exc}"
        torch.save({"outcome": outcome, "same": all(torch.equal(v, _mlp_routed().state_dict()[k]) for k, v in model.state_dict().items())},
                   os.path.join(out_dir, f"structured-routed-rank{rank}.pt"))
    finally:
        tdist.destroy_process_group()


@pytest.mark.slow
def test_a_structured_unit_one_rank_cannot_calibrate_raises_on_every_rank(tmp_path):
    """A unit whose layer a later batch of one rank does not reach: that rank cannot calibrate
    it, and every rank raises (the other used to wait in the all-reduce forever), each model
    restored."""
    _run_two_ranks(_structured_routed_worker, tmp_path)
    outs = [torch.load(tmp_path / f"structured-routed-rank{r}.pt") for r in range(2)]
    for out in outs:
        assert out["outcome"].startswith("UnsupportedGraphError") and "not called" in out["outcome"], out
        assert out["same"]
