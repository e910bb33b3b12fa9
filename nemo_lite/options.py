"""Load options: how a checkpoint is placed and computed (device, dtypes, quantization, LoRA merging, compiling).

One frozen dataclass, validated in one place (``__post_init__``), and named presets so a user can pick a mode
without knowing which options exclude which:

- ``"exact"`` (the CPU default): NeMo's fp32 compute, identical greedy ids;
- ``"fast-cpu"``: the fastest CPU mode within 0.5 WER points of exact on a trained model (int8 LLM linear layers;
  README, Performance). On the trained tiny Canary-Qwen every mode qualifies (docs/quant.md, held-out set too); at
  full size on this project's AVX2 CPU (session 7, best of two quiet rounds) int8 was faster on a 20 s clip (21.6
  vs 26.0 s) and at batch 8 (110.8 vs 126.7 s), int4 by 0.9 s on a 5 s clip, with 1/100 of int4's KL, so the preset
  stays int8. The first such load of a checkpoint caches the quantized weights and later ones map them
  (:func:`nemo_lite.prequant.from_cache`);
- ``"gpu"``: CUDA in bf16.

``from_pretrained(path, options="fast-cpu")`` takes a preset name or a :class:`LoadOptions`; keyword arguments
(``device=``, ``dtype=``, ``quantize=``...) still work and override the preset's fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from .runtime import ComputePlan, compute_plan, resolve_dtype

if TYPE_CHECKING:
    import torch

QUANT_MODES = (None, "int8", "int4", "int8-all")  # the LLM's linear layers int8 or int4; int8-all: encoder's too


@dataclass(frozen=True)
class LoadOptions:
    device: str | None = None  # "cpu" (None), "cuda", "cuda:1", "mps", ...
    dtype: str | None = None  # dtype name; None: fp32 on CPU (NeMo's compute), bf16 on accelerators. bf16 on a CPU
    # without native bf16: weights bf16 at rest, fp32 compute (runtime.compute_plan; NEMO_LITE_BF16=native: bf16)
    encoder_dtype: str | None = None  # the audio encoder's own compute dtype; None: `dtype`
    quantize: str | None = None  # None | "int8" | "int4" (CPU: the LLM's linear layers) | "int8-all" (+ encoder)
    merge_lora: bool = False  # fold LoRA into the weights for ASR (unfolded again for LLM mode); not bit-exact
    compact_encoder: bool | None = None  # encoder layers held in the file's narrower dtype, widened per call;
    # None: on when computing fp32 from a bf16/fp16 file (bit-identical, 1.6 GB less at full size)
    compile: bool = False  # CUDA: static KV cache + torch.compile'd decoding steps (CUDA graphs)
    # Compute and at-rest dtypes for this device and CPU (runtime.compute_plan), decided once here: a model loaded
    # with these options keeps the plan it was built with, whatever NEMO_LITE_BF16 says later.
    plan: ComputePlan = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("dtype", "encoder_dtype"):  # one spelling per dtype ("bf16" -> "bfloat16"), checked here
            if getattr(self, name) is not None:
                object.__setattr__(self, name, str(resolve_dtype(getattr(self, name))).removeprefix("torch."))
        device = self.torch_device
        dtype = resolve_dtype(self.dtype, device)  # as requested: the checks below are about what was asked for
        object.__setattr__(self, "plan", compute_plan(self.dtype, device))
        if self.quantize not in QUANT_MODES:
            raise ValueError(f"quantize={self.quantize!r} not supported; use one of {QUANT_MODES}")
        if self.quantize and self.merge_lora:
            raise ValueError("merge_lora cannot be combined with quantize: quantized weights cannot be unmerged for "
                             "LLM mode (quantized modes keep LoRA as a cheap float side path instead)")
        if self.quantize and (device.type != "cpu" or dtype != _fp32()):
            raise ValueError(f"quantize={self.quantize!r} is a CPU mode on an fp32 model (quantized weights, fp32 "
                             "activations); on a GPU use dtype='bfloat16'")
        if self.quantize == "int8-all" and self.encoder_dtype is not None:
            raise ValueError("encoder_dtype cannot be combined with quantize='int8-all' (its encoder is int8)")
        if self.quantize == "int8-all" and self.compact_encoder:
            raise ValueError("compact_encoder and quantize='int8-all' exclude each other (the encoder's linear "
                             "layers are int8 already)")
        if self.encoder_dtype is not None and self.plan.rest is not None:
            raise ValueError(f"encoder_dtype cannot be combined with dtype={self.dtype!r} on this CPU: "
                             f"{self.plan.describe()}")
        if self.compile and device.type != "cuda":
            raise ValueError("compile=True is a CUDA mode (CUDA graphs for the decoding steps); on CPU a step is "
                             "bound by reading the weights and compiling did not pay off")

    @property
    def torch_device(self) -> torch.device:
        import torch

        return torch.device(self.device or "cpu")

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.plan.compute

    @property
    def load_dtype(self) -> torch.dtype:
        """The dtype weights are read in: the plan's at-rest dtype when it has one, else the compute dtype."""
        return self.plan.rest or self.plan.compute

    @property
    def encoder_compute_dtype(self) -> torch.dtype:
        return self.compute_dtype if self.encoder_dtype is None else resolve_dtype(self.encoder_dtype,
                                                                                   self.torch_device)

    def with_overrides(self, **overrides: Any) -> LoadOptions:
        """A copy with the given fields changed (None values are left out: "not given"); unknown names raise."""
        known = {f.name for f in fields(self) if f.init}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown load option(s) {unknown}; known: {sorted(known)}")
        given = {k: _name(v) for k, v in overrides.items() if v is not None}
        return replace(self, **given) if given else self


def load_options(options: LoadOptions | str | None = None, **overrides: Any) -> LoadOptions:
    """A preset name, a :class:`LoadOptions` or None (exact), with keyword overrides applied and validated."""
    if options is None:
        base = PRESETS["exact"]
    elif isinstance(options, str):
        if options not in PRESETS:
            raise ValueError(f"unknown preset {options!r}; use one of {sorted(PRESETS)}")
        base = PRESETS[options]
    else:
        base = options
    return base.with_overrides(**overrides)


def _name(value: Any) -> Any:
    """``torch.device``/``torch.dtype`` values -> their names (the dataclass holds plain, printable values)."""
    if type(value).__name__ == "dtype":
        return str(value).removeprefix("torch.")
    if type(value).__name__ == "device":
        return str(value)
    return value


def _fp32() -> torch.dtype:
    import torch

    return torch.float32


PRESETS: dict[str, LoadOptions] = {
    "exact": LoadOptions(),
    "fast-cpu": LoadOptions(quantize="int8"),
    "gpu": LoadOptions(device="cuda", dtype="bfloat16"),
}
