"""Tier 1: shapes, lengths, masks, padding and batching of each stage on tiny configs (seconds)."""

from __future__ import annotations

import pytest
import torch

from nemo_lite import testing
from nemo_lite.config import ConfigError, EncoderConfig, PreprocessorConfig, SALMConfig
from nemo_lite.encoder import build_encoder, encode, encoder_lengths
from nemo_lite.injection import build_inputs_embeds, left_pad
from nemo_lite.preprocessor import MelPreprocessor
from nemo_lite.prompts import asr_prompt, encode_dialog

# From ../shared/REFERENCE.md (checked against NeMo 3.0.0): the Canary-Qwen ASR prompt ids.
NEMO_ASR_PROMPT_IDS = [151644, 872, 198, 3167, 3114, 279, 2701, 25, 220, 151669, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def pre() -> MelPreprocessor:
    module = MelPreprocessor(PreprocessorConfig())
    bufs = testing.mel_buffers()
    module.featurizer.window.copy_(bufs["window"])
    module.featurizer.fb.copy_(bufs["fb"])
    return module


@pytest.fixture(scope="module")
def enc():
    torch.manual_seed(0)
    module = build_encoder(EncoderConfig(feat_in=128, n_layers=2, d_model=32, n_heads=4,
                                         subsampling_conv_channels=8)).eval()
    for m in module.modules():  # give BatchNorm non-trivial statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return module


def test_full_config_parses():
    cfg = SALMConfig.from_nemo(testing.CANARY_QWEN_2_5B)
    assert cfg.encoder.n_layers == 32 and cfg.encoder.d_model == 1024 and not cfg.encoder.xscaling
    assert (cfg.preprocessor.win_length, cfg.preprocessor.hop_length, cfg.preprocessor.n_fft) == (400, 160, 512)
    assert cfg.lora.r == 128 and cfg.lora.lora_alpha == 256 and cfg.lora.target_modules == ("q_proj", "v_proj")


def test_encoder_config_rejects_non_power_of_two():
    raw = dict(testing.CANARY_QWEN_2_5B["perception"]["encoder"], subsampling_factor=6)
    with pytest.raises(ConfigError, match="subsampling_factor"):
        EncoderConfig.from_nemo(raw)


@pytest.mark.parametrize("n", [160, 1600, 16000, 16007, 48321])
def test_mel_lengths_and_padding(pre, n):
    audio = torch.randn(1, n) * 0.1
    mel, mel_len = pre(audio, torch.tensor([n]))
    assert int(mel_len[0]) == n // 160
    assert mel.shape == (1, 128, n // 160 + 1)
    assert torch.count_nonzero(mel[0, :, int(mel_len[0]):]) == 0  # frames at and past mel_len are zero
    if n >= 1600:
        valid = mel[0, :, : int(mel_len[0])]
        assert valid.mean(dim=1).abs().max() < 1e-4  # per-bin normalisation over valid frames
        assert (valid.std(dim=1) - 1).abs().max() < 1e-3


def test_mel_batch_padding_does_not_change_rows(pre):
    a, b = torch.randn(8000) * 0.1, torch.randn(20000) * 0.1
    batch = torch.zeros(2, 20000)
    batch[0, :8000], batch[1] = a, b
    mel, mel_len = pre(batch, torch.tensor([8000, 20000]))
    single, _ = pre(a[None], torch.tensor([8000]))
    torch.testing.assert_close(mel[0, :, : single.shape[2]], single[0], atol=1e-5, rtol=0)
    assert torch.count_nonzero(mel[0, :, 50:]) == 0


def test_recomputed_fp32_buffers_would_differ(pre):
    """Why we read window/fb from the checkpoint: bf16-rounded buffers give measurably different features."""
    audio = torch.randn(1, 16000) * 0.1
    ours, _ = pre(audio, torch.tensor([16000]))
    fp32 = MelPreprocessor(PreprocessorConfig())
    fp32.featurizer.window.copy_(torch.hann_window(400, periodic=False))
    from transformers.audio_utils import mel_filter_bank

    fb = mel_filter_bank(num_frequency_bins=257, num_mel_filters=128, min_frequency=0.0, max_frequency=8000,
                         sampling_rate=16000, norm="slaney", mel_scale="slaney")
    fp32.featurizer.fb.copy_(torch.from_numpy(fb.T.copy())[None])
    other, _ = fp32(audio, torch.tensor([16000]))
    assert (ours - other).abs().max() > 1e-3


@pytest.mark.parametrize("frames", [1, 2, 8, 9, 17, 100, 101])
def test_encoder_lengths_match_output(enc, frames):
    mel = torch.randn(1, 128, frames)
    with torch.inference_mode():
        out, lengths = encode(enc, mel, torch.tensor([frames]))
    assert out.shape[1] == int(lengths[0]) == int(encoder_lengths(torch.tensor([frames]), 8)[0])
    assert int(lengths[0]) == -(-frames // 8)  # ceil: one 80 ms frame per 8 mel frames started


def test_encoder_batch_padding_does_not_change_valid_frames(enc):
    a, b = torch.randn(1, 128, 37), torch.randn(1, 128, 90)
    batch = torch.zeros(2, 128, 90)
    batch[0, :, :37], batch[1] = a[0], b[0]
    with torch.inference_mode():
        out, lengths = encode(enc, batch, torch.tensor([37, 90]))
        single, n = encode(enc, a, torch.tensor([37]))
    torch.testing.assert_close(out[0, : int(n[0])], single[0], atol=1e-5, rtol=0)
    assert lengths.tolist() == [5, 12]


def test_injection_expands_placeholder_and_left_pads():
    emb = torch.nn.Embedding(10, 4)
    tag = 9
    rows = [torch.tensor([1, 2, tag, 3]), torch.tensor([4, tag, 5, tag])]
    audios = [torch.full((3, 4), 7.0), torch.full((2, 4), 8.0), torch.full((1, 4), 6.0)]
    with torch.no_grad():
        out, mask = build_inputs_embeds(rows, emb, tag, audios)
    # row 0: 3 text + 3 audio = 6 ; row 1: 2 text + 2 + 1 audio = 5 -> left-padded by 1
    assert out.shape == (2, 6, 4)
    assert mask.tolist() == [[True] * 6, [False] + [True] * 5]
    assert torch.equal(out[0, 2:5], audios[0]) and torch.equal(out[0, 5], emb.weight[3])
    assert torch.equal(out[1, 0], torch.zeros(4))
    assert torch.equal(out[1, 2:4], audios[1]) and torch.equal(out[1, 5], audios[2][0])
    with pytest.raises(ValueError, match="audio"):
        build_inputs_embeds(rows, emb, tag, audios[:2])


def test_left_pad_shapes():
    out, mask = left_pad([torch.ones(2, 3), torch.ones(5, 3)])
    assert out.shape == (2, 5, 3) and mask.sum(dim=1).tolist() == [2, 5]


def test_asr_prompt_ids_match_nemo(llm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_dir)
    tok.add_special_tokens({"additional_special_tokens": ["<|audioplaceholder|>"]})
    assert encode_dialog(tok, asr_prompt("<|audioplaceholder|>")) == NEMO_ASR_PROMPT_IDS


def test_prompt_rejects_unknown_role(llm_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(llm_dir)
    with pytest.raises(ValueError, match="system"):
        encode_dialog(tok, [{"role": "system", "content": "x"}])


def test_generate_batch_equals_single(tiny_model):
    audios = [torch.randn(n).numpy() * 0.1 for n in (4000, 17000, 9000)]
    single = [tiny_model.generate(audios=[a], max_new_tokens=6)[0] for a in audios]
    assert tiny_model.generate(audios=audios, max_new_tokens=6, batch_size=2) == single
    assert all(len(r) == 6 or r[-1] == tiny_model.eos_id for r in single)


def test_generate_rejects_tag_count_mismatch(tiny_model):
    with pytest.raises(ValueError, match="audio tag"):
        tiny_model.generate(prompts=[[{"role": "user", "content": "no tag here"}]],
                            audios=[torch.zeros(1600).numpy()], max_new_tokens=2)


def test_embed_audio_bounded_encoder_batches_match(tiny_model):
    """Encoder micro-batching (memory bound for long-form batches) must not change the embeddings."""
    audios = [torch.randn(n).numpy() * 0.1 for n in (30000, 24000, 9000, 3000)]
    together = tiny_model.embed_audio(audios, max_samples=10**9)
    apart = tiny_model.embed_audio(audios, max_samples=1)  # one clip per encoder call
    assert [t.shape for t in together] == [t.shape for t in apart]
    for a, b in zip(together, apart, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
