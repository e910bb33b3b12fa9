"""Weight-only int8 and int4 ``Linear`` layers for CPU decoding, on torch's own packed kernels.

Decoding one token at a time reads every weight once per step, so it is bound by bytes read (or, on CPUs
without wide int8/bf16 instructions, by widening them): int8 weights read 4x fewer bytes than fp32, int4 8x.
The modules here follow gpt-fast's weight-only linears (our own code) and keep only plain tensors, so a
quantized model is saved to safetensors and loaded back on the meta device with ``strict=True, assign=True``:

- :class:`Int8Linear`: ``weight`` int8 (N, K), symmetric per output channel, ``scale`` bf16 (N,) (quantized with
  the bf16-rounded scale, so the kernel sees exactly the stored one). Forward through
  ``torch.ops.aten._weight_int8pack_mm`` (plain row-major int8, nothing to pack) for up to
  :data:`PACKED_MAX_ROWS` rows; above that, and on other devices, the weight is dequantized a chunk of
  output rows at a time and multiplied densely (the packed kernel has no reuse across rows: at 256 rows it is
  ~1.5x slower than dequantize + fp32 GEMM on an AVX2 CPU).
- :class:`Int4Linear`: asymmetric, group-wise along ``in_features`` (group 32/64/128/256, the kernel's set),
  ``weight`` uint8 (N, K/2) (two 4-bit codes a byte, the even column in the low nibble), ``scales_and_zeros`` bf16
  (K/group, N, 2) with ``w = (q - 8) * scale + zero``. The CPU kernel ``_weight_int4pack_mm_for_cpu`` wants the
  codes in a layout that depends on the ISA torch dispatches to (blocks of 64 output rows on AVX512, 32 on AVX2,
  16/32 elsewhere): checkpoints hold the portable form and :meth:`Int4Linear.pack` rearranges it in place with a
  few tensor ops (the layout is found once by comparing against ``_convert_weight_to_int4pack_for_cpu`` on a
  small probe; torch's own packer is a strided scalar loop, 4-9x slower). ``state_dict`` always writes the
  portable form; a pre-quantized directory (:mod:`nemo_lite.prequant`) may hold the kernel layout instead, recorded
  in its config, and :meth:`Int4Linear.hold_layout` / :meth:`Int4Linear.pack` convert only on a CPU that wants
  another.
- :class:`Int8Embedding`: an embedding table as int8 rows + a bf16 scale per row (exactly :class:`Int8Linear`'s
  buffers, so an int8 tied head and the embedding can be one tensor); a lookup widens only the rows it reads.

Compute dtype: the CPU kernels run in bf16 (their fp32 variants are scalar loops, 10-40x slower): activations
are rounded to bf16, weights widened to fp32 in registers, products accumulated in fp32, the output rounded to bf16
and cast back to the input's dtype. The dense path computes in the input's dtype (fp32), or bf16 where the CPU
has native bf16 (``nemo_lite.cpu.native_bf16``). Inference only (buffers, no gradients).

Pitfalls (torch 2.13, measured in ``docs/quant.md``): ``_weight_int8pack_mm`` uses aligned vector loads of the
activations and segfaults on a misaligned or ragged (``in_features % 8 != 0``) input, hence the alignment copy
and the dense fallback below; the int4 kernel rejects ``out_features % 16 != 0`` and ``in_features % group != 0``
(:func:`quantize_linears` raises a ``ValueError`` naming the layer rather than padding).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .cpu import native_bf16
from .memory import row_blocks

MODES = ("int8", "int4")
PACKED_MAX_ROWS = 32  # int8: rows up to which the packed kernel beats dequantize + GEMM (crossover 32-64, AVX2)
CHUNK = 1 << 23  # weights widened at a time when quantizing (32 MB of fp32); the dense path: memory.row_blocks
INT4_GROUPS = (32, 64, 128, 256)  # group sizes _weight_int4pack_mm_for_cpu accepts
INT4_GROUP = 64  # default group size (docs/quant.md: error vs speed)
INT8_ALIGN = 32  # bytes: _weight_int8pack_mm loads activation rows with aligned 128/256-bit loads
_PACK_LOCK = threading.Lock()  # lazy int4 packing mutates a buffer; two threads must not pack the same layer


def _has_op(name: str) -> bool:
    return hasattr(torch.ops.aten, name)


def _dense_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the dense fallback's GEMM: the input's, but fp32 for bf16 on CPUs that emulate bf16."""
    if x.dtype == torch.bfloat16 and x.device.type == "cpu" and not native_bf16():
        return torch.float32
    return x.dtype if x.dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16) else torch.float32


