"""Tier 1: audio input — formats, resampling to 16 kHz, mono mix-down, integer scaling, and clear errors."""

from __future__ import annotations

import io
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

from nemo_lite import audio
from nemo_lite.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError, load_audio, pad_to_minimum

FREQ = 440.0  # test tone, Hz
AMP = 0.3  # test tone amplitude
SECONDS = 1.5

needs_sox = pytest.mark.skipif(shutil.which("sox") is None, reason="sox not installed")


def tone(rate: int, seconds: float = SECONDS, freq: float = FREQ) -> np.ndarray:
    return (AMP * np.sin(2 * np.pi * freq * np.arange(int(rate * seconds)) / rate)).astype(np.float32)


def dominant_freq(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def assert_tone(x: np.ndarray, amp: float = AMP, tol_amp: float = 0.02, tol_len: int = 200) -> None:
    """A 16 kHz mono float32 rendition of the test tone: length, pitch and loudness preserved."""
    assert x.dtype == np.float32 and x.ndim == 1
    assert abs(len(x) - SECONDS * SAMPLE_RATE) <= tol_len
    assert abs(dominant_freq(x) - FREQ) < 2.0
    mid = x[len(x) // 4: 3 * len(x) // 4]
    assert abs(np.sqrt(2) * np.sqrt(np.mean(mid**2)) - amp) < tol_amp


# ---------------------------------------------------------------------- formats
@needs_sox
def test_sox_flac_44k_stereo(tmp_path):
    path = tmp_path / "tone.flac"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", "-b", "24", str(path), "synth", str(SECONDS), "sine",
                    str(FREQ), "vol", str(AMP)], check=True)
    assert sf.info(str(path)).channels == 2
    assert_tone(load_audio(path))


@needs_sox
def test_sox_ogg_vorbis_22k(tmp_path):
    path = tmp_path / "tone.ogg"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(path), "synth", str(SECONDS), "sine", str(FREQ),
                    "vol", str(AMP)], check=True)
    assert_tone(load_audio(str(path)), tol_amp=0.05)


@pytest.mark.parametrize("fmt,subtype,rate,ext", [
    ("MP3", "MPEG_LAYER_III", 44100, "mp3"),
    ("OGG", "OPUS", 48000, "opus"),
    ("OGG", "VORBIS", 32000, "ogg"),
    ("FLAC", "PCM_16", 8000, "flac"),
    ("WAV", "PCM_U8", 11025, "wav"),
])
def test_lossy_and_lossless_formats(tmp_path, fmt, subtype, rate, ext):
    path = tmp_path / f"tone.{ext}"
    try:
        sf.write(str(path), tone(rate), rate, format=fmt, subtype=subtype)
    except Exception as err:  # an older libsndfile without mp3/opus
        pytest.skip(f"libsndfile cannot write {fmt}/{subtype}: {err}")
    assert_tone(load_audio(path), tol_amp=0.05, tol_len=2000)


def test_stereo_is_averaged_in_both_layouts(tmp_path):
    x = tone(44100)
    stereo = np.stack([x, 0.5 * x], axis=1)  # (N, 2)
    sf.write(str(tmp_path / "s.flac"), stereo, 44100, subtype="PCM_24")
    from_file = load_audio(tmp_path / "s.flac")
    assert_tone(from_file, amp=0.75 * AMP, tol_amp=1e-3)
    from_array = load_audio(stereo, sample_rate=44100)
    from_tensor = load_audio(torch.from_numpy(stereo.T.copy()), sample_rate=44100)  # (2, N), torchaudio layout
    np.testing.assert_allclose(from_file, from_array, atol=1e-6)  # 24-bit quantisation only
    np.testing.assert_array_equal(from_array, from_tensor)


def test_8k_array_is_resampled():
    x = load_audio(tone(8000), sample_rate=8000)
    assert_tone(x)


def test_16k_array_passes_through_unchanged():
    x = tone(SAMPLE_RATE)
    np.testing.assert_array_equal(load_audio(x), x)


def test_file_and_array_resample_identically(tmp_path, monkeypatch):
    """Files are decoded in blocks through a streaming resampler; a small block forces many boundaries."""
    monkeypatch.setattr(audio, "BLOCK", 4096)
    x = tone(44100, seconds=2.3)
    sf.write(str(tmp_path / "t.wav"), x, 44100, subtype="FLOAT")
    np.testing.assert_array_equal(load_audio(tmp_path / "t.wav"), load_audio(x, sample_rate=44100))


