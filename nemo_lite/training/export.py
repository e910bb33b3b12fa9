"""Save a (fine-tuned) CanaryQwen in the hub layout that both nemo_lite and NeMo's ``SALM.from_pretrained`` load.

Layout (that of ``nvidia/canary-qwen-2.5b``): ``config.json`` — the source checkpoint's file, copied byte for byte
(NeMo's SALM config; a model built without one gets ``cfg.extra`` dumped) — and ``model.safetensors`` with NeMo's
tensor names (:func:`nemo_lite.weights.to_nemo`): ``embed_tokens.weight`` at the top level, the LLM under
``llm.base_model.model.*`` with its LoRA tensors, the FastConformer under NeMo's names, ``perception.proj.*`` and the
mel window/filterbank. The tied ``lm_head`` is not stored (NeMo ties it on load). Tokenizer files and an
``llm_backbone/`` directory beside the source checkpoint are copied too, so the export resolves the same way.

dtype: float32 by default, so a fine-tune round-trips exactly; ``bfloat16`` gives the hub's file size (NeMo and
nemo_lite compute in fp32 either way). Integer tensors (BatchNorm ``num_batches_tracked``) keep int64.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file

from ..llm import base_causal_lm, input_embeddings
from ..weights import CONFIG_FILE, LLM_BACKBONE_DIR, TOKENIZER_FILES, WEIGHTS_FILE, to_nemo

if TYPE_CHECKING:
    from ..canary_qwen import CanaryQwen


def llm_prefix(model: CanaryQwen) -> str:
    """Where the token embedding lives in our state dict (``llm.base_model.model.model.`` with LoRA)."""
    embed = input_embeddings(model.llm)
    for name, module in model.named_modules():
        if module is embed:
            return name[: -len("embed_tokens")]
    raise ValueError("the LLM has no input embedding")


def nemo_state_dict(model: CanaryQwen, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Our tensors under NeMo's checkpoint names, on CPU, floating ones cast to ``dtype``; tied head dropped."""
    prefix = llm_prefix(model)
    lm = base_causal_lm(model.llm)
    tied = bool(getattr(lm.config, "tie_word_embeddings", False))
    out = {}
    for key, t in model.state_dict().items():
        if tied and key.endswith("lm_head.weight"):
            continue
        t = t.detach().cpu()
        out[to_nemo(key, prefix)] = (t.to(dtype) if t.is_floating_point() else t).contiguous()
    return out


def export_canary(model: CanaryQwen, out_dir: str | Path, source: str | Path | None = None,
                  dtype: torch.dtype = torch.float32) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ the source's tokenizer files / llm_backbone) to ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = Path(source) if source is not None else None
    if src is not None and (src / CONFIG_FILE).is_file():
        shutil.copyfile(src / CONFIG_FILE, out / CONFIG_FILE)
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        if (src / LLM_BACKBONE_DIR).is_dir():
            shutil.copytree(src / LLM_BACKBONE_DIR, out / LLM_BACKBONE_DIR, dirs_exist_ok=True)
    else:
        (out / CONFIG_FILE).write_text(json.dumps(model.cfg.extra, indent=1))
    save_file(nemo_state_dict(model, dtype), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    return out
