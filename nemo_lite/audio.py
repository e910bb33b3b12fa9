"""Audio input: paths, bytes, file objects, numpy arrays and torch tensors -> float32 mono 16 kHz numpy arrays.

Decoding uses soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3), streamed block by block so a long file never
sits in memory at its own rate and channel count. Any sample rate is resampled with soxr at its high-quality setting
(what librosa uses by default); files and arrays get bit-identical resampling. Multi-channel audio is averaged to
mono; integer PCM is scaled to [-1, 1) the way soundfile does. Every problem raises :class:`AudioError` naming
the input. A format libsndfile does not recognise (m4a/AAC, WMA, AC-3, WebM, ...) is opened by FFmpeg through PyAV
instead (:mod:`nemo_lite.ffmpeg`, the ``[ffmpeg]`` extra), a reader with the same interface, so it goes through the
same streaming passes; without PyAV the error says which extra to install.

A file can also be wrapped as :class:`FileAudio` and decoded in passes of small blocks (:meth:`FileAudio.pieces`),
each giving exactly the samples :func:`load_audio` would: :mod:`nemo_lite.longform` uses this to transcribe long
recordings without holding them. :meth:`FileAudio.slice` is a part of a file (NeMo manifests' ``offset`` and
``duration``, in seconds): only that part is decoded, from a seek at the file's own rate, and it is mixed down and
resampled like a whole file (so it equals :func:`load_audio` of the cut array at the file's rate).

Damaged files: a file whose container promises more audio than it holds (a WAV or FLAC cut short by an interrupted
copy or download) raises :class:`DamagedAudioError` saying how much is there and how much was promised, instead
of being read silently as a shorter clip. libsndfile itself clamps a WAV's frame count to what the file holds, so
for PCM WAV the ``data`` chunk's size is read from the RIFF header (:func:`wav_data_frames`) and compared with the
bytes present; for every container with an exact frame count (:data:`EXACT_LENGTH_FORMATS`: WAV, AIFF, FLAC, ...)
the frames decoded are compared with the header's, and a decoder error after some audio (FLAC "lost sync") counts
as damage. mp3 and Ogg headers only estimate their length (a valid mp3 decoded 25920 of the 26130 frames its Xing
header states), so they are not checked. ``allow_truncated=True`` keeps what is there and warns once
(:class:`TruncatedAudioWarning`, one line).

Decoder chatter: libmpg123 prints notes and warnings ("Warning: Xing stream size off by more than 1%", "Note:
Trying to resync...") straight to file descriptor 2 while opening and reading a valid mp3; Python cannot catch
them. :func:`quiet_stderr` points fd 2 at ``/dev/null`` around each libsndfile open/read call only, restored
after; decoding errors still arrive as exceptions, so nothing the user needs is lost.

Clips shorter than :data:`MIN_SAMPLES` are not rejected here; :func:`pad_to_minimum` zero-pads them for the model
(see its docstring for why). :data:`AUDIO_EXTENSIONS` lists what a directory scan picks up.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import threading
import warnings
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from .ffmpeg import EXTENSIONS as FFMPEG_EXTENSIONS

SAMPLE_RATE = 16000  # Hz, the model's rate
MAX_CHANNELS = 16  # an array axis this short is read as channels, not time
BLOCK = 1 << 20  # frames decoded/checked at a time: ~1 M (22 s at 48 kHz) bounds temporaries for long files
PASS_BLOCK = 1 << 16  # frames per piece of a FileAudio pass: 4 s at 16 kHz, so a pass holds a few seconds
SALVAGE_BLOCK = 4096  # frames per read after a block failed: a cut-short FLAC gives its audio up to ~the cut
UNKNOWN_FRAMES = 1 << 40  # a frame count this large is libsndfile's "unknown" (non-seekable stream), not a length
HOP = 160  # mel hop: 10 ms at 16 kHz
MIN_SAMPLES = 2 * HOP  # 20 ms = 2 valid mel frames, the fewest that give a per-feature std (unbiased: n - 1 > 0)
# Extensions libsndfile decodes (wav/flac/ogg-vorbis/opus/mp3 and the older PCM containers), and those FFmpeg
# decodes for it (m4a, aac, ...: nemo_lite.ffmpeg, the [ffmpeg] extra).
SNDFILE_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                                ".snd", ".caf", ".w64", ".rf64"})
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS | FFMPEG_EXTENSIONS
UNKNOWN_FORMAT = "Format not recognised"  # libsndfile's error for a container it does not read: try FFmpeg

# Containers whose header states the exact frame count (mp3/Ogg headers only estimate it): fewer decoded = damaged.
EXACT_LENGTH_FORMATS = frozenset({"WAV", "WAVEX", "AIFF", "AU", "CAF", "W64", "RF64", "FLAC"})
# WAV subtypes whose data chunk holds a whole number of frames of ``block_align`` bytes each (not ADPCM blocks).
PCM_SUBTYPES = frozenset({"PCM_U8", "PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})
WAV_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data chunk sizes written by streaming encoders that never went back

AudioInput = Union[str, os.PathLike, bytes, np.ndarray, "torch.Tensor", Any]  # noqa: F821  (Any: file objects)


class AudioError(ValueError):
    """An input cannot be turned into audio; the message names the input and the problem.

    ``failures``: for a batch, ``(index, message)`` per bad input, so callers can tell which ones failed.
    """

    def __init__(self, message: str, failures: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


class DamagedAudioError(AudioError):
    """A file holds less audio than its container promises (cut short); ``seconds`` are there of ``promised``."""

    def __init__(self, name: str, seconds: float, promised: float, detail: str = "") -> None:
        super().__init__(f"{name}: damaged (truncated): holds {seconds:.2f} s of the {promised:.2f} s its header "
                         f"promises{detail}; --allow-truncated (allow_truncated=True) transcribes what is there")
        self.seconds = seconds  # audio decoded before the file ended
        self.promised = promised  # audio the header announces


class AudioFormatError(Exception):
    """Neither libsndfile nor FFmpeg can open the input (or FFmpeg is not installed); turned into
    :class:`AudioError` ``"NAME: cannot decode audio (...)"`` by the callers."""


class TruncatedAudioWarning(UserWarning):
    """A damaged file was read anyway (``allow_truncated=True``): only the audio that is there is used."""


def describe(item: Any) -> str:
    """A short name for an input, for error messages and reports."""
    if isinstance(item, FileAudio):
        return item.name
    if isinstance(item, (str, os.PathLike)):
        return str(item)
    if isinstance(item, bytes):
        return f"<{len(item)} bytes>"
    shape = getattr(item, "shape", None)
    if shape is not None:
        return f"<{type(item).__name__} shape={tuple(shape)}>"
    return f"<{type(item).__name__}>"


def _scale_int(x: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1), as soundfile reads it."""
    if x.dtype == np.uint8:
        return (x.astype(np.float32) - 128.0) / 128.0
    return x.astype(np.float32) / float(-np.iinfo(x.dtype).min)


