"""Transcription: inputs -> validated 16 kHz audio -> windows -> batched greedy decoding -> texts and segments.

Every input is decoded and checked before any model work, so a batch with bad inputs fails fast (or, with
``on_error="skip"``, the bad ones are set aside). Audio longer than ``max_chunk_seconds`` is split at low-energy
points (:mod:`nemo_lite.longform`). A file (path, bytes, seekable file object) that long is only scanned up front
and stays in its file: its windows are decoded again, front to back, as their batches come (samples equal to
slicing the loaded array). Arrays and tensors, already in memory, are sliced. Windows of long files are batched in
file order (so one more decoding pass reads them all), then all other windows sorted by length, longest first;
``batch_size`` windows go to each ``generate`` call. Memory is therefore one batch of windows plus the inputs
held in memory (short files, arrays), whatever the length of a file. Window texts are joined in order; with
``timestamps=True`` each window is a :class:`Segment`.

Token budget: unless ``max_new_tokens`` is given, each window gets ``8 tokens/s + 32`` (at least 128), far above
speech rates. A row decoded in a batch is cut to its own budget, so batched results equal one-by-one results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from .audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, AudioInput, FileAudio, load_audio, pad_to_minimum
from .longform import ChunkOptions, LongAudio, scan, split_windows
from .memory import release_freed_memory
from .runtime import default_batch_size, encoder_batch_samples, encoder_groups

if TYPE_CHECKING:
    import torch


class SpeechModel(Protocol):
    """What transcription needs of a model: the part of :class:`nemo_lite.speechlm.SpeechLM` it calls."""

    device: torch.device

    def embed_audio(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]: ...

    def generate_from_embeddings(self, audio_embeds: list[torch.Tensor], max_new_tokens: int = 128
                                 ) -> list[list[int]]: ...

    def decode(self, ids: list[int]) -> str: ...

TOKENS_PER_SECOND = 8  # budget rate; speech runs at ~3-4 tokens/s
TOKEN_MARGIN = 32  # extra tokens on top of the rate
MIN_TOKENS = 128  # budget floor

Progress = Callable[[float], None]  # called with the audio seconds just finished
Loaded = np.ndarray | LongAudio  # a checked input: 16 kHz samples in memory, or a long file read per window


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
    batch_size: int | None = None  # windows decoded together; None: the device's default (8 CPU, 64 GPU)
    max_new_tokens: int | None = None  # per window; None: 8 tokens/s + 32, at least 128
    sample_rate: int = SAMPLE_RATE  # rate of array/tensor inputs (files carry their own)
    chunk: ChunkOptions = ChunkOptions()  # long-form window limit and cut search
    on_error: Literal["raise", "skip"] = "raise"  # bad inputs: raise before any work, or return None for them

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
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


def load_all(
    items: Sequence[AudioInput], sample_rate: int, chunk: ChunkOptions | None = None
) -> tuple[list[Loaded | None], list[tuple[int, str]]]:
    """Decode and check every input; bad ones become None, with ``(index, message)`` in the failure list.

    With ``chunk``, a file input longer than ``chunk.max_chunk_seconds`` is scanned, not kept: it comes back as a
    :class:`~nemo_lite.longform.LongAudio` (its windows, no samples). Everything else is a 16 kHz array.
    """
    loaded: list[Loaded | None] = []
    failures: list[tuple[int, str]] = []
    for i, item in enumerate(items):
        try:
            file = FileAudio.of(item) if chunk is not None else None
            loaded.append(load_audio(item, sample_rate) if file is None else scan(file, chunk))
        except AudioError as err:
            loaded.append(None)
            failures.append((i, str(err)))
    return loaded, failures


def batch_failure(items: Sequence[AudioInput], failures: list[tuple[int, str]]) -> AudioError:
    """One error naming every bad input of a batch."""
    lines = "\n".join(f"  [{i}] {msg}" for i, msg in failures)
    return AudioError(f"{len(failures)} of {len(items)} inputs cannot be transcribed:\n{lines}", failures)


def decode_windows(
    model: SpeechModel, loaded: list[Loaded | None], windows: list[_Window], opts: TranscribeOptions,
    progress: Progress | None = None,
) -> list[str]:
    """Text per window, ``batch_size`` windows per ``generate`` call, texts in window order (``None``:
    :func:`~nemo_lite.runtime.default_batch_size` of the model's device).

    Batch order: windows of long files in file order (each file is decoded once more, front to back), then the
    other windows longest first (similar lengths share a batch: little padding).
    """
    streamed = [k for k, w in enumerate(windows) if isinstance(loaded[w.item], LongAudio)]
    in_memory = sorted((k for k, w in enumerate(windows) if not isinstance(loaded[w.item], LongAudio)),
                       key=lambda k: -(windows[k].end - windows[k].start))
    order = streamed + in_memory
    texts = [""] * len(windows)
    batch_size = opts.batch_size or default_batch_size(model.device)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        seconds = [(windows[k].end - windows[k].start) / SAMPLE_RATE for k in chunk]
        budgets = [opts.max_new_tokens or token_budget(t) for t in seconds]
        ids = model.generate_from_embeddings(_embed_windows(model, loaded, [windows[k] for k in chunk]),
                                             max_new_tokens=max(budgets))
        for k, row, budget in zip(chunk, ids, budgets, strict=True):
            texts[k] = model.decode(row[:budget])  # a row's own budget: same ids as decoding it alone
        release_freed_memory()
        if progress is not None:
            progress(sum(seconds))
    return texts


def _embed_windows(model: SpeechModel, loaded: list[Loaded | None], windows: list[_Window]) -> list:
    """Audio embeddings of ``windows``, one encoder group at a time: only that group's samples are ever held
    (a decoding batch of eight 40 s windows would otherwise hold 20 MB of samples through the whole batch)."""
    sizes = [max(w.end - w.start, MIN_SAMPLES) for w in windows]
    out = []
    for start, end in encoder_groups(sizes, encoder_batch_samples(model.device)):
        clips = [pad_to_minimum(_samples(loaded[w.item], w)) for w in windows[start:end]]
        out += model.embed_audio(clips)
        del clips
    return out


def _samples(x: Loaded | None, w: _Window) -> np.ndarray:
    """A window's 16 kHz samples: a slice of an array, or decoded from a long file."""
    if isinstance(x, LongAudio):
        return x.read(w.start, w.end)
    assert x is not None
    return x[w.start:w.end]


def _windows(x: Loaded, chunk: ChunkOptions) -> list[tuple[int, int]]:
    if isinstance(x, LongAudio):
        if x.chunk != chunk:
            raise ValueError(f"{x.file.name} was scanned with {x.chunk}, not {chunk}: load it with the same options")
        return x.windows
    return split_windows(x, chunk)



def transcribe_arrays(
    model: SpeechModel, loaded: list[Loaded | None], opts: TranscribeOptions, progress: Progress | None = None
) -> list[Transcript | None]:
    """Checked inputs from :func:`load_all` (None: skipped) -> one :class:`Transcript` each."""
    windows = [_Window(i, a, b) for i, x in enumerate(loaded) if x is not None for a, b in _windows(x, opts.chunk)]
    try:
        texts = decode_windows(model, loaded, windows, opts, progress)
    finally:
        for x in loaded:
            if isinstance(x, LongAudio):
                x.close()
    out: list[Transcript | None] = [None if x is None else Transcript("", [], _length(x) / SAMPLE_RATE)
                                    for x in loaded]
    for w, text in zip(windows, texts, strict=True):
        out[w.item].segments.append(Segment(w.start / SAMPLE_RATE, w.end / SAMPLE_RATE, text))  # type: ignore[union-attr]
    for t in out:
        if t is not None:
            t.text = " ".join(s.text.strip() for s in t.segments if s.text.strip())
    return out


def _length(x: Loaded) -> int:
    return x.length if isinstance(x, LongAudio) else len(x)


def transcribe(
    model: SpeechModel, audio: AudioInput | list[AudioInput], opts: TranscribeOptions = TranscribeOptions(),
    timestamps: bool = False, progress: Progress | None = None,
) -> str | Transcript | None | list[str | None] | list[Transcript | None]:
    """See :meth:`nemo_lite.speechlm.SpeechLM.transcribe` for the contract."""
    single = not isinstance(audio, (list, tuple))
    items = [audio] if single else list(audio)
    loaded, failures = load_all(items, opts.sample_rate, opts.chunk)
    if failures and opts.on_error == "raise":
        if single:
            raise AudioError(failures[0][1], failures)
        raise batch_failure(items, failures)
    results = transcribe_arrays(model, loaded, opts, progress)
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
