"""LLM wrapper: a Hugging Face causal LM (Qwen3 for Canary-Qwen) with a separate, switchable peft LoRA adapter.

The LoRA adapter is kept as an adapter (never merged by default) so LLM mode can switch it off, as NeMo does with
``model.llm.disable_adapter()``. Module names stay Hugging Face's inside the LLM, so peft ``target_modules`` and
saved adapters work unchanged, and checkpoint keys ``llm.base_model.model.model.layers.*`` match directly.

The LLM is built on the meta device (no random init, no memory) and filled by :mod:`nemo_lite.weights`; the
non-persistent rotary table, which no checkpoint stores, is rebuilt on the real device afterwards, and the output
head gets the one documented hook nemo_lite leaves on a model (:func:`contiguous_head_input`).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from .config import LoraSettings

if TYPE_CHECKING:  # imported lazily: peft's import alone takes ~1.5 s, and plain-LLM paths never need it
    from peft import PeftModel
    from transformers import PretrainedConfig, PreTrainedModel


def build_llm(config: PretrainedConfig, lora: LoraSettings | None) -> PreTrainedModel | PeftModel:
    """Causal LM from ``config`` on the meta device, wrapped with an (empty) LoRA adapter when ``lora`` is given."""
    from transformers import AutoModelForCausalLM

    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        if lora is not None:
            from peft import LoraConfig, get_peft_model

            peft_cfg = LoraConfig(
                task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                target_modules=list(lora.target_modules),
            )
            with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; noise for users
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(model, peft_cfg)
    return model


def is_peft(llm: nn.Module) -> bool:
    """Whether ``llm`` is peft-wrapped (without importing peft when nothing could be: it is slow to import)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(llm, peft.PeftModel)


def base_causal_lm(llm: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The plain ``*ForCausalLM`` under an optional peft wrapper."""
    return llm.get_base_model() if is_peft(llm) else llm


def finish_after_load(llm: PreTrainedModel | PeftModel, device: torch.device) -> None:
    """Re-tie the output embedding and rebuild non-persistent buffers that a meta-device load leaves empty. A head
    that is not a float ``Linear`` (a pre-quantized checkpoint's: it has its own quantized copy) is left as loaded."""
    lm = base_causal_lm(llm)
    if getattr(lm.config, "tie_word_embeddings", False) and isinstance(lm.get_output_embeddings(), nn.Linear):
        lm.lm_head.weight = lm.get_input_embeddings().weight
    inner = lm.model
    if hasattr(inner, "rotary_emb"):
        inner.rotary_emb = type(inner.rotary_emb)(config=lm.config).to(device)
    contiguous_head_input(llm)


def input_embeddings(llm: PreTrainedModel | PeftModel) -> torch.nn.Embedding:
    return base_causal_lm(llm).get_input_embeddings()


@contextlib.contextmanager
def adapter_disabled(llm: PreTrainedModel | PeftModel) -> Iterator[None]:
    """Run the plain LLM (LoRA off), as NeMo's ``model.llm.disable_adapter()``; a no-op without an adapter."""
    if is_peft(llm):
        with llm.disable_adapter():
            yield
    else:
        yield


def dense_strides(x: torch.Tensor) -> bool:
    """Whether ``x`` has the row-major strides of its shape (``is_contiguous`` ignores size-1 dims: a
    ``hidden[:, -1:, :]`` view of one row counts as contiguous while keeping the long row stride)."""
    expected, step = [], 1
    for size in reversed(x.shape):
        expected.append(step)
        step *= size
    return tuple(reversed(expected)) == x.stride()


def _dense_input(module: nn.Module, args: tuple) -> tuple:
    x = args[0]
    return args if dense_strides(x) else (x.clone(memory_format=torch.contiguous_format), *args[1:])


def contiguous_head_input(llm: PreTrainedModel | PeftModel) -> None:
    """Give the output head an input with dense strides: a forward pre-hook on the head, the one hook nemo_lite
    leaves on a model (registered at load by :func:`finish_after_load`, again after int8 swaps the head; it only
    copies a (B, 1, H) input whose strides are not dense, so outputs are unchanged).

    ``*ForCausalLM.forward`` feeds the head ``hidden[:, -1:, :]``, a (B, 1, H) view that keeps the row stride of
    the prompt. torch 2.13's CPU ``matmul`` does not fold such a view into one GEMM: it runs ``bmm`` against a
    (B, H, vocab) contiguous copy of the weight, at every prefill, even for one row. Measured with Qwen3's
    151936 x 2048 head: bf16 B=8 took 37 s and 4.6 GB instead of 0.05 s; B=1 copies the head (0.62 GB bf16,
    1.24 GB fp32) per call. Copying the (B, 1, H) input costs nothing.
    """
    head = base_causal_lm(llm).get_output_embeddings()
    if head is not None and not getattr(head, "_nemo_lite_contiguous", False):
        head.register_forward_pre_hook(_dense_input)
        head._nemo_lite_contiguous = True
