"""Greedy decoding through Hugging Face ``generate(inputs_embeds=...)``, exactly as NeMo's ``SALM.generate``.

The generation config is built here, not taken from the LLM: greedy, eos = ``<|im_end|>`` only, pad = 151643.
Qwen3's own sampling ``generation_config.json`` is deliberately not used (NeMo does not use it either).
Rows are trimmed after the first eos, which NeMo leaves padded.

Chunked prefill (a departure from NeMo, for memory): a batch whose prompt holds more than
``GreedyOptions.prefill_tokens`` rows x positions (default: :func:`prefill_budget` of the inputs' device) is
prefilled here in slices of positions, the KV cache passed from slice to slice, and ``generate`` continues from
that cache. The attention scores and MLP activations of a
prefill grow with rows x positions (x positions for the scores), so a batch of eight 40 s windows would
otherwise need eight times the transient memory of one 40 s clip. Inputs within the budget (one 40 s clip:
~520 positions) take NeMo's path unchanged; chunked results equal it up to float rounding. The budget depends on
the device (:func:`prefill_budget`): on a GPU a batch of 128 clips prefills in one forward, as in NeMo, since
slicing it would only add kernel launches while its transient memory is small next to the card's.

Compiled decoding (``greedy(..., caches=CachePool())``, CUDA only): ``generate`` gets a ``StaticCache`` and
then runs every decoding step through ``torch.compile`` (inductor, "reduce-overhead": CUDA graphs), which transformers
does by itself for a static cache on a GPU. On a GPU a small batch's step is bound by launching ~1000 small
kernels from Python, not by the card; a CUDA graph replays them in one launch. Every distinct cache shape
compiles once, so one cache per row count is kept in a :class:`CachePool` that the model owns (its length: a
multiple of :data:`STATIC_CACHE_STEP`) and reset between calls; a shorter input reuses the longer cache, and a
longer one replaces it; ``CachePool.clear()`` frees them all. A transcription run with one batch size meets few
shapes, and the GPU holds one cache per row count (64 rows x 1024 positions of Qwen3-1.7B in bf16: 7.5 GB), not
one per length. Same greedy algorithm;
ids can differ from eager bf16 where bf16 rounding differs between fused and unfused kernels.

The KV cache is passed as ``cache=`` where the installed transformers names it so (5.24 renamed
``past_key_values`` and warns on the old name, a FutureWarning per long file); :func:`cache_kwarg` reads the
name off the model's ``forward`` signature, so older releases in the supported range get ``past_key_values``.

Streaming: ``greedy(..., streamer=...)`` hands transformers' ``generate`` a streamer (``put(ids)`` per new token,
``end()``), e.g. ``transformers.TextStreamer`` printing an answer as it is decoded (one row only).

Multimodal backbones (Qwen2-VL, :mod:`nemo_lite.vision`): ``model_inputs`` carries the expanded ``input_ids``
and the image tensors beside ``inputs_embeds``, so the model computes its own M-RoPE positions; such a batch is
prefilled in one forward (the chunked prefill above passes 1-D positions) and decodes eagerly.
"""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import torch

from .llm import base_causal_lm
from .runtime import prefill_budget

if TYPE_CHECKING:  # transformers is imported on first use: `from nemo_lite import CanaryQwen` stays fast
    from transformers import GenerationConfig, StaticCache


STATIC_CACHE_STEP = 256  # static cache lengths: multiples of this (few shapes, few compilations)


@dataclass(frozen=True)
class GreedyOptions:
    max_new_tokens: int = 128  # new tokens per row at most
    eos_id: int = 151645  # <|im_end|>: a row ends after it
    pad_id: int = 151643  # <|endoftext|>: fills finished rows
    prefill_tokens: int | None = None  # rows x positions per prefill forward, above it slices; None: device's


