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
# The original Qwen2-VL-Audio-Adapter merged checkpoint prefix -> our WhisperLLM prefix (first match wins). The LLM
# is transformers' own Qwen2VLForConditionalGeneration (5.x names in memory); checkpoints use 4.45 names
# (``model.layers.*``, ``visual.*``) or 5.x names (``model.language_model.*``, ``model.visual.*``). Nothing is skipped:
# the vision tower is loaded and used (see nemo_lite.vision.VL_KEY_MAP, the same table without the ``llm.`` prefix).
MERGED_KEY_MAP: list[tuple[str, str]] = [
    ("audio_encoder.", "encoder."),
    ("audio_projector.", "projector."),
    ("model.language_model.", "llm.model.language_model."),
    ("model.visual.", "llm.model.visual."),
    ("visual.", "llm.model.visual."),
    ("model.", "llm.model.language_model."),  # 4.45's text model
    ("lm_head.", "llm.lm_head."),
]
MERGED_SKIP: tuple[str, ...] = ()  # nothing dropped on purpose


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


HUB_HELP = ("without hub access, point --model at a local checkpoint directory (config.json + model.safetensors, "
            "e.g. a copy of nvidia/canary-qwen-2.5b) and --llm-path at a local directory with the config and "
            "tokenizer files of the LLM it names (Qwen/Qwen3-1.7B); in Python: from_pretrained(DIR, llm_path=LLM_DIR)")


