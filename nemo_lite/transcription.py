"""Transcription: inputs -> validated 16 kHz audio -> windows -> batched greedy decoding -> texts and segments.

Every input is decoded and checked before any model work, so a batch with bad inputs fails fast (or, with
``on_error="skip"``, the bad ones are set aside).

Windows (what each decoded row holds), by ``TranscribeOptions.segmentation``:

- ``"vad"``: speech segments. Silero VAD (:mod:`nemo_lite.vad`) finds the speech, and :mod:`nemo_lite.segmentation`
  pads it, splits it at pauses into phrase-length pieces (at most ``max_segment_seconds``, and never more than the
  model's window) and merges tiny fragments. Silence, noise and music are never sent to the model, so nothing is
  invented for them; an input with no speech gets ``text == ""`` and no segments. Segments keep their own bounds:
  the silence between them belongs to none.
- ``"fixed"``: contiguous windows of up to ``max_chunk_seconds`` cut at low-energy points
  (:mod:`nemo_lite.longform`); an input within the limit is one window (NeMo's single pass).
- ``None`` (the default): ``"vad"`` for an input longer than ``max_chunk_seconds`` or when timestamps are asked
  for, else one window, so a short clip transcribed without timestamps still gives NeMo's exact ids.

Long files A file (path, bytes, seekable file object) that long is only scanned up front
and stays in its file: its windows are decoded again, front to back, as their batches come (samples equal to
slicing the loaded array); the VAD runs on the same scan's pieces. Arrays and tensors, already in memory, are
sliced. Windows of long files are batched in
file order (so one more decoding pass reads them all), then all other windows sorted by length, longest first;
``batch_size`` windows go to each ``generate`` call. Memory is therefore one batch of windows plus the inputs
held in memory (short files, arrays), whatever the length of a file. Window texts are joined in order; with
``timestamps=True`` each window is a :class:`Segment`.

Progress (``progress``, called with audio seconds): an input's duration is credited in three parts, so a bar
moves all along, even for a long file without speech: :data:`SCAN_SHARE` of it while :func:`load_all` decodes
and scans it (per 4 s piece of a file), the rest half when a window is encoded (per encoder group) and half when
its batch is decoded (:func:`decode_windows`). :func:`load_all` and :func:`transcribe_arrays` together credit each
good input's whole duration; a failed input's share is whatever its scan credited before the failure.

Damaged files (cut short, see :mod:`nemo_lite.audio`) are bad inputs like undecodable ones, unless
``TranscribeOptions.allow_truncated``: then the audio that is there is transcribed, with one warning.
Finished inputs as they come: :func:`transcribe_arrays` takes ``on_done``, called after each decoding batch with
the inputs whose last window that batch decoded (an input without speech: at once), so a caller can write each
result as soon as it exists (:mod:`nemo_lite.corpus` appends them to an output manifest) instead of after the
whole list.

Token budget: unless ``max_new_tokens`` is given, each window gets ``8 tokens/s + 32`` (at least 128), far above
speech rates. A row decoded in a batch is cut to its own budget, so batched results equal one-by-one results.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from .audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, AudioInput, FileAudio, load_audio, pad_to_minimum
from .longform import ChunkOptions, LongAudio, scan, split_windows
from .memory import release_freed_memory
from .runtime import default_batch_size, encoder_batch_samples, encoder_groups
from .segmentation import SegmentationOptions, segment
from .subtitles import subtitle_cues, to_srt, to_vtt
from .vad import VadOptions, VoiceDetector, detect

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
SCAN_SHARE = 0.1  # of an input's progress credited while it is decoded and scanned (a long file's VAD pass costs
# a few percent of its transcription with the full model on CPU; 0.1 keeps the bar moving without misleading)

Progress = Callable[[float], None]  # called with the audio seconds just finished
Loaded = np.ndarray | LongAudio  # a checked input: 16 kHz samples in memory, or a long file read per window
Done = Callable[[list[tuple[int, "Transcript"]]], None]  # inputs finished by a decoding batch: (index, transcript)


@dataclass
class Segment:
    start: float  # seconds from the start of the input: this segment's own bounds
    end: float  # seconds (speech segments leave the silence between them uncovered; fixed windows are contiguous)
    text: str  # transcript of this segment

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Transcript:
    text: str  # the whole input's transcript: non-empty segment texts joined by single spaces
    segments: list[Segment] = field(default_factory=list)  # one per decoded window/segment, in time order
    duration: float = 0.0  # seconds of audio (at 16 kHz, before any padding)

    def to_dict(self) -> dict:
        return {"text": self.text, "duration": self.duration, "segments": [s.to_dict() for s in self.segments]}

    def to_srt(self) -> str:
        """SubRip cues (``HH:MM:SS,mmm``): one per non-empty segment; a segment over ~7 s or ~84 characters becomes
        several cues of at most two lines of ~42 characters, whose split times are estimates shared out in
        proportion to characters (:func:`nemo_lite.subtitles.subtitle_cues`)."""
        return to_srt(subtitle_cues([(s.start, s.end, s.text) for s in self.segments]))

    def to_vtt(self) -> str:
        """WebVTT (``HH:MM:SS.mmm``), the same cues as :meth:`to_srt`."""
        return to_vtt(subtitle_cues([(s.start, s.end, s.text) for s in self.segments]))


@dataclass(frozen=True)
class TranscribeOptions:
    batch_size: int | None = None  # windows decoded together; None: the device's default (8 CPU, 64 GPU)
    max_new_tokens: int | None = None  # per window; None: 8 tokens/s + 32, at least 128
    sample_rate: int = SAMPLE_RATE  # rate of array/tensor inputs (files carry their own)
    chunk: ChunkOptions = ChunkOptions()  # long-form window limit and cut search
    on_error: Literal["raise", "skip"] = "raise"  # bad inputs: raise before any work, or return None for them
    segmentation: Literal["vad", "fixed"] | None = None  # None: vad when long or timestamped (module docstring)
    vad: VadOptions = VadOptions()  # voice-activity thresholds
    segments: SegmentationOptions = SegmentationOptions()  # speech segment lengths, padding, merging
    allow_truncated: bool = False  # damaged (cut short) files: transcribe what is there, with a warning

    def __post_init__(self) -> None:
        if self.segmentation not in (None, "vad", "fixed"):
            raise ValueError(f"segmentation must be 'vad' or 'fixed' (or None: automatic), got {self.segmentation!r}")
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
    items: Sequence[AudioInput], sample_rate: int, chunk: ChunkOptions | None = None, vad: VadOptions | None = None,
    allow_truncated: bool = False, progress: Progress | None = None,
) -> tuple[list[Loaded | None], list[tuple[int, str]]]:
    """Decode and check every input; bad ones become None, with ``(index, message)`` in the failure list.

    With ``chunk``, a file input longer than ``chunk.max_chunk_seconds`` is scanned, not kept: it comes back as a
    :class:`~nemo_lite.longform.LongAudio` (its windows, no samples). Everything else is a 16 kHz array. With
    ``vad`` too, the scan also runs the voice-activity detector (kept on the LongAudio for :func:`plan_windows`).
    ``allow_truncated``: damaged files give what is there (one warning each). ``progress``: credited
    :data:`SCAN_SHARE` of the audio as it is decoded (module docstring).
    """
    loaded: list[Loaded | None] = []
    failures: list[tuple[int, str]] = []
    share = None if progress is None else (lambda n: progress(SCAN_SHARE * n / SAMPLE_RATE))
    for i, item in enumerate(items):
        try:
            file = FileAudio.of(item, allow_truncated) if chunk is not None else None
            detector = VoiceDetector(vad) if file is not None and vad is not None else None
            if file is None:
                x = load_audio(item, sample_rate, allow_truncated)
                if share is not None:
                    share(len(x))
                loaded.append(x)
            else:
                loaded.append(scan(file, chunk, detector, share))
        except AudioError as err:
            loaded.append(None)
            failures.append((i, str(err)))
    return loaded, failures


def uses_vad(opts: TranscribeOptions, timestamps: bool, samples: int) -> bool:
    """Whether an input of ``samples`` is cut into speech segments (see the module docstring)."""
    if opts.segmentation is not None:
        return opts.segmentation == "vad"
    return timestamps or samples > opts.chunk.max_samples


def segment_options(opts: TranscribeOptions) -> SegmentationOptions:
    """The speech segment options, their limit capped at the model's window (``max_chunk_seconds``)."""
    seg = opts.segments
    limit = min(seg.max_segment_seconds, opts.chunk.max_chunk_seconds)
    if limit == seg.max_segment_seconds:
        return seg
    pad = min(seg.pad_seconds, limit / 4)
    return replace(seg, max_segment_seconds=limit, pad_seconds=pad,
                   min_segment_seconds=min(seg.min_segment_seconds, (limit - 2 * pad) / 2))


