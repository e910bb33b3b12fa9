"""Offline proof that nemo_lite's training works, on CPU in minutes: synthetic speech -> tiny random WhisperLLM.

1. Speaks ``SENTENCES`` with espeak-ng (two voices), resampled to 16 kHz mono wav with sox, plus a JSONL manifest.
2. Writes a random tiny Whisper (``nemo_lite.testing.TINY_WHISPER``: 2 layers, width 64, 30 s windows) and a
   random tiny Qwen3 (``nemo_lite.testing.TINY_QWEN3``: 2 layers, width 64, the real Qwen3 tokenizer) as ordinary
   checkpoints.
3. Stage 1 trains the projector only; stage 2 trains the projector + LoRA on the LLM's attention and MLP
   projections, starting from stage 1's saved model. Both go through ``nemo_lite.train.train``.
4. Scores training-set WER after each stage (``nemo_lite.evaluate``) and writes the loss curves as numbers
   (``docs/training_curves.json``) and a plot (``docs/training_curves.png``; needs matplotlib, a dev tool only).

The model has the real layout: 30 s windows, 1500 encoder frames spliced into the original prompt. Three choices
make a random toy learnable on 2 CPU cores in minutes (a pretrained Whisper and Qwen need none of them); without
them a first run (HF-style random init, 160 stage-2 steps, 19 min) ignored the audio and ended at WER 85 %:
- The random Whisper's position table and residual branches are scaled down
  (:func:`nemo_lite.testing.write_random_whisper`), so its frames depend on the audio (cosine 0.66 between
  the same frame of two clips, instead of 0.99).
- Token embeddings are drawn with std ``EMBED_STD`` (the test recipe uses 0.02): with a tied head, a width-64 model
  with 0.02-std embeddings can only produce logits within about +-1.3 over 151936 words.
- Qwen3's per-head q/k RMSNorm weights are scaled by ``QK_NORM_SCALE``: at 1.0 an attention logit cannot exceed
  |q||k|/sqrt(16) = 4, too flat to pick 1-2 s of speech out of 1500 frames (trained Qwen3 norms are large too).
Torch runs on one thread (``--threads``): for models this small it is the fastest setting, and on a machine whose
cores other processes also use, two OpenMP threads spin-waiting for each other ran a step 50x slower.
``--frames 200`` (4 s windows) runs the same recipe ~7x faster per step.

    python scripts/train_synthetic.py [--work /tmp/nemo_lite_synthetic] [--docs docs]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nemo_lite import testing
from nemo_lite.evaluate import evaluate
from nemo_lite.train import TrainConfig, train
from nemo_lite.whisper_adapter import WhisperLLM

SENTENCES = [
    "the cat sat on the mat", "open the door please", "it is raining today", "turn left at the corner",
    "my phone is on the table", "we need more coffee", "the train leaves at noon", "call me in the morning",
    "she reads a book every night", "the dog is sleeping", "please close the window", "where is the station",
    "i like green apples", "the meeting starts soon", "bring your umbrella", "the sky is very blue",
    "he plays the guitar", "lunch is ready", "the water is cold", "let us go home",
    "the car is in the garage", "birds sing in spring", "count from one to ten", "the music is too loud",
    "write your name here", "the shop opens at nine", "a small red boat", "the children are playing outside",
    "we walked along the beach", "the soup is hot", "switch off the light", "the bus is late again",
]
VOICES = ("en-us", "en-gb")  # two speakers: 64 utterances
EMBED_STD = 0.25  # token embedding std of the random LLM (see the module docstring)
QK_NORM_SCALE = 4.0  # Qwen3's q/k RMSNorm weights of the random LLM (see the module docstring)
LLM_CONFIG = {**testing.TINY_QWEN3}
FRAMES = 1500  # encoder frames per window: Whisper's 30 s; --frames 200 gives 4 s windows for a quicker run
STAGES = {  # the two runs; shared keys in COMMON
    1: {"stage": 1, "lr": 3e-3, "warmup_steps": 10, "max_steps": 40},
    2: {"stage": 2, "lr": 1e-3, "warmup_steps": 20, "max_steps": 600, "lora_r": 64, "lora_alpha": 128,
        "lora_dropout": 0.0},
}
MAX_NEW_TOKENS = 16  # per clip in the WER runs: the longest sentence has 6 tokens + <|im_end|>
COMMON = {"batch_size": 8, "grad_accum": 1, "min_lr_ratio": 0.1, "seed": 0, "save_every": 0, "log_every": 1}


def make_dataset(root: Path) -> Path:
    """espeak-ng speech of every sentence in every voice, 16 kHz mono 16-bit wav, and ``train.jsonl``."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for v, voice in enumerate(VOICES):
        for i, text in enumerate(SENTENCES):
            wav = audio / f"{voice}_{i:02d}.wav"
            if not wav.exists():
                raw = Path(tempfile.mkdtemp()) / "raw.wav"
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(150 + 10 * v), "-w", str(raw), text], check=True)
                subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
            lines.append(json.dumps({"audio_filepath": f"audio/{wav.name}", "text": text}))
    manifest = root / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def make_backbones(root: Path, frames: int = FRAMES) -> tuple[Path, Path]:
    """Random tiny Whisper (``frames`` encoder frames a window) + Qwen3 checkpoints (embeddings rescaled to
    ``EMBED_STD``, q/k norms scaled by ``QK_NORM_SCALE``)."""
    whisper, llm = root / "whisper", root / "llm"
    testing.write_random_whisper(whisper, {**testing.TINY_WHISPER, "max_source_positions": frames}, seed=0)
    testing.write_random_llm(llm, LLM_CONFIG, seed=0)
    state = load_file(str(llm / "model.safetensors"))
    state["model.embed_tokens.weight"] *= EMBED_STD / state["model.embed_tokens.weight"].std()
    for key in state:
        if key.endswith(("q_norm.weight", "k_norm.weight")):
            state[key] *= QK_NORM_SCALE
    save_file(state, str(llm / "model.safetensors"))
    return whisper, llm


