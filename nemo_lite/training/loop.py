"""One training loop for both speech LLMs: :class:`~nemo_lite.canary_qwen.CanaryQwen` and
:class:`~nemo_lite.whisper_adapter.WhisperLLM`, on one device or data-parallel under ``torchrun``.

Config: a JSON file (or TOML, read with the stdlib ``tomllib``) whose keys are the fields of
:class:`~nemo_lite.training.config.TrainConfig`;
an unknown key is an error. Example (stage 1 of a Whisper + Qwen3 model, then stage 2 from its output)::

    {
      "architecture": "whisper_llm",
      "train_manifest": "data/train.jsonl",
      "output_dir": "runs/stage1",
      "whisper": "openai/whisper-large-v3-turbo",
      "llm": "Qwen/Qwen3-1.7B",
      "stage": 1,
      "lr": 1e-3, "warmup_steps": 100, "max_steps": 5000,
      "batch_size": 8, "grad_accum": 4
    }

Stage 2 then sets ``"stage": 2, "model": "runs/stage1/model", "lr": 2e-4`` (and drops ``whisper``/``llm``).
For Canary-Qwen: ``"architecture": "canary_qwen", "model": "nvidia/canary-qwen-2.5b"`` (a hub id or a
checkpoint directory; ``llm`` names a local LLM config + tokenizer directory when the hub is unreachable).

What is trained:
- stage 1: the projector only (WhisperLLM ``projector``; CanaryQwen ``perception.proj``);
- stage 2: the projector + LoRA. WhisperLLM gets a new adapter on the LLM's attention and MLP projections
  (peft ``target_modules`` = :data:`~nemo_lite.whisper_adapter.LLM_LORA_TARGETS`, a regex anchored to the LLM's
  layers) unless it has one already; CanaryQwen fine-tunes its existing LoRA. ``train_encoder`` (CanaryQwen only)
  also trains the FastConformer. Everything else is frozen and kept in eval mode (BatchNorm statistics stay put).

Loss (:mod:`nemo_lite.training.loss`): teacher forcing, cross-entropy on the answer tokens only (transcript +
``<|im_end|>``), logits computed at the labelled positions only.

Optimisation: AdamW, linear warm-up then cosine decay to ``min_lr_ratio * lr``, gradient accumulation, gradient
clipping, bf16 autocast on CUDA (fp32 on CPU), optional gradient checkpointing.

Checkpoints (:mod:`nemo_lite.training.checkpointing`): ``output_dir/checkpoint-NNNNNN/`` holds the trained tensors,
the config and the optimizer/scheduler/RNG state; ``"resume": "auto"`` (or a checkpoint path) continues
from one, bit-exactly. The final model goes to ``output_dir/model``.

Data parallel: under ``torchrun`` (WORLD_SIZE > 1) the process group is initialised (NCCL on CUDA, gloo on CPU),
the model is wrapped in ``DistributedDataParallel``, each rank reads its share of the batches
(:class:`~nemo_lite.training.data.BucketBatchSampler`), and only rank 0 logs and saves:
``torchrun --nproc_per_node 2 -m nemo_lite.train --config cfg.json``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from ..audio import SAMPLE_RATE
from ..llm import base_causal_lm, is_peft
from ..runtime import resolve_dtype
from ..speechlm import SpeechLM
from .checkpointing import (
    CHECKPOINT_PREFIX,
    TrainState,
    checkpoints,
    load_checkpoint,
    resume_path,
    save_checkpoint,
    save_final,
    trainable_digest,
)
from .config import FINAL_MODEL_DIR, TrainConfig
from .data import BucketBatchSampler, SpeechDataset, collate, fit_window, read_manifest
from .loss import SpeechLoss, answer_ids, sample_parts
from .validation import BestKeeper, eval_loss


# ---------------------------------------------------------------------- model and trainable parameters
def build_model(cfg: TrainConfig, device: torch.device) -> SpeechLM:
    """The model named by the config, on ``device``, before freezing."""
    dtype = resolve_dtype(cfg.dtype)
    if cfg.architecture == "canary_qwen":
        from ..canary_qwen import CanaryQwen

        return CanaryQwen.from_pretrained(cfg.model, device=device, dtype=dtype, llm_path=cfg.llm,
                                          compact_encoder=False)  # the encoder may train: no bf16 at rest
    from ..whisper_adapter import WhisperLLM

    if cfg.model:
        return WhisperLLM.from_pretrained(cfg.model, device=device, dtype=dtype)
    return WhisperLLM.from_components(cfg.whisper, cfg.llm, instruction=cfg.instruction, device=device, dtype=dtype,
                                      seed=cfg.seed)


def configure_trainable(model: SpeechLM, cfg: TrainConfig) -> dict[str, nn.Parameter]:
    """Freeze everything, then unfreeze what the stage trains; returns those parameters by name.

    Stage 1: the projector (``model.projector_name``); stage 2: + the LLM's LoRA, a new adapter when the model
    has none and its design makes one (``model.new_lora_targets``); ``train_encoder``: + the audio encoder."""
    if cfg.stage == 2 and not is_peft(model.llm):
        if model.new_lora_targets is None:
            raise ValueError(f"stage 2 of {cfg.architecture} fine-tunes its LoRA, but this checkpoint has none")
        model.add_lora(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, model.new_lora_targets)
    wanted = [model.projector_name + "."] + ([model.encoder_name + "."] if cfg.train_encoder else [])
    trainable = {}
    for name, p in model.named_parameters():
        on = name.startswith(tuple(wanted)) or (cfg.stage == 2 and ".lora_" in name and name.startswith("llm."))
        p.requires_grad_(on)
        if on:
            trainable[name] = p
    return trainable


def unquantized(cfg: TrainConfig, trained: dict[str, nn.Parameter]) -> SpeechLM:
    """QLoRA's model to save: the base built again in full precision from the config's checkpoint, on the CPU,
    with the trained tensors copied in. The NF4 layers hold a rounded copy of the base in bitsandbytes' packed bytes;
    written out, they took the place of the checkpoint's weights (shape (4096, 1) for a (64, 128) matrix) and the
    trained model could not be loaded."""
    fresh = build_model(cfg, torch.device("cpu"))
    target = configure_trainable(fresh, cfg)
    if set(target) != set(trained):
        raise RuntimeError(f"the rebuilt model's trainable tensors differ from the trained ones: "
                           f"{sorted(set(target) ^ set(trained))[:4]}")
    with torch.no_grad():
        for name, p in target.items():
            p.copy_(trained[name].detach().to("cpu", p.dtype))
    return fresh.eval()


def set_train_mode(model: SpeechLM, cfg: TrainConfig) -> None:
    """Train mode for the LLM and projector; a frozen encoder stays in eval mode (no dropout, BatchNorm fixed)."""
    model.train()
    if not cfg.train_encoder:
        model.audio_encoder.eval()


# ---------------------------------------------------------------------- schedule, distributed
def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Dist:
    rank: int = 0  # this process
    world_size: int = 1  # processes in the job
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(cfg: TrainConfig) -> Dist:
    """Process group when launched by torchrun (WORLD_SIZE > 1); the device for this rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (cfg.device is None or cfg.device.startswith("cuda"))
    device = torch.device(f"cuda:{local}" if cuda and cfg.device in (None, "cuda") else (cfg.device or "cpu"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Dist(rank, world, device)


# ---------------------------------------------------------------------- the loop
@dataclass
class TrainResult:
    losses: list[float]  # mean loss per optimizer step (over ranks and micro-batches)
    steps: int  # optimizer steps done in total
    wall_seconds: float  # this process's training time
    digest: str  # trainable_digest() at the end
    model_dir: Path | None  # output_dir/model (written by rank 0)


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _mean_over_ranks(value: float, world: int, device: torch.device) -> float:
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / world


def train(cfg: TrainConfig, model: SpeechLM | None = None) -> TrainResult:
    """Run the configured training (``model``: an already loaded model instead of the config's)."""
    env = init_distributed(cfg)
    if cfg.threads > 0:  # process-wide; set before the model is built
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    if cfg.quantize_base:  # refused before any work when bitsandbytes cannot run here
        from .qlora import nf4_problem, quantize_nf4

        if (problem := nf4_problem(env.device)) is not None:
            raise RuntimeError(problem)
    model = model if model is not None else build_model(cfg, env.device)
    if cfg.quantize_base:
        quantize_nf4(model.llm, model.dtype if env.device.type == "cpu" else torch.bfloat16)
    trainable = configure_trainable(model, cfg)
    if cfg.gradient_checkpointing:
        base_causal_lm(model.llm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    set_train_mode(model, cfg)
    prompt, answer_kw = sample_parts(model, cfg.stage, cfg.sample_format)
    runner = SpeechLoss(model, prompt)
    runner.answer_kw = answer_kw
    loss_module = runner
    if env.world_size > 1:
        runner = nn.parallel.DistributedDataParallel(runner, broadcast_buffers=False)

    items, datasets = _datasets(cfg, model, env)
    dataset, val = datasets
    best = BestKeeper(Path(cfg.output_dir))
    sampler = BucketBatchSampler([u.duration for u in items], cfg.batch_size, env.rank, env.world_size, cfg.seed)
    per_epoch = len(sampler) // cfg.grad_accum
    if per_epoch == 0:
        raise ValueError(f"{len(sampler)} batch(es) per rank is fewer than grad_accum={cfg.grad_accum}")
    total = cfg.max_steps if cfg.max_steps is not None else cfg.epochs * per_epoch
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, cfg.warmup_steps, total, cfg.min_lr_ratio))
    ckpt = resume_path(cfg)
    state = load_checkpoint(ckpt, trainable, optimizer, scheduler) if ckpt is not None else TrainState()
    if env.main:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    bar = _progress(cfg, env, total, state.step)
    losses: list[float] = []
    t_start = time.perf_counter()
    while state.step < total:
        sampler.set_epoch(state.epoch)
        batches = sampler.epoch_batches()[state.group * cfg.grad_accum: per_epoch * cfg.grad_accum]
        # Own generator: creating a loader must not draw from the global RNG (dropout), or resuming would shift it.
        loader = iter(torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate,
                                                  num_workers=cfg.num_workers, generator=torch.Generator()))
        for _ in range(state.group, per_epoch):
            t0 = time.perf_counter()
            loss, utts, seconds = _optimizer_step(cfg, env, runner, loader, trainable, optimizer)
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step()
            state.step += 1
            state.group += 1
            losses.append(_mean_over_ranks(loss, env.world_size, env.device))
            dt = (time.perf_counter() - t0) / env.world_size
            _log(cfg, env, bar, state, losses[-1], lr, utts / dt, seconds / dt)
            if val is not None and (state.step % cfg.eval_every == 0 or state.step == total):
                _validate(cfg, env, loss_module, val, best, trainable, state)
            if state.step == total or (cfg.save_every and state.step % cfg.save_every == 0):
                _checkpoint(cfg, env, trainable, optimizer, scheduler, state)
            if state.step >= total:
                break
        else:
            state.epoch += 1
            state.group = 0
    if bar is not None:
        bar.close()
    wall = time.perf_counter() - t_start
    best.restore(trainable)  # the seed's load_best_model_at_end (a no-op without validation)
    model.eval()
    out = Path(cfg.output_dir) / FINAL_MODEL_DIR
    export_dtype = resolve_dtype(cfg.export_dtype)
    model_dir = None
    if env.main:
        final = unquantized(cfg, trainable) if cfg.quantize_base else model
        model_dir = save_final(final, cfg.architecture, out, cfg.model, export_dtype)
    if env.world_size > 1:
        dist.barrier()
    return TrainResult(losses, state.step, wall, trainable_digest(trainable), model_dir)


