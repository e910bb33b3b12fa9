"""The serving engine: the one module of :mod:`nemo_lite.serve` that touches the model.

Everything else in the server (scheduler, HTTP routes, page) talks to :class:`Engine`, so when the core's
speech-LM interface changes only this file follows it. By default the engine lives in the model process
(:mod:`.worker`), which receives each batch's window samples (:func:`window_samples`, read on the server's side)
and runs :meth:`Engine.transcribe_clips`; with ``--no-model-process`` it runs on the scheduler's worker thread.

The engine adds no decoding of its own: ASR rows go through
the same transcription functions as ``CanaryQwen.transcribe`` and the CLI (:func:`~nemo_lite.transcription.load_all`
to check an input and cut its windows, :func:`~nemo_lite.transcription.decode_windows` to decode one batch of
windows), chat rows through ``model.generate``. A batch may mix rows of several requests; each row is cut to its
own token budget, so a request's result does not depend on what it was batched with.

Model calls used (the :class:`~nemo_lite.speechlm.SpeechLM` interface, either design):
``load_all([path], SAMPLE_RATE, chunk, vad)``, ``plan_windows(loaded, opts)``, ``decode_windows(model, loaded,
windows, opts)`` with ``_Window(item, start, end)``; ``model.generate(prompts=, audios=, max_new_tokens=,
batch_size=)``, ``model.decode(ids)``, ``model.prompt_ids(turns)``, ``model.audio_frames(samples)`` (usage counts
only), ``model.audio_tag``, ``model.eos_id``.

Segments: an upload is planned as ``model.transcribe(path, timestamps=...)`` plans it: ``json``/``text`` without
timestamps (one pass for a clip within the model's window, speech segments for longer input), so their text equals
``model.transcribe(path)``; ``srt``/``vtt``/``verbose_json`` and streams with timestamps (speech segments, VAD),
so they equal ``model.transcribe(path, timestamps=True)`` and its ``to_srt()``/``to_vtt()`` — the same split as
the CLI's txt vs json/srt/vtt outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..audio import SAMPLE_RATE, AudioError, load_audio
from ..longform import ChunkOptions, LongAudio
from ..prompts import Turn
from ..transcription import (
    Loaded,
    Segment,
    TranscribeOptions,
    Transcript,
    _samples,
    _Window,
    decode_windows,
    load_all,
    plan_windows,
)


@dataclass(eq=False)
class Planned:
    """A checked upload: its samples (or a long file left on disk) and the windows it will be decoded in."""

    loaded: Loaded  # 16 kHz samples in memory, or a LongAudio read window by window
    windows: list[tuple[int, int]]  # 16 kHz sample ranges in time order (speech segments or one window)
    samples: int  # 16 kHz samples in the whole input

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    def close(self) -> None:
        """Close a long file's open decoding pass (the spooled file itself belongs to the caller)."""
        if isinstance(self.loaded, LongAudio):
            self.loaded.close()


@dataclass(frozen=True)
class ChatRow:
    turns: list[Turn]  # the dialog; user turns may hold the audio tag, once per audio
    audios: list[np.ndarray]  # 16 kHz samples, in tag order
    max_new_tokens: int  # this row's budget


@dataclass(frozen=True)
class Answer:
    text: str  # the decoded answer
    prompt_tokens: int  # prompt length with the audio frames (OpenAI's usage.prompt_tokens)
    completion_tokens: int  # new tokens, the end-of-turn token included
    stopped: bool  # ended at end-of-turn (finish_reason "stop"), not at the budget ("length")


