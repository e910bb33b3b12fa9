"""``nemo-lite train --config CONFIG [--set KEY=VALUE ...]``: the command and its parser, side by side.

``python -m nemo_lite.train`` (what ``torchrun ... -m nemo_lite.train`` runs) is the same command; the heavy
modules (torch, the loop) are imported only when it runs, so ``nemo-lite --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def override(cfg: dict, item: str) -> None:
    """Apply one ``--set KEY=VALUE`` to a raw config dict (VALUE parsed as JSON when it can be, else a string)."""
    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
    try:
        cfg[key] = json.loads(value)
    except json.JSONDecodeError:
        cfg[key] = value  # a bare string


def cmd_train(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from ..terminal import SetupError
    from .config import TrainConfig, load_train_config
    from .loop import train

    try:  # a config that cannot be read or does not validate: one line, exit code 2 (nemo_lite.terminal)
        raw = asdict(load_train_config(args.config))
        for item in args.set or []:
            override(raw, item)
        cfg = TrainConfig.from_dict(raw)
    except (OSError, ValueError, TypeError) as err:  # JSON/TOML decode errors are ValueErrors
        raise SetupError(f"training config {args.config}: {err}") from None
    result = train(cfg)
    if not dist.is_initialized() or dist.get_rank() == 0:
        last = result.losses[-1] if result.losses else float("nan")
        print(f"nemo-lite: {result.steps} step(s), final loss {last:.4f}, {result.wall_seconds:.1f} s; "
              f"model saved to {result.model_dir}", file=sys.stderr)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite train --config CONFIG [--set KEY=VALUE ...]`` (works under torchrun unchanged)."""
    p = subparsers.add_parser("train", help="fine-tune Canary-Qwen or train a Whisper + LLM model (stage 1 or 2)")
    p.add_argument("--config", required=True, help="training config (.json or .toml); see nemo_lite.training.loop")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key (VALUE parsed as JSON when it can be), e.g. --set max_steps=10")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one line")
    p.set_defaults(func=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """``python -m nemo_lite.train --config CONFIG [--set KEY=VALUE ...]``."""
    parser = argparse.ArgumentParser(prog="python -m nemo_lite.train")
    add_train_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    from ..terminal import run

    return run(args.func, args)