def run_stage(stage: int, manifest: Path, root: Path, source: dict) -> dict:
    cfg = TrainConfig(architecture="whisper_llm", train_manifest=str(manifest), output_dir=str(root / f"stage{stage}"),
                      **source, **COMMON, **STAGES[stage])
    t0 = time.perf_counter()
    result = train(cfg)
    train_wall = time.perf_counter() - t0
    model = WhisperLLM.from_pretrained(result.model_dir)
    scores = evaluate(model, manifest, root / f"stage{stage}_predictions.jsonl", batch_size=16,
                      max_new_tokens=MAX_NEW_TOKENS)
    print(f"stage {stage}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} in {result.steps} steps, "
          f"{train_wall:.0f} s; training-set WER {100 * scores.wer:.1f} %, CER {100 * scores.cer:.1f} %")
    return {"config": {k: v for k, v in asdict(cfg).items() if k in {*STAGES[stage], *COMMON}},
            "losses": result.losses, "loss_first5": _mean(result.losses[:5]), "loss_last5": _mean(result.losses[-5:]),
            "train_seconds": round(train_wall, 1), "wer": scores.wer, "cer": scores.cer,
            "eval_rtfx": round(scores.rtfx, 2), "model_dir": str(result.model_dir)}


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for stage in ("1", "2"):
        run = report["stages"][stage]
        steps = range(offset + 1, offset + len(run["losses"]) + 1)
        ax.plot(steps, run["losses"], label=f"stage {stage} (WER after: {100 * run['wer']:.1f} %)")
        offset += len(run["losses"])
    ax.set_xlabel("optimizer step (stage 2 continues from stage 1)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    ax.set_title("Tiny random Whisper + Qwen3 on synthetic espeak-ng speech (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/nemo_lite_synthetic", help="data, checkpoints and models")
    parser.add_argument("--docs", default="docs", help="where training_curves.json/.png go")
    parser.add_argument("--frames", type=int, default=FRAMES, help="encoder frames per window (1500: Whisper's 30 s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for these tiny models, "
                        "and far faster when other processes share the cores (OpenMP threads spin-wait)")
    args = parser.parse_args()
    root, docs = Path(args.work), Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    manifest = make_dataset(root)
    whisper, llm = make_backbones(root, args.frames)
    report = {"utterances": len(SENTENCES) * len(VOICES), "threads": args.threads, "window_frames": args.frames,
              "window_seconds": args.frames * 2 * 160 / 16000, "embed_std": EMBED_STD,
              "qk_norm_scale": QK_NORM_SCALE, "stages": {}}
    report["stages"]["1"] = run_stage(1, manifest, root, {"whisper": str(whisper), "llm": str(llm)})
    report["stages"]["2"] = run_stage(2, manifest, root, {"model": report["stages"]["1"]["model_dir"]})
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    (docs / "training_curves.json").write_text(json.dumps(report, indent=1))
    try:
        plot(report, docs / "training_curves.png")
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
    print(f"total {report['total_seconds']:.0f} s; curves in {docs / 'training_curves.json'}")


if __name__ == "__main__":
    main()
