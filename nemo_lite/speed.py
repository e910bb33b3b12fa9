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


def quantizable_linears(llm: nn.Module) -> list[str]:
    """Names of the LLM's ``Linear`` modules that int8 mode quantizes: all but the LoRA A/B matrices."""
    return [name for name, m in llm.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in name]


def quantize_int8(llm: nn.Module) -> nn.Module:
    """Swap each quantizable ``Linear`` for a dynamic int8 one (per-output-channel weights), one at a time.

    Weights may arrive in bf16 (the loader keeps them in the file's dtype): each is widened to fp32 only for its
    own quantization, so the peak memory is the int8 model plus one fp32 matrix, never an fp32 model.
    """
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    if torch.backends.quantized.engine == "none":
        raise RuntimeError("int8 quantization needs a CPU quantized engine (fbgemm/onednn/qnnpack)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao points users to torchao; the eager API still works here
        for name in quantizable_linears(llm):
            parent_name, _, leaf = name.rpartition(".")
            parent = llm.get_submodule(parent_name) if parent_name else llm
            mod = getattr(parent, leaf)
            fp32 = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
            fp32.weight = nn.Parameter(mod.weight.detach().float(), requires_grad=False)
            if mod.bias is not None:
                fp32.bias = nn.Parameter(mod.bias.detach().float(), requires_grad=False)
            fp32.qconfig = per_channel_dynamic_qconfig
            setattr(parent, leaf, DynamicInt8Linear.from_float(fp32))
    return llm