def _to_mono(x: np.ndarray, name: str) -> np.ndarray:
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"{name}: audio must be 1-D (samples) or 2-D (samples x channels), got {x.ndim}-D")
    if x.shape[1] <= MAX_CHANNELS and x.shape[1] <= x.shape[0]:
        return x.mean(axis=1)  # (samples, channels), soundfile's layout
    if x.shape[0] <= MAX_CHANNELS:
        return x.mean(axis=0)  # (channels, samples), torchaudio's layout
    raise AudioError(f"{name}: cannot tell channels from samples in a {x.shape} array")


def _check_path(path: Path, name: str) -> None:
    if not path.exists():
        raise AudioError(f"{name}: file not found")
    if path.is_dir():
        raise AudioError(f"{name}: is a directory, not an audio file")
    if path.stat().st_size == 0:
        raise AudioError(f"{name}: file is empty")


def _check_finite(x: np.ndarray, name: str) -> None:
    for i in range(0, len(x), BLOCK):  # blockwise: no bool temporary as long as the recording
        if not np.isfinite(x[i:i + BLOCK]).all():
            raise AudioError(f"{name}: audio contains NaN or infinite samples")


class _StderrSilencer:
    """Points file descriptor 2 at ``/dev/null`` while at least one thread is inside, restores it when the last
    leaves (a count under a lock: concurrent decoders never save each other's ``/dev/null`` as "the" stderr).
    Whatever another thread writes to stderr during such a call (a few ms) is lost; decoding errors still come
    back as exceptions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0  # threads inside
        self.saved: int | None = None  # a duplicate of the real fd 2 while silenced

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            if self.depth == 0:
                self.saved = self._silence()
            self.depth += 1
        try:
            yield
        finally:
            with self.lock:
                self.depth -= 1
                if self.depth == 0 and self.saved is not None:
                    os.dup2(self.saved, 2)
                    os.close(self.saved)
                    self.saved = None

    @staticmethod
    def _silence() -> int | None:
        try:
            if sys.stderr is not None:
                sys.stderr.flush()  # Python's buffered text belongs to the terminal, not /dev/null
            saved = os.dup(2)
        except (OSError, ValueError):  # no fd 2 (e.g. a service without stderr): nothing to protect
            return None
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)
        os.close(null)
        return saved


quiet_stderr = _StderrSilencer()  # ``with quiet_stderr():`` around a libsndfile call (module docstring)


def wav_data_frames(source: Any) -> int | None:
    """Frames a PCM WAV's ``data`` chunk promises, from its RIFF header (a path or seekable binary file object,
    left where it was); None when it is not a RIFF/WAVE file or its size is unknown. libsndfile clamps
    ``frames`` to the bytes present, so this is the only place a cut-short WAV shows."""
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            return wav_data_frames(f)
    try:
        if not source.seekable():
            return None
        start = source.tell()
    except (AttributeError, OSError, ValueError):
        return None
    try:
        if source.read(4) != b"RIFF" or source.read(8)[4:] != b"WAVE":
            return None
        block_align = 0
        while len(head := source.read(8)) == 8:  # chunks: id (4 bytes), size (uint32 LE), body (padded to even)
            cid, size = head[:4], struct.unpack("<I", head[4:])[0]
            if cid == b"fmt ":
                body = source.read(size + (size & 1))
                block_align = struct.unpack("<H", body[12:14])[0] if len(body) >= 14 else 0
            elif cid == b"data":
                return size // block_align if block_align and size not in WAV_UNKNOWN_SIZES else None
            else:
                source.seek(size + (size & 1), io.SEEK_CUR)
        return None
    finally:
        source.seek(start)


def promised_frames(f: Any, wav_frames: int | None) -> int | None:
    """Frames an open ``SoundFile``'s container promises, when it states them exactly (None: not checked)."""
    if f.format not in EXACT_LENGTH_FORMATS or not 0 <= f.frames < UNKNOWN_FRAMES:
        return None
    if wav_frames is not None and f.format in ("WAV", "WAVEX") and f.subtype in PCM_SUBTYPES:
        return max(int(f.frames), wav_frames)
    return int(f.frames)


