"""Strict loading: every damaged checkpoint or unimplemented config option fails loudly, naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nemo_lite import CanaryQwen, CheckpointError, ConfigError
from nemo_lite.llm import base_causal_lm
from nemo_lite.weights import to_nemo, to_ours

LAYER0_Q = "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight"
ENC_KEY = "perception.encoder.layers.0.self_attn.linear_pos.weight"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(ckpt: Path, edit) -> None:
    state = load_file(str(ckpt / "model.safetensors"))
    edit(state)
    save_file(state, str(ckpt / "model.safetensors"))


def _edit_config(ckpt: Path, edit) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    edit(cfg)
    (ckpt / "config.json").write_text(json.dumps(cfg))


def test_loads_every_tensor(tiny_ckpt, tiny_model):
    """All file tensors land in the model with their values (LoRA B included)."""
    state = load_file(str(tiny_ckpt / "model.safetensors"))
    ours = tiny_model.state_dict()
    prefix = "llm.base_model.model.model."
    for key, value in state.items():
        assert torch.equal(ours[to_ours(key, prefix)].to(value.dtype), value), key
    assert not any(t.is_meta for t in tiny_model.parameters())


def test_key_mapping_round_trips(tiny_ckpt):
    prefix = "llm.base_model.model.model."
    for key in load_file(str(tiny_ckpt / "model.safetensors")):
        assert to_nemo(to_ours(key, prefix), prefix) == key


def test_missing_tensor(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    _edit_tensors(ckpt, lambda s: s.pop(LAYER0_Q))
    with pytest.raises(CheckpointError, match="missing"):
        CanaryQwen.from_pretrained(ckpt)


def test_renamed_tensor(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    _edit_tensors(ckpt, lambda s: s.__setitem__(ENC_KEY.replace("linear_pos", "linear_position"), s.pop(ENC_KEY)))
    with pytest.raises(CheckpointError, match="linear_position"):
        CanaryQwen.from_pretrained(ckpt)


def test_unexpected_extra_tensor(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    _edit_tensors(ckpt, lambda s: s.__setitem__("perception.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="perception.extra.weight"):
        CanaryQwen.from_pretrained(ckpt)


def test_wrong_shape(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    _edit_tensors(ckpt, lambda s: s.__setitem__(ENC_KEY, s[ENC_KEY][:, :-1].contiguous()))
    with pytest.raises(CheckpointError, match="shape"):
        CanaryQwen.from_pretrained(ckpt)


def test_truncated_file(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    data = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(data[: len(data) - 4096])
    with pytest.raises(CheckpointError, match="safetensors|truncated"):
        CanaryQwen.from_pretrained(ckpt)


def test_missing_files(tiny_ckpt, tmp_path):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        CanaryQwen.from_pretrained(ckpt)


@pytest.mark.parametrize(
    "edit, needle",
    [
        (lambda c: c.__setitem__("some_new_option", 1), "some_new_option"),
        (lambda c: c["perception"]["encoder"].__setitem__("self_attention_model", "abs_pos"), "self_attention_model"),
        (lambda c: c["perception"]["encoder"].__setitem__("subsampling", "striding"), "subsampling"),
        (lambda c: c["perception"]["encoder"].__setitem__("conv_norm_type", "layer_norm"), "conv_norm_type"),
        (lambda c: c["perception"]["encoder"].__setitem__("brand_new", True), "brand_new"),
        (lambda c: c["perception"]["preprocessor"].__setitem__("normalize", "all_features"), "normalize"),
        (lambda c: c["perception"]["modality_adapter"].__setitem__("_target_", "x.QformerConnector"),
         "modality_adapter"),
        (lambda c: c.__setitem__("prompt_format", "llama2"), "prompt_format"),
        (lambda c: c["lora"].__setitem__("use_dora", True), "use_dora"),
    ],
)
def test_unimplemented_config_option(tiny_ckpt, tmp_path, edit, needle):
    ckpt = _copy(tiny_ckpt, tmp_path / "c")
    _edit_config(ckpt, edit)
    with pytest.raises(ConfigError, match=needle):
        CanaryQwen.from_pretrained(ckpt)


def test_hub_unreachable_names_local_alternative(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="local"):
        CanaryQwen.from_pretrained("nvidia/this-repo-is-not-cached")


def test_lora_is_loaded_and_switchable(tiny_model):
    """Guards against a loader that drops LoRA: with the adapter on, the LLM output differs from adapter off."""
    from nemo_lite.llm import adapter_disabled

    x = torch.randn(1, 5, tiny_model.cfg.output_dim)
    with torch.inference_mode():
        on = tiny_model.llm(inputs_embeds=x).logits
        with adapter_disabled(tiny_model.llm):
            off = tiny_model.llm(inputs_embeds=x).logits
        again = tiny_model.llm(inputs_embeds=x).logits
    assert (on - off).abs().max() > 1e-3
    assert torch.equal(on, again)


def test_bf16_load_runs(tiny_ckpt, monkeypatch):
    monkeypatch.setenv("NEMO_LITE_BF16", "native")  # bf16 compute whatever this CPU has
    model = CanaryQwen.from_pretrained(tiny_ckpt, dtype="bf16")
    assert model.dtype == torch.bfloat16
    assert model.perception.preprocessor.featurizer.fb.dtype == torch.float32  # front end stays fp32
    out = model.generate(audios=[torch.zeros(16000).numpy() + 0.01], max_new_tokens=3)
    assert len(out[0]) == 3


def test_bf16_without_native_bf16_is_exact_mode_at_half_the_memory(tiny_ckpt, tiny_model, monkeypatch):
    """Regression (issue 16): bf16 on a CPU that emulates bf16 products cast the whole model to bf16 and ran 1.4x
    slower than fp32 at full size. Now the large weights stay bf16 and each layer computes fp32 on them: from a
    bf16 file that is exact mode's arithmetic, so embeddings and multi-position logits equal exact mode's bit for
    bit. A single-position input (a decoding step) multiplies in bf16 instead (NarrowLinear.step_in_narrow): close
    to exact, and the same for a row whatever its batch."""
    from nemo_lite import cpu
    from nemo_lite.memory import NarrowEmbedding, NarrowLinear

    monkeypatch.delenv("NEMO_LITE_BF16", raising=False)
    monkeypatch.setattr(cpu, "cpu_info", lambda: cpu.CpuInfo("AVX2 CPU", "x86_64", frozenset({"avx2", "fma"}), 2,
                                                            "AVX2", "test"))
    model = CanaryQwen.from_pretrained(tiny_ckpt, dtype="bf16")
    lm = base_causal_lm(model.llm)
    named = [*lm.named_modules(), *model.perception.encoder.layers.named_modules()]
    wide = [n for n, m in named if type(m) in (torch.nn.Linear, torch.nn.Conv1d) and "lora_" not in n]
    assert not wide  # every weight matrix but LoRA's is held narrow
    narrow = [m for _, m in named if isinstance(m, NarrowLinear)]
    assert narrow and isinstance(lm.get_input_embeddings(), NarrowEmbedding)
    assert {m.weight.dtype for m in [*narrow, lm.get_input_embeddings()]} == {torch.bfloat16}
    assert lm.config.tie_word_embeddings  # the tied head and the embedding stay one table
    assert lm.get_output_embeddings().weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert model.dtype == torch.float32  # the projector, norms and LoRA: fp32
    audio = [np.random.default_rng(4).standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 23456)]
    for got, want in zip(model.embed_audio(audio), tiny_model.embed_audio(audio), strict=True):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    x = torch.randn(2, 5, model.cfg.output_dim)
    with torch.inference_mode():
        assert torch.equal(model.llm(inputs_embeds=x).logits, tiny_model.llm(inputs_embeds=x).logits)
        step, want = model.llm(inputs_embeds=x[:, :1]).logits, tiny_model.llm(inputs_embeds=x[:, :1]).logits
        assert not torch.equal(step, want)  # the bf16 product ran (inputs rounded to bf16)
        torch.testing.assert_close(step, want, rtol=0.02, atol=0.02 * want.abs().max().item())
        alone = model.llm(inputs_embeds=x[1:, :1]).logits
        assert torch.equal(alone, step[1:])  # a row's step does not depend on its batch
    both = model.generate(audios=audio, max_new_tokens=6)
    assert both == [model.generate(audios=[a], max_new_tokens=6)[0] for a in audio]
    assert len(both[0]) == 6
    assert {m.weight.dtype for m in narrow} == {torch.bfloat16}  # still narrow after running


@pytest.mark.parametrize(("mode", "kind"), [("int8", "Int8Linear"), ("int4", "Int4Linear")])
def test_quantized_mode_keeps_adapter_switchable_and_warns_nothing(tiny_ckpt, mode, kind):
    """int8/int4: the LLM's linear layers (and the tied head's own copy) become our weight-only modules, LoRA stays
    a float side path that LLM mode switches off; loading and decoding emit no warning (regression: the torch.ao
    path's deprecation warnings were muted)."""
    import warnings

    from nemo_lite import quant
    from nemo_lite.llm import adapter_disabled, base_causal_lm

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = CanaryQwen.from_pretrained(tiny_ckpt, quantize=mode)
    lm = base_causal_lm(model.llm)
    q_proj = lm.model.layers[0].self_attn.q_proj
    cls = getattr(quant, kind)
    assert isinstance(q_proj.base_layer, cls) and isinstance(lm.lm_head, cls)
    assert isinstance(q_proj.lora_A["default"], torch.nn.Linear)  # LoRA stays a float side path
    x = torch.randn(1, 4, model.cfg.output_dim)
    with torch.inference_mode():
        on = model.llm(inputs_embeds=x).logits
        with adapter_disabled(model.llm):
            off = model.llm(inputs_embeds=x).logits
    assert (on - off).abs().max() > 1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(model.generate(audios=[torch.randn(8000).numpy() * 0.1], max_new_tokens=3)[0]) == 3


def test_int8_all_also_quantizes_the_encoder_and_stays_close(tiny_ckpt, tiny_model):
    from nemo_lite.quant import Int8Linear

    model = CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8-all")
    encoder = model.perception.encoder
    linears = [m for m in encoder.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert isinstance(base_causal_lm(model.llm).lm_head, Int8Linear)
    audio = [np.random.default_rng(2).standard_normal(20000).astype(np.float32) * 0.1]
    got, want = model.embed_audio(audio)[0], tiny_model.embed_audio(audio)[0]
    assert got.shape == want.shape
    assert float((got - want).norm() / want.norm()) < 0.2  # int8 weights: close, not equal
    with pytest.raises(ValueError, match="exclude"):
        CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8-all", compact_encoder=True)


def test_int8_with_bf16_encoder(tiny_ckpt, tiny_model):
    """The fast CPU mode: int8 LLM linears, FastConformer computed in bf16, projection and LLM inputs fp32."""
    model = CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8", encoder_dtype="bf16")
    assert {p.dtype for p in model.perception.encoder.parameters()} == {torch.bfloat16}
    assert model.perception.proj.weight.dtype == torch.float32
    audio = [np.random.default_rng(3).standard_normal(20000).astype(np.float32) * 0.1]
    got, want = model.embed_audio(audio)[0], tiny_model.embed_audio(audio)[0]
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert float((got - want).norm() / want.norm()) < 0.05  # bf16 rounding only
    assert len(model.generate(audios=audio, max_new_tokens=3)[0]) == 3
    with pytest.raises(ValueError, match="encoder_dtype"):
        CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8-all", encoder_dtype="bf16")


def test_merged_lora_matches_exact_and_unmerges_for_llm_mode(tiny_ckpt, tiny_model):
    merged = CanaryQwen.from_pretrained(tiny_ckpt, merge_lora=True)
    audio = [torch.randn(12000).numpy() * 0.1]
    text = [[{"role": "user", "content": "Say hello."}]]
    assert merged.generate(prompts=text, max_new_tokens=4) == tiny_model.generate(prompts=text, max_new_tokens=4)
    assert merged.generate(audios=audio, max_new_tokens=4) == tiny_model.generate(audios=audio, max_new_tokens=4)


def test_int8_rejects_gpu_or_bf16(tiny_ckpt):
    with pytest.raises(ValueError, match="int8"):
        CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8", dtype="bf16")
    with pytest.raises(ValueError, match="merge_lora"):
        CanaryQwen.from_pretrained(tiny_ckpt, quantize="int8", merge_lora=True)


def test_compact_encoder_is_bit_identical_and_stays_narrow(tiny_ckpt):
    """Exact mode holds the FastConformer layers' weight matrices in the checkpoint's bf16 and widens each one per
    call: the embeddings must equal those of an all-fp32 encoder bit for bit, and the weights stay bf16."""
    import numpy as np
    import torch
    from torch import nn

    from nemo_lite import CanaryQwen

    compact = CanaryQwen.from_pretrained(tiny_ckpt)  # auto: fp32 compute from a bf16 file
    wide = CanaryQwen.from_pretrained(tiny_ckpt, compact_encoder=False)

    def matrix_dtypes(model):
        return {m.weight.dtype for m in model.perception.encoder.layers.modules()
                if isinstance(m, (nn.Linear, nn.Conv1d))}

    assert matrix_dtypes(compact) == {torch.bfloat16}
    assert {p.dtype for p in wide.perception.encoder.layers.parameters()} == {torch.float32}
    audio = [np.random.default_rng(1).standard_normal(n).astype(np.float32) * 0.1 for n in (16000, 23456)]
    for got, want in zip(compact.embed_audio(audio), wide.embed_audio(audio), strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, want)
    assert matrix_dtypes(compact) == {torch.bfloat16}


def test_compact_encoder_safe_with_errors_and_threads(tiny_ckpt):
    """Regression: the compact encoder used to swap ``p.data`` in forward hooks, so an exception mid-forward left
    fp32 weights behind and two threads could see each other's swaps. Widening is now a temporary per call: after a
    failing call the weights are still bf16, and concurrent callers get the single-threaded results."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch

    from nemo_lite import CanaryQwen

    model = CanaryQwen.from_pretrained(tiny_ckpt)
    layer = model.perception.encoder.layers[0]
    before = {n: (p.dtype, p.data_ptr()) for n, p in layer.named_parameters()}
    with torch.inference_mode(), pytest.raises(RuntimeError):
        layer(torch.zeros(1, 5, 3))  # wrong width: fails inside the layer
    assert {n: (p.dtype, p.data_ptr()) for n, p in layer.named_parameters()} == before
    rng = np.random.default_rng(2)
    audio = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (8000, 12000, 16000, 20000)]
    alone = [model.embed_audio([a])[0] for a in audio]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda a: model.embed_audio([a])[0], audio))
    for got, want in zip(together, alone, strict=True):
        assert torch.equal(got, want)
