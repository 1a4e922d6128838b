"""GradualPruner driven by a Hugging Face Trainer (tiny BERT built from a config, CPU)."""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

import combprune.torch as cpt  # noqa: E402
from combprune.torch.masking import get_masks, masked_parameters  # noqa: E402


class _Data(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(5, 50, (n, 8), generator=g)
        self.labels = (self.ids[:, 0] > 27).long()  # learnable from the first token

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(8, dtype=torch.long), "labels": self.labels[i]}


def test_trainer_callback_prunes_on_schedule_and_checkpoints(tmp_path):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                        max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    data = _Data(96)
    calib = [data[i] for i in range(32)]
    calib = [{k: torch.stack([c[k] for c in calib]) for k in calib[0]}]  # one dict batch; labels = targets
    pruner = cpt.GradualPruner(model, calib, method="magnitude", sparsity=0.8, start=2, end=10, every=4, progress=False, n_samples=32)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=14, per_device_train_batch_size=8, learning_rate=1e-3, save_strategy="steps", save_steps=7,
        report_to=[], use_cpu=True, disable_tqdm=True, logging_strategy="no", seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[pruner.hf_callback()])
    trainer.train()
    assert [r.position for r in pruner.history] == [6, 10]  # events at 2 (s_0 = 0, nothing), 6, 10
    p = sum(int(m.numel()) for m in get_masks(model).values())
    assert sum(int(m.sum()) for m in get_masks(model).values()) == cpt.k_from_sparsity(0.8, p)
    for name, orig, mask in masked_parameters(model):  # the Trainer's AdamW kept pruned entries at zero
        assert torch.equal(orig.detach()[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=orig.dtype)), name
    saved = torch.load(os.path.join(tmp_path, "checkpoint-7", "combprune_gradual.pt"))
    assert saved["last_event"] == 6 and saved["position"] == 7
    pruner.finalize()
    assert not list(masked_parameters(model))
