"""Tier 1: long-form splitting (cuts at pauses, full coverage), files scanned once and read per window, and
long-form transcription on the tiny model."""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr

from nemo_lite import transcription
from nemo_lite.audio import SAMPLE_RATE, AudioError, FileAudio, load_audio
from nemo_lite.longform import MIN_LAST, ChunkOptions, LongAudio, WindowSplitter, scan, split_windows

SR = SAMPLE_RATE


def noisy(seconds: float, seed: int = 0, level: float = 0.3) -> np.ndarray:
    return (level * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def with_gaps(seconds: float, gaps: list[tuple[float, float]], seed: int = 0) -> np.ndarray:
    """Loud noise with near-silent stretches at ``gaps`` (start, end seconds)."""
    x = noisy(seconds, seed)
    for a, b in gaps:
        x[int(a * SR):int(b * SR)] *= 1e-3
    return x


def assert_cover(windows: list[tuple[int, int]], n: int, opts: ChunkOptions) -> None:
    """Windows start at 0, end at n, touch each other (no sample lost or repeated), none over the limit."""
    assert windows[0][0] == 0 and windows[-1][1] == n
    for (_, end), (start, _) in pairwise(windows):
        assert end == start
    for start, end in windows:
        assert 0 < end - start <= opts.max_samples


def test_short_audio_is_one_window():
    x = noisy(7.0)
    assert split_windows(x, ChunkOptions(max_chunk_seconds=7.0)) == [(0, len(x))]


def test_cuts_land_in_pauses():
    # Each pause sits in the 3 s before the limit counted from the previous cut (which lands in the previous
    # pause); the pause at 12 s lies outside every search region.
    gaps = [(8.2, 8.5), (12.0, 12.3), (16.5, 16.8), (25.0, 25.3), (33.0, 33.4)]
    x = with_gaps(36.0, gaps)
    opts = ChunkOptions(max_chunk_seconds=10.0, search_seconds=3.0)
    windows = split_windows(x, opts)
    assert_cover(windows, len(x), opts)
    cuts = [end / SR for _, end in windows[:-1]]
    assert len(cuts) == 4
    for cut, (a, b) in zip(cuts, [gaps[0], *gaps[2:]], strict=True):
        assert a <= cut <= b, (cut, gaps)
        around = x[int((cut - 0.05) * SR):int((cut + 0.05) * SR)]
        assert np.sqrt(np.mean(around**2)) < 0.01  # 100 ms of near-silence around the cut


def test_quietest_point_wins_over_a_shallower_dip():
    x = with_gaps(12.0, [(7.0, 7.3)])
    x[int(8.5 * SR):int(8.8 * SR)] *= 0.3  # a dip, quieter than speech, louder than the pause
    windows = split_windows(x, ChunkOptions(max_chunk_seconds=10.0, search_seconds=4.0))
    assert 7.0 <= windows[0][1] / SR <= 7.3


def test_without_pauses_the_cut_stays_in_the_search_region():
    x = noisy(25.0)
    opts = ChunkOptions(max_chunk_seconds=10.0, search_seconds=2.0)
    windows = split_windows(x, opts)
    assert_cover(windows, len(x), opts)
    for start, end in windows[:-1]:
        assert 8.0 * SR <= end - start <= 10.0 * SR


@pytest.mark.parametrize("seconds", [10.001, 10.5, 19.99, 20.0, 33.3])
def test_lengths_near_the_limit(seconds):
    x = noisy(seconds, seed=1)
    opts = ChunkOptions(max_chunk_seconds=10.0, search_seconds=3.0)
    assert_cover(split_windows(x, opts), len(x), opts)


def test_digital_silence_and_tiny_limits():
    for x, opts in [(np.zeros(50 * SR, np.float32), ChunkOptions()),
                    (noisy(3.0), ChunkOptions(max_chunk_seconds=0.5, search_seconds=0.2)),
                    (noisy(3.0), ChunkOptions(max_chunk_seconds=1.0, search_seconds=0.0))]:
        assert_cover(split_windows(x, opts), len(x), opts)


def test_bad_options():
    with pytest.raises(ValueError):
        ChunkOptions(max_chunk_seconds=0)
    with pytest.raises(ValueError):
        ChunkOptions(search_seconds=-1)


def test_search_region_is_at_most_half_the_limit():
    x = noisy(20.0)
    x[int(1.0 * SR):int(1.3 * SR)] = 0  # a pause early in the first window, outside half the limit
    windows = split_windows(x, ChunkOptions(max_chunk_seconds=4.0, search_seconds=5.0))
    assert all(end - start >= 2.0 * SR for start, end in windows[:-1])


# ---------------------------------------------------------------------- transcription
LIMIT = 4.0  # seconds per window in the model tests, to keep them fast
TOKENS = 4


@pytest.fixture(scope="module")
def long_audio() -> np.ndarray:
    return with_gaps(21.0, [(3.5, 3.8), (7.0, 7.2), (12.0, 12.4), (15.5, 15.7), (18.8, 19.0)], seed=3)


def test_long_audio_segments(tiny_model, long_audio, monkeypatch):
    from nemo_lite.runtime import ENCODER_BATCH_SAMPLES

    embedded, decoded = [], []
    embed, decode = tiny_model.embed_audio, tiny_model.generate_from_embeddings
    monkeypatch.setattr(tiny_model, "embed_audio", lambda audios: embedded.append([len(a) for a in audios]) or
                        embed(audios))
    monkeypatch.setattr(tiny_model, "generate_from_embeddings", lambda e, **kw: decoded.append(len(e)) or
                        decode(e, **kw))
    out = tiny_model.transcribe(long_audio, timestamps=True, max_chunk_seconds=LIMIT, batch_size=2,
                                segmentation="fixed", max_new_tokens=TOKENS)
    monkeypatch.undo()
    segs = out.segments
    assert out.duration == pytest.approx(len(long_audio) / SR)
    assert segs[0].start == 0 and segs[-1].end == pytest.approx(out.duration)
    for a, b in pairwise(segs):
        assert a.end == b.start and a.start < a.end
    assert all(s.end - s.start <= LIMIT + 1e-9 for s in segs)
    assert len(segs) >= 21 / LIMIT
    # Memory: each decoding batch holds at most batch_size windows, and samples are only held one encoder
    # group at a time (at most one 40 s window's worth of padded samples, each window at most the limit).
    assert all(n <= 2 for n in decoded) and sum(decoded) == len(segs)
    assert all(max(c) <= LIMIT * SR and len(c) * max(c) <= ENCODER_BATCH_SAMPLES for c in embedded)
    assert sum(len(c) for c in embedded) == len(segs)
    # Each segment is what the window alone transcribes to; the text joins them in order.
    for s in segs:
        alone = tiny_model.transcribe(long_audio[round(s.start * SR):round(s.end * SR)], max_new_tokens=TOKENS)
        assert s.text == alone
    assert out.text == " ".join(s.text.strip() for s in segs if s.text.strip())


def test_long_audio_without_timestamps_is_the_joined_text(tiny_model, long_audio):
    kwargs = dict(max_chunk_seconds=LIMIT, max_new_tokens=TOKENS, segmentation="fixed")
    text = tiny_model.transcribe(long_audio, **kwargs)
    assert text == tiny_model.transcribe(long_audio, timestamps=True, **kwargs).text


def test_transcript_serialisation(tiny_model, long_audio):
    out = tiny_model.transcribe([long_audio], timestamps=True, max_chunk_seconds=LIMIT, max_new_tokens=TOKENS,
                                segmentation="fixed")[0]
    d = json.loads(json.dumps(out.to_dict()))
    assert set(d) == {"text", "duration", "segments"}
    assert [(s["start"], s["end"], s["text"]) for s in d["segments"]] == [(s.start, s.end, s.text)
                                                                          for s in out.segments]

    def times(match) -> float:
        h, m, s, ms = (int(g) for g in match)
        return h * 3600 + m * 60 + s + ms / 1000

    srt_cues = re.findall(r"(\d+)\n(\d\d):(\d\d):(\d\d),(\d\d\d) --> (\d\d):(\d\d):(\d\d),(\d\d\d)\n(.+)\n\n",
                          out.to_srt())
    spoken = [s for s in out.segments if s.text.strip()]
    assert len(srt_cues) == len(spoken)
    for k, (cue, seg) in enumerate(zip(srt_cues, spoken, strict=True), 1):
        assert int(cue[0]) == k
        assert times(cue[1:5]) == pytest.approx(seg.start, abs=1e-3)
        assert times(cue[5:9]) == pytest.approx(seg.end, abs=1e-3)
    vtt = out.to_vtt()
    assert vtt.startswith("WEBVTT\n\n")
    vtt_cues = re.findall(r"(\d\d):(\d\d):(\d\d)\.(\d\d\d) --> (\d\d):(\d\d):(\d\d)\.(\d\d\d)\n(.+)\n\n", vtt)
    assert [(times(c[0:4]), times(c[4:8])) for c in vtt_cues] == [(c[0], c[1]) for c in
                                                                  [(times(c[1:5]), times(c[5:9])) for c in srt_cues]]


def test_subtitle_time_format_over_an_hour():
    from nemo_lite.transcription import Segment, Transcript

    t = Transcript("a b", [Segment(3720.0, 3723.4567, "a\n\nb")], 3723.4567)
    assert t.to_srt() == "1\n01:02:00,000 --> 01:02:03,457\na b\n\n"
    assert t.to_vtt() == "WEBVTT\n\n01:02:00.000 --> 01:02:03.457\na b\n\n"


# ---------------------------------------------------------------------- files: scanned once, read per window
def write_blocks(path, x: np.ndarray, rate: int, **kwargs) -> None:
    """Write in 1 s blocks (libsndfile 1.2.2 can crash writing a long Vorbis file in one call)."""
    with sf.SoundFile(str(path), "w", rate, 1 if x.ndim == 1 else x.shape[1], **kwargs) as f:
        for i in range(0, len(x), rate):
            f.write(x[i:i + rate])


def test_splitter_fed_in_pieces_cuts_like_split_windows():
    x = with_gaps(61.0, [(7.0, 7.3), (15.0, 15.2), (33.1, 33.3), (52.0, 52.5)], seed=4)
    rng = np.random.default_rng(0)
    for opts in [ChunkOptions(max_chunk_seconds=10.0, search_seconds=3.0), ChunkOptions(max_chunk_seconds=1.0),
                 ChunkOptions(max_chunk_seconds=20.0, search_seconds=0.0)]:
        splitter, i, most = WindowSplitter(opts), 0, 0
        while i < len(x):
            k = int(rng.integers(0, 3 * SR))  # empty pieces too
            splitter.feed(x[i:i + k])
            i += k
            most = max(most, splitter.kept) if i > opts.max_samples + 3 * SR else most
        assert splitter.finish() == split_windows(x, opts)
        assert most <= opts.search_samples + MIN_LAST + 2 * 3 * SR  # a few seconds, not the recording


@pytest.fixture(scope="module")
def long_wav(tmp_path_factory, long_audio) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(str(path), long_audio, SR, subtype="PCM_16")
    return path


def test_16k_file_windows_equal_slices_of_the_loaded_array(long_wav):
    loaded = load_audio(long_wav)
    opts = ChunkOptions(max_chunk_seconds=LIMIT)
    long = scan(FileAudio.of(long_wav), opts)
    assert isinstance(long, LongAudio) and long.length == len(loaded)
    assert long.windows == split_windows(loaded, opts)
    for start, end in long.windows:
        np.testing.assert_array_equal(long.read(start, end), loaded[start:end])  # bit-identical
    start, end = long.windows[1]  # out of order: the pass restarts
    np.testing.assert_array_equal(long.read(start, end), loaded[start:end])
    long.close()


def test_16k_file_transcribes_like_the_loaded_array(tiny_model, long_wav, monkeypatch):
    kwargs = dict(timestamps=True, max_chunk_seconds=LIMIT, max_new_tokens=TOKENS, batch_size=2, segmentation="fixed")
    in_memory = tiny_model.transcribe(load_audio(long_wav), **kwargs)
    monkeypatch.setattr(transcription, "load_audio", None)  # a long file must not be loaded whole
    from_file = tiny_model.transcribe(str(long_wav), **kwargs)
    assert from_file.to_dict() == in_memory.to_dict()  # same texts, same segment boundaries
    assert len(from_file.segments) >= 21 / LIMIT


def test_44k_stereo_file_segments_cover_it_in_order(tiny_model, tmp_path, long_audio):
    path = tmp_path / "stereo.flac"
    x = soxr.resample(long_audio, SR, 44100, quality="HQ")
    write_blocks(path, np.stack([x, 0.5 * x], axis=1), 44100, subtype="PCM_24")
    kwargs = dict(timestamps=True, max_chunk_seconds=LIMIT, max_new_tokens=TOKENS, batch_size=3, segmentation="fixed")
    out = tiny_model.transcribe(path, **kwargs)
    segs = out.segments
    assert len(segs) >= 21 / LIMIT
    assert segs[0].start == 0 and segs[-1].end == out.duration
    assert out.duration == pytest.approx(sf.info(str(path)).duration, abs=1e-3)
    for a, b in pairwise(segs):
        assert a.end == b.start and a.start < a.end <= a.start + LIMIT
    # Both passes decode as load_audio does, so even resampled windows equal the in-memory path's.
    assert out.to_dict() == tiny_model.transcribe(load_audio(path), **kwargs).to_dict()
    with open(path, "rb") as f:  # bytes and file objects are read per window too, with a short clip in the batch
        kwargs["timestamps"] = False
        many = tiny_model.transcribe([path.read_bytes(), noisy(1.5, seed=9), f], **kwargs)
    assert many == [out.text, tiny_model.transcribe(noisy(1.5, seed=9), **kwargs), out.text]


def test_long_file_problems_are_found_before_model_work(tiny_model, tmp_path, long_audio, monkeypatch):
    """Regression (a spy that could not fail): the check used to watch ``generate``, which transcription never
    calls. It now watches what transcription does call: ``embed_audio`` and ``generate_from_embeddings``."""
    calls = []
    embed, decode = tiny_model.embed_audio, tiny_model.generate_from_embeddings
    monkeypatch.setattr(tiny_model, "embed_audio", lambda *a, **k: calls.append("embed") or embed(*a, **k))
    monkeypatch.setattr(tiny_model, "generate_from_embeddings",
                        lambda *a, **k: calls.append("decode") or decode(*a, **k))
    tiny_model.transcribe(long_audio[: SR // 2], max_chunk_seconds=LIMIT, max_new_tokens=2)  # spies see real work
    assert calls == ["embed", "decode"]
    calls.clear()
    bad = long_audio.copy()
    bad[-5] = np.nan  # in the last piece of the scan
    write_blocks(tmp_path / "nan.wav", bad, SR, subtype="FLOAT")
    write_blocks(tmp_path / "silent.wav", np.zeros(0, np.float32), SR)
    items = [str(tmp_path / "nan.wav"), str(tmp_path / "missing.wav"), str(tmp_path / "silent.wav")]
    with pytest.raises(AudioError) as info:
        tiny_model.transcribe(items, max_chunk_seconds=LIMIT)
    msg = str(info.value)
    assert "nan.wav: audio contains NaN" in msg and "missing.wav: file not found" in msg and "empty" in msg
    assert calls == []


def test_a_file_changed_after_its_scan_is_reported(tmp_path, long_audio):
    path = tmp_path / "changing.wav"
    sf.write(str(path), long_audio, SR)
    long = scan(FileAudio.of(path), ChunkOptions(max_chunk_seconds=LIMIT))
    sf.write(str(path), long_audio[: len(long_audio) // 2], SR)
    with pytest.raises(AudioError, match="changing.wav: audio ends at sample"):
        for start, end in long.windows:
            long.read(start, end)
