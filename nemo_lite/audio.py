"""Audio input: paths, bytes, file objects, numpy arrays and torch tensors -> float32 mono 16 kHz numpy arrays.

Decoding uses soundfile (libsndfile: wav, flac, ogg/vorbis, opus, mp3), streamed block by block so a long file never
sits in memory at its own rate and channel count. Any sample rate is resampled with soxr at its high-quality setting
(what librosa uses by default); files and arrays get bit-identical resampling. Multi-channel audio is averaged to
mono; integer PCM is scaled to [-1, 1) the way soundfile does. Every problem raises :class:`AudioError` naming
the input.

A file can also be wrapped as :class:`FileAudio` and decoded in passes of small blocks (:meth:`FileAudio.pieces`),
each giving exactly the samples :func:`load_audio` would: :mod:`nemo_lite.longform` uses this to transcribe long
recordings without holding them. :meth:`FileAudio.slice` is a part of a file (NeMo manifests' ``offset`` and
``duration``, in seconds): only that part is decoded, from a seek at the file's own rate, and it is mixed down and
resampled like a whole file (so it equals :func:`load_audio` of the cut array at the file's rate).

Clips shorter than :data:`MIN_SAMPLES` are not rejected here; :func:`pad_to_minimum` zero-pads them for the model
(see its docstring for why). :data:`AUDIO_EXTENSIONS` lists what a directory scan picks up.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

SAMPLE_RATE = 16000  # Hz, the model's rate
MAX_CHANNELS = 16  # an array axis this short is read as channels, not time
BLOCK = 1 << 20  # frames decoded/checked at a time: ~1 M (22 s at 48 kHz) bounds temporaries for long files
PASS_BLOCK = 1 << 16  # frames per piece of a FileAudio pass: 4 s at 16 kHz, so a pass holds a few seconds
UNKNOWN_FRAMES = 1 << 40  # a frame count this large is libsndfile's "unknown" (non-seekable stream), not a length
HOP = 160  # mel hop: 10 ms at 16 kHz
MIN_SAMPLES = 2 * HOP  # 20 ms = 2 valid mel frames, the fewest that give a per-feature std (unbiased: n - 1 > 0)
# Extensions libsndfile decodes (wav/flac/ogg-vorbis/opus/mp3 and the older PCM containers); no m4a/aac.
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
                              ".snd", ".caf", ".w64", ".rf64"})

AudioInput = Union[str, os.PathLike, bytes, np.ndarray, "torch.Tensor", Any]  # noqa: F821  (Any: file objects)


class AudioError(ValueError):
    """An input cannot be turned into audio; the message names the input and the problem.

    ``failures``: for a batch, ``(index, message)`` per bad input, so callers can tell which ones failed.
    """

    def __init__(self, message: str, failures: list[tuple[int, str]] | None = None) -> None:
        super().__init__(message)
        self.failures = failures or []


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


def _pieces(f: Any, name: str, block: int, frames: int = -1) -> Iterator[np.ndarray]:
    """An open ``soundfile.SoundFile`` -> float32 mono 16 kHz pieces, front to back, ``block`` frames at a time,
    from its current position to the end (or ``frames`` frames at the file's rate, when not -1).

    Each block is mixed down (channel mean), checked for NaN/inf and fed to soxr's streaming resampler, whose
    output is bit-identical to :func:`soxr.resample` on the whole signal whatever the block size; so is the mix-down
    (a per-frame mean). The pieces therefore concatenate to the same samples for any ``block``.
    """
    import soxr

    rate = int(f.samplerate)
    stream = None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")
    for data in f.blocks(blocksize=block, frames=frames, dtype="float32", always_2d=True):  # (frames, channels)
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]  # (frames,)
        _check_finite(mono, name)
        yield stream.resample_chunk(mono) if stream else mono
    if stream is not None:
        yield stream.resample_chunk(np.zeros(0, np.float32), last=True)


def _decode(source: Any, name: str) -> np.ndarray:
    """A file -> float32 mono at 16 kHz, streamed: decode, mix down and resample ``BLOCK`` frames at a time.

    Peak memory is the 16 kHz output plus one block, not the file's full-rate multi-channel samples.
    """
    import soundfile as sf

    if isinstance(source, (str, os.PathLike)):
        _check_path(Path(source), name)
    try:
        with sf.SoundFile(source) as f:
            rate = int(f.samplerate)
            frames = f.frames if 0 <= f.frames < UNKNOWN_FRAMES else BLOCK  # streams may report SF_COUNT_MAX
            out = np.empty(int(np.ceil(frames * SAMPLE_RATE / rate)) + 64, dtype=np.float32)
            n = 0
            for piece in _pieces(f, name, BLOCK):
                out, n = _append(out, n, piece)
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
    def of(cls, item: AudioInput) -> FileAudio | None:
        """``item`` as a re-readable file, or None for arrays, tensors and unseekable streams (loaded whole)."""
        if isinstance(item, FileAudio):
            return item
        if isinstance(item, (str, os.PathLike)):
            return cls(os.fspath(item), describe(item))
        if isinstance(item, (bytes, bytearray)):
            return cls(bytes(item), describe(item))
        seekable = getattr(item, "seekable", None)
        if hasattr(item, "read") and callable(seekable) and seekable():
            return cls(item, describe(item), item.tell())
        return None

    def pieces(self, block: int = PASS_BLOCK) -> Iterator[np.ndarray]:
        """One pass: float32 mono 16 kHz pieces in order, concatenating to exactly :func:`load_audio`'s array.

        Raises :class:`AudioError` for a missing/empty/undecodable file or NaN/inf samples (as ``load_audio``).
        """
        import soundfile as sf

        if isinstance(self.source, str):
            _check_path(Path(self.source), self.name)
            src: Any = self.source
        elif isinstance(self.source, bytes):
            src = io.BytesIO(self.source)  # shares the bytes, no copy
        else:
            self.source.seek(self.offset)
            src = self.source
        try:
            with sf.SoundFile(src) as f:
                yield from _pieces(f, self.name, block, self._seek(f))
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


def load_audio(item: AudioInput, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One input -> float32 mono array at 16 kHz. ``sample_rate`` is the rate of array/tensor inputs."""
    name = describe(item)
    if isinstance(item, FileAudio):
        data = np.concatenate([np.zeros(0, np.float32), *item.pieces(BLOCK)])
    elif isinstance(item, (str, os.PathLike)):
        data = _decode(item, name)
    elif isinstance(item, (bytes, bytearray)):
        data = _decode(io.BytesIO(item), name)
    elif hasattr(item, "read"):
        data = _decode(item, name)
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
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:  # unreadable: the real error is reported when the file is loaded
        return None
    return info.frames / info.samplerate if info.samplerate > 0 else None
