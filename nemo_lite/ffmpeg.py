"""Audio that libsndfile cannot read (m4a/AAC, WMA, AC-3, WebM, ...), decoded by FFmpeg through PyAV.

:mod:`nemo_lite.audio` opens every file with soundfile first; when libsndfile does not recognise the format it
opens it here instead, so transcription, evaluation, ``nemo-lite manifest`` and the server's uploads all read the
same formats. PyAV (``av`` on PyPI, its wheels bundle FFmpeg) is an optional dependency: the ``[ffmpeg]`` extra.
Without it :data:`MISSING` is the one line the user sees.

:class:`FFmpegAudio` offers the part of ``soundfile.SoundFile`` that :mod:`nemo_lite.audio` uses (``samplerate``,
``frames``, ``channels``, ``format``, ``read``, ``seek``, ``tell``, ``seekable``, ``close``), so the same streaming
passes (mix-down, NaN check, soxr resampling to 16 kHz, block by block) run on its output: a long recording is
decoded a few packets at a time and never held at its own rate. Samples come out at the file's own rate and
channel count, as floats in [-1, 1) (integer PCM scaled as soundfile scales it); resampling stays soxr's.

Choices:
- ``frames`` is the container's stated duration (an estimate for raw ADTS AAC, which has no index; -1 when there is
  none). As for mp3, no length check is made against it: a cut-short m4a is decoded as far as it goes.
- ``seek`` decodes forward from the start and drops what precedes the target: sample-exact whatever the codec's
  packet size or priming, at the cost of decoding the skipped part (a manifest slice's offset). ``seekable()`` is
  False, so the damaged-block salvage of :mod:`nemo_lite.audio` (re-reading after a seek) is not tried.
- An AAC encoder's priming samples are dropped by FFmpeg from the edit list (mp4/m4a); the last packet's padding
  (< one 1024-sample frame) is kept, as FFmpeg's decoder returns it.
- A decoder error after some audio ends the read with what was decoded; the error is raised on the next read,
  which :mod:`nemo_lite.audio` reports like libsndfile's ("decoder: ...").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

EXTRA = "ffmpeg"  # pip install 'nemo-lite[ffmpeg]'
MISSING = f"for m4a, aac and the other formats FFmpeg reads, pip install 'nemo-lite[{EXTRA}]' (PyAV)"
# Extensions a directory scan picks up for FFmpeg (libsndfile reads none of them).
EXTENSIONS = frozenset({".m4a", ".m4b", ".mp4", ".aac", ".wma", ".webm", ".mka", ".ac3", ".amr"})
AV_TIME_BASE = 1_000_000  # container.duration is in microseconds (FFmpeg's AV_TIME_BASE)


class FFmpegError(Exception):
    """FFmpeg cannot open or decode the input (its message, one line)."""


def available() -> bool:
    """Whether PyAV can be imported."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _reason(err: Exception) -> str:
    """FFmpeg's own words for an error ("Invalid data found when processing input"), without PyAV's errno and
    file name (the caller names the input)."""
    return getattr(err, "strerror", None) or str(err)


def _to_float(frame: Any, channels: int) -> np.ndarray:
    """A decoded ``av.AudioFrame`` -> (samples, channels) float32 at its own rate."""
    a = frame.to_ndarray()  # planar: (channels, samples); packed: (1, samples * channels)
    a = a.T if frame.format.is_planar else a.reshape(-1, channels)  # (samples, channels)
    if a.dtype == np.uint8:
        a = (a.astype(np.float32) - 128.0) / 128.0
    elif a.dtype.kind == "i":
        a = a.astype(np.float32) / float(-np.iinfo(a.dtype).min)
    return a.astype(np.float32, copy=False)


class FFmpegAudio:
    """One audio stream of a file or file object, decoded front to back (a ``SoundFile``-like reader)."""

    format = "FFMPEG"  # not an exact-length container for nemo_lite.audio: no damage check against ``frames``

    def __init__(self, source: Any) -> None:
        """``source``: a path (str) or a binary file object positioned at the start of the audio."""
        import av

        try:
            self._container = av.open(source, "r")
        except (av.FFmpegError, ValueError) as err:
            raise FFmpegError(_reason(err)) from None
        if not self._container.streams.audio:
            self._container.close()
            raise FFmpegError("no audio stream")
        self._stream = self._container.streams.audio[0]
        ctx = self._stream.codec_context
        self.samplerate = int(ctx.sample_rate or 0)  # Hz, the file's own
        if self.samplerate <= 0:
            self._container.close()
            raise FFmpegError("no sample rate in the audio stream")
        self.channels = int(ctx.layout.nb_channels)
        self.subtype = str(ctx.name)  # the codec, e.g. "aac"
        self.frames = self._stated_frames()  # frames at the file's rate the container states; -1: unknown
        self._decoded: Iterator[Any] = self._container.decode(self._stream)
        self._pending: list[np.ndarray] = []  # decoded (n, channels) pieces not yet read
        self._have = 0  # frames in _pending
        self._position = 0  # frames handed out (or skipped by seek)
        self._ended = False  # the decoder has nothing more
        self._error: str | None = None  # a decoder error met after some audio, raised on the next read

    def _stated_frames(self) -> int:
        s = self._stream
        if s.duration and s.time_base:
            return int(round(float(s.duration * s.time_base) * self.samplerate))
        if self._container.duration:
            return int(round(self._container.duration / AV_TIME_BASE * self.samplerate))
        return -1

    def _fill(self, want: int) -> None:
        """Decode until ``want`` frames are pending (or the stream ends, or the decoder fails)."""
        import av

        while self._have < want and not self._ended and self._error is None:
            try:
                frame = next(self._decoded)
            except StopIteration:
                self._ended = True
                break
            except av.FFmpegError as err:
                if not self._have and not self._position:  # nothing decoded at all: the file is unreadable
                    raise FFmpegError(_reason(err)) from None
                self._error = _reason(err)
                break
            piece = _to_float(frame, self.channels)
            if len(piece):
                self._pending.append(piece)
                self._have += len(piece)

    def _take(self, n: int) -> np.ndarray:
        """The next ``n`` pending frames (fewer at the end), as one (n, channels) array."""
        n = min(n, self._have)
        out = np.concatenate(self._pending) if len(self._pending) > 1 else self._pending[0] if self._pending else \
            np.zeros((0, self.channels), np.float32)  # (have, channels)
        self._pending = [out[n:]] if n < len(out) else []
        self._have -= n
        self._position += n
        return out[:n]

    def read(self, frames: int = -1, dtype: str = "float32", always_2d: bool = True) -> np.ndarray:
        """Up to ``frames`` frames (all that are left for -1) as (n, channels) ``dtype``; empty at the end."""
        if not self._have and self._error is not None:
            error, self._error = self._error, None
            self._ended = True
            raise FFmpegError(error)
        self._fill(frames if frames >= 0 else np.iinfo(np.int64).max)
        data = self._take(frames if frames >= 0 else self._have).astype(dtype, copy=False)
        return data if always_2d or self.channels > 1 else data[:, 0]

    def seek(self, frame: int) -> int:
        """Move to ``frame`` (at the file's rate) by decoding forward and dropping what comes before it."""
        if frame < self._position:
            raise FFmpegError(f"cannot seek back to frame {frame} (decoded front to back)")
        while self._position < frame:
            self._fill(frame - self._position)
            if not self._have:
                break
            self._take(frame - self._position)
        return self._position

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> FFmpegAudio:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
