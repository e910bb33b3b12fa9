"""``nemo-lite quantize MODEL --mode int8|int4 --out DIR``: quantize a Canary-Qwen checkpoint once and write it as
a pre-quantized directory (:mod:`nemo_lite.prequant`: the format, its loading) that ``from_pretrained(DIR)`` and
every ``--model DIR`` memory-map in about a second.

Argument parsing imports nothing heavy (the CLI's ``--help`` stays fast); the work imports torch when it runs.

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

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .prequant import FORMAT_VERSION, HOLDINGS, SHARD_BYTES

if TYPE_CHECKING:
    from .options import LoadOptions
    from .speechlm import SpeechLM

CACHE_ENV = "NEMO_LITE_QUANT_CACHE"  # a directory for the cache, or off / 0 / no / false
CACHE_OFF = ("off", "0", "no", "false")


class QuantCacheWarning(UserWarning):
    """A note from the quantization cache: an entry written (where, how large), or a cache that cannot be used."""


def quantize_checkpoint(model_path: str | os.PathLike, out: str | os.PathLike, mode: str,
                        llm_path: str | os.PathLike | None = None, embedding: str = "narrow",
                        encoder: str = "narrow", portable: bool = False, max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Load a Canary-Qwen checkpoint (hub layout) quantized to ``mode``, and write it as a pre-quantized directory
    ``out`` (module docstring); returns ``out``. ``embedding`` / ``encoder``: how those are held (:data:`HOLDINGS`);
    ``portable``: int4 codes in the portable form instead of this CPU's kernel layout. ``out`` must be new, empty
    or an earlier pre-quantized directory (replaced)."""
    from .canary_qwen import CanaryQwen
    from .prequant import LLM_DIR, check_out_dir, copy_llm_files, file_sha256, hold, save_quantized
    from .weights import WEIGHTS_FILE, llm_dirs, read_config, resolve_checkpoint

    if mode not in ("int8", "int4") or embedding not in HOLDINGS or encoder not in HOLDINGS:
        raise ValueError(f"mode must be int8|int4, embedding and encoder {'|'.join(HOLDINGS)}; got {mode!r}, "
                         f"{embedding!r}, {encoder!r}")
    out = Path(out).expanduser()
    check_out_dir(out)
    src = resolve_checkpoint(model_path)
    source = {"path": str(src.resolve()), "bytes": (src / WEIGHTS_FILE).stat().st_size,
              "sha256": file_sha256(src / WEIGHTS_FILE)}
    model = CanaryQwen.from_pretrained(src, llm_path=llm_path, quantize=mode, compact_encoder=True)
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
    from .prequant import is_quantized_dir, load_quantized
    from .weights import CheckpointError, resolve_checkpoint

    root = cache_root()
    if root is None or not cacheable(opts):
        return None
    ckpt = resolve_checkpoint(name_or_path)
    entry = cache_entry(root, ckpt, opts.quantize)
    for attempt in (1, 2):
        if not is_quantized_dir(entry) and not _write_entry(ckpt, entry, opts.quantize, llm_path):
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


def _write_entry(ckpt: Path, entry: Path, mode: str, llm_path: str | os.PathLike | None) -> bool:
    """Quantize ``ckpt`` into a temporary directory beside ``entry`` and rename it into place; False (with a
    warning) when the cache cannot be written."""
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
        quantize_checkpoint(ckpt, tmp, mode, llm_path)
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


# ---------------------------------------------------------------------- command line
def add_quantize_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite quantize MODEL --mode int8|int4 --out DIR``."""
    p = subparsers.add_parser("quantize", help="write a pre-quantized checkpoint that loads in about a second")
    p.add_argument("model", help="hub repo id or local checkpoint directory (config.json + model.safetensors)")
    p.add_argument("--mode", required=True, choices=["int8", "int4"], help="the LLM's linear layers and head")
    p.add_argument("--out", required=True, help="output directory (new, empty, or an earlier one to replace)")
    p.add_argument("--llm-path", help="local directory with the LLM config + tokenizer (e.g. Qwen3-1.7B), when the "
                   "checkpoint's pretrained_llm cannot be fetched; copied into the output")
    p.add_argument("--embedding", choices=HOLDINGS, default="narrow",
                   help="input embedding: narrow = the file's bf16, identical results (default); int8 = int8 rows "
                        "(with --mode int8 the head's own tensors: 0.6 GB less)")
    p.add_argument("--encoder", choices=HOLDINGS, default="narrow",
                   help="FastConformer: narrow = bf16 layers computed in fp32, identical results (default); int8 = "
                        "int8 linear layers (0.6 GB less)")
    p.add_argument("--portable", action="store_true",
                   help="int4: store the portable code layout, not this CPU's kernel layout (any CPU converts "
                        "once at first use either way)")
    p.add_argument("--max-shard-gb", type=float, default=SHARD_BYTES / 2**30, help="largest shard file, GiB")
    from .terminal import add_run_args

    add_run_args(p)
    p.set_defaults(func=cmd_quantize)
    return p


def cmd_quantize(args: argparse.Namespace) -> int:
    import time

    from .config import ConfigError
    from .terminal import EXIT_OK, SetupError, apply_threads, say
    from .weights import CheckpointError

    apply_threads(args)
    t0 = time.perf_counter()
    try:
        out = quantize_checkpoint(args.model, args.out, args.mode, args.llm_path, args.embedding, args.encoder,
                                  args.portable, int(args.max_shard_gb * 2**30))
    except (CheckpointError, ConfigError, FileExistsError, OSError, ValueError) as err:
        raise SetupError(f"cannot quantize {args.model!r}: {err}") from err
    size = sum(f.stat().st_size for f in out.glob("model*.safetensors"))
    say(f"wrote {out} ({args.mode}, {size / 1e9:.2f} GB) in {time.perf_counter() - t0:.0f} s; load it with "
        f"--model {out}")
    return EXIT_OK

