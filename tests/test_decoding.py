"""Tier 1: the decoding loop's own parts (chunked prefill, the output head's input) on the tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nemo_lite import decoding
from nemo_lite.injection import build_inputs_embeds
from nemo_lite.llm import base_causal_lm, dense_strides, input_embeddings
from nemo_lite.prompts import asr_prompt


def _batch(model, seconds: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(0)
    audios = [rng.standard_normal(int(s * 16000)).astype(np.float32) * 0.1 for s in seconds]
    rows = [model.prompt_ids(asr_prompt(model.cfg.audio_locator_tag)) for _ in audios]
    return build_inputs_embeds(rows, input_embeddings(model.llm), model.audio_tag_id, model.embed_audio(audios))


@torch.inference_mode()
def test_chunked_prefill_matches_one_forward(tiny_model):
    """Prefilling a left-padded batch in slices of positions gives the same last-position logits and KV cache
    as one forward over all positions (what generate() does within the budget)."""
    embeds, mask = _batch(tiny_model, [3.0, 1.2, 2.1])  # (3, L, H) left-padded
    lm = base_causal_lm(tiny_model.llm)
    full = tiny_model.llm(inputs_embeds=embeds, attention_mask=mask.long(),
                          position_ids=decoding.position_ids(mask), use_cache=True)
    from transformers import DynamicCache

    cache = decoding.prefill(tiny_model.llm, embeds[:, :-1], mask[:, :-1], DynamicCache(config=lm.config), chunk=7)
    last = tiny_model.llm(inputs_embeds=embeds[:, -1:], attention_mask=mask.long(),
                          position_ids=decoding.position_ids(mask)[:, -1:], use_cache=True,
                          **{decoding.cache_kwarg(tiny_model.llm): cache})
    torch.testing.assert_close(last.logits[:, -1], full.logits[:, -1], rtol=1e-5, atol=1e-5)
    for layer_full, layer_chunked in zip(full.past_key_values.layers, cache.layers, strict=True):
        valid = mask.bool()[:, None, :, None].expand_as(layer_full.keys)  # padding keys are never attended
        torch.testing.assert_close(layer_chunked.keys[valid], layer_full.keys[valid], rtol=1e-5, atol=1e-5)


def test_greedy_chunked_prefill_same_ids(tiny_model):
    """A prefill budget far below the batch (forcing slices of 5 positions) yields the unchunked greedy ids."""
    embeds, mask = _batch(tiny_model, [2.5, 0.7, 1.9, 3.1])
    plain = decoding.GreedyOptions(max_new_tokens=12, eos_id=tiny_model.eos_id, pad_id=tiny_model.pad_id,
                                   prefill_tokens=10**9)
    chunked = decoding.GreedyOptions(max_new_tokens=12, eos_id=tiny_model.eos_id, pad_id=tiny_model.pad_id,
                                     prefill_tokens=20)
    with torch.inference_mode():
        assert decoding.greedy(tiny_model.llm, embeds, mask, chunked) == \
            decoding.greedy(tiny_model.llm, embeds, mask, plain)


@pytest.mark.parametrize("seconds", [[2.0, 1.0], [1.5]])
def test_output_head_sees_dense_input(tiny_model, seconds):
    """Regression: HF feeds the head ``hidden[:, -1:, :]``, a view keeping the prompt's row stride (for one row
    too, where ``is_contiguous()`` says True); torch's CPU matmul then copies the whole (B, H, vocab) weight
    (bf16 batch 8 at Qwen3 size: 37 s and 4.6 GB per prefill; batch 1: a 0.62 GB copy)."""
    embeds, mask = _batch(tiny_model, seconds)
    seen = []
    head = base_causal_lm(tiny_model.llm).get_output_embeddings()
    handle = head.register_forward_hook(lambda m, args, out: seen.append(dense_strides(args[0])))
    try:
        opts = decoding.GreedyOptions(max_new_tokens=2, eos_id=tiny_model.eos_id, pad_id=tiny_model.pad_id)
        with torch.inference_mode():
            decoding.greedy(tiny_model.llm, embeds, mask, opts)
    finally:
        handle.remove()
    assert len(seen) == 2 and all(seen)


def test_dense_strides():
    assert dense_strides(torch.zeros(2, 3, 4)) and dense_strides(torch.zeros(1, 1, 4))
    view = torch.zeros(1, 5, 4)[:, -1:, :]  # (1, 1, 4), stride (20, 4, 1)
    assert view.is_contiguous() and not dense_strides(view)

@pytest.mark.parametrize("prefill_tokens", [10**9, 20])
def test_static_cache_same_ids(tiny_model, prefill_tokens):
    """The compile mode's static KV cache (longer than the prompt: reused between calls, or sized for the budget)
    gives the dynamic cache's greedy ids, also when the prefill runs in slices. On CPU transformers runs it
    eagerly (it compiles only on a GPU), which tests the cache plumbing itself."""
    embeds, mask = _batch(tiny_model, [2.5, 0.7, 1.9])
    opts = decoding.GreedyOptions(max_new_tokens=12, eos_id=tiny_model.eos_id, pad_id=tiny_model.pad_id,
                                  prefill_tokens=prefill_tokens)
    llm = tiny_model.llm
    pool = decoding.CachePool()
    with torch.inference_mode():
        static = decoding.greedy(llm, embeds, mask, opts, pool)
        again = decoding.greedy(llm, embeds, mask, opts, pool)
        assert list(pool.caches) == [3] and pool.caches[3][0] == decoding.STATIC_CACHE_STEP  # rows -> (length, cache)
        pool.get(llm, 3, 3 * decoding.STATIC_CACHE_STEP)  # longer; the next call reuses it
        longer = decoding.greedy(llm, embeds, mask, opts, pool)
        dynamic = decoding.greedy(llm, embeds, mask, opts)
    assert static == dynamic and all(len(row) > 0 for row in static)
    assert again == static  # the second call reuses the first one's cache, reset
    assert longer == static and pool.caches[3][0] == 3 * decoding.STATIC_CACHE_STEP  # positions past the input unused
    pool.clear()
    assert pool.caches == {}


def test_static_cache_one_per_row_count(tiny_model):
    """One cache per row count: a shorter input reuses a longer cache, a longer input replaces it."""
    llm = tiny_model.llm
    step = decoding.STATIC_CACHE_STEP
    pool = decoding.CachePool()
    first = pool.get(llm, 2, step + 1)
    assert pool.caches[2] == (2 * step, first)  # rounded up to two steps
    assert pool.get(llm, 2, 10) is first  # shorter: the same cache (same shape, no recompile)
    longer = pool.get(llm, 2, 3 * step)
    assert longer is not first and pool.caches[2] == (3 * step, longer)
    other = pool.get(llm, 5, 10)
    assert pool.caches[5] == (step, other) and sorted(pool.caches) == [2, 5]


def test_no_state_left_on_the_llm(tiny_model):
    """Regression: compiled decoding kept its caches in ``llm.__dict__`` (up to 7.5 GB of GPU memory that nothing
    could free). The pool is the model's own object now; decoding leaves no attribute on the LLM."""
    before = set(vars(tiny_model.llm))
    tiny_model.generate(prompts=[[{"role": "user", "content": "hi"}]], max_new_tokens=2)
    assert set(vars(tiny_model.llm)) == before
    assert tiny_model.caches is None  # eager mode holds no static cache
    tiny_model.release_caches()  # a no-op, never an error