def plan_windows(x: Loaded, opts: TranscribeOptions, timestamps: bool = False) -> list[tuple[int, int]]:
    """The (start, end) 16 kHz sample ranges to decode for one checked input, in time order: speech segments or
    fixed windows (module docstring). An input without speech has none."""
    if not uses_vad(opts, timestamps, _length(x)):
        return _windows(x, opts.chunk)
    if isinstance(x, LongAudio):
        if x.detector is None:
            raise ValueError(f"{x.file.name} was scanned without voice-activity detection: load it with vad=...")
        det = x.detector
    else:
        det = detect(x, opts.vad)
    return segment(det.regions, det.probabilities, det.total, segment_options(opts))


def batch_failure(items: Sequence[AudioInput], failures: list[tuple[int, str]]) -> AudioError:
    """One error naming every bad input of a batch."""
    lines = "\n".join(f"  [{i}] {msg}" for i, msg in failures)
    return AudioError(f"{len(failures)} of {len(items)} inputs cannot be transcribed:\n{lines}", failures)


def decode_windows(
    model: SpeechModel, loaded: list[Loaded | None], windows: list[_Window], opts: TranscribeOptions,
    progress: Progress | None = None, credit: list[float] | None = None,
    on_batch: Callable[[list[int], list[str]], None] | None = None,
) -> list[str]:
    """Text per window, ``batch_size`` windows per ``generate`` call, texts in window order (``None``:
    :func:`~nemo_lite.runtime.default_batch_size` of the model's device).

    Batch order: windows of long files in file order (each file is decoded once more, front to back), then the
    other windows longest first (similar lengths share a batch: little padding).

    ``progress`` is called with audio seconds done: half of a window's ``credit`` (default: its length) when it is
    encoded, one encoder group at a time, the other half when its batch is decoded, so a long file's bar moves
    several times per batch. ``on_batch`` is called after each batch with its window indices and their texts.
    """
    credit = credit or [(w.end - w.start) / SAMPLE_RATE for w in windows]
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
        halves = [credit[k] / 2 for k in chunk]
        embeds = _embed_windows(model, loaded, [windows[k] for k in chunk], progress, halves)
        ids = model.generate_from_embeddings(embeds, max_new_tokens=max(budgets))
        for k, row, budget in zip(chunk, ids, budgets, strict=True):
            texts[k] = model.decode(row[:budget])  # a row's own budget: same ids as decoding it alone
        release_freed_memory()
        if progress is not None:
            progress(sum(halves))
        if on_batch is not None:
            on_batch(chunk, [texts[k] for k in chunk])
    return texts


