"""``nemo-lite quantize MODEL --mode int8|int4 --out DIR``: quantize a Canary-Qwen checkpoint once and write it as
a pre-quantized directory (:mod:`nemo_lite.prequant`: the format, its loading) that ``from_pretrained(DIR)`` and
every ``--model DIR`` memory-map in about a second.

Argument parsing imports nothing heavy (the CLI's ``--help`` stays fast); the work imports torch when it runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .prequant import HOLDINGS, SHARD_BYTES


def quantize_checkpoint(model_path: str | os.PathLike, out: str | os.PathLike, mode: str,
                        llm_path: str | os.PathLike | None = None, embedding: str = "narrow",
                        encoder: str = "narrow", portable: bool = False, max_shard_bytes: int = SHARD_BYTES) -> Path:
    """Load a Canary-Qwen checkpoint (hub layout) quantized to ``mode``, and write it as a pre-quantized directory
    ``out`` (:func:`nemo_lite.prequant.write_quantized`); returns ``out``."""
    from .canary_qwen import CanaryQwen
    from .prequant import write_quantized

    return write_quantized(CanaryQwen, model_path, out, mode, llm_path, embedding, encoder, portable, max_shard_bytes)


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

