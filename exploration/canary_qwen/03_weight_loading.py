"""Step 3 - the checkpoint: its keys, how they map onto our modules, strict loading, and damaged files.

Writes a tiny random checkpoint in the hub layout (``config.json`` + ``model.safetensors``, bf16) with
``nemo_lite.testing``, lists its keys grouped by prefix, shows the two places where NeMo's names differ from ours
(FastConformer internals -> transformers' Parakeet names, and the top-level ``embed_tokens.weight`` -> inside the
LLM) with ``nemo_lite.weights.to_ours`` / ``to_nemo``, loads it with ``CanaryQwen.from_pretrained`` and checks a few
tensors, then shows that a copy with a tensor removed or reshaped is refused with a ``CheckpointError`` naming it.

Run: python exploration/canary_qwen/03_weight_loading.py
"""

from __future__ import annotations

import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import nemo_lite
from nemo_lite.testing import tiny_salm_config, write_checkpoint, write_llm_dir
from nemo_lite.weights import KEY_MAP, NEMO_EMBED_KEY, WEIGHTS_FILE, to_nemo, to_ours

LLM_PREFIX = "llm.base_model.model.model."  # where the embedding lives in our (peft-wrapped) LLM


def group(key: str) -> str:
    """Collapse layer indices and leaf names: 'a.layers.3.b.weight' -> 'a.layers.{i}.b'."""
    key = re.sub(r"\.layers\.\d+\.", ".layers.{i}.", key)
    parts = key.split(".")
    for stop in ("{i}", "featurizer", "conv", "out"):
        if stop in parts:
            return ".".join(parts[: parts.index(stop) + 1])
    return ".".join(parts[:-1]) or key


def damaged_copy(src: Path, dst: Path, edit) -> Path:
    dst.mkdir()
    shutil.copy(src / "config.json", dst / "config.json")
    state = load_file(str(src / WEIGHTS_FILE))
    edit(state)
    save_file(state, str(dst / WEIGHTS_FILE))
    return dst


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation noise from peft
    tmp = Path(tempfile.mkdtemp(prefix="canary_step3_"))
    try:
        llm_dir = write_llm_dir(tmp / "llm")  # Qwen3 config.json (TINY_QWEN3) + the real tokenizer files
        cfg = tiny_salm_config(llm_dir)
        ckpt = write_checkpoint(tmp / "ckpt", cfg)
        print(f"checkpoint dir {ckpt.name}/: {sorted(p.name for p in ckpt.iterdir())}; LLM dir {llm_dir.name}/: "
              f"{sorted(p.name for p in llm_dir.iterdir())}")

        with safe_open(str(ckpt / WEIGHTS_FILE), framework="pt") as f:
            keys = list(f.keys())
            dtypes = Counter(str(f.get_slice(k).get_dtype()) for k in keys)
        print(f"\n== {len(keys)} tensors in model.safetensors, dtypes {dict(dtypes)} ==")
        for prefix, n in sorted(Counter(group(k) for k in keys).items()):
            print(f"  {n:>4}  {prefix}")
        assert NEMO_EMBED_KEY in keys and not any(k.endswith("lm_head.weight") for k in keys)
        print(f"  ('{NEMO_EMBED_KEY}' sits at top level; no lm_head: it is tied to the embedding)")

        print("\n== NeMo key -> our key (nemo_lite.weights.to_ours), KEY_MAP has", len(KEY_MAP), "rules ==")
        examples = [NEMO_EMBED_KEY, "perception.encoder.pre_encode.conv.0.weight",
                    "perception.encoder.pre_encode.out.weight", "perception.encoder.layers.0.self_attn.linear_q.weight",
                    "perception.encoder.layers.0.self_attn.linear_pos.weight",
                    "perception.encoder.layers.0.self_attn.pos_bias_u",
                    "perception.encoder.layers.0.conv.batch_norm.running_var",
                    "perception.encoder.layers.0.feed_forward1.linear1.weight", "perception.proj.weight",
                    "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"]
        for k in examples:
            assert k in keys, k
            ours = to_ours(k, LLM_PREFIX)
            print(f"  {k:<72} -> {ours if ours != k else '(unchanged)'}")
        renamed = [k for k in keys if to_ours(k, LLM_PREFIX) != k]
        round_trip = all(to_nemo(to_ours(k, LLM_PREFIX), LLM_PREFIX) == k for k in keys)
        print(f"  {len(renamed)} of {len(keys)} keys are renamed (all under perception.encoder. + the embedding); "
              f"to_nemo(to_ours(k)) == k for every key: {round_trip}")
        assert round_trip and all(k.startswith("perception.encoder.") or k == NEMO_EMBED_KEY for k in renamed)

        model = nemo_lite.CanaryQwen.from_pretrained(ckpt)
        ours = model.state_dict()
        print(f"\n== CanaryQwen.from_pretrained: {sum(p.numel() for p in model.parameters()):,} params, dtype "
              f"{model.dtype}, device {model.device} ==")
        file = load_file(str(ckpt / WEIGHTS_FILE))
        for k in ("perception.proj.weight", "perception.encoder.layers.0.self_attn.linear_q.weight", NEMO_EMBED_KEY):
            ok = torch.equal(ours[to_ours(k, LLM_PREFIX)], file[k].float())
            print(f"  {to_ours(k, LLM_PREFIX):<62} == file[{k!r}] (bf16 -> fp32): {ok}")
            assert ok
        lm = model.llm.get_base_model()
        tied = lm.lm_head.weight is lm.get_input_embeddings().weight
        window = model.perception.preprocessor.featurizer.window
        print(f"  lm_head tied to embed_tokens: {tied}; mel window dtype {window.dtype} (kept fp32 at any dtype)")
        assert tied

        print("\n== damaged copies are refused, naming the tensor ==")
        victim = "perception.encoder.layers.1.self_attn.linear_v.weight"
        cases = {
            "tensor removed": lambda s: s.pop(victim),
            "wrong shape": lambda s: s.__setitem__(victim, s[victim][:-1].contiguous()),
            "extra tensor": lambda s: s.__setitem__("perception.encoder.extra.weight", torch.zeros(2)),
        }
        for i, (what, edit) in enumerate(cases.items()):
            bad = damaged_copy(ckpt, tmp / f"bad{i}", edit)
            try:
                nemo_lite.CanaryQwen.from_pretrained(bad)
            except nemo_lite.CheckpointError as err:
                msg = str(err).replace(str(bad), "<dir>")
                print(f"  {what:<15} CheckpointError: {msg}")
                named = victim if what != "extra tensor" else "perception.encoder.extra.weight"
                assert named in msg or to_ours(named, LLM_PREFIX) in msg, msg
            else:
                raise AssertionError(f"{what}: the damaged checkpoint loaded")
        print("  (a missing tensor is reported under our name, the mapped key; shape errors under the file's)")
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
