"""Make the voice-activity test data: ten English sentences spoken by espeak-ng, with their true speech bounds.

    python scripts/make_vad_fixtures.py [--out tests/data/vad]

Needs the ``espeak-ng`` and ``sox`` programs (Debian: ``apt-get install espeak-ng sox``). Each sentence is
synthesised at espeak's 22.05 kHz, converted by sox to 16 kHz mono 16-bit FLAC without dither (so a rerun gives
the same files, with espeak-ng 1.51 and SoX 14.4.2), then cut to its speech plus :data:`MARGIN_SECONDS` each side
(zeros are added where espeak left less). Speech is where the 10 ms frame RMS
exceeds :data:`SPEECH_RMS` (-50 dBFS): espeak starts an utterance at once and ends it with a decay that falls
below that level within a few tens of ms of the last sound, so the first and last frames above it are the true
onset and offset (then refined to the first and last sample above that level). ``speech.json`` records, per
file, the voice, text, length and the speech bounds in samples of the trimmed file (start, end): the ground truth
tests compose recordings from. Internal pauses (commas) are not recorded; a sentence counts as one region.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 16000  # Hz, nemo_lite's rate
FRAME = 160  # 10 ms frames for the onset/offset measurement
SPEECH_RMS = 10 ** (-50 / 20)  # -50 dBFS: above espeak's silence (exact zeros), below any voiced frame
MARGIN_SECONDS = 0.05  # silence kept before the onset and after the offset, so bounds are inside the file

# (voice, words per minute, text): two espeak voices and a female variant, 2-5 s each (and one 0.4 s word).
SENTENCES = [
    ("en-us", 175, "Please call Stella and ask her to bring these things with her."),
    ("en-gb", 160, "The birch canoe slid on the smooth planks."),
    ("en-us+f3", 170, "Glue the sheet to the dark blue background, then let it dry overnight."),
    ("en-gb", 175, "It is easy to tell the depth of a well."),
    ("en-us", 150, "Four hours of steady work faced us, and nobody complained about it."),
    ("en-us+f3", 165, "Rice is often served in round bowls."),
    ("en-gb", 165, "The juice of lemons makes fine punch, especially on a hot summer afternoon by the sea."),
    ("en-us", 180, "Yes."),  # deliberately short (0.4 s): a fragment segmentation must not lose
    ("en-us+f3", 160, "A large size in stockings is hard to sell, said the shopkeeper with a sigh."),
    ("en-gb", 170, "Twenty-seven thousand, four hundred and twelve people visited the museum last year."),
]


def speech_bounds(audio: np.ndarray) -> tuple[int, int]:
    """(start, end) samples of the first and past the last 10 ms frame whose RMS exceeds ``SPEECH_RMS``."""
    n = len(audio) // FRAME
    rms = np.sqrt((audio[: n * FRAME].reshape(n, FRAME).astype(np.float64) ** 2).mean(axis=1))  # (n,)
    loud = np.flatnonzero(rms > SPEECH_RMS)
    if len(loud) == 0:
        raise ValueError("no speech found")
    start = loud[0] * FRAME + int(np.argmax(np.abs(audio[loud[0] * FRAME:(loud[0] + 1) * FRAME]) > SPEECH_RMS))
    last = audio[loud[-1] * FRAME:(loud[-1] + 1) * FRAME]
    end = loud[-1] * FRAME + FRAME - int(np.argmax(np.abs(last[::-1]) > SPEECH_RMS))
    return int(start), int(end)


def synthesise(voice: str, wpm: int, text: str, tmp: Path) -> np.ndarray:
    """espeak-ng -> sox (16 kHz mono 16-bit) -> float32 samples."""
    raw, wav = tmp / "raw.wav", tmp / "16k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(raw), text], check=True)
    no_dither = "-D"  # sox dithers by default when it reduces bit depth: random, so runs would differ
    subprocess.run(["sox", str(raw), no_dither, "-r", str(RATE), "-c", "1", "-b", "16", str(wav)], check=True)
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == RATE
    return audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "tests/data/vad")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    margin = int(MARGIN_SECONDS * RATE)
    records = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, (voice, wpm, text) in enumerate(SENTENCES):
            audio = synthesise(voice, wpm, text, Path(tmp))
            start, end = speech_bounds(audio)
            before, after = max(0, margin - start), max(0, end + margin - len(audio))  # espeak starts at once
            audio = np.pad(audio[max(0, start - margin):end + margin], (before, after))
            name = f"s{i:02d}.flac"
            sf.write(args.out / name, audio, RATE, subtype="PCM_16")
            audio = sf.read(args.out / name, dtype="float32")[0]  # bounds measured on what the tests will read
            start, end = speech_bounds(audio)
            records[name] = {"voice": voice, "wpm": wpm, "text": text, "samples": len(audio),
                             "speech": [start, end]}
            print(f"{name}: {len(audio) / RATE:.2f} s, speech {start / RATE:.3f}-{end / RATE:.3f} s  {text}")
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    (args.out / "speech.json").write_text(json.dumps({"rate": RATE, "made_with": version, "files": records},
                                                     indent=1) + "\n")


if __name__ == "__main__":
    main()
