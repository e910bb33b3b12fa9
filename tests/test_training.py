"""Training: manifest + batching, labels and positions, what each stage trains (and never touches), checkpoints,
resume, data-parallel ranks, and the Canary-Qwen export. Tiny random models, a few steps each."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from safetensors import safe_open

from nemo_lite import testing
from nemo_lite import whisper_adapter as wa
from nemo_lite.llm import base_causal_lm, input_embeddings
from nemo_lite.training.config import TrainConfig, load_train_config
from nemo_lite.training.data import BucketBatchSampler, read_manifest
from nemo_lite.training.loop import configure_trainable, train
from nemo_lite.training.loss import IGNORE, SpeechLoss, answer_ids, build_batch

DATA = Path(__file__).resolve().parent / "data"
CLIPS = {"speech_short": "Hello world.", "speech_medium": "The quick brown fox jumps over the lazy dog.",
         "silence": "", "noise": "noise"}
# Whisper windows of 6 s (300 encoder frames) keep these tests fast; the 1500-frame layout is tested in
# test_whisper_adapter.py. Every clip above fits one window.
WHISPER = {**testing.TINY_WHISPER, "max_source_positions": 300}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.one_thread


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """Four clips copied beside a manifest with relative paths (one duration given, the others read)."""
    root = tmp_path_factory.mktemp("data")
    lines = []
    for name, text in CLIPS.items():
        shutil.copy(DATA / f"{name}.wav", root / f"{name}.wav")
        entry = {"audio_filepath": f"{name}.wav", "text": text}
        if name == "noise":
            entry["duration"] = 3.0
        lines.append(json.dumps(entry))
    (root / "train.jsonl").write_text("\n".join(lines) + "\n")
    return root / "train.jsonl"


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbones")
    return (testing.write_random_whisper(root / "whisper", WHISPER),
            testing.write_random_llm(root / "llm", testing.TINY_QWEN3))


def whisper_cfg(manifest, out, parts, **kw) -> TrainConfig:
    base = {"architecture": "whisper_llm", "train_manifest": str(manifest), "output_dir": str(out),
            "whisper": str(parts[0]), "llm": str(parts[1]), "lr": 1e-2, "max_steps": 2, "batch_size": 2,
            "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "progress": False}
    return TrainConfig(**{**base, **kw})


def canary_cfg(manifest, out, ckpt, **kw) -> TrainConfig:
    base = {"architecture": "canary_qwen", "train_manifest": str(manifest), "output_dir": str(out),
            "model": str(ckpt), "lr": 1e-2, "max_steps": 2, "batch_size": 2, "progress": False}
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------- data
def test_manifest_resolves_relative_paths_and_durations(manifest):
    items = read_manifest(manifest)
    assert [u.audio_filepath for u in items] == [manifest.parent / f"{n}.wav" for n in CLIPS]
    assert items[3].duration == 3.0  # from the manifest
    assert items[0].duration == pytest.approx(1.2, abs=0.2)  # from the header (espeak "Hello world.")


def test_bucket_sampler_groups_by_duration_and_shards_ranks():
    durations = [5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 0.5, 8.0]
    s0 = BucketBatchSampler(durations, batch_size=2, rank=0, world_size=2, seed=3)
    s1 = BucketBatchSampler(durations, batch_size=2, rank=1, world_size=2, seed=3)
    # Sorted: 0.5(7) 1(1) | 2(3) 3(2) | 4(4) 5(0) | 6(5) 7(6) | 8(8): five batches, four usable by two ranks.
    assert s0.batches == [[7, 1], [3, 2], [4, 0], [5, 6], [8]]
    for epoch in range(3):
        s0.set_epoch(epoch)
        s1.set_epoch(epoch)
        b0, b1 = s0.epoch_batches(), s1.epoch_batches()
        assert len(b0) == len(b1) == 2 and not {i for b in b0 for i in b} & {i for b in b1 for i in b}
    orders = []
    for epoch in (0, 1, 2, 3, 0):
        s0.set_epoch(epoch)
        orders.append(s0.epoch_batches())
    assert orders[0] == orders[4]  # the same epoch gives the same order (no communication needed)
    assert len({json.dumps(o) for o in orders}) > 1  # and the order changes across epochs


# ---------------------------------------------------------------------- labels, positions, loss
@pytest.fixture(scope="module")
def wmodel(parts):
    return wa.WhisperLLM.from_components(*parts, seed=0)


def test_labels_only_on_answer_tokens(wmodel, clips):
    prompt = wmodel.prompt_ids(wmodel.asr_prompt()).tolist()
    answers = [answer_ids(wmodel.tokenizer, "hello world", wmodel.eos_id), [wmodel.eos_id]]
    with torch.no_grad():
        audio = wmodel.embed_audio([clips["speech_short"], clips["noise"]])
        b = build_batch(input_embeddings(wmodel.llm), prompt, wmodel.audio_tag_id, audio, answers)
    length = len(prompt) - 1 + WHISPER["max_source_positions"] + len(answers[0])
    assert b.embeds.shape == (2, length, 64) and b.labels.shape == b.mask.shape == b.positions.shape == (2, length)
    # Row 0 is the longest: no padding; row 1 is left-padded by the answer-length difference.
    pad = len(answers[0]) - len(answers[1])
    assert bool(b.mask[0].all()) and not bool(b.mask[1, :pad].any()) and bool(b.mask[1, pad:].all())
    assert b.labels[0, -len(answers[0]):].tolist() == answers[0] and b.labels[1, -1].item() == wmodel.eos_id
    assert int((b.labels != IGNORE).sum()) == len(answers[0]) + len(answers[1])
    assert b.positions[1, :pad].tolist() == [0] * pad and b.positions[1, pad:].tolist() == list(range(length - pad))
    assert b.positions[0].tolist() == list(range(length))


def test_loss_equals_full_logit_cross_entropy(wmodel, clips):
    """Logits only at labelled positions give HF's shifted-label loss over the full sequence."""
    loss_fn = SpeechLoss(wmodel)
    audios = [clips["speech_short"], clips["noise"]]
    answers = [answer_ids(wmodel.tokenizer, "hello world", wmodel.eos_id), [wmodel.eos_id]]
    with torch.no_grad():
        ours = loss_fn(audios, answers)
        b = build_batch(input_embeddings(wmodel.llm), loss_fn.prompt, wmodel.audio_tag_id,
                        wmodel.embed_audio(audios), answers)
        logits = wmodel.llm(inputs_embeds=b.embeds, attention_mask=b.mask.long(), position_ids=b.positions).logits
        full = F.cross_entropy(logits[:, :-1].flatten(0, 1), b.labels[:, 1:].flatten(), ignore_index=IGNORE)
    assert torch.allclose(ours, full, atol=1e-5)


