"""The Qwen2-VL audio adapter as its authors built it, on stock transformers: the seed's prompt ids, its published
checkpoint layout (4.45 key names, shards, vision tower kept), audio-only / image-only / image + audio generation
equal to a reference greedy loop over transformers' own Qwen2VLForConditionalGeneration, and the refusals.
Tiny random models (a 2-layer Qwen2-VL with a one-block vision tower; a Whisper with 6 s windows)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

import nemo_lite
from nemo_lite import testing, vision
from nemo_lite import whisper_adapter as wa
from nemo_lite.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

SEED_FRAMES = 1500  # the seed pads every clip to 30 s: 1500 x <|audio_pad|>
WHISPER = {**testing.TINY_WHISPER, "max_source_positions": 300}  # 6 s windows: fast decoding
ASK = [{"role": "user", "content": f"{vision.IMAGE_TAG}What is in the picture?"}]
BOTH = [{"role": "user",
         "content": f"{vision.IMAGE_TAG}{wa.AUDIO_BOS}{wa.AUDIO_PAD}{wa.AUDIO_EOS}\nTranscribe this audio."}]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapter")
    whisper = testing.write_random_whisper(root / "whisper", WHISPER)
    return testing.write_random_adapter(root / "published", whisper)


@pytest.fixture(scope="module")
def model(adapter):
    return nemo_lite.from_pretrained(adapter)


@pytest.fixture(scope="module")
def stock(adapter):
    """transformers' own class loading the same files (4.45 names; the audio tensors are not its own)."""
    from transformers import Qwen2VLForConditionalGeneration

    return Qwen2VLForConditionalGeneration.from_pretrained(str(adapter), dtype=torch.float32).eval()


def image(seed: int, h: int = 60, w: int = 80) -> np.ndarray:
    return (np.random.RandomState(seed).rand(h, w, 3) * 255).astype(np.uint8)


def test_seed_prompt_ids(model, adapter):
    """The seed tokenizes ``<|im_start|>user\\n<|audio_bos|>`` + 1500 pads + ``<|audio_eos|>\\nTranscribe this
    audio.<|im_end|>\\n<|im_start|>assistant\\n`` in one call; bos/eos are text pieces, the pad is 151657. Our ids,
    with the one pad the injection expands repeated 1500 times, are exactly those."""
    tok = model.tokenizer
    assert wa.AUDIO_BOS not in tok.get_vocab() and wa.AUDIO_EOS not in tok.get_vocab()
    assert len(tok) == testing.SEED_AUDIO_PAD_ID + 1 and model.audio_tag_id == testing.SEED_AUDIO_PAD_ID
    seed_text = (f"<|im_start|>user\n{wa.AUDIO_BOS}{wa.AUDIO_PAD * SEED_FRAMES}{wa.AUDIO_EOS}\nTranscribe this "
                 "audio.<|im_end|>\n<|im_start|>assistant\n")
    seed_ids = tok(seed_text, add_special_tokens=False)["input_ids"]
    ours = model.prompt_ids(model.asr_prompt())
    assert vision.expand(ours, model.audio_tag_id, [SEED_FRAMES]).tolist() == seed_ids
    k = seed_ids.index(testing.SEED_AUDIO_PAD_ID)
    assert tok.convert_ids_to_tokens(seed_ids[:k]) == ["<|im_start|>", "user", "Ċ", "<", "|", "audio", "_b", "os",
                                                        "|", ">"]


def test_published_layout_loads_strictly_with_vision(model, adapter, stock):
    """Every tensor of the sharded 4.45-named checkpoint lands in the stock class, the vision tower included."""
    from transformers import Qwen2VLForConditionalGeneration

    assert type(model).__name__ == "WhisperLLM" and type(model.llm) is Qwen2VLForConditionalGeneration
    assert model.has_vision and not any(p.requires_grad for p in model.parameters())
    ours = model.state_dict()
    index = json.loads((adapter / "model.safetensors.index.json").read_text())["weight_map"]
    assert any(k.startswith("visual.") for k in index) and "model.embed_tokens.weight" in index
    for key, shard in index.items():
        with safe_open(str(adapter / shard), framework="pt") as f:
            assert torch.equal(ours[wa.weights.merged_key(key)], f.get_tensor(key)), key
    for k, v in stock.state_dict().items():
        assert torch.equal(v, ours["llm." + k]), k


