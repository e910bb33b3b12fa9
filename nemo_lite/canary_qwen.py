"""CanaryQwen: NeMo's SALM (Canary-Qwen-2.5B) in plain PyTorch + transformers + peft.

Wiring: audio -> :class:`~nemo_lite.projection.Perception` (mel, FastConformer, proj) -> frames spliced into the
prompt embeddings at the audio tag -> the LLM (Qwen3 + LoRA, :mod:`nemo_lite.llm`) -> greedy decoding. Everything
after the perception is the shared :class:`~nemo_lite.speechlm.SpeechLM`; this module holds the design's parts:
its perception, its ASR prompt, and its checkpoint layout (the hub repo ``nvidia/canary-qwen-2.5b``).

Reference: NeMo 3.0.0 ``nemo/collections/speechlm2/models/salm.py`` (``SALM.generate``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import prequant, speed
from .config import SALMConfig
from .llm import base_causal_lm, build_llm, finish_after_load, input_embeddings
from .memory import NarrowConv1d, NarrowLinear, cast_floats, hold_embedding_narrow, hold_narrow
from .options import LoadOptions, load_options
from .prompts import Turn, asr_prompt
from .runtime import check_device
from .speechlm import SpeechLM
from .weights import (
    WEIGHTS_FILE,
    CheckpointError,
    check_no_meta,
    file_dtypes,
    load_llm_config_and_tokenizer,
    local_artifacts,
    read_config,
    read_state_dict,
    resolve_checkpoint,
)

PREPROCESSOR_PREFIX = "perception.preprocessor."  # window + filterbank: always fp32, as NeMo uses them
ENCODER_PREFIX = "perception.encoder."
ENCODER_LAYERS_PREFIX = "perception.encoder.layers."  # the FastConformer blocks: 97 % of the encoder's weights
WINDOW_SECONDS = 40.0  # Canary-Qwen's training utterances were up to 40 s


class CanaryQwen(SpeechLM):
    """Speech-augmented LLM: FastConformer perception + Qwen3 with a switchable LoRA adapter."""

    encoder_name = "perception.encoder"
    projector_name = "perception.proj"

    def __init__(self, cfg: SALMConfig, llm_config, tokenizer, options: LoadOptions | None = None) -> None:
        super().__init__(build_llm(llm_config, cfg.lora), tokenizer, cfg.audio_locator_tag, options)
        self.cfg = cfg
        from .projection import Perception  # pulls in transformers' Parakeet: imported when a model is built

        with torch.device("meta"):
            self.perception = Perception(cfg.preprocessor, cfg.encoder, cfg.output_dim)

    # ------------------------------------------------------------------ the design's parts
    def audio_embeddings(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        lengths = torch.tensor([len(a) for a in audios], device=self.device)
        batch = torch.zeros(len(audios), int(lengths.max()), device=self.device)  # (B, N), zero-padded
        for i, a in enumerate(audios):
            batch[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
        return self.perception.embed_list(batch, lengths)

    def asr_prompt(self) -> list[Turn]:
        return asr_prompt(self.audio_tag)

    @property
    def window_seconds(self) -> float:
        return WINDOW_SECONDS

    def audio_frames(self, samples: int) -> int:
        from .audio import MIN_SAMPLES
        from .encoder import encoder_lengths

        mel = self.perception.preprocessor.frame_lengths(torch.tensor([max(samples, MIN_SAMPLES)]))
        return int(encoder_lengths(mel, self.perception.encoder.config.subsampling_factor)[0])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "nvidia/canary-qwen-2.5b",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        llm_path: str | os.PathLike | None = None,
        *,
        options: LoadOptions | str | None = None,
        **overrides: Any,
    ) -> CanaryQwen:
        """Load a checkpoint in the hub layout (``config.json`` + ``model.safetensors``), from a dir or the hub, or
        a pre-quantized directory written by ``nemo-lite quantize`` (memory-mapped, nothing to do at load; it fixes
        the quantization: :mod:`nemo_lite.prequant`).

        ``options``: a :class:`~nemo_lite.options.LoadOptions` or a preset name (``"exact"``, the default on
        CPU; ``"fast-cpu"``; ``"gpu"``); ``device``, ``dtype`` and any other LoadOptions field given as a keyword
        (``quantize``, ``merge_lora``, ``compact_encoder``, ``encoder_dtype``, ``compile``) override it.
        ``llm_path``: where the LLM config + tokenizer live when the checkpoint's ``pretrained_llm`` (e.g.
        ``Qwen/Qwen3-1.7B``) cannot be reached.

        Modes (see :mod:`nemo_lite.options` and :mod:`nemo_lite.speed`): ``dtype="bf16"`` halves weight memory (computed
        fp32 on the bf16 weights where the CPU has no native bf16: :func:`nemo_lite.runtime.compute_plan`);
        ``quantize="int8"`` (CPU) quantizes the LLM's linear layers, ``"int8-all"`` the FastConformer's too;
        ``merge_lora=True`` folds LoRA into the weights for ASR and unfolds it for LLM mode; ``compact_encoder``
        (default: on when computing fp32 from a bf16 file) holds the FastConformer layers in the file's dtype and
        widens each weight while it is used (bit-identical, 1.6 GB less at full size; inference only);
        ``encoder_dtype`` the FastConformer's own compute dtype; ``compile=True`` (CUDA) a static KV cache and
        compiled decoding steps.
        """
        opts = load_options(options, device=device, dtype=dtype, **overrides)
        if prequant.is_quantized_dir(name_or_path):  # `nemo-lite quantize` output: memory-mapped, nothing to do
            return prequant.load_quantized(cls, Path(name_or_path).expanduser(), opts, llm_path)
        if (cached := prequant.from_cache(cls, name_or_path, opts, llm_path)) is not None:  # quantized once, mapped
            return cached
        device = check_device(opts.torch_device)
        # Weights are read in the at-rest dtype where the plan has one (bf16 without native bf16 compute) and
        # widened per layer after loading (SpeechLM._hold_at_rest); encoder_dtype is then unset (LoadOptions).
        dtype = opts.load_dtype
        encoder_dtype = dtype if opts.plan.rest else opts.encoder_compute_dtype
        ckpt = resolve_checkpoint(name_or_path)
        cfg = SALMConfig.from_nemo(local_artifacts(ckpt, read_config(ckpt)))
        llm_config, tokenizer = load_llm_config_and_tokenizer(cfg.pretrained_llm, cfg.tokenizer_path, llm_path,
                                                              cfg.audio_locator_tag)
        model = cls(cfg, llm_config, tokenizer, opts)
        keys = list(model.state_dict(keep_vars=True))
        layer_keys = frozenset(k for k in keys if k.startswith(ENCODER_LAYERS_PREFIX))
        embed_key = _embed_key(model)
        stored = file_dtypes(ckpt / WEIGHTS_FILE, embed_key[: -len("embed_tokens.weight")])
        int8_encoder = opts.quantize == "int8-all"
        compact = opts.compact_encoder
        if compact is None:
            layer_dtypes = {d for k, d in stored.items() if k in layer_keys and d.is_floating_point}
            compact = (not int8_encoder and bool(layer_dtypes) and encoder_dtype.is_floating_point
                       and all(d.itemsize < encoder_dtype.itemsize for d in layer_dtypes))
        if compact:
            hold_narrow(model.perception.encoder.layers)  # before loading: the narrow tensors load into them
        # Weights kept in the file's dtype at load: those about to be quantized (one layer widened at a time, never
        # an fp32 model) and the compact encoder's; the encoder read as stored when it computes in its own dtype.
        keep = frozenset()
        if opts.quantize:
            keep |= {f"llm.{n}.weight" for n in speed.quantizable_linears(model.llm)}
            embed_dtype = stored.get(embed_key, dtype)
            if embed_dtype.is_floating_point and embed_dtype.itemsize < dtype.itemsize:
                # The tied head gets its own quantized copy, so the table is only looked up: held as stored
                # (bf16: bit-identical rows, 0.6 GB less at full size), each looked-up row widened.
                hold_embedding_narrow(base_causal_lm(model.llm), embed_dtype, dtype)
                keep |= {embed_key}
        if int8_encoder or compact or encoder_dtype != dtype:
            keep |= {k for k in keys if k.startswith(ENCODER_PREFIX)}
        model._load_weights(ckpt / WEIGHTS_FILE, dtype, device, keep_file_dtype=keep)
        if keep & {k for k in keys if k.startswith(ENCODER_PREFIX)}:
            # What the encoder computes with in its own dtype: all but the narrow-held and the to-be-quantized.
            skip = (NarrowLinear, NarrowConv1d) + ((nn.Linear,) if int8_encoder else ())
            cast_floats(model.perception.encoder, encoder_dtype, skip)
            _rebuild_encoder_positions(model.perception.encoder, device)  # its sin/cos table stays fp32
        model._apply_speed_options()
        return model

    def _load_weights(self, path, dtype: torch.dtype, device: torch.device,
                      keep_file_dtype: frozenset[str] = frozenset()) -> None:
        embed_key = _embed_key(self)
        state = read_state_dict(path, self, embed_key[: -len("embed_tokens.weight")], dtype, device,
                                keep_fp32=(PREPROCESSOR_PREFIX,), keep_file_dtype=keep_file_dtype)
        self.load_state_dict(state, strict=True, assign=True)
        self._after_load(device)

    def _after_load(self, device: torch.device) -> None:
        """What a meta-device load leaves to do: the tied head, non-persistent tables, the check nothing is empty."""
        finish_after_load(self.llm, device)
        _rebuild_encoder_positions(self.perception.encoder, device)
        check_no_meta(self)


# ---------------------------------------------------------------------- helpers
def _embed_key(model: CanaryQwen) -> str:
    embed = input_embeddings(model.llm)
    for name, module in model.named_modules():
        if module is embed:
            return name + ".weight"
    raise CheckpointError("the LLM has no input embedding")


def _rebuild_encoder_positions(encoder, device: torch.device) -> None:
    """The relative positional table's ``inv_freq`` is not in checkpoints; compute it on the real device."""
    pos = encoder.encode_positions
    encoder.encode_positions = type(pos)(encoder.config).to(device)


