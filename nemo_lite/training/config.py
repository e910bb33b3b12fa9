"""Training configuration: :class:`TrainConfig` (one dataclass, a comment per field) and its JSON/TOML reader.

Kept apart from the loop so the loop, the checkpoints and the command can all import it without a cycle.
See :mod:`nemo_lite.training.loop` for the file format and what each stage trains.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path

from ..prompts import ADAPTER_INSTRUCTION as INSTRUCTION
from ..runtime import DTYPE_NAMES

ARCHITECTURES = ("canary_qwen", "whisper_llm")
SAMPLE_FORMATS = ("auto", "seed", "prompt")  # see TrainConfig.sample_format
LONG_CLIPS = ("skip", "truncate")  # see TrainConfig.long_clips
QUANTIZE_BASE = (None, "nf4")  # see TrainConfig.quantize_base
FINAL_MODEL_DIR = "model"  # the trained model goes to output_dir/model (stage 2's `model` after stage 1)


@dataclass
class TrainConfig:
    """A training run; see the module docstring for the file format."""

    architecture: str  # "canary_qwen" | "whisper_llm"
    train_manifest: str  # JSONL manifest (audio_filepath, text, optional duration)
    output_dir: str  # checkpoints, train_log.jsonl and the final model (output_dir/model)
    model: str | None = None  # canary_qwen: hub id or checkpoint dir; whisper_llm: saved WhisperLLM dir or merged ckpt
    whisper: str | None = None  # whisper_llm without `model`: Whisper checkpoint (dir or hub id)
    llm: str | None = None  # whisper_llm without `model`: causal LM dir/hub id; canary_qwen: local LLM config+tokenizer
    instruction: str = INSTRUCTION  # whisper_llm: prompt text after the audio (new models only)
    stage: int = 1  # 1: projector only; 2: projector + LoRA
    train_encoder: bool = False  # canary_qwen: also train the FastConformer encoder
    lora_r: int = 64  # whisper_llm stage 2 without an adapter yet: LoRA rank
    lora_alpha: float = 16.0  # ... LoRA scale numerator (scale = alpha / r)
    lora_dropout: float = 0.05  # ... LoRA dropout
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    warmup_steps: int = 0  # linear warm-up, in optimizer steps
    min_lr_ratio: float = 0.0  # cosine decay floor, as a fraction of lr
    max_steps: int | None = None  # optimizer steps; None: `epochs` passes over the data
    epochs: int = 1  # passes over the data when max_steps is None
    batch_size: int = 8  # utterances per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimizer step
    max_grad_norm: float | None = 1.0  # gradient clipping (None: off)
    seed: int = 0  # model init (new projector/LoRA), batch order, dropout
    device: str | None = None  # default: cuda (cuda:LOCAL_RANK under torchrun) when available, else cpu
    dtype: str = "float32"  # weight dtype; compute is bf16 autocast on CUDA when `bf16`
    bf16: bool = True  # bf16 autocast where the device supports it (CUDA); CPU always runs fp32
    gradient_checkpointing: bool = False  # recompute LLM activations in backward (less memory, ~30% slower)
    num_workers: int = 0  # DataLoader worker processes for audio decoding
    threads: int = 0  # torch intra-op CPU threads (0: torch's default, one per core); 1 is fastest for tiny models
    log_every: int = 1  # optimizer steps between train_log.jsonl lines
    save_every: int = 0  # optimizer steps between checkpoints (0: only the last step)
    keep_checkpoints: int = 2  # newest checkpoints kept on disk (<= 0: all)
    resume: str | None = None  # "auto" (newest checkpoint in output_dir), a checkpoint dir, or None
    export_dtype: str = "float32"  # canary_qwen final model dtype (the hub's file is bfloat16)
    progress: bool = True  # tqdm bar on rank 0
    # Samples: "seed" = the Qwen2-VL audio adapter's (stage 1: the audio span alone, then transcript + eos; stage 2:
    # the ASR chat prompt, then " " + transcript + <|im_end|>, the leading space as the seed tokenizes it);
    # "prompt" = the ASR chat prompt + transcript + <|im_end|> (NeMo's); "auto": seed for whisper_llm, else prompt.
    sample_format: str = "auto"
    long_clips: str = "skip"  # clips over the model's window: "skip" (counted at the start) or "truncate" (seed)
    eval_manifest: str | None = None  # validation manifest: eval loss every `eval_every` steps, best model kept
    eval_every: int = 200  # optimizer steps between validation passes (the seed's 200)
    quantize_base: str | None = None  # "nf4": stage 2 loads the frozen LLM in 4-bit (bitsandbytes) = QLoRA

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage}")
        if self.architecture == "canary_qwen" and not self.model:
            raise ValueError("canary_qwen needs `model` (a hub id or a checkpoint directory)")
        if self.architecture == "whisper_llm" and not self.model and not (self.whisper and self.llm):
            raise ValueError("whisper_llm needs `model`, or `whisper` and `llm` for a new model")
        if self.train_encoder and self.architecture != "canary_qwen":
            raise ValueError("train_encoder applies to canary_qwen only (the Whisper encoder stays frozen)")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("batch_size and grad_accum must be >= 1")
        for name in ("dtype", "export_dtype"):
            if str(getattr(self, name)).lower() not in DTYPE_NAMES:
                raise ValueError(f"{name} must be one of {sorted(DTYPE_NAMES)}, got {getattr(self, name)!r}")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")
        if self.sample_format not in SAMPLE_FORMATS:
            raise ValueError(f"sample_format must be one of {SAMPLE_FORMATS}, got {self.sample_format!r}")
        if self.sample_format == "auto":
            self.sample_format = "seed" if self.architecture == "whisper_llm" else "prompt"
        if self.long_clips not in LONG_CLIPS:
            raise ValueError(f"long_clips must be one of {LONG_CLIPS}, got {self.long_clips!r}")
        if self.quantize_base not in QUANTIZE_BASE:
            raise ValueError(f"quantize_base must be one of {QUANTIZE_BASE}, got {self.quantize_base!r}")
        if self.quantize_base and self.stage != 2:
            raise ValueError("quantize_base (QLoRA) applies to stage 2, which trains LoRA over the frozen LLM")
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")
        self.betas = tuple(self.betas)  # JSON gives a list

    @classmethod
    def from_dict(cls, raw: dict) -> TrainConfig:
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"training config: unknown key(s) {unknown}")
        return cls(**raw)


def load_train_config(path: str | os.PathLike) -> TrainConfig:
    """A JSON (``.json``) or TOML (``.toml``) training config."""
    path = Path(path)
    if path.suffix == ".toml":
        import tomllib

        return TrainConfig.from_dict(tomllib.loads(path.read_text()))
    return TrainConfig.from_dict(json.loads(path.read_text()))


