"""Tier 1: the transcribe/chat API on the tiny model — input kinds, batching, edge cases and bad-input policy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import nemo_lite
from nemo_lite.audio import MIN_SAMPLES, SAMPLE_RATE, AudioError

EXAMPLE = Path(nemo_lite.__file__).parent / "assets" / "example.wav"
TOKENS = 6


def noise(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32)


@pytest.fixture
def spy_generate(tiny_model, monkeypatch):
    """Record the audio frames of every decoding batch (transcription embeds its windows, then decodes them with
    ``generate_from_embeddings``; the model is shared: monkeypatch restores it)."""
    calls: list[list[int]] = []
    original = tiny_model.generate_from_embeddings

    def spy(audio_embeds, *args, **kwargs):
        calls.append([int(e.shape[0]) for e in audio_embeds])
        return original(audio_embeds, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "generate_from_embeddings", spy)
    return calls


def test_shipped_example_is_16k_mono_speech():
    info = sf.info(str(EXAMPLE))
    assert (info.samplerate, info.channels) == (16000, 1)
    assert 1.0 < info.duration < 10.0 and EXAMPLE.stat().st_size < 200_000


def test_wav_and_equivalent_arrays_give_identical_ids(tiny_model):
    as_float, rate = sf.read(str(EXAMPLE), dtype="float32")
    as_int16, _ = sf.read(str(EXAMPLE), dtype="int16")
    assert rate == SAMPLE_RATE
    ids = tiny_model.generate(audios=[str(EXAMPLE)], max_new_tokens=TOKENS)
    assert tiny_model.generate(audios=[as_float], max_new_tokens=TOKENS) == ids
    assert tiny_model.generate(audios=[as_int16], max_new_tokens=TOKENS) == ids
    text = tiny_model.transcribe(EXAMPLE, max_new_tokens=TOKENS)
    assert isinstance(text, str) and text == tiny_model.decode(ids[0])
    assert tiny_model.transcribe(as_float, max_new_tokens=TOKENS) == text


def test_every_input_kind_in_one_list(tiny_model):
    x, _ = sf.read(str(EXAMPLE), dtype="float32")
    with open(EXAMPLE, "rb") as f:
        items = [str(EXAMPLE), EXAMPLE, EXAMPLE.read_bytes(), f, io.BytesIO(EXAMPLE.read_bytes()), x,
                 torch.from_numpy(x), np.stack([x, x], axis=1)]
        out = tiny_model.transcribe(items, max_new_tokens=TOKENS, batch_size=3)
    assert isinstance(out, list) and len(out) == len(items)
    assert len(set(out)) == 1


def test_batch_equals_one_by_one_in_input_order(tiny_model, spy_generate):
    clips = [noise(1.0, 0), str(EXAMPLE), noise(14.0, 1), noise(0.3, 2), noise(2.5, 3), noise(6.0, 4)]
    single = [tiny_model.transcribe(c, max_new_tokens=TOKENS) for c in clips]
    spy_generate.clear()
    batched = tiny_model.transcribe(clips, batch_size=4, max_new_tokens=TOKENS)
    assert batched == single
    assert [len(c) for c in spy_generate] == [4, 2]  # sorted by duration into batches of 4
    flat = [n for call in spy_generate for n in call]
    assert flat == sorted(flat, reverse=True)


def test_default_budget_is_per_clip(tiny_model, monkeypatch):
    """Default budgets grow with duration; a batched row is cut to its own, so it matches a lone run. The rate
    is scaled down (1 token/s, floor 2) to keep the test fast; the tiny random model never emits <|im_end|>."""
    from nemo_lite import transcription

    monkeypatch.setattr(transcription, "TOKENS_PER_SECOND", 1)
    monkeypatch.setattr(transcription, "TOKEN_MARGIN", 0)
    monkeypatch.setattr(transcription, "MIN_TOKENS", 2)
    clips = [noise(1.0, 0), noise(9.0, 1), noise(4.0, 2)]
    single = [tiny_model.generate(audios=[c], max_new_tokens=n)[0] for c, n in zip(clips, (2, 9, 4), strict=True)]
    assert [len(ids) for ids in single] == [2, 9, 4]
    assert tiny_model.transcribe(clips, batch_size=3) == [tiny_model.decode(ids) for ids in single]


def test_resampled_input_batches_like_single(tiny_model):
    x8k = noise(3.0, 5)[: 3 * 8000]
    single = tiny_model.transcribe(x8k, sample_rate=8000, max_new_tokens=TOKENS)
    assert tiny_model.transcribe([x8k, x8k[:8000]], sample_rate=8000, max_new_tokens=TOKENS)[0] == single


@pytest.mark.parametrize("n", [1, 100, 159, 160, MIN_SAMPLES - 1, MIN_SAMPLES, 4000, 8000])
def test_very_short_clips(tiny_model, n):
    """Clips under 20 ms are zero-padded to 20 ms (2 mel frames): same text as padding them by hand."""
    x = noise(1.0, 6)[:n]
    out = tiny_model.transcribe(x, max_new_tokens=TOKENS, timestamps=True, segmentation="fixed")
    assert out.duration == pytest.approx(n / SAMPLE_RATE)
    padded = np.concatenate([x, np.zeros(max(0, MIN_SAMPLES - n), np.float32)])
    assert out.text == tiny_model.transcribe(padded, max_new_tokens=TOKENS)


@pytest.mark.parametrize("seconds", [0.001, 0.2, 3.0])
def test_digital_silence(tiny_model, seconds):
    """Digital silence is not special-cased: it runs through the model like any clip (text = its greedy ids)."""
    silence = np.zeros(int(seconds * SAMPLE_RATE), np.float32)
    out = tiny_model.transcribe(silence, max_new_tokens=TOKENS)
    assert out == tiny_model.decode(tiny_model.generate(audios=[silence], max_new_tokens=TOKENS)[0])


def test_bad_inputs_raise_before_any_work_naming_all(tiny_model, tmp_path, spy_generate):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.wav").write_text("not audio")
    items = [str(EXAMPLE), str(tmp_path / "missing.wav"), str(tmp_path / "empty.wav"), noise(1.0, 7),
             str(tmp_path / "text.wav"), np.array([np.nan], np.float32), np.zeros((2, 2, 2), np.float32)]
    with pytest.raises(AudioError) as info:
        tiny_model.transcribe(items, max_new_tokens=TOKENS)
    msg = str(info.value)
    for name in ("missing.wav", "empty.wav", "text.wav", "NaN", "3-D"):
        assert name in msg
    assert [i for i, _ in info.value.failures] == [1, 2, 4, 5, 6]
    assert spy_generate == []


def test_single_bad_input_raises_its_own_error(tiny_model, tmp_path):
    with pytest.raises(AudioError, match="nothing.flac: file not found"):
        tiny_model.transcribe(str(tmp_path / "nothing.flac"))


def test_skip_returns_none_for_bad_and_transcribes_the_rest(tiny_model, tmp_path):
    good = [noise(1.2, 8), str(EXAMPLE)]
    items = [good[0], str(tmp_path / "missing.wav"), good[1], np.zeros(0, np.float32)]
    out = tiny_model.transcribe(items, on_error="skip", max_new_tokens=TOKENS)
    assert out[1] is None and out[3] is None
    assert [out[0], out[2]] == [tiny_model.transcribe(g, max_new_tokens=TOKENS) for g in good]
    stamped = tiny_model.transcribe(items, on_error="skip", max_new_tokens=TOKENS, timestamps=True,
                                    segmentation="fixed")
    assert stamped[1] is None and stamped[0].text == out[0]
    assert tiny_model.transcribe(str(tmp_path / "missing.wav"), on_error="skip") is None


def test_bad_options(tiny_model):
    with pytest.raises(ValueError, match="on_error"):
        tiny_model.transcribe(noise(0.5, 0), on_error="ignore")
    with pytest.raises(ValueError, match="batch_size"):
        tiny_model.transcribe(noise(0.5, 0), batch_size=0)


def test_chat_text_only(tiny_model, monkeypatch):
    calls = []
    original = tiny_model.generate
    monkeypatch.setattr(tiny_model, "generate", lambda **kw: calls.append(kw.get("audios")) or original(**kw))
    answer = tiny_model.chat("Summarize: the cat sat on the mat.", max_new_tokens=TOKENS)
    assert calls == [None]  # no audio: LLM mode
    from nemo_lite.llm import adapter_disabled
    from nemo_lite.prompts import encode_dialog

    ids = encode_dialog(tiny_model.tokenizer, [{"role": "user", "content": "Summarize: the cat sat on the mat."}])
    with torch.inference_mode(), adapter_disabled(tiny_model.llm):  # the plain LLM, fed ids the HF way
        out = tiny_model.llm.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False,
                                      eos_token_id=tiny_model.eos_id, pad_token_id=tiny_model.pad_id)
    assert answer == tiny_model.decode(out[0, len(ids):].tolist())
    same = tiny_model.chat([{"role": "user", "content": "Summarize: the cat sat on the mat."}], max_new_tokens=TOKENS)
    assert same == answer


def test_chat_with_audio(tiny_model):
    tag = tiny_model.cfg.audio_locator_tag
    answer = tiny_model.chat(f"What is said in {tag}?", audios=str(EXAMPLE), max_new_tokens=TOKENS)
    prompt = [[{"role": "user", "content": f"What is said in {tag}?"}]]
    assert answer == tiny_model.decode(tiny_model.generate(prompt, audios=[str(EXAMPLE)], max_new_tokens=TOKENS)[0])
    with pytest.raises(ValueError, match="audio tag"):
        tiny_model.chat("No tag here", audios=[str(EXAMPLE)], max_new_tokens=TOKENS)