@dataclass
class Decoded:
    """What one decoding pass found, beyond its samples (the return value of :func:`_pieces`)."""

    frames: int = 0  # frames decoded, at the file's rate
    error: str = ""  # the decoder's error when it stopped early


def _open(src: Any) -> tuple[Any, int | None]:
    """``soundfile.SoundFile(src)`` with decoder chatter kept off the terminal + the frames it promises; a format
    libsndfile does not recognise is opened by FFmpeg (:mod:`nemo_lite.ffmpeg`, the ``[ffmpeg]`` extra) instead,
    or, without PyAV, raises :class:`AudioFormatError` naming the extra."""
    import soundfile as sf

    wav = wav_data_frames(src)
    start = _tell(src)  # a file object: where its audio begins (libsndfile may read past it)
    try:
        with quiet_stderr():
            f = sf.SoundFile(src)
    except sf.LibsndfileError as err:
        if UNKNOWN_FORMAT not in str(err):
            raise
        return _open_ffmpeg(src, start, err), None
    try:
        return f, promised_frames(f, wav)
    except Exception:
        f.close()
        raise


def _tell(src: Any) -> int | None:
    """A seekable file object's position; None for paths and streams that cannot seek."""
    if isinstance(src, (str, os.PathLike)):
        return None
    try:
        return src.tell() if src.seekable() else None
    except (AttributeError, OSError, ValueError):
        return None