def test_int_pcm_scaled_like_soundfile(tmp_path):
    x = tone(SAMPLE_RATE)
    pcm16 = np.round(x * 32767).astype(np.int16)
    sf.write(str(tmp_path / "p16.wav"), pcm16, SAMPLE_RATE, subtype="PCM_16")
    np.testing.assert_array_equal(load_audio(pcm16), load_audio(tmp_path / "p16.wav"))
    pcm32 = pcm16.astype(np.int32) << 16
    sf.write(str(tmp_path / "p32.wav"), pcm32, SAMPLE_RATE, subtype="PCM_32")
    np.testing.assert_array_equal(load_audio(pcm32), load_audio(tmp_path / "p32.wav"))
    assert load_audio(np.array([0, 128, 255], dtype=np.uint8)).tolist() == [-1.0, 0.0, 127 / 128]


def test_bytes_file_object_tensor_equal_path(tmp_path):
    x = tone(22050)
    path = tmp_path / "t.wav"
    sf.write(str(path), x, 22050, subtype="FLOAT")
    ref = load_audio(path)
    np.testing.assert_array_equal(load_audio(path.read_bytes()), ref)
    with open(path, "rb") as f:
        np.testing.assert_array_equal(load_audio(f), ref)
    np.testing.assert_array_equal(load_audio(io.BytesIO(path.read_bytes())), ref)
    np.testing.assert_array_equal(load_audio(torch.from_numpy(x), sample_rate=22050), ref)
    np.testing.assert_array_equal(load_audio(x.astype(np.float64), sample_rate=22050), ref)
    bf16 = load_audio(torch.from_numpy(x).bfloat16(), sample_rate=22050)
    np.testing.assert_allclose(bf16, ref, atol=0.01)


def test_pad_to_minimum():
    short = np.arange(1, 11, dtype=np.float32)
    padded = pad_to_minimum(short)
    assert len(padded) == MIN_SAMPLES
    np.testing.assert_array_equal(padded[:10], short)
    assert not padded[10:].any()
    long = np.ones(MIN_SAMPLES, dtype=np.float32)
    assert pad_to_minimum(long) is long


