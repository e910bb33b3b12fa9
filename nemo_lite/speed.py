"""Fast inference modes: LoRA merging and int8 dynamic quantization (CPU). Exact mode (fp32) is the default.

Measured on this project's 2-core CPU (AVX512-VNNI/BF16), one 2048x6144x2048 MLP at batch 1 (bench/bench.py has
the whole-model figures): fp32 4.6 ms, bf16 1.6 ms, int8 dynamic 0.27 ms. Decoding one token at a time is
bound by reading the weights, so fewer bytes per weight pay off almost linearly.

- ``merge_lora``: fold ``(alpha/r)·B·A`` into q/v weights for ASR (no LoRA side path per token). Kept
  switchable: peft unmerges on the fly when LLM mode disables the adapter, and :func:`ensure_merged` folds it
  back for the next audio batch. Not exact: merged weights round differently from the side path.
- ``quantize="int8"``: ``torch.ao`` dynamic quantization with per-output-channel int8 weights (activations
  quantized per call) of every LLM ``Linear`` except the small LoRA A/B matrices, which stay in float so the
  adapter remains a switchable side path. The tied output head gets its own int8 copy; the input embedding
  stays float. CPU only (fbgemm/onednn kernels).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANT_MODES = (None, "int8")


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


def quantize_int8(llm: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the LLM's Linear layers (LoRA A/B excepted); returns the same module."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    names = {name: per_channel_dynamic_qconfig for name, m in llm.named_modules()
             if isinstance(m, nn.Linear) and ".lora_" not in name}
    if torch.backends.quantized.engine == "none":
        raise RuntimeError("int8 quantization needs a CPU quantized engine (fbgemm/onednn/qnnpack)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao points users to torchao; the eager API still works here
        return quantize_dynamic(llm, qconfig_spec=names, inplace=True)
