"""Long recordings: split audio longer than a limit into windows at low-energy points, with no extra model.

Canary-Qwen was trained on utterances up to 40 s, so longer audio is cut into windows of at most
``max_chunk_seconds``. Each cut goes at the quietest point of the last ``search_seconds`` before the limit:
frame RMS energy on 20 ms frames, smoothed over 100 ms so a short stop consonant inside a word does not win over a
real pause. Windows are contiguous and cover every sample exactly once (no overlap, nothing dropped), so their
texts can be joined in order. NeMo's own long-form path (``transcribe`` with buffered/chunked inference) is not
used by SALM; this is our choice, not a port.

Only the search regions are scanned, so the cost is a few seconds of audio per cut, independent of length.

Files are not loaded to be cut. :func:`scan` decodes a file once in pieces of a few seconds and finds the cuts
with :class:`WindowSplitter` (the same code :func:`split_windows` runs, so the cuts are identical), keeping only
the samples a later cut can still look at: from the current search region on, about ``search_seconds`` + 1 s +
one piece. A file longer than one window comes back as :class:`LongAudio`, which holds no samples; its windows
are decoded again, front to back, when their batch is transcribed. As both passes decode exactly as
:func:`~nemo_lite.audio.load_audio` does (same mix-down, same streaming soxr resampler), window samples equal
slices of the fully loaded array bit for bit, at every sample rate and in every format. Memory for a long file is
therefore a few seconds of samples, whatever its length; arrays and tensors are already in memory and are split
as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .audio import SAMPLE_RATE, AudioError, FileAudio

if TYPE_CHECKING:
    from .vad import VoiceDetector

FRAME = 320  # energy frame: 20 ms at 16 kHz
SMOOTH_FRAMES = 5  # moving average over 5 frames = 100 ms: a pause, not a plosive's closure
MIN_LAST_SECONDS = 1.0  # the last window is kept at least this long when the search region allows it
MIN_LAST = int(MIN_LAST_SECONDS * SAMPLE_RATE)  # the same in samples
_EMPTY = np.zeros(0, np.float32)  # no samples (never written to)


@dataclass(frozen=True)
class ChunkOptions:
    max_chunk_seconds: float = 40.0  # longest window; Canary-Qwen's training utterances were up to 40 s
    search_seconds: float = 5.0  # the cut is searched in the last this-many seconds before the limit (at most
    # half the limit, so short limits such as 4 s still make progress with the default)

    def __post_init__(self) -> None:
        if self.max_chunk_seconds <= 0:
            raise ValueError(f"max_chunk_seconds must be > 0, got {self.max_chunk_seconds}")
        if self.search_seconds < 0:
            raise ValueError(f"search_seconds must be >= 0, got {self.search_seconds}")

    @property
    def max_samples(self) -> int:
        return max(FRAME, int(round(self.max_chunk_seconds * SAMPLE_RATE)))

    @property
    def search_samples(self) -> int:
        return min(int(round(self.search_seconds * SAMPLE_RATE)), self.max_samples // 2)


def frame_energy(audio: np.ndarray) -> np.ndarray:
    """Mean square per 20 ms frame (a trailing partial frame is dropped): (N,) -> (N // FRAME,)."""
    n = len(audio) // FRAME
    frames = audio[: n * FRAME].reshape(n, FRAME)  # (n_frames, FRAME)
    return np.einsum("ij,ij->i", frames, frames, dtype=np.float64) / FRAME  # mean square, no (n, FRAME) temp


def quietest_point(audio: np.ndarray, lo: int, hi: int) -> int:
    """Sample index in ``[lo, hi]`` at the centre of the quietest 100 ms of ``audio[lo:hi]``.

    Ties go to the latest point, which keeps windows long. Regions shorter than one frame return ``hi``.
    """
    energy = frame_energy(audio[lo:hi])  # (F,)
    if len(energy) == 0:
        return hi
    k = min(SMOOTH_FRAMES, len(energy))
    smooth = np.convolve(energy, np.ones(k) / k, mode="valid")  # (F - k + 1,)
    best = len(smooth) - 1 - int(np.argmin(smooth[::-1]))  # last index of the minimum
    centre = lo + (best * FRAME) + (k * FRAME) // 2  # middle of the k frames averaged at ``best``
    return min(max(centre, lo), hi)


def search_region(start: int, total: int, opts: ChunkOptions) -> tuple[int, int]:
    """``(lo, hi)``: where the cut ending the window that begins at ``start`` is searched, in a ``total``-sample input.

    The last ``search_seconds`` before the limit, ending at least ``MIN_LAST_SECONDS`` before the end when possible.
    ``hi`` depends on ``total`` only when ``total < start + limit + MIN_LAST``; ``lo`` never does.
    """
    limit = opts.max_samples
    lo = max(start + limit - opts.search_samples, start + 1)
    hi = min(start + limit, total - MIN_LAST)
    return lo, max(hi, lo)


class WindowSplitter:
    """The cuts of :func:`split_windows`, found while the audio arrives in pieces (:meth:`feed`, then :meth:`finish`).

    A cut is decided as soon as ``MIN_LAST_SECONDS`` past the limit have arrived, since the end of the input can no
    longer move it. Once the input is longer than the limit, pieces wholly before the current search region are
    dropped; until then all are kept, so for audio within one window :meth:`audio` returns every sample.
    """

    def __init__(self, opts: ChunkOptions = ChunkOptions()) -> None:
        self.opts = opts  # window limit and cut search
        self.windows: list[tuple[int, int]] = []  # decided (start, end) ranges, in order
        self.start = 0  # first sample of the window not yet closed
        self.total = 0  # samples fed so far
        self._pieces: list[np.ndarray] = []  # samples kept, in order
        self._base = 0  # index of the first kept sample

    def feed(self, piece: np.ndarray) -> WindowSplitter:
        if len(piece):
            self._pieces.append(piece)
            self.total += len(piece)
        while self.total - self.start >= self.opts.max_samples + MIN_LAST:  # hi = start + limit, whatever follows
            self._cut()
        if self.total > self.opts.max_samples:  # surely more than one window: drop what no later cut looks at
            lo = search_region(self.start, self.total, self.opts)[0]
            while self._pieces and self._base + len(self._pieces[0]) <= lo:
                self._base += len(self._pieces.pop(0))
        return self

    @property
    def kept(self) -> int:
        """Samples held now."""
        return sum(len(p) for p in self._pieces)

    def finish(self) -> list[tuple[int, int]]:
        """All windows, now that the length is known: contiguous from 0 to ``total``."""
        while self.total - self.start > self.opts.max_samples:
            self._cut()
        self.windows.append((self.start, self.total))
        return self.windows

    def audio(self) -> np.ndarray:
        """Every sample fed, for an input that never exceeded the limit (nothing was dropped)."""
        if self._base:
            raise RuntimeError("samples were dropped: the input is longer than one window")
        if len(self._pieces) == 1:
            return self._pieces[0]
        return np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32)

    def _cut(self) -> None:
        lo, hi = search_region(self.start, self.total, self.opts)
        cut = lo + quietest_point(self._samples(lo, hi), 0, hi - lo)
        self.windows.append((self.start, cut))
        self.start = cut

    def _samples(self, lo: int, hi: int) -> np.ndarray:
        """Kept samples ``[lo, hi)``: a view when they lie in one piece (frame energies do not depend on it)."""
        parts, pos = [], self._base
        for piece in self._pieces:
            a, b = max(lo, pos), min(hi, pos + len(piece))
            if b > a:
                parts.append(piece[a - pos:b - pos])
            pos += len(piece)
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)