# ---------------------------------------------------------------------- errors
def _bad_files(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("this is a text file, not audio\n")
    rng = np.random.default_rng(0)
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF" + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    (tmp_path / "dir.wav").mkdir()
    return {
        "missing.wav": "not found",
        "empty.wav": "empty",
        "text.wav": "cannot decode",
        "corrupt.wav": "cannot decode",
        "dir.wav": "directory",
    }


def test_bad_files_name_input_and_problem(tmp_path):
    for name, problem in _bad_files(tmp_path).items():
        with pytest.raises(AudioError) as info:
            load_audio(tmp_path / name)
        assert name in str(info.value) and problem in str(info.value), str(info.value)


def test_corrupt_bytes():
    with pytest.raises(AudioError, match="bytes.*cannot decode"):
        load_audio(b"\x00\x01garbage" * 100)


def test_zero_frame_wav(tmp_path):
    path = tmp_path / "noframes.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(AudioError, match="noframes.wav.*empty"):
        load_audio(path)


@pytest.mark.parametrize("item,problem", [
    (np.zeros(0, dtype=np.float32), "empty"),
    (np.array([0.1, np.nan, 0.2], dtype=np.float32), "NaN"),
    (np.array([0.1, np.inf], dtype=np.float64), "infinite"),
    (np.zeros((2, 3, 400), dtype=np.float32), "3-D"),
    (np.zeros(100, dtype=np.complex64), "not audio"),
    (np.zeros(100, dtype=bool), "not audio"),
    (torch.zeros(2, 2, 100), "3-D"),
    ({"audio": [0.0]}, "unsupported input type dict"),
    (12345, "unsupported input type int"),
    ([0.1, 0.2], "unsupported input type list"),
])
def test_bad_arrays_and_types(item, problem):
    with pytest.raises(AudioError, match=problem) as info:
        load_audio(item)
    assert info.value.args[0].startswith("<")  # names the input (type and shape)


def test_nan_in_a_late_block_is_found(monkeypatch):
    monkeypatch.setattr(audio, "BLOCK", 1000)
    x = np.zeros(10_000, dtype=np.float32)
    x[-1] = np.nan
    with pytest.raises(AudioError, match="NaN"):
        load_audio(x)


def test_bad_sample_rate():
    with pytest.raises(AudioError, match="sample rate"):
        load_audio(np.zeros(100, dtype=np.float32), sample_rate=0)


def test_decode_buffer_grows_when_the_header_undercounts():
    """mp3 headers can undercount frames; the decode buffer must grow without losing or reordering samples."""
    out, n = np.empty(10, dtype=np.float32), 0
    pieces = [np.arange(k, k + 7, dtype=np.float32) for k in range(0, 70, 7)]
    for piece in pieces:
        out, n = audio._append(out, n, piece)
    np.testing.assert_array_equal(out[:n], np.arange(70, dtype=np.float32))


# ---------------------------------------------------------------------- damaged (cut short) files
def _cut(data: bytes, keep: float = 0.5) -> bytes:
    return data[: int(len(data) * keep)]


def test_truncated_wav_is_named_damaged_from_path_bytes_and_file(tmp_path):
    """libsndfile reads a cut-short WAV as a shorter clip (it clamps the frame count): the RIFF data chunk's size
    must be compared with the bytes present. Regression: such files were transcribed silently, exit 0."""
    full = tmp_path / "full.wav"
    sf.write(str(full), tone(16000, 2.0), 16000, subtype="PCM_16")
    cut = tmp_path / "cut.wav"
    cut.write_bytes(_cut(full.read_bytes()))
    for item in (cut, cut.read_bytes(), open(cut, "rb")):  # noqa: SIM115 (closed by the loop's end)
        with pytest.raises(audio.DamagedAudioError, match=r"damaged \(truncated\): holds 1.00 s of the 2.00 s") as e:
            load_audio(item)
        assert e.value.promised == pytest.approx(2.0) and e.value.seconds == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(audio.DamagedAudioError):
        audio.probe(cut)  # found from the header alone, before anything is decoded
    assert audio.probe(cut, allow_truncated=True) == pytest.approx(1.0, abs=1e-3)
    with pytest.warns(audio.TruncatedAudioWarning, match="cut.wav: damaged"):
        x = load_audio(cut, allow_truncated=True)
    np.testing.assert_array_equal(x, load_audio(full)[: len(x)])


def test_truncated_flac_is_damaged_and_salvaged(tmp_path):
    """A cut-short FLAC fails inside a block read; the audio before the damage is recovered in small reads."""
    full = tmp_path / "full.flac"
    sf.write(str(full), tone(16000, 3.0), 16000)
    cut = tmp_path / "cut.flac"
    cut.write_bytes(_cut(full.read_bytes()))
    with pytest.raises(audio.DamagedAudioError, match="of the 3.00 s"):
        load_audio(cut)
    with pytest.warns(audio.TruncatedAudioWarning):
        x = load_audio(cut, allow_truncated=True)
    assert 0.5 * SAMPLE_RATE < len(x) < 1.6 * SAMPLE_RATE
    np.testing.assert_array_equal(x, load_audio(full)[: len(x)])


def test_file_audio_passes_warn_once(tmp_path):
    full = tmp_path / "full.wav"
    sf.write(str(full), tone(16000, 2.0), 16000, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes(_cut(full.read_bytes()))
    file = audio.FileAudio.of(tmp_path / "cut.wav", allow_truncated=True)
    with pytest.warns(audio.TruncatedAudioWarning) as seen:
        first = np.concatenate(list(file.pieces()))
        second = np.concatenate(list(file.pieces()))
    assert len(seen) == 1
    np.testing.assert_array_equal(first, second)
    with pytest.raises(audio.DamagedAudioError):
        list(audio.FileAudio.of(tmp_path / "cut.wav").pieces())


def test_wav_of_unknown_length_and_complete_files_are_not_damaged(tmp_path):
    """Streaming encoders write 0 or 0xFFFFFFFF as the data size; trailing chunks after the data are fine."""
    path = tmp_path / "t.wav"
    sf.write(str(path), tone(16000, 1.0), 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    k = data.index(b"data")
    data[k + 4:k + 8] = (0xFFFFFFFF).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert audio.wav_data_frames(path) is None
    assert len(load_audio(path)) == SAMPLE_RATE
    sf.write(str(path), tone(16000, 1.0), 16000, subtype="PCM_24")
    path.write_bytes(path.read_bytes() + b"LIST" + (4).to_bytes(4, "little") + b"INFO")
    assert audio.wav_data_frames(path) == SAMPLE_RATE and len(load_audio(path)) == SAMPLE_RATE


def test_decoder_chatter_stays_off_stderr(tmp_path, capfd):
    """libmpg123 prints "Warning: Xing stream size off ..." on fd 2 for an mp3 with trailing junk (it decodes
    fully); it must not reach the terminal, and fd 2 works again afterwards."""
    path = tmp_path / "padded.mp3"
    sf.write(str(path), tone(16000, 1.0), 16000)
    path.write_bytes(path.read_bytes() * 1 + b"\x00" * path.stat().st_size)
    assert len(load_audio(path)) == SAMPLE_RATE
    assert audio.probe(path) == pytest.approx(1.0)
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert err == "after\n"
