"""Validation during training, as the seed's Trainer did it: the mean loss over a validation manifest every
``eval_every`` optimizer steps, the best (lowest-loss) trained tensors kept in ``output_dir/best/`` and put back
into the model before the final model is written (``load_best_model_at_end`` with ``metric_for_best_model="loss"``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .data import BucketBatchSampler, SpeechDataset, collate
from .loss import SpeechLoss, answer_ids

BEST_DIR = "best"


@torch.no_grad()
def eval_loss(runner: SpeechLoss, dataset: SpeechDataset, durations: list[float], batch_size: int,
              answer_kw: dict) -> float:
    """Mean of the per-batch losses over the whole validation set (eval mode: no dropout); the model's train/eval
    modes are restored afterwards."""
    model = runner.model
    modes = {m: m.training for m in model.modules()}
    model.eval()
    batches = BucketBatchSampler(durations, batch_size).batches
    losses = []
    for idx in batches:
        batch = collate([dataset[i] for i in idx])
        answers = [answer_ids(model.tokenizer, t, **answer_kw) for t in batch.texts]
        losses.append(float(runner(batch.audios, answers)) * len(idx))
    for m, mode in modes.items():
        m.train(mode)
    return sum(losses) / len(dataset)


class BestKeeper:
    """The lowest validation loss so far and its trained tensors (``output_dir/best/``)."""

    def __init__(self, output_dir: Path) -> None:
        self.dir = output_dir / BEST_DIR
        self.loss = float("inf")
        self.step: int | None = None

    def offer(self, step: int, loss: float, trainable: dict[str, nn.Parameter]) -> bool:
        if not loss < self.loss:
            return False
        self.loss, self.step = loss, step
        self.dir.mkdir(parents=True, exist_ok=True)
        state = {k: p.detach().contiguous().cpu() for k, p in trainable.items()}
        save_file(state, str(self.dir / "trainable.safetensors"))
        (self.dir / "best.json").write_text(json.dumps({"step": step, "eval_loss": loss}))
        return True

    def restore(self, trainable: dict[str, nn.Parameter]) -> None:
        """Copy the best tensors back into the model (a no-op before any evaluation)."""
        if self.step is None:
            return
        with safe_open(str(self.dir / "trainable.safetensors"), framework="pt") as f, torch.no_grad():
            for name, p in trainable.items():
                p.copy_(f.get_tensor(name))
