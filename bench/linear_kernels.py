"""Linear-layer kernels on this CPU at Qwen3-1.7B's shapes: fp32/bf16 ``nn.Linear``, the torch.ao dynamic int8 of
``nemo_lite.speed``, ``nemo_lite.quant``'s Int8Linear/Int4Linear, oneDNN's dynamic int8 op and torchao's
equivalents (when installed), at 1/8/256 rows and 1/2 threads; relative error vs fp32; effective GB/s (weight
bytes read per call / time) against the measured memory bandwidth; time to quantize/pack the whole LLM.

Timing: per (shape, threads, rows) every variant is timed once per round, rounds interleaved, best round kept
(the machine is shared; the load average is printed beside each block). Before each timed call a 128 MB buffer
is read so the layer's weights come from memory, not the last-level cache (32 MB here), as when decoding walks
through 28 layers; a call is timed alone (3 per round), not in a loop that would keep a small layer cached.

    PYTHONPATH=. python bench/linear_kernels.py [--rounds 5] [--shapes gate,down] [--out table.md]
"""

from __future__ import annotations

import argparse
import copy
import time
import warnings

import torch
from torch import nn

from nemo_lite import cpu, quant

# Qwen3-1.7B (hidden 2048, 16 q heads / 8 kv heads x 128, intermediate 6144, 28 layers, tied 151936 vocab head)
SHAPES = {  # name: (out_features N, in_features K, how many in the LLM)
    "q/o": (2048, 2048, 56),
    "k/v": (1024, 2048, 56),
    "gate/up": (6144, 2048, 56),
    "down": (2048, 6144, 28),
    "head": (151936, 2048, 1),
}
ROWS = (1, 8, 256)
GROUPS = (32, 64, 128)


def uptime() -> str:
    with open("/proc/loadavg") as f:
        return "load " + " ".join(f.read().split()[:3])


def bandwidth(threads: int) -> tuple[float, float]:
    """(read GB/s by summing 512 MB, copy GB/s counting read + write) at ``threads``."""
    torch.set_num_threads(threads)
    a = torch.ones(128 << 20)  # 512 MB fp32
    b = torch.empty_like(a)
    t_sum = min(_time(lambda: a.sum()) for _ in range(5))
    t_copy = min(_time(lambda: b.copy_(a)) for _ in range(5))
    return a.nbytes / t_sum / 1e9, 2 * a.nbytes / t_copy / 1e9


def _time(fn, min_s: float = 0.02) -> float:
    """Mean seconds a call over a burst lasting at least ``min_s``."""
    n, start = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n


_EVICT = torch.ones(32 << 20)  # 128 MB, 4x the last-level cache


def _time_cold(fn, calls: int = 3) -> float:
    """Best seconds of ``calls`` calls, each after reading :data:`_EVICT` (weights not cached)."""
    best = float("inf")
    for _ in range(calls):
        _EVICT.sum()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _ao_dynamic(lin: nn.Linear) -> nn.Module:
    from nemo_lite.speed import _int8_linear

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _int8_linear(lin)


