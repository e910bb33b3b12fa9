"""WhisperLLM (Whisper encoder + projector + Qwen LLM): prompt layout, audio dependence, strict Whisper loading,
save/load round trip, the original project's merged checkpoint, and long-audio windows. Tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_lite import testing
from nemo_lite import whisper_adapter as wa
from nemo_lite.injection import build_inputs_embeds
from nemo_lite.llm import input_embeddings
from nemo_lite.weights import CheckpointError

FRAMES = 1500  # 30 s of audio = 3000 mel frames = 1500 encoder frames


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("whisper_llm")
    return testing.write_random_whisper(root / "whisper"), testing.write_random_llm(root / "llm", testing.TINY_QWEN3)


@pytest.fixture(scope="module")
def model(parts):
    return wa.WhisperLLM.from_components(*parts, seed=0)


@pytest.fixture(scope="module")
def small_parts(tmp_path_factory, parts):
    """The same LLM with a 6 s-window Whisper (300 frames): for the tests that decode, to keep them fast."""
    root = tmp_path_factory.mktemp("whisper_small")
    whisper = testing.write_random_whisper(root / "whisper", {**testing.TINY_WHISPER, "max_source_positions": 300})
    return whisper, parts[1]


def test_prompt_layout_matches_the_original(model, clips):
    """One <|audio_pad|> in the ids becomes the 1500 frames: the same vectors as the original's 1500 pads
    replaced one-to-one (``inputs_embeds[ids == pad] = frames``)."""
    tok = model.tokenizer
    ids = model.prompt_ids(model.asr_prompt()).tolist()
    text = tok.decode(ids)
    assert text == ("<|im_start|>user\n<|audio_bos|><|audio_pad|><|audio_eos|>\nTranscribe this audio.<|im_end|>\n"
                    "<|im_start|>assistant\n")
    pad = model.audio_tag_id
    assert ids.count(pad) == 1
    with torch.no_grad():
        frames = model.embed_audio([clips["speech_short"]])
        ours, mask = build_inputs_embeds([torch.tensor(ids)], input_embeddings(model.llm), pad, frames)
        k = ids.index(pad)
        original_ids = torch.tensor(ids[:k] + [pad] * FRAMES + ids[k + 1:])
        original = input_embeddings(model.llm)(original_ids)  # (L, H)
        original[original_ids == pad] = frames[0]
    assert frames[0].shape == (FRAMES, testing.TINY_QWEN3["hidden_size"])
    assert ours.shape == (1, len(ids) - 1 + FRAMES, testing.TINY_QWEN3["hidden_size"]) and bool(mask.all())
    assert torch.equal(ours[0], original)


def test_audio_tokens_fit_spare_embedding_rows(model):
    """Qwen3's tokenizer has 151669 tokens and 151936 embedding rows: only ``<|audio_pad|>`` is added (as the seed
    adds it), nothing resized; ``<|audio_bos|>``/``<|audio_eos|>`` stay text pieces, as in the seed's tokenizer.
    Regression: all three used to be added as special tokens, so the prompt ids were not the seed's."""
    vocab = model.tokenizer.get_vocab()
    assert vocab[wa.AUDIO_PAD] == 151669 and wa.AUDIO_BOS not in vocab and wa.AUDIO_EOS not in vocab
    assert len(model.tokenizer) == 151670
    assert input_embeddings(model.llm).weight.shape[0] == testing.TINY_QWEN3["vocab_size"]


def test_output_depends_on_audio(small_parts, clips):
    m = wa.WhisperLLM.from_components(*small_parts, seed=0)
    a, b = clips["speech_short"], clips["speech_medium"]
    ids = m.generate(audios=[a, b], max_new_tokens=6)
    assert ids[0] != ids[1], "different audio must give different ids"
    with torch.no_grad():
        m.projector.weight.zero_()
    zeroed = m.generate(audios=[a, b, clips["noise"]], max_new_tokens=6)
    assert zeroed[0] == zeroed[1] == zeroed[2], "with a zero projector the audio cannot matter"


def test_batched_equals_single(small_parts, clips):
    m = wa.WhisperLLM.from_components(*small_parts, seed=0)
    a, b = clips["speech_short"], clips["speech_medium"]
    assert m.generate(audios=[a, b], max_new_tokens=5) == m.generate(audios=[a], max_new_tokens=5) + m.generate(
        audios=[b], max_new_tokens=5)


def test_full_whisper_checkpoint_loads_encoder_strictly(parts, tmp_path):
    """A full Whisper checkpoint stores the encoder as ``model.encoder.*``: mapped and loaded exactly; the decoder
    is skipped. A missing encoder tensor is an error, not a silently random layer."""
    whisper, _ = parts
    full = load_file(str(whisper / "model.safetensors"))
    assert any(k.startswith("model.decoder.") for k in full)
    enc = wa.load_whisper_encoder(whisper, torch.float32, torch.device("cpu"))
    for k, v in enc.state_dict().items():
        assert torch.equal(v, full["model.encoder." + k]), k
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text((whisper / "config.json").read_text())
    save_file({k: v for k, v in full.items() if k != "model.encoder.layers.1.fc2.weight"},
              str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing"):
        wa.load_whisper_encoder(broken, torch.float32, torch.device("cpu"))


def test_save_load_roundtrip_with_lora(small_parts, clips, tmp_path):
    m = wa.WhisperLLM.from_components(*small_parts, seed=1)
    m.add_lora(r=4, lora_alpha=8, lora_dropout=0.1)
    with torch.no_grad():
        for name, p in m.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)  # B = 0 at init would hide a lost adapter
    m.eval()
    ids = m.generate(audios=[clips["speech_short"], clips["noise"]], max_new_tokens=6)
    m.save_pretrained(tmp_path / "saved")
    back = wa.WhisperLLM.from_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == [
        "adapter", "llm", "projector.safetensors", "whisper", "whisper_llm.json"]
    for k, v in m.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    assert back.generate(audios=[clips["speech_short"], clips["noise"]], max_new_tokens=6) == ids


