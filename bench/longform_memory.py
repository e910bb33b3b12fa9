"""Long-form transcription cost on the tiny random model: wall time and peak RSS against recording length.

Each duration runs in a fresh subprocess (so peak RSS, ``ru_maxrss``, is that run's alone) on synthetic speech-like
audio (noise bursts of 0.3-3 s separated by 0.1-0.8 s near-silent pauses), built in place in float32 so no
temporary copy inflates the peak. Reported: transcribe wall time, peak RSS, the audio array's own size, and peak
RSS minus audio minus the RSS measured after loading the model: that last column must stay flat as length grows.

Each length also runs with glibc's mmap threshold pinned at 1 MiB (``MALLOC_MMAP_THRESHOLD_``): with the default
dynamic threshold, big tensors of slightly different shapes (one batch of windows after another) come from the heap
and fragment it, so peak RSS creeps up by tens of MiB over many batches although nothing is kept. Pinned, large
tensors are mmapped and returned on free, which shows what the code itself holds.

    python bench/longform_memory.py                 # 1, 10 and 60 min
    python bench/longform_memory.py --minutes 1 5   # other lengths
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

import numpy as np

SAMPLE_RATE = 16000
ALLOCATORS = {"glibc default": {}, "mmap threshold 1 MiB": {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}}


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


def child(ckpt: str, seconds: float, max_new_tokens: int, batch_size: int, threads: int) -> None:
    import torch

    from nemo_lite import CanaryQwen

    torch.set_num_threads(threads)

    model = CanaryQwen.from_pretrained(ckpt)
    model.transcribe(np.zeros(SAMPLE_RATE, dtype=np.float32), max_new_tokens=max_new_tokens)  # warm-up
    base = rss_mb()
    audio = speechlike(seconds)
    t0 = time.perf_counter()
    result = model.transcribe(audio, timestamps=True, max_new_tokens=max_new_tokens, batch_size=batch_size)
    wall = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "wall": wall, "peak": rss_mb(), "base": base,
                      "audio_mb": audio.nbytes / 2**20, "windows": len(result.segments)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, nargs="+", default=[1, 10, 60])
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier timings on a busy box)")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.ckpt, args.child, args.max_new_tokens, args.batch_size, args.threads)
        return

    from nemo_lite.testing import tiny_salm_config, write_checkpoint, write_llm_dir

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_checkpoint(tmp, tiny_salm_config(write_llm_dir(f"{tmp}/llm")))
        for allocator, env in ALLOCATORS.items():
            for minutes in args.minutes:
                cmd = [sys.executable, __file__, "--child", str(minutes * 60), "--ckpt", tmp,
                       "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(args.batch_size),
                       "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, **env})
                rows.append((allocator, json.loads(out.stdout.strip().splitlines()[-1])))
    print(f"tiny model, max_new_tokens={args.max_new_tokens}, batch_size={args.batch_size}, {args.threads} torch "
          "thread(s), 40 s windows\n")
    print("| malloc | audio | windows | wall (s) | s per audio min | peak RSS (MiB) | audio array (MiB) "
          "| peak - audio - after-load RSS (MiB) |")
    print("|---|---|---|---|---|---|---|---|")
    for allocator, r in rows:
        minutes = r["seconds"] / 60
        extra = r["peak"] - r["audio_mb"] - r["base"]
        print(f"| {allocator} | {minutes:g} min | {r['windows']} | {r['wall']:.1f} | {r['wall'] / minutes:.2f} "
              f"| {r['peak']:.0f} | {r['audio_mb']:.0f} | {extra:.0f} |")


if __name__ == "__main__":
    main()