class OneDnnDynamicInt8(nn.Module):
    """oneDNN's int8 x int8 linear (the x86 PT2E path) with activations quantized per tensor (uint8) per call."""

    def __init__(self, lin: nn.Linear):
        super().__init__()
        q = quant.Int8Linear.from_linear(lin)
        self.scale = q.scale.float()
        self.zero = torch.zeros(lin.out_features, dtype=torch.int32)
        self.packed = torch.ops.onednn.qlinear_prepack(q.weight, None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
        s = ((hi - lo) / 255).clamp_min(1e-12)
        zp = torch.round(-lo / s)
        qx = torch.round(x / s + zp).clamp_(0, 255).to(torch.uint8)
        return torch.ops.onednn.qlinear_pointwise.tensor(qx, s, zp.to(torch.int32), self.packed, self.scale,
                                                         self.zero, None, 1.0, 0, torch.float32, "none", [], "")


def _torchao(lin: nn.Linear, kind: str) -> nn.Module | None:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_
    except ImportError:
        return None
    m = nn.Sequential(copy.deepcopy(lin))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "w8":
            quantize_(m, Int8WeightOnlyConfig())
        elif kind == "dyn8":
            quantize_(m, Int8DynamicActivationInt8WeightConfig())
        else:
            from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

            m = m.to(torch.bfloat16)
            quantize_(m, PrototypeInt4WeightOnlyConfig(group_size=int(kind[3:])))
    return m


def variants(lin: nn.Linear, with_torchao: bool, slow_ok: bool) -> dict[str, tuple[nn.Module, torch.dtype, int]]:
    """name -> (module, input dtype, weight bytes read per call)."""
    n, k = lin.out_features, lin.in_features
    out: dict[str, tuple[nn.Module, torch.dtype, int]] = {
        "fp32": (lin, torch.float32, 4 * n * k),
        "bf16": (copy.deepcopy(lin).to(torch.bfloat16), torch.bfloat16, 2 * n * k),
        "ao-dyn8 (speed.py)": (_ao_dynamic(lin), torch.float32, n * k),
        "onednn-dyn8": (OneDnnDynamicInt8(lin), torch.float32, n * k),
        "Int8Linear": (quant.Int8Linear.from_linear(lin), torch.float32, n * k + 2 * n),
    }
    for g in GROUPS:
        out[f"Int4Linear g{g}"] = (quant.quantize_linears(nn.Sequential(lin), "int4", group_size=g)[0],
                                   torch.float32, n * k // 2 + 4 * n * k // g)
    if with_torchao:
        for kind, dtype, nbytes in (("w8", torch.float32, n * k), ("dyn8", torch.float32, n * k),
                                    ("int64", torch.bfloat16, n * k // 2 + 4 * n * k // 64)):
            if kind == "w8" and not slow_ok:
                continue  # dequantizes the whole weight per call: seconds for the head
            m = _torchao(lin, kind)
            if m is not None:
                out[f"torchao {kind.replace('int64', 'int4 g64')}"] = (m, dtype, nbytes)
    return out


def quantize_times(threads: int) -> list[str]:
    """Seconds to quantize (and pack) all of the LLM's linears one at a time, from bf16 weights."""
    torch.set_num_threads(threads)
    totals: dict[str, float] = {}
    for n, k, count in SHAPES.values():
        lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        steps = {
            "Int8Linear": lambda lin=lin: quant.Int8Linear.from_linear(lin),
            "Int4Linear g64 (quantize)": lambda lin=lin: quant.Int4Linear.from_linear(lin, 64),
            "ao-dyn8 (speed.py)": lambda lin=lin: _ao_dynamic(lin),
        }
        portable = quant.Int4Linear.from_linear(lin, 64).weight  # (N, K/2), as a checkpoint holds it
        codes = quant._codes(portable)
        layout = quant.int4_kernel_layout()
        if layout is not None:
            steps["Int4 pack, ours (at load)"] = lambda p=portable, lay=layout: quant._to_kernel(p, *lay)
        steps["Int4 pack, torch's packer"] = lambda codes=codes: torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.to(torch.int32), 1)
        w8 = torch.zeros(n, k, dtype=torch.int8)
        steps["onednn-dyn8 prepack"] = lambda w8=w8: torch.ops.onednn.qlinear_prepack(w8, None)
        for step, fn in steps.items():
            fn()
            t = min(_time(fn, 0) for _ in range(2 if n * k > 1e8 else 3))
            totals[step] = totals.get(step, 0.0) + t * count
    return [f"| {step} | {t:.1f} |" for step, t in totals.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of " + ", ".join(SHAPES))
    p.add_argument("--threads", default="1,2")
    p.add_argument("--no-torchao", action="store_true")
    p.add_argument("--out", help="also write the tables (markdown) here")
    args = p.parse_args()
    lines = [f"CPU: {cpu.describe()}; torch {torch.__version__}", ""]
    try:
        import torchao

        lines[0] += f"; torchao {torchao.__version__}"
    except ImportError:
        pass
    threads = [int(t) for t in args.threads.split(",")]
    lines += ["| threads | read (sum) GB/s | copy (r+w) GB/s |", "|---|---|---|"]
    for th in threads:
        r, c = bandwidth(th)
        lines.append(f"| {th} | {r:.1f} | {c:.1f} |")
    print("\n".join(lines), flush=True)
    torch.manual_seed(0)
    for name in args.shapes.split(","):
        n, k, _ = SHAPES[name]
        lin = nn.Linear(k, n, bias=False).requires_grad_(False)
        lin.weight.normal_(0, 0.02)
        vs = variants(lin, not args.no_torchao, slow_ok=n * k < 1e8)
        x8 = torch.randn(8, k)
        ref = lin(x8)
        err = {v: ((m(x8.to(dt)).float() - ref).norm() / ref.norm()).item() for v, (m, dt, _) in vs.items()}
        block = [f"\n### {name}: {n} x {k}   ({uptime()})",
                 "| variant | rel. err | " + " | ".join(f"{r} rows, {th}t ms (GB/s)" for th in threads
                                                       for r in ROWS) + " |",
                 "|---|---|" + "---|" * (len(threads) * len(ROWS))]
        cells: dict[str, list[str]] = {v: [] for v in vs}
        for th in threads:
            torch.set_num_threads(th)
            for rows in ROWS:
                if rows == 256 and name == "head":
                    for v in vs:
                        cells[v].append("-")
                    continue
                xs = {dt: torch.randn(rows, k).to(dt) for dt in (torch.float32, torch.bfloat16)}
                best = {v: float("inf") for v in vs}
                for _ in range(args.rounds):
                    for v, (m, dt, _) in vs.items():
                        best[v] = min(best[v], _time_cold(lambda m=m, x=xs[dt]: m(x)))
                for v, (_, _, nbytes) in vs.items():
                    cells[v].append(f"{best[v] * 1e3:.3f} ({nbytes / best[v] / 1e9:.1f})")
        for v in vs:
            block.append(f"| {v} | {err[v]:.4f} | " + " | ".join(cells[v]) + " |")
        print("\n".join(block), flush=True)
        lines += block
        del vs
    qt = [f"\n### Quantize / pack all linears of Qwen3-1.7B from bf16 ({uptime()}, {threads[-1]} threads)",
          "| step | seconds |", "|---|---|", *quantize_times(threads[-1])]
    print("\n".join(qt), flush=True)
    lines += qt
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
