"""Greedy decoding through Hugging Face ``generate(inputs_embeds=...)``, exactly as NeMo's ``SALM.generate``.

The generation config is built here, not taken from the LLM: greedy, eos = ``<|im_end|>`` only, pad = 151643.
Qwen3's own sampling ``generation_config.json`` is deliberately not used (NeMo does not use it either).
Rows are trimmed after the first eos, which NeMo leaves padded.

Chunked prefill (a departure from NeMo, for memory): a batch whose prompt holds more than
``GreedyOptions.prefill_tokens`` rows x positions is prefilled here in slices of positions, the KV cache passed
from slice to slice, and ``generate`` continues from that cache. The attention scores and MLP activations of a
prefill grow with rows x positions (x positions for the scores), so a batch of eight 40 s windows would
otherwise need eight times the transient memory of one 40 s clip. Inputs within the budget (one 40 s clip:
~520 positions) take NeMo's path unchanged; chunked results equal it up to float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .llm import base_causal_lm, contiguous_head_input

if TYPE_CHECKING:  # transformers is imported on first use: `from nemo_lite import CanaryQwen` stays fast
    from transformers import GenerationConfig


@dataclass(frozen=True)
class GreedyOptions:
    max_new_tokens: int = 128  # new tokens per row at most
    eos_id: int = 151645  # <|im_end|>: a row ends after it
    pad_id: int = 151643  # <|endoftext|>: fills finished rows
    prefill_tokens: int = 1024  # rows x positions per prefill forward; above it the prefill runs in slices


def generation_config(opts: GreedyOptions) -> GenerationConfig:
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=opts.max_new_tokens,
        eos_token_id=opts.eos_id, pad_token_id=opts.pad_id,
    )


def trim(row: list[int], eos_id: int) -> list[int]:
    """New ids up to and including the first eos (the padding after it dropped)."""
    return row[: row.index(eos_id) + 1] if eos_id in row else row


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Left-padded mask (B, L) -> positions (B, L) counted from each row's first real token (0 on padding), as
    ``generate`` derives them."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def prefill(llm, embeds: torch.Tensor, mask: torch.Tensor, cache, chunk: int):
    """Run ``embeds`` (B, L, H) through the LLM ``chunk`` positions at a time, filling ``cache``; returns it.

    Callers pass all positions but the last, which ``generate`` then feeds itself to produce the first logits.
    """
    positions = position_ids(mask)  # (B, L)
    padded = not bool(mask.all())  # generate drops an all-ones mask; mirror it so kernels match
    for start in range(0, embeds.shape[1], chunk):
        end = min(start + chunk, embeds.shape[1])
        llm(inputs_embeds=embeds[:, start:end], attention_mask=mask[:, :end].long() if padded else None,
            position_ids=positions[:, start:end], past_key_values=cache, use_cache=True, logits_to_keep=1)
    return cache


def greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, opts: GreedyOptions) -> list[list[int]]:
    """embeds (B, L, H) left-padded + mask (B, L) -> new ids per row."""
    from transformers import DynamicCache

    if opts.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {opts.max_new_tokens}")
    contiguous_head_input(llm)  # idempotent; see its docstring (a 37 s / 4.6 GB bf16 stall at batch 8 without it)
    batch, length = mask.shape
    kwargs = {}
    if batch * length > opts.prefill_tokens and length > 1:
        chunk = max(1, opts.prefill_tokens // batch)
        cache = DynamicCache(config=base_causal_lm(llm).config)
        kwargs["past_key_values"] = prefill(llm, embeds[:, :-1], mask[:, :-1], cache, chunk)
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask.long(), generation_config=generation_config(opts),
                       **kwargs)
    return [trim(row, opts.eos_id) for row in out.tolist()]