def _optimizer_step(cfg: TrainConfig, env: Dist, runner: nn.Module, loader, trainable: dict[str, nn.Parameter],
                    optimizer) -> tuple[float, int, float]:
    """``grad_accum`` micro-batches (gradients all-reduced on the last only), clipping, one AdamW step.
    Returns this rank's mean loss, utterances and audio seconds."""
    module = runner.module if isinstance(runner, nn.parallel.DistributedDataParallel) else runner
    model = module.model
    loss, utts, seconds = 0.0, 0, 0.0
    for k in range(cfg.grad_accum):
        batch = next(loader)
        answers = [answer_ids(model.tokenizer, t, **module.answer_kw) for t in batch.texts]
        sync = env.world_size == 1 or k == cfg.grad_accum - 1
        with (contextlib.nullcontext() if sync else runner.no_sync()), _autocast(cfg, env.device):
            micro = runner(batch.audios, answers)
            (micro / cfg.grad_accum).backward()
        loss += micro.item() / cfg.grad_accum
        utts += len(batch.audios)
        seconds += batch.seconds
    if cfg.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(list(trainable.values()), cfg.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss, utts, seconds


def _progress(cfg: TrainConfig, env: Dist, total: int, done: int):
    if not (cfg.progress and env.main):
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, desc=f"stage {cfg.stage}", unit="step", file=sys.stderr)


