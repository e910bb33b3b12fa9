"""Tier 1: transcription with speech segments (VAD) end to end on the tiny model — segments follow the composed
recordings' true speech, no text for silence/noise/tones, short clips keep NeMo's single pass, long files stay
memory-bounded and their segments come in time order, and progress covers silence too."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_lite.audio import SAMPLE_RATE
from nemo_lite.vad_fixtures import Sentences, conversation, tone, white_noise

SR = SAMPLE_RATE
DATA = Path(__file__).resolve().parent / "data" / "vad"
TOL = 0.3  # seconds: a true region's bounds vs its segment's
TOKENS = 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def sentences() -> Sentences:
    return Sentences.load(DATA)


def _covers(segments, start: float, end: float) -> bool:
    """A true speech region [start, end] s: inside one segment, or its bounds within TOL of segment bounds."""
    inside = any(s.start - TOL <= start and end <= s.end + TOL for s in segments)
    near_start = any(abs(s.start - start) <= TOL for s in segments)
    near_end = any(abs(s.end - end) <= TOL for s in segments)
    return inside or (near_start and near_end)


@pytest.mark.parametrize("as_file", [False, True])
def test_segments_follow_speech(tiny_model, sentences, tmp_path, as_file):
    """Timestamps on a recording of sentences apart by 0.6-4 s silences, noise bursts and tones: each true region
    is covered, no segment lies wholly inside a non-speech part, every segment fits the limit, and the silence
    between segments is not covered. A file (streamed, scanned once) and the array give the same segments."""
    rec = conversation(sentences, 45, seed=5, noise_every=2)
    src = rec.audio
    if as_file:
        src = str(tmp_path / "talk.flac")
        sf.write(src, rec.audio, SR)
    out = tiny_model.transcribe(src, timestamps=True, max_new_tokens=TOKENS)
    segs = out.segments
    assert segs and all(s.end - s.start <= 20.0 + 1e-6 for s in segs)
    assert all(a.end <= b.start for a, b in zip(segs, segs[1:], strict=False))  # in order, never overlapping
    for a, b in rec.speech:
        assert _covers(segs, a / SR, b / SR), (a / SR, b / SR, [(s.start, s.end) for s in segs])
    for a, b, kind in rec.other:
        assert not any(a / SR <= s.start and s.end <= b / SR for s in segs), kind
    assert sum(s.end - s.start for s in segs) < 0.9 * out.duration  # silence is left out
    if as_file:
        again = tiny_model.transcribe(rec.audio, timestamps=True, max_new_tokens=TOKENS)
        assert [(s.start, s.end, s.text) for s in again.segments] == [(s.start, s.end, s.text) for s in segs]
    # Each segment's text is what the model says for that segment alone.
    first = segs[0]
    alone = tiny_model.transcribe(rec.audio[round(first.start * SR):round(first.end * SR)], max_new_tokens=TOKENS,
                                  segmentation="fixed")
    assert first.text == alone


@pytest.mark.parametrize("kind", ["silence", "noise", "tone"])
def test_no_speech_no_text(tiny_model, kind):
    """30 s of digital silence, white noise or a pure tone: empty text and no segments, with or without timestamps
    (no words invented for non-speech), and the model is never run."""
    audio = {"silence": np.zeros(30 * SR, np.float32),
             "noise": white_noise(30, -20, np.random.default_rng(0)),
             "tone": tone(30, 440.0, -12)}[kind]
    out = tiny_model.transcribe(audio, timestamps=True, max_new_tokens=TOKENS)
    assert out.text == "" and out.segments == [] and out.duration == pytest.approx(30.0)
    assert tiny_model.transcribe(audio, segmentation="vad", max_new_tokens=TOKENS) == ""
    assert out.to_srt() == "" and out.to_vtt() == "WEBVTT\n\n"


def test_short_clip_without_timestamps_keeps_the_single_pass(tiny_model, sentences, monkeypatch):
    """A clip within the window, no timestamps: one pass over the whole clip (NeMo's exact ids), no VAD run."""
    import nemo_lite.transcription as tr

    monkeypatch.setattr(tr, "detect", None)  # any VAD call would fail
    clip = sentences.audio[sentences.names[0]]
    text = tiny_model.transcribe(clip, max_new_tokens=TOKENS)
    assert text == tiny_model.decode(tiny_model.generate(audios=[clip], max_new_tokens=TOKENS)[0])


def test_progress_covers_silence(tiny_model, sentences):
    """The progress callback adds up to the whole duration (silence included), in several steps."""
    rec = conversation(sentences, 40, seed=2)
    seen: list[float] = []
    out = tiny_model.transcribe(rec.audio, timestamps=True, max_new_tokens=TOKENS, batch_size=2,
                                progress=seen.append)
    assert sum(seen) == pytest.approx(out.duration, abs=1e-3)
    assert len(seen) >= len(out.segments) and all(s >= 0 for s in seen)


def test_segmentation_option_is_checked(tiny_model):
    with pytest.raises(ValueError, match="segmentation"):
        tiny_model.transcribe(np.zeros(SR, np.float32), segmentation="energy")


LONG_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, soundfile as sf, torch
    from nemo_lite import CanaryQwen
    from nemo_lite.vad_fixtures import Sentences, conversation

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.set_num_threads(1)
    ckpt, data, path, minutes = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    block = conversation(Sentences.load(data), 120, seed=1).audio  # 2 min of speech and pauses, repeated
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(int(minutes * 60 / (len(block) / 16000)) + 1):
            f.write(block)
    model = CanaryQwen.from_pretrained(ckpt)
    model.transcribe(block[: 40 * 16000], timestamps=True, max_new_tokens=2)  # a 40 s clip
    clip = status("VmHWM")
    open("/proc/self/clear_refs", "w").write("5")
    out = model.transcribe(path, timestamps=True, max_new_tokens=2)
    starts = [s.start for s in out.segments]
    print(json.dumps({"clip": clip, "long": status("VmHWM"), "segments": len(starts),
                      "ordered": starts == sorted(starts), "duration": out.duration}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_long_file_memory_stays_at_a_clips(tiny_ckpt, tmp_path):
    """A 20-minute file transcribed with speech segments: peak RSS within 10 % of a 40 s clip's on the same model
    (the file is streamed: scanned once with the VAD, then read segment by segment), segments in time order."""
    args = [str(tiny_ckpt), str(DATA), str(tmp_path / "long.wav"), "20"]
    res = subprocess.run([sys.executable, "-c", LONG_SCRIPT, *args], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    fig = json.loads(res.stdout.strip().splitlines()[-1])
    assert fig["ordered"] and fig["segments"] > 20 and fig["duration"] >= 20 * 60
    assert fig["long"] <= 1.10 * fig["clip"], fig
