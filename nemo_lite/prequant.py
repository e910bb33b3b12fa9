"""Pre-quantized checkpoints, the format: written by ``nemo-lite quantize MODEL --mode int8|int4 --out DIR``
(:mod:`nemo_lite.quantize`) once, memory-mapped by ``from_pretrained(DIR)`` with no quantization work at load.

Quantizing at load (``quantize="int8"``) reads 1.7 B bf16 weights and rounds each of them at every start (20-60 s
on a 2-core CPU); the C++ ports memory-map a file that is already quantized. A directory written here holds:

- ``nemo_lite_quant.json``: :class:`QuantizedConfig`: format version, mode, group size, the source checkpoint
  (path, size, sha256 of its ``model.safetensors``), which modules are int8 / int4 / held narrow, which stored
  tensor a tied one shares, the int4 kernel layout of the stored codes, and the model's own ``config.json``;
- ``model.safetensors`` (or ``model-0000k-of-0000n.safetensors`` + ``model.safetensors.index.json`` above
  :data:`SHARD_BYTES`): the model's ``state_dict`` as it is held in memory, names exactly as the modules name them
  (:class:`~nemo_lite.quant.Int8Linear` ``weight``/``scale``, :class:`~nemo_lite.quant.Int4Linear`
  ``weight``/``scales_and_zeros``, the narrow layers in the source file's dtype, the rest fp32);
- ``llm_backbone/``: the LLM's ``config.json`` and tokenizer files, copied byte for byte, so it loads offline.

Loading (:func:`load_quantized`): the model is built on the meta device, the module types the config lists are put
in place, every stored tensor becomes a view of a copy-on-write memory map of its shard
(:func:`nemo_lite.weights.map_safetensors`), checked strictly against the meta model (unknown, missing, mis-shaped
and wrong-dtype tensors and damaged shards are named in a :class:`~nemo_lite.weights.CheckpointError`) and
assigned. Nothing is read, cast or copied: a layer's pages come from the page cache the first time it runs, and
resident memory counts what was touched (file-backed pages the kernel can drop and re-read, not anonymous copies).

What is held how (the memory side of issue 16; fidelity figures in docs/quant.md):

- the LLM's linear layers and the output head: int8 (per output channel) or int4 (group 64), as ``quantize=``;
- the input embedding: ``narrow`` (the file's bf16, each looked-up row widened: bit-identical to exact mode) or
  ``int8`` (rows with a bf16 scale; with int8 layers it *is* the int8 head: one tensor, quantized once);
- the FastConformer: ``narrow`` (its linear/conv layers in bf16, widened per layer: bit-identical) or ``int8``
  (its linear layers int8, convolutions bf16); it computes in fp32 either way (no native bf16 on most CPUs).

int4 codes are stored in the kernel layout of the CPU that wrote the directory (recorded in the config) so that a
load on the same kind of CPU rearranges nothing; on a CPU whose kernel wants another layout, each layer is converted
once on its first use (:meth:`~nemo_lite.quant.Int4Linear.pack`). ``--portable`` stores the portable form instead.

The cache (:func:`from_cache`): ``from_pretrained(CKPT, quantize="int8"|"int4")`` (the ``fast-cpu`` preset) would
quantize 1.7 B weights at every load (18-22 s at full size on 2 cores); instead the first such load writes a
pre-quantized directory under :func:`cache_root` and every later one maps it (1.0-1.4 s). An entry is named by the
checkpoint's file (resolved path, size, modification time), the mode and the directory format: hashing the 5 GB
file at each load would cost seconds, so the file's sha256 is only recorded inside the entry (this departs from a
cache keyed by the hash itself). ``NEMO_LITE_QUANT_CACHE=off`` turns it off; ``NEMO_LITE_QUANT_CACHE=DIR`` moves
it. An entry is written into a temporary directory and renamed into place, so a half-written one is never read;
a damaged one is removed and written again; if the cache cannot be written the model is quantized at load, as
before, with one warning. Entries of a replaced checkpoint stay until deleted (3.3-4.1 GB each at full size).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch only for annotations: importing this module (canary_qwen does) stays cheap
    from torch import nn

    from .options import LoadOptions
    from .speechlm import SpeechLM

QUANT_CONFIG = "nemo_lite_quant.json"  # marks a pre-quantized directory
FORMAT_VERSION = 1  # bumped when a directory written by this code could not be read by older code
LLM_DIR = "llm_backbone"  # the LLM config + tokenizer, as NeMo saves them beside a checkpoint
SHARD_BYTES = 2 << 30  # 2 GiB shards: small enough to copy and checksum one at a time
HOLDINGS = ("narrow", "int8")  # how the embedding / the encoder are held (module docstring)
HASH_CHUNK = 1 << 24  # bytes read at a time when hashing the source checkpoint
CACHE_ENV = "NEMO_LITE_QUANT_CACHE"  # a directory for the quantization cache, or off / 0 / no / false
CACHE_OFF = ("off", "0", "no", "false")


class QuantCacheWarning(UserWarning):
    """A note from the quantization cache: an entry written (where, how large), or a cache that cannot be used."""


@dataclass
class QuantizedConfig:
    """``nemo_lite_quant.json``: what :func:`load_quantized` needs to rebuild the model's structure on meta."""

    mode: str  # "int8" | "int4": the LLM's linear layers and the output head
    model_config: dict  # the source checkpoint's own config.json (NeMo's SALM config)
    source: dict  # the source checkpoint: {"path", "bytes", "sha256"} of its model.safetensors
    group_size: int = 64  # int4: weights per scale/zero pair along in_features
    embedding: str = "narrow"  # the input embedding: "narrow" (file dtype) | "int8" (rows + scale)
    encoder: str = "narrow"  # the FastConformer: "narrow" (file dtype) | "int8" (linear layers)
    narrow_dtype: str = "bfloat16"  # dtype of the narrow-held tensors (the source file's)
    int8: list[str] = field(default_factory=list)  # modules held as Int8Linear
    int4: list[str] = field(default_factory=list)  # modules held as Int4Linear
    narrow: list[str] = field(default_factory=list)  # modules held as NarrowLinear / NarrowConv1d
    tied: dict[str, str] = field(default_factory=dict)  # tensor not stored -> the stored tensor it is
    int4_layout: list | None = None  # kernel layout of the stored int4 codes ([style, block]); None: portable
    written_by: dict = field(default_factory=dict)  # torch version and the CPU, for the record
    model: str = "canary_qwen"  # the design (only Canary-Qwen so far)
    format: int = FORMAT_VERSION

    @classmethod
    def read(cls, path: Path) -> QuantizedConfig:
        from .weights import CheckpointError

        file = path / QUANT_CONFIG
        try:
            raw = json.loads(file.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{file} is not readable JSON: {err}") from None
        if not isinstance(raw, dict):
            raise CheckpointError(f"{file} is not a JSON object")
        if raw.get("format", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{file} is format {raw['format']}, written by a newer nemo_lite (this one reads "
                                  f"up to {FORMAT_VERSION}): upgrade nemo_lite or quantize again")
        known = {f.name for f in fields(cls)}
        unknown, missing = sorted(set(raw) - known), sorted({"mode", "model_config", "source"} - set(raw))
        if unknown or missing:
            raise CheckpointError(f"{file}: unknown key(s) {unknown}, missing key(s) {missing}")
        cfg = cls(**raw)
        if cfg.mode not in ("int8", "int4") or cfg.embedding not in HOLDINGS or cfg.encoder not in HOLDINGS:
            raise CheckpointError(f"{file}: mode {cfg.mode!r}, embedding {cfg.embedding!r}, encoder {cfg.encoder!r}: "
                                  f"expected int8|int4 and {'|'.join(HOLDINGS)}")
        if cfg.model != "canary_qwen":
            raise CheckpointError(f"{file}: model {cfg.model!r} is not supported (canary_qwen)")
        return cfg

    def write(self, path: Path) -> None:
        tmp = path / f".{QUANT_CONFIG}.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=1) + "\n")
        os.replace(tmp, path / QUANT_CONFIG)


def is_quantized_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a directory written by :func:`nemo_lite.quantize.quantize_checkpoint`."""
    return (Path(path).expanduser() / QUANT_CONFIG).is_file()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------- writing
def hold(model: SpeechLM, embedding: str, encoder: str) -> None:
    """Turn a model loaded with ``quantize=`` (LLM quantized, embedding and encoder narrow) into the holdings asked
    for: ``embedding="int8"``: int8 rows (the int8 head's own tensors when the head is int8); ``encoder="int8"``:
    the FastConformer's linear layers int8 (biases fp32, as its narrow layers compute them)."""
    import torch

    from .llm import base_causal_lm
    from .quant import Int8Embedding, Int8Linear, quantize_linears

    lm = base_causal_lm(model.llm)
    if embedding == "int8":
        head, table = lm.get_output_embeddings(), lm.get_input_embeddings()
        out_dtype = getattr(table, "out_dtype", table.weight.dtype)
        new = (Int8Embedding.sharing(head, out_dtype) if isinstance(head, Int8Linear)
               else Int8Embedding.from_weight(table.weight.detach(), out_dtype))
        lm.set_input_embeddings(new)
    if encoder == "int8":
        enc = model.audio_encoder
        quantize_linears(enc, "int8")
        for m in enc.modules():
            if isinstance(m, Int8Linear) and m.bias is not None:
                m.bias = m.bias.to(torch.float32)  # exact: the narrow layer widened its bf16 bias per call


def save_quantized(model: SpeechLM, out: Path, model_config: dict, source: dict, portable: bool = False,
                   max_shard_bytes: int = SHARD_BYTES) -> QuantizedConfig:
    """Write ``model`` (quantized, in memory) as the weights + config of a pre-quantized directory ``out``."""
    import torch

    from .cpu import describe
    from .memory import NarrowConv1d, NarrowEmbedding, NarrowLinear
    from .quant import Int4Linear, Int8Embedding, Int8Linear, int4_kernel_layout
    from .weights import write_sharded

    cfg = QuantizedConfig(mode=model.options.quantize if model.options.quantize == "int4" else "int8",
                          model_config=model_config, source=source,
                          written_by={"torch": torch.__version__, "cpu": describe()})
    state = model.state_dict()
    layout = None if portable else int4_kernel_layout()
    names = {id(m): n for n, m in model.named_modules()}
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear):
            cfg.int8.append(name)
        elif isinstance(m, Int4Linear):
            cfg.int4.append(name)
            cfg.group_size = m.group_size
            if layout is not None:
                m.pack()  # idempotent; the codes as this CPU's kernel reads them (state_dict gives the portable form)
                state[f"{name}.weight"] = m.weight
        elif isinstance(m, (NarrowLinear, NarrowConv1d)):
            cfg.narrow.append(name)
            cfg.narrow_dtype = str(m.weight.dtype).removeprefix("torch.")
        elif isinstance(m, NarrowEmbedding):
            cfg.narrow_dtype = str(m.weight.dtype).removeprefix("torch.")
        elif isinstance(m, Int8Embedding):
            cfg.embedding = "int8"
            head = next((h for h in model.modules() if isinstance(h, Int8Linear) and h.weight is m.weight), None)
            if head is not None:  # one tensor, two names: stored once (safetensors refuses shared tensors)
                for leaf in ("weight", "scale"):
                    cfg.tied[f"{name}.{leaf}"] = f"{names[id(head)]}.{leaf}"
                    del state[f"{name}.{leaf}"]
    cfg.int4_layout = list(layout) if cfg.int4 and layout is not None else None
    cfg.encoder = "int8" if any(n.startswith(model.encoder_name + ".") for n in cfg.int8) else "narrow"
    files = write_sharded(out, state, max_shard_bytes, metadata={"nemo_lite_quant": cfg.mode})
    keep = {f.name for f in files} | ({"model.safetensors.index.json"} if len(files) > 1 else set())
    for old in out.glob("model*.safetensors*"):  # an earlier write's shards that this one did not replace
        if old.name not in keep:
            old.unlink()
    cfg.write(out)  # last: a directory without it is not taken for a finished one
    return cfg


def check_out_dir(out: Path) -> None:
    """``out`` may be new, empty, or an earlier pre-quantized directory (replaced file by file)."""
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_quantized_dir(out))):
        raise FileExistsError(f"{out} exists and is not an empty directory or an earlier pre-quantized checkpoint; "
                              "choose a new --out")


