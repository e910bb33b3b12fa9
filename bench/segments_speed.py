"""Transcription time with speech segments (VAD) against fixed windows, on recordings with a known share of
non-speech, and peak memory of a long file against a 40 s clip (issue 12's long-form guarantees).

Recordings are composed from the espeak-ng sentences in tests/data/vad (``nemo_lite.vad_fixtures``): sentences
apart by silences sized so that a given share of the file is silence, written to a WAV file and transcribed from
the file (the streamed path). Both modes run interleaved in one process, best of ``--repeats``; the load average is
printed beside the figures (the machine is shared). With ``--ckpt`` a real (or full-size random) checkpoint is
used, else a tiny random one.

    python bench/segments_speed.py [--ckpt DIR] [--minutes 10] [--silence 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from nemo_lite import CanaryQwen, testing
from nemo_lite.vad_fixtures import Sentences, compose

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "vad"
SR = 16000


def recording(minutes: float, silence_share: float, seed: int = 0) -> np.ndarray:
    """Sentences in random order, each followed by silence so that ``silence_share`` of the total is silence."""
    sents = Sentences.load(DATA)
    rng = np.random.default_rng(seed)
    parts, total = [], 0.0
    while total < minutes * 60:
        name = sents.names[int(rng.integers(len(sents.names)))]
        speech = len(sents.audio[name]) / SR
        gap = speech * silence_share / max(1e-9, 1 - silence_share)
        parts += [("speech", name), ("silence", gap)]
        total += speech + gap
    return compose(parts, sents, seed).audio


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", help="checkpoint dir (default: a tiny random one)")
    p.add_argument("--llm-path")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--silence", type=float, nargs="+", default=[0.0, 0.5], help="shares of silence to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=8)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp())
    ckpt = args.ckpt or testing.write_checkpoint(work / "ckpt", testing.tiny_salm_config(
        testing.write_llm_dir(work / "llm", testing.TINY_QWEN3)))
    model = CanaryQwen.from_pretrained(ckpt, llm_path=args.llm_path)
    print(f"load average before: {os.getloadavg()[0]:.2f}; threads {args.threads}; ckpt {ckpt}")
    print("| silence share | audio (min) | mode | segments/windows | decoded audio (min) | wall (s) | RTFx |")
    print("|---|---|---|---|---|---|---|")
    for share in args.silence:
        path = work / f"rec_{share}.wav"
        sf.write(path, recording(args.minutes, share), SR)
        best: dict[str, tuple[float, object]] = {}
        for _ in range(args.repeats):
            for mode in ("vad", "fixed"):  # interleaved
                t0 = time.perf_counter()
                out = model.transcribe(str(path), timestamps=True, segmentation=mode,
                                       max_new_tokens=args.max_new_tokens)
                wall = time.perf_counter() - t0
                if mode not in best or wall < best[mode][0]:
                    best[mode] = (wall, out)
        for mode, (wall, out) in best.items():
            decoded = sum(s.end - s.start for s in out.segments) / 60
            print(f"| {share:.0%} | {out.duration / 60:.1f} | {mode} | {len(out.segments)} | {decoded:.1f} | "
                  f"{wall:.2f} | {out.duration / wall:.0f} |")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