def _open_ffmpeg(src: Any, start: int | None, sf_error: Exception) -> Any:
    """``src`` through FFmpeg (PyAV), after libsndfile gave up on its format (``sf_error``)."""
    from . import ffmpeg

    reason = str(sf_error).rsplit(": ", 1)[-1].rstrip(".")  # "Format not recognised"
    if not ffmpeg.available():
        raise AudioFormatError(f"libsndfile: {reason}; {ffmpeg.MISSING}")
    if not isinstance(src, (str, os.PathLike)):
        if start is None:
            raise AudioFormatError(f"libsndfile: {reason}; FFmpeg needs a seekable file object")
        src.seek(start)  # back to where libsndfile began reading
    try:
        with quiet_stderr():
            return ffmpeg.FFmpegAudio(os.fspath(src) if isinstance(src, os.PathLike) else src)
    except ffmpeg.FFmpegError as err:
        raise AudioFormatError(f"libsndfile: {reason}; FFmpeg: {err}") from None


def _pieces(f: Any, name: str, block: int, frames: int = -1) -> Generator[np.ndarray, None, Decoded]:
    """An open ``soundfile.SoundFile`` -> float32 mono 16 kHz pieces, front to back, ``block`` frames at a time,
    from its current position to the end (or ``frames`` frames at the file's rate, when not -1: a slice);
    returns what was decoded (:class:`Decoded`: a decoder error after the first block ends the pass early).

    Each block is mixed down (channel mean), checked for NaN/inf and fed to soxr's streaming resampler, whose
    output is bit-identical to :func:`soxr.resample` on the whole signal whatever the block size; so is the mix-down
    (a per-frame mean). The pieces therefore concatenate to the same samples for any ``block``.
    """
    import soxr

    rate = int(f.samplerate)
    stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    done = Decoded()
    size = block
    start = f.tell() if f.seekable() else 0  # a slice starts past 0
    while frames == -1 or done.frames < frames:
        want = size if frames == -1 else min(size, frames - done.frames)
        try:
            with quiet_stderr():
                data = f.read(want, dtype="float32", always_2d=True)  # (frames, channels), a fresh array
        except Exception as err:  # soundfile raises LibsndfileError/RuntimeError by format
            if size > SALVAGE_BLOCK and f.seekable():  # a whole block is lost at the damage: re-read it in
                f.seek(start + done.frames)  # small pieces (sample-exact for the formats that fail this way: FLAC)
                size = SALVAGE_BLOCK
                continue
            if done.frames == 0:
                raise
            done.error = (str(err) or type(err).__name__).rstrip(".")
            break
        if not len(data):
            break
        done.frames += len(data)
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (frames,)
        _check_finite(mono, name)
        yield stream.resample_chunk(mono) if stream else mono
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)
    return done


