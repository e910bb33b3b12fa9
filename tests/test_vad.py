"""Tier 1: voice-activity detection (Silero VAD), speech segmentation and subtitle cues.

Recordings are composed in memory from tests/data/vad (espeak-ng sentences with measured speech bounds, made by
scripts/make_vad_fixtures.py), silences, white-noise bursts and pure tones, so every true boundary is known.
Expected values come from that ground truth, from the silero-vad package's own jit model, or are worked out by
hand in the test; none is read back from the code under test.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from nemo_lite import segmentation as sg
from nemo_lite import subtitles as st
from nemo_lite import vad
from nemo_lite.audio import SAMPLE_RATE, FileAudio
from nemo_lite.vad_fixtures import Recording, Sentences, compose, conversation, tone, white_noise

SR = SAMPLE_RATE
DATA = Path(__file__).resolve().parent / "data" / "vad"
TOL = int(0.3 * SR)  # boundary tolerance: 0.3 s


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def sentences() -> Sentences:
    return Sentences.load(DATA)


@pytest.fixture(scope="module")
def model() -> vad.SileroVAD:
    return vad.load_vad_model()


@pytest.fixture(scope="module")
def spaced(sentences) -> Recording:
    """~60 s: sentences apart by 0.6-4 s silences; every second gap holds a noise burst or a tone."""
    return conversation(sentences, 60, seed=3, noise_every=2)


# ---------------------------------------------------------------- the model


def test_probabilities_match_silero_jit(spaced, model):
    """Guards the port: architecture, the jit key table and the 64-sample context must reproduce the package's
    default model, called the way its get_speech_timestamps calls it (512 samples at a time, zero-padded end)."""
    audio = spaced.audio[: 12 * SR + 300]  # a ragged end: the last chunk is partial
    jit = torch.jit.load(str(vad.jit_path()))
    jit.reset_states()
    padded = np.pad(audio, (0, -len(audio) % vad.CHUNK))
    with torch.inference_mode():
        ref = np.array([jit(torch.from_numpy(padded[i:i + vad.CHUNK]), SR).item()
                        for i in range(0, len(padded), vad.CHUNK)])
    ours = vad.VoiceDetector(vad.VadOptions(), model).feed(audio)
    ours.finish()
    assert len(ours.probabilities) == len(ref) == -(-len(audio) // vad.CHUNK)
    np.testing.assert_allclose(ours.probabilities, ref, atol=1e-4)
    assert ref.max() > 0.9 and ref.min() < 0.1  # the clip holds both speech and non-speech


def test_does_not_touch_torch_threads(spaced, model):
    """Regression: ``import silero_vad`` calls torch.set_num_threads(1) for the whole process; loading and
    running the VAD must leave the caller's setting alone (and never import that package, even at the top)."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        vad.clear_vad_cache()
        vad.speech_regions(spaced.audio[:SR])  # loads the default model into the cache
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        vad.clear_vad_cache()
    assert vad._MODEL is None
    assert "silero_vad" not in sys.modules


# ---------------------------------------------------------------- decisions (hand-made probabilities)


