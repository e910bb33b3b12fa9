"""Step 2 - LoRA mechanics: what peft adds to q_proj / v_proj, checked by hand, and the checkpoint key names.

Canary-Qwen fine-tunes Qwen3 with LoRA (r=128, alpha=256 -> scale 2) on ``q_proj`` and ``v_proj`` and keeps it as
a separate adapter. Here, on a tiny random Qwen3 with r=8, alpha=16 (same scale 2):

- a LoRA layer computes ``y = W x + (alpha / r) * B(A(x))``; we recompute that by hand and compare;
- ``disable_adapter()`` gives back exactly the base layer (LLM mode of Canary-Qwen uses this);
- merging ``W + s * B @ A`` gives the same output (nemo_lite does not merge: LLM mode needs the adapter off);
- the state_dict names (``base_layer``, ``lora_A.default``, ``lora_B.default``) are the checkpoint's names under
  ``llm.base_model.model.model.layers.{i}.self_attn.q_proj.*``, and ``nemo_lite.llm.build_llm`` produces them.

Run: python exploration/canary_qwen/02_lora_mechanics.py
"""

from __future__ import annotations

import warnings

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

from nemo_lite.config import LoraSettings
from nemo_lite.llm import build_llm
from nemo_lite.testing import TINY_QWEN3

R, ALPHA = 8, 16


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation noise from peft
    torch.manual_seed(0)
    cfg = AutoConfig.for_model(**TINY_QWEN3)
    base = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)  # config says bf16 (hub dtype)
    model = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"])).eval()
    q = model.base_model.model.model.layers[0].self_attn.q_proj  # a peft lora.Linear wrapping the nn.Linear
    print(f"q_proj is now {type(q).__module__}.{type(q).__name__}, wrapping {type(q.base_layer).__name__}")
    print(f"  A: {tuple(q.lora_A['default'].weight.shape)} (r x in), B: {tuple(q.lora_B['default'].weight.shape)} "
          f"(out x r), scaling = alpha/r = {ALPHA}/{R} = {q.scaling['default']}")
    print(f"  peft initialises B to zero -> |B|max = {q.lora_B['default'].weight.abs().max():.1f} "
          f"(a fresh adapter changes nothing)")
    with torch.no_grad():  # give B values, as a trained adapter (or the checkpoint) has
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)

    x = torch.randn(5, cfg.hidden_size)
    W = q.base_layer.weight  # (out, in); Qwen3 q_proj has no bias
    A, B = q.lora_A["default"].weight, q.lora_B["default"].weight
    s = ALPHA / R
    with torch.no_grad():
        y_peft = q(x)
        y_manual = x @ W.T + s * (x @ A.T) @ B.T
        y_base = x @ W.T
        with model.disable_adapter():
            y_disabled = q(x)
        y_merged = x @ (W + s * B @ A).T
    print("\n== y = W x + (alpha/r) B(A(x)) ==")
    print(f"  |peft - manual|max   = {(y_peft - y_manual).abs().max():.2e}")
    print(f"  |peft - base|max     = {(y_peft - y_base).abs().max():.3f}   (the LoRA delta is real)")
    print(f"  |disabled - base|max = {(y_disabled - y_base).abs().max():.2e}   (disable_adapter() = base layer)")
    print(f"  |merged - peft|max   = {(y_merged - y_peft).abs().max():.2e}   (merge W' = W + s B A is equivalent)")
    assert torch.allclose(y_peft, y_manual, atol=1e-5)
    assert torch.equal(y_disabled, y_base)
    assert (y_peft - y_base).abs().max() > 1e-2
    assert torch.allclose(y_merged, y_peft, atol=1e-5)

    # Whole model: adapter on vs off changes the logits; off equals the bare base model's logits.
    ids = torch.tensor([[10, 20, 30, 40]])
    with torch.no_grad():
        on = model(input_ids=ids).logits
        with model.disable_adapter():
            off = model(input_ids=ids).logits
    print(f"\n  whole model, adapter on vs off: |logits diff|max = {(on - off).abs().max():.3f}")
    assert (on - off).abs().max() > 1e-3

    print("\n== key names (model.state_dict(), prefixed with 'llm.' as CanaryQwen holds the LLM as self.llm) ==")
    keys = ["llm." + k for k in model.state_dict() if ".layers.0.self_attn." in k and ("q_proj" in k or "v_proj" in k)]
    for k in keys:
        print(f"  {k}")
    expected = {f"llm.base_model.model.model.layers.0.self_attn.{m}.{leaf}" for m in ("q_proj", "v_proj")
                for leaf in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")}
    assert set(keys) == expected
    print("  note: peft's save_pretrained() adapter files drop '.default'; a full state_dict (the Canary "
          "checkpoint) keeps it.")

    # nemo_lite builds the same structure on the meta device (no memory, no init) with the checkpoint's settings.
    ours = build_llm(AutoConfig.for_model(**TINY_QWEN3), LoraSettings(r=R, lora_alpha=ALPHA))
    ours_keys = {"llm." + k for k in ours.state_dict()}
    peft_keys = {"llm." + k for k in model.state_dict()}
    print(f"\nnemo_lite.llm.build_llm: {len(ours_keys)} keys, identical to the peft model's: {ours_keys == peft_keys}; "
          f"device {next(ours.parameters()).device}")
    assert ours_keys == peft_keys
    n_lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    full_r, full_h, full_kv, layers = 128, 2048, 8 * 128, 28
    full_lora = layers * full_r * ((full_h + full_h) + (full_h + full_kv))  # q: in+out, v: in+out(kv)
    print(f"LoRA params: tiny {n_lora:,}; Canary-Qwen (r=128 on 28 layers of Qwen3-1.7B) {full_lora:,}")


if __name__ == "__main__":
    main()
