"""nemo_lite: NVIDIA's Canary-Qwen-2.5B (NeMo SALM) in plain PyTorch + Hugging Face, without NeMo.

Imports are lazy so ``import nemo_lite`` stays fast; torch and transformers load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "from_pretrained": "nemo_lite.auto",
    "SpeechLM": "nemo_lite.speechlm",
    "LoadOptions": "nemo_lite.options",
    "PRESETS": "nemo_lite.options",
    "CanaryQwen": "nemo_lite.canary_qwen",
    "AudioError": "nemo_lite.audio",
    "load_audio": "nemo_lite.audio",
    "CheckpointError": "nemo_lite.weights",
    "ConfigError": "nemo_lite.config",
    "SALMConfig": "nemo_lite.config",
    "Segment": "nemo_lite.transcription",
    "Transcript": "nemo_lite.transcription",
    "WhisperLLM": "nemo_lite.whisper_adapter",
    "WhisperLLMConfig": "nemo_lite.whisper_adapter",
    "TrainConfig": "nemo_lite.training.config",
    "load_train_config": "nemo_lite.training.config",
    "VadOptions": "nemo_lite.vad",
    "VoiceDetector": "nemo_lite.vad",
    "speech_regions": "nemo_lite.vad",
    "SegmentationOptions": "nemo_lite.segmentation",
    "speech_segments": "nemo_lite.segmentation",
    "Cue": "nemo_lite.subtitles",
    "subtitle_cues": "nemo_lite.subtitles",
}
__all__ = ["PRESETS", "AudioError", "CanaryQwen", "CheckpointError", "ConfigError", "Cue", "LoadOptions",
           "SALMConfig", "Segment", "SegmentationOptions", "SpeechLM", "TrainConfig", "Transcript", "VadOptions",
           "VoiceDetector", "WhisperLLM", "WhisperLLMConfig", "from_pretrained", "load_audio", "load_train_config",
           "speech_regions", "speech_segments", "subtitle_cues"]

if TYPE_CHECKING:
    from .audio import AudioError, load_audio
    from .auto import from_pretrained
    from .canary_qwen import CanaryQwen
    from .config import ConfigError, SALMConfig
    from .options import PRESETS, LoadOptions
    from .segmentation import SegmentationOptions, speech_segments
    from .speechlm import SpeechLM
    from .subtitles import Cue, subtitle_cues
    from .training.config import TrainConfig, load_train_config
    from .transcription import Segment, Transcript
    from .vad import VadOptions, VoiceDetector, speech_regions
    from .weights import CheckpointError
    from .whisper_adapter import WhisperLLM, WhisperLLMConfig


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'nemo_lite' has no attribute {name!r}")
