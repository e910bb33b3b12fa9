"""Greedy decoding through Hugging Face ``generate(inputs_embeds=...)``, exactly as NeMo's ``SALM.generate``.

The generation config is built here, not taken from the LLM: greedy, eos = ``<|im_end|>`` only, pad = 151643.
Qwen3's own sampling ``generation_config.json`` is deliberately not used (NeMo does not use it either).
Rows are trimmed after the first eos, which NeMo leaves padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig


@dataclass(frozen=True)
class GreedyOptions:
    max_new_tokens: int = 128  # new tokens per row at most
    eos_id: int = 151645  # <|im_end|>: a row ends after it
    pad_id: int = 151643  # <|endoftext|>: fills finished rows


def generation_config(opts: GreedyOptions) -> GenerationConfig:
    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=opts.max_new_tokens,
        eos_token_id=opts.eos_id, pad_token_id=opts.pad_id,
    )


def trim(row: list[int], eos_id: int) -> list[int]:
    """New ids up to and including the first eos (the padding after it dropped)."""
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, opts: GreedyOptions) -> list[list[int]]:
    """embeds (B, L, H) left-padded + mask (B, L) -> new ids per row."""
    if opts.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {opts.max_new_tokens}")
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask.long(), generation_config=generation_config(opts))
    return [trim(row, opts.eos_id) for row in out.tolist()]