def split_windows(audio: np.ndarray, opts: ChunkOptions = ChunkOptions()) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges covering ``audio`` in order, each at most ``opts.max_samples`` long.

    Audio within the limit is one window. Otherwise every cut lies in the last ``search_seconds`` before the
    limit (and, when possible, at least ``MIN_LAST_SECONDS`` before the end), at :func:`quietest_point`.
    """
    return WindowSplitter(opts).feed(audio).finish()


@dataclass
class LongAudio:
    """A file longer than one window, left in the file: windows from one :func:`scan`, samples decoded per window.

    :meth:`read` decodes front to back, keeping the current piece, so reading the windows in order costs one more
    decoding pass in all and holds a few seconds of samples; a range before the last one read restarts the pass.
    """

    file: FileAudio  # where the samples are decoded from
    windows: list[tuple[int, int]]  # 16 kHz sample ranges from the scan: contiguous, 0 to ``length``
    length: int  # 16 kHz samples in the whole recording
    chunk: ChunkOptions  # the options the windows were cut with
    detector: VoiceDetector | None = None  # the voice-activity pass run during the scan, when one was asked for
    _pass: Iterator[np.ndarray] | None = field(default=None, init=False, repr=False, compare=False)  # the open pass
    _head: np.ndarray = field(default_factory=lambda: _EMPTY, init=False, repr=False, compare=False)  # its piece
    _head_start: int = field(default=0, init=False, repr=False, compare=False)  # index of ``_head[0]``

    def read(self, start: int, end: int) -> np.ndarray:
        """Samples ``[start, end)`` at 16 kHz: equal to ``load_audio(file)[start:end]``."""
        if self._pass is None or start < self._head_start:
            self.close()
            self._pass = self.file.pieces()
        out = np.empty(end - start, dtype=np.float32)
        while True:
            head_end = self._head_start + len(self._head)
            a, b = max(start, self._head_start), min(end, head_end)
            if b > a:
                out[a - start:b - start] = self._head[a - self._head_start:b - self._head_start]
            if head_end >= end:
                break
            piece = next(self._pass, None)
            if piece is None:
                raise AudioError(f"{self.file.name}: audio ends at sample {head_end}, but it had {self.length} "
                                 "when it was scanned (changed while being transcribed?)")
            self._head, self._head_start = piece, head_end
        if end >= self.length:
            self.close()
        return out

    def close(self) -> None:
        """End the open pass (its file is closed); the next :meth:`read` starts a new one."""
        if self._pass is not None:
            self._pass.close()
        self._pass, self._head, self._head_start = None, _EMPTY, 0


def scan(file: FileAudio, opts: ChunkOptions = ChunkOptions(), detector: VoiceDetector | None = None,
         progress: Callable[[int], None] | None = None) -> np.ndarray | LongAudio:
    """Decode ``file`` once: its samples if they fit one window, else a :class:`LongAudio` holding none.

    The pass checks what :func:`~nemo_lite.audio.load_audio` checks (missing, empty or undecodable file, NaN/inf
    samples, no samples at all) and raises the same :class:`AudioError`; the windows are those
    :func:`split_windows` cuts from the loaded array. ``detector``: a voice-activity detector fed the same pieces
    (one decoding pass for both); a long file keeps it (:attr:`LongAudio.detector`), finished. ``progress``:
    called with the 16 kHz samples of each piece scanned. A damaged (cut short) file raises
    :class:`~nemo_lite.audio.DamagedAudioError` at the end of the pass unless ``file.allow_truncated``.
    """
    splitter = WindowSplitter(opts)
    held: list[np.ndarray] | None = []  # pieces not yet fed to the detector; None once it is fed as they come
    for piece in file.pieces():
        splitter.feed(piece)
        if detector is not None and held is not None:
            # The detector starts only once the input is known to be longer than one window: a clip that fits
            # returns its samples and is never segmented from this pass (plan_windows runs its own detector
            # when it needs one), so its VAD work would be thrown away (it was ~70 % of checking a short clip).
            held.append(piece)
            if splitter.total > opts.max_samples:
                for p in held:
                    detector.feed(p)
                held = None
        elif detector is not None:
            detector.feed(piece)
        if progress is not None:
            progress(len(piece))
    windows = splitter.finish()
    if splitter.total == 0:
        raise AudioError(f"{file.name}: audio is empty (0 samples)")
    if len(windows) == 1:
        return np.ascontiguousarray(splitter.audio())
    if detector is not None:
        detector.finish()
    return LongAudio(file, windows, splitter.total, opts, detector)