def test_teacher_forcing_positions_match_generate(wmodel, clips):
    """Regression: left-padded training rows need position_ids = cumsum(mask) - 1. Teacher-forced on its own greedy
    output, each row's argmax must reproduce that output, in a batch padded by different answer lengths."""
    audios = [clips["speech_short"], clips["speech_medium"]]
    ids = wmodel.generate(audios=audios, max_new_tokens=6)
    ids[1] = ids[1][:3]  # different answer lengths -> left padding in the training batch
    with torch.no_grad():
        prompt = wmodel.prompt_ids(wmodel.asr_prompt()).tolist()
        b = build_batch(input_embeddings(wmodel.llm), prompt, wmodel.audio_tag_id, wmodel.embed_audio(audios), ids)
        logits = wmodel.llm(inputs_embeds=b.embeds, attention_mask=b.mask.long(), position_ids=b.positions).logits
    for row, answer in enumerate(ids):
        predicted = logits[row, -len(answer) - 1:-1].argmax(-1).tolist()
        assert predicted == answer


def test_gradient_checkpointing_gives_the_same_gradients(parts, clips):
    m = wa.WhisperLLM.from_components(*parts, seed=0)
    m.add_lora(r=4, lora_alpha=8, lora_dropout=0.0)
    m.projector.requires_grad_(True)  # models load frozen; training unfreezes what it trains
    m.train()
    loss_fn = SpeechLoss(m)
    audios = [clips["speech_short"], clips["noise"]]
    answers = [answer_ids(m.tokenizer, "hello world", m.eos_id), [m.eos_id]]
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            base_causal_lm(m.llm).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.zero_grad()
        loss_fn(audios, answers).backward()
        grads.append(m.projector.weight.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


# ---------------------------------------------------------------------- what is trained
def test_stage2_lora_never_touches_the_encoder(parts, manifest, tmp_path):
    m = wa.WhisperLLM.from_components(*parts, seed=0)
    trainable = configure_trainable(m, whisper_cfg(manifest, tmp_path, parts, stage=2))
    assert not any(p.requires_grad for p in m.encoder.parameters())
    assert not any(isinstance(mod, LoraLayer) for mod in m.encoder.modules())
    wrapped = {n.removeprefix("base_model.model.") for n, mod in m.llm.named_modules() if isinstance(mod, LoraLayer)}
    expected = {f"model.layers.{i}.{p}" for i in range(2) for p in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}
    assert wrapped == expected
    assert all(n == "projector.weight" or ".lora_" in n for n in trainable) and "projector.weight" in trainable


def _encoder_state(model) -> dict[str, torch.Tensor]:
    enc = model.encoder if isinstance(model, wa.WhisperLLM) else model.perception.encoder
    return {k: v.clone() for k, v in enc.state_dict().items()}


@pytest.mark.parametrize("stage", [1, 2])
def test_whisper_encoder_bit_identical_after_training(parts, manifest, tmp_path, stage):
    m = wa.WhisperLLM.from_components(*parts, seed=0)
    before, proj = _encoder_state(m), m.projector.weight.detach().clone()
    result = train(whisper_cfg(manifest, tmp_path, parts, stage=stage), model=m)
    assert all(torch.equal(v, m.encoder.state_dict()[k]) for k, v in before.items())
    assert not torch.equal(proj, m.projector.weight) and len(result.losses) == 2
    with safe_open(str(tmp_path / "checkpoint-000002" / "trainable.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    assert "projector.weight" in saved and all(k == "projector.weight" or ".lora_" in k for k in saved)
    assert any(".lora_" in k for k in saved) == (stage == 2)
    assert (tmp_path / "model" / wa.CONFIG_FILE).is_file()


@pytest.mark.parametrize("stage", [1, 2])
def test_canary_encoder_bit_identical_after_training(tiny_ckpt, manifest, tmp_path, stage):
    from nemo_lite import CanaryQwen

    m = CanaryQwen.from_pretrained(tiny_ckpt)
    before = _encoder_state(m)  # includes BatchNorm running statistics
    lora_before = {n: p.detach().clone() for n, p in m.llm.named_parameters() if "lora_" in n}
    train(canary_cfg(manifest, tmp_path, tiny_ckpt, stage=stage), model=m)
    assert all(torch.equal(v, m.perception.encoder.state_dict()[k]) for k, v in before.items())
    changed = [n for n, p in m.llm.named_parameters() if "lora_" in n and not torch.equal(p, lora_before[n])]
    assert bool(changed) == (stage == 2)
    with safe_open(str(tmp_path / "checkpoint-000002" / "trainable.safetensors"), framework="pt") as f:
        saved = set(f.keys())
    assert {"perception.proj.weight", "perception.proj.bias"} <= saved
    assert all(k.startswith("perception.proj.") or ".lora_" in k for k in saved)


# ---------------------------------------------------------------------- checkpoints, resume, export
def test_resume_continues_bit_exactly(parts, manifest, tmp_path):
    cfg = whisper_cfg(manifest, tmp_path, parts, stage=2, max_steps=4, save_every=2, lora_dropout=0.1,
                      keep_checkpoints=0)
    straight = train(cfg)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    shutil.rmtree(tmp_path / "checkpoint-000004")
    shutil.rmtree(tmp_path / "model")
    resumed = train(whisper_cfg(manifest, tmp_path, parts, stage=2, max_steps=4, save_every=2, lora_dropout=0.1,
                                resume="auto"))
    assert resumed.losses == straight.losses[2:]
    assert resumed.digest == straight.digest


def test_canary_export_roundtrip(tiny_ckpt, manifest, tmp_path, clips):
    """The fine-tune exported in the hub layout loads in nemo_lite with identical ids; config.json is unchanged and
    the tensor names are the source checkpoint's."""
    from nemo_lite import CanaryQwen

    m = CanaryQwen.from_pretrained(tiny_ckpt)
    result = train(canary_cfg(manifest, tmp_path, tiny_ckpt, stage=2), model=m)
    out = result.model_dir
    assert (out / "config.json").read_bytes() == (tiny_ckpt / "config.json").read_bytes()
    with safe_open(str(out / "model.safetensors"), framework="pt") as f, \
            safe_open(str(tiny_ckpt / "model.safetensors"), framework="pt") as g:
        assert set(f.keys()) == set(g.keys()) and "embed_tokens.weight" in f.keys()
    back = CanaryQwen.from_pretrained(out)
    audios = [clips["speech_short"], clips["noise"]]
    assert back.generate(audios=audios, max_new_tokens=8) == m.generate(audios=audios, max_new_tokens=8)
    assert not torch.equal(back.perception.proj.weight, CanaryQwen.from_pretrained(tiny_ckpt).perception.proj.weight)


def test_config_files(tmp_path, manifest):
    (tmp_path / "c.json").write_text(json.dumps({"architecture": "canary_qwen", "train_manifest": str(manifest),
                                                 "output_dir": "out", "model": "x", "stage": 2, "betas": [0.9, 0.98]}))
    cfg = load_train_config(tmp_path / "c.json")
    assert cfg.stage == 2 and cfg.betas == (0.9, 0.98)
    (tmp_path / "c.toml").write_text('architecture = "whisper_llm"\ntrain_manifest = "m.jsonl"\n'
                                     'output_dir = "o"\nmodel = "m"\nlr = 2e-4\n')
    assert load_train_config(tmp_path / "c.toml").lr == 2e-4
    (tmp_path / "bad.json").write_text(json.dumps({"architecture": "whisper_llm", "train_manifest": "m",
                                                   "output_dir": "o", "model": "m", "learning_rate": 1}))
    with pytest.raises(ValueError, match="learning_rate"):
        load_train_config(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="threads"):
        TrainConfig(architecture="whisper_llm", train_manifest="m", output_dir="o", model="m", threads=-1)


def test_train_synthetic_prepare_only_writes_the_documented_recipe(manifest, tmp_path):
    """README's "your own manifest" commands: ``scripts/train_synthetic.py --prepare-only`` writes configs that
    ``nemo-lite train`` accepts, stage 2 starts from the model stage 1 saves, and the printed commands name them."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_synthetic.py"
    work, manifest = tmp_path.resolve() / "tiny", manifest.resolve()
    res = subprocess.run([sys.executable, str(script), "--prepare-only", "--manifest", str(manifest),
                          "--work", str(work), "--frames", "300"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    cfg1, cfg2 = load_train_config(work / "stage1.json"), load_train_config(work / "stage2.json")
    assert (cfg1.stage, cfg2.stage, cfg1.threads, cfg2.threads) == (1, 2, 1, 1)
    assert cfg1.train_manifest == cfg2.train_manifest == str(manifest)
    assert all(Path(p).is_absolute() for p in (cfg1.output_dir, cfg1.whisper, cfg1.llm, cfg2.output_dir, cfg2.model))
    for line in (f"nemo-lite train --config {work / 'stage1.json'}", f"nemo-lite train --config {work / 'stage2.json'}",
                 f"nemo-lite eval {manifest} --model {Path(cfg2.output_dir) / 'model'} --threads 1"):
        assert line in res.stdout.splitlines()
    short = {"max_steps": 1, "warmup_steps": 0, "batch_size": 2, "lora_r": 4, "progress": False}
    stage1 = train(TrainConfig.from_dict({**asdict(cfg1), **short}))
    assert stage1.model_dir == Path(cfg2.model)
    stage2 = train(TrainConfig.from_dict({**asdict(cfg2), **short}))
    assert stage2.model_dir == Path(cfg2.output_dir) / "model" and (stage2.model_dir / wa.CONFIG_FILE).is_file()


def test_train_synthetic_canary_qwen_recipe(manifest, tmp_path):
    """``scripts/train_synthetic.py --architecture canary_qwen --prepare-only``: a hub-layout tiny Canary-Qwen
    (wider FastConformer via ``tiny_salm_config``'s overrides, learnable LLM scalings, zero ``lora_B``) that
    ``from_pretrained`` loads, and three configs (projector; + LoRA; + encoder at a lower rate, exported bf16),
    each starting from the model the one before saves; one step of each stage gives a model that loads again."""
    from safetensors.torch import load_file

    import nemo_lite

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_synthetic.py"
    work, manifest = tmp_path.resolve() / "tiny", manifest.resolve()
    res = subprocess.run([sys.executable, str(script), "--architecture", "canary_qwen", "--prepare-only",
                          "--manifest", str(manifest), "--work", str(work)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    cfg1, cfg2, cfg3 = (load_train_config(work / f"stage{i}.json") for i in (1, 2, 3))
    assert (cfg1.architecture, cfg1.train_encoder, cfg2.train_encoder, cfg3.train_encoder) == (
        "canary_qwen", False, False, True)
    assert (cfg2.stage, cfg3.stage, cfg3.export_dtype) == (2, 2, "bfloat16") and cfg3.lr < cfg2.lr
    assert cfg2.model == str(work / "stage1" / "model") and cfg3.model == str(work / "stage2" / "model")
    assert f"nemo-lite train --config {work / 'stage3.json'}" in res.stdout.splitlines()
    salm = json.loads((Path(cfg1.model) / "config.json").read_text())
    encoder = salm["perception"]["encoder"]
    assert (encoder["n_layers"], encoder["d_model"], salm["perception"]["modality_adapter"]["d_model"]) == (4, 128, 128)
    state = load_file(str(Path(cfg1.model) / "model.safetensors"))
    assert all(not t.any() for k, t in state.items() if ".lora_B." in k)
    embed = next(t for k, t in state.items() if k.endswith("embed_tokens.weight"))
    assert abs(embed.float().std().item() - 0.25) < 0.01
    assert isinstance(nemo_lite.from_pretrained(cfg1.model), nemo_lite.CanaryQwen)
    short = {"max_steps": 1, "warmup_steps": 0, "batch_size": 2, "progress": False}
    train(TrainConfig.from_dict({**asdict(cfg1), **short}))
    train(TrainConfig.from_dict({**asdict(cfg2), **short}))
    stage3 = train(TrainConfig.from_dict({**asdict(cfg3), **short}))
    model = nemo_lite.from_pretrained(stage3.model_dir)
    assert isinstance(model, nemo_lite.CanaryQwen) and model.cfg.encoder.d_model == 128


# ---------------------------------------------------------------------- data parallel
RANK_SCRIPT = """
import json, os, sys
import torch
from nemo_lite.training.config import TrainConfig
from nemo_lite.training.loop import train
cfg = TrainConfig(**json.loads(open(sys.argv[1]).read()))
result = train(cfg)
with open(os.path.join(sys.argv[2], f"digest-{os.environ['RANK']}.json"), "w") as f:
    json.dump({"digest": result.digest, "losses": result.losses}, f)
torch.distributed.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_end_identical(parts, manifest, tmp_path):
    """torchrun, 2 CPU processes (gloo): each rank trains on its own batches; after DDP's gradient averaging both
    hold the same trainable weights (digests written by each rank)."""
    cfg = whisper_cfg(manifest, tmp_path / "run", parts, stage=2, max_steps=2, batch_size=1)
    (tmp_path / "cfg.json").write_text(json.dumps({k: v for k, v in cfg.__dict__.items()}))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", str(_free_port()), str(tmp_path / "rank.py"), str(tmp_path / "cfg.json"),
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    d0, d1 = (json.loads((tmp_path / f"digest-{r}.json").read_text()) for r in (0, 1))
    assert d0 == d1
    assert (tmp_path / "run" / "model").is_dir() and len(list((tmp_path / "run").glob("checkpoint-*"))) == 1
    single = train(whisper_cfg(manifest, tmp_path / "single", parts, stage=2, max_steps=2, batch_size=1))
    assert single.digest != d0["digest"]  # one rank alone sees half the data per step: a different result


def test_lm_head_is_tied_in_tiny_llm(wmodel):
    lm = base_causal_lm(wmodel.llm)
    assert lm.lm_head.weight is lm.get_input_embeddings().weight
