"""Teacher-forced training batches and the loss, shared by both speech LLMs (:mod:`nemo_lite.training.loop` runs them).

Loss: teacher forcing, cross-entropy on the answer tokens only (the transcript + ``<|im_end|>``); every other
position's label is -100. Rows are left-padded after the audio splice and the LLM gets explicit
``position_ids = cumsum(mask) - 1`` (clamped at 0), the positions ``generate`` uses. Logits are computed only at
the labelled positions (a 151936-word head over 1500 audio frames would dominate time and memory).

Kept apart from the loop in :mod:`nemo_lite.training.loop` so each module stays a readable size (STYLE: ~400
lines a file).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..injection import build_inputs_embeds
from ..llm import base_causal_lm, input_embeddings
from ..prompts import text_to_ids
from ..speechlm import SpeechLM

IGNORE = -100  # label of positions without loss (torch's cross_entropy ignore_index)


@dataclass
class TrainBatch:
    embeds: torch.Tensor  # (B, L, H) left-padded LLM inputs, audio spliced in
    mask: torch.Tensor  # (B, L) bool, False on padding
    positions: torch.Tensor  # (B, L) cumsum(mask) - 1, clamped at 0
    labels: torch.Tensor  # (B, L) answer ids at the answer positions, IGNORE elsewhere


def prompt_and_placeholder(model: SpeechLM) -> tuple[list[int], int]:
    """The design's ASR prompt ids (one audio tag) and the tag's id."""
    return model.prompt_ids(model.asr_prompt()).tolist(), model.audio_tag_id


def answer_ids(tokenizer, text: str, eos_id: int, leading_space: bool = False) -> list[int]:
    """The supervised answer: the transcript's tokens + ``eos_id`` (``<|im_end|>``); ``leading_space``: the seed's
    stage-2 target ``f" {text}<|im_end|>"``."""
    return text_to_ids(tokenizer, " " + text if leading_space else text) + [eos_id]


def sample_parts(model: SpeechLM, stage: int, sample_format: str) -> tuple[list[int], dict]:
    """The prompt ids every sample starts with and the :func:`answer_ids` keywords, for a config's format.

    ``"seed"`` follows the Qwen2-VL audio adapter's collators (scripts/02_train_stage1.py, 04_train_stage2.py):
    stage 1 = the audio span alone (1500 pads, no chat prompt) + ``tokenizer(text + eos_token)``; stage 2 = the ASR
    chat prompt + ``" " + text + "<|im_end|>"``. ``"prompt"``: the ASR chat prompt + text + ``<|im_end|>``."""
    if sample_format == "seed" and stage == 1:
        eos = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else model.eos_id
        return [model.audio_tag_id], {"eos_id": eos}
    return model.prompt_ids(model.asr_prompt()).tolist(), {
        "eos_id": model.eos_id, "leading_space": sample_format == "seed"}


def build_batch(embed: nn.Embedding, prompt: list[int], placeholder: int, audio: list[torch.Tensor],
                answers: list[list[int]]) -> TrainBatch:
    """Rows ``prompt + answer`` with the audio spliced at the placeholder, left-padded, with labels."""
    device = embed.weight.device
    rows = [torch.tensor(prompt + ans, device=device) for ans in answers]
    embeds, mask = build_inputs_embeds(rows, embed, placeholder, audio)  # (B, L, H), (B, L)
    labels = torch.full(mask.shape, IGNORE, dtype=torch.long, device=device)  # (B, L)
    for i, ans in enumerate(answers):
        labels[i, mask.shape[1] - len(ans):] = torch.tensor(ans, device=device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)
    return TrainBatch(embeds, mask, positions, labels)


class SpeechLoss(nn.Module):
    """Model + loss in one module, so DistributedDataParallel sees every trained parameter in its forward."""

    def __init__(self, model: SpeechLM, prompt: list[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.prompt, self.placeholder = prompt_and_placeholder(model)
        if prompt is not None:  # a sample format's own prompt (sample_parts)
            self.prompt = prompt

    def forward(self, audios: list[np.ndarray], answers: list[list[int]]) -> torch.Tensor:
        llm = self.model.llm
        batch = build_batch(input_embeddings(llm), self.prompt, self.placeholder,
                            self.model.audio_embeddings(audios), answers)
        lm = base_causal_lm(llm)
        hidden = lm.model(inputs_embeds=batch.embeds, attention_mask=batch.mask.long(), position_ids=batch.positions,
                          use_cache=False).last_hidden_state  # (B, L, H)
        targets = batch.labels[:, 1:]  # (B, L-1): position t predicts token t+1
        keep = targets != IGNORE
        logits = lm.lm_head(hidden[:, :-1][keep])  # (N, V) at labelled positions only
        return F.cross_entropy(logits.float(), targets[keep])
