"""Pre-quantized checkpoints (``nemo-lite quantize``): the same model as quantizing at load, memory-mapped, loaded
with no quantization work, and strict about every damaged, missing or mistyped tensor."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_lite import CanaryQwen, CheckpointError, cli, from_pretrained, quant
from nemo_lite.llm import base_causal_lm
from nemo_lite.memory import NarrowEmbedding
from nemo_lite.prequant import QUANT_CONFIG, QuantizedConfig, hold
from nemo_lite.quantize import quantize_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")
AUDIO = [np.random.default_rng(5).standard_normal(20000).astype(np.float32) * 0.1]
LAYER0_Q = "llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer"
HEAD = "llm.base_model.model.lm_head"


def _outputs(model) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Logits of fixed LLM inputs (batch of 2, several rows: the int8 kernel's and the dense path), the encoder's
    output for a clip, and greedy ids for it."""
    x = torch.randn(2, 40, model.cfg.output_dim, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        logits = model.llm(inputs_embeds=x).logits
    return logits, model.embed_audio(AUDIO)[0], model.generate(audios=AUDIO, max_new_tokens=5)


def _at_load(ckpt: Path, mode: str, embedding: str, encoder: str):
    """The reference: quantized at load from the source checkpoint, then held as the directory says."""
    model = CanaryQwen.from_pretrained(ckpt, quantize=mode)
    hold(model, embedding, encoder)
    return model


@pytest.mark.parametrize(("mode", "embedding", "encoder"), [("int8", "narrow", "narrow"), ("int8", "int8", "int8"),
                                                             ("int4", "narrow", "int8"), ("int4", "int8", "narrow")])
def test_save_load_is_bit_identical_to_quantizing_at_load(tiny_ckpt, tmp_path, monkeypatch, mode, embedding,
                                                          encoder):
    out = quantize_checkpoint(tiny_ckpt, tmp_path / "q", mode, embedding=embedding, encoder=encoder)
    want = _outputs(_at_load(tiny_ckpt, mode, embedding, encoder))

    def no_work(real):
        def check(*args, **kwargs):
            if any(isinstance(a, torch.Tensor) and not a.is_meta for a in args) or any(
                    not p.is_meta for a in args if isinstance(a, torch.nn.Module) for p in a.parameters()):
                raise AssertionError("quantization work at load")
            return real(*args, **kwargs)  # on the meta device: building the structure
        return check

    monkeypatch.setattr(quant.Int8Linear, "from_linear", no_work(quant.Int8Linear.from_linear))
    monkeypatch.setattr(quant.Int4Linear, "from_linear", no_work(quant.Int4Linear.from_linear))
    monkeypatch.setattr(quant, "_to_kernel", no_work(quant._to_kernel))  # int4 in this CPU's layout: no packing
    model = from_pretrained(out)
    got = _outputs(model)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and got[2] == want[2]
    lm = base_causal_lm(model.llm)
    assert isinstance(lm.model.layers[0].self_attn.q_proj.base_layer, quant.Int4Linear if mode == "int4"
                      else quant.Int8Linear)
    table = lm.get_input_embeddings()
    assert isinstance(table, NarrowEmbedding if embedding == "narrow" else quant.Int8Embedding)
    if embedding == "int8" and mode == "int8":
        assert table.weight is lm.lm_head.weight  # the tied head, quantized once, held once
    assert model.options.quantize == mode


def _mapped_ranges(path: Path) -> list[tuple[int, int]]:
    ranges = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        if line.endswith(str(path)):
            lo, hi = line.split()[0].split("-")
            ranges.append((int(lo, 16), int(hi, 16)))
    return ranges


@pytest.fixture(scope="module")
def int8_dir(tiny_ckpt, tmp_path_factory) -> Path:
    return quantize_checkpoint(tiny_ckpt, tmp_path_factory.mktemp("q") / "int8", "int8")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads Linux's /proc/self/maps")
def test_weights_are_views_of_the_file_not_copies(int8_dir):
    model = from_pretrained(int8_dir)
    ranges = _mapped_ranges((int8_dir / "model.safetensors").resolve())
    weight = model.get_submodule(LAYER0_Q).weight
    assert ranges and any(lo <= weight.data_ptr() < hi for lo, hi in ranges)
    table = base_causal_lm(model.llm).get_input_embeddings().weight
    assert table.dtype == torch.bfloat16 and any(lo <= table.data_ptr() < hi for lo, hi in ranges)


def test_config_round_trips_and_rejects_unknown_keys(int8_dir, tmp_path, tiny_ckpt):
    cfg = QuantizedConfig.read(int8_dir)
    assert cfg.mode == "int8" and cfg.format == 1 and cfg.embedding == "narrow" and cfg.encoder == "narrow"
    assert HEAD in cfg.int8 and LAYER0_Q in cfg.int8 and not cfg.int4
    assert cfg.model_config == json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg.source["bytes"] == (tiny_ckpt / "model.safetensors").stat().st_size and len(cfg.source["sha256"]) == 64
    cfg.write(tmp_path)
    assert QuantizedConfig.read(tmp_path) == cfg
    raw = json.loads((tmp_path / QUANT_CONFIG).read_text())
    (tmp_path / QUANT_CONFIG).write_text(json.dumps({**raw, "brand_new": 1}))
    with pytest.raises(CheckpointError, match="brand_new"):
        QuantizedConfig.read(tmp_path)
    (tmp_path / QUANT_CONFIG).write_text(json.dumps({**raw, "format": 99}))
    with pytest.raises(CheckpointError, match="newer nemo_lite"):
        QuantizedConfig.read(tmp_path)


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit(path: Path, edit, name: str = "model.safetensors") -> None:
    state = load_file(str(path / name))
    edit(state)
    save_file(state, str(path / name))


@pytest.mark.parametrize(("edit", "needle"), [
    (lambda s: s.pop(f"{LAYER0_Q}.scale"), f"missing.*{LAYER0_Q}.scale"),
    (lambda s: s.__setitem__(f"{LAYER0_Q}.scale", s[f"{LAYER0_Q}.scale"].float()),
     f"{LAYER0_Q}.scale.*float32.*expects bfloat16"),
    (lambda s: s.__setitem__(f"{LAYER0_Q}.weight", s[f"{LAYER0_Q}.weight"][:8]), f"{LAYER0_Q}.weight.*expects"),
    (lambda s: s.__setitem__("llm.extra.weight", torch.zeros(2)), "does not have.*llm.extra.weight"),
])
def test_strict_loading_names_the_tensor(int8_dir, tmp_path, edit, needle):
    ckpt = _copy(int8_dir, tmp_path / "q")
    _edit(ckpt, edit)
    with pytest.raises(CheckpointError, match=needle):
        from_pretrained(ckpt)


def test_truncated_shard_is_named(tiny_ckpt, tmp_path):
    """A shard cut short is named with the first tensor past its end, before any page of it is touched (touching
    a mapped page past the end of a file kills the process with SIGBUS)."""
    out = quantize_checkpoint(tiny_ckpt, tmp_path / "q", "int8", max_shard_bytes=4 << 20)
    shards = sorted(out.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").is_file()
    victim = shards[1]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CheckpointError, match=rf"{victim.name}: tensor .*truncated"):
        from_pretrained(out)
    victim.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match=rf"{victim.name} is not a readable safetensors"):
        from_pretrained(out)


