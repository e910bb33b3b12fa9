"""Long recordings: split audio longer than a limit into windows at low-energy points, with no extra model.

Canary-Qwen was trained on utterances up to 40 s, so longer audio is cut into windows of at most
``max_chunk_seconds``. Each cut goes at the quietest point of the last ``search_seconds`` before the limit:
frame RMS energy on 20 ms frames, smoothed over 100 ms so a short stop consonant inside a word does not win over a
real pause. Windows are contiguous and cover every sample exactly once (no overlap, nothing dropped), so their
texts can be joined in order. NeMo's own long-form path (``transcribe`` with buffered/chunked inference) is not
used by SALM; this is our choice, not a port.

Only the search regions are scanned, so the cost is a few seconds of audio per cut, independent of length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE

FRAME = 320  # energy frame: 20 ms at 16 kHz
SMOOTH_FRAMES = 5  # moving average over 5 frames = 100 ms: a pause, not a plosive's closure
MIN_LAST_SECONDS = 1.0  # the last window is kept at least this long when the search region allows it


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


def split_windows(audio: np.ndarray, opts: ChunkOptions = ChunkOptions()) -> list[tuple[int, int]]:
    """``(start, end)`` sample ranges covering ``audio`` in order, each at most ``opts.max_samples`` long.

    Audio within the limit is one window. Otherwise every cut lies in the last ``search_seconds`` before the
    limit (and, when possible, at least ``MIN_LAST_SECONDS`` before the end), at :func:`quietest_point`.
    """
    total, limit = len(audio), opts.max_samples
    windows, start = [], 0
    while total - start > limit:
        hi = min(start + limit, total - int(MIN_LAST_SECONDS * SAMPLE_RATE))
        lo = max(start + limit - opts.search_samples, start + 1)
        hi = max(hi, lo)
        cut = quietest_point(audio, lo, hi)
        windows.append((start, cut))
        start = cut
    windows.append((start, total))
    return windows
