"""Voice-activity detection: Silero VAD (6.2, 16 kHz) in plain PyTorch, streamed, with hysteresis thresholds.

The model is Silero VAD as the ``silero-vad`` PyPI package (MIT) ships it: ``silero_vad/data/silero_vad.jit``,
the file its ``load_silero_vad()`` loads by default. Per 32 ms chunk (512 samples at 16 kHz, seen with the 64
samples before it) it computes a 258-row DFT by convolution (129 magnitude bins on 4 frames), four ReLU
convolutions down to one 128-vector, one LSTM cell step and a 1x1 convolution + sigmoid: the probability that the
chunk is speech. Our :class:`SileroVAD` is that network written out (the LSTM cell run as a one-layer
``nn.LSTM`` over each batch of chunks, the same arithmetic); its weights are read from the jit file through
one key table (:data:`JIT_KEYS`), strictly, and its probabilities match the jit model's own per-chunk calls
to ~1e-5 (tests/test_vad.py, docs/vad.md). Why not call the package:

* ``import silero_vad`` runs ``torch.set_num_threads(1)`` (silero_vad/model.py, 6.2.3): a global change for the
  whole process. We locate the jit file through the package's metadata and never import the package.
* The jit model keeps its recurrent state and the 64-sample context inside the module object; ours are passed
  and returned (:class:`VadState`), so one loaded model can serve any number of streams.
* The convolutional front has no state, so it runs on :data:`BATCH_CHUNKS` chunks at once; only the LSTM steps
  one chunk at a time, inside ``nn.LSTM``. That is several times faster than the per-chunk jit loop (docs/vad.md).
* The wheel's ``silero_vad_16k.safetensors`` holds other weights than the jit (same DFT basis, conv1 differs by
  up to 4.0): it is not the model ``load_silero_vad()`` serves, so it is not used.
* Reading the jit file needs ``torch.jit.load``, deprecated in torch 2.13 (a DeprecationWarning, still works).
  Should it go, the 16 kHz weights (~1.2 MB) can be converted once through :data:`JIT_KEYS` to safetensors.
* The jit files of silero-vad 5.1.2 and 6.0.0 load through the same table and match their jit models too, but
  their weights differ from 6.2.3's; the thresholds and defaults here were measured with 6.2.3 (docs/vad.md).

Decisions (:class:`VoiceDetector`): hysteresis on the per-chunk probabilities. Speech starts at a chunk with
probability >= ``onset``; inside speech a chunk below ``offset`` starts a pause, and the pause lasts until a chunk
reaches ``onset`` again. A pause of ``min_silence_seconds`` ends the region (at the pause's first chunk); regions
shorter than ``min_speech_seconds`` are dropped. All of it runs chunk by chunk, so regions close as audio arrives.

Streaming is exact: the front runs on a fixed grid of :data:`BATCH_CHUNKS`-chunk batches counted from the first
sample, so however the audio is cut into pieces, every chunk is computed in the same batch and position, and a
streamed run gives bit-identical probabilities and regions to a whole-array run. The detector holds less than one
batch of samples (~8 s) plus one float32 probability per 32 ms chunk (450 KB an hour), never the recording.
Pieces are kept by reference until their batch is computed: do not refill a piece's buffer after feeding it.

Threads: nothing here sets torch's thread count; the model runs with whatever the caller has set.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .audio import SAMPLE_RATE, AudioInput, FileAudio, load_audio

CHUNK = 512  # samples per decision: 32 ms at 16 kHz (the only chunk size the 16 kHz model accepts)
CONTEXT = 64  # samples of the previous chunk the model sees in front of each chunk (4 ms)
N_FFT = 256  # DFT length of the model's STFT (16 ms)
STFT_HOP = 128  # STFT hop: (CONTEXT + CHUNK + reflect pad 64) = 640 samples -> (640 - 256) / 128 + 1 = 4 frames
N_BINS = N_FFT // 2 + 1  # 129 magnitude bins
WIDTH = 128  # encoder output = LSTM width
BATCH_CHUNKS = 256  # chunks per run of the convolutional front: 8.2 s of audio, ~1 MB of activations
CHUNK_SECONDS = CHUNK / SAMPLE_RATE  # 0.032 s

JIT_FILE = "silero_vad/data/silero_vad.jit"  # inside the silero-vad wheel; what load_silero_vad() loads
# Our parameter names -> the jit model's state_dict keys (its 16 kHz branch ``_model``; ``_model_8k`` is unused).
JIT_KEYS = {
    "stft.weight": "_model.stft.forward_basis_buffer",  # fixed DFT basis: 129 cosine rows, then 129 sine rows
    **{f"conv{i + 1}.{p}": f"_model.encoder.{i}.reparam_conv.{p}" for i in range(4) for p in ("weight", "bias")},
    **{f"lstm.{p}_l0": f"_model.decoder.rnn.{p}" for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")},
    "out.weight": "_model.decoder.decoder.2.weight",  # decoder = Dropout, ReLU, Conv1d(128, 1, 1), Sigmoid
    "out.bias": "_model.decoder.decoder.2.bias",
}


class VadState(NamedTuple):
    """What carries from one chunk to the next: the LSTM state and the samples just before the next chunk."""

    h: torch.Tensor  # (1, WIDTH) LSTM hidden state
    c: torch.Tensor  # (1, WIDTH) LSTM cell state
    context: np.ndarray  # (CONTEXT,) float32: the last samples of the previous chunk (zeros at the start)


class SileroVAD(nn.Module):
    """Silero VAD's 16 kHz network: 576-sample windows -> speech probabilities, state passed explicitly."""

    def __init__(self) -> None:
        super().__init__()
        self.stft = nn.Conv1d(1, 2 * N_BINS, N_FFT, stride=STFT_HOP, bias=False)  # real rows, then imaginary rows
        self.conv1 = nn.Conv1d(N_BINS, 128, 3, padding=1)
        self.conv2 = nn.Conv1d(128, 64, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(64, 64, 3, stride=2, padding=1)
        self.conv4 = nn.Conv1d(64, WIDTH, 3, padding=1)
        self.lstm = nn.LSTM(WIDTH, WIDTH, batch_first=True)  # one layer: Silero's LSTMCell, stepped in C++
        self.out = nn.Conv1d(WIDTH, 1, 1)

    def features(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, CONTEXT + CHUNK) samples -> (N, WIDTH): the stateless front, any N at once."""
        x = F.pad(windows, (0, CONTEXT), mode="reflect")  # (N, 640): reflect-padded on the right, as Silero does
        spec = self.stft(x[:, None])  # (N, 2 * N_BINS, 4)
        x = torch.sqrt(spec[:, :N_BINS] ** 2 + spec[:, N_BINS:] ** 2)  # (N, N_BINS, 4) magnitude
        for conv in (self.conv1, self.conv2, self.conv3, self.conv4):
            x = F.relu(conv(x))  # (N, 128, 4) -> (N, 64, 2) -> (N, 64, 1) -> (N, WIDTH, 1)
        return x[:, :, 0]  # (N, WIDTH)

    def decode(self, feats: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                      torch.Tensor]:
        """(N, WIDTH) features in time order -> (N,) probabilities and the LSTM state after the last one."""
        hs, (h, c) = self.lstm(feats[None], (h[None], c[None]))  # (1, N, WIDTH); state (1, 1, WIDTH) each
        x = F.relu(hs[0])[:, :, None]  # (N, WIDTH, 1)
        return torch.sigmoid(self.out(x))[:, 0, 0], h[0], c[0]  # (N,); state (1, WIDTH) each

    @torch.inference_mode()
    def probabilities(self, audio: np.ndarray, state: VadState | None = None) -> tuple[np.ndarray, VadState]:
        """Speech probability of each whole 512-sample chunk of ``audio`` (N,) -> (N // CHUNK,), and the new state.

        Samples past the last whole chunk are ignored; pass them again at the front of the next call (as
        :class:`VoiceDetector` does), or zero-pad the end of a recording to a whole chunk first.
        """
        if state is None:
            state = initial_state()
        n = len(audio) // CHUNK
        if n == 0:
            return np.zeros(0, np.float32), state
        x = np.concatenate([state.context, audio[:n * CHUNK]]).astype(np.float32, copy=False)  # (CONTEXT + n*CHUNK,)
        windows = np.lib.stride_tricks.sliding_window_view(x, CONTEXT + CHUNK)[::CHUNK]  # (n, 576), a view
        probs, h, c = self.decode(self.features(torch.from_numpy(np.array(windows))), state.h, state.c)  # a copy
        return probs.numpy(), VadState(h, c, x[-CONTEXT:].copy())


def initial_state() -> VadState:
    """The state before the first chunk: zero LSTM state, zero context (as the jit model after reset_states())."""
    return VadState(torch.zeros(1, WIDTH), torch.zeros(1, WIDTH), np.zeros(CONTEXT, np.float32))


def jit_path() -> Path:
    """The installed silero-vad wheel's default model file, found without importing the package (see above)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(str(distribution("silero-vad").locate_file(JIT_FILE)))
    except PackageNotFoundError as err:
        raise ImportError("voice-activity detection needs the silero-vad package: pip install silero-vad") from err
    if not path.is_file():
        raise FileNotFoundError(f"silero-vad is installed but {path} is missing")
    return path


def load_vad_model(path: str | Path | None = None) -> SileroVAD:
    """Silero VAD from its jit file (default: the installed wheel's), loaded strictly through :data:`JIT_KEYS`."""
    scripted = torch.jit.load(str(path or jit_path()), map_location="cpu")
    source = {k: v for k, v in scripted.state_dict().items() if k.startswith("_model.")}
    unknown = sorted(set(source) - set(JIT_KEYS.values()))
    missing = sorted(v for v in JIT_KEYS.values() if v not in source)
    if unknown or missing:
        raise ValueError(f"unexpected Silero VAD file: unknown keys {unknown}, missing keys {missing}")
    with torch.device("meta"):
        model = SileroVAD()
    model.load_state_dict({k: source[v].float() for k, v in JIT_KEYS.items()}, strict=True, assign=True)
    return model.eval()


_MODEL: SileroVAD | None = None  # the model cached by default_vad_model(); cleared by clear_vad_cache()
_MODEL_LOCK = threading.Lock()


def default_vad_model() -> SileroVAD:
    """The installed Silero VAD, loaded on first use and kept in a module-level cache (~1 MB of weights).

    Callers that want to own the model call :func:`load_vad_model` and pass it on instead.
    """
    global _MODEL
    with _MODEL_LOCK:  # the server checks uploads on several threads: load once, not once per thread
        if _MODEL is None:
            _MODEL = load_vad_model()
    return _MODEL


def clear_vad_cache() -> None:
    """Drop the model held by :func:`default_vad_model`."""
    global _MODEL
    _MODEL = None


@dataclass(frozen=True)
class VadOptions:
    onset: float = 0.5  # a chunk with speech probability >= this starts speech (Silero's default threshold)
    offset: float = 0.35  # inside speech, a chunk below this starts a pause (Silero's default: onset - 0.15)
    min_silence_seconds: float = 0.3  # a pause this long ends a region; shorter pauses stay inside it
    min_speech_seconds: float = 0.25  # regions shorter than this are dropped (clicks, breaths, short noise)

    def __post_init__(self) -> None:
        if not 0.0 < self.offset <= self.onset < 1.0:
            raise ValueError(f"need 0 < offset <= onset < 1, got offset={self.offset}, onset={self.onset}")
        if self.min_silence_seconds < 0 or self.min_speech_seconds < 0:
            raise ValueError("min_silence_seconds and min_speech_seconds must be >= 0")

    @property
    def min_silence_chunks(self) -> int:
        return max(1, round(self.min_silence_seconds / CHUNK_SECONDS))

    @property
    def min_speech_chunks(self) -> int:
        return round(self.min_speech_seconds / CHUNK_SECONDS)


class Hysteresis:
    """The decisions alone: per-chunk probabilities in, regions out (see the module docstring for the rules).

    Separate from the model so that recorded probabilities can be thresholded again (:func:`regions_from_probs`).
    """

    def __init__(self, opts: VadOptions) -> None:
        self.opts = opts  # thresholds and durations
        self.regions: list[tuple[int, int]] = []  # closed regions: (start, end) in samples, in order
        self.chunks = 0  # chunks decided so far
        self._start: int | None = None  # first chunk of the open region
        self._quiet: int | None = None  # first chunk of the pause now running inside the open region

    def push(self, probs: np.ndarray, total: int) -> None:
        """Decide the next chunks; ``total``: samples of audio so far (region ends are clipped to it)."""
        o = self.opts
        for p in probs.tolist():
            i = self.chunks
            self.chunks += 1
            if self._start is None:
                if p >= o.onset:
                    self._start = i
            elif self._quiet is None:
                if p < o.offset:
                    self._quiet = i
            elif p >= o.onset:
                self._quiet = None  # speech resumed: the pause stays inside the region
            elif i + 1 - self._quiet >= o.min_silence_chunks:
                self._close(self._quiet, total)

    def finish(self, total: int) -> list[tuple[int, int]]:
        """Close an open region at the end of the audio (or at the pause it ends in)."""
        if self._start is not None:
            self._close(self.chunks if self._quiet is None else self._quiet, total)
        return self.regions

    def _close(self, end: int, total: int) -> None:
        if end - self._start >= self.opts.min_speech_chunks:
            self.regions.append((self._start * CHUNK, min(end * CHUNK, total)))
        self._start = self._quiet = None


def regions_from_probs(probs: np.ndarray, total: int, opts: VadOptions = VadOptions()) -> list[tuple[int, int]]:
    """Speech regions (samples) of a ``total``-sample recording from its (chunks,) probabilities."""
    decide = Hysteresis(opts)
    decide.push(probs, total)
    return decide.finish(total)


class VoiceDetector:
    """Speech regions of audio that arrives in pieces: :meth:`feed` 16 kHz float32 mono pieces, then :meth:`finish`.

    Same results for any piece sizes, including one whole array (see the module docstring). Regions are closed as
    soon as a long enough pause has been seen; :attr:`regions` lists those closed so far.
    """

    def __init__(self, opts: VadOptions = VadOptions(), model: SileroVAD | None = None) -> None:
        self.opts = opts  # thresholds and durations
        self.model = model or default_vad_model()  # the network (shared, stateless)
        self.total = 0  # samples fed so far
        self._decide = Hysteresis(opts)  # the decisions so far
        self._state = initial_state()  # recurrent state after the last chunk computed
        self._pending: list[np.ndarray] = []  # samples fed but not yet computed (less than one batch)
        self._held = 0  # samples in _pending
        self._finished = False  # finish() was called: the end is decided, no more audio
        self._probs = np.zeros(0, np.float32)  # probabilities computed: the first _chunks, capacity grown by 2x
        self._chunks = 0  # chunks computed

    @property
    def regions(self) -> list[tuple[int, int]]:
        """The regions closed so far (all of them after :meth:`finish`)."""
        return self._decide.regions

    def feed(self, piece: np.ndarray) -> VoiceDetector:
        """Add the next samples (16 kHz float32 mono, any length); computes every whole batch now held."""
        if self._finished:
            raise RuntimeError("feed() after finish(): the last chunk was already padded and decided")
        if len(piece):
            self._pending.append(np.asarray(piece, dtype=np.float32))
            self.total += len(piece)
            self._held += len(piece)
        step = BATCH_CHUNKS * CHUNK
        if self._held >= step:
            buf = self._pending[0] if len(self._pending) == 1 else np.concatenate(self._pending)  # (held,)
            n = self._held // step * step
            for lo in range(0, n, step):
                self._compute(buf[lo:lo + step])
            self._pending = [buf[n:].copy()] if n < self._held else []  # a copy: the batch is not kept alive
            self._held -= n
        return self

    def finish(self) -> list[tuple[int, int]]:
        """All regions, now that the end is known: (start, end) sample ranges in order, within [0, total)."""
        if self._finished:
            return self.regions
        self._finished = True
        tail = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending, self._held = [], 0
        if len(tail):
            self._compute(np.pad(tail, (0, -len(tail) % CHUNK)))  # a last partial chunk is zero-padded (as Silero)
        return self._decide.finish(self.total)

    @property
    def probabilities(self) -> np.ndarray:
        """(chunks,) float32 speech probability per 32 ms chunk so far: chunk i is samples [512 i, 512 (i + 1)).

        A read-only view of the detector's buffer.
        """
        view = self._probs[:self._chunks]
        view.flags.writeable = False
        return view

    def _compute(self, samples: np.ndarray) -> None:
        probs, self._state = self.model.probabilities(samples, self._state)
        end = self._chunks + len(probs)
        if end > len(self._probs):  # one array, doubled when full: no trail of small blocks in the heap
            grown = np.zeros(max(end, 2 * len(self._probs)), np.float32)
            grown[:self._chunks] = self._probs[:self._chunks]
            self._probs = grown
        self._probs[self._chunks:end] = probs
        self._chunks = end
        self._decide.push(probs, self.total)


def detect(audio: AudioInput | FileAudio, opts: VadOptions = VadOptions(),
           model: SileroVAD | None = None) -> VoiceDetector:
    """Run a :class:`VoiceDetector` over a whole input and return it finished (regions, probabilities, total).

    A file (path, bytes, seekable file object, :class:`~nemo_lite.audio.FileAudio`) is streamed in pieces and
    never held; arrays and tensors are 16 kHz already or loaded by :func:`~nemo_lite.audio.load_audio`.
    """
    detector = VoiceDetector(opts, model)
    file = audio if isinstance(audio, FileAudio) else FileAudio.of(audio)
    if file is None:
        detector.feed(load_audio(audio))
    else:
        for piece in file.pieces():
            detector.feed(piece)
    detector.finish()
    return detector


def speech_regions(audio: AudioInput | FileAudio, opts: VadOptions = VadOptions(),
                   model: SileroVAD | None = None) -> list[tuple[int, int]]:
    """Speech regions of ``audio`` as (start, end) 16 kHz sample ranges, in order (see :func:`detect`)."""
    return detect(audio, opts, model).regions
