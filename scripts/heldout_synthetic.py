"""A held-out espeak-ng set for the tiny Canary-Qwen of ``scripts/train_synthetic.py``: its training set saturates
(0 % WER in every mode), so the modes' fidelity needs clips the model never heard (GitHub issue 16).

The clips say the same ``SENTENCES`` (the tiny LLM memorised them: new sentences would be ~100 % WER in every
mode and separate nothing), in conditions absent from training (which used voices en-us at -s 150 and en-gb at
-s 160, clean): other espeak-ng voices and variants, other speech rates, and white noise at a given SNR (numpy,
seeded per clip, so the set is the same on every run). espeak-ng and sox are train_synthetic's (``speak``).

``--set probe`` writes one condition per changed factor (32 clips each) to see which conditions the model gets
partly right; ``--set heldout`` (default) writes the conditions chosen from the probe (``HELDOUT``; see
docs/bench/tiny_canary_heldout.md for the probe's numbers and the reasons). Both write ``<set>.jsonl`` (NeMo
manifest: audio_filepath, text, plus voice, rate, snr_db, condition) into ``--work``::

    python scripts/heldout_synthetic.py --work /tmp/heldout
    python bench/bench.py --no-speed --trained-ckpt RUN/stage3/model --manifest /tmp/heldout/heldout.jsonl \\
        --threads 1 --quality-max-new-tokens 16 --max-utts 1000 --out /tmp/heldout/bench
    python scripts/heldout_synthetic.py --per-condition /tmp/heldout/heldout.jsonl /tmp/heldout/bench/bench.json

``--per-condition`` prints each mode's WER per condition from a bench.json (bench.py's ``wer``; run it from the
repository root with the repository on PYTHONPATH, as bench.py is not part of the package).
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from train_synthetic import SENTENCES, speak

SEED = 16  # noise seed (GitHub issue 16); each clip's generator is seeded with (SEED, crc32 of the condition's
# name, sentence): a condition's clips are the same in every set (its file names are shared across sets)
INT16_MAX = 32767


@dataclass(frozen=True)
class Condition:
    """How one held-out group of clips is spoken."""

    voice: str  # espeak-ng voice, optionally with a variant: "en-us+f3"
    rate: int  # espeak-ng -s: words a minute (training used 150 for en-us, 160 for en-gb)
    snr_db: float | None = None  # white noise at this signal-to-noise ratio; None: clean

    @property
    def name(self) -> str:
        noise = "clean" if self.snr_db is None else f"snr{self.snr_db:g}"
        return f"{self.voice.replace('+', '-')}_s{self.rate}_{noise}"


SETS = {
    # one factor changed from training's en-us (-s 150, clean) at a time
    "probe": [Condition("en-gb-x-rp", 150), Condition("en-029", 150), Condition("en-gb-scotland", 150),
              Condition("en-us+f3", 150), Condition("en-us+m3", 150), Condition("en-us", 130),
              Condition("en-us", 190), Condition("en-us", 150, 20.0), Condition("en-us", 150, 10.0)],
    # from the probe (exact mode 17-67 % WER in each): each factor at two levels, 6 x 32 = 192 clips
    "heldout": [Condition("en-gb-x-rp", 150), Condition("en-us+f3", 150), Condition("en-us", 130),
                Condition("en-us", 190), Condition("en-us", 150, 20.0), Condition("en-us", 150, 10.0)],
}


def add_noise(samples: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise at ``snr_db`` below the clip's mean power (whole clip, silences included)."""
    x = samples.astype(np.float64)
    noise_power = np.mean(x**2) / 10 ** (snr_db / 10)
    noisy = x + rng.normal(0.0, np.sqrt(noise_power), x.shape)
    return np.clip(np.round(noisy), -INT16_MAX - 1, INT16_MAX).astype(np.int16)


def make_set(work: Path, conditions: list[Condition], name: str) -> Path:
    """Every sentence in every condition as a 16 kHz mono wav under ``work/audio``, and ``work/<name>.jsonl``."""
    audio = work / "audio"
    audio.mkdir(parents=True, exist_ok=True)
    lines = []
    for cond in conditions:
        for i, text in enumerate(SENTENCES):
            wav = audio / f"{cond.name}_{i:02d}.wav"
            if not wav.exists():
                clean = audio / f"{cond.voice.replace('+', '-')}_s{cond.rate}_clean_{i:02d}.wav"
                if not clean.exists():
                    speak(text, cond.voice, cond.rate, clean)
                if cond.snr_db is not None:
                    rng = np.random.default_rng([SEED, zlib.crc32(cond.name.encode()), i])
                    noisy = add_noise(sf.read(clean, dtype="int16")[0], cond.snr_db, rng)
                    sf.write(wav, noisy, 16000, subtype="PCM_16")
            lines.append(json.dumps({"audio_filepath": f"audio/{wav.name}", "text": text, "voice": cond.voice,
                                     "rate": cond.rate, "snr_db": cond.snr_db, "condition": cond.name}))
    manifest = work / f"{name}.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def per_condition(manifest: Path, bench_json: Path) -> str:
    """A markdown table: each mode's corpus WER per condition (rows in manifest order, first --max-utts lines)."""
    from bench.bench import wer

    rows = [json.loads(line) for line in manifest.read_text().splitlines() if line.strip()]
    quality = json.loads(bench_json.read_text())["quality"]
    refs, runs = quality["refs"], quality["runs"]
    rows = rows[: len(refs)]
    conditions = list(dict.fromkeys(r["condition"] for r in rows))
    out = ["| condition | clips | " + " | ".join(r["mode"] for r in runs) + " |",
           "|---|---|" + "---|" * len(runs)]
    for cond in [*conditions, "all"]:
        idx = [k for k, r in enumerate(rows) if cond in ("all", r["condition"])]
        cells = [f"{wer([refs[k] for k in idx], [run['texts'][k] for k in idx]):.3f}" for run in runs]
        out.append(f"| {cond} | {len(idx)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, help="output dir: audio/ and <set>.jsonl")
    p.add_argument("--set", default="heldout", choices=list(SETS), help="which conditions (default heldout)")
    p.add_argument("--per-condition", nargs=2, type=Path, metavar=("MANIFEST", "BENCH_JSON"),
                   help="print each mode's WER per condition of a bench.py run on MANIFEST, and stop")
    args = p.parse_args()
    if args.per_condition:
        print(per_condition(*args.per_condition))
        return
    if args.work is None:
        p.error("--work is required")
    print(make_set(args.work, SETS[args.set], args.set))


if __name__ == "__main__":
    main()
