"""LLM wrapper: a Hugging Face causal LM (Qwen3 for Canary-Qwen) with a separate, switchable peft LoRA adapter.

The LoRA adapter is kept as an adapter (never merged by default) so LLM mode can switch it off, as NeMo does with
``model.llm.disable_adapter()``. Module names stay Hugging Face's inside the LLM, so peft ``target_modules`` and
saved adapters work unchanged, and checkpoint keys ``llm.base_model.model.model.layers.*`` match directly.

The LLM is built on the meta device (no random init, no memory) and filled by :mod:`nemo_lite.weights`; the
non-persistent rotary table, which no checkpoint stores, is rebuilt on the real device afterwards.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PretrainedConfig, PreTrainedModel

from .config import LoraSettings


def build_llm(config: PretrainedConfig, lora: LoraSettings | None) -> PreTrainedModel | PeftModel:
    """Causal LM from ``config`` on the meta device, wrapped with an (empty) LoRA adapter when ``lora`` is given."""
    config._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
        if lora is not None:
            peft_cfg = LoraConfig(
                task_type="CAUSAL_LM", r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                target_modules=list(lora.target_modules),
            )
            with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5; noise for users
                warnings.simplefilter("ignore", FutureWarning)
                model = get_peft_model(model, peft_cfg)
    return model


def base_causal_lm(llm: PreTrainedModel | PeftModel) -> PreTrainedModel:
    """The plain ``*ForCausalLM`` under an optional peft wrapper."""
    return llm.get_base_model() if isinstance(llm, PeftModel) else llm


def finish_after_load(llm: PreTrainedModel | PeftModel, device: torch.device) -> None:
    """Re-tie the output embedding and rebuild non-persistent buffers that a meta-device load leaves empty."""
    lm = base_causal_lm(llm)
    if getattr(lm.config, "tie_word_embeddings", False):
        lm.lm_head.weight = lm.get_input_embeddings().weight
    inner = lm.model
    if hasattr(inner, "rotary_emb"):
        inner.rotary_emb = type(inner.rotary_emb)(config=lm.config).to(device)


def input_embeddings(llm: PreTrainedModel | PeftModel) -> torch.nn.Embedding:
    return base_causal_lm(llm).get_input_embeddings()


@contextlib.contextmanager
def adapter_disabled(llm: PreTrainedModel | PeftModel) -> Iterator[None]:
    """Run the plain LLM (LoRA off), as NeMo's ``model.llm.disable_adapter()``; a no-op without an adapter."""
    if isinstance(llm, PeftModel):
        with llm.disable_adapter():
            yield
    else:
        yield
