"""Fast inference modes: LoRA merging and weight-only int8/int4 linear layers (CPU). Exact mode (fp32) is the default.

- ``merge_lora``: fold ``(alpha/r)·B·A`` into q/v weights for ASR (no LoRA side path per token). Kept
  switchable: peft unmerges on the fly when LLM mode disables the adapter, and :func:`ensure_merged` folds it
  back for the next audio batch. Not exact: merged weights round differently from the side path.
- ``quantize="int8"``: every LLM ``Linear`` except the small LoRA A/B matrices (which stay float, so the adapter
  remains a switchable side path) becomes our :class:`~nemo_lite.quant.Int8Linear` (per-output-channel int8
  weights; torch's packed CPU kernel for decoding rows, a dequantized GEMM for prefill). The tied output head gets
  its own int8 copy; the input embedding is then only looked up, so it is held as stored (bf16 for the hub file,
  :class:`~nemo_lite.memory.NarrowEmbedding`: bit-identical rows, 0.6 GB less than the fp32 copy it was).
  It replaced ``torch.ao`` dynamic quantization, whose quantized tensors are deprecated in torch 2.13 and warned
  (muted before): on this project's AVX2 CPU the old path decoded ~1.9x faster per token, the new one is 1.7x
  fp32 at batch 1, 2.2x at batch 8, with half the per-layer error (0.9 % vs 2.0 %); docs/quant.md has the
  kernel-level figures.
- ``quantize="int4"``: the same layers as :class:`~nemo_lite.quant.Int4Linear` (group 64): 1.9x fp32 at batch 1,
  2.8x at batch 8, 9 % per-layer error on random weights (WER on a trained model: not yet measured).
- ``quantize="int8-all"``: int8 for the FastConformer's linear layers too (memory; their rows are many, so they
  run the dequantized GEMM path).
- Pre-quantized directories (``nemo-lite quantize``, :mod:`nemo_lite.prequant`): int8 or int4 written once and
  memory-mapped at load, with the embedding optionally int8 rows and the FastConformer optionally int8.
"""

from __future__ import annotations

from torch import nn


def merge_lora(llm: nn.Module) -> None:
    """Fold the LoRA adapter into its base weights (in place); peft keeps A/B so it can be unmerged."""
    from peft import PeftModel

    if isinstance(llm, PeftModel):
        llm.merge_adapter()


def ensure_merged(llm: nn.Module) -> None:
    """Re-merge after LLM mode made peft unmerge (a no-op when already merged)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if isinstance(llm, PeftModel) and any(isinstance(m, LoraLayer) and not m.merged for m in llm.modules()):
        llm.merge_adapter()


def quantizable_linears(module: nn.Module) -> list[str]:
    """Names of the ``Linear`` modules (of an LLM or an encoder) that quantization replaces: all but LoRA A/B."""
    from .quant import quantizable_linears as names

    return names(module)


def quantize(module: nn.Module, mode: str) -> nn.Module:
    """Swap each quantizable ``Linear`` of ``module`` for our weight-only :class:`~nemo_lite.quant.Int8Linear`
    (``mode="int8"``) or :class:`~nemo_lite.quant.Int4Linear` (``"int4"``, group 64), in place, layers in
    parallel threads; weights may arrive in bf16 (the loader keeps them in the file's dtype) and are widened a
    chunk at a time, so the peak is the quantized model plus a few chunks, never an fp32 model."""
    from .quant import quantize_linears

    return quantize_linears(module, mode)
