"""``nemo-lite export --merge-lora``: a Qwen2-VL audio adapter in the seed's published layout.

The seed published ``merge_and_unload()`` of its stage-2 model saved by its transformers-4.45 fork: a Qwen2-VL
``config.json``, sharded safetensors (``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json``) whose
keys are 4.45 names (``model.layers.*``, ``model.embed_tokens.*``, ``model.norm.*``, ``visual.*``, ``lm_head.*``)
plus ``audio_encoder.*`` (WhisperEncoder names) and ``audio_projector.weight``, and the tokenizer. This writes the
same, from a WhisperLLM with a Qwen2-VL backbone, LoRA folded into the base weights (peft's merge), plus the image
processor config. nemo_lite loads the result (:meth:`WhisperLLM.from_pretrained <nemo_lite.whisper_adapter.
WhisperLLM.from_pretrained>`) and its key names are the fork's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for annotations: `nemo-lite --help` builds this parser without importing it
    import torch

    from ..whisper_adapter import WhisperLLM

SHARD_BYTES = 5 << 30  # 5 GB shards, save_pretrained's default max_shard_size


def export_published(model: WhisperLLM, out: str | Path, dtype: torch.dtype | None = None,
                     max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Write ``model`` (LoRA merged) in the seed's published layout to ``out``; ``dtype``: the weights' dtype
    (default: the model's)."""
    from ..llm import base_causal_lm, is_peft
    from ..vision import has_vision, legacy_key
    from ..weights import write_sharded

    if not has_vision(model.llm):
        raise ValueError("the seed's published layout is a Qwen2-VL checkpoint; this model's LLM is "
                         f"{type(base_causal_lm(model.llm)).__name__} (save it with save_pretrained instead)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lm = model.llm.merge_and_unload() if is_peft(model.llm) else model.llm
    cast = (lambda t: t.detach().to("cpu", dtype) if dtype is not None else t.detach().cpu())
    state = {legacy_key(k): cast(v) for k, v in lm.state_dict().items()}
    if getattr(lm.config.get_text_config(), "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    state.update({"audio_encoder." + k: cast(v) for k, v in model.encoder.state_dict().items()})
    state["audio_projector.weight"] = cast(model.projector.weight)
    lm.config.save_pretrained(str(out))
    write_sharded(out, state, max_shard_bytes, always_shard=True)  # the published layout: an index even for one shard
    model.tokenizer.save_pretrained(str(out))
    if model.image_processor is not None:
        model.image_processor.save_pretrained(str(out))
    return out


def cmd_export(args: argparse.Namespace) -> int:
    from ..runtime import resolve_dtype
    from ..whisper_adapter import WhisperLLM

    if not args.merge_lora:
        raise SystemExit("nemo-lite export: the seed's layout holds merged weights; pass --merge-lora")
    model = WhisperLLM.from_pretrained(args.model, device="cpu", dtype=args.dtype)
    out = export_published(model, args.out, resolve_dtype(args.dtype), int(args.max_shard_gb * (1 << 30)))
    print(f"nemo-lite: wrote {out} (the Qwen2-VL audio adapter's published layout)", file=sys.stderr)
    return 0


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite export MODEL OUT --merge-lora [--dtype D] [--max-shard-gb G]``."""
    p = subparsers.add_parser("export", help="write a Qwen2-VL audio adapter in the seed's published layout")
    p.add_argument("model", help="a WhisperLLM directory with a Qwen2-VL backbone (e.g. output_dir/model)")
    p.add_argument("out", help="output directory")
    p.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapter into the base weights")
    p.add_argument("--dtype", default="float32", help="weights' dtype (the seed's: bfloat16)")
    p.add_argument("--max-shard-gb", type=float, default=5.0, help="largest shard file, in GB")
    p.set_defaults(func=cmd_export)
    return p
