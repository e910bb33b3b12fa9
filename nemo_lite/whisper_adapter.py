"""WhisperLLM: a frozen Whisper encoder + a linear projector + a causal LM (the "Qwen2-VL audio adapter" design).

Wiring: 16 kHz audio -> Whisper log-mel, padded to 30 s (3000 frames) -> frozen ``WhisperEncoder`` (1500 frames of
``d_model``) -> ``projector`` (Linear d_model -> LLM hidden, no bias, init N(0, initializer_range)) -> the 1500
frames spliced into the prompt by :mod:`nemo_lite.injection` -> the LLM (any Qwen2/Qwen3 causal LM, optionally with
a peft LoRA adapter; :mod:`nemo_lite.llm`) -> greedy decoding through ``generate(inputs_embeds=...)``
(:mod:`nemo_lite.decoding`). Long audio is cut into 30 s windows by :mod:`nemo_lite.transcription`.

Reference: kulsoom-abdullah/Qwen2-VL-Audio-Adapter (Whisper-large-v3-turbo grafted onto Qwen2-VL-7B), its processor
and ``scripts/inference.py``. Its prompt is ``<|im_start|>user\\n<|audio_bos|>`` + 1500 x ``<|audio_pad|>`` +
``<|audio_eos|>\\n{instruction}<|im_end|>\\n<|im_start|>assistant\\n`` and the 1500 pad embeddings are replaced by
the projected encoder frames. Here the prompt holds ONE ``<|audio_pad|>`` that the injection expands to the 1500
frames: the LLM sees exactly the same sequence of vectors, and the audio cannot drop out of generation because it
is spliced into ``inputs_embeds`` before ``generate`` runs (the original needed a patched
``prepare_inputs_for_generation``). Only ``<|audio_pad|>`` is added to the tokenizer, and only when it lacks it
(the seed's graft script added it as 151657); ``<|audio_bos|>``/``<|audio_eos|>`` are NOT tokens in the seed's
tokenizer and tokenize as ordinary text pieces here too, so the prompt ids are the seed's. (Checkpoints saved by
earlier nemo_lite versions carry all three as special tokens in ``llm/``; they load and run as saved.)

Backbones: any Qwen2/Qwen3 causal LM, or a Qwen2-VL (``model_type: qwen2_vl``) run as transformers' own
``Qwen2VLForConditionalGeneration`` with its vision tower, so prompts may hold images too
(:mod:`nemo_lite.vision`: image processor, ``<|image_pad|>`` expansion, M-RoPE positions by the model itself).

Checkpoints, all loaded strictly (every tensor used, every parameter filled; meta device, ``assign=True``):
- nemo_lite's layout (:meth:`WhisperLLM.save_pretrained`): ``whisper_llm.json`` + ``whisper/`` (a Whisper
  checkpoint) + ``llm/`` (an HF causal LM + tokenizer) + ``projector.safetensors`` (+ ``adapter/``, peft's LoRA
  format). ``whisper``/``llm`` may instead name other directories or hub ids.
- a Whisper checkpoint alone: full ``WhisperForConditionalGeneration`` files (``model.encoder.*``; the decoder and
  ``proj_out`` are skipped on purpose) or ``WhisperModel``/encoder files (``encoder.*``). Without this mapping
  ``WhisperEncoder.from_pretrained`` on a full checkpoint silently loads nothing.
- the original project's merged checkpoint (``merge_and_unload`` of Qwen2-VL + audio): Qwen2-VL keys (legacy
  ``model.*``/``lm_head.*`` or ``model.language_model.*``) + ``audio_encoder.*`` + ``audio_projector.weight``; see
  :data:`nemo_lite.weights.MERGED_KEY_MAP`. Every tensor is used: the vision tower (``visual.*``) included. Its
  ``config.json`` may be 5.x's or the fork's flat 4.45 one with ``audio_hidden_size``/``use_audio_encoder``
  (:func:`check_seed_config`: unknown keys and an audio width that is not the tensors' are errors).
The key tables and the strict safetensors reader live in :mod:`nemo_lite.weights`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import LoraConfig, PeftModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from . import vision, weights
from .audio import SAMPLE_RATE
from .llm import base_causal_lm, build_llm, finish_after_load
from .memory import cast_floats
from .options import LoadOptions, load_options
from .prompts import ADAPTER_INSTRUCTION, Turn
from .runtime import check_device
from .speechlm import SpeechLM
from .weights import CheckpointError, check_no_meta, read_strict, resolve, safetensors_files, tie_head

HOP = 160  # Whisper mel hop: 10 ms at 16 kHz
CONV_STRIDE = 2  # Whisper's conv2 stride: two mel frames per encoder frame
WINDOW_SECONDS = 30  # Whisper's input: 30 s = 3000 mel frames = 1500 encoder frames (max_source_positions)
HEAD_DIM = 64  # every Whisper size has 64-wide heads (tiny 384/6 ... large 1280/20): heads = d_model // 64
AUDIO_BOS, AUDIO_PAD, AUDIO_EOS = "<|audio_bos|>", "<|audio_pad|>", "<|audio_eos|>"
INSTRUCTION = ADAPTER_INSTRUCTION  # the original project's ASR instruction
LLM_LORA_TARGETS = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"  # peft fullmatch
# config.json fields the seed's graft script added to Qwen2-VL's (audio_hidden_size = the Whisper width, 1280).
SEED_AUDIO_KEYS = frozenset({"audio_hidden_size", "use_audio_encoder"})

CONFIG_FILE = "whisper_llm.json"
PROJECTOR_FILE = "projector.safetensors"
ADAPTER_DIR = "adapter"
WHISPER_SUBDIR, LLM_SUBDIR = "whisper", "llm"
FORMAT = "nemo_lite.whisper_llm/1"


@dataclass
class WhisperLLMConfig:
    """``whisper_llm.json``: what a saved WhisperLLM directory is made of."""

    whisper: str  # Whisper checkpoint: a directory (relative paths: to the model dir) or a hub id
    llm: str  # causal LM with its tokenizer: a directory (relative: to the model dir) or a hub id
    instruction: str = INSTRUCTION  # user text after the audio in the prompt
    format: str = FORMAT  # layout version of this directory

    @classmethod
    def from_dict(cls, raw: dict) -> WhisperLLMConfig:
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise CheckpointError(f"{CONFIG_FILE}: unknown key(s) {unknown}")
        if raw.get("format", FORMAT) != FORMAT:
            raise CheckpointError(f"{CONFIG_FILE}: format {raw['format']!r} is not {FORMAT!r}")
        return cls(**raw)


# ---------------------------------------------------------------------- checkpoint files
def load_whisper_encoder(source: str | os.PathLike, dtype: torch.dtype, device: torch.device,
                         base: Path | None = None) -> WhisperEncoder:
    """The encoder of a Whisper checkpoint (full model or encoder only), loaded strictly."""
    ckpt = resolve(source, base)
    config = WhisperConfig.from_pretrained(ckpt)
    with torch.device("meta"):
        encoder = WhisperEncoder(config)
    expected = {"encoder." + k: t.shape for k, t in encoder.state_dict().items()}
    state = read_strict(safetensors_files(ckpt), expected, weights.whisper_key, dtype, device)
    encoder.load_state_dict({k[len("encoder."):]: v for k, v in state.items()}, strict=True, assign=True)
    check_no_meta(encoder)
    return encoder.eval()


def load_causal_lm(source: str | os.PathLike, dtype: torch.dtype, device: torch.device,
                   base: Path | None = None) -> tuple[PreTrainedModel, object]:
    """An HF causal LM (config.json + safetensors + tokenizer files) built on meta and loaded strictly; a Qwen2-VL
    (e.g. ``Qwen/Qwen2-VL-7B-Instruct``) as the stock ``Qwen2VLForConditionalGeneration``, vision tower included
    (4.45 or 5.x key names)."""
    ckpt = resolve(source, base)
    config = AutoConfig.from_pretrained(ckpt)
    is_vl = vision.is_vision_config(config)
    if is_vl:
        vision.check_config_keys(json.loads((ckpt / "config.json").read_text()), str(ckpt / "config.json"))
    lm = vision.build_vision_llm(config) if is_vl else build_llm(config, None)
    expected, tie = weights.expected_shapes(lm)
    key_map = vision.vl_key if is_vl else (lambda k: k)
    lm.load_state_dict(tie_head(read_strict(safetensors_files(ckpt), expected, key_map, dtype, device), tie),
                       strict=True, assign=True)
    (vision.finish_vision_llm if is_vl else finish_after_load)(lm, device)
    check_no_meta(lm)
    return lm.eval(), AutoTokenizer.from_pretrained(ckpt)


# ---------------------------------------------------------------------- the model
class WhisperLLM(SpeechLM):
    """Speech LLM: frozen Whisper encoder -> linear projector -> causal LM (+ optional LoRA)."""

    encoder_name = "encoder"
    projector_name = "projector"

    def __init__(self, encoder: WhisperEncoder, llm, tokenizer, instruction: str = INSTRUCTION,
                 options: LoadOptions | None = None, image_processor=None) -> None:
        if AUDIO_PAD not in tokenizer.get_vocab():  # the seed adds only this one (151657 in Qwen2-VL's tokenizer)
            tokenizer.add_tokens([AUDIO_PAD], special_tokens=True)
        super().__init__(llm, tokenizer, AUDIO_PAD, options)
        # Qwen2-VL backbones: the image processor (pixel_values, image_grid_thw); None for a text-only LLM.
        self.image_processor = image_processor
        self.encoder = encoder
        lm = base_causal_lm(llm)
        with torch.device("meta"):
            self.projector = nn.Linear(encoder.config.d_model, lm.config.get_text_config().hidden_size, bias=False)
        self.instruction = instruction
        cfg = encoder.config
        self.features = WhisperFeatureExtractor(
            feature_size=cfg.num_mel_bins, sampling_rate=SAMPLE_RATE, hop_length=HOP,
            chunk_length=cfg.max_source_positions * CONV_STRIDE * HOP // SAMPLE_RATE)

    # ------------------------------------------------------------------ building and loading
    @classmethod
    def from_components(cls, whisper: str | os.PathLike, llm: str | os.PathLike | PreTrainedModel,
                        tokenizer=None, instruction: str = INSTRUCTION, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, seed: int | None = None) -> WhisperLLM:
        """A new model: a Whisper checkpoint + an LLM (path/hub id, or a loaded HF model with its ``tokenizer``),
        with a fresh projector drawn from N(0, initializer_range) of the LLM (``seed``: for that draw)."""
        opts = load_options(None, device=device, dtype=dtype)
        device, dtype = check_device(opts.torch_device), opts.load_dtype
        encoder = load_whisper_encoder(whisper, dtype, device)
        processor = None
        if isinstance(llm, (str, os.PathLike)):
            root = resolve(llm)
            llm, tokenizer = load_causal_lm(root, dtype, device)
            processor = vision.image_processor(llm.config, root) if vision.has_vision(llm) else None
        elif tokenizer is None:
            raise ValueError("a loaded LLM needs its tokenizer")
        elif vision.has_vision(llm):
            processor = vision.image_processor(llm.config)
        model = cls(encoder, llm, tokenizer, instruction, opts, processor)
        std = base_causal_lm(llm).config.get_text_config().initializer_range
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        weight = torch.randn(model.projector.weight.shape, generator=gen) * std
        model.projector.weight = nn.Parameter(weight.to(device=device, dtype=dtype))
        model._fit_embeddings()
        model._apply_speed_options()
        return model

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None,
                        dtype: torch.dtype | str | None = None, *, options: LoadOptions | str | None = None,
                        **overrides: Any) -> WhisperLLM:
        """A directory saved by :meth:`save_pretrained`, or the original project's merged checkpoint.

        ``options``/``device``/``dtype``/keywords: as :meth:`CanaryQwen.from_pretrained
        <nemo_lite.canary_qwen.CanaryQwen.from_pretrained>` (``quantize``, ``merge_lora``, ``encoder_dtype``,
        ``compile``; ``compact_encoder`` is Canary-Qwen's only)."""
        opts = load_options(options, device=device, dtype=dtype, **overrides)
        if opts.compact_encoder:
            raise ValueError("compact_encoder applies to Canary-Qwen's FastConformer only")
        root = resolve(path)
        if not (root / CONFIG_FILE).is_file():
            return cls.from_merged(root, options=opts)
        device, dtype = check_device(opts.torch_device), opts.load_dtype
        cfg = WhisperLLMConfig.from_dict(json.loads((root / CONFIG_FILE).read_text()))
        encoder = load_whisper_encoder(cfg.whisper, dtype, device, base=root)
        llm_root = resolve(cfg.llm, root)
        llm, tokenizer = load_causal_lm(llm_root, dtype, device)
        processor = vision.image_processor(llm.config, llm_root) if vision.has_vision(llm) else None
        model = cls(encoder, llm, tokenizer, cfg.instruction, opts, processor)
        state = read_strict([root / PROJECTOR_FILE], {"weight": model.projector.weight.shape}, lambda k: k,
                            dtype, device)
        model.projector.load_state_dict(state, strict=True, assign=True)
        model._fit_embeddings()
        if (root / ADAPTER_DIR).is_dir():
            model.load_adapter(root / ADAPTER_DIR)
        check_no_meta(model)
        model._finish_load()
        return model

    @classmethod
    def from_merged(cls, path: str | os.PathLike, whisper_config: WhisperConfig | None = None,
                    options: LoadOptions | str | None = None, **overrides: Any) -> WhisperLLM:
        """The original project's merged Qwen2-VL + audio checkpoint (keys: ``weights.MERGED_KEY_MAP``)."""
        opts = load_options(options, **overrides)
        device, dtype = check_device(opts.torch_device), opts.load_dtype
        root = Path(path)
        files = safetensors_files(root)
        config = AutoConfig.from_pretrained(root)
        if not vision.is_vision_config(config):
            raise CheckpointError(f"{root}: config.json is a {config.model_type!r} config; a merged adapter "
                                  f"checkpoint is a Qwen2-VL ({vision.VL_MODEL_TYPES})")
        whisper_config = whisper_config or infer_whisper_config(files)
        check_seed_config(json.loads((root / "config.json").read_text()), root / "config.json", whisper_config)
        with torch.device("meta"):
            encoder = WhisperEncoder(whisper_config)
        llm = vision.build_vision_llm(config)
        model = cls(encoder, llm, AutoTokenizer.from_pretrained(root), options=opts,
                    image_processor=vision.image_processor(config, root))
        expected, tie = weights.expected_shapes(model)
        model.load_state_dict(tie_head(read_strict(files, expected, weights.merged_key, dtype, device), tie),
                              strict=True, assign=True)
        vision.finish_vision_llm(model.llm, device)
        model._fit_embeddings()
        check_no_meta(model)
        model._finish_load()
        return model

    def _finish_load(self) -> None:
        if self.options.encoder_dtype is not None:
            cast_floats(self.encoder, self.options.encoder_compute_dtype, skip=())
        self._apply_speed_options()

    def save_pretrained(self, path: str | os.PathLike, backbones: bool = True,
                        sources: tuple[str, str] | None = None) -> Path:
        """Write ``whisper_llm.json`` + ``projector.safetensors`` (+ ``adapter/``). ``backbones``: also write the
        Whisper encoder (``whisper/``) and the LLM with its tokenizer (``llm/``); otherwise ``sources`` = (whisper,
        llm) names the checkpoints the config points at."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        if backbones:
            self._save_whisper(root / WHISPER_SUBDIR)
            self._save_llm(root / LLM_SUBDIR)
            sources = (WHISPER_SUBDIR, LLM_SUBDIR)
        elif sources is None:
            raise ValueError("without backbones, pass sources=(whisper, llm) for the config to point at")
        cfg = WhisperLLMConfig(whisper=str(sources[0]), llm=str(sources[1]), instruction=self.instruction)
        (root / CONFIG_FILE).write_text(json.dumps(asdict(cfg), indent=1))
        save_file({"weight": self.projector.weight.detach().contiguous().cpu()}, str(root / PROJECTOR_FILE))
        if isinstance(self.llm, PeftModel):
            self.llm.save_pretrained(str(root / ADAPTER_DIR))
        return root

    def _save_whisper(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.encoder.config.save_pretrained(path)
        state = {"model.encoder." + k: v.detach().contiguous().cpu() for k, v in self.encoder.state_dict().items()}
        save_file(state, str(path / "model.safetensors"))

    def _save_llm(self, path: Path) -> None:
        """Base LLM weights (LoRA layers unwrapped, LoRA tensors left to ``adapter/``), config and tokenizer."""
        path.mkdir(parents=True, exist_ok=True)
        lm = base_causal_lm(self.llm)
        lm.config.save_pretrained(path)
        tied = getattr(lm.config.get_text_config(), "tie_word_embeddings", False)
        rename = vision.legacy_key if self.has_vision else (lambda k: k)  # Qwen2-VL: the 4.45 names, as the hub's
        state = {}
        for key, t in lm.state_dict().items():
            if "lora_" in key or (tied and key == "lm_head.weight"):
                continue
            state[rename(key.replace(".base_layer.", "."))] = t.detach().contiguous().cpu()
        save_file(state, str(path / "model.safetensors"))
        self.tokenizer.save_pretrained(path)
        if self.image_processor is not None:
            self.image_processor.save_pretrained(str(path))

    def _fit_embeddings(self) -> None:
        """Grow the LLM's embedding (and head) only when the added audio tokens do not fit its spare rows."""
        lm = base_causal_lm(self.llm)
        if len(self.tokenizer) > lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(self.tokenizer))

    # ------------------------------------------------------------------ LoRA
    def load_adapter(self, adapter_dir: Path) -> None:
        """A peft adapter directory (adapter_config.json + adapter_model.safetensors), loaded strictly."""
        self.add_lora(**_lora_kwargs(LoraConfig.from_pretrained(str(adapter_dir))))
        expected = {k: t.shape for k, t in self.llm.state_dict().items() if "lora_" in k}
        state = read_strict([adapter_dir / "adapter_model.safetensors"], expected, _peft_key, self.dtype, self.device)
        result = self.llm.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise CheckpointError(f"{adapter_dir}: unexpected adapter tensors {result.unexpected_keys[:5]}")

    # ------------------------------------------------------------------ the design's parts
    @property
    def new_lora_targets(self) -> str:  # type: ignore[override]
        """Stage 2's LoRA: the seed's q/k/v/o/gate/up/down regex, under this LLM's module names."""
        return vision.lora_targets(self.llm, LLM_LORA_TARGETS)

    @property
    def has_vision(self) -> bool:
        return vision.has_vision(self.llm)

    @property
    def window_samples(self) -> int:
        """Samples in one encoder window (480000 = 30 s for every released Whisper)."""
        return self.encoder.config.max_source_positions * CONV_STRIDE * HOP

    @property
    def window_seconds(self) -> float:
        return self.window_samples / SAMPLE_RATE

    def audio_frames(self, samples: int) -> int:
        return self.encoder.config.max_source_positions  # every clip is padded to the full window

    def encoder_samples(self, samples: int) -> int:
        return self.window_samples  # every clip is padded to the full window

    def asr_prompt(self) -> list[Turn]:
        """The original prompt, with ONE ``<|audio_pad|>`` that the injection expands to the encoder frames."""
        return [{"role": "user", "content": f"{AUDIO_BOS}{AUDIO_PAD}{AUDIO_EOS}\n{self.instruction}"}]

    def audio_features(self, audios: Sequence[np.ndarray]) -> torch.Tensor:
        """16 kHz arrays (each at most one window) -> log-mel (B, n_mels, 3000), zero-padded to 30 s."""
        too_long = [len(a) for a in audios if len(a) > self.window_samples]
        if too_long:
            limit = self.window_samples / SAMPLE_RATE
            raise ValueError(f"audio of {max(too_long) / SAMPLE_RATE:.1f} s exceeds the {limit:g} s window; "
                             "use transcribe(), which splits long audio")
        feats = self.features([np.asarray(a, dtype=np.float32) for a in audios], sampling_rate=SAMPLE_RATE,
                              return_tensors="pt")["input_features"]  # (B, n_mels, 3000)
        return feats.to(device=self.device, dtype=self.encoder.conv1.weight.dtype)  # the encoder's own dtype

    def audio_embeddings(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Arrays -> per-audio LLM-width frames [(1500, H)]; gradients reach whatever requires them (the encoder is
        frozen at load, so only the projector during training)."""
        states = self.encoder(self.audio_features(audios)).last_hidden_state  # (B, 1500, d_whisper)
        return list(self.projector(states.to(self.dtype)))  # B x (1500, H)


# ---------------------------------------------------------------------- helpers
def check_seed_config(raw: dict, name: Path, whisper_config: WhisperConfig) -> None:
    """The merged checkpoint's ``config.json``: Qwen2-VL's keys (either layout, :func:`vision.check_config_keys`)
    + the seed fork's audio fields, which must agree with the audio tensors; :class:`CheckpointError` otherwise."""
    vision.check_config_keys(raw, str(name), extra=SEED_AUDIO_KEYS)
    if raw.get("use_audio_encoder") is False:
        raise CheckpointError(f"{name}: use_audio_encoder is false: the seed's fork built no audio encoder")
    width = raw.get("audio_hidden_size")
    if width is not None and width != whisper_config.d_model:
        raise CheckpointError(f"{name}: audio_hidden_size {width} but the audio_encoder tensors are "
                              f"{whisper_config.d_model} wide")


def infer_whisper_config(files: list[Path], prefix: str = "audio_encoder.") -> WhisperConfig:
    """Encoder hyper-parameters from tensor shapes (heads: d_model // 64, as in every Whisper size)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            shapes.update({k[len(prefix):]: tuple(f.get_slice(k).get_shape()) for k in f.keys()
                           if k.startswith(prefix)})
    if "conv1.weight" not in shapes:
        raise CheckpointError(f"no {prefix}conv1.weight: not a merged Whisper + LLM checkpoint")
    d_model, n_mels, _ = shapes["conv1.weight"]
    layers = {int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))}
    return WhisperConfig(d_model=d_model, num_mel_bins=n_mels, encoder_layers=len(layers),
                         encoder_attention_heads=max(1, d_model // HEAD_DIM),
                         encoder_ffn_dim=shapes["layers.0.fc1.weight"][0],
                         max_source_positions=shapes["embed_positions.weight"][0])


def _lora_kwargs(cfg: LoraConfig) -> dict:
    targets = cfg.target_modules
    if not isinstance(targets, str):
        targets = sorted(targets)
    return {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout, "target_modules": targets}


def _peft_key(key: str) -> str:
    """peft's saved adapter key (adapter name dropped) -> its in-memory key (adapter ``default``)."""
    return re.sub(r"\.(lora_[AB])\.weight$", r".\1.default.weight", key)
