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
def adapter(qwen2_vl_adapter):
    return qwen2_vl_adapter


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


# ---------------------------------------------------------------------- training as the seed did it
CLIP_TEXT = {"speech_short": "Hello world.", "speech_medium": "The quick brown fox jumps over the lazy dog.",
             "noise": "noise", "speech_long": "too long for a 6 s window"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    from pathlib import Path

    data = Path(__file__).resolve().parent / "data"
    root = tmp_path_factory.mktemp("manifest")
    lines = [json.dumps({"audio_filepath": str(data / f"{n}.wav"), "text": t}) for n, t in CLIP_TEXT.items()]
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


def _cfg(manifest, out, model_dir, **kw):
    from nemo_lite.training.config import TrainConfig

    base = {"architecture": "whisper_llm", "train_manifest": str(manifest), "output_dir": str(out),
            "model": str(model_dir), "lr": 1e-2, "max_steps": 2, "batch_size": 2, "lora_r": 4, "lora_alpha": 8,
            "lora_dropout": 0.0, "progress": False, "eval_manifest": str(manifest), "eval_every": 1}
    return TrainConfig(**{**base, **kw})


def test_seed_sample_formats(model):
    """Stage 1: the audio span alone + transcript + eos; stage 2: the chat prompt + " " + transcript + <|im_end|>,
    as the seed's collators tokenize them."""
    from nemo_lite.training.loss import answer_ids, sample_parts

    tok = model.tokenizer
    prompt, kw = sample_parts(model, 1, "seed")
    assert prompt == [model.audio_tag_id]
    assert answer_ids(tok, "Hello world.", **kw) == tok("Hello world." + tok.eos_token, add_special_tokens=False)[
        "input_ids"]
    prompt, kw = sample_parts(model, 2, "seed")
    assert prompt == model.prompt_ids(model.asr_prompt()).tolist()
    assert answer_ids(tok, "Hello world.", **kw) == tok(" Hello world.<|im_end|>", add_special_tokens=False)[
        "input_ids"]


def test_two_stages_train_only_what_the_seed_trained(adapter, manifest, tmp_path, capsys):
    """Stage 1 changes only the projector; stage 2 (from stage 1's saved model) only the projector and LoRA. The
    Whisper encoder and the vision tower stay bit-identical to the published checkpoint. The clip over the 6 s
    window is skipped with a count; validation picks the best step."""
    from nemo_lite.training.loop import train

    published = {k: v.clone() for k, v in wa.WhisperLLM.from_pretrained(adapter).state_dict().items()}
    r1 = train(_cfg(manifest, tmp_path / "s1", adapter, stage=1, threads=1))
    assert "1 training clip(s) skipped" in capsys.readouterr().err
    log = [json.loads(line) for line in (tmp_path / "s1" / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "eval_loss" in e] == [1, 2]
    s1 = wa.WhisperLLM.from_pretrained(r1.model_dir)
    changed = {k for k, v in s1.state_dict().items() if not torch.equal(v, published[k])}
    assert changed == {"projector.weight"}
    r2 = train(_cfg(manifest, tmp_path / "s2", r1.model_dir, stage=2, threads=1))
    s2 = wa.WhisperLLM.from_pretrained(r2.model_dir)
    ours = {k.replace(".base_layer.", ".").replace("base_model.model.", ""): v for k, v in s2.state_dict().items()}
    changed = {k for k, v in ours.items() if "lora_" not in k and not torch.equal(v, published[k])}
    assert changed == {"projector.weight"}
    assert any(".language_model.layers.0.mlp.down_proj.lora_B" in k for k in ours)
    assert not any("visual" in k and "lora_" in k for k in ours)


def test_qlora_refused_before_any_work(manifest, tmp_path, monkeypatch):
    """Where bitsandbytes has no 4-bit kernels for the device, training stops with the reason before loading."""
    bnb = pytest.importorskip("bitsandbytes")
    from nemo_lite.training.loop import train

    monkeypatch.setattr(bnb, "__version__", "0.45.0")
    cfg = _cfg(manifest, tmp_path / "q", tmp_path / "no-such-model", stage=2, quantize_base="nf4", device="cpu")
    with pytest.raises(RuntimeError, match="no CPU 4-bit support"):
        train(cfg)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA at the seed's scale runs on CUDA; no GPU here")
def test_qlora_stage2_on_gpu(adapter, manifest, tmp_path):
    pytest.importorskip("bitsandbytes")
    from nemo_lite.training.loop import train

    result = train(_cfg(manifest, tmp_path / "q", adapter, stage=2, quantize_base="nf4", device="cuda"))
    assert result.steps == 2 and all(np.isfinite(result.losses))


def test_merge_export_reloads_with_the_same_ids(adapter, tmp_path, clips):
    """A stage-2 model (random LoRA B so the merge matters) exported by ``nemo-lite export --merge-lora``: the seed's
    4.45 key names in shards, reloadable by nemo_lite (and the stock class) with the same greedy ids."""
    from nemo_lite.cli import main

    m = wa.WhisperLLM.from_pretrained(adapter)
    m.add_lora(r=4, lora_alpha=8, lora_dropout=0.0)
    with torch.no_grad():
        for name, p in m.llm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    m.eval()
    ids = m.generate(prompts=[BOTH], audios=[clips["speech_short"]], images=[image(2)], max_new_tokens=5)
    m.save_pretrained(tmp_path / "trained")
    assert main(["export", str(tmp_path / "trained"), str(tmp_path / "pub"), "--merge-lora",
                 "--max-shard-gb", "0.05"]) == 0
    pub = tmp_path / "pub"
    keys = json.loads((pub / "model.safetensors.index.json").read_text())["weight_map"]
    assert len(set(keys.values())) > 1 and "audio_projector.weight" in keys and "visual.merger.mlp.0.weight" in keys
    assert "model.layers.0.self_attn.q_proj.weight" in keys and not any("lora" in k for k in keys)
    back = nemo_lite.from_pretrained(pub)
    assert back.generate(prompts=[BOTH], audios=[clips["speech_short"]], images=[image(2)], max_new_tokens=5) == ids


def test_qlora_stage2_on_cpu(adapter, manifest, tmp_path):
    """QLoRA's real path where this machine can run it (bitsandbytes 0.50 has CPU NF4 kernels): the decoder layers'
    linears held in NF4 while LoRA and the projector train; the saved model keeps only trainable tensors changed
    and loads back in full precision. (The GPU run is test_qlora_stage2_on_gpu.)"""
    bnb = pytest.importorskip("bitsandbytes")
    from nemo_lite.training.loop import train
    from nemo_lite.training.qlora import nf4_problem

    if nf4_problem(torch.device("cpu")):
        pytest.skip(f"bitsandbytes {bnb.__version__} has no CPU NF4")
    published = {k: v.clone() for k, v in wa.WhisperLLM.from_pretrained(adapter).state_dict().items()}
    result = train(_cfg(manifest, tmp_path / "q", adapter, stage=2, quantize_base="nf4", device="cpu", threads=1))
    assert result.steps == 2 and all(np.isfinite(result.losses))
    trained = wa.WhisperLLM.from_pretrained(result.model_dir)
    ours = {k.replace(".base_layer.", ".").replace("base_model.model.", ""): v for k, v in trained.state_dict().items()}
    lora = {k for k in ours if "lora_" in k}
    assert lora and any(not torch.equal(ours[k], torch.zeros_like(ours[k])) for k in lora if "lora_B" in k)
    changed = {k for k, v in ours.items() if "lora_" not in k and not torch.equal(v, published[k])}
    assert changed == {"projector.weight"}  # the NF4 base is not written back rounded: the saved base is the original
