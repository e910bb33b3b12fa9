"""Step 1 - the LLM half of Canary-Qwen: Qwen3's structure, GQA, tied embeddings, parameter counts.

Builds a tiny random Qwen3ForCausalLM from ``nemo_lite.testing.TINY_QWEN3`` (the real Qwen3-1.7B config with small
widths), prints its module tree, counts parameters per part, shows grouped-query attention (fewer K/V heads than Q
heads) and the tied input/output embedding, then counts the full Qwen3-1.7B on the meta device (no memory used)
and checks the count against a closed-form formula.

Run: python exploration/canary_qwen/01_qwen3_structure.py
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from nemo_lite.testing import QWEN3_1_7B, TINY_QWEN3


def n_params(module: torch.nn.Module) -> int:
    """Unique parameters (a tied weight is counted once, as ``parameters()`` de-duplicates)."""
    return sum(p.numel() for p in module.parameters())


def formula(c) -> int:
    """Closed-form Qwen3 parameter count (no biases, QK-norm, tied head)."""
    h, hd, nq, nkv, ff = c.hidden_size, c.head_dim, c.num_attention_heads, c.num_key_value_heads, c.intermediate_size
    attn = h * nq * hd + 2 * h * nkv * hd + nq * hd * h + 2 * hd  # q, k, v, o + q_norm, k_norm
    mlp = 3 * h * ff  # gate, up, down
    layer = attn + mlp + 2 * h  # + input / post-attention RMSNorm
    head = 0 if c.tie_word_embeddings else c.vocab_size * h
    return c.vocab_size * h + c.num_hidden_layers * layer + h + head  # embed + layers + final norm (+ head)


def summary(name: str, c, model: torch.nn.Module) -> dict[str, int]:
    inner = model.model
    counts = {
        "embed_tokens": n_params(inner.embed_tokens),
        "one layer": n_params(inner.layers[0]),
        "  of which self_attn": n_params(inner.layers[0].self_attn),
        "  of which mlp": n_params(inner.layers[0].mlp),
        "all layers": n_params(inner.layers),
        "total (unique)": n_params(model),
    }
    print(f"\n[{name}] hidden={c.hidden_size} layers={c.num_hidden_layers} heads q/kv={c.num_attention_heads}/"
          f"{c.num_key_value_heads} head_dim={c.head_dim} ffn={c.intermediate_size} vocab={c.vocab_size}")
    for k, v in counts.items():
        print(f"  {k:<22} {v:>15,}")
    print(f"  non-embedding params   {counts['total (unique)'] - counts['embed_tokens']:>15,}")
    return counts


def main() -> None:
    torch.manual_seed(0)
    tiny_cfg = AutoConfig.for_model(**TINY_QWEN3)
    tiny = AutoModelForCausalLM.from_config(tiny_cfg, dtype=torch.float32).eval()
    print(f"model class: {type(tiny).__name__}; hub config torch_dtype {TINY_QWEN3['torch_dtype']!r}, "
          f"built here in {tiny.dtype}")

    print("\n== module tree (one decoder layer; the other layers are identical) ==")
    for name, mod in tiny.named_modules():
        depth = name.count(".")
        if name.startswith("model.layers.") and not name.startswith("model.layers.0"):
            continue
        if depth > 4 or not name:
            continue
        shape = tuple(mod.weight.shape) if isinstance(getattr(mod, "weight", None), torch.Tensor) else ""
        print(f"  {'  ' * depth}{name.rsplit('.', 1)[-1]:<26} {type(mod).__name__:<22} {shape}")

    # Grouped-query attention: k/v project to fewer heads, each K/V head serves n_q / n_kv query heads.
    attn = tiny.model.layers[0].self_attn
    nq, nkv, hd = tiny_cfg.num_attention_heads, tiny_cfg.num_key_value_heads, tiny_cfg.head_dim
    print("\n== grouped-query attention (GQA) ==")
    print(f"  q_proj out = {attn.q_proj.out_features} = {nq} heads x {hd}")
    print(f"  k_proj out = {attn.k_proj.out_features} = {nkv} heads x {hd}  (v_proj the same)")
    print(f"  each K/V head is shared by {nq // nkv} query heads; Qwen3 adds per-head RMSNorm on q and k "
          f"(q_norm/k_norm over head_dim={attn.q_norm.weight.numel()})")
    assert attn.q_proj.out_features == nq * hd and attn.k_proj.out_features == nkv * hd
    assert attn.v_proj.out_features == nkv * hd

    # Tied embeddings: lm_head is the very same tensor as embed_tokens (Canary's checkpoint stores it once).
    tied = tiny.lm_head.weight is tiny.model.embed_tokens.weight
    print("\n== tied embeddings ==")
    print(f"  tie_word_embeddings={tiny_cfg.tie_word_embeddings}; lm_head.weight is embed_tokens.weight: {tied}")
    assert tied
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = tiny(ids).logits
        hidden = tiny.model(ids).last_hidden_state
    manual = hidden @ tiny.model.embed_tokens.weight.T
    print(f"  forward: ids {tuple(ids.shape)} -> logits {tuple(logits.shape)}; "
          f"|logits - hidden @ E^T|max = {(logits - manual).abs().max():.2e}")
    assert torch.allclose(logits, manual, atol=1e-5)

    tiny_counts = summary("tiny Qwen3 (TINY_QWEN3)", tiny_cfg, tiny)
    assert tiny_counts["total (unique)"] == formula(tiny_cfg)

    # The real LLM of Canary-Qwen-2.5B, on the meta device: shapes only, no memory, instant.
    full_cfg = AutoConfig.for_model(**QWEN3_1_7B)
    with torch.device("meta"):
        full = AutoModelForCausalLM.from_config(full_cfg)
    full_counts = summary("Qwen3-1.7B (QWEN3_1_7B, meta device)", full_cfg, full)
    assert full_counts["total (unique)"] == formula(full_cfg)
    print(f"\nQwen3-1.7B total {full_counts['total (unique)'] / 1e9:.3f} B params "
          f"(embedding {full_counts['embed_tokens'] / 1e9:.3f} B, counted once since tied); "
          f"both counts match the closed-form formula.")
    print(f"tiny model: {tiny_counts['embed_tokens'] / tiny_counts['total (unique)']:.1%} of its params are the "
          f"embedding (full vocab {tiny_cfg.vocab_size:,} kept so the real tokenizer works).")


if __name__ == "__main__":
    main()
