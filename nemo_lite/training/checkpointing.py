"""Training checkpoints: save, load and resume the trained tensors with the optimizer, scheduler and RNG state;
write the final model. Used by the loop in :mod:`nemo_lite.training.loop`, kept apart so each module stays a
readable size.

Layout (``output_dir/checkpoint-NNNNNN/``): ``trainable.safetensors`` (the trained tensors only, by parameter
name), ``train_config.json``, ``trainer_state.pt`` (optimizer, scheduler, step, epoch, position in the epoch,
RNG). ``"resume": "auto"`` (or a checkpoint path) continues from one, bit-exactly. The final model goes to
``output_dir/model``: WhisperLLM in its own layout, CanaryQwen in the hub layout via :mod:`nemo_lite.training.export`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import TrainConfig

if TYPE_CHECKING:
    from ..speechlm import SpeechLM

CHECKPOINT_PREFIX = "checkpoint-"


def trainable_digest(trainable: dict[str, nn.Parameter]) -> str:
    """sha256 over the trained tensors' bytes, by name: equal digests = identical weights."""
    h = hashlib.sha256()
    for name in sorted(trainable):
        h.update(name.encode())
        h.update(trainable[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0  # current epoch
    group: int = 0  # optimizer steps done within the current epoch


def save_checkpoint(path: Path, cfg: TrainConfig, trainable: dict[str, nn.Parameter], optimizer, scheduler,
                    state: TrainState) -> None:
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: p.detach().contiguous().cpu() for k, p in trainable.items()}, str(path / "trainable.safetensors"))
    (path / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"state": asdict(state), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng}, path / "trainer_state.pt")


def load_checkpoint(path: Path, trainable: dict[str, nn.Parameter], optimizer, scheduler) -> TrainState:
    """Trained tensors (exactly the set this run trains), optimizer, scheduler and RNG from ``path``."""
    with safe_open(str(path / "trainable.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        if keys != set(trainable):
            missing, extra = sorted(set(trainable) - keys)[:5], sorted(keys - set(trainable))[:5]
            raise ValueError(f"{path}: checkpoint tensors differ from this run's trainable set: "
                             f"missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, p in trainable.items():
                p.copy_(f.get_tensor(name))
    blob = torch.load(path / "trainer_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    torch.set_rng_state(blob["rng"]["torch"])
    if "cuda" in blob["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(blob["rng"]["cuda"])
    return TrainState(**blob["state"])


def checkpoints(output_dir: Path) -> list[Path]:
    return sorted(p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "trainer_state.pt").is_file())


def resume_path(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        found = checkpoints(Path(cfg.output_dir))
        return found[-1] if found else None
    return Path(cfg.resume)


def save_final(model: SpeechLM, architecture: str, out: Path, source: str | None, dtype: torch.dtype) -> Path:
    """The trained model in ``out``, loadable on its own: the WhisperLLM layout, or for ``canary_qwen`` the hub
    layout (``source``: the checkpoint it was loaded from; ``dtype``: the exported weights' dtype)."""
    if architecture != "canary_qwen":
        return model.save_pretrained(out)
    from ..weights import resolve_checkpoint
    from .export import export_canary

    return export_canary(model, out, source=resolve_checkpoint(source), dtype=dtype)