def plan(path: str, chunk: ChunkOptions, timestamps: bool = False) -> Planned:
    """Check an uploaded file and plan its windows as ``model.transcribe(path)`` does (no model work). Raises
    :class:`AudioError`. A file longer than one window is scanned, not held (the CLI's long-form path, with the VAD
    on the same pass); it is read again per segment."""
    opts = TranscribeOptions(chunk=chunk)
    loaded, failures = load_all([path], SAMPLE_RATE, chunk, opts.vad)
    if failures:
        raise AudioError(failures[0][1], failures)
    x = loaded[0]
    assert x is not None
    return Planned(x, plan_windows(x, opts, timestamps), x.length if isinstance(x, LongAudio) else len(x))


def window_samples(planned: Planned, k: int) -> np.ndarray:
    """Window ``k`` of a checked input: a slice of its samples, or read from its long file (in window order)."""
    return _samples(planned.loaded, _Window(0, *planned.windows[k]))


def load_clip(data: bytes) -> np.ndarray:
    """An audio file's bytes (chat ``input_audio``) -> 16 kHz samples. Raises :class:`AudioError`."""
    return load_audio(data)


def assemble(planned: Planned, texts: list[str]) -> Transcript:
    """Window texts -> the :class:`Transcript` that ``CanaryQwen.transcribe(..., timestamps=True)`` returns
    (same segments and joining as :func:`~nemo_lite.transcription.transcribe_arrays`)."""
    segments = [Segment(a / SAMPLE_RATE, b / SAMPLE_RATE, t) for (a, b), t in zip(planned.windows, texts, strict=True)]
    text = " ".join(s.text.strip() for s in segments if s.text.strip())
    return Transcript(text, segments, planned.duration)


class Engine:
    """The loaded model and the two kinds of batch the scheduler runs. Used from the worker thread only."""

    def __init__(self, model, chunk: ChunkOptions | None = None, max_new_tokens: int | None = None) -> None:
        self.model = model  # a SpeechLM (either design)
        self.chunk = chunk or ChunkOptions(max_chunk_seconds=model.window_seconds)  # the model's window, as the CLI
        self.max_new_tokens = max_new_tokens  # per ASR window; None: the duration-based default budget

    @property
    def audio_tag(self) -> str:
        return self.model.audio_tag

    def transcribe_windows(self, rows: list[tuple[Planned, int]]) -> list[str]:
        """One decoding batch of windows ``(input, window index)``, from any number of inputs -> text per row.

        Windows of one long input must come in order (its file is read front to back)."""
        return self.transcribe_clips([window_samples(planned, k) for planned, k in rows])

    def transcribe_clips(self, clips: list[np.ndarray]) -> list[str]:
        """One decoding batch of windows' 16 kHz samples -> text per clip (what the model process receives)."""
        windows = [_Window(i, 0, len(c)) for i, c in enumerate(clips)]
        opts = TranscribeOptions(batch_size=len(windows), max_new_tokens=self.max_new_tokens, chunk=self.chunk)
        return decode_windows(self.model, list(clips), windows, opts)

    def generate(self, rows: list[ChatRow]) -> list[Answer]:
        """One batch of chat rows (all with audio, or all without) -> an answer per row, cut to the row's budget.

        Decoding to text and counting the prompt happen here, on the worker, since the tokenizer is not safe to
        share between threads."""
        budgets = [r.max_new_tokens for r in rows]
        audios = [a for r in rows for a in r.audios]
        ids = self.model.generate(prompts=[r.turns for r in rows], audios=audios or None,
                                  max_new_tokens=max(budgets), batch_size=len(rows))
        out = []
        for row, new, n in zip(rows, ids, budgets, strict=True):
            new = new[:n]
            stopped = bool(new) and new[-1] == self.model.eos_id
            out.append(Answer(self.model.decode(new), self.prompt_tokens(row), len(new), stopped))
        return out

    def prompt_tokens(self, row: ChatRow) -> int:
        """Prompt length the LLM sees: the dialog's tokens with each audio tag replaced by the audio's frames."""
        ids = self.model.prompt_ids(row.turns)
        frames = sum(self.model.audio_frames(len(a)) for a in row.audios)
        return int(ids.numel()) - len(row.audios) + frames
