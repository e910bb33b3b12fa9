"""Measure voice-activity detection and segmentation on synthetic recordings with known speech (docs/vad.md).

    OMP_NUM_THREADS=1 python scripts/measure_vad.py [--sweeps] [--speed] [--memory MINUTES]

``--sweeps``: boundary errors and segment lengths as VadOptions / SegmentationOptions vary, on recordings composed
from tests/data/vad (sentences separated by 0.6-4 s silences, noise bursts and tones; a "tight" set with 0.2-1 s
gaps; a "run-on" set with 0.1-0.25 s gaps, one long region to split; a "noisy" set: the first under a -40 dBFS
white-noise floor). The model runs once per recording; the
options are applied to its probabilities. ``--speed``: real-time factor of the VAD alone on a 10-minute recording
at one thread (ours, and the package's jit model called per chunk on its first minute). ``--memory``: peak extra
resident memory of the streaming detector over a recording of that many minutes made piece by piece on the fly.
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from nemo_lite.audio import SAMPLE_RATE
from nemo_lite.segmentation import SegmentationOptions, segment
from nemo_lite.vad import CHUNK, VadOptions, VoiceDetector, jit_path, load_vad_model, regions_from_probs
from nemo_lite.vad_fixtures import Recording, Sentences, conversation

DATA = Path(__file__).resolve().parent.parent / "tests/data/vad"
TOL = 0.3 * SAMPLE_RATE  # the tests' boundary tolerance


def boundary_errors(truth: list[tuple[int, int]], found: list[tuple[int, int]]) -> dict:
    """Per true region: start error of the first overlapping found region, end error of the last (seconds);
    how many true regions are missed, split in several, and how many found regions touch no speech."""
    starts, ends, missed, split = [], [], 0, 0
    for a, b in truth:
        over = [(x, y) for x, y in found if x < b and y > a]
        if not over:
            missed += 1
            continue
        split += len(over) > 1
        starts.append((over[0][0] - a) / SAMPLE_RATE)
        ends.append((over[-1][1] - b) / SAMPLE_RATE)
    false = sum(not any(x < b and y > a for a, b in truth) for x, y in found)
    return {"start": np.array(starts), "end": np.array(ends), "missed": missed, "split": split, "false": false}


def criterion(truth: list[tuple[int, int]], segs: list[tuple[int, int]]) -> float:
    """Fraction of true regions whose start is within 0.3 s of a segment start and end within 0.3 s of a segment
    end, or that lie inside one segment (what tests/test_vad.py checks)."""
    ok = 0
    for a, b in truth:
        inside = any(x <= a and b <= y for x, y in segs)
        near = any(abs(x - a) <= TOL for x, _ in segs) and any(abs(y - b) <= TOL for _, y in segs)
        ok += inside or near
    return ok / max(1, len(truth))


def coverage(rec: Recording, segs: list[tuple[int, int]]) -> tuple[float, float]:
    """(fraction of true speech samples inside segments, seconds of non-speech inside segments per segment)."""
    inside = np.zeros(len(rec.audio), bool)
    for x, y in segs:
        inside[x:y] = True
    speech = np.zeros(len(rec.audio), bool)
    for a, b in rec.speech:
        speech[a:b] = True
    return inside[speech].mean(), (inside & ~speech).sum() / SAMPLE_RATE / max(1, len(segs))


def sets(sentences: Sentences) -> dict[str, list[Recording]]:
    return {
        "spaced": [conversation(sentences, 120, seed=s, noise_every=3) for s in range(4)],
        "tight": [conversation(sentences, 120, seed=10 + s, gaps=(0.2, 1.0)) for s in range(2)],
        "run-on": [conversation(sentences, 120, seed=20 + s, gaps=(0.1, 0.25)) for s in range(2)],
        "noisy": [conversation(sentences, 120, seed=30 + s, noise_every=3, floor_dbfs=-40.0) for s in range(2)],
    }


def sweeps(sentences: Sentences) -> None:
    model = load_vad_model()
    recs = sets(sentences)
    probs = {k: [_probs(model, r) for r in v] for k, v in recs.items()}

    n_true = sum(len(r.speech) for k in ("spaced", "tight") for r in recs[k])
    print(f"\n## VAD options (spaced + tight sets: {n_true} true regions)")
    print("| onset/offset | min_silence s | start err mean/min/max s | end err mean/max s | split | missed | false |")
    print("|---|---|---|---|---|---|---|")
    for onset in (0.3, 0.5, 0.7):
        for ms in (0.1, 0.2, 0.3, 0.5):
            opts = VadOptions(onset=onset, offset=onset - 0.15, min_silence_seconds=ms)
            e = _merge([boundary_errors(r.speech, regions_from_probs(p, len(r.audio), opts))
                        for k in ("spaced", "tight") for r, p in zip(recs[k], probs[k], strict=True)])
            print(f"| {onset}/{onset - 0.15:.2f} | {ms} | {e['start'].mean():+.3f} / {e['start'].min():+.3f} / "
                  f"{e['start'].max():+.3f} | {e['end'].mean():+.3f} / {e['end'].max():+.3f} | {e['split']} | "
                  f"{e['missed']} | {e['false']} |")

    vad = VadOptions()
    base = SegmentationOptions()
    print("\n## Segmentation options (default VAD)")
    print("| set | options | criterion | speech covered | non-speech s/segment | segments | <1 s | "
          "length median/p90/max s |")
    print("|---|---|---|---|---|---|---|---|")
    variants = [("default", base)]
    variants += [(f"pad={p}", replace(base, pad_seconds=p)) for p in (0.0, 0.1, 0.3, 0.5)]
    variants += [(f"min_segment={m}", replace(base, min_segment_seconds=m)) for m in (0.0, 0.5, 2.0)]
    variants += [(f"merge_gap={g}", replace(base, merge_gap_seconds=g)) for g in (0.5, 2.0)]
    variants += [(f"max_segment={m}", replace(base, max_segment_seconds=m)) for m in (10.0, 30.0)]
    for name, rs in recs.items():
        for label, opts in variants if name != "noisy" else variants[:1]:
            crit, cov, extra, lengths = [], [], [], []
            for r, p in zip(rs, probs[name], strict=True):
                segs = segment(regions_from_probs(p, len(r.audio), vad), p, len(r.audio), opts)
                crit.append(criterion(r.speech, segs))
                c, x = coverage(r, segs)
                cov.append(c)
                extra.append(x)
                lengths += [(y - x) / SAMPLE_RATE for x, y in segs]
            ln = np.array(lengths)
            print(f"| {name} | {label} | {np.mean(crit):.3f} | {np.mean(cov):.4f} | {np.mean(extra):.2f} | "
                  f"{len(ln)} | {(ln < 1).sum()} | {np.median(ln):.1f} / {np.quantile(ln, 0.9):.1f} / "
                  f"{ln.max():.1f} |")

    print("\n## Where run-on regions are cut (default VAD; a cut is 'in a gap' if it lies between two sentences)")
    for m in (10.0, 20.0, 30.0):
        opts = replace(base, max_segment_seconds=m)
        in_gap = total = 0
        for r, p in zip(recs["run-on"], probs["run-on"], strict=True):
            segs = segment(regions_from_probs(p, len(r.audio), vad), p, len(r.audio), opts)
            for (_, y), (x, _) in zip(segs, segs[1:], strict=False):
                cut = (x + y) // 2
                total += 1
                in_gap += any(b <= cut <= a2 for (_, b), (a2, _) in zip(r.speech, r.speech[1:], strict=False))
        print(f"max_segment={m}: {in_gap}/{total} cuts in gaps between sentences")


def _probs(model, rec: Recording) -> np.ndarray:
    det = VoiceDetector(VadOptions(), model).feed(rec.audio)
    det.finish()
    return det.probabilities


def _merge(errs: list[dict]) -> dict:
    return {k: np.concatenate([e[k] for e in errs]) if isinstance(errs[0][k], np.ndarray) else sum(e[k] for e in errs)
            for k in errs[0]}


def speed(sentences: Sentences) -> None:
    model = load_vad_model()
    rec = conversation(sentences, 600, seed=5, noise_every=3)
    best = []
    for _ in range(3):
        t = time.perf_counter()
        det = VoiceDetector(VadOptions(), model)
        for i in range(0, len(rec.audio), 1 << 16):  # the pieces FileAudio.pieces() yields: 4 s
            det.feed(rec.audio[i:i + (1 << 16)])
        det.finish()
        best.append(time.perf_counter() - t)
    print(f"ours: {rec.seconds:.0f} s in {min(best):.2f} s (best of 3): RTFx {rec.seconds / min(best):.0f}, "
          f"threads {torch.get_num_threads()}")
    jit = torch.jit.load(str(jit_path()))
    minute = rec.audio[:60 * SAMPLE_RATE]
    best = []
    with torch.inference_mode():
        for _ in range(3):
            jit.reset_states()
            t = time.perf_counter()
            for i in range(0, len(minute) - CHUNK + 1, CHUNK):
                jit(torch.from_numpy(minute[i:i + CHUNK]), SAMPLE_RATE)
            best.append(time.perf_counter() - t)
    print(f"silero jit per chunk: 60 s in {min(best):.2f} s (best of 3): RTFx {60 / min(best):.0f}")


def memory(sentences: Sentences, minutes: float) -> None:
    """Feed ``minutes`` of audio, 4 s at a time, made as it goes (the source holds nothing)."""
    model = load_vad_model()
    det = VoiceDetector(VadOptions(), model)
    det.feed(conversation(sentences, 8, seed=0).audio)  # warm up allocators before the baseline
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size (VmHWM)
    base = _rss_kb()
    det = VoiceDetector(VadOptions(), model)
    marks, seed, fed = [], 100, 0.0
    while fed < minutes * 60:
        part = conversation(sentences, 60, seed=seed).audio  # ~1 minute, fed in 4 s pieces
        seed += 1
        for i in range(0, len(part), 1 << 16):
            det.feed(part[i:i + (1 << 16)])
        fed += len(part) / SAMPLE_RATE
        if int(fed // 600) > len(marks):
            marks.append((fed / 60, (_peak_kb() - base) / 1024, (_rss_kb() - base) / 1024))
    det.finish()
    print(f"{fed / 60:.1f} min fed; peak extra RSS {(_peak_kb() - base) / 1024:.1f} MB; "
          f"probabilities held {det.probabilities.nbytes / 1e6:.2f} MB; regions {len(det.regions)}")
    print("extra RSS every 10 minutes (peak so far / now): "
          + ", ".join(f"{m:.0f} min {peak:.1f}/{now:.1f} MB" for m, peak, now in marks))


def _rss_kb() -> int:
    return int(next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS")).split()[1])


def _peak_kb() -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) if line else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", action="store_true")
    parser.add_argument("--speed", action="store_true")
    parser.add_argument("--memory", type=float, default=0.0, help="minutes of audio to stream (e.g. 60)")
    args = parser.parse_args()
    sentences = Sentences.load(DATA)
    if args.sweeps:
        sweeps(sentences)
    if args.speed:
        speed(sentences)
    if args.memory:
        memory(sentences, args.memory)


if __name__ == "__main__":
    main()