def test_sharded_equals_single_file(tiny_ckpt, int8_dir, tmp_path):
    out = quantize_checkpoint(tiny_ckpt, tmp_path / "q", "int8", max_shard_bytes=4 << 20)
    assert torch.equal(_outputs(from_pretrained(out))[0], _outputs(from_pretrained(int8_dir))[0])


def test_int4_from_another_cpu_layout(tiny_ckpt, tmp_path):
    """int4 codes stored in another CPU's kernel layout (AVX-512's 64-row blocks, say) are converted on first use:
    same logits as the portable form."""
    portable = quantize_checkpoint(tiny_ckpt, tmp_path / "p", "int4", portable=True)
    assert QuantizedConfig.read(portable).int4_layout is None
    want = _outputs(from_pretrained(portable))[0]
    here = quant.int4_kernel_layout()
    other = next(lay for lay in (("halves", 64), ("halves", 32)) if lay != here)
    foreign = _copy(portable, tmp_path / "f")
    cfg = QuantizedConfig.read(foreign)

    def to_other(state):
        for name in cfg.int4:
            state[f"{name}.weight"] = quant._to_kernel(state[f"{name}.weight"], *other)

    _edit(foreign, to_other)
    cfg.int4_layout = list(other)
    cfg.write(foreign)
    assert torch.equal(_outputs(from_pretrained(foreign))[0], want)