def copy_llm_files(config_dir: Path, tokenizer_dir: Path, dst: Path) -> None:
    """The LLM's config.json and tokenizer files, byte for byte (the audio tag is added at load, as from the hub)."""
    from .weights import CONFIG_FILE, TOKENIZER_FILES

    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config_dir / CONFIG_FILE, dst / CONFIG_FILE)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copyfile(tokenizer_dir / name, dst / name)


def write_quantized(cls: type, model_path: str | os.PathLike, out: str | os.PathLike, mode: str,
                    llm_path: str | os.PathLike | None = None, embedding: str = "narrow",
                    encoder: str = "narrow", portable: bool = False, max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Load a checkpoint (hub layout) with ``cls.from_pretrained`` quantized to ``mode``, and write it as a
    pre-quantized directory ``out`` (the format: module docstring); returns ``out``. ``embedding`` / ``encoder``: how
    those are held (:data:`HOLDINGS`); ``portable``: int4 codes in the portable form instead of this CPU's kernel
    layout. ``out`` must be new, empty or an earlier pre-quantized directory (replaced)."""
    from .weights import WEIGHTS_FILE, llm_dirs, read_config, resolve_checkpoint

    if mode not in ("int8", "int4") or embedding not in HOLDINGS or encoder not in HOLDINGS:
        raise ValueError(f"mode must be int8|int4, embedding and encoder {'|'.join(HOLDINGS)}; got {mode!r}, "
                         f"{embedding!r}, {encoder!r}")
    out = Path(out).expanduser()
    check_out_dir(out)
    src = resolve_checkpoint(model_path)
    source = {"path": str(src.resolve()), "bytes": (src / WEIGHTS_FILE).stat().st_size,
              "sha256": file_sha256(src / WEIGHTS_FILE)}
    model = cls.from_pretrained(src, llm_path=llm_path, quantize=mode, compact_encoder=True)
    hold(model, embedding, encoder)
    out.mkdir(parents=True, exist_ok=True)
    config_dir, tokenizer_dir = llm_dirs(model.cfg.pretrained_llm, model.cfg.tokenizer_path, llm_path)
    copy_llm_files(config_dir, tokenizer_dir, out / LLM_DIR)
    save_quantized(model, out, read_config(src), source, portable, max_shard_bytes)
    return out


# ---------------------------------------------------------------------- the cache
def cache_root() -> Path | None:
    """Where quantized checkpoints are cached: ``$NEMO_LITE_QUANT_CACHE``, else ``$XDG_CACHE_HOME/nemo_lite/quantized``
    (``~/.cache/nemo_lite/quantized``); None when the variable says off."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if value.lower() in CACHE_OFF:
        return None
    if value:
        return Path(value).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "nemo_lite" / "quantized"


def cache_entry(root: Path, ckpt: Path, mode: str) -> Path:
    """The cache directory of ``ckpt`` quantized to ``mode``: named by its weights file's resolved path, size and
    modification time, the mode and the directory format (module docstring)."""
    from .weights import WEIGHTS_FILE

    weights = (ckpt / WEIGHTS_FILE).resolve()
    st = weights.stat()
    key = json.dumps([str(weights), st.st_size, st.st_mtime_ns, mode, FORMAT_VERSION])
    return root / f"{ckpt.name}-{mode}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def cacheable(opts: LoadOptions) -> bool:
    """Loads the cache serves: int8/int4 quantized at load with the default encoder and embedding holdings."""
    return opts.quantize in ("int8", "int4") and opts.compact_encoder is None and opts.encoder_dtype is None


def from_cache(cls: type, name_or_path: str | os.PathLike, opts: LoadOptions,
               llm_path: str | os.PathLike | None = None) -> SpeechLM | None:
    """The model of a quantized load, mapped from its cache entry (written first if missing); None when the load
    is not :func:`cacheable`, the cache is off, or it cannot be written (then the caller quantizes at load)."""
    from .weights import CheckpointError, resolve_checkpoint

    root = cache_root()
    if root is None or not cacheable(opts):
        return None
    ckpt = resolve_checkpoint(name_or_path)
    entry = cache_entry(root, ckpt, opts.quantize)
    for attempt in (1, 2):
        if not is_quantized_dir(entry) and not _write_entry(cls, ckpt, entry, opts.quantize, llm_path):
            return None
        try:
            return load_quantized(cls, entry, opts, llm_path)
        except CheckpointError as err:
            if attempt == 2:
                raise
            warnings.warn(QuantCacheWarning(f"the cached quantized checkpoint {entry} is damaged ({err}); "
                                            "writing it again"), stacklevel=3)
            shutil.rmtree(entry, ignore_errors=True)
    return None  # not reached


def _write_entry(cls: type, ckpt: Path, entry: Path, mode: str, llm_path: str | os.PathLike | None) -> bool:
    """Quantize ``ckpt`` into a temporary directory beside ``entry`` and rename it into place; False (with a
    warning) when the cache cannot be written."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        write_quantized(cls, ckpt, tmp, mode, llm_path)
        try:
            tmp.rename(entry)
        except OSError:  # another process cached it first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        warnings.warn(QuantCacheWarning(f"cannot cache the {mode} weights in {entry.parent} ({err}); quantizing at "
                                        f"load instead (set {CACHE_ENV}=DIR to use another place, or off)"),
                      stacklevel=4)
        return False
    size = sum(f.stat().st_size for f in entry.glob("model*.safetensors"))
    warnings.warn(QuantCacheWarning(f"quantized {ckpt.name} to {mode} once and cached it in {entry} "
                                    f"({size / 1e9:.1f} GB); later loads map it in about a second "
                                    f"({CACHE_ENV}=off turns this off)"), stacklevel=4)
    return True


# ---------------------------------------------------------------------- loading
def load_quantized(cls: type, path: Path, opts: LoadOptions, llm_path: str | os.PathLike | None = None) -> SpeechLM:
    """A pre-quantized directory -> the model, its tensors memory-mapped (module docstring). ``opts``: the caller's
    load options; the directory fixes the quantization, the encoder and the embedding (CPU, fp32 compute)."""
    from dataclasses import replace

    import torch

    from .config import SALMConfig
    from .memory import release_freed_memory
    from .quant import Int4Linear
    from .weights import load_llm_config_and_tokenizer, read_mapped, safetensors_files

    cfg = QuantizedConfig.read(path)
    if opts.quantize not in (None, cfg.mode) or opts.encoder_dtype is not None or opts.compact_encoder is not None:
        raise ValueError(f"{path} is quantized to {cfg.mode} (embedding {cfg.embedding}, encoder {cfg.encoder}): "
                         "load it without quantize/encoder_dtype/compact_encoder, or quantize the source again")
    opts = replace(opts, quantize=cfg.mode)  # validated again: CPU, fp32 compute, no merge_lora, no compile
    model_config = {**cfg.model_config, "pretrained_llm": str(path / LLM_DIR), "tokenizer_path": str(path / LLM_DIR)}
    salm = SALMConfig.from_nemo(model_config)
    llm_config, tokenizer = load_llm_config_and_tokenizer(salm.pretrained_llm, salm.tokenizer_path,
                                                          llm_path or path / LLM_DIR, salm.audio_locator_tag,
                                                          from_tokenizer_json=True)
    model = cls(salm, llm_config, tokenizer, opts)
    build_structure(model, cfg)
    expected = model.state_dict(keep_vars=True)
    for alias in cfg.tied:
        expected.pop(alias, None)
    state = read_mapped(safetensors_files(path), expected)
    for alias, stored in cfg.tied.items():
        state[alias] = state[stored]
    model.load_state_dict(state, strict=True, assign=True)
    for m in model.modules():
        if isinstance(m, Int4Linear):
            m.hold_layout(cfg.int4_layout)
    model._after_load(torch.device("cpu"))
    model.requires_grad_(False)
    model.eval()
    release_freed_memory()
    return model


def build_structure(model: nn.Module, cfg: QuantizedConfig) -> None:
    """Put the module types ``cfg`` lists in place on the meta-device ``model`` (before its tensors are assigned):
    narrow layers in ``cfg.narrow_dtype``, int8/int4 layers, the embedding as held (tied to the head if so)."""
    import torch

    from .llm import base_causal_lm
    from .memory import cast_floats, hold_embedding_narrow, hold_narrow
    from .quant import Int8Embedding, quantize_linears
    from .weights import CheckpointError

    narrow = getattr(torch, cfg.narrow_dtype)
    cast_floats(model, torch.float32, skip=())  # the compute dtype (the LLM is built in its config's torch_dtype)
    swapped = hold_narrow(model, cfg.narrow)
    if len(swapped) != len(cfg.narrow):
        raise CheckpointError(f"{QUANT_CONFIG} lists narrow layers this model does not have, e.g. "
                              f"{sorted(set(cfg.narrow) - set(swapped))[:5]}")
    for name in swapped:
        model.get_submodule(name).to(narrow)
    try:
        quantize_linears(model, "int8", names=cfg.int8, pack=False)
        quantize_linears(model, "int4", names=cfg.int4, group_size=cfg.group_size, pack=False)
    except (AttributeError, ValueError) as err:
        raise CheckpointError(f"{QUANT_CONFIG} does not fit this model's layers: {err}") from None
    lm = base_causal_lm(model.llm)
    if cfg.embedding == "narrow":
        hold_embedding_narrow(lm, narrow)
    else:
        head = lm.get_output_embeddings()
        old = lm.get_input_embeddings()
        lm.set_input_embeddings(Int8Embedding.sharing(head) if cfg.tied else
                                Int8Embedding(old.num_embeddings, old.embedding_dim, device="meta"))
