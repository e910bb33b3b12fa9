"""Transcription: inputs -> validated 16 kHz arrays -> windows -> batched greedy decoding -> texts and segments.

Every input is loaded and checked before any model work, so a batch with bad inputs fails fast (or, with
``on_error="skip"``, the bad ones are set aside). Audio longer than ``max_chunk_seconds`` is split at low-energy
points (:mod:`nemo_lite.longform`); the windows of all inputs are sorted by length, longest first, and decoded
``batch_size`` at a time, so the memory held is one batch of windows plus the audio itself, whatever its length.
Window texts are joined in order; with ``timestamps=True`` each window is a :class:`Segment`.

Token budget: unless ``max_new_tokens`` is given, each window gets ``8 tokens/s + 32`` (at least 128), far above
speech rates. A row decoded in a batch is cut to its own budget, so batched results equal one-by-one results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

from .audio import SAMPLE_RATE, AudioError, AudioInput, load_audio, pad_to_minimum
from .longform import ChunkOptions, split_windows

if TYPE_CHECKING:
    from .model import CanaryQwen

TOKENS_PER_SECOND = 8  # budget rate; speech runs at ~3-4 tokens/s
TOKEN_MARGIN = 32  # extra tokens on top of the rate
MIN_TOKENS = 128  # budget floor

Progress = Callable[[float], None]  # called with the audio seconds just finished


@dataclass
class Segment:
    start: float  # seconds from the start of the input
    end: float  # seconds; equals the next segment's start (windows are contiguous)
    text: str  # transcript of this window

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Transcript:
    text: str  # the whole input's transcript: non-empty segment texts joined by single spaces
    segments: list[Segment] = field(default_factory=list)  # one per decoded window, in time order
    duration: float = 0.0  # seconds of audio (at 16 kHz, before any padding)

    def to_dict(self) -> dict:
        return {"text": self.text, "duration": self.duration, "segments": [s.to_dict() for s in self.segments]}

    def to_srt(self) -> str:
        """SubRip cues, one per non-empty segment (``HH:MM:SS,mmm``)."""
        cues = [s for s in self.segments if s.text.strip()]
        return "".join(f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{_one_line(s.text)}\n\n"
                       for i, s in enumerate(cues, 1))

    def to_vtt(self) -> str:
        """WebVTT: header, then one cue per non-empty segment (``HH:MM:SS.mmm``)."""
        cues = [s for s in self.segments if s.text.strip()]
        return "WEBVTT\n\n" + "".join(f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{_one_line(s.text)}\n\n"
                                      for s in cues)


@dataclass(frozen=True)
class TranscribeOptions:
    batch_size: int = 8  # windows decoded together
    max_new_tokens: int | None = None  # per window; None: 8 tokens/s + 32, at least 128
    sample_rate: int = SAMPLE_RATE  # rate of array/tensor inputs (files carry their own)
    chunk: ChunkOptions = ChunkOptions()  # long-form window limit and cut search
    on_error: Literal["raise", "skip"] = "raise"  # bad inputs: raise before any work, or return None for them

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")


@dataclass(frozen=True)
class _Window:
    item: int  # index of the input
    start: int  # first sample
    end: int  # one past the last sample


def token_budget(seconds: float) -> int:
    return max(MIN_TOKENS, int(TOKENS_PER_SECOND * seconds) + TOKEN_MARGIN)


def load_all(items: Sequence[AudioInput], sample_rate: int) -> tuple[list[np.ndarray | None], list[tuple[int, str]]]:
    """Load every input; bad ones become None, with ``(index, message)`` in the failure list."""
    arrays: list[np.ndarray | None] = []
    failures: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        try:
            arrays.append(load_audio(item, sample_rate))
        except AudioError as err:
            arrays.append(None)
            failures.append((i, str(err)))
    return arrays, failures


def batch_failure(items: Sequence[AudioInput], failures: list[tuple[int, str]]) -> AudioError:
    """One error naming every bad input of a batch."""
    lines = "\n".join(f"  [{i}] {msg}" for i, msg in failures)
    return AudioError(f"{len(failures)} of {len(items)} inputs cannot be transcribed:\n{lines}", failures)


def decode_windows(
    model: CanaryQwen, arrays: list[np.ndarray | None], windows: list[_Window], opts: TranscribeOptions,
    progress: Progress | None = None,
) -> list[str]:
    """Text per window: windows sorted longest first, ``batch_size`` per ``generate`` call, texts in window order."""
    order = sorted(range(len(windows)), key=lambda k: -(windows[k].end - windows[k].start))
    texts = [""] * len(windows)
    for s in range(0, len(order), opts.batch_size):
        chunk = order[s:s + opts.batch_size]
        clips = [pad_to_minimum(arrays[windows[k].item][windows[k].start:windows[k].end]) for k in chunk]
        seconds = [(windows[k].end - windows[k].start) / SAMPLE_RATE for k in chunk]
        budgets = [opts.max_new_tokens or token_budget(t) for t in seconds]
        ids = model.generate(audios=clips, max_new_tokens=max(budgets), batch_size=len(clips))
        for k, row, budget in zip(chunk, ids, budgets, strict=True):
            texts[k] = model.decode(row[:budget])  # a row's own budget: same ids as decoding it alone
        if progress is not None:
            progress(sum(seconds))
    return texts


def transcribe_arrays(
    model: CanaryQwen, arrays: list[np.ndarray | None], opts: TranscribeOptions, progress: Progress | None = None
) -> list[Transcript | None]:
    """Loaded 16 kHz arrays (None: skipped) -> one :class:`Transcript` per array."""
    windows = [_Window(i, a, b) for i, x in enumerate(arrays) if x is not None for a, b in split_windows(x, opts.chunk)]
    texts = decode_windows(model, arrays, windows, opts, progress)
    out: list[Transcript | None] = [None if x is None else Transcript("", [], len(x) / SAMPLE_RATE) for x in arrays]
    for w, text in zip(windows, texts, strict=True):
        out[w.item].segments.append(Segment(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE, text))  # type: ignore[union-attr]
    for t in out:
        if t is not None:
            t.text = " ".join(s.text.strip() for s in t.segments if s.text.strip())
    return out


def transcribe(
    model: CanaryQwen, audio: AudioInput | list[AudioInput], opts: TranscribeOptions = TranscribeOptions(),
    timestamps: bool = False, progress: Progress | None = None,
) -> str | Transcript | None | list[str | None] | list[Transcript | None]:
    """See :meth:`nemo_lite.model.CanaryQwen.transcribe` for the contract."""
    single = not isinstance(audio, (list, tuple))
    items = [audio] if single else list(audio)
    arrays, failures = load_all(items, opts.sample_rate)
    if failures and opts.on_error == "raise":
        if single:
            raise AudioError(failures[0][1], failures)
        raise batch_failure(items, failures)
    results = transcribe_arrays(model, arrays, opts, progress)
    out = results if timestamps else [None if t is None else t.text for t in results]
    return out[0] if single else out


def _clock(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _one_line(text: str) -> str:
    """Subtitle cue text on one line: a blank line would end the cue early."""
    return " ".join(text.split()).replace("-->", "->")  # "-->" would end a WebVTT cue's timing line


__all__ = ["Segment", "Transcript", "TranscribeOptions", "transcribe", "transcribe_arrays"]