def resolve(name_or_path: str | os.PathLike, base: Path | None = None,
            patterns: tuple[str, ...] = ("*.json", "*.safetensors", "*.txt", "*.model")) -> Path:
    """The one resolver: a local directory (relative to ``base`` when given), or a hub repo id (owner/name)
    downloaded and cached by huggingface_hub (only files matching ``patterns``).

    Hub failures (offline, unknown repo, auth) raise :class:`CheckpointError` at once, with no retry loop:
    ``snapshot_download`` answers from its cache or fails fast, unlike transformers' per-file retries (30 s).
    """
    path = Path(name_or_path).expanduser()
    if not path.is_absolute() and base is not None and (base / path).is_dir():
        return base / path
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).count("/") != 1:
        raise CheckpointError(f"{str(name_or_path)!r} is neither a directory nor a hub repo id (owner/name)")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=list(patterns)))
    except Exception as err:  # offline, unknown repo, auth: all end the same way for the user
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"could not fetch {str(name_or_path)!r} from the Hugging Face hub ({reason}); "
                              f"{HUB_HELP}") from err


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A Canary-Qwen checkpoint directory in the hub layout (``config.json`` + ``model.safetensors``), local or
    downloaded by :func:`resolve`."""
    path = resolve(name_or_path, patterns=(CONFIG_FILE, WEIGHTS_FILE, *TOKENIZER_FILES, f"{LLM_BACKBONE_DIR}/*"))
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"{path} has no {name}: a checkpoint directory needs {CONFIG_FILE} and "
                                  f"{WEIGHTS_FILE} (the layout of the hub repo nvidia/canary-qwen-2.5b)")
    return path


LLM_PATTERNS = ("*.json", "*.txt", "*.model", "*.tiktoken")  # an LLM's config + tokenizer files, never its weights


def llm_dirs(pretrained_llm: str, tokenizer_path: str, llm_path: str | os.PathLike | None) -> tuple[Path, Path]:
    """Local directories of the LLM config and of the tokenizer a Canary checkpoint names (``llm_path`` for both
    when given), fetched by :func:`resolve` when they are hub ids."""
    src = str(llm_path) if llm_path else pretrained_llm
    tok_src = str(llm_path) if llm_path else tokenizer_path
    return resolve(src, patterns=LLM_PATTERNS), resolve(tok_src, patterns=LLM_PATTERNS)


def load_llm_config_and_tokenizer(pretrained_llm: str, tokenizer_path: str, llm_path: str | os.PathLike | None,
                                  audio_tag: str, from_tokenizer_json: bool = False):
    """The LLM config and tokenizer a Canary checkpoint names (``pretrained_llm``), or those in ``llm_path``;
    the audio tag appended as a special token (NeMo does the same: id 151669 for Qwen3; the embedding keeps its
    rows).

    ``from_tokenizer_json``: build the tokenizer straight from its ``tokenizer.json`` (transformers'
    ``PreTrainedTokenizerFast``, the tokenizers library's parser) instead of the LLM's own class, which for Qwen
    rebuilds the 151k-entry vocabulary and merges in Python first: 0.5-1.5 s sooner, the same ids, text, special
    tokens and chat template (tests/test_prequant.py). Used for pre-quantized directories, whose files we wrote."""
    from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast

    src = str(llm_path) if llm_path else pretrained_llm
    try:
        config_dir, tokenizer_dir = llm_dirs(pretrained_llm, tokenizer_path, llm_path)
        llm_config = AutoConfig.from_pretrained(config_dir)
        if from_tokenizer_json and (tokenizer_dir / "tokenizer.json").is_file():
            tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
        else:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, use_fast=True)
    except (OSError, ValueError, CheckpointError) as err:
        reason = str(err).split("; without hub access")[0].splitlines()[0]
        raise CheckpointError(
            f"cannot load the LLM config/tokenizer {src!r} named by the checkpoint's pretrained_llm ({reason}); "
            f"without hub access pass --llm-path DIR (llm_path= in Python): a directory with that LLM's "
            f"config.json and tokenizer files (e.g. a local copy of Qwen/Qwen3-1.7B)") from err
    tokenizer.add_special_tokens({"additional_special_tokens": [audio_tag]})
    return llm_config, tokenizer


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
# Bytes read through one opening of a file's memory map before it is closed again. Mapped pages that were read
# count in the process's resident memory until the map is closed, so reading a 5 GB file through one map while
# building a 10 GB fp32 model would peak at 15 GB; re-opening every 256 MB bounds that overhead to 256 MB.
MAP_WINDOW_BYTES = 256 << 20


def open_safetensors(path: Path):
    """``safe_open`` on ``path``; a truncated or corrupt file raises :class:`CheckpointError` naming it."""
    from safetensors import SafetensorError

    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err


def file_dtypes(path: Path, llm_prefix: str) -> dict[str, torch.dtype]:
    """Our key -> stored dtype for every tensor of a hub-layout ``model.safetensors``."""
    with open_safetensors(path) as f:
        return {to_ours(k, llm_prefix): SAFETENSORS_DTYPES[f.get_slice(k).get_dtype()] for k in f.keys()}


def read_state_dict(path: Path, model: torch.nn.Module, llm_prefix: str, dtype: torch.dtype, device: torch.device,
                    keep_fp32: tuple[str, ...] = (), keep_file_dtype: frozenset[str] = frozenset(),
                    ) -> dict[str, torch.Tensor]:
    """A hub-layout (NeMo) checkpoint file -> ``model``'s full state dict (tied head included), checked strictly.

    Keys map by :func:`to_ours`; see :func:`read_strict` for the checks, dtypes and memory.
    """
    expected, tie = expected_shapes(model)
    state = read_strict([path], expected, lambda k: to_ours(k, llm_prefix), dtype, device, keep_fp32, keep_file_dtype,
                        describe=lambda k: to_nemo(k, llm_prefix))
    return tie_head(state, tie)


def check_no_meta(model: torch.nn.Module) -> None:
    """Fail if any parameter or buffer was left unfilled on the meta device."""
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"model tensors not filled by the checkpoint: {left[:5]}")


# ---------------------------------------------------------------------- Hugging Face-layout checkpoints
# (the Whisper + LLM design: Whisper, causal LM and merged checkpoints, possibly sharded)
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
                dtype: torch.dtype, device: torch.device, keep_fp32: tuple[str, ...] = (),
                keep_file_dtype: frozenset[str] = frozenset(), describe: Callable[[str], str] = str,
                ) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` mapped to our keys (``key_map``; None = skipped on purpose) and cast to ``dtype``
    on ``device``; unknown, missing or mis-shaped tensors and damaged files raise :class:`CheckpointError`.

    Integer tensors keep their dtype; keys starting with one of ``keep_fp32`` become fp32 (the mel window and
    filterbank); keys in ``keep_file_dtype`` keep the file's dtype (weights about to be quantized or held narrow:
    no wide copy of them is ever made). Tensors are read one at a time through safetensors' own reader, the file's
    map re-opened every :data:`MAP_WINDOW_BYTES` so that the pages read do not pile up in resident memory.
    ``describe``: our key -> the name shown for a missing tensor (the checkpoint's own name).
    """
    out: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for file in files:
        with open_safetensors(file) as f:
            keys = list(f.keys())
            for key in keys:
                ours = key_map(key)
                if ours is not None and ours not in expected:
                    unexpected.append(key)
                elif ours is not None and tuple(f.get_slice(key).get_shape()) != tuple(expected[ours]):
                    raise CheckpointError(f"{file}: tensor {key!r} has shape {tuple(f.get_slice(key).get_shape())}, "
                                          f"the model expects {tuple(expected[ours])}")
        if unexpected:
            raise CheckpointError(f"{file}: {len(unexpected)} tensor(s) the model does not have, e.g. "
                                  f"{unexpected[:5]}")
        wanted = [k for k in keys if key_map(k) is not None]
        start = 0
        while start < len(wanted):
            read = 0
            with open_safetensors(file) as f:
                while start < len(wanted) and read < MAP_WINDOW_BYTES:
                    key, ours = wanted[start], key_map(wanted[start])
                    t = f.get_tensor(key)
                    read += t.numel() * t.element_size()
                    out[ours] = _place(t, ours, dtype, device, keep_fp32, keep_file_dtype)
                    start += 1
    missing = sorted(set(expected) - set(out))
    if missing:
        names = [describe(k) for k in missing[:5]]
        raise CheckpointError(f"{files[0].parent}: {len(missing)} tensor(s) missing, e.g. {names}")
    return out


def _place(t: torch.Tensor, ours: str, dtype: torch.dtype, device: torch.device, keep_fp32: tuple[str, ...],
           keep_file_dtype: frozenset[str]) -> torch.Tensor:
    if not t.is_floating_point():
        return t.to(device=device)
    target = t.dtype if ours in keep_file_dtype else torch.float32 if ours.startswith(keep_fp32) else dtype
    return t.to(device=device, dtype=target)


def expected_shapes(module: torch.nn.Module, prefix: str = "") -> tuple[dict[str, torch.Size], tuple[str, str] | None]:
    """Our keys and shapes for ``module``, less a tied output head (checkpoints omit it). The one place that
    knows about tied heads: returns ``(head_key, embedding_key)`` for :func:`tie_head`, or None."""
    shapes = {prefix + k: t.shape for k, t in module.state_dict(keep_vars=True).items()}
    for sub in module.modules():
        config = getattr(sub, "config", None)
        if not (getattr(config, "tie_word_embeddings", False) and hasattr(sub, "get_output_embeddings")):
            continue
        head, embed = sub.get_output_embeddings(), sub.get_input_embeddings()
        if head is None or embed is None:
            continue
        names = {id(m): n for n, m in module.named_modules()}
        head_key, embed_key = f"{prefix}{names[id(head)]}.weight", f"{prefix}{names[id(embed)]}.weight"
        shapes.pop(head_key, None)
        return shapes, (head_key, embed_key)
    return shapes, None


def tie_head(state: dict[str, torch.Tensor], tie: tuple[str, str] | None) -> dict[str, torch.Tensor]:
    """Point the tied output head at the embedding tensor (one tensor, two names)."""
    if tie is not None:
        state[tie[0]] = state[tie[1]]
    return state


# ---------------------------------------------------------------------- memory-mapped checkpoints
# (pre-quantized directories, nemo_lite.prequant: tensors used as stored, so nothing is read or copied at load)
HEADER_MAX_BYTES = 100 << 20  # a safetensors header above this is damage, not a header (safetensors' own limit)


def map_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file as a view of one copy-on-write memory map of it (nothing read or copied:
    pages come from the page cache when a tensor is first used, and count in resident memory only once touched).

    The header is checked before anything is mapped: a file cut short, a header that is not JSON, an unknown dtype,
    or a tensor whose bytes do not match its shape or lie past the end of the file raise :class:`CheckpointError`
    naming the file and the tensor (touching unmapped pages past the end would kill the process with SIGBUS).
    Unlike :func:`read_strict`, no re-opening per :data:`MAP_WINDOW_BYTES`: the tensors *are* the map, so it
    stays open while the model lives; file pages are reclaimable page cache, not anonymous memory.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, HEADER_MAX_BYTES):
            raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): its header "
                                  f"length field says {n} bytes, the file has {size}")
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CheckpointError(f"{path} is not a readable safetensors file: its header is not JSON "
                                  f"({err})") from None
    start = 8 + n
    storage = torch.UntypedStorage.from_file(str(path), False, size)  # MAP_PRIVATE: writes never reach the file
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = SAFETENSORS_DTYPES[info["dtype"]], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: tensor {key!r} has a damaged header entry {info!r}") from None
        nbytes = dtype.itemsize * int(torch.Size(shape).numel())
        if end - begin != nbytes or begin < 0 or start + end > size:
            raise CheckpointError(f"{path}: tensor {key!r} ({info['dtype']} {list(shape)}) needs bytes {begin}-{end} "
                                  f"of the data, the file holds {size - start} (truncated or damaged)")
        if (start + begin) % dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {key!r} is not aligned to its dtype in the file")
        out[key] = torch.empty(0, dtype=dtype).set_(storage, (start + begin) // dtype.itemsize, shape)
    return out


def read_mapped(files: list[Path], expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every tensor of ``files`` (:func:`map_safetensors`) checked against ``expected`` (our key -> a meta tensor
    of the right shape and dtype, e.g. a meta model's ``state_dict(keep_vars=True)``): a tensor the model does not
    have, one it lacks, a wrong shape or dtype, a key in two files, and damaged files raise :class:`CheckpointError`
    naming them. Tensors are used as stored (no cast, no copy)."""
    out: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{file} is missing (named by {file.parent / 'model.safetensors.index.json'})")
        tensors = map_safetensors(file)
        unexpected = sorted(set(tensors) - set(expected))
        if unexpected:
            raise CheckpointError(f"{file}: {len(unexpected)} tensor(s) the model does not have, e.g. {unexpected[:5]}")
        for key, t in tensors.items():
            want = expected[key]
            if key in out:
                raise CheckpointError(f"{file}: tensor {key!r} is also in another shard")
            if t.shape != want.shape or t.dtype != want.dtype:
                raise CheckpointError(f"{file}: tensor {key!r} is {str(t.dtype).removeprefix('torch.')} "
                                      f"{list(t.shape)}, the model expects {str(want.dtype).removeprefix('torch.')} "
                                      f"{list(want.shape)}")
            out[key] = t
    missing = sorted(set(expected) - set(out))
    if missing:
        raise CheckpointError(f"{files[0].parent}: {len(missing)} tensor(s) missing, e.g. {missing[:5]}")
    return out


def write_sharded(path: Path, state: dict[str, torch.Tensor], max_bytes: int, metadata: dict[str, str] | None = None,
                  always_shard: bool = False) -> list[Path]:
    """``state`` as one ``model.safetensors`` or, above ``max_bytes`` (or with ``always_shard``), shards of at most
    ``max_bytes`` (a tensor never split; ``model-0000k-of-0000n.safetensors``) + ``model.safetensors.index.json``.
    Each file is written under a temporary name and renamed into place, so a process that has the old file mapped
    keeps reading it."""
    from safetensors.torch import save_file

    groups: list[list[str]] = [[]]
    size = 0
    for key in sorted(state):
        n = state[key].numel() * state[key].element_size()
        if groups[-1] and size + n > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(key)
        size += n
    names = ([WEIGHTS_FILE] if len(groups) == 1 and not always_shard
             else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))])
    files = []
    for name, keys in zip(names, groups, strict=True):
        tmp = path / f".{name}.tmp"
        save_file({k: state[k].contiguous() for k in keys}, str(tmp), metadata={"format": "pt", **(metadata or {})})
        os.replace(tmp, path / name)
        files.append(path / name)
    index = path / "model.safetensors.index.json"
    if len(names) > 1 or always_shard:
        total = sum(t.numel() * t.element_size() for t in state.values())
        weight_map = {k: name for name, keys in zip(names, groups, strict=True) for k in keys}
        tmp = path / ".index.tmp"
        tmp.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
        os.replace(tmp, index)
    elif index.exists():
        index.unlink()  # an earlier, sharded write's index would name shards that are no longer there
    return files