def test_options_that_contradict_the_directory(int8_dir):
    with pytest.raises(ValueError, match="quantized to int8"):
        from_pretrained(int8_dir, quantize="int4")
    with pytest.raises(ValueError, match="CPU mode"):
        from_pretrained(int8_dir, dtype="bf16")


def test_quantize_command(tiny_ckpt, llm_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli.main(["quantize", str(tiny_ckpt), "--mode", "int4", "--out", str(out), "--llm-path", str(llm_dir),
                     "--threads", "1"]) == 0
    assert "wrote" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "llm_backbone").iterdir()) == sorted(
        p.name for p in llm_dir.iterdir())  # config + tokenizer: loads offline
    assert QuantizedConfig.read(out).mode == "int4"
    assert cli.main(["quantize", str(tiny_ckpt), "--mode", "int8", "--out", str(out), "--threads", "1",
                     "--max-shard-gb", "0.004"]) == 0
    assert QuantizedConfig.read(out).mode == "int8"  # an earlier pre-quantized directory is replaced
    assert not (out / "model.safetensors").exists()  # by shards: the single file of the int4 write is gone
    assert torch.equal(_outputs(from_pretrained(out))[0], _outputs(_at_load(tiny_ckpt, "int8", "narrow", "narrow"))[0])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert cli.main(["quantize", str(tiny_ckpt), "--mode", "int8", "--out", str(tmp_path / "other")]) == 2
    assert "not an empty directory" in capsys.readouterr().err


def test_int8_at_load_holds_the_embedding_narrow(tiny_ckpt, tiny_model):
    """Regression (issue 16): quantize='int8' kept an fp32 copy of the embedding table beside the int8 head; it is
    now held as stored (bf16) and looked-up rows are widened, bit-identical to exact mode's fp32 rows."""
    model = CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8")
    table = base_causal_lm(model.llm).get_input_embeddings()
    assert isinstance(table, NarrowEmbedding) and table.weight.dtype == torch.bfloat16
    ids = torch.tensor([[0, 5, 151643, 151669]])
    want = base_causal_lm(tiny_model.llm).get_input_embeddings()(ids)
    assert torch.equal(table(ids), want) and table(ids).dtype == torch.float32


def test_directory_tokenizer_matches_the_llms_own(int8_dir, tiny_model):
    """The directory's tokenizer is built straight from tokenizer.json (faster than Qwen2Tokenizer's Python
    rebuild of its vocabulary): the same ids, special ids, text and chat prompt as the LLM's own class."""
    got, want = from_pretrained(int8_dir), tiny_model
    assert (got.audio_tag_id, got.eos_id, got.pad_id) == (want.audio_tag_id, want.eos_id, want.pad_id)
    texts = ["hello , world ! it 's a test .", " a  b   c ", "ü é ñ 日本語 🙂", "<|im_start|>x<|im_end|>",
             f"{got.audio_tag} after the tag", "don't stop-me now!!\n\n"]
    for text in texts:
        ids = want.tokenizer.encode(text)
        assert got.tokenizer.encode(text) == ids
        for skip in (True, False):
            assert got.tokenizer.decode(ids, skip_special_tokens=skip) == want.tokenizer.decode(
                ids, skip_special_tokens=skip)
    assert torch.equal(got.prompt_ids(got.asr_prompt()), want.prompt_ids(want.asr_prompt()))


