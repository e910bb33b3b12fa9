"""Subtitle cues from timed segments, and SubRip (.srt) / WebVTT (.vtt) text.

One cue per segment ``(start_seconds, end_seconds, text)`` whose text is not empty. A segment longer than
``max_cue_seconds`` (7 s) or with more text than fits ``max_lines`` (2) lines of ``line_chars`` (42) characters is
shared out over several cues, cut at word boundaries into groups of about equal length in characters; each cue's
lines are balanced (the break that makes the longer line shortest). 42 characters by 2 lines and ~7 s per cue are
the common broadcast/streaming guidance (~17-20 characters a second). Only a word longer than a line is broken
inside (into line-long pieces), so no line is ever over the width.

Times of cues cut from one segment are ESTIMATES: the segment's time is shared out in proportion to the
characters of each cue, as if speech ran at an even rate. Only the segment's own start and end come from the
audio (the voice-activity segments). The first cue starts at the segment start, the last ends at its end, and
times never decrease.

Text is put on one line per cue line: whitespace (newlines included) collapses to single spaces, since a blank
line would end a cue early, and ``-->`` is rewritten as ``->`` (repeatedly, so ``--->`` cannot turn back into
it), since it would be read as a timing line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SubtitleOptions:
    max_cue_seconds: float = 7.0  # a longer segment is cut into several cues (unless it is a single word)
    line_chars: int = 42  # widest line, in characters
    max_lines: int = 2  # lines per cue

    def __post_init__(self) -> None:
        if self.max_cue_seconds <= 0 or self.line_chars < 1 or self.max_lines < 1:
            raise ValueError(f"invalid subtitle options {self}")


@dataclass(frozen=True)
class Cue:
    start: float  # seconds
    end: float  # seconds (>= start)
    lines: tuple[str, ...]  # 1 to max_lines lines of text, none empty, none containing "-->" or a newline

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def clean(text: str) -> str:
    """Cue-safe text: whitespace collapsed to single spaces, every ``-->`` gone."""
    text = " ".join(text.split())
    while "-->" in text:
        text = text.replace("-->", "->")
    return text


def _words(text: str, width: int) -> list[str]:
    """Words of ``text``, any longer than ``width`` broken into ``width``-long pieces."""
    return [w[i:i + width] for w in text.split() for i in range(0, len(w), width)]


def layout(words: list[str], width: int, max_lines: int) -> list[str] | None:
    """``words`` as at most ``max_lines`` lines of at most ``width`` characters, or None if they do not fit.

    Greedy filling decides whether they fit; two lines are then rebalanced at the break that makes the longer
    line shortest (ties: the longer line on top).
    """
    lines: list[list[str]] = []
    for w in words:
        if lines and len(" ".join(lines[-1])) + 1 + len(w) <= width:
            lines[-1].append(w)
        else:
            lines.append([w])
    if len(lines) > max_lines:
        return None
    if len(lines) == 2:
        splits = [(max(len(" ".join(words[:k])), len(" ".join(words[k:]))), -k, k) for k in range(1, len(words))]
        k = min(s for s in splits if s[0] <= width)[2]
        return [" ".join(words[:k]), " ".join(words[k:])]
    return [" ".join(line) for line in lines]


def _groups(words: list[str], n: int) -> list[list[str]]:
    """``words`` in ``n`` consecutive non-empty groups of about equal characters (cut nearest to k/n of the text)."""
    ends = []  # character position after each word, spaces included
    pos = 0
    for w in words:
        pos += len(w) + (1 if ends else 0)
        ends.append(pos)
    cuts, last = [], 0
    for k in range(1, n):
        target = pos * k / n
        lo, hi = last + 1, len(words) - (n - k)  # leave at least one word for each group still to come
        best = min(range(lo, hi + 1), key=lambda i: (abs(ends[i - 1] - target), i))
        cuts.append(best)
        last = best
    bounds = [0, *cuts, len(words)]
    return [words[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def split_segment(start: float, end: float, text: str, opts: SubtitleOptions = SubtitleOptions()) -> list[Cue]:
    """One segment -> its cues (none when the text is empty); times shared out by characters (estimates)."""
    words = _words(clean(text), opts.line_chars)
    if not words:
        return []
    start, end = float(start), float(max(end, start))
    n = max(1, math.ceil((end - start) / opts.max_cue_seconds))
    n = min(n, len(words))
    while True:
        groups = _groups(words, n)
        laid = [layout(g, opts.line_chars, opts.max_lines) for g in groups]
        if all(lines is not None for lines in laid):
            break
        n += 1  # some group needs more lines than a cue has: cut finer (one word per group always fits)
    weights = [len(" ".join(g)) for g in groups]
    total, cues, acc = sum(weights), [], 0
    for i, lines in enumerate(laid):
        a = start + (end - start) * acc / total
        acc += weights[i]
        b = end if i == len(laid) - 1 else start + (end - start) * acc / total
        cues.append(Cue(a, b, tuple(lines)))
    return cues


def subtitle_cues(segments: Iterable[tuple[float, float, str]], opts: SubtitleOptions = SubtitleOptions()
                  ) -> list[Cue]:
    """Timed segments ``(start_seconds, end_seconds, text)`` in order -> cues (see the module docstring)."""
    return [cue for start, end, text in segments for cue in split_segment(start, end, text, opts)]


def clock(seconds: float, sep: str) -> str:
    """``HH:MM:SS<sep>mmm`` (rounded to the millisecond; hours grow past 99 if need be)."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: Iterable[Cue]) -> str:
    """SubRip: numbered cues from 1, ``HH:MM:SS,mmm --> HH:MM:SS,mmm``, the lines, a blank line."""
    return "".join(f"{i}\n{clock(c.start, ',')} --> {clock(c.end, ',')}\n{c.text}\n\n" for i, c in enumerate(cues, 1))


def to_vtt(cues: Iterable[Cue]) -> str:
    """WebVTT: the ``WEBVTT`` header, then ``HH:MM:SS.mmm --> HH:MM:SS.mmm``, the lines, a blank line per cue."""
    return "WEBVTT\n\n" + "".join(f"{clock(c.start, '.')} --> {clock(c.end, '.')}\n{c.text}\n\n" for c in cues)
