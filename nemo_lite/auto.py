"""``nemo_lite.from_pretrained(path)``: the right model class for a checkpoint, detected from its files.

- a directory with ``whisper_llm.json``: a :class:`~nemo_lite.whisper_adapter.WhisperLLM` in nemo_lite's layout;
- a directory whose ``config.json`` is a Qwen2-VL config (``model_type: qwen2_vl``): the Qwen2-VL audio adapter's
  published (merged) checkpoint, also a WhisperLLM;
- a directory with ``nemo_lite_quant.json`` (``nemo-lite quantize``'s output): a pre-quantized
  :class:`~nemo_lite.canary_qwen.CanaryQwen`, memory-mapped (:mod:`nemo_lite.prequant`);
- anything else (a directory in the hub layout, or a hub id): :class:`~nemo_lite.canary_qwen.CanaryQwen`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .speechlm import SpeechLM

WHISPER_LLM_CONFIG = "whisper_llm.json"  # nemo_lite's WhisperLLM layout
MERGED_MODEL_TYPES = ("qwen2_vl",)  # config.json model types of the adapter's published checkpoint


def detect(name_or_path: str | os.PathLike) -> str:
    """``"whisper_llm"`` or ``"canary_qwen"`` for a checkpoint path or hub id (hub ids: Canary-Qwen)."""
    path = Path(name_or_path).expanduser()
    if (path / WHISPER_LLM_CONFIG).is_file():
        return "whisper_llm"
    config = path / "config.json"
    if config.is_file():
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (json.JSONDecodeError, AttributeError):
            model_type = None  # the loader reports the damaged file
        if model_type in MERGED_MODEL_TYPES:
            return "whisper_llm"
    return "canary_qwen"


def from_pretrained(name_or_path: str | os.PathLike = "nvidia/canary-qwen-2.5b", **kwargs: Any) -> SpeechLM:
    """Load either design's checkpoint; keyword arguments go to its ``from_pretrained`` (``device``, ``dtype``,
    ``options``, ``llm_path`` for Canary-Qwen, and the :class:`~nemo_lite.options.LoadOptions` fields)."""
    if detect(name_or_path) == "whisper_llm":
        from .whisper_adapter import WhisperLLM

        kwargs.pop("llm_path", None)  # the adapter's checkpoints carry their LLM
        return WhisperLLM.from_pretrained(name_or_path, **kwargs)
    from .canary_qwen import CanaryQwen

    return CanaryQwen.from_pretrained(name_or_path, **kwargs)