# ---------------------------------------------------------------------- the quantization cache
def test_cache_quantizes_once_then_maps(tiny_ckpt, tmp_path, monkeypatch):
    """A quantized load writes a cache entry (one warning saying where and how large) and later loads map it:
    same outputs as quantizing at load, no quantization work the second time; a changed checkpoint file gets an
    entry of its own; off means quantizing at load with nothing written."""
    from nemo_lite import prequant as quantize

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, ckpt)
    monkeypatch.setenv(quantize.CACHE_ENV, "off")
    want = _outputs(CanaryQwen.from_pretrained(ckpt, quantize="int8"))
    root = tmp_path / "cache"
    assert not root.exists()

    monkeypatch.setenv(quantize.CACHE_ENV, str(root))
    with pytest.warns(quantize.QuantCacheWarning, match=r"cached it in .*GB\); later loads map it"):
        first = CanaryQwen.from_pretrained(ckpt, quantize="int8")
    entries = [p for p in root.iterdir()]
    assert len(entries) == 1 and (entries[0] / QUANT_CONFIG).is_file()  # no temporary directory left behind
    for got, ref in zip(_outputs(first), want, strict=True):
        assert (torch.equal(got, ref) if isinstance(got, torch.Tensor) else got == ref)

    def no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again although the cache holds this checkpoint")

    monkeypatch.setattr(quantize, "write_quantized", no_quantizing)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = CanaryQwen.from_pretrained(ckpt, quantize="int8")
    for got, ref in zip(_outputs(again), want, strict=True):
        assert (torch.equal(got, ref) if isinstance(got, torch.Tensor) else got == ref)
    assert isinstance(base_causal_lm(again.llm).get_input_embeddings(), NarrowEmbedding)  # mapped holdings

    monkeypatch.undo()
    monkeypatch.setenv(quantize.CACHE_ENV, str(root))
    weights = ckpt / "model.safetensors"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the checkpoint was replaced
    with pytest.warns(quantize.QuantCacheWarning, match="cached it in"):
        CanaryQwen.from_pretrained(ckpt, quantize="int8")
    assert len(list(root.iterdir())) == 2


def test_cache_damaged_or_unwritable(tiny_ckpt, tmp_path, monkeypatch):
    """A damaged entry is written again (with a warning); a cache that cannot be written leaves the load working,
    quantized at load, with one warning naming the place."""
    from nemo_lite import prequant as quantize

    root = tmp_path / "cache"
    monkeypatch.setenv(quantize.CACHE_ENV, str(root))
    with pytest.warns(quantize.QuantCacheWarning):
        CanaryQwen.from_pretrained(tiny_ckpt, quantize="int4")
    (entry,) = root.iterdir()
    shard = next(entry.glob("model*.safetensors"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated
    with pytest.warns(quantize.QuantCacheWarning, match="damaged") as caught:
        model = CanaryQwen.from_pretrained(tiny_ckpt, quantize="int4")
    assert any("cached it in" in str(w.message) for w in caught)  # and written again
    assert model.generate(audios=AUDIO, max_new_tokens=2)

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv(quantize.CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(quantize.QuantCacheWarning, match=r"cannot cache the int8 weights in .*quantizing at load"):
        model = CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8")
    assert isinstance(base_causal_lm(model.llm).lm_head, quant.Int8Linear)
    assert not quantize.cacheable(model.options.__class__(quantize="int8", compact_encoder=True))