def regions(probs: list[float], **kw) -> list[tuple[int, int]]:
    """Regions in chunks (not samples), for readable expectations."""
    total = len(probs) * vad.CHUNK
    out = vad.regions_from_probs(np.array(probs, np.float32), total, vad.VadOptions(**kw))
    return [(a // vad.CHUNK, b // vad.CHUNK) for a, b in out]


def test_hysteresis_rules():
    """Onset opens, offset starts a pause, a pause ends a region only after min_silence (at its first chunk),
    values between offset and onset neither open nor close, short regions are dropped."""
    kw = dict(onset=0.5, offset=0.3, min_silence_seconds=3 * vad.CHUNK_SECONDS, min_speech_seconds=0)
    assert regions([0.1, 0.6, 0.6, 0.1, 0.1, 0.1, 0.1], **kw) == [(1, 3)]
    assert regions([0.1, 0.4, 0.4, 0.1], **kw) == []  # never reached onset
    assert regions([0.6, 0.4, 0.4, 0.4, 0.4, 0.6], **kw) == [(0, 6)]  # above offset: still speech, open at end
    assert regions([0.6, 0.1, 0.1, 0.6, 0.6, 0.1, 0.1, 0.1], **kw) == [(0, 5)]  # a 2-chunk pause stays inside
    assert regions([0.6, 0.1, 0.4, 0.4, 0.6], **kw) == [(0, 1), (4, 5)]  # 0.4 < onset: the pause goes on
    assert regions([0.6, 0.6, 0.1, 0.1, 0.1, 0.9, 0.9, 0.9], **kw) == [(0, 2), (5, 8)]
    kw["min_speech_seconds"] = 2 * vad.CHUNK_SECONDS
    assert regions([0.6, 0.1, 0.1, 0.1, 0.6, 0.6, 0.1, 0.1, 0.1], **kw) == [(4, 6)]  # 1 chunk: dropped
    assert regions([0.1, 0.6, 0.1], **kw) == []  # a lone chunk at the end: dropped too


def test_region_end_is_clipped_to_the_audio():
    """The zero-padded last chunk must not push a region past the last real sample."""
    probs = np.array([0.1, 0.9, 0.9], np.float32)
    opts = vad.VadOptions(min_speech_seconds=0)
    assert vad.regions_from_probs(probs, 2 * vad.CHUNK + 100, opts) == [(vad.CHUNK, 2 * vad.CHUNK + 100)]


def test_options_are_checked():
    with pytest.raises(ValueError):
        vad.VadOptions(onset=0.3, offset=0.5)
    with pytest.raises(ValueError):
        sg.SegmentationOptions(max_segment_seconds=0.3, pad_seconds=0.2)
    with pytest.raises(ValueError):
        sg.SegmentationOptions(max_segment_seconds=3.0, min_segment_seconds=2.8)


# ---------------------------------------------------------------- streaming


@pytest.mark.parametrize("pieces", ["ragged", 512, 4000, 65536, vad.BATCH_CHUNKS * vad.CHUNK + 1])
def test_streamed_equals_whole(spaced, model, pieces):
    """Streaming must not change a single probability or boundary, whatever the piece sizes (pieces that cut
    chunks and batches anywhere, 1-sample pieces included)."""
    audio = spaced.audio[: 40 * SR + 123]
    whole = vad.VoiceDetector(vad.VadOptions(), model).feed(audio)
    expect = whole.finish()
    rng = np.random.default_rng(7)
    sizes = rng.integers(1, 3000, size=len(audio)) if pieces == "ragged" else np.full(len(audio), pieces)
    sizes[:50] = 1  # some single samples at the start
    streamed, pos = vad.VoiceDetector(vad.VadOptions(), model), 0
    for n in sizes:
        if pos >= len(audio):
            break
        streamed.feed(audio[pos:pos + n])
        pos += n
    assert streamed.finish() == expect and len(expect) >= 5
    assert np.array_equal(streamed.probabilities, whole.probabilities)
    assert streamed.total == len(audio)
    assert streamed.finish() == expect  # finishing twice changes nothing
    with pytest.raises(RuntimeError):
        streamed.feed(audio[:10])


def test_file_is_streamed_like_the_array(spaced, model, tmp_path):
    """A FLAC file goes through FileAudio.pieces() (4 s pieces) and must give the array's regions."""
    path = tmp_path / "spaced.flac"
    sf.write(path, spaced.audio, SR, subtype="PCM_24")
    decoded = sf.read(path, dtype="float32")[0]
    assert vad.speech_regions(FileAudio.of(str(path)), model=model) == vad.speech_regions(decoded, model=model)
    assert vad.speech_regions(str(path), model=model) == vad.speech_regions(decoded, model=model)


# ---------------------------------------------------------------- segments against the truth


def check_segments(rec: Recording, segs: list[tuple[int, int]], opts: sg.SegmentationOptions) -> None:
    assert segs, "no segments"
    for (_, e1), (s2, _) in pairwise(segs):
        assert e1 <= s2, "segments overlap or are out of order"
    assert segs[0][0] >= 0 and segs[-1][1] <= len(rec.audio)
    for a, b in segs:
        assert 0 < b - a <= opts.max_segment_seconds * SR + 1
    for a, b in rec.speech:
        inside = any(x <= a and b <= y for x, y in segs)
        near = any(abs(x - a) <= TOL for x, _ in segs) and any(abs(y - b) <= TOL for _, y in segs)
        assert inside or near, f"true speech {a / SR:.2f}-{b / SR:.2f} s is not matched by a segment"
    for a, b, kind in rec.other:
        for x, y in segs:
            assert not (a <= x and y <= b), f"segment {x / SR:.2f}-{y / SR:.2f} s inside {kind} at {a / SR:.2f} s"


def test_segments_follow_speech(spaced, model):
    """Every sentence is found with its bounds (0.3 s), no segment sits in a silence, noise burst or tone."""
    assert {k for *_, k in spaced.other} == {"silence", "noise", "tone"}
    opts = sg.SegmentationOptions()
    check_segments(spaced, sg.speech_segments(spaced.audio, opts=opts, model=model), opts)


def test_segments_with_short_gaps_and_a_noise_floor(sentences, model):
    """Sentences 0.2-1 s apart under a -45 dBFS white-noise floor; 'Yes.' (0.37 s) among them."""
    parts = [("silence", 0.4)]
    for name, gap in zip(["s03.flac", "s07.flac", "s01.flac", "s05.flac", "s07.flac", "s00.flac"],
                         [0.8, 0.5, 0.2, 1.0, 0.3, 0.6], strict=True):
        parts += [("speech", name), ("silence", gap)]
    rec = compose(parts, sentences, seed=1, floor_dbfs=-45)
    opts = sg.SegmentationOptions()
    segs = sg.speech_segments(rec.audio, opts=opts, model=model)
    check_segments(rec, segs, opts)
    assert all(b - a >= opts.min_segment_seconds * SR for a, b in segs)  # the "Yes." clips were merged


def test_run_on_speech_is_cut_between_sentences(sentences, model):
    """Sentences 0.12-0.2 s apart make one long VAD region; every cut must fall in a gap between sentences and
    no segment may exceed the limit."""
    names = ["s02.flac", "s04.flac", "s06.flac", "s08.flac", "s09.flac", "s00.flac", "s01.flac", "s03.flac",
             "s05.flac", "s02.flac", "s04.flac"]
    gaps = np.random.default_rng(2).uniform(0.12, 0.2, len(names))
    parts = [p for n, g in zip(names, gaps, strict=True) for p in (("speech", n), ("silence", float(g)))]
    rec = compose(parts, sentences)
    det = vad.detect(rec.audio, model=model)
    assert len(det.regions) <= 2 and rec.seconds > 40  # the VAD alone leaves it (nearly) whole
    opts = sg.SegmentationOptions(max_segment_seconds=12.0)
    segs = sg.segment(det.regions, det.probabilities, det.total, opts)
    check_segments(rec, segs, opts)
    for (_, y), (x, _) in pairwise(segs):
        cut = (x + y) // 2
        assert any(b <= cut <= a2 for (_, b), (a2, _) in pairwise(rec.speech)), f"cut at {cut / SR:.2f} s in speech"


@pytest.mark.parametrize("kind", ["silence", "noise -20 dBFS", "noise -3 dBFS", "tone 440 Hz", "tone 200 Hz"])
def test_no_segments_without_speech(model, kind):
    """30 s of digital silence, white noise or a pure tone give no segment at the default thresholds (the loud
    200 Hz tone is the case closest to firing that we measured: max probability ~0.27)."""
    rng = np.random.default_rng(0)
    audio = {"silence": np.zeros(30 * SR, np.float32), "noise -20 dBFS": white_noise(30, -20, rng),
             "noise -3 dBFS": white_noise(30, -3, rng), "tone 440 Hz": tone(30, 440, -6),
             "tone 200 Hz": tone(30, 200, -6)}[kind]
    assert sg.speech_segments(audio, model=model) == []


# ---------------------------------------------------------------- segmentation (hand-made probabilities)


def chunks(n: int) -> int:
    return n * vad.CHUNK


def test_split_at_the_longest_pause_that_fits():
    """A 30 s region with pauses at 8 s (0.1 s long), 15 s (0.2 s) and 22 s (0.15 s), limit 20 s: the 15 s pause
    leaves both sides within 20 s and is the longest, so it is the only cut."""
    n = 30 * SR // vad.CHUNK
    probs = np.full(n, 0.9, np.float32)
    for at, length in ((8, 0.1), (15, 0.2), (22, 0.15)):
        a = int(at * SR) // vad.CHUNK
        probs[a:a + int(length * SR) // vad.CHUNK] = 0.05
    opts = sg.SegmentationOptions(max_segment_seconds=20.4, pad_seconds=0.2)  # limit 20 s unpadded
    pieces = sg.split_long(0, chunks(n), probs, opts)
    a15 = int(15 * SR) // vad.CHUNK
    assert pieces == [(0, chunks(a15)), (chunks(a15 + int(0.2 * SR) // vad.CHUNK), chunks(n))]


def test_split_without_a_pause_cuts_at_the_lowest_point_and_never_exceeds():
    """No chunk below the pause threshold: the cut goes at the dip (0.6 at 13 s); a 70 s region with no dip at
    all still comes out in pieces within the limit."""
    n = 25 * SR // vad.CHUNK
    probs = np.full(n, 0.95, np.float32)
    dip = 13 * SR // vad.CHUNK
    probs[dip] = 0.6
    opts = sg.SegmentationOptions(max_segment_seconds=20.4, pad_seconds=0.2)
    pieces = sg.split_long(0, chunks(n), probs, opts)
    assert len(pieces) == 2 and abs(pieces[0][1] - chunks(dip)) <= vad.CHUNK and pieces[0][1] == pieces[1][0]
    flat = np.full(70 * SR // vad.CHUNK, 0.95, np.float32)
    pieces = sg.split_long(0, chunks(len(flat)), flat, opts)
    assert pieces[0][0] == 0 and pieces[-1][1] == chunks(len(flat))
    assert all(b - a <= 20 * SR for a, b in pieces) and all(y == x for (_, y), (x, _) in pairwise(pieces))


def test_segment_invariants_on_random_input():
    """Whatever the regions and probabilities: segments in order, not overlapping, inside the audio, none over
    max_segment_seconds, and every region sample still inside some segment."""
    rng = np.random.default_rng(0)
    opts = sg.SegmentationOptions(max_segment_seconds=6.0, min_segment_seconds=1.0, pad_seconds=0.2)
    for _ in range(30):
        n = int(rng.integers(100, 3000))  # chunks: 3-96 s
        probs = rng.uniform(0, 1, n).astype(np.float32) ** float(rng.uniform(0.2, 3))
        edges = np.sort(rng.choice(np.arange(1, n), size=2 * int(rng.integers(1, 12)), replace=False))
        regions = [(chunks(a), chunks(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]
        total = chunks(n) - int(rng.integers(0, vad.CHUNK))
        regions = [(a, min(b, total)) for a, b in regions if a < total]
        segs = sg.segment(regions, probs, total, opts)
        assert all(0 <= a < b <= total and b - a <= 6 * SR for a, b in segs)
        assert all(e1 <= s2 for (_, e1), (s2, _) in pairwise(segs))
        speech_lost = sum(b - a for a, b in regions) - sum(
            max(0, min(b, y) - max(a, x)) for a, b in regions for x, y in segs)
        pause_chunks = sum((probs[a // vad.CHUNK:b // vad.CHUNK] < opts.pause_threshold).sum() for a, b in regions)
        assert 0 <= speech_lost <= pause_chunks * vad.CHUNK  # only pauses cut out of regions are left out


def test_merge_short_into_nearer_neighbour():
    """A 0.5 s fragment 0.8 s after one segment and 0.3 s before another joins the second; a fragment 3 s from
    everything stays alone (it may be a real word)."""
    s = SR
    segs = [(0, 5 * s), (int(5.8 * s), int(6.3 * s)), (int(6.6 * s), 10 * s), (13 * s, int(13.4 * s))]
    out = sg.merge_short(segs, sg.SegmentationOptions(min_segment_seconds=1.0, merge_gap_seconds=1.0))
    assert out == [(0, 5 * s), (int(5.8 * s), 10 * s), (13 * s, int(13.4 * s))]


def test_merge_respects_the_limit():
    s = SR
    segs = [(0, 19 * s), (int(19.5 * s), int(19.9 * s))]
    opts = sg.SegmentationOptions(max_segment_seconds=20.0, pad_seconds=0.2)  # limit 19.6 s
    assert sg.merge_short(segs, opts) == segs


def test_padding_stops_at_neighbours_and_bounds():
    """Padding 0.2 s: a 0.1 s gap is shared at its middle, file bounds are not crossed."""
    s = SR
    segs = [(int(0.1 * s), 2 * s), (int(2.1 * s), 4 * s), (5 * s, int(5.9 * s))]
    out = sg.pad(segs, sg.SegmentationOptions(pad_seconds=0.2), total=6 * s)
    assert out == [(0, int(2.05 * s)), (int(2.05 * s), int(4.2 * s)), (int(4.8 * s), 6 * s)]


# ---------------------------------------------------------------- subtitles

LONG = ("The juice of lemons makes fine punch, especially on a hot summer afternoon by the sea, and four hours of "
        "steady work faced us while nobody complained about it at all.")


def test_cues_split_long_segments():
    """A 15.5 s, 163-character segment becomes 3 cues (15.5 / 7 s) of at most 2 lines of 42 characters,
    words intact and in order, times shared out inside the segment, first and last times exact."""
    cues = st.subtitle_cues([(3.0, 18.5, LONG)])
    assert len(cues) == 3
    assert " ".join(line for c in cues for line in c.lines) == LONG
    assert all(1 <= len(c.lines) <= 2 and all(0 < len(x) <= 42 for x in c.lines) for c in cues)
    assert cues[0].start == 3.0 and cues[-1].end == 18.5
    assert all(c.start < c.end for c in cues) and all(a.end == b.start for a, b in pairwise(cues))
    assert all(c.end - c.start <= 7.0 for c in cues)
    for c in cues:  # times in proportion to characters: each cue's share within 10% of its text's share
        share = len(" ".join(c.lines)) / len(LONG)
        assert abs((c.end - c.start) / 15.5 - share) < 0.1


def test_cues_split_by_text_length_and_odd_text():
    """Text over two lines becomes more cues even when short in time; blank text gives no cue; '-->' never
    survives (also not from '--->'); a word longer than a line is broken to fit."""
    cues = st.subtitle_cues([(0.0, 4.0, LONG), (5.0, 6.0, " \n "), (6.0, 7.0, "a ---> b\n\nc"),
                             (7.0, 8.0, "x" * 100)])
    assert len([c for c in cues if c.end <= 4.0]) >= 2  # 163 characters > 2 x 42
    assert all(len(x) <= 42 for c in cues for x in c.lines)
    assert all("-->" not in x and "\n" not in x and x for c in cues for x in c.lines)
    assert [c.lines for c in cues if c.start == 6.0] == [("a -> b c",)]
    assert "".join(x for c in cues if c.start >= 7.0 for x in c.lines) == "x" * 100
    times = [t for c in cues for t in (c.start, c.end)]
    assert times == sorted(times)


def test_srt_and_vtt_format():
    cues = st.subtitle_cues([(0.0, 1.5, "Hello there."), (3661.0, 3662.25, "One hour --> later.")])
    assert st.to_srt(cues) == ("1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
                               "2\n01:01:01,000 --> 01:01:02,250\nOne hour -> later.\n\n")
    assert st.to_vtt(cues) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
                               "01:01:01.000 --> 01:01:02.250\nOne hour -> later.\n\n")


def test_scan_runs_the_detector_only_for_input_longer_than_a_window(spaced, model, tmp_path):
    """A clip within one window was run through the VAD during its scan and the result thrown away (~70 % of
    checking a short upload in the server, of every short file in the CLI). The scan now starts the detector only
    once the input is longer than the window; a long file's regions are still those of the whole array."""
    from nemo_lite.longform import ChunkOptions, LongAudio, scan

    path = tmp_path / "spaced.flac"
    sf.write(path, spaced.audio, SR, subtype="PCM_24")
    decoded = sf.read(path, dtype="float32")[0]
    seconds = len(decoded) / SR
    short = vad.VoiceDetector(vad.VadOptions(), model)
    x = scan(FileAudio.of(str(path)), ChunkOptions(max_chunk_seconds=seconds + 1), short)
    assert isinstance(x, np.ndarray) and short.total == 0  # fits one window: no VAD work
    long = vad.VoiceDetector(vad.VadOptions(), model)
    x = scan(FileAudio.of(str(path)), ChunkOptions(max_chunk_seconds=seconds / 3), long)
    assert isinstance(x, LongAudio) and long.total == len(decoded)
    assert long.regions == vad.speech_regions(decoded, model=model)