def _dense_matmul(layer: Int8Linear | Int4Linear, x2: torch.Tensor) -> torch.Tensor:
    """The dense fallback both layers share: ``x2`` (M, K) times the weight dequantized a chunk of output rows at a
    time (never the whole matrix in float) -> (M, N) in :func:`_dense_dtype`."""
    cd = _dense_dtype(x2)
    xc = x2.to(cd)
    return torch.cat([F.linear(xc, layer.dequantize(cd, rows))  # 2 MB blocks that stay in cache (memory.WIDEN_CHUNK)
                      for rows in row_blocks(layer.out_features, layer.in_features)], 1)


class Int8Linear(nn.Module):
    """``y = x @ (weight * scale[:, None]).T + bias`` with int8 ``weight`` (N, K) and bf16 ``scale`` (N,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None,
                 bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight", torch.empty(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(out_features, dtype=torch.bfloat16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        """Quantize one ``Linear`` (any float dtype), widening ``CHUNK`` weights at a time; meta stays meta."""
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, device=w.device,
                  bias_dtype=linear.bias.dtype if linear.bias is not None else torch.float32)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().clone()
        if w.is_meta:
            return mod
        for rows in row_blocks(mod.out_features, mod.in_features, CHUNK, 1):
            wf = w[rows].to(torch.float32, copy=True)  # (n, K), a copy: modified in place below
            lo, hi = torch.aminmax(wf, dim=1)
            scale = (torch.maximum(-lo, hi) / 127).clamp_min(1e-12).bfloat16()  # (n,) rounded before use
            mod.scale[rows] = scale
            mod.weight[rows] = wf.div_(scale.float()[:, None]).round_().clamp_(-127, 127).to(torch.int8)
        return mod

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice = slice(None)) -> torch.Tensor:
        """The float weight (n, K) this layer multiplies by (the reference for tests and the dense path)."""
        return self.weight[rows].to(dtype) * self.scale[rows].to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if (x.device.type == "cpu" and x2.shape[0] <= PACKED_MAX_ROWS and self.in_features % 16 == 0
                and _has_op("_weight_int8pack_mm")):
            xb = x2.to(torch.bfloat16).contiguous()
            if xb.data_ptr() % INT8_ALIGN:
                xb = xb.clone()  # a fresh allocation is aligned; the kernel would segfault on this one
            y = torch.ops.aten._weight_int8pack_mm(xb, self.weight, self.scale).to(x.dtype)  # (M, N)
        else:
            y = _dense_matmul(self, x2).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Embedding(nn.Module):
    """An embedding table held as int8 rows with a bf16 scale per row (``rows = weight[ids] * scale[ids]``); a
    lookup widens only the rows it reads, to ``out_dtype``.

    Its buffers have exactly :class:`Int8Linear`'s form (per-output-channel = per-row), so a tied output head
    quantized to int8 and the input embedding are one tensor (:meth:`sharing`): the table is quantized once and
    held once (0.31 GB for Qwen3-1.7B's 151936 x 2048, against 1.24 GB fp32 + 0.31 GB int8 head)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, device=None, out_dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.out_dtype = num_embeddings, embedding_dim, out_dtype
        self.register_buffer("weight", torch.empty(num_embeddings, embedding_dim, dtype=torch.int8, device=device))
        self.register_buffer("scale", torch.empty(num_embeddings, dtype=torch.bfloat16, device=device))

    @classmethod
    def sharing(cls, head: Int8Linear, out_dtype: torch.dtype = torch.float32) -> Int8Embedding:
        """The embedding whose rows are the int8 output head's (a tied head: the same tensors, nothing copied)."""
        mod = cls(head.out_features, head.in_features, device="meta", out_dtype=out_dtype)
        mod.weight, mod.scale = head.weight, head.scale
        return mod

    @classmethod
    def from_weight(cls, weight: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> Int8Embedding:
        """Quantize a float table (V, H) row by row, as :meth:`Int8Linear.from_linear` does its rows."""
        v, h = weight.shape
        return cls.sharing(Int8Linear.from_linear(_as_linear(weight)), out_dtype) if not weight.is_meta \
            else cls(v, h, device="meta", out_dtype=out_dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        w = F.embedding(ids, self.weight).to(self.out_dtype)  # (..., H) int8 rows, widened
        return w * self.scale[ids].to(self.out_dtype)[..., None]

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


def _as_linear(weight: torch.Tensor) -> nn.Linear:
    """A bias-free ``Linear`` around ``weight`` (N, K), not copied (to quantize a table as a layer)."""
    lin = nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="meta")
    lin.weight = nn.Parameter(weight, requires_grad=False)
    return lin


# --- int4: the CPU kernel's layout ----------------------------------------------------------------------------
# _convert_weight_to_int4pack_for_cpu stores output rows in blocks of B (torch's float vector width x 4): each
# block is (K, B/2) bytes, byte j of column k holding two rows' codes. "halves" (AVX2 B=32, AVX512 B=64) pairs
# row j with row j + B/2; "pairs" (non-vectorized builds, and the last partial block) pairs rows 2j and 2j+1.
_LAYOUTS = (("halves", 64), ("halves", 32), ("pairs", 32), ("pairs", 16), ("pairs", 64))


def _codes(portable: torch.Tensor) -> torch.Tensor:
    """(N, K/2) uint8 -> (N, K) codes 0..15 (even column in the low nibble)."""
    return torch.stack((portable & 15, portable >> 4), -1).flatten(1)  # (N, K)


def _nibbles(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes 0..15 -> (N, K/2) uint8, the portable form."""
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).contiguous()


def _split(rows: torch.Tensor, style: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A block's (B, ...) rows -> the rows that go to the low and the high nibbles, (B/2, ...) each."""
    half = rows.shape[0] // 2
    return (rows[:half], rows[half:]) if style == "halves" else (rows[0::2], rows[1::2])


def _to_kernel(portable: torch.Tensor, style: str, block: int) -> torch.Tensor:
    """Portable (N, K/2) codes -> the kernel's layout (same shape and bytes, rearranged).

    Works on the nibble-packed bytes directly: for rows ``lo``/``hi`` sharing a kernel byte, the byte of an even
    column is ``hi << 4 | lo & 15`` and of an odd one ``hi & 0xF0 | lo >> 4``, written through strided views.
    """
    n, half_k = portable.shape
    out = torch.empty(n * half_k, dtype=torch.uint8, device=portable.device)
    full = n // block * block
    for start, stop, b, sty in ((0, full, block, style), (full, n, n - full, "pairs")):
        if stop == start:
            continue
        lo, hi = _split(portable[start:stop].view(-1, b, half_k).transpose(0, 1), sty)  # (B/2, NB, K/2) each
        dst = out[start * half_k:stop * half_k].view(-1, half_k, 2, b // 2).permute(3, 0, 1, 2)  # (B/2, NB, K/2, 2)
        torch.bitwise_or(hi << 4, lo & 15, out=dst[..., 0])
        torch.bitwise_or(hi & 0xF0, lo >> 4, out=dst[..., 1])
    return out.view(n, half_k)


def _from_kernel(packed: torch.Tensor, style: str, block: int) -> torch.Tensor:
    """Inverse of :func:`_to_kernel`."""
    n, half_k = packed.shape
    flat = packed.reshape(-1)
    out = torch.empty(n, half_k, dtype=torch.uint8, device=packed.device)
    full = n // block * block
    for start, stop, b, sty in ((0, full, block, style), (full, n, n - full, "pairs")):
        if stop == start:
            continue
        src = flat[start * half_k:stop * half_k].view(-1, half_k, 2, b // 2).permute(3, 0, 1, 2)  # (B/2, NB, K/2, 2)
        even, odd = src[..., 0], src[..., 1]
        lo, hi = _split(out[start:stop].view(-1, b, half_k).transpose(0, 1), sty)  # (B/2, NB, K/2) views
        torch.bitwise_or(even & 15, odd << 4, out=lo)
        torch.bitwise_or(even >> 4, odd & 0xF0, out=hi)
    return out


@lru_cache(maxsize=1)
def int4_kernel_layout() -> tuple[str, int] | None:
    """The kernel layout on this machine, found by packing a probe both ways; None: use torch's packer."""
    if not _has_op("_convert_weight_to_int4pack_for_cpu"):
        return None
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (144, 64), generator=gen, dtype=torch.int32)  # 2x64 + 16 rows: full + tail
    want = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
    portable = _nibbles(codes.to(torch.uint8))
    for style, block in _LAYOUTS:
        if torch.equal(_to_kernel(portable, style, block), want):
            return style, block
    return None


class Int4Linear(nn.Module):
    """Weight-only int4 ``Linear``, group-wise along ``in_features``: ``w = (q - 8) * scale + zero``."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group_size: int = INT4_GROUP,
                 device=None, bias_dtype: torch.dtype = torch.float32):
        super().__init__()
        _check_int4(in_features, out_features, group_size)
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        self.register_buffer("weight", torch.empty(out_features, in_features // 2, dtype=torch.uint8, device=device))
        self.register_buffer("scales_and_zeros", torch.empty(in_features // group_size, out_features, 2,
                                                             dtype=torch.bfloat16, device=device))
        self.register_buffer("bias", torch.empty(out_features, dtype=bias_dtype, device=device) if bias else None)
        self._layout: tuple[str, int] | None = None  # the kernel layout ``weight`` is in now; None: portable
        self._kernel_weight: torch.Tensor | None = None  # torch-packed copy where our layout is unknown

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int = INT4_GROUP) -> Int4Linear:
        """Quantize one ``Linear`` (min/max per group, scale and zero rounded to bf16 before the codes)."""
        w = linear.weight.detach()
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size, device=w.device,
                  bias_dtype=linear.bias.dtype if linear.bias is not None else torch.float32)
        if linear.bias is not None:
            mod.bias = linear.bias.detach().clone()
        if w.is_meta:
            return mod
        n_groups = mod.in_features // group_size
        for rows in row_blocks(mod.out_features, mod.in_features, CHUNK, 1):
            wg = w[rows].to(torch.float32, copy=True).view(-1, n_groups, group_size)  # (n, G, g), a copy
            lo, hi = torch.aminmax(wg, dim=-1)  # (n, G)
            scale = ((hi - lo) / 15).clamp_min(1e-12).bfloat16().float()
            zero = (lo + 8 * scale).bfloat16().float()
            q = wg.sub_(zero[..., None]).div_(scale[..., None]).add_(8).round_().clamp_(0, 15).to(torch.uint8)
            mod.weight[rows] = _nibbles(q.flatten(1))
            mod.scales_and_zeros[:, rows] = torch.stack((scale, zero), -1).transpose(0, 1).bfloat16()  # (G, n, 2)
        return mod

    def portable_weight(self, rows: slice = slice(None)) -> torch.Tensor:
        """``weight[rows]`` in the portable (n, K/2) form whatever layout it is held in. A slice that starts on a
        kernel block and ends on one (or at the last row) is converted alone; any other converts the whole weight."""
        if self._layout is None:
            return self.weight[rows]
        start, stop, step = rows.indices(self.out_features)
        block = self._layout[1]
        if step == 1 and start % block == 0 and (stop % block == 0 or stop == self.out_features):
            return _from_kernel(self.weight[start:stop], *self._layout)  # the blocks are independent
        return _from_kernel(self.weight, *self._layout)[rows]

    def dequantize(self, dtype: torch.dtype = torch.float32, rows: slice = slice(None)) -> torch.Tensor:
        """The float weight (n, K) this layer multiplies by."""
        q = _codes(self.portable_weight(rows)).to(dtype)  # (n, K)
        n = q.shape[0]
        sz = self.scales_and_zeros[:, rows].to(dtype)  # (G, n, 2)
        scale, zero = sz[..., 0].t()[..., None], sz[..., 1].t()[..., None]  # (n, G, 1) each
        return ((q.view(n, -1, self.group_size) - 8) * scale + zero).view(n, self.in_features)  # (n, K)

    def pack(self) -> None:
        """Put ``weight`` in this CPU's kernel layout (in place, idempotent; done on first CPU forward). A weight
        held in another CPU's layout (:meth:`hold_layout`) goes through the portable form."""
        with _PACK_LOCK:
            if self._kernel_weight is not None or self.weight.device.type != "cpu":
                return
            layout = int4_kernel_layout()
            if layout is not None and self._layout == layout:
                return
            if layout is not None:
                self.weight = _to_kernel(self.portable_weight(), *layout)
                self._layout = layout
            elif _has_op("_convert_weight_to_int4pack_for_cpu"):  # unknown layout: torch packs a second copy
                self._kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
                    _codes(self.portable_weight()).to(torch.int32), 1)

    def hold_layout(self, layout: tuple[str, int] | None) -> None:
        """Declare that ``weight`` (just loaded) is in the kernel ``layout`` (None: portable), as a pre-quantized
        checkpoint records it; on a CPU whose kernel wants that layout nothing is rearranged, else :meth:`pack`
        converts on first use."""
        self._layout, self._kernel_weight = (None if layout is None else tuple(layout)), None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # (M, K)
        if x.device.type == "cpu" and _has_op("_weight_int4pack_mm_for_cpu"):
            self.pack()
            packed = self.weight if self._kernel_weight is None else self._kernel_weight
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2.to(torch.bfloat16).contiguous(), packed,
                                                           self.group_size, self.scales_and_zeros)  # (M, N)
            y = y.to(x.dtype)
        else:
            y = _dense_matmul(self, x2).to(x.dtype)  # (M, N)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination[prefix + "weight"] = self.portable_weight()  # checkpoints never hold a CPU-specific layout

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._layout, self._kernel_weight = None, None  # the loaded weight is portable; packed again on use

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"group_size={self.group_size}")


def _check_int4(in_features: int, out_features: int, group_size: int) -> None:
    if group_size not in INT4_GROUPS:
        raise ValueError(f"int4 group size must be one of {INT4_GROUPS}, got {group_size}")
    if in_features % group_size or out_features % 16:
        raise ValueError(f"int4 needs in_features % group_size == 0 and out_features % 16 == 0 (the CPU kernel's "
                         f"blocks); got {in_features} -> {out_features} with group {group_size}")


def quantizable_linears(module: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Names of the ``Linear`` modules :func:`quantize_linears` replaces: all but LoRA A/B and ``skip`` matches."""
    skip = tuple(skip)
    return [name for name, m in module.named_modules() if isinstance(m, nn.Linear) and ".lora_" not in name
            and not name.startswith("lora_") and not any(s in name for s in skip)]


def quantize_linears(module: nn.Module, mode: str, skip: Iterable[str] = (), group_size: int = INT4_GROUP,
                     workers: int | None = None, pack: bool = True, names: Iterable[str] | None = None) -> nn.Module:
    """Replace each ``Linear`` of ``module`` (in place) by an :class:`Int8Linear` or :class:`Int4Linear`.

    LoRA A/B matrices (``.lora_`` in the name) and names containing any ``skip`` substring stay float. Weights of
    any float dtype are widened ``CHUNK`` at a time, never the whole model; a meta-device module gets empty
    quantized modules on meta (to ``load_state_dict(..., strict=True, assign=True)`` a quantized checkpoint into).
    Layers are quantized ``workers`` at a time in threads (default: torch's thread count); int4 layers are packed
    for this CPU when ``pack``. Tied weights (an output head sharing the embedding) get their own quantized copy.
    ``names``: exactly these ``Linear`` layers (a pre-quantized checkpoint's list) instead of the rule above.
    """
    if mode not in MODES:
        raise ValueError(f"quantize mode must be one of {MODES}, got {mode!r}")
    names = quantizable_linears(module, skip) if names is None else list(names)
    targets = []
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        lin = getattr(parent, leaf)
        if not isinstance(lin, nn.Linear):
            raise ValueError(f"{name} is a {type(lin).__name__}, not a Linear layer to quantize")
        if mode == "int4":
            try:
                _check_int4(lin.in_features, lin.out_features, group_size)
            except ValueError as e:
                raise ValueError(f"{name}: {e}; pass skip=[{name!r}] to keep it float") from None
        targets.append((parent, leaf, lin))

    def convert(target: tuple[nn.Module, str, nn.Linear]) -> nn.Module:
        lin = target[2]
        if mode == "int8":
            return Int8Linear.from_linear(lin)
        q = Int4Linear.from_linear(lin, group_size)
        if pack:
            q.pack()
        return q

    with ThreadPoolExecutor(max_workers=workers or max(1, torch.get_num_threads())) as pool:
        # map() yields in order; each swap drops that layer's float weight while later ones still run
        for (parent, leaf, _), qmod in zip(targets, pool.map(convert, targets), strict=True):
            setattr(parent, leaf, qmod)
    return module


def pack_int4(module: nn.Module) -> nn.Module:
    """Pack every :class:`Int4Linear` of ``module`` for this CPU (after loading a checkpoint; else on first use)."""
    for m in module.modules():
        if isinstance(m, Int4Linear):
            m.pack()
    return module
