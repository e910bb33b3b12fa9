"""Speech regions -> segments to transcribe: split long regions at pauses, merge short fragments, pad the edges.

Pure functions on 16 kHz sample indices and Silero's per-chunk speech probabilities (:mod:`nemo_lite.vad`; chunk
``i`` covers samples ``[512 i, 512 (i + 1))``), so no audio is needed to segment. Three steps, in this order:

1. :func:`split_long`: a region longer than the limit is cut at a pause (a run of chunks below
   ``pause_threshold``, shorter than the VAD's ``min_silence`` or it would have ended the region). Among the
   pauses after which both pieces fit the limit the longest wins; if there is none, the longest pause that leaves
   both pieces at least ``min_segment_seconds`` long, and the pieces are split again. The pause itself is left
   out of both pieces. With no pause at all the cut goes at the lowest speech probability (averaged over 3 chunks,
   ~100 ms) in the range where it keeps both pieces under the limit. The limit here is ``max_segment_seconds``
   less both paddings, so no padded segment ever exceeds ``max_segment_seconds``.
2. :func:`merge_short`: a segment shorter than ``min_segment_seconds`` joins its nearer neighbour when the gap is
   at most ``merge_gap_seconds`` and the union still fits the limit (very short clips make speech LLMs invent
   text). A short segment with no such neighbour is kept: it may be a real "yes".
3. :func:`pad`: each segment grows by ``pad_seconds`` at both ends, but never past the middle of the gap to a
   neighbour (segments never overlap) nor past the ends of the recording.

The defaults were chosen from measurements on espeak-ng recordings with known boundaries (docs/vad.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio import SAMPLE_RATE, AudioInput, FileAudio
from .vad import CHUNK, SileroVAD, VadOptions, detect

SMOOTH_CHUNKS = 3  # probabilities averaged over 3 chunks (~100 ms) to find a cut where there is no pause


@dataclass(frozen=True)
class SegmentationOptions:
    max_segment_seconds: float = 20.0  # no segment is longer (padding included); phrase-length subtitle cues
    min_segment_seconds: float = 1.0  # shorter segments are merged into a close neighbour when one fits
    merge_gap_seconds: float = 1.0  # the largest silence a short segment is merged across
    pad_seconds: float = 0.2  # context added before and after each segment (covers Silero's late onsets)
    pause_threshold: float = 0.35  # inside a region, chunks below this speech probability form a pause

    def __post_init__(self) -> None:
        if self.max_segment_seconds <= 2 * self.pad_seconds + CHUNK / SAMPLE_RATE:
            raise ValueError(f"max_segment_seconds ({self.max_segment_seconds}) must exceed both paddings + 32 ms")
        if min(self.min_segment_seconds, self.merge_gap_seconds, self.pad_seconds) < 0:
            raise ValueError("min_segment_seconds, merge_gap_seconds and pad_seconds must be >= 0")
        if self.min_segment_seconds > self.max_segment_seconds - 2 * self.pad_seconds:  # else a cut has no room
            raise ValueError(f"min_segment_seconds ({self.min_segment_seconds}) must not exceed max_segment_seconds "
                             "less both paddings")

    @property
    def limit(self) -> int:
        """Longest unpadded segment, in samples."""
        return int(round((self.max_segment_seconds - 2 * self.pad_seconds) * SAMPLE_RATE))

    @property
    def min_samples(self) -> int:
        return int(round(self.min_segment_seconds * SAMPLE_RATE))


def pauses(probs: np.ndarray, start: int, end: int, threshold: float) -> list[tuple[int, int]]:
    """(first, past-last) sample of each run of chunks below ``threshold`` lying strictly inside [start, end)."""
    lo, hi = -(-start // CHUNK), end // CHUNK  # whole chunks inside the region
    quiet = np.concatenate([[False], probs[lo:hi] < threshold, [False]])  # (hi - lo + 2,)
    edges = np.flatnonzero(np.diff(quiet.astype(np.int8)))  # rises at run starts, falls at run ends
    runs = [((lo + a) * CHUNK, (lo + b) * CHUNK) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    return [(a, b) for a, b in runs if start < a and b < end]


def lowest_point(probs: np.ndarray, lo: int, hi: int) -> int:
    """A chunk boundary in samples within [lo, hi] at the lowest 3-chunk mean probability (first if tied)."""
    first, last = -(-lo // CHUNK), hi // CHUNK  # boundaries k * CHUNK inside [lo, hi]
    if last <= first:
        return (lo + hi) // 2
    padded = np.pad(probs, (1, 1), mode="edge")  # (C + 2,): chunk k's 3-mean is padded[k:k+3].mean()
    smooth = np.convolve(padded, np.ones(SMOOTH_CHUNKS) / SMOOTH_CHUNKS, mode="valid")  # (C,)
    ks = np.arange(first, last + 1)  # candidate boundaries: the chunk that starts there
    score = smooth[np.minimum(ks, len(smooth) - 1)]
    return int(ks[int(np.argmin(score))]) * CHUNK


def split_long(start: int, end: int, probs: np.ndarray, opts: SegmentationOptions) -> list[tuple[int, int]]:
    """[start, end) as pieces of at most ``opts.limit`` samples, cut at pauses (see the module docstring)."""
    limit, shortest = opts.limit, opts.min_samples
    if end - start <= limit:
        return [(start, end)]
    runs = pauses(probs, start, end, opts.pause_threshold)
    fits = [(a, b) for a, b in runs if a - start <= limit and end - b <= limit]
    roomy = [(a, b) for a, b in runs if a - start >= shortest and end - b >= shortest]
    if fits or roomy:
        a, b = max(fits or roomy, key=lambda r: (r[1] - r[0], -abs((r[0] - start) - (end - r[1]))))
        return split_long(start, a, probs, opts) + split_long(b, end, probs, opts)
    if end - start <= 2 * limit:  # one cut in [end - limit, start + limit] leaves both pieces within the limit
        lo, hi = end - limit, start + limit
        lo, hi = (max(lo, start + shortest), min(hi, end - shortest)) if end - start >= 2 * shortest else (lo, hi)
    else:
        lo, hi = start + limit // 2, start + limit
    cut = min(max(lowest_point(probs, lo, hi), lo), hi)
    return split_long(start, cut, probs, opts) + split_long(cut, end, probs, opts)


def merge_short(segments: list[tuple[int, int]], opts: SegmentationOptions) -> list[tuple[int, int]]:
    """Join each segment shorter than ``min_segment_seconds`` to its nearer neighbour across a gap of at most
    ``merge_gap_seconds`` when the union fits the limit; repeated until nothing changes."""
    segs = list(segments)
    gap_max = opts.merge_gap_seconds * SAMPLE_RATE
    i = 0
    while i < len(segs):
        a, b = segs[i]
        options = []  # (gap, neighbour index)
        if b - a < opts.min_samples:
            for j in (i - 1, i + 1):
                if 0 <= j < len(segs):
                    gap = segs[i][0] - segs[j][1] if j < i else segs[j][0] - b
                    union = (min(a, segs[j][0]), max(b, segs[j][1]))
                    if gap <= gap_max and union[1] - union[0] <= opts.limit:
                        options.append((gap, j))
        if not options:
            i += 1
            continue
        j = min(options)[1]
        lo = min(i, j)
        segs[lo:lo + 2] = [(segs[lo][0], segs[lo + 1][1])]
        i = max(lo - 1, 0)  # the union may itself still be short, or make the one before it mergeable
    return segs


def pad(segments: list[tuple[int, int]], opts: SegmentationOptions, total: int) -> list[tuple[int, int]]:
    """Grow each segment by ``pad_seconds`` each side, stopping at the middle of a gap and at [0, total]."""
    p = int(round(opts.pad_seconds * SAMPLE_RATE))
    out = []
    for i, (a, b) in enumerate(segments):
        lo = 0 if i == 0 else (segments[i - 1][1] + a + 1) // 2
        hi = total if i == len(segments) - 1 else (b + segments[i + 1][0]) // 2
        out.append((max(a - p, lo, 0), min(b + p, hi, total)))
    return out


def segment(regions: list[tuple[int, int]], probs: np.ndarray, total: int,
            opts: SegmentationOptions = SegmentationOptions()) -> list[tuple[int, int]]:
    """Speech regions (samples) of a ``total``-sample recording -> (start, end) segments in order, each at most
    ``max_segment_seconds`` long. ``probs``: the VAD's (chunks,) speech probabilities."""
    pieces = [piece for a, b in regions for piece in split_long(a, b, probs, opts)]
    return pad(merge_short(pieces, opts), opts, total)


def speech_segments(audio: AudioInput | FileAudio, vad: VadOptions | None = None,
                    opts: SegmentationOptions = SegmentationOptions(),
                    model: SileroVAD | None = None) -> list[tuple[int, int]]:
    """Detect speech in ``audio`` (streamed when it is a file) and segment it: (start, end) 16 kHz samples.

    ``vad``: detector options (default ``VadOptions()``); ``model``: a loaded VAD (default: the cached one).
    """
    detector = detect(audio, vad or VadOptions(), model)
    return segment(detector.regions, detector.probabilities, detector.total, opts)
