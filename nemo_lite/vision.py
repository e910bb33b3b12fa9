"""Qwen2-VL as the audio adapter's backbone: transformers' own ``Qwen2VLForConditionalGeneration``, vision included.

The seed project (kulsoom-abdullah/Qwen2-VL-Audio-Adapter) forked transformers 4.45 to graft Whisper onto Qwen2-VL.
Here the backbone is the stock class, unpatched; the audio never enters it as a modality it knows: the projected
Whisper frames are spliced into ``inputs_embeds`` at the ``<|audio_pad|>`` positions (:mod:`nemo_lite.injection`),
while images go through the model's own path: its image processor (``pixel_values``, ``image_grid_thw``), one
``<|image_pad|>`` expanded to ``grid_t * grid_h * grid_w / merge**2`` pads, the vision tower run by the model's
forward and scattered at those pads, and M-RoPE positions from the model's own ``get_rope_index``. For that,
:func:`multimodal_inputs` hands ``generate`` the expanded ``input_ids`` (audio pads repeated once per frame, as
the seed's processor did), the spliced ``inputs_embeds`` and ``mm_token_type_ids`` (1 on image pads, what the
processor returns): ``generate`` embeds nothing itself, and computes the 3-D positions and their rope deltas from
the ids (``Qwen2VLForConditionalGeneration._prepare_position_ids_for_generation``). Audio and text tokens get
the same position on all three axes, so an audio-only prompt runs with plain 1-D RoPE, as in the seed.

Key names: transformers 4.45 (the seed's fork, and ``save_pretrained`` of 5.x) writes ``model.layers.*``,
``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``, ``lm_head.*``; in memory 5.x names them
``model.language_model.*`` and ``model.visual.*``. :data:`VL_KEY_MAP` reads both; :func:`legacy_key` writes 4.45.

Config: ``config.json`` as 5.x writes it (text fields under ``text_config``) or as 4.45 did (the same fields at the
top level, ``rope_scaling``; the seed's fork saved that, plus its audio fields), read by transformers' own
``Qwen2VLConfig``, which accepts both. It would keep any other key as an attribute without a word, so
:func:`check_config_keys` refuses keys it does not know first.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .injection import build_inputs_embeds
from .llm import base_causal_lm, contiguous_head_input

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

VL_MODEL_TYPES = ("qwen2_vl",)  # config.json model types run as Qwen2VLForConditionalGeneration
IMAGE_PAD = "<|image_pad|>"  # Qwen2-VL's image placeholder (151655); one per image in a prompt
IMAGE_TAG = "<|vision_start|><|image_pad|><|vision_end|>"  # how Qwen2-VL's chat template writes an image
TEXT_TYPE, IMAGE_TYPE = 0, 1  # mm_token_type_ids values (the processor's: text 0, image 1, video 2)
# The seed's LoRA regex (model\.layers\.\d+\....) under 5.x module names (peft matches the full module name).
VL_LORA_TARGETS = r"model\.language_model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
# Checkpoint prefix -> in-memory prefix of Qwen2VLForConditionalGeneration (first match wins): 5.x names, then 4.45.
VL_KEY_MAP: list[tuple[str, str]] = [
    ("model.language_model.", "model.language_model."),
    ("model.visual.", "model.visual."),
    ("visual.", "model.visual."),
    ("model.", "model.language_model."),
    ("lm_head.", "lm_head."),
]
# In-memory prefix -> the 4.45 name the seed's checkpoints (and its fork) use.
LEGACY_KEY_MAP: list[tuple[str, str]] = [("model.language_model.", "model."), ("model.visual.", "visual.")]
# config.json keys transformers 4.45 wrote that 5.x's Qwen2VLConfig.to_dict() no longer holds (it reads them): the
# rope settings before rope_parameters, torch_dtype before dtype, and the hub Qwen2-VL-7B-Instruct config's
# vision_token_id and vision tower extras (in_chans, spatial_patch_size: unused by every version).
LEGACY_CONFIG_KEYS = frozenset({"rope_scaling", "rope_theta", "torch_dtype", "vision_token_id"})
LEGACY_VISION_KEYS = frozenset({"in_chans", "spatial_patch_size", "torch_dtype"})


def is_vision_config(config: PretrainedConfig | dict) -> bool:
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    return model_type in VL_MODEL_TYPES


def check_config_keys(raw: dict, name: str, extra: frozenset[str] = frozenset()) -> None:
    """Fail loudly on a Qwen2-VL ``config.json`` key nemo_lite does not understand (a quantization_config, another
    fork's field): :class:`~nemo_lite.weights.CheckpointError` naming every one. Known: what 5.x's config classes
    write (text fields in ``text_config``), the flat 4.45 layout (text fields at the top level, the seed's fork
    too), :data:`LEGACY_CONFIG_KEYS` / :data:`LEGACY_VISION_KEYS`, and ``extra`` (the caller's own fields)."""
    from transformers import Qwen2VLConfig
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig

    from .weights import CheckpointError

    common = set(Qwen2VLConfig().to_dict()) | LEGACY_CONFIG_KEYS  # 5.x writes some (tie_word_embeddings) in both
    text = set(Qwen2VLTextConfig().to_dict()) | common
    sections = [("", raw, text | extra),  # 4.45: the text fields at the top level
                ("text_config.", raw.get("text_config") or {}, text),
                ("vision_config.", raw.get("vision_config") or {}, set(Qwen2VLVisionConfig().to_dict())
                 | LEGACY_VISION_KEYS)]
    unknown = [prefix + key for prefix, section, known in sections for key in sorted(set(section) - known)]
    if unknown:
        raise CheckpointError(f"{name}: unknown key(s) {unknown}; nemo_lite does not implement them")


def has_vision(llm: torch.nn.Module) -> bool:
    """Whether the (possibly peft-wrapped) LLM is a Qwen2-VL with its vision tower."""
    return is_vision_config(base_causal_lm(llm).config)


def vl_key(key: str) -> str:
    """A Qwen2-VL checkpoint key (4.45 or 5.x name) -> the in-memory name."""
    for theirs, ours in VL_KEY_MAP:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def legacy_key(key: str) -> str:
    """An in-memory Qwen2-VL key -> its transformers-4.45 name (what the seed's fork reads and writes)."""
    for ours, theirs in LEGACY_KEY_MAP:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    return key


def build_vision_llm(config: PretrainedConfig) -> PreTrainedModel:
    """The stock ``Qwen2VLForConditionalGeneration`` for ``config``, on the meta device (filled by a strict load)."""
    from transformers import Qwen2VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2VLForConditionalGeneration._from_config(config, attn_implementation="sdpa")


def finish_vision_llm(llm: torch.nn.Module, device: torch.device) -> None:
    """After a meta-device load: re-tie a tied head, rebuild the rotary tables (text M-RoPE and the vision tower's
    2-D RoPE are non-persistent buffers no checkpoint stores), and give the head its dense-input hook."""
    lm = base_causal_lm(llm)
    if getattr(lm.config.get_text_config(), "tie_word_embeddings", False):
        lm.lm_head.weight = lm.get_input_embeddings().weight
    for name, module in list(lm.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)) and hasattr(module, "config"):
            parent, _, attr = name.rpartition(".")
            setattr(lm.get_submodule(parent), attr, type(module)(config=module.config).to(device))
    contiguous_head_input(llm)


def image_processor(config: PretrainedConfig, root: Path | None = None):
    """The checkpoint's Qwen2-VL image processor (``preprocessor_config.json``), else one matching its vision
    config. The PIL backend: no torchvision needed."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    if root is not None and (root / "preprocessor_config.json").is_file():
        return Qwen2VLImageProcessorPil.from_pretrained(str(root))
    v = config.vision_config
    return Qwen2VLImageProcessorPil(patch_size=v.patch_size, merge_size=v.spatial_merge_size,
                                    temporal_patch_size=v.temporal_patch_size)


ImageInput = Any  # a path, a PIL image, or an (H, W, 3) uint8 array


def load_image(image: ImageInput):
    """A path, PIL image or (H, W, 3) uint8 array -> an RGB PIL image."""
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as im:
            return im.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    raise TypeError(f"an image must be a path, a PIL image or an (H, W, 3) uint8 array, not {type(image).__name__}")


def expand(ids: torch.Tensor, tag_id: int, counts: Sequence[int]) -> torch.Tensor:
    """ids (L,) with K ``tag_id`` tokens -> each repeated ``counts[k]`` times (L - K + sum counts,)."""
    positions = (ids == tag_id).nonzero(as_tuple=True)[0].tolist()
    if len(positions) != len(counts):
        raise ValueError(f"prompt has {len(positions)} {tag_id} tag(s) but {len(counts)} input(s) were given for it")
    repeats = torch.ones_like(ids)
    repeats[positions] = torch.tensor(list(counts), dtype=ids.dtype, device=ids.device)
    return ids.repeat_interleave(repeats)


def multimodal_inputs(llm: torch.nn.Module, rows: list[torch.Tensor], audio_tag_id: int,
                      audio_embeds: list[torch.Tensor], images: list, processor, pad_id: int
                      ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Prompt id rows (one tag per audio and per image) + audio frames [(T_k, H)] + images (all in tag order)
    -> left-padded ``inputs_embeds`` (B, L, H) with the audio spliced, mask (B, L), and the keyword arguments
    Qwen2-VL's forward/generate take with them: ``input_ids`` (B, L) (audio and image pads expanded),
    ``mm_token_type_ids`` and, with images, ``pixel_values`` and ``image_grid_thw``."""
    lm = base_causal_lm(llm)
    image_id = lm.config.image_token_id
    extra: dict[str, torch.Tensor] = {}
    image_counts: list[int] = []
    if images:
        feats = processor(images=[load_image(im) for im in images], return_tensors="pt")
        grid = feats["image_grid_thw"]  # (N, 3): t, h, w in patches
        image_counts = (grid.prod(-1) // lm.config.vision_config.spatial_merge_size**2).tolist()
        device = lm.get_input_embeddings().weight.device
        extra["pixel_values"] = feats["pixel_values"].to(device)  # (patches, C * t * p * p)
        extra["image_grid_thw"] = grid.to(device)
    rows_img, ids_rows, a, k = [], [], 0, 0
    for ids in rows:
        n_img, n_aud = int((ids == image_id).sum()), int((ids == audio_tag_id).sum())
        with_images = expand(ids, image_id, image_counts[k:k + n_img])
        rows_img.append(with_images)
        ids_rows.append(expand(with_images, audio_tag_id, [len(e) for e in audio_embeds[a:a + n_aud]]))
        k, a = k + n_img, a + n_aud
    if k != len(image_counts):
        raise ValueError(f"{len(image_counts)} image(s) given but the prompts hold {k} image tag(s)")
    embeds, mask = build_inputs_embeds(rows_img, lm.get_input_embeddings(), audio_tag_id, audio_embeds)
    input_ids = torch.full(mask.shape, pad_id, dtype=torch.long, device=mask.device)  # (B, L)
    for i, ids in enumerate(ids_rows):
        input_ids[i, mask.shape[1] - len(ids):] = ids
    extra["input_ids"] = input_ids
    extra["mm_token_type_ids"] = ((input_ids == image_id) & mask).int() * IMAGE_TYPE  # (B, L)
    return embeds, mask, extra


def lora_targets(llm: torch.nn.Module, default: str) -> str:
    """The seed's LoRA regex for the LLM's module names (5.x Qwen2-VL nests the text model one level deeper)."""
    return VL_LORA_TARGETS if has_vision(llm) else default

