"""Corpus-job throughput: one process vs torchrun vs Ray on the same manifest, and whether they write the same file.

Builds (or reuses) a checkpoint and a manifest of ~200 entries: noise clips (16 kHz wav and 44.1 kHz stereo flac),
``offset``/``duration`` slices of a longer file, and bad inputs (missing, not audio, empty, a slice past the end).
Then runs ``nemo-lite transcribe MANIFEST --output-manifest OUT`` as one process, under ``torchrun
--nproc_per_node N`` and with ``--ray --workers N``, each process with one thread, best of ``--repeats``, and
prints a markdown table: end-to-end wall time (interpreter start, model load, Ray cluster start included),
audio seconds per wall second, and the throughput the command itself reports (after the model load; Ray: from
the cluster start). Finally it checks that every run wrote the same bytes.

    python bench/corpus_bench.py --work /tmp/corpus_bench                     # tiny random checkpoint
    python bench/corpus_bench.py --work /tmp/cb --ckpt /tmp/full/ckpt --dtype bfloat16 --clips 24
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile as sf


def build(work: Path, clips: int, seed: int = 0) -> Path:
    """The manifest: ``clips`` noise clips of 1-5 s, 6 slices of a 60 s file, 4 bad inputs; returns its path."""
    audio = work / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines: list[dict] = []
    for i in range(clips):
        seconds = 1.0 + 4.0 * rng.random()
        if i % 7 == 6:
            sf.write(audio / f"c{i}.flac", (0.1 * rng.standard_normal((int(44100 * seconds), 2))).astype(np.float32),
                     44100)
            lines.append({"audio_filepath": f"audio/c{i}.flac", "text": f"clip {i}"})
        else:
            sf.write(audio / f"c{i}.wav", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
            lines.append({"audio_filepath": f"audio/c{i}.wav", "duration": round(seconds, 3), "text": f"clip {i}"})
    sf.write(audio / "long.flac", (0.1 * rng.standard_normal(16000 * 60)).astype(np.float32), 16000)
    for k in range(6):
        lines.insert(7 * k + 3, {"audio_filepath": "audio/long.flac", "offset": 9.5 * k, "duration": 4.0})
    (audio / "notes.wav").write_text("not audio\n")
    (audio / "empty.wav").write_bytes(b"")
    lines[20:20] = [{"audio_filepath": "audio/missing.wav"}, {"audio_filepath": "audio/notes.wav"}]
    lines[90:90] = [{"audio_filepath": "audio/empty.wav"},
                    {"audio_filepath": "audio/long.flac", "offset": 70.0, "duration": 1.0}]
    path = work / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run(cmd: list[str], env: dict) -> tuple[float, str, int]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    return time.perf_counter() - t0, done.stderr, done.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, default=Path("bench/results/corpus"))
    p.add_argument("--ckpt", type=Path, help="checkpoint directory (default: a tiny random one in --work)")
    p.add_argument("--clips", type=int, default=190)
    p.add_argument("--procs", type=int, default=2, help="processes for torchrun / Ray workers")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", help="--dtype for the model")
    p.add_argument("--runners", nargs="+", default=["one", "torchrun", "ray"])
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.ckpt is None:
        from nemo_lite import testing

        llm = testing.write_llm_dir(args.work / "llm", testing.TINY_QWEN3)
        args.ckpt = testing.write_checkpoint(args.work / "ckpt", testing.tiny_salm_config(llm))
    manifest = build(args.work, args.clips)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    flags = ["--model", str(args.ckpt), "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
             str(args.batch_size), "--quiet", "--overwrite"] + (["--dtype", args.dtype] if args.dtype else [])
    cli = [sys.executable, "-m", "nemo_lite.cli", "transcribe", str(manifest)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.procs)]
    commands = {
        "one": ("1 process", lambda out: [*cli, "--output-manifest", str(out), *flags]),
        "torchrun": (f"torchrun, {args.procs} processes",
                     lambda out: [*torchrun, *cli[1:], "--output-manifest", str(out), *flags]),
        "ray": (f"Ray, {args.procs} workers",
                lambda out: [*cli, "--output-manifest", str(out), "--ray", "--workers", str(args.procs), *flags]),
    }
    rows, outputs = [], {}
    for name in args.runners:
        label, make = commands[name]
        out = args.work / f"out_{name}.jsonl"
        best = None
        for _ in range(args.repeats):
            load = os.getloadavg()[0]
            wall, err, code = run(make(out), env)
            m = re.search(r"transcribed \((\d+) in this run, ([\d.]+) s of audio in ([\d.]+) s wall time", err)
            if m is None:
                sys.exit(f"{label} failed (exit {code}):\n{err[-3000:]}")
            audio, inner = float(m.group(2)), float(m.group(3))
            if best is None or wall < best[0]:
                best = (wall, audio, inner, load)
        assert best is not None
        wall, audio, inner, load = best
        rows.append(f"| {label} | {wall:.1f} | {audio / wall:.1f} | {inner:.1f} | {audio / inner:.1f} | {load:.1f} |")
        outputs[name] = out.read_bytes()
    n = len(manifest.read_text().splitlines())
    print(f"{n} inputs, {audio:.0f} s of audio, checkpoint {args.ckpt.name}, best of {args.repeats}\n")
    print("| runner | wall (s) | audio s / wall s | reported wall (s) | reported audio s / s | load avg (1 min) |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    same = len(set(outputs.values())) == 1
    print(f"\nidentical output manifests: {same} ({', '.join(outputs)})")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
