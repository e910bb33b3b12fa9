"""Checkpoint files and weight loading: find ``config.json`` + ``model.safetensors``, map keys, load strictly.

Key mapping: our module names equal the checkpoint's everywhere except two places, listed in ``KEY_MAP``:
the FastConformer, whose inner names are transformers' Parakeet names, and the token embedding, which NeMo keeps
outside the LLM (``embed_tokens.weight``) while we leave it inside it, where Hugging Face expects it. The Whisper +
LLM design (:mod:`nemo_lite.whisper_adapter`) has its own prefix tables here, ``WHISPER_KEY_MAP`` (a Whisper
checkpoint) and ``MERGED_KEY_MAP`` (the original project's merged Qwen2-VL + audio checkpoint), applied by
:func:`map_key`; its Hugging Face-layout files are read by :func:`read_strict`.

Loading is strict: every tensor in the file must map to a parameter or buffer of the model with the same shape,
and every parameter and buffer must be filled. Tensors are read one at a time with plain file reads,
cast straight to the target dtype and assigned into the meta-device model, so the weights exist once in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
LLM_BACKBONE_DIR = "llm_backbone"  # NeMo: an LLM config saved beside the checkpoint
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "added_tokens.json")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, damaged, or does not match the model its config describes."""


# (NeMo checkpoint fragment, our fragment), applied in order to keys under ``perception.encoder.``.
KEY_MAP: list[tuple[str, str]] = [
    ("perception.encoder.pre_encode.conv.", "perception.encoder.subsampling.layers."),
    ("perception.encoder.pre_encode.out.", "perception.encoder.subsampling.linear."),
    (".self_attn.linear_q.", ".self_attn.q_proj."),
    (".self_attn.linear_k.", ".self_attn.k_proj."),
    (".self_attn.linear_v.", ".self_attn.v_proj."),
    (".self_attn.linear_out.", ".self_attn.o_proj."),
    (".self_attn.linear_pos.", ".self_attn.relative_k_proj."),
    (".self_attn.pos_bias_u", ".self_attn.bias_u"),
    (".self_attn.pos_bias_v", ".self_attn.bias_v"),
    (".conv.batch_norm.", ".conv.norm."),
]
NEMO_EMBED_KEY = "embed_tokens.weight"

# Whisper checkpoint prefix -> our WhisperLLM encoder prefix (first match wins; see map_key): full
# WhisperForConditionalGeneration files say ``model.encoder.``, WhisperModel/encoder-only files ``encoder.``.
WHISPER_KEY_MAP: list[tuple[str, str]] = [("model.encoder.", "encoder."), ("encoder.", "encoder.")]
WHISPER_SKIP = ("model.decoder.", "decoder.", "proj_out.")  # dropped on purpose: the Whisper decoder is unused
# The original Qwen2-VL-Audio-Adapter merged checkpoint prefix -> our WhisperLLM prefix (first match wins).
MERGED_KEY_MAP: list[tuple[str, str]] = [
    ("audio_encoder.", "encoder."),
    ("audio_projector.", "projector."),
    ("model.language_model.", "llm.model."),  # Qwen2-VL as transformers >= 4.52 names it in memory
    ("model.", "llm.model."),  # Qwen2-VL as save_pretrained writes it (legacy names)
    ("lm_head.", "llm.lm_head."),
]
MERGED_SKIP = ("visual.", "model.visual.")  # the vision tower: no image path here


def to_ours(key: str, llm_prefix: str) -> str:
    """NeMo checkpoint key -> our state_dict key (``llm_prefix`` is where the embedding lives in our LLM)."""
    if key == NEMO_EMBED_KEY:
        return llm_prefix + "embed_tokens.weight"
    if key.startswith("perception.encoder."):
        for nemo, ours in KEY_MAP:
            key = key.replace(nemo, ours)
    return key


def to_nemo(key: str, llm_prefix: str) -> str:
    """Our state_dict key -> NeMo checkpoint key (inverse of :func:`to_ours`)."""
    if key == llm_prefix + "embed_tokens.weight":
        return NEMO_EMBED_KEY
    if key.startswith("perception.encoder."):
        for nemo, ours in reversed(KEY_MAP):
            key = key.replace(ours, nemo)
    return key


def map_key(key: str, table: list[tuple[str, str]], skip: tuple[str, ...]) -> str | None:
    """Checkpoint key -> our key by the first matching prefix; None for a deliberately skipped key."""
    if key.startswith(skip):
        return None
    for theirs, ours in table:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return key


def whisper_key(key: str) -> str | None:
    """A Whisper checkpoint key -> our WhisperLLM key (None: skipped), by :data:`WHISPER_KEY_MAP`."""
    return map_key(key, WHISPER_KEY_MAP, WHISPER_SKIP)


