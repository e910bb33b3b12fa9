"""Synthetic recordings with known speech regions, for testing and measuring voice-activity detection.

The sentences are the espeak-ng recordings that scripts/make_vad_fixtures.py writes to tests/data/vad/ with their
true speech bounds (speech.json). :func:`compose` lays a list of parts end to end (sentences, digital silence,
white-noise bursts, pure tones) and returns the samples with the true speech regions and the non-speech
intervals, in samples. Noise and tones come from a seeded generator, so a recipe always gives the same audio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE


@dataclass(frozen=True)
class Sentences:
    """The fixture sentences: samples and true (start, end) speech bounds of each, by file name."""

    audio: dict[str, np.ndarray]  # name -> (samples,) float32 at 16 kHz
    speech: dict[str, tuple[int, int]]  # name -> true speech bounds in that file's samples

    @classmethod
    def load(cls, folder: str | Path) -> Sentences:
        import soundfile as sf

        folder = Path(folder)
        meta = json.loads((folder / "speech.json").read_text())
        if meta["rate"] != SAMPLE_RATE:
            raise ValueError(f"{folder}: fixtures are at {meta['rate']} Hz, need {SAMPLE_RATE}")
        audio = {name: sf.read(folder / name, dtype="float32")[0] for name in meta["files"]}
        speech = {name: tuple(rec["speech"]) for name, rec in meta["files"].items()}
        return cls(audio, speech)

    @property
    def names(self) -> list[str]:
        return sorted(self.audio)


@dataclass
class Recording:
    audio: np.ndarray  # (samples,) float32 at 16 kHz
    speech: list[tuple[int, int]] = field(default_factory=list)  # true speech regions, in order
    other: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, kind) of silence/noise/tone parts

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE


def white_noise(seconds: float, dbfs: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise with RMS ``dbfs`` (dB re full scale)."""
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


def tone(seconds: float, hz: float, dbfs: float) -> np.ndarray:
    """A sine of RMS ``dbfs``: amplitude sqrt(2) times the RMS."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sqrt(2) * 10 ** (dbfs / 20) * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def compose(parts: list[tuple], sentences: Sentences, seed: int = 0, floor_dbfs: float | None = None) -> Recording:
    """Lay parts end to end. A part is ``("speech", name)``, ``("silence", seconds)``,
    ``("noise", seconds, dbfs)`` or ``("tone", seconds, hz, dbfs)``.

    A sentence file includes its own margin of silence around the speech; its true region is its recorded bounds.
    ``floor_dbfs`` adds white noise of that level under everything (a microphone's noise floor).
    """
    rng = np.random.default_rng(seed)
    pieces, rec, pos = [], Recording(np.zeros(0, np.float32)), 0
    for part in parts:
        kind = part[0]
        if kind == "speech":
            x = sentences.audio[part[1]]
            a, b = sentences.speech[part[1]]
            rec.speech.append((pos + a, pos + b))
        elif kind == "silence":
            x = np.zeros(int(part[1] * SAMPLE_RATE), np.float32)
        elif kind == "noise":
            x = white_noise(part[1], part[2], rng)
        elif kind == "tone":
            x = tone(part[1], part[2], part[3])
        else:
            raise ValueError(f"unknown part {part!r}")
        if kind != "speech":
            rec.other.append((pos, pos + len(x), kind))
        pieces.append(x)
        pos += len(x)
    rec.audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    if floor_dbfs is not None:
        rec.audio = rec.audio + white_noise(len(rec.audio) / SAMPLE_RATE + 1, floor_dbfs, rng)[:len(rec.audio)]
    return rec


def conversation(sentences: Sentences, seconds: float, seed: int = 0, noise_every: int = 0,
                 gaps: tuple[float, float] = (0.6, 4.0), floor_dbfs: float | None = None) -> Recording:
    """Sentences in random order separated by random silences (uniform in ``gaps``) until ``seconds`` is reached;
    with ``noise_every`` = k, every k-th gap holds a white-noise burst (-30 dBFS) or a 440 Hz tone (-20 dBFS);
    ``floor_dbfs``: a noise floor under everything (see :func:`compose`)."""
    rng = np.random.default_rng(seed)
    parts: list[tuple] = [("silence", 0.5)]
    total, k = 0.5, 0
    while total < seconds:
        name = sentences.names[int(rng.integers(len(sentences.names)))]
        parts.append(("speech", name))
        total += len(sentences.audio[name]) / SAMPLE_RATE
        gap = float(rng.uniform(*gaps))
        k += 1
        if noise_every and k % noise_every == 0:
            burst = ("noise", 1.0, -30.0) if (k // noise_every) % 2 else ("tone", 1.0, 440.0, -20.0)
            parts += [("silence", gap / 2), burst, ("silence", gap / 2)]
            total += 1.0
        else:
            parts.append(("silence", gap))
        total += gap
    return compose(parts, sentences, seed, floor_dbfs)
