"""QLoRA for stage 2: the frozen LLM's decoder-layer linears held in 4-bit NF4 (bitsandbytes), LoRA trained on top.

The seed project loaded Qwen2-VL with ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=bfloat16)``, skipping the audio encoder and projector.
Here the same: each ``nn.Linear`` inside the text model's decoder layers becomes a ``bnb.nn.Linear4bit`` (NF4,
double quantization); the embedding, output head, vision tower, Whisper encoder and projector keep their dtype.
peft then wraps the 4-bit linears with LoRA as usual.

bitsandbytes is an optional extra (``pip install 'nemo-lite[qlora]'``). :func:`nf4_problem` is asked before any
model is built: without bitsandbytes, or on a CPU with a bitsandbytes that has no CPU 4-bit kernels, training
stops at once with the reason.
"""

from __future__ import annotations

import re

import torch
from torch import nn

CPU_NF4_SINCE = (0, 50)  # bitsandbytes 0.50.2 quantizes and runs NF4 on CPU (checked); older ones are not trusted
DECODER_LINEAR = re.compile(r"(^|\.)layers\.\d+\.(self_attn|mlp)\.\w+$")  # text decoder layers only, not visual.blocks


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def nf4_problem(device: torch.device) -> str | None:
    """Why NF4 cannot run on ``device`` here (None: it can)."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return "quantize_base='nf4' needs bitsandbytes: pip install 'nemo-lite[qlora]'"
    if device.type == "cuda":
        return None
    if _version(bnb.__version__) < CPU_NF4_SINCE:
        return (f"quantize_base='nf4' on {device.type}: bitsandbytes {bnb.__version__} has no CPU 4-bit support "
                f"(CUDA, or bitsandbytes >= {'.'.join(map(str, CPU_NF4_SINCE))} on CPU)")
    return None


def quantize_nf4(llm: nn.Module, compute_dtype: torch.dtype) -> int:
    """Swap the decoder layers' ``nn.Linear`` for NF4 ``Linear4bit`` in place; returns how many were swapped."""
    import bitsandbytes as bnb

    swapped = 0
    for name, module in list(llm.named_modules()):
        if not (isinstance(module, nn.Linear) and DECODER_LINEAR.search(name) and ".visual." not in f".{name}"):
            continue
        q = bnb.nn.Linear4bit(module.in_features, module.out_features, bias=module.bias is not None,
                              compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(module.weight.data.to("cpu"), requires_grad=False, compress_statistics=True,
                                     quant_type="nf4")
        if module.bias is not None:
            q.bias = nn.Parameter(module.bias.data, requires_grad=False)
        parent, _, attr = name.rpartition(".")
        setattr(llm.get_submodule(parent), attr, q.to(module.weight.device))  # quantized on the move
        swapped += 1
    return swapped
