"""Training data: a JSONL manifest -> (audio, text) items -> duration-bucketed batches, sharded across ranks.

Manifest (NeMo's layout): one JSON object a line with ``audio_filepath`` (relative paths resolve against the
manifest's folder), ``text`` (the target transcript) and optionally ``duration`` (seconds; read from the file
header when absent). Other keys are ignored.

Batching (:class:`BucketBatchSampler`): items are sorted by duration and cut into batches of ``batch_size``
neighbours, so a batch holds clips of similar length and padding stays small; the order of the batches is shuffled
every epoch from ``(seed, epoch)``, so every rank computes the same order without communicating. Under data
parallelism rank ``r`` of ``W`` takes batches ``r, r + W, ...``, and every rank gets the same number of batches
(the last ``len % W`` batches of an epoch are dropped), so the ranks' gradient all-reduces stay in step.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..audio import SAMPLE_RATE, AudioError, load_audio, probe, probe_duration


@dataclass(frozen=True)
class Utterance:
    audio_filepath: Path  # absolute path of the audio file
    text: str  # reference transcript
    duration: float  # seconds (from the manifest, else the file header)


def read_manifest(path: str | Path, errors: list[str] | None = None, allow_truncated: bool = False
                  ) -> list[Utterance]:
    """Entries of a JSONL manifest; a line without ``audio_filepath`` or ``text`` raises ``ValueError``.

    ``errors``: check every entry's audio file from its header (:func:`nemo_lite.audio.probe`: present, not
    empty, readable, not cut short unless ``allow_truncated``) and leave out the bad ones, each problem appended
    here as one line; without it, only entries lacking ``duration`` are read, and an unreadable one raises.
    """
    path = Path(path)
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
        if not isinstance(entry, dict) or "audio_filepath" not in entry or "text" not in entry:
            raise ValueError(f"{path}:{n}: a manifest line needs 'audio_filepath' and 'text'")
        audio = Path(entry["audio_filepath"]).expanduser()
        audio = audio if audio.is_absolute() else path.parent / audio
        duration = entry.get("duration")
        if errors is not None:
            try:
                header = probe(audio, allow_truncated)
            except AudioError as err:
                errors.append(f"{err} (manifest line {n})")
                continue
            duration = header if duration is None else duration
        if duration is None:
            duration = probe_duration(audio)
            if duration is None:
                raise ValueError(f"{path}:{n}: cannot read the duration of {audio}")
        out.append(Utterance(audio, str(entry["text"]), float(duration)))
    if not out and not errors:
        raise ValueError(f"{path}: the manifest is empty")
    return out


def fit_window(items: list[Utterance], seconds: float, policy: str) -> tuple[list[Utterance], int]:
    """Clips longer than the model's window (``seconds``): ``"skip"`` drops them (returns the kept items and how
    many were dropped), ``"truncate"`` keeps them (the dataset cuts them to the window, as the seed's Whisper
    feature extractor did). Decided from the manifest's durations before training starts, never halfway."""
    long = [u for u in items if u.duration > seconds]
    if policy == "truncate" or not long:
        return items, len(long)
    return [u for u in items if u.duration <= seconds], len(long)


class SpeechDataset(torch.utils.data.Dataset):
    """Manifest items as ``(16 kHz float32 audio, text)``; ``max_samples``: longer audio cut to that length."""

    def __init__(self, items: list[Utterance], max_samples: int | None = None) -> None:
        self.items = items
        self.max_samples = max_samples

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[np.ndarray, str]:
        item = self.items[i]
        audio = load_audio(item.audio_filepath)
        return (audio if self.max_samples is None else audio[: self.max_samples]), item.text


@dataclass
class Batch:
    audios: list[np.ndarray]  # 16 kHz float32 clips, unpadded
    texts: list[str]  # target transcripts

    @property
    def seconds(self) -> float:
        return sum(len(a) for a in self.audios) / SAMPLE_RATE


def collate(items: list[tuple[np.ndarray, str]]) -> Batch:
    """Keep clips unpadded: each model pads its own way (mel frames or a 30 s window)."""
    return Batch([a for a, _ in items], [t for _, t in items])


class BucketBatchSampler(torch.utils.data.Sampler):
    """Batches of similar duration, shuffled per epoch, sharded across ``world_size`` ranks (see module doc)."""

    def __init__(self, durations: list[float], batch_size: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, shuffle: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        order = sorted(range(len(durations)), key=lambda i: (durations[i], i))
        self.batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        if len(self.batches) < world_size:
            raise ValueError(f"{len(durations)} utterances make {len(self.batches)} batch(es) of {batch_size}: "
                             f"fewer than the {world_size} ranks")
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self) -> list[list[int]]:
        """This rank's batches for the current epoch, in order."""
        order = list(range(len(self.batches)))
        if self.shuffle:
            random.Random(self.seed * 100_003 + self.epoch).shuffle(order)
        usable = len(order) // self.world_size * self.world_size
        return [self.batches[i] for i in order[self.rank:usable:self.world_size]]

    def __iter__(self):
        return iter(self.epoch_batches())

    def __len__(self) -> int:
        return len(self.batches) // self.world_size