def check_complete(name: str, done: Decoded, promised: int | None, rate: int, allow_truncated: bool,
                   warn: bool = True) -> None:
    """Raise :class:`DamagedAudioError` when a pass decoded less than the container promised (or stopped on a
    decoder error); with ``allow_truncated``, emit a one-line :class:`TruncatedAudioWarning` instead (``warn``)."""
    short = promised is not None and done.frames < promised
    if not short and not done.error:
        return
    detail = f" (decoder: {done.error})" if done.error else ""
    have, want = done.frames / rate, max(promised or 0, done.frames) / rate
    if not allow_truncated:
        raise DamagedAudioError(name, have, want, detail)
    if warn:
        warnings.warn(f"{name}: damaged (truncated): using the {have:.2f} s that are there of the {want:.2f} s its "
                      f"header promises{detail}", TruncatedAudioWarning, stacklevel=2)


def _decode(source: Any, name: str, allow_truncated: bool = False) -> np.ndarray:
    """A file -> float32 mono at 16 kHz, streamed: decode, mix down and resample ``BLOCK`` frames at a time.

    Peak memory is the 16 kHz output plus one block, not the file's full-rate multi-channel samples.
    """
    if isinstance(source, (str, os.PathLike)):
        _check_path(Path(source), name)
    try:
        f, promised = _open(source)
        with f:
            rate = int(f.samplerate)
            frames = f.frames if 0 <= f.frames < UNKNOWN_FRAMES else BLOCK  # streams may report SF_COUNT_MAX
            out = np.empty(int(np.ceil(frames * SAMPLE_RATE / rate)) + 64, dtype=np.float32)
            n = 0
            pieces = _pieces(f, name, BLOCK)
            while True:
                try:
                    out, n = _append(out, n, next(pieces))
                except StopIteration as stop:
                    check_complete(name, stop.value, promised, rate, allow_truncated)
                    break
    except AudioError:
        raise
    except Exception as err:  # soundfile raises LibsndfileError/RuntimeError/TypeError by format
        raise AudioError(f"{name}: cannot decode audio ({err})") from err
    return out[:n] if len(out) - n <= BLOCK else out[:n].copy()  # a big unused tail is not kept alive