def reference_greedy(stock, model, prompt, audios, images, steps: int) -> list[int]:
    """Greedy ids from full forwards of the stock model (no cache, no generate): ids with the audio pad expanded
    to its frames, their embeddings with the frames written at the pads (the seed's ``inputs_embeds[ids == pad]
    = frames``), the images through the model's own processor, vision tower and get_rope_index."""
    frames = model.embed_audio(audios) if audios else []
    ids = model.prompt_ids(prompt)
    extra = {}
    if images:
        feats = model.image_processor(images=[vision.load_image(i) for i in images], return_tensors="pt")
        extra = {"pixel_values": feats["pixel_values"], "image_grid_thw": feats["image_grid_thw"]}
        merge = stock.config.vision_config.spatial_merge_size
        ids = vision.expand(ids, stock.config.image_token_id, (feats["image_grid_thw"].prod(-1) // merge**2).tolist())
    ids = vision.expand(ids, model.audio_tag_id, [len(f) for f in frames])
    embed = stock.get_input_embeddings()
    out: list[int] = []
    with torch.inference_mode():
        emb = embed(ids.masked_fill(ids == model.audio_tag_id, 0))  # (L, H)
        if frames:
            emb[ids == model.audio_tag_id] = torch.cat(frames)
        for _ in range(steps):
            stock.model.rope_deltas = None
            logits = stock(input_ids=ids[None], inputs_embeds=emb[None], attention_mask=torch.ones_like(ids)[None],
                           mm_token_type_ids=(ids == stock.config.image_token_id).int()[None], use_cache=False,
                           **extra).logits  # (1, L, V)
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            if nxt == model.eos_id:
                break
            ids = torch.cat([ids, torch.tensor([nxt])])
            emb = torch.cat([emb, embed(torch.tensor([nxt]))])
    return out


def test_generation_equals_stock_reference(model, stock, clips):
    """Audio only, image only, image + audio, and a mixed batch (left padding, M-RoPE deltas per row)."""
    speech, pic, other = clips["speech_short"], image(0), image(1, 90, 50)
    asr = reference_greedy(stock, model, model.asr_prompt(), [speech], [], 6)
    assert model.generate(audios=[speech], max_new_tokens=6) == [asr]
    seen = reference_greedy(stock, model, ASK, [], [pic], 6)
    assert model.generate(prompts=[ASK], images=[pic], max_new_tokens=6) == [seen]
    both = reference_greedy(stock, model, BOTH, [speech], [other], 6)
    assert model.generate(prompts=[BOTH], audios=[speech], images=[other], max_new_tokens=6) == [both]
    batch = model.generate(prompts=[BOTH, ASK, model.asr_prompt()], audios=[speech, speech], images=[other, pic],
                           max_new_tokens=6)
    assert batch == [both, seen, asr]
    assert model.generate(prompts=[ASK], images=[other], max_new_tokens=6) != [seen], "the image must matter"
    assert model.chat(ASK, images=pic, max_new_tokens=6) == model.decode(seen)


def test_inference_carries_no_autograd(model, clips):
    frames = model.embed_audio([clips["speech_short"]])
    assert frames[0].grad_fn is None and not frames[0].requires_grad


def test_text_only_llm_refuses_images(tmp_path, clips):
    whisper = testing.write_random_whisper(tmp_path / "whisper", WHISPER)
    llm = testing.write_random_llm(tmp_path / "llm", testing.TINY_QWEN3)
    m = wa.WhisperLLM.from_components(whisper, llm, seed=0)
    assert not m.has_vision
    with pytest.raises(ValueError, match="no vision tower"):
        m.generate(prompts=[ASK], images=[image(0)], max_new_tokens=1)


def test_image_count_must_match_tags(model):
    with pytest.raises(ValueError, match="image tag"):
        model.generate(prompts=[ASK], images=[image(0), image(1)], max_new_tokens=1)


def test_merged_checkpoint_with_a_missing_vision_tensor_fails(adapter, tmp_path):
    """A vision weight absent from the files is an error, not a random layer."""
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    index = json.loads((broken / "model.safetensors.index.json").read_text())["weight_map"]
    shard = index["visual.merger.mlp.0.weight"]
    state = load_file(str(broken / shard))
    del state["visual.merger.mlp.0.weight"]
    save_file(state, str(broken / shard))
    with pytest.raises(CheckpointError, match="missing"):
        wa.WhisperLLM.from_pretrained(broken)
