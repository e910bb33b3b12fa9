"""Configuration dataclasses for Canary-Qwen (NeMo SALM), read from the checkpoint's ``config.json``.

The hub ``config.json`` is NeMo's SALM config (not a transformers config). We parse the parts inference depends
on into small dataclasses and fail loudly on anything we do not implement: an unknown key inside an inference
section, or a known option with a value other than the ones we reproduce (e.g. another attention model or
subsampling scheme). Training-only keys (dropouts, optimiser, freeze patterns) are accepted and ignored.

Reference: NeMo 3.0.0 ``speechlm2/models/salm.py``, ``asr/modules/conformer_encoder.py``,
``asr/modules/audio_preprocessing.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A checkpoint config holds a key or value that nemo_lite does not implement."""


def _check_keys(section: str, cfg: dict, known: set[str]) -> None:
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"config.json: unknown option(s) {unknown} in '{section}'; nemo_lite does not implement them")


def _require(section: str, key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(
            f"config.json: '{section}.{key}' = {value!r} is not implemented (supported: {list(allowed)})"
        )


@dataclass(frozen=True)
class PreprocessorConfig:
    """NeMo ``AudioToMelSpectrogramPreprocessor`` settings that shape the log-mel features."""

    sample_rate: int = 16000  # Hz; audio is resampled to this before the model
    features: int = 128  # number of mel bins
    n_fft: int = 512  # FFT size (frequency bins = n_fft // 2 + 1)
    win_length: int = 400  # samples in the analysis window (25 ms at 16 kHz)
    hop_length: int = 160  # samples between frames (10 ms at 16 kHz)
    preemph: float | None = 0.97  # pre-emphasis coefficient, None = off
    log_zero_guard_value: float = 2.0**-24  # added before log (NeMo's "add" guard)
    mag_power: float = 2.0  # power spectrum exponent applied to |STFT|
    pad_to: int = 0  # pad the frame axis to a multiple of this (0 = off)
    pad_value: float = 0.0  # value for frames past the valid length

    # NeMo options with the only values we implement; anything else raises in from_nemo().
    _FIXED = {
        "normalize": ("per_feature",),
        "log": (True,),
        "log_zero_guard_type": ("add",),
        "frame_splicing": (1,),
        "exact_pad": (False,),
        "nb_augmentation_prob": (0.0, 0),
        "use_torchaudio": (False,),
        "stft_exact_pad": (False,),
        "stft_conv": (False,),
    }
    # Training-only keys (dither, rng, nb_*), and keys that only shape the window and filterbank, which are read
    # from the checkpoint rather than recomputed (window, lowfreq, highfreq, mel_norm).
    _IGNORED = {"_target_", "target", "dither", "rng", "nb_max_freq", "lowfreq", "highfreq", "window", "mel_norm"}

    @classmethod
    def from_nemo(cls, cfg: dict) -> PreprocessorConfig:
        sec = "perception.preprocessor"
        known = {"sample_rate", "features", "n_fft", "window_size", "window_stride", "n_window_size",
                 "n_window_stride", "preemph", "log_zero_guard_value", "mag_power", "pad_to", "pad_value"}
        _check_keys(sec, cfg, known | set(cls._FIXED) | cls._IGNORED)
        for key, allowed in cls._FIXED.items():
            if key in cfg:
                _require(sec, key, cfg[key], allowed)
        sr = int(cfg.get("sample_rate", 16000))
        win = cfg.get("n_window_size") or int(cfg.get("window_size", 0.02) * sr)
        hop = cfg.get("n_window_stride") or int(cfg.get("window_stride", 0.01) * sr)
        n_fft = cfg.get("n_fft") or 2 ** math.ceil(math.log2(win))
        guard = cfg.get("log_zero_guard_value", 2.0**-24)
        if isinstance(guard, str):
            raise ConfigError(f"config.json: '{sec}.log_zero_guard_value' = {guard!r} is not implemented")
        # lowfreq/highfreq only shape the filterbank, which we read from the checkpoint instead of recomputing.
        return cls(
            sample_rate=sr,
            features=int(cfg.get("features", 64)),
            n_fft=int(n_fft),
            win_length=int(win),
            hop_length=int(hop),
            preemph=cfg.get("preemph", 0.97),
            log_zero_guard_value=float(guard),
            mag_power=float(cfg.get("mag_power", 2.0)),
            pad_to=int(cfg.get("pad_to", 16)),
            pad_value=float(cfg.get("pad_value", 0.0)),
        )


@dataclass(frozen=True)
class EncoderConfig:
    """FastConformer (NeMo ``ConformerEncoder``) hyper-parameters that we reproduce."""

    feat_in: int = 128  # mel bins in
    n_layers: int = 32  # conformer blocks
    d_model: int = 1024  # model width
    n_heads: int = 8  # attention heads
    ff_expansion_factor: int = 4  # feed-forward width = d_model * this
    subsampling_factor: int = 8  # time reduction of the dw_striding pre-encoder (power of 2)
    subsampling_conv_channels: int = 256  # channels of the pre-encoder convolutions
    conv_kernel_size: int = 9  # depthwise conv kernel of the convolution module
    pos_emb_max_len: int = 5000  # size of the relative positional table
    xscaling: bool = False  # multiply pre-encoder output by sqrt(d_model)
    use_bias: bool = True  # biases in linear/conv layers of the blocks

    _FIXED = {
        "feat_out": (-1,),
        "causal_downsampling": (False,),
        "subsampling": ("dw_striding",),
        "reduction": (None,),
        "reduction_position": (None,),
        "reduction_factor": (1,),
        "self_attention_model": ("rel_pos",),
        "att_context_size": (None, [-1, -1], (-1, -1)),
        "att_context_probs": (None,),
        "att_chunk_context_size": (None,),
        "att_context_style": ("regular",),
        "untie_biases": (True,),
        "conv_norm_type": ("batch_norm",),
        "conv_context_size": (None, [4, 4]),  # [4, 4] is what NeMo derives for kernel 9: symmetric padding
        "conv_context_style": ("regular",),
        "global_tokens": (0,),
    }
    _IGNORED = {"_target_", "target", "dropout", "dropout_pre_encoder", "dropout_emb", "dropout_att",
                "stochastic_depth_drop_prob", "stochastic_depth_mode", "stochastic_depth_start_layer",
                "global_tokens_spacing", "global_attn_separate", "use_pytorch_sdpa", "use_pytorch_sdpa_backends",
                "sync_max_audio_length", "subsampling_conv_chunking_factor"}

    @classmethod
    def from_nemo(cls, cfg: dict) -> EncoderConfig:
        sec = "perception.encoder"
        known = {"feat_in", "n_layers", "d_model", "n_heads", "ff_expansion_factor", "subsampling_factor",
                 "subsampling_conv_channels", "conv_kernel_size", "pos_emb_max_len", "xscaling", "use_bias"}
        _check_keys(sec, cfg, known | set(cls._FIXED) | cls._IGNORED)
        for key, allowed in cls._FIXED.items():
            if key in cfg:
                value = list(cfg[key]) if isinstance(cfg[key], tuple) else cfg[key]
                _require(sec, key, value, allowed)
        if "subsampling" not in cfg:  # NeMo's default is "striding", which we do not implement
            raise ConfigError(f"config.json: '{sec}.subsampling' missing (NeMo default 'striding' not implemented)")
        factor = int(cfg.get("subsampling_factor", 4))
        if factor < 2 or factor & (factor - 1):
            raise ConfigError(f"config.json: '{sec}.subsampling_factor' = {factor} must be a power of 2")
        channels = int(cfg.get("subsampling_conv_channels", -1))
        d_model = int(cfg["d_model"])
        return cls(
            feat_in=int(cfg["feat_in"]),
            n_layers=int(cfg["n_layers"]),
            d_model=d_model,
            n_heads=int(cfg.get("n_heads", 4)),
            ff_expansion_factor=int(cfg.get("ff_expansion_factor", 4)),
            subsampling_factor=factor,
            subsampling_conv_channels=d_model if channels == -1 else channels,
            conv_kernel_size=int(cfg.get("conv_kernel_size", 31)),
            pos_emb_max_len=int(cfg.get("pos_emb_max_len", 5000)),
            xscaling=bool(cfg.get("xscaling", True)),
            use_bias=bool(cfg.get("use_bias", True)),
        )


@dataclass(frozen=True)
class LoraSettings:
    """peft LoRA settings on the LLM (NeMo passes the dict to ``peft.LoraConfig``)."""

    r: int = 128  # rank
    lora_alpha: float = 256  # scale = lora_alpha / r
    lora_dropout: float = 0.0  # training only
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")  # HF module names inside the LLM

    @classmethod
    def from_nemo(cls, cfg: dict) -> LoraSettings:
        sec = "lora"
        _check_keys(sec, cfg, {"task_type", "r", "lora_alpha", "lora_dropout", "target_modules", "bias",
                               "use_rslora", "use_dora", "fan_in_fan_out", "modules_to_save", "init_lora_weights"})
        _require(sec, "task_type", cfg.get("task_type", "CAUSAL_LM"), ("CAUSAL_LM",))
        for key, allowed in {"bias": ("none",), "use_rslora": (False,), "use_dora": (False,),
                             "fan_in_fan_out": (False,), "modules_to_save": (None,)}.items():
            if key in cfg:
                _require(sec, key, cfg[key], allowed)
        targets = cfg.get("target_modules")
        if not targets or isinstance(targets, str):
            raise ConfigError(f"config.json: 'lora.target_modules' = {targets!r}: a list of module names is required")
        return cls(r=int(cfg["r"]), lora_alpha=float(cfg.get("lora_alpha", 8)),
                   lora_dropout=float(cfg.get("lora_dropout", 0.0)), target_modules=tuple(targets))


@dataclass(frozen=True)
class SALMConfig:
    """The whole SALM config as nemo_lite uses it."""

    pretrained_llm: str  # HF id or local dir of the LLM: its config.json and tokenizer are used
    tokenizer_path: str  # where the tokenizer comes from (NeMo: tokenizer_path or pretrained_llm)
    audio_locator_tag: str  # special token replaced by the audio frames
    prompt_format: str  # NeMo prompt formatter name
    preprocessor: PreprocessorConfig
    encoder: EncoderConfig
    output_dim: int  # LLM hidden size the projection maps to
    adapter_d_model: int  # width entering perception.proj (IdentityConnector passes the encoder's d_model)
    lora: LoraSettings | None = None
    extra: dict = field(default_factory=dict)  # the raw dict, kept for saving back

    # Top-level keys that only matter for training or for NeMo's own initialisation.
    _IGNORED = {"pretrained_asr", "pretrained_weights", "freeze_params", "prevent_freeze_params", "optimizer",
                "lr_scheduler", "trust_remote_code", "pretrained_s2s_model", "pretrained_perception_from_s2s",
                "activation_checkpointing", "torch_dtype", "trainer", "data", "exp_manager", "_target_", "target",
                "encoder_chunk_size_seconds",
                # written by NeMo's save_pretrained so transformers/vLLM can identify the repo
                "model_type", "architectures"}

    @classmethod
    def from_nemo(cls, cfg: dict) -> SALMConfig:
        known = {"pretrained_llm", "tokenizer_path", "audio_locator_tag", "prompt_format", "perception", "lora"}
        _check_keys("<top level>", cfg, known | cls._IGNORED)
        for key in ("pretrained_llm", "audio_locator_tag", "prompt_format", "perception"):
            if key not in cfg:
                raise ConfigError(f"config.json: required option '{key}' is missing")
        if cfg.get("trust_remote_code"):
            raise ConfigError("config.json: 'trust_remote_code' = True is not implemented")
        if cfg.get("encoder_chunk_size_seconds") is not None:
            raise ConfigError("config.json: 'encoder_chunk_size_seconds' (NeMo's chunked encoding) is not implemented")
        _require("", "prompt_format", cfg["prompt_format"], ("qwen",))
        per = cfg["perception"]
        _check_keys("perception", per, {"_target_", "target", "output_dim", "preprocessor", "encoder",
                                        "modality_adapter", "spec_augment"})
        adapter = per.get("modality_adapter") or {}
        target = adapter.get("_target_", adapter.get("target", ""))
        if not target.endswith("IdentityConnector"):
            raise ConfigError(f"config.json: 'perception.modality_adapter' {target!r} is not implemented "
                              "(only IdentityConnector)")
        _check_keys("perception.modality_adapter", adapter, {"_target_", "target", "d_model"})
        encoder = EncoderConfig.from_nemo(per["encoder"])
        d_model = int(adapter.get("d_model", encoder.d_model))
        if d_model != encoder.d_model:
            raise ConfigError(f"config.json: modality_adapter.d_model {d_model} != encoder.d_model {encoder.d_model}")
        return cls(
            pretrained_llm=str(cfg["pretrained_llm"]),
            tokenizer_path=str(cfg.get("tokenizer_path") or cfg["pretrained_llm"]),
            audio_locator_tag=str(cfg["audio_locator_tag"]),
            prompt_format=str(cfg["prompt_format"]),
            preprocessor=PreprocessorConfig.from_nemo(per["preprocessor"]),
            encoder=encoder,
            output_dim=int(per["output_dim"]),
            adapter_d_model=d_model,
            lora=LoraSettings.from_nemo(cfg["lora"]) if cfg.get("lora") else None,
            extra=dict(cfg),
        )
