"""bf16 on this CPU: exact (fp32) vs the old bf16 mode (whole model bf16, ``NEMO_LITE_BF16=native``) vs bf16 held
at rest and computed fp32 (what ``dtype="bf16"`` now chooses on a CPU without native bf16). Figures in the README
("Speed advice per CPU kind").

    python bench/bf16_cpu.py [--ckpt DIR] [--llm DIR] [--layers 4] [--threads 1] [--repeats 3]

Without ``--ckpt`` it writes a random checkpoint whose layers have the full-size shapes (Qwen3-1.7B width 2048,
MLP 6144, its 151936-row tied head; FastConformer width 1024) but ``--layers`` of each stack, so per-layer times
are those of the full model at a fraction of the load. Measured, per mode, best of ``--repeats`` interleaved
rounds: the encoder + projection on a 5 s clip, an LLM prefill of 80 positions (a 5 s clip's prompt), and one
decoding step of 1 and of 8 rows after it; plus the bytes the weights hold. ``uptime`` is printed beside them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import DynamicCache

from nemo_lite import CanaryQwen, testing
from nemo_lite.llm import base_causal_lm

MODES = {"exact": ("fp32", ""), "bf16 old (native)": ("bf16", "native"), "bf16 at rest": ("bf16", "")}
PREFILL = 80  # positions: ~63 audio frames of a 5 s clip (80 ms each) + the prompt's tokens
STEPS = 4  # decoding steps timed per measurement (the best step is kept)


def write_mid(path: Path, layers: int) -> tuple[Path, Path]:
    llm_cfg = {**testing.QWEN3_1_7B, "num_hidden_layers": layers, "max_window_layers": layers}
    llm = testing.write_llm_dir(path / "llm", llm_cfg)
    cfg = testing.full_salm_config(llm)
    cfg["perception"]["encoder"]["n_layers"] = layers
    return testing.write_checkpoint(path / "ckpt", cfg, llm_cfg), llm


def weight_bytes(model: torch.nn.Module) -> int:
    seen = {p.data_ptr(): p.numel() * p.element_size() for p in model.parameters()}
    return sum(seen.values())


def timed(fn, *args, **kwargs) -> float:
    start = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - start


def measure(model: CanaryQwen) -> dict[str, float]:
    lm = base_causal_lm(model.llm)
    audio = [np.random.default_rng(0).standard_normal(80000).astype(np.float32) * 0.1]
    out = {"encoder 5 s": timed(model.embed_audio, audio)}
    hidden = lm.config.hidden_size
    with torch.inference_mode():
        for rows in (1, 8):
            x = (torch.randn(rows, PREFILL, hidden) * 0.02).to(model.dtype)  # (B, T, H)
            cache = DynamicCache()
            t = timed(model.llm, inputs_embeds=x, past_key_values=cache, use_cache=True, logits_to_keep=1)
            if rows == 1:
                out["prefill 80"] = t
            steps = []
            for _ in range(STEPS):
                ids = torch.randint(0, 1000, (rows, 1))
                steps.append(timed(model.llm, input_ids=ids, past_key_values=cache, use_cache=True))
            out[f"step x{rows}"] = min(steps)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ckpt", type=Path)
    ap.add_argument("--llm", type=Path)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    ckpt, llm = (args.ckpt, args.llm) if args.ckpt else write_mid(Path(tmp.name), args.layers)
    models = {}
    for name, (dtype, force) in MODES.items():
        os.environ["NEMO_LITE_BF16"] = force
        models[name] = CanaryQwen.from_pretrained(ckpt, dtype=dtype, llm_path=llm)
        print(f"{name}: {models[name].options.plan.describe()}; weights {weight_bytes(models[name]) / 1e9:.2f} GB")
    best: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for name, model in models.items():
            for key, sec in measure(model).items():
                best.setdefault(name, {})[key] = min(sec, best.get(name, {}).get(key, sec))
        print(subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), flush=True)
    print(f"threads {args.threads}; best of {args.repeats}; seconds")
    for name, row in best.items():
        print(f"{name:18s} " + "  ".join(f"{k} {v:.3f}" for k, v in row.items()))


if __name__ == "__main__":
    main()