def _embed_windows(model: SpeechModel, loaded: list[Loaded | None], windows: list[_Window],
                   progress: Progress | None = None, credit: list[float] | None = None) -> list:
    """Audio embeddings of ``windows``, one encoder group at a time: only that group's samples are ever held
    (a decoding batch of eight 40 s windows would otherwise hold 20 MB of samples through the whole batch)."""
    sizes = [max(w.end - w.start, MIN_SAMPLES) for w in windows]
    out = []
    for start, end in encoder_groups(sizes, encoder_batch_samples(model.device)):
        clips = [pad_to_minimum(_samples(loaded[w.item], w)) for w in windows[start:end]]
        out += model.embed_audio(clips)
        del clips
        if progress is not None and credit is not None:
            progress(sum(credit[start:end]))
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
    model: SpeechModel, loaded: list[Loaded | None], opts: TranscribeOptions, progress: Progress | None = None,
    timestamps: bool = False, on_done: Done | None = None,
) -> list[Transcript | None]:
    """Checked inputs from :func:`load_all` (None: skipped) -> one :class:`Transcript` each.

    ``progress`` gets ``1 - SCAN_SHARE`` of every input's duration in all (the rest was credited by
    :func:`load_all`): the silence before, between and after speech segments is credited to the segment that
    follows it (the last one takes the tail; an input without speech is credited at once). ``on_done`` gets
    ``(index, transcript)`` pairs as inputs finish (module docstring)."""
    rest = 1.0 - SCAN_SHARE
    windows: list[_Window] = []
    credit: list[float] = []
    for i, x in enumerate(loaded):
        if x is None:
            continue
        spans = plan_windows(x, opts, timestamps)
        prev = 0
        for j, (a, b) in enumerate(spans):
            stop = _length(x) if j == len(spans) - 1 else b  # the last segment takes the tail
            windows.append(_Window(i, a, b))
            credit.append(rest * (stop - prev) / SAMPLE_RATE)
            prev = stop
        if not spans and progress is not None:
            progress(rest * _length(x) / SAMPLE_RATE)
    out: list[Transcript | None] = [None if x is None else Transcript("", [], _length(x) / SAMPLE_RATE)
                                    for x in loaded]
    of_item: list[list[int]] = [[] for _ in loaded]  # window indices per input, in time order
    for k, w in enumerate(windows):
        of_item[w.item].append(k)
    left = [len(ks) for ks in of_item]  # windows not yet decoded, per input
    texts: dict[int, str] = {}  # window index -> text, as batches finish

    def finish(batch: list[int], batch_texts: list[str]) -> None:
        done = []
        for k, text in zip(batch, batch_texts, strict=True):
            texts[k] = text
            left[windows[k].item] -= 1
            if left[windows[k].item] == 0:
                done.append(windows[k].item)
        for i in done:
            t = out[i]
            assert t is not None
            t.segments = [Segment(windows[k].start / SAMPLE_RATE, windows[k].end / SAMPLE_RATE, texts.pop(k))
                          for k in of_item[i]]
            t.text = " ".join(s.text.strip() for s in t.segments if s.text.strip())
        if done and on_done is not None:
            on_done([(i, out[i]) for i in sorted(done)])  # type: ignore[misc]

    silent = [(i, t) for i, t in enumerate(out) if t is not None and not of_item[i]]  # no speech: finished now
    if silent and on_done is not None:
        on_done(silent)  # type: ignore[arg-type]
    try:
        decode_windows(model, loaded, windows, opts, progress, credit, on_batch=finish)
    finally:
        for x in loaded:
            if isinstance(x, LongAudio):
                x.close()
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
    vad = None if opts.segmentation == "fixed" else opts.vad
    loaded, failures = load_all(items, opts.sample_rate, opts.chunk, vad, opts.allow_truncated, progress)
    if failures and opts.on_error == "raise":
        if single:
            raise AudioError(failures[0][1], failures)
        raise batch_failure(items, failures)
    results = transcribe_arrays(model, loaded, opts, progress, timestamps)
    out = results if timestamps else [None if t is None else t.text for t in results]
    return out[0] if single else out


__all__ = ["Segment", "Transcript", "TranscribeOptions", "load_all", "plan_windows", "transcribe",
           "transcribe_arrays"]
