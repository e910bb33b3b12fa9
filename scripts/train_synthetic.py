"""Offline proof that nemo_lite's training works, on CPU in minutes: synthetic speech -> a tiny random WhisperLLM,
or (``--architecture canary_qwen``) a tiny random Canary-Qwen whose FastConformer is trained too.

1. Speaks ``SENTENCES`` with espeak-ng (two voices), resampled to 16 kHz mono wav with sox, plus a JSONL manifest
   (or takes your own manifest, ``--manifest``).
2. Writes a random tiny Whisper (``nemo_lite.testing.TINY_WHISPER``: 2 layers, width 64, 30 s windows) and a
   random tiny Qwen3 (``nemo_lite.testing.TINY_QWEN3``: 2 layers, width 64, the real Qwen3 tokenizer) as ordinary
   checkpoints.
3. Stage 1 trains the projector only; stage 2 trains the projector + LoRA on the LLM's attention and MLP
   projections, starting from stage 1's saved model. Both go through ``nemo_lite.training.loop.train``.
4. Scores training-set WER after each stage (``nemo_lite.evaluate``) and writes the loss curves as numbers
   (``docs/training_curves.json``) and a plot (``docs/training_curves.png``; needs matplotlib, a dev tool only).

On the espeak-ng set the model has the real layout: 30 s windows, 1500 encoder frames spliced into the original
prompt. Three choices make a random toy learnable on 2 CPU cores in minutes (a pretrained Whisper and Qwen need
none of them); without them a first run (HF-style random init, 160 stage-2 steps, 19 min) ignored the audio
and ended at WER 85 %:
- The random Whisper's position table and residual branches are scaled down
  (:func:`nemo_lite.testing.write_random_whisper`), so its frames depend on the audio (cosine 0.66 between
  the same frame of two clips, instead of 0.99).
- Token embeddings are drawn with std ``EMBED_STD`` (the test recipe uses 0.02): with a tied head, a width-64 model
  with 0.02-std embeddings can only produce logits within about +-1.3 over 151936 words.
- Qwen3's per-head q/k RMSNorm weights are scaled by ``QK_NORM_SCALE``: at 1.0 an attention logit cannot exceed
  |q||k|/sqrt(16) = 4, too flat to pick 1-2 s of speech out of 1500 frames (trained Qwen3 norms are large too).
Stage 2 takes one utterance a step, for ``STAGE2_EPOCHS`` passes over the manifest or ``STAGE2_MIN_STEPS`` steps,
whichever is more: on CPU a step's time is per utterance, so batch 1 costs what batch 8 does per pass and gives 8x
the updates; the toy needs passes to memorise a manifest, and updates for long transcripts. Tuning runs (espeak-ng
manifests with capitals and punctuation, none of them the one the README's timing comes from), training WER:
- 90 utterances, 4 s windows: 8 x 600 steps at lr 1e-3 10-21 % over three seeds; 2 x 2400 at lr 7e-4 0 %;
- 170 utterances, 4 s windows, lr 5e-4: 1 x 4800 (28 passes) 91 %; 1 x 12000 (70 passes) 5.8 %;
- 42 two-sentence clips (3.7-5.1 s, 8 s windows): 1 x 2940 (70 passes) 11 %; 1 x 6000 0 %.
At 30 s windows the toy learns more slowly (90 utterances: 2 x 2400 36 %, 1 x 4800 11 %): the prompt holds 1500
frames of which ~100 are speech, and a step costs 4x more. So a manifest of your own (``--manifest``) gets the
shortest window that holds its longest clip (:func:`window_frames`) unless ``--frames`` says otherwise; the
espeak-ng set keeps Whisper's 30 s layout.
Torch runs on one thread (``--threads``): for models this small it is the fastest setting, and on a machine whose
cores other processes also use, two OpenMP threads spin-waiting for each other ran a step 50x slower.
``--frames 200`` (4 s windows) runs the same recipe ~4x faster per step (b1: 0.025 s instead of 0.107 s).

Canary-Qwen (``--architecture canary_qwen``): a random FastConformer (:data:`TINY_FASTCONFORMER`: 4 layers, width
128, NeMo's 8x dw_striding subsampling and 128 mel features) + the same tiny Qwen3 (the two scalings above), written
as an ordinary hub-layout checkpoint (``WORK/canary/``, the LLM config and tokenizer in its ``llm_backbone/``) with
a LoRA of rank 64 on every attention and MLP projection, ``lora_B`` zero (the test recipe makes it random). The
encoder's residual branches (their last layers: ``linear_out``, the FFs' ``linear2``, ``pointwise_conv2``) are
scaled by ``testing.RANDOM_BRANCH_SCALE`` as the Whisper's are: at the plain random init each layer pulls the frames
of different clips together (cosine between the same frame of two clips 0.67 after the subsampling, 0.95 after 4
layers; 0.73 with the scaling). Three runs (:data:`CANARY_STAGES`): stage 1 the projector (40 steps of 8), stage 2
the projector + LoRA at lr 1e-3 (6000 steps of one clip), both with the encoder frozen; stage 3 (a stage-2 run from
stage 2's model) the encoder + projector + LoRA at lr 1e-4 for ``ENCODER_STEPS``, exported bf16, the hub's file
dtype, so the speed modes are scored against an exact mode that reads what a real checkpoint holds. Why the encoder
waits (short runs on the 64 clips, teacher-forced loss with each clip's own audio vs the audio shuffled between
clips): trained from the start at lr 1e-3, as the first recipe did, the encoder collapses while the LM loss is still
large. After stage 1 (projector + encoder) the projected frames of different clips had cosine 0.996 (0.73 at init);
trained from stage 2's start instead, 1.000 after 600 steps; the first recipe's run (6000 steps, 23 min) learned the
sentences as a language model, training WER 85 %. Frozen for 1200 steps, then 600 more: own vs shuffled audio 2.55
vs 3.87 before; encoder trained at lr 1e-4 2.12 vs 4.07 (frames 0.83 apart, WER 66 %), at 3e-4 loss 2.29, at 1e-3
collapsed again (cosine 1.000, WER 108 %); frozen at lr 1e-4 2.20 vs 3.96 (WER 63 %), so at this stage the trained
encoder is not yet better than the random one, it has only stopped being worse. Clips are not padded to a window
(the FastConformer takes any length): a 2 s clip is 25 encoder frames, a step 0.15-0.25 s on one thread (0.3-0.4 s
with the encoder training).

The stages are written as config files first, ``WORK/stage1.json``, ``WORK/stage2.json`` (and ``stage3.json``)
(TrainConfig fields, absolute paths, ``threads`` included), and trained from them, so ``nemo-lite train --config``
on those files is the same recipe. ``--manifest`` trains on your own NeMo JSONL manifest instead of the espeak-ng
set; ``--prepare-only`` writes the backbones and the configs and prints the commands that train and score them:

    python scripts/train_synthetic.py [--work /tmp/nemo_lite_synthetic] [--docs docs]
    python scripts/train_synthetic.py --architecture canary_qwen --work /work/tiny_canary_trained
    python scripts/train_synthetic.py --plot-only docs/training_curves.json   # redraw the PNG from the numbers
    python scripts/train_synthetic.py --prepare-only --manifest data/train.jsonl --work runs/tiny
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from nemo_lite import from_pretrained, testing
from nemo_lite.evaluate import evaluate
from nemo_lite.training.config import FINAL_MODEL_DIR, TrainConfig, load_train_config
from nemo_lite.training.data import read_manifest
from nemo_lite.training.loop import train
from nemo_lite.weights import LLM_BACKBONE_DIR, WEIGHTS_FILE

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
FRAMES_PER_SECOND = 50  # encoder frames: 100 mel frames a second (hop 160 at 16 kHz), halved by Whisper's conv2
WINDOW_STEP_SECONDS = 2  # --manifest windows grow in 2 s steps ...
WINDOW_MARGIN_SECONDS = 1.0  # ... above the longest clip (a manifest's duration may be rounded) ...
MIN_WINDOW_SECONDS = 4  # ... and are at least 4 s (the tuning runs above)
STAGE2_EPOCHS = 70  # stage 2 runs this many passes over the manifest ...
STAGE2_MIN_STEPS = 6000  # ... or at least this many steps (see the module docstring)
STAGES = {  # the two runs; shared keys in COMMON (a stage's own value wins)
    1: {"stage": 1, "lr": 3e-3, "warmup_steps": 10, "max_steps": 40},
    # One utterance a step; max_steps from the manifest's size (stage2_steps).
    2: {"stage": 2, "lr": 5e-4, "warmup_steps": 20, "batch_size": 1, "lora_r": 64, "lora_alpha": 128,
        "lora_dropout": 0.0},
}
# Canary-Qwen (--architecture canary_qwen): the FastConformer and LoRA of the random checkpoint, and what each
# stage changes in STAGES. Stages 1-2 keep the encoder frozen (at lr 1e-3 it collapsed: see the module docstring);
# stage 3, a stage-2 run from stage 2's model, trains it with the projector and LoRA at a tenth of the rate.
TINY_FASTCONFORMER = {"n_layers": 4, "d_model": 128, "n_heads": 4, "subsampling_conv_channels": 128}
CANARY_LORA = {"r": 64, "lora_alpha": 128, "lora_dropout": 0.0,
               "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
ENCODER_STEPS = 1000  # stage 3's steps (one utterance each)
CANARY_STAGES = {1: {"train_encoder": False},
                 2: {"train_encoder": False, "lr": 1e-3},
                 3: {"stage": 2, "train_encoder": True, "lr": 1e-4, "max_steps": ENCODER_STEPS,
                     "export_dtype": "bfloat16"}}
ENCODER_LAYERS = "perception.encoder.layers."  # the FastConformer's layers in the checkpoint
ENCODER_BRANCH_OUTPUTS = ("linear_out", "linear2", "pointwise_conv2")  # each residual branch's last layer
WHISPER_ONLY = ("lora_r", "lora_alpha", "lora_dropout")  # a new adapter's settings: Canary-Qwen keeps its own
SMOOTH_STEPS = 50  # running mean in the plot
MAX_NEW_TOKENS = 16  # per clip in the WER runs: the longest sentence has 6 tokens + <|im_end|>
COMMON = {"batch_size": 8, "grad_accum": 1, "min_lr_ratio": 0.1, "seed": 0, "save_every": 0, "log_every": 1}


def speak(text: str, voice: str, rate: int, wav: Path) -> None:
    """``text`` spoken by espeak-ng ``voice`` at ``rate`` words a minute, as 16 kHz mono 16-bit ``wav`` (sox;
    ``-R`` seeds sox's dither, which otherwise changes the low bits from run to run)."""
    with tempfile.TemporaryDirectory() as tmp:  # espeak-ng's 22 kHz output, removed once resampled
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-w", str(raw), text], check=True)
        subprocess.run(["sox", "-R", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)


def make_dataset(root: Path) -> Path:
    """espeak-ng speech of every sentence in every voice, 16 kHz mono 16-bit wav, and ``train.jsonl``."""
    audio = root / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for v, voice in enumerate(VOICES):
        for i, text in enumerate(SENTENCES):
            wav = audio / f"{voice}_{i:02d}.wav"
            if not wav.exists():
                speak(text, voice, 150 + 10 * v, wav)
            lines.append(json.dumps({"audio_filepath": f"audio/{wav.name}", "text": text}))
    manifest = root / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def stage2_steps(utterances: int) -> int:
    """Stage 2's optimizer steps: ``STAGE2_EPOCHS`` passes over the manifest, at least ``STAGE2_MIN_STEPS``."""
    return max(STAGE2_EPOCHS * math.ceil(utterances / STAGES[2]["batch_size"]), STAGE2_MIN_STEPS)


def window_frames(longest_seconds: float) -> int:
    """Encoder frames of the shortest window (a multiple of 2 s, 4-30 s) that holds a clip this long + 1 s."""
    seconds = WINDOW_STEP_SECONDS * math.ceil((longest_seconds + WINDOW_MARGIN_SECONDS) / WINDOW_STEP_SECONDS)
    return FRAMES_PER_SECOND * min(FRAMES // FRAMES_PER_SECOND, max(MIN_WINDOW_SECONDS, seconds))


def make_backbones(root: Path, frames: int = FRAMES) -> tuple[Path, Path]:
    """Random tiny Whisper (``frames`` encoder frames a window) + Qwen3 checkpoints (:func:`learnable_llm`)."""
    whisper, llm = root / "whisper", root / "llm"
    testing.write_random_whisper(whisper, {**testing.TINY_WHISPER, "max_source_positions": frames}, seed=0)
    testing.write_random_llm(llm, LLM_CONFIG, seed=0)
    state = load_file(str(llm / "model.safetensors"))
    save_file(learnable_llm(state), str(llm / "model.safetensors"))
    return whisper, llm


def learnable_llm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The random LLM's tensors (any key prefix) with the token embedding rescaled to std ``EMBED_STD`` and the
    q/k norms scaled by ``QK_NORM_SCALE`` (see the module docstring); in place, dtypes kept."""
    for key, t in state.items():
        if key.endswith("embed_tokens.weight"):
            state[key] = (t.float() * (EMBED_STD / t.float().std())).to(t.dtype)
        elif key.endswith(("q_norm.weight", "k_norm.weight")):
            state[key] = (t.float() * QK_NORM_SCALE).to(t.dtype)
    return state


def make_canary(root: Path) -> Path:
    """A random tiny Canary-Qwen in the hub layout (``root/canary``): :data:`TINY_FASTCONFORMER`, the tiny Qwen3
    (:func:`learnable_llm`) in ``llm_backbone/``, a :data:`CANARY_LORA` adapter whose ``lora_B`` starts at zero."""
    ckpt = root / "canary"
    cfg = testing.tiny_salm_config(testing.write_llm_dir(ckpt / LLM_BACKBONE_DIR, LLM_CONFIG), **TINY_FASTCONFORMER)
    cfg["pretrained_llm"] = LLM_BACKBONE_DIR  # resolved beside the checkpoint, so the directory can move
    cfg["lora"].update(CANARY_LORA)
    testing.write_checkpoint(ckpt, cfg, LLM_CONFIG)
    state = learnable_llm(load_file(str(ckpt / WEIGHTS_FILE)))
    for key, t in state.items():
        if ".lora_B." in key:
            state[key] = torch.zeros_like(t)
        elif key.startswith(ENCODER_LAYERS) and any(f".{name}." in key for name in ENCODER_BRANCH_OUTPUTS):
            state[key] = (t.float() * testing.RANDOM_BRANCH_SCALE).to(t.dtype)
    save_file(state, str(ckpt / WEIGHTS_FILE))
    return ckpt


def write_configs(root: Path, manifest: Path, utterances: int, backbones: dict[str, str], threads: int,
                  architecture: str = "whisper_llm") -> dict[int, Path]:
    """``root/stage1.json``, ``root/stage2.json`` (and for canary_qwen ``root/stage3.json``): the runs as TrainConfig
    files with absolute paths; each stage starts from the model the one before saves (``root/stage1/model``...).
    ``backbones``: stage 1's sources (``whisper`` and ``llm``, or a Canary-Qwen ``model``)."""
    root = root.resolve()
    sources = {1: {k: str(Path(v).resolve()) for k, v in backbones.items()},
               2: {"model": str(root / "stage1" / FINAL_MODEL_DIR), "max_steps": stage2_steps(utterances)}}
    if architecture == "canary_qwen":
        sources[3] = {"model": str(root / "stage2" / FINAL_MODEL_DIR)}
    paths = {}
    for stage, source in sources.items():
        stage_cfg = stage_settings(stage, architecture)
        raw = {"architecture": architecture, "train_manifest": str(manifest.resolve()),
               "output_dir": str(root / f"stage{stage}"), **COMMON, **stage_cfg, **source, "threads": threads}
        TrainConfig.from_dict(raw)  # fail here, not in the follow-up command
        paths[stage] = root / f"stage{stage}.json"
        paths[stage].write_text(json.dumps(raw, indent=1) + "\n")
    return paths


def stage_settings(stage: int, architecture: str) -> dict:
    """A stage's TrainConfig fields beyond COMMON; canary_qwen's stage 3 starts from stage 2's (its max_steps wins)."""
    if architecture != "canary_qwen":
        return STAGES[stage]
    return {k: v for k, v in STAGES[min(stage, 2)].items() if k not in WHISPER_ONLY} | CANARY_STAGES[stage]


def run_stage(stage: int, config: Path, manifest: Path, root: Path) -> dict:
    cfg = load_train_config(config)
    t0 = time.perf_counter()
    result = train(cfg)
    train_wall = time.perf_counter() - t0
    model = from_pretrained(result.model_dir)
    scores = evaluate(model, manifest, root / f"stage{stage}_predictions.jsonl", batch_size=16,
                      max_new_tokens=MAX_NEW_TOKENS)
    print(f"stage {stage}: loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f} in {result.steps} steps, "
          f"{train_wall:.0f} s; training-set WER {100 * scores.wer:.1f} %, CER {100 * scores.cer:.1f} %")
    keys = {*STAGES[min(stage, 2)], *CANARY_STAGES[stage], *COMMON, "max_steps"}
    return {"config": {k: v for k, v in asdict(cfg).items() if k in keys},
            "losses": result.losses, "loss_first5": _mean(result.losses[:5]), "loss_last5": _mean(result.losses[-5:]),
            "train_seconds": round(train_wall, 1), "wer": scores.wer, "cer": scores.cer,
            "eval_rtfx": round(scores.rtfx, 2), "model_dir": str(result.model_dir)}


def follow_up(configs: dict[int, Path], manifest: Path) -> str:
    """The commands that train every stage from the written configs and score the last one on the manifest."""
    q = shlex.quote
    cfg = load_train_config(configs[max(configs)])
    threads = f" --threads {cfg.threads}" if cfg.threads else ""
    return "\n".join([*(f"nemo-lite train --config {q(str(path))}" for path in configs.values()),
                      f"nemo-lite eval {q(str(manifest))} --model {q(str(Path(cfg.output_dir) / FINAL_MODEL_DIR))}"
                      f"{threads}"])


def _mean(values: list[float]) -> float:
    return round(sum(values) / max(1, len(values)), 4)


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0
    for stage, run in report["stages"].items():
        losses = run["losses"]
        steps = range(offset + 1, offset + len(losses) + 1)
        line, = ax.plot(steps, losses, alpha=0.25, linewidth=0.5)  # per step (batch 1 in stage 2: noisy)
        smooth = [_mean(losses[max(0, i - SMOOTH_STEPS + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, color=line.get_color(),
                label=f"stage {stage}, mean of {SMOOTH_STEPS} steps (WER after: {100 * run['wer']:.1f} %)")
        offset += len(losses)
    ax.set_xlabel("optimizer step (each stage continues from the one before)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_yscale("log")
    encoder = "FastConformer (trained)" if report.get("architecture") == "canary_qwen" else "Whisper"
    ax.set_title(f"Tiny random {encoder} + Qwen3 on synthetic espeak-ng speech (CPU)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=("whisper_llm", "canary_qwen"), default="whisper_llm",
                        help="whisper_llm (default): frozen random Whisper + Qwen3; canary_qwen: random FastConformer "
                        "(trained) + Qwen3 in the Canary-Qwen checkpoint layout")
    parser.add_argument("--work", default="/tmp/nemo_lite_synthetic", help="data, configs, checkpoints and models")
    parser.add_argument("--manifest", help="train on this NeMo JSONL manifest (audio_filepath relative to it or "
                        "absolute, text, optional duration) instead of making the espeak-ng set")
    parser.add_argument("--prepare-only", action="store_true", help="only write the backbones and WORK/stage1.json, "
                        "WORK/stage2.json, and print the nemo-lite commands that train and score them")
    parser.add_argument("--docs", help="where training_curves.json/.png go (default: docs, or WORK with --manifest)")
    parser.add_argument("--frames", type=int, help="encoder frames per window, 50 a second (default: 1500, Whisper's "
                        "30 s; with --manifest the shortest 2 s step above its longest clip + 1 s, at least 4 s)")
    parser.add_argument("--plot-only", metavar="JSON", help="only redraw JSON's PNG beside it (training_curves.json "
                        "holds every loss; seconds, no training)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; 1 is fastest for these tiny models, "
                        "and far faster when other processes share the cores (OpenMP threads spin-wait)")
    args = parser.parse_args()
    if args.plot_only:
        report_path = Path(args.plot_only)
        plot(json.loads(report_path.read_text()), report_path.with_suffix(".png"))
        return
    root = Path(args.work).resolve()
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    manifest = Path(args.manifest).resolve() if args.manifest else make_dataset(root)
    items = read_manifest(manifest)  # also checks every line and audio file before any training
    longest = max(u.duration for u in items)
    if longest > FRAMES / FRAMES_PER_SECOND:
        raise SystemExit(f"{manifest}: a {longest:.1f} s clip; training takes clips of at most 30 s (one window)")
    canary = args.architecture == "canary_qwen"
    frames = args.frames or (window_frames(longest) if args.manifest else FRAMES)
    if canary:
        backbones = {"model": make_canary(root)}
    else:
        whisper, llm = make_backbones(root, frames)
        backbones = {"whisper": whisper, "llm": llm}
    configs = write_configs(root, manifest, len(items), backbones, args.threads, args.architecture)
    window = "clips unpadded" if canary else f"{frames / FRAMES_PER_SECOND:g} s windows"
    if args.prepare_only:
        print(f"{len(items)} utterances (longest {longest:.1f} s), {window}; backbones "
              f"in {root}; stage 2 runs {stage2_steps(len(items))} steps. Next:")
        print(follow_up(configs, manifest))
        return
    docs = Path(args.docs or (root if args.manifest else "docs"))
    docs.mkdir(parents=True, exist_ok=True)
    report = {"architecture": args.architecture, "utterances": len(items), "threads": args.threads,
              "embed_std": EMBED_STD, "qk_norm_scale": QK_NORM_SCALE, "stages": {}}
    if canary:
        report.update(encoder=TINY_FASTCONFORMER, lora=CANARY_LORA)
    else:
        report.update(window_frames=frames, window_seconds=frames / FRAMES_PER_SECOND)
    for stage, config in configs.items():
        report["stages"][str(stage)] = run_stage(stage, config, manifest, root)
    report["total_seconds"] = round(time.perf_counter() - t0, 1)
    curves = docs / ("training_curves_canary_qwen.json" if canary else "training_curves.json")
    curves.write_text(json.dumps(report, indent=1))
    try:
        plot(report, curves.with_suffix(".png"))
    except ImportError:
        print("matplotlib is not installed: no PNG written (pip install matplotlib)")
    print(f"total {report['total_seconds']:.0f} s; curves in {curves}")


if __name__ == "__main__":
    main()