def _log(cfg: TrainConfig, env: Dist, bar, state: TrainState, loss: float, lr: float, utt_s: float,
         audio_s: float) -> None:
    if not env.main:
        return
    if bar is not None:
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", utt_s=f"{utt_s:.1f}", audio_x=f"{audio_s:.1f}")
        bar.update(1)
    if state.step % cfg.log_every == 0:
        line = {"step": state.step, "epoch": state.epoch, "loss": loss, "lr": lr, "utterances_per_s": utt_s,
                "audio_seconds_per_s": audio_s}
        with open(Path(cfg.output_dir) / "train_log.jsonl", "a") as f:
            f.write(json.dumps(line) + "\n")


def _checkpoint(cfg: TrainConfig, env: Dist, trainable, optimizer, scheduler, state: TrainState) -> None:
    """Rank 0 writes the checkpoint and prunes old ones; the other ranks wait for it."""
    if env.main:
        out = Path(cfg.output_dir)
        save_checkpoint(out / f"{CHECKPOINT_PREFIX}{state.step:06d}", cfg, trainable, optimizer, scheduler, state)
        stale = checkpoints(out)[: -cfg.keep_checkpoints] if cfg.keep_checkpoints > 0 else []
        for old in stale:
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
    if env.world_size > 1:
        dist.barrier()


