"""Long-form transcription cost on the tiny random model: wall time and peak RSS against recording length.

Each duration runs in a fresh subprocess (so peak RSS, ``ru_maxrss``, is that run's alone) on synthetic speech-like
audio (noise bursts of 0.3-3 s separated by 0.1-0.8 s near-silent pauses, generated a minute at a time), in two
modes. ``file`` (the realistic case): the audio is written to a 16 kHz PCM-16 WAV and transcribed by path, so it is
scanned once and decoded again window by window, never held whole. ``array``: it is built in place in one float32
array (no temporary copy inflates the peak) and transcribed from memory. Reported: transcribe wall time, peak RSS,
the RSS after loading the model, the audio held in memory (the array; nothing for a file), peak RSS minus that RSS
minus the audio held (what transcription itself adds: must stay flat as length grows), and the peak relative to
the shortest length's peak in the same mode and allocator (the first length is one window, 0.66 min = 40 s).

Each length also runs with glibc's mmap threshold pinned at 1 MiB (``MALLOC_MMAP_THRESHOLD_``): with the default
dynamic threshold, big tensors of slightly different shapes (one batch of windows after another) come from the heap
and fragment it, so peak RSS creeps up by tens of MiB over many batches although nothing is kept. Pinned, large
tensors are mmapped and returned on free, which shows what the code itself holds.

    python bench/longform_memory.py                                  # 0.66, 10 and 60 min, both modes and mallocs
    python bench/longform_memory.py --minutes 1 5 --mode file --malloc default
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np

SAMPLE_RATE = 16000
ALLOCATORS = {"default": {}, "mmap 1 MiB": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}}  # glibc's, or threshold pinned
MODES = ("file", "array")
PIECE_SECONDS = 60.0  # audio generated (and written) a minute at a time


def rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """float32 audio: bursts of noise (0.3-3 s) separated by near-silent pauses (0.1-0.8 s), built in place."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    audio = np.empty(n, dtype=np.float32)
    pos, loud = 0, True
    while pos < n:
        length = int(SAMPLE_RATE * (rng.uniform(0.3, 3.0) if loud else rng.uniform(0.1, 0.8)))
        end = min(n, pos + length)
        rng.standard_normal(end - pos, dtype=np.float32, out=audio[pos:end])
        audio[pos:end] *= 0.2 if loud else 0.002
        pos, loud = end, not loud
    return audio


def speechlike_pieces(seconds: float) -> Iterator[np.ndarray]:
    """The benchmark recording, a minute at a time (seed = minute index, so both modes get the same audio)."""
    total, pos, k = int(seconds * SAMPLE_RATE), 0, 0
    while pos < total:
        piece = speechlike(min(PIECE_SECONDS, (total - pos) / SAMPLE_RATE), seed=k)
        yield piece
        pos, k = pos + len(piece), k + 1


def write_wav(path: str, seconds: float) -> None:
    import soundfile as sf

    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as f:
        for piece in speechlike_pieces(seconds):
            f.write(piece)


def child(ckpt: str, seconds: float, mode: str, wav: str, max_new_tokens: int, batch_size: int,
          threads: int) -> None:
    import torch

    from nemo_lite import CanaryQwen

    torch.set_num_threads(threads)

    model = CanaryQwen.from_pretrained(ckpt)
    model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), max_new_tokens=max_new_tokens)  # warm-up
    base = rss_mb()
    if mode == "file":
        audio, held = wav, 0.0
    else:
        audio = np.empty(int(seconds * SAMPLE_RATE), dtype=np.float32)
        pos = 0
        for piece in speechlike_pieces(seconds):
            audio[pos:pos + len(piece)] = piece
            pos += len(piece)
        held = audio.nbytes / 2**20
    t0 = time.perf_counter()
    result = model.transcribe(audio, timestamps=True, max_new_tokens=max_new_tokens, batch_size=batch_size)
    wall = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "wall": wall, "peak": rss_mb(), "base": base, "held_mb": held,
                      "windows": len(result.segments)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[0.66, 10, 60])
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both", help="transcribe a WAV path or an array")
    parser.add_argument("--malloc", choices=[*ALLOCATORS, "both"], default="both")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a busy box)")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--wav", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.ckpt, args.child, args.mode, args.wav, args.max_new_tokens, args.batch_size, args.threads)
        return

    from nemo_lite.testing import tiny_salm_config, write_checkpoint, write_llm_dir

    modes = MODES if args.mode == "both" else (args.mode,)
    allocators = list(ALLOCATORS) if args.malloc == "both" else [args.malloc]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(tmp, tiny_salm_config(write_llm_dir(f"{tmp}/llm")))
        for minutes in args.minutes:
            wav = f"{tmp}/speech_{minutes:g}min.wav"
            if "file" in modes:
                write_wav(wav, minutes * 60)
            for mode in modes:
                for allocator in allocators:
                    cmd = [sys.executable, __file__, "--child", str(minutes * 60), "--ckpt", tmp, "--mode", mode,
                           "--wav", wav, "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
                           str(args.batch_size), "--threads", str(args.threads)]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                         env={**os.environ, **ALLOCATORS[allocator]})
                    rows.append((mode, allocator, json.loads(out.stdout.strip().splitlines()[-1])))
            if "file" in modes:
                os.remove(wav)
    print(f"tiny model, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, {args.threads} torch "
          "thread(s), 40 s windows\n")
    print("| mode | malloc | audio | windows | wall (s) | s per audio min | peak RSS (MiB) | after-load RSS (MiB) "
          "| audio held (MiB) | peak - after-load - held (MiB) | peak vs shortest |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    first: dict[tuple[str, str], float] = {}
    for mode, allocator, r in sorted(rows, key=lambda row: (MODES.index(row[0]), row[1])):
        minutes = r["seconds"] / 60
        ref = first.setdefault((mode, allocator), r["peak"])
        extra = r["peak"] - r["base"] - r["held_mb"]
        print(f"| {mode} | {allocator} | {minutes:g} min | {r['windows']} | {r['wall']:.1f} "
              f"| {r['wall'] / minutes:.2f} | {r['peak']:.0f} | {r['base']:.0f} | {r['held_mb']:.0f} | {extra:.0f} "
              f"| {100 * (r['peak'] / ref - 1):+.1f}% |")


if __name__ == "__main__":
    main()
