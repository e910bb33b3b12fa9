"""Tier 1: formats libsndfile cannot read (m4a/AAC) decoded by FFmpeg through PyAV (nemo_lite.ffmpeg), and the
one-line message naming the [ffmpeg] extra when PyAV is not installed. The m4a files are made by PyAV's own AAC
encoder from known signals; the expected values come from those signals, not from the decoder under test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_lite import audio, testing
from nemo_lite.audio import SAMPLE_RATE, AudioError, FileAudio, load_audio, probe

pytest.importorskip("av", reason="PyAV (the [ffmpeg] extra) is not installed")

DATA = Path(__file__).resolve().parent / "data"
FRAME = testing.AAC_FRAME  # an AAC frame: the decoded length may differ from the source's by its padding
FREQ, AMP, SECONDS = 440.0, 0.3, 1.5  # a test tone


def corr(a: np.ndarray, b: np.ndarray) -> float:
    n = min(len(a), len(b))
    return float(np.corrcoef(a[:n], b[:n])[0, 1])


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> tuple[np.ndarray, Path]:
    """A 16 kHz mono speech clip and its m4a."""
    x, rate = sf.read(DATA / "speech_medium.wav", dtype="float32")
    assert rate == SAMPLE_RATE
    return x, testing.write_m4a(tmp_path_factory.mktemp("m4a") / "speech.m4a", x, rate)


def test_m4a_decodes_to_its_source(speech):
    """Same duration (to the encoder's last-frame padding), aligned (no priming left at the start) and the same
    waveform (AAC at 128 kb/s keeps the correlation above 0.99)."""
    x, path = speech
    with pytest.raises(sf.LibsndfileError):  # what makes this a test of the FFmpeg path
        sf.info(str(path))
    y = load_audio(path)
    assert y.dtype == np.float32 and y.ndim == 1
    assert 0 <= len(y) - len(x) < FRAME
    assert corr(x, y) > 0.99
    assert corr(x[1:], y) < 0.95 and corr(x, y[1:]) < 0.95  # one sample off already drops it: lag 0 is the match
    assert abs(probe(path) - len(x) / SAMPLE_RATE) < FRAME / SAMPLE_RATE


def test_m4a_44k_stereo_is_mixed_down_and_resampled(tmp_path):
    """A 44.1 kHz stereo tone comes out as the same tone at 16 kHz mono, equal to what the WAV of the same
    signal gives through libsndfile and soxr."""
    rate = 44100
    t = np.arange(int(rate * SECONDS)) / rate
    left = AMP * np.sin(2 * np.pi * FREQ * t)
    stereo = np.stack([left, 0.5 * left], axis=1).astype(np.float32)  # (samples, 2): mean = 0.75 * left
    sf.write(tmp_path / "tone.wav", stereo, rate)
    y = load_audio(testing.write_m4a(tmp_path / "tone.m4a", stereo, rate))
    ref = load_audio(tmp_path / "tone.wav")
    assert 0 <= len(y) - len(ref) < FRAME * SAMPLE_RATE / rate + 1
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.fft.rfftfreq(len(y), 1 / SAMPLE_RATE)[np.argmax(spectrum)] - FREQ) < 2.0
    mid = y[len(y) // 4: 3 * len(y) // 4]
    assert abs(np.sqrt(2 * np.mean(mid**2)) - 0.75 * AMP) < 0.01
    assert corr(ref, y) > 0.999


def test_m4a_passes_bytes_and_slices_equal_the_whole_load(speech):
    """The streaming pass (long-form), bytes (server uploads) and a manifest slice give load_audio's samples."""
    _, path = speech
    y = load_audio(path)
    assert np.array_equal(np.concatenate(list(FileAudio.of(str(path)).pieces(block=4096))), y)
    assert np.array_equal(load_audio(path.read_bytes()), y)
    with open(path, "rb") as f:
        assert np.array_equal(load_audio(f), y)
    part = load_audio(FileAudio.slice(path, 1.0, 2.0))
    assert np.array_equal(part, y[SAMPLE_RATE:3 * SAMPLE_RATE])


def test_directory_scan_and_undecodable_m4a(speech, tmp_path):
    """A folder's m4a files are picked up; a file that is not audio is named with both decoders' reasons."""
    (tmp_path / "a.m4a").write_bytes(speech[1].read_bytes())
    (tmp_path / "b.m4a").write_text("not audio")
    assert [p.name for p in audio.audio_files(tmp_path)] == ["a.m4a", "b.m4a"]
    with pytest.raises(AudioError, match=r"b\.m4a: cannot decode audio \(libsndfile: Format not recognised; "
                                         r"FFmpeg: .+\)"):
        load_audio(tmp_path / "b.m4a")


BLOCK_AV = "import sys\nsys.modules['av'] = None  # `import av` raises ImportError: PyAV is not installed\n"


def test_without_pyav_the_message_names_the_extra(speech, tmp_path):
    """With PyAV absent (its import blocked by a sitecustomize), an m4a is one input error naming the extra, from
    the API and from `nemo-lite transcribe` (checked before any model loads); WAV files still load."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_AV)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    m4a = str(speech[1])
    code = ("import sys\nfrom nemo_lite.audio import load_audio, AudioError\n"
            f"print(len(load_audio({str(DATA / 'speech_short.wav')!r})))\n"
            f"try:\n    load_audio({m4a!r})\nexcept AudioError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    n, message = out.stdout.strip().splitlines()
    assert int(n) == sf.info(str(DATA / "speech_short.wav")).frames
    assert message == (f"{m4a}: cannot decode audio (libsndfile: Format not recognised; for m4a, aac and the other "
                       "formats FFmpeg reads, pip install 'nemo-lite[ffmpeg]' (PyAV))")
    res = subprocess.run([sys.executable, "-m", "nemo_lite.cli", "transcribe", m4a, "--model", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [f"nemo-lite: {message}", "nemo-lite: nothing to transcribe"]