def _tiny_qwen2_vl(path, seed: int = 0):
    """A tiny random Qwen2-VL saved by transformers (legacy key names, as the original project's checkpoints)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {k: testing.TINY_QWEN3[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                               "num_attention_heads", "num_key_value_heads")}
    cfg = Qwen2VLConfig(
        text_config={**text, "tie_word_embeddings": False,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e6}},
        vision_config={"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2})
    torch.manual_seed(seed)
    vl = Qwen2VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # non-degenerate weights: HF's 0.02 init makes every layer nearly the identity
        for name, p in vl.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
    vl.save_pretrained(str(path))
    return vl


def test_original_merged_checkpoint(small_parts, tmp_path, clips):
    """Qwen2-VL keys + ``audio_encoder.*`` + ``audio_projector.weight`` map onto WhisperLLM exactly, the vision tower
    included, and the backbone is the stock Qwen2-VL (same logits as the model that wrote the files)."""
    whisper, _ = small_parts
    merged = tmp_path / "merged"
    vl = _tiny_qwen2_vl(merged)
    enc = wa.load_whisper_encoder(whisper, torch.float32, torch.device("cpu"))
    state = load_file(str(merged / "model.safetensors"))
    assert any(k.startswith("visual.") for k in state) and "model.embed_tokens.weight" in state
    state.update({"audio_encoder." + k: v.contiguous() for k, v in enc.state_dict().items()})
    state["audio_projector.weight"] = torch.randn(testing.TINY_QWEN3["hidden_size"], enc.config.d_model) * 0.02
    save_file(state, str(merged / "model.safetensors"))
    for name in testing.TOKENIZER_FILES:
        (merged / name).write_bytes((testing.tokenizer_dir() / name).read_bytes())
    raw = json.loads((merged / "config.json").read_text())
    assert raw["model_type"] == "qwen2_vl"

    m = wa.WhisperLLM.from_pretrained(merged)  # detected as merged: no whisper_llm.json
    ours = m.state_dict()
    assert torch.equal(ours["projector.weight"], state["audio_projector.weight"])
    assert torch.equal(ours["encoder.layers.0.fc1.weight"], state["audio_encoder.layers.0.fc1.weight"])
    assert torch.equal(ours["llm.model.language_model.layers.1.self_attn.q_proj.bias"],
                       state["model.layers.1.self_attn.q_proj.bias"])
    assert torch.equal(ours["llm.model.visual.merger.mlp.0.weight"], state["visual.merger.mlp.0.weight"])
    assert torch.equal(ours["llm.lm_head.weight"], state["lm_head.weight"])
    assert m.encoder.config.encoder_attention_heads == enc.config.d_model // 64

    ids = torch.tensor([[151644, 872, 198, 3167, 3114, 419, 7699, 13, 151645, 198]])
    with torch.no_grad():
        ref = vl(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        got = m.llm(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert torch.allclose(ref, got, atol=1e-5), (ref - got).abs().max()
    assert len(m.generate(audios=[clips["speech_short"]], max_new_tokens=3)[0]) >= 1


def test_long_audio_is_cut_into_30s_windows(model, clips, monkeypatch):
    """65 s of audio, fixed windows -> three windows of at most 30 s, decoded and joined in order. Also guards that
    WhisperLLM has the ``generate_from_embeddings`` that transcription calls (its absence broke ``nemo-lite eval``)."""
    speech = clips["speech_long"]
    long = np.concatenate([np.tile(speech, 65 * 16000 // len(speech) + 1)])[: 65 * 16000]
    seen: list[int] = []
    embed = model.embed_audio

    def spy_embed(audios):
        seen.extend(len(a) for a in audios)
        return embed(audios)

    def fake_decode(audio_embeds, max_new_tokens=128):
        return [[model.tokenizer.convert_tokens_to_ids("a")] for _ in audio_embeds]

    assert callable(type(model).generate_from_embeddings)
    monkeypatch.setattr(model, "embed_audio", spy_embed)
    monkeypatch.setattr(model, "generate_from_embeddings", fake_decode)
    text = model.transcribe(long, segmentation="fixed")
    assert len(seen) == 3 and max(seen) <= model.window_samples and sum(seen) == len(long)
    assert text == "a a a"


def test_generate_refuses_audio_over_one_window(model):
    with pytest.raises(ValueError, match="exceeds the 30 s window"):
        model.generate(audios=[np.zeros(31 * 16000, dtype=np.float32)], max_new_tokens=1)