def merged_key(key: str) -> str | None:
    """A merged Qwen2-VL + audio checkpoint key -> our WhisperLLM key (None: skipped), by :data:`MERGED_KEY_MAP`."""
    return map_key(key, MERGED_KEY_MAP, MERGED_SKIP)


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A local directory in the hub layout, or a hub repo id downloaded (and cached) with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise CheckpointError(f"{path} has no {name}: a checkpoint directory needs {CONFIG_FILE} and "
                                      f"{WEIGHTS_FILE} (the layout of the hub repo nvidia/canary-qwen-2.5b)")
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise CheckpointError(f"{name_or_path!r} is neither a checkpoint directory nor a hub repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        patterns = [CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES, f"{LLM_BACKBONE_DIR}/*"]
        return Path(snapshot_download(str(name_or_path), allow_patterns=patterns))
    except Exception as err:  # offline, unknown repo, auth: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {name_or_path!r} from the Hugging Face hub ({type(err).__name__}: {err}).\n"
            f"If the hub is unreachable, point at a local copy instead: a directory holding {CONFIG_FILE} and "
            f"{WEIGHTS_FILE}, e.g. CanaryQwen.from_pretrained('/path/to/canary-qwen-2.5b') or "
            f"`nemo-lite transcribe --model /path/to/canary-qwen-2.5b FILE`."
        ) from err


def read_config(ckpt_dir: Path) -> dict:
    try:
        return json.loads((ckpt_dir / CONFIG_FILE).read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{ckpt_dir / CONFIG_FILE} is not valid JSON: {err}") from err


def local_artifacts(ckpt_dir: Path, cfg: dict) -> dict:
    """Point the config at a tokenizer / LLM config saved beside the checkpoint, as NeMo's
    ``_inject_local_artifact_paths`` does (nemo/collections/speechlm2/parts/hf_hub.py)."""
    cfg = dict(cfg)
    if (ckpt_dir / "tokenizer_config.json").is_file() and "pretrained_llm" in cfg:
        cfg["tokenizer_path"] = str(ckpt_dir)
    if (ckpt_dir / LLM_BACKBONE_DIR / CONFIG_FILE).is_file() and "pretrained_llm" in cfg:
        cfg["pretrained_llm"] = str(ckpt_dir / LLM_BACKBONE_DIR)
    return cfg


# safetensors dtype names -> torch dtypes
SAFETENSORS_DTYPES = {
    "BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}
HEADER_LEN_BYTES = 8  # little-endian u64 size of the JSON header that opens a safetensors file


def read_header(path: Path) -> tuple[dict[str, dict], int]:
    """Parse and validate a safetensors header: {key: {dtype, shape, data_offsets}}, offset of the data block.

    Every tensor's byte range must match its dtype and shape and lie inside the file, so a truncated or
    corrupt file fails here, naming the first tensor that is cut off.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_LEN_BYTES)
        n = int.from_bytes(raw, "little") if len(raw) == HEADER_LEN_BYTES else -1
        if n <= 0 or HEADER_LEN_BYTES + n > size:
            raise CheckpointError(f"{path} is not a safetensors file or is truncated (header of {n} bytes, "
                                  f"file of {size} bytes)")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from err
    header.pop("__metadata__", None)
    start = HEADER_LEN_BYTES + n
    for key, info in header.items():
        dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {key!r} has unsupported dtype {info.get('dtype')!r}")
        begin, end = info["data_offsets"]
        nbytes = math.prod(info["shape"]) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"{path}: tensor {key!r} spans {end - begin} bytes, its shape needs {nbytes}")
        if start + end > size:
            raise CheckpointError(f"{path} is truncated: tensor {key!r} ends at byte {start + end}, "
                                  f"the file has {size}")
    return header, start


def read_state_dict(
    path: Path, expected: dict[str, torch.Size], llm_prefix: str, dtype: torch.dtype, device: torch.device,
    keep_fp32: tuple[str, ...] = (),
    keep_file_dtype: frozenset[str] = frozenset(),
) -> dict[str, torch.Tensor]:
    """Read every tensor of ``path``, mapped to our keys and cast to ``dtype`` on ``device``; check them all.

    ``expected`` maps our keys to shapes. Integer tensors keep their dtype; keys starting with one of
    ``keep_fp32`` stay fp32 (the mel window and filterbank); keys in ``keep_file_dtype`` keep the file's dtype
    (weights about to be quantized: no fp32 copy of them is ever made). Tensors are read with plain file reads, one at a
    time, rather than through a memory map: mapped pages count in the process's resident memory, so mapping a
    5 GB file while building a 10 GB fp32 model would push the peak to 15 GB.
    """
    header, start = read_header(path)
    unexpected = [k for k in header if to_ours(k, llm_prefix) not in expected]
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} tensor(s) the model does not have, e.g. {unexpected[:5]}")
    wrong = [(k, v["shape"], tuple(expected[to_ours(k, llm_prefix)])) for k, v in header.items()
             if tuple(v["shape"]) != tuple(expected[to_ours(k, llm_prefix)])]
    if wrong:
        key, got, want = wrong[0]
        raise CheckpointError(f"{path}: tensor {key!r} has shape {tuple(got)}, the model expects {want}")
    missing = sorted(set(expected) - {to_ours(k, llm_prefix) for k in header})
    if missing:
        names = [to_nemo(k, llm_prefix) for k in missing[:5]]
        raise CheckpointError(f"{path}: {len(missing)} tensor(s) missing, e.g. {names}")
    out: dict[str, torch.Tensor] = {}
    with open(path, "rb") as f:
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            buf = bytearray(end - begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path}: tensor {key!r} cannot be read in full (file changed?)")
            t = torch.frombuffer(buf, dtype=SAFETENSORS_DTYPES[info["dtype"]]) if buf else \
                torch.empty(0, dtype=SAFETENSORS_DTYPES[info["dtype"]])
            t = t.reshape(info["shape"])
            ours = to_ours(key, llm_prefix)
            if t.is_floating_point():
                target = t.dtype if ours in keep_file_dtype else \
                    torch.float32 if ours.startswith(keep_fp32) else dtype
                t = t.to(device=device, dtype=target)
            else:
                t = t.to(device=device)
            out[ours] = t
    return out


def check_no_meta(model: torch.nn.Module) -> None:
    """Fail if any parameter or buffer was left unfilled on the meta device."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"model tensors not filled by the checkpoint: {left[:5]}")


# ---------------------------------------------------------------------- Hugging Face-layout checkpoints
# (the Whisper + LLM design: Whisper, causal LM and merged checkpoints, possibly sharded)
def resolve_dir(name_or_path: str | os.PathLike, base: Path | None = None) -> Path:
    """A local directory (relative to ``base`` when given), or a hub repo downloaded with huggingface_hub."""
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and base is not None and (base / path).is_dir():
        return base / path
    if path.is_dir():
        return path
    if str(name_or_path).count("/") != 1 or path.exists():
        raise CheckpointError(f"{name_or_path!r} is neither a directory nor a hub repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as err:
        raise CheckpointError(f"could not fetch {name_or_path!r} from the hub ({type(err).__name__}: {err}); "
                              "point at a local copy of the checkpoint instead") from err


def safetensors_files(ckpt: Path) -> list[Path]:
    """``model.safetensors``, or the shards named by ``model.safetensors.index.json``."""
    index = ckpt / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [ckpt / s for s in shards]
    if (ckpt / "model.safetensors").is_file():
        return [ckpt / "model.safetensors"]
    raise CheckpointError(f"{ckpt} has no model.safetensors (or model.safetensors.index.json)")


def read_strict(files: list[Path], expected: dict[str, torch.Size], key_map: Callable[[str], str | None],
                dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` mapped to our keys, cast to ``dtype`` on ``device``; unknown, missing or
    mis-shaped tensors raise :class:`CheckpointError`."""
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for key in f.keys():
                ours = key_map(key)
                if ours is None:
                    continue
                if ours not in expected:
                    unexpected.append(key)
                    continue
                t = f.get_tensor(key)
                if t.shape != expected[ours]:
                    raise CheckpointError(f"{file}: {key!r} has shape {tuple(t.shape)}, the model expects "
                                          f"{tuple(expected[ours])}")
                out[ours] = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
    if unexpected:
        raise CheckpointError(f"{files[0].parent}: {len(unexpected)} tensor(s) the model does not have, e.g. "
                              f"{unexpected[:5]}")
    missing = sorted(set(expected) - set(out))
    if missing:
        raise CheckpointError(f"{files[0].parent}: {len(missing)} tensor(s) missing, e.g. {missing[:5]}")
    return out


def expected_shapes(module: torch.nn.Module, prefix: str = "") -> tuple[dict[str, torch.Size], str | None]:
    """Our keys and shapes for ``module``, less a tied ``lm_head`` (returned separately; checkpoints omit it)."""
    from transformers import PreTrainedModel

    shapes = {prefix + k: t.shape for k, t in module.state_dict(keep_vars=True).items()}
    lm = next((m for m in module.modules() if isinstance(m, PreTrainedModel) and hasattr(m, "lm_head")), None)
    head = next((k for k in shapes if k.endswith("lm_head.weight")), None)
    if lm is not None and head is not None and getattr(lm.config, "tie_word_embeddings", False):
        shapes.pop(head)
        return shapes, head
    return shapes, None