@dataclass
class FileAudio:
    """A file input that can be decoded again from its start: a path, bytes, or a seekable binary file object.

    Each :meth:`pieces` pass opens it anew and yields the samples :func:`load_audio` gives, a few seconds at a time,
    so a long recording can be scanned once and decoded again window by window without ever being held whole.
    Passes read front to back (no seeking inside the audio): libsndfile's seeks are not sample-exact for every
    format (Ogg/Vorbis in libsndfile 1.2.2 lands tens of samples off), sequential decoding is.
    """

    source: Any  # a path (str), bytes, or a seekable binary file object (read from ``offset`` each pass)
    name: str  # the input as error messages name it (:func:`describe`)
    offset: int = 0  # a file object's position when handed over: where its audio begins
    allow_truncated: bool = False  # a damaged (cut short) file: use what is there, warn once, instead of raising
    _warned: bool = field(default=False, init=False, repr=False, compare=False)  # the truncation warning was given
    start_seconds: float = 0.0  # a slice: where it starts in the audio (NeMo manifest ``offset``)
    seconds: float | None = None  # a slice: how long it is (NeMo manifest ``duration``); None: to the end

    @classmethod
    def slice(cls, path: str | os.PathLike, offset: float, duration: float | None = None) -> FileAudio:
        """Part of an audio file: ``duration`` seconds (None: the rest) from ``offset`` seconds, as NeMo manifests
        give it. Passes seek to ``round(offset * rate)`` at the file's own rate and read ``round(duration * rate)``
        frames (lhotse, which NeMo's manifests go through, rounds seconds to samples the same way); the samples are
        those :func:`load_audio` gives for that cut of the file's frames. Checked when a pass opens the file."""
        span = f"{offset:g} s" + ("" if duration is None else f" + {duration:g} s")
        return cls(os.fspath(path), f"{describe(path)} [{span}]", start_seconds=float(offset),
                   seconds=None if duration is None else float(duration))

    @classmethod
    def of(cls, item: AudioInput, allow_truncated: bool = False) -> FileAudio | None:
        """``item`` as a re-readable file, or None for arrays, tensors and unseekable streams (loaded whole)."""
        if isinstance(item, FileAudio):
            return item
        if isinstance(item, (str, os.PathLike)):
            return cls(os.fspath(item), describe(item), allow_truncated=allow_truncated)
        if isinstance(item, (bytes, bytearray)):
            return cls(bytes(item), describe(item), allow_truncated=allow_truncated)
        seekable = getattr(item, "seekable", None)
        if hasattr(item, "read") and callable(seekable) and seekable():
            return cls(item, describe(item), item.tell(), allow_truncated)
        return None

    def pieces(self, block: int = PASS_BLOCK) -> Iterator[np.ndarray]:
        """One pass: float32 mono 16 kHz pieces in order, concatenating to exactly :func:`load_audio`'s array.

        Raises :class:`AudioError` for a missing/empty/undecodable file or NaN/inf samples (as ``load_audio``),
        :class:`DamagedAudioError` at the end of a pass that found the file cut short (unless ``allow_truncated``:
        then it warns, on the first pass only).
        """
        if isinstance(self.source, str):
            _check_path(Path(self.source), self.name)
            src: Any = self.source
        elif isinstance(self.source, bytes):
            src = io.BytesIO(self.source)  # shares the bytes, no copy
        else:
            self.source.seek(self.offset)
            src = self.source
        try:
            f, promised = _open(src)
            with f:
                limit = self._seek(f)  # a slice: seeks to its start; the frames to read (-1: to the end)
                start = int(round(self.start_seconds * int(f.samplerate)))
                done = yield from _pieces(f, self.name, block, limit)
                if promised is not None:  # what this pass should have decoded of what the container promises
                    promised = max(0, promised - start) if limit == -1 else min(limit, max(0, promised - start))
                check_complete(self.name, done, promised, int(f.samplerate), self.allow_truncated, not self._warned)
                self._warned = True
        except AudioError:
            raise
        except Exception as err:  # as in _decode
            raise AudioError(f"{self.name}: cannot decode audio ({err})") from err

    def _seek(self, f: Any) -> int:
        """For a slice, seek an open ``SoundFile`` to its start; returns the frames to read (-1: to the end)."""
        if self.start_seconds == 0.0 and self.seconds is None:
            return -1
        if not (np.isfinite(self.start_seconds) and self.start_seconds >= 0):
            raise AudioError(f"{self.name}: offset must be a number of seconds >= 0")
        if self.seconds is not None and not (np.isfinite(self.seconds) and self.seconds > 0):
            raise AudioError(f"{self.name}: duration must be a number of seconds > 0")
        rate = int(f.samplerate)
        start = int(round(self.start_seconds * rate))
        if 0 <= f.frames < UNKNOWN_FRAMES and start >= f.frames:
            raise AudioError(f"{self.name}: offset is past the end of the audio ({f.frames / rate:g} s)")
        if start:
            f.seek(start)
        return -1 if self.seconds is None else max(1, int(round(self.seconds * rate)))