def _datasets(cfg: TrainConfig, model: SpeechLM, env: Dist):
    """Training items (clips over the model's window skipped with a count, or truncated: ``long_clips``) and the
    training and validation datasets (None without ``eval_manifest``)."""
    window = model.window_seconds
    items, long = fit_window(read_manifest(cfg.train_manifest), window, cfg.long_clips)
    if long and env.main:
        verb = "truncated to" if cfg.long_clips == "truncate" else "skipped: longer than"
        print(f"nemo-lite: {long} training clip(s) {verb} the model's {window:g} s window", file=sys.stderr)
    if not items:
        raise ValueError(f"{cfg.train_manifest}: no clip fits the model's {window:g} s window")
    max_samples = int(window * SAMPLE_RATE)
    val = None
    if cfg.eval_manifest:
        val_items, _ = fit_window(read_manifest(cfg.eval_manifest), window, cfg.long_clips)
        val = (SpeechDataset(val_items, max_samples), [u.duration for u in val_items])
    return items, (SpeechDataset(items, max_samples), val)


def _validate(cfg: TrainConfig, env: Dist, runner: SpeechLoss, val, best: BestKeeper, trainable,
              state: TrainState) -> None:
    """Validation loss (rank 0 computes, as the seed's single-process Trainer), logged; the best tensors kept."""
    if not env.main:
        return
    with _autocast(cfg, env.device):
        loss = eval_loss(runner, val[0], val[1], cfg.batch_size, runner.answer_kw)
    improved = best.offer(state.step, loss, trainable)
    with open(Path(cfg.output_dir) / "train_log.jsonl", "a") as f:
        f.write(json.dumps({"step": state.step, "eval_loss": loss, "best": improved}) + "\n")