@pytest.mark.parametrize(("device", "cpu"), [("cpu", True), ("cuda", False), ("mps", False)])
def test_budgets_per_device(device, cpu):
    """CPU keeps the memory-bounded budgets; an accelerator takes a batch of 128 clips in one prefill forward and
    32 windows of 40 s per encoder call."""
    from nemo_lite.runtime import ENCODER_BATCH_SAMPLES, encoder_batch_samples, prefill_budget

    dev = torch.device(device)
    assert prefill_budget(dev) == (1024 if cpu else 1 << 16)
    assert encoder_batch_samples(dev) == ENCODER_BATCH_SAMPLES * (1 if cpu else 32)
    assert prefill_budget(dev) >= (1024 if cpu else 128 * 500)  # 128 clips of ~40 s prompts fit at once


def test_compile_is_cuda_only(tiny_ckpt):
    from nemo_lite import CanaryQwen

    with pytest.raises(ValueError, match="CUDA mode"):
        CanaryQwen.from_pretrained(tiny_ckpt, compile=True)


def test_default_batch_size_per_device(tiny_model, monkeypatch):
    """Without batch_size, transcribe() decodes 8 windows a call on CPU; a GPU defaults to 64."""
    from nemo_lite.runtime import default_batch_size

    sizes: list[int] = []
    inner = tiny_model.generate_from_embeddings

    def counting(embeds, **kwargs):
        sizes.append(len(embeds))
        return inner(embeds, **kwargs)

    monkeypatch.setattr(tiny_model, "generate_from_embeddings", counting)
    rng = np.random.default_rng(1)
    clips = [rng.standard_normal(8000).astype(np.float32) * 0.1 for _ in range(10)]
    texts = tiny_model.transcribe(clips, max_new_tokens=2)
    assert sizes == [8, 2] and len(texts) == 10
    assert default_batch_size(torch.device("cuda")) == 64