def _append(out: np.ndarray, n: int, piece: np.ndarray) -> tuple[np.ndarray, int]:
    """Write ``piece`` at ``out[n:]``, growing ``out`` if the header's frame count was short (rare: mp3)."""
    if n + len(piece) > len(out):
        out = np.concatenate([out[:n], np.empty(max(len(piece), len(out) // 2), dtype=np.float32)])
    out[n:n + len(piece)] = piece
    return out, n + len(piece)


def _from_array(item: Any, name: str) -> np.ndarray:
    """A numpy array or torch tensor -> float32 (integer PCM scaled), channels still present."""
    if not isinstance(item, np.ndarray):
        item = item.detach().cpu()
        if str(item.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            item = item.float()
        item = item.numpy()
    if item.dtype.kind in "iu":
        return _scale_int(item)
    if item.dtype.kind != "f":
        raise AudioError(f"{name}: array dtype {item.dtype} is not audio (need float or integer PCM)")
    return item


def load_audio(item: AudioInput, sample_rate: int = SAMPLE_RATE, allow_truncated: bool = False) -> np.ndarray:
    """One input -> float32 mono array at 16 kHz. ``sample_rate`` is the rate of array/tensor inputs.
    ``allow_truncated``: a damaged (cut short) file gives the audio that is there, with a warning, instead of
    :class:`DamagedAudioError`."""
    name = describe(item)
    if isinstance(item, FileAudio):  # a file or a slice of one (its own allow_truncated applies)
        data = np.concatenate([np.zeros(0, np.float32), *item.pieces(BLOCK)])
    elif isinstance(item, (str, os.PathLike)):
        data = _decode(item, name, allow_truncated)
    elif isinstance(item, (bytes, bytearray)):
        data = _decode(io.BytesIO(item), name, allow_truncated)
    elif hasattr(item, "read"):
        data = _decode(item, name, allow_truncated)
    elif isinstance(item, np.ndarray) or type(item).__module__.startswith("torch"):
        if int(sample_rate) <= 0:
            raise AudioError(f"{name}: sample rate must be positive, got {sample_rate}")
        data = _to_mono(_from_array(item, name), name).astype(np.float32, copy=False)
        _check_finite(data, name)
        if int(sample_rate) != SAMPLE_RATE and data.size:
            import soxr

            data = soxr.resample(data, int(sample_rate), SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)
    else:
        raise AudioError(f"{name}: unsupported input type {type(item).__name__} "
                         "(use a path, bytes, a file object, a numpy array or a torch tensor)")
    if data.size == 0:
        raise AudioError(f"{name}: audio is empty (0 samples)")
    return np.ascontiguousarray(data)


def pad_to_minimum(audio: np.ndarray) -> np.ndarray:
    """Zero-pad a clip shorter than :data:`MIN_SAMPLES` (20 ms) at its end; longer clips are returned unchanged.

    Below 160 samples the front end yields no mel frame, so the audio would vanish from the prompt; with one
    frame the per-feature std is undefined (NeMo divides by n - 1 = 0). Two frames is the least that normalises.
    """
    if len(audio) >= MIN_SAMPLES:
        return audio
    return np.pad(audio, (0, MIN_SAMPLES - len(audio)))  # (MIN_SAMPLES,)


def audio_files(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, by :data:`AUDIO_EXTENSIONS`, hidden files skipped), sorted by path."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def probe_duration(path: str | os.PathLike) -> float | None:
    """Seconds of audio in a file from its header alone (no decoding); None when the header cannot be read."""
    try:
        return probe(path, allow_truncated=True)
    except AudioError:  # unreadable: the real error is reported when the file is loaded
        return None


def probe(path: str | os.PathLike, allow_truncated: bool = False) -> float:
    """Seconds of audio a file's header announces, without decoding it; :class:`AudioError` for a missing, empty
    or unreadable file, and :class:`DamagedAudioError` for a PCM WAV whose data chunk runs past the end of the file
    (unless ``allow_truncated``). What the command line checks before it loads a model."""
    name = str(path)
    _check_path(Path(path), name)
    try:
        f, promised = _open(os.fspath(path))
        with f:
            frames, rate = int(f.frames), int(f.samplerate)
    except Exception as err:  # as in _decode
        raise AudioError(f"{name}: cannot decode audio ({err})") from err
    if rate <= 0:
        raise AudioError(f"{name}: cannot decode audio (sample rate {rate})")
    if promised is not None and frames < promised and not allow_truncated:
        raise DamagedAudioError(name, frames / rate, promised / rate)
    return (frames if 0 <= frames < UNKNOWN_FRAMES else 0) / rate
