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
- ``quantize="int8-all"``: the same for the FastConformer's linear layers too (feed-forward, attention, position
  projections; the convolution module stays fp32). At batch 1 the encoder is most of the time of a short
  clip, and int8 linears made it 3.3x faster at full size (10 s clip, 1 thread: 2.73 -> 0.83 s), at a relative
  error of the audio embeddings of ~6 % on random weights: measure its WER before relying on it.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

QUANT_MODES = (None, "int8", "int8-all")  # int8: the LLM's linear layers; int8-all: the encoder's too


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
    """Names of the ``Linear`` modules (of an LLM or an encoder) that int8 mode quantizes: all but LoRA A/B."""
    return [name for name, m in llm.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in name]


def _int8_linear(mod: nn.Module) -> nn.Module:
    """One ``Linear`` (any float dtype) -> a dynamic int8 ``Linear`` with per-output-channel weights."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicInt8Linear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    fp32 = nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
    fp32.weight = nn.Parameter(mod.weight.detach().float(), requires_grad=False)
    if mod.bias is not None:
        fp32.bias = nn.Parameter(mod.bias.detach().float(), requires_grad=False)
    fp32.qconfig = per_channel_dynamic_qconfig
    return DynamicInt8Linear.from_float(fp32)


def quantize_int8(llm: nn.Module, workers: int | None = None) -> nn.Module:
    """Swap each quantizable ``Linear`` for a dynamic int8 one (per-output-channel weights).

    Weights may arrive in bf16 (the loader keeps them in the file's dtype): each is widened to fp32 only for its
    own quantization, so the peak memory is the int8 model plus ``workers`` fp32 matrices, never an fp32 model.
    Layers are quantized ``workers`` at a time (default: torch's thread count) in threads: the widening,
    observer, quantization and weight packing are mostly single-threaded kernels that release the GIL.
    """
    from concurrent.futures import ThreadPoolExecutor

    if torch.backends.quantized.engine == "none":
        raise RuntimeError("int8 quantization needs a CPU quantized engine (fbgemm/onednn/qnnpack)")
    names = quantizable_linears(llm)
    parents = []
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parents.append((llm.get_submodule(parent_name) if parent_name else llm, leaf))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao points users to torchao; the eager API still works here
        with ThreadPoolExecutor(max_workers=workers or max(1, torch.get_num_threads())) as pool:
            # map() yields in order; each swap frees that layer's float weight while later ones still run
            for (parent, leaf), qmod in zip(parents, pool.map(lambda pl: _int8_linear(getattr(*pl)), parents),
                                            strict=True):
                setattr(parent, leaf, qmod)
    return llm