class CachePool:
    """Static KV caches for compiled decoding, one per row count, owned by the model that decodes with them.

    The same tensors (addresses) are handed out call after call, so a compiled step and its CUDA graphs are
    reused. :meth:`clear` frees them (64 rows x 1024 positions of Qwen3-1.7B in bf16 are 7.5 GB of GPU memory).
    One decoding runs at a time per pool (a lock makes concurrent callers wait: they would share the tensors).
    """

    def __init__(self) -> None:
        self.caches: dict[int, tuple[int, StaticCache]] = {}  # rows -> (length, cache)
        self.lock = threading.Lock()  # held by greedy() for a whole decoding that uses a pooled cache

    def get(self, llm, rows: int, length: int) -> StaticCache:
        """A reset cache for ``rows`` x at least ``length`` positions: reused when long enough, else replaced."""
        from transformers import StaticCache

        if rows in self.caches and self.caches[rows][0] >= length:
            self.caches[rows][1].reset()
            return self.caches[rows][1]
        self.caches.pop(rows, None)  # too short: freed before the longer one is allocated
        size = -(-length // STATIC_CACHE_STEP) * STATIC_CACHE_STEP
        self.caches[rows] = (size, StaticCache(config=base_causal_lm(llm).config, max_cache_len=size))
        return self.caches[rows][1]

    def clear(self) -> None:
        """Drop every cache (their memory is freed once no decoding holds them)."""
        with self.lock:
            self.caches.clear()


@cache
def _forward_takes_cache(cls: type) -> bool:
    return "cache" in inspect.signature(cls.forward).parameters


def cache_kwarg(llm) -> str:
    """The keyword this transformers release takes a KV cache under: ``cache`` (5.24 on) or ``past_key_values``."""
    return "cache" if _forward_takes_cache(type(base_causal_lm(llm))) else "past_key_values"


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
    key = cache_kwarg(llm)
    for start in range(0, embeds.shape[1], chunk):
        end = min(start + chunk, embeds.shape[1])
        llm(inputs_embeds=embeds[:, start:end], attention_mask=mask[:, :end].long() if padded else None,
            position_ids=positions[:, start:end], use_cache=True, logits_to_keep=1, **{key: cache})
    return cache


def greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, opts: GreedyOptions,
           caches: CachePool | None = None, model_inputs: dict[str, torch.Tensor] | None = None,
           streamer=None) -> list[list[int]]:
    """embeds (B, L, H) left-padded + mask (B, L) -> new ids per row.

    ``caches``: compiled decoding (CUDA): take a static KV cache from this pool (see the module docstring);
    None: a fresh dynamic cache per call (eager decoding). ``model_inputs``: a multimodal backbone's extra
    inputs (``input_ids`` (B, L) and image tensors; see the module docstring). ``streamer``: a transformers
    streamer given each new token as it is decoded (a batch of one row).
    """
    if opts.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {opts.max_new_tokens}")
    if streamer is not None and mask.shape[0] != 1:
        raise ValueError(f"a streamer follows one row; this batch has {mask.shape[0]}")
    if model_inputs is not None:
        extra = {**model_inputs, **({"streamer": streamer} if streamer is not None else {})}
        out = llm.generate(inputs_embeds=embeds, attention_mask=mask.long(), generation_config=generation_config(opts),
                           **extra)
        new = out[:, model_inputs["input_ids"].shape[1]:]  # (B, new): generate returns the prompt ids too
        return [trim(row, opts.eos_id) for row in new.tolist()]
    if caches is None:
        return _greedy(llm, embeds, mask, opts, None, streamer)
    with caches.lock:
        cache = caches.get(llm, mask.shape[0], mask.shape[1] + opts.max_new_tokens)
        return _greedy(llm, embeds, mask, opts, cache, streamer)


def _greedy(llm, embeds: torch.Tensor, mask: torch.Tensor, opts: GreedyOptions, cache, streamer=None
            ) -> list[list[int]]:
    from transformers import DynamicCache

    batch, length = mask.shape
    budget = opts.prefill_tokens or prefill_budget(embeds.device)
    key = cache_kwarg(llm)
    kwargs = {} if cache is None else {key: cache}
    if batch * length > budget and length > 1:
        chunk = max(1, budget // batch)
        cache = cache if cache is not None else DynamicCache(config=base_causal_lm(llm).config)
        kwargs[key] = prefill(llm, embeds[:, :-1], mask[:, :-1], cache, chunk)
    if streamer is not None:
        kwargs["streamer"] = streamer
    out = llm.generate(inputs_embeds=embeds, attention_mask=mask.long(), generation_config=generation_config(opts),
                       **kwargs)
    return [trim(row, opts.eos_id) for row in out.tolist()]
