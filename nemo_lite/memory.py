"""Memory: returning freed heap memory to the OS (glibc ``malloc_trim``); weights held narrower than computed
(:class:`NarrowLinear`, :class:`NarrowConv1d`, :class:`NarrowEmbedding`, :func:`hold_narrow` before loading,
:func:`narrow_loaded` after).

Long recordings run as many windows of slightly different lengths; the encoder's large temporaries then have
different sizes each call, glibc serves them from its heap and keeps the freed pages, and resident memory creeps
up over an hour of windows although nothing is kept. Trimming after each encoder call and each batch (about a
millisecond) keeps the peak flat. Pinning glibc's mmap threshold instead also works but made decoding 3.5x slower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Weights widened at a time for a product (NarrowLinear here, the int8/int4 dense path in nemo_lite.quant): 2 MB
# in fp32. Widening a whole 2048 x 6144 matrix allocates 50 MB, above glibc's mmap threshold, so every call maps and
# zero-faults fresh pages, and the widened copy goes to DRAM and back before it is multiplied; a 2 MB block is
# reused from the heap and still in cache (AVX2 EPYC, one 2048 x 6144 layer: README, "Speed advice per CPU kind";
# int8 prefill of 80 positions on full-width layers 0.844 s with 32 MB blocks, 0.497 s with these).
WIDEN_CHUNK = 1 << 19
# Blocks are whole multiples of 64 output rows: so cut, the products equalled one fp32 GEMM over the whole matrix
# bit for bit (torch 2.13, AVX2; 85-row blocks did not), which tests/test_loading.py checks.
ROW_BLOCK = 64
_MALLOC_TRIM = None  # resolved on first use: the libc function, or False where there is none


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc ``malloc_trim(0)``; a no-op without glibc)."""
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            import ctypes

            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def row_blocks(n_rows: int, row_len: int, chunk: int = WIDEN_CHUNK, multiple: int = ROW_BLOCK) -> list[slice]:
    """Output-row slices of a (``n_rows``, ``row_len``) weight holding about ``chunk`` weights each, in whole
    multiples of ``multiple`` rows (at least one multiple): the blocks a weight is widened in."""
    step = max(multiple, chunk // max(1, row_len) // multiple * multiple)
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


class NarrowLinear(nn.Linear):
    """A ``Linear`` whose weights are held in a narrower dtype (the checkpoint's bf16) and widened to the input's
    dtype for each call, :data:`WIDEN_CHUNK` weights at a time (a block of output rows). Stateless during the call
    (the widened block is a temporary), so it is exception-safe and safe with concurrent callers; module and
    parameter names are ``nn.Linear``'s, so checkpoints load as usual.

    ``step_in_narrow`` (bf16 mode on a CPU without native bf16, set by ``SpeechLM._hold_at_rest``; off in exact
    mode): a single-position input (``(..., 1, K)``: a decoding step, or the head on the last position) is
    multiplied in the weight's dtype instead, the input rounded to it and the output widened back. Widening a
    weight for a one-row product moves 10 bytes per weight (read bf16, write and read fp32) against exact mode's 4,
    and made a full-size decoding step 2.6x slower than exact mode's; torch's bf16 product widens in registers and
    reads 2. The choice is by shape, not by batch size, so a row's result does not depend on its batch."""

    step_in_narrow = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if self.step_in_narrow and x.dim() >= 2 and x.shape[-2] == 1 and w.dtype != x.dtype:
            bias = None if self.bias is None else self.bias.to(w.dtype)
            return F.linear(x.to(w.dtype), w, bias).to(x.dtype)  # (..., 1, N)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if w.dtype == x.dtype or w.numel() <= WIDEN_CHUNK:
            return F.linear(x, w.to(x.dtype), bias)
        # the bias goes into each block's product, as F.linear fuses it
        return torch.cat([F.linear(x, w[rows].to(x.dtype), None if bias is None else bias[rows])
                          for rows in row_blocks(*w.shape)], -1)  # (..., N)


class NarrowConv1d(nn.Conv1d):
    """A ``Conv1d`` held narrow and widened per call, like :class:`NarrowLinear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return self._conv_forward(x, self.weight.to(x.dtype), bias)


class NarrowEmbedding(nn.Embedding):
    """An ``nn.Embedding`` whose table is held narrow (the checkpoint's bf16) and whose looked-up rows are widened
    to ``out_dtype``: a lookup widens only the rows it reads. With a bf16 file and fp32 compute the rows are
    exactly those of an fp32 table (bf16 -> fp32 is exact), at half the memory (0.6 GB less for Qwen3-1.7B's
    151936 x 2048 table). Used where the tied output head has its own quantized copy (the quantized modes)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, out_dtype: torch.dtype = torch.float32,
                 **kwargs) -> None:
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.out_dtype = out_dtype  # the compute dtype rows are widened to (not saved: the model's compute dtype)

    @classmethod
    def holding(cls, weight: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> NarrowEmbedding:
        """A narrow embedding around an existing (narrow) table, shared, not copied."""
        mod = cls(*weight.shape, out_dtype=out_dtype, device="meta")
        mod.weight = nn.Parameter(weight, requires_grad=False)
        return mod

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids).to(self.out_dtype)  # (..., H): rows gathered narrow, then widened


def hold_embedding_narrow(causal_lm: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype = torch.float32) -> None:
    """Make the input embedding of a (meta-device, not yet loaded) Hugging Face causal LM a :class:`NarrowEmbedding`
    of ``dtype``, before loading its table in the file's dtype."""
    old = causal_lm.get_input_embeddings()
    new = NarrowEmbedding.holding(torch.empty(old.num_embeddings, old.embedding_dim, dtype=dtype, device="meta"),
                                  out_dtype)
    new.padding_idx = old.padding_idx
    causal_lm.set_input_embeddings(new)


def hold_narrow(root: nn.Module, names: list[str] | None = None) -> list[str]:
    """Replace every ``nn.Linear`` / ``nn.Conv1d`` under ``root`` (built on the meta device, before loading) by
    :class:`NarrowLinear` / :class:`NarrowConv1d`, or only those in ``names``; returns their names. Load their
    weights in the file's dtype.

    Used for the FastConformer layers in exact mode: the checkpoint is bf16 and NeMo computes fp32 from bf16
    values, so the fp32 weights a layer sees are identical whichever way they are held, and results are
    bit-identical; the encoder then holds 2 bytes a weight instead of 4 (1.6 GB less for Canary-Qwen-2.5B) and
    widens one weight matrix at a time. Inference only: the widened weights are temporaries.
    """
    swapped = []
    wanted = None if names is None else set(names)
    for name, mod in list(root.named_modules()):
        kind = {nn.Linear: NarrowLinear, nn.Conv1d: NarrowConv1d}.get(type(mod))
        if kind is None or (wanted is not None and name not in wanted):
            continue
        if kind is NarrowLinear:
            new = NarrowLinear(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        else:
            new = NarrowConv1d(mod.in_channels, mod.out_channels, mod.kernel_size, stride=mod.stride,
                               padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                               bias=mod.bias is not None, padding_mode=mod.padding_mode, device="meta")
        parent, _, leaf = name.rpartition(".")
        setattr(root.get_submodule(parent) if parent else root, leaf, new)
        swapped.append(name)
    return swapped


def narrow_loaded(root: nn.Module, dtype: torch.dtype, skip: Callable[[str], bool] = lambda name: False,
                  step_in_narrow: bool = False) -> list[str]:
    """After loading: hold the weights of the ``nn.Linear`` / ``nn.Conv1d`` modules under ``root`` (except names
    ``skip`` accepts) and of :class:`NarrowLinear` / :class:`NarrowConv1d` already there in ``dtype``, widened per
    call (:func:`hold_narrow`'s modules; ``step_in_narrow``: :class:`NarrowLinear`'s one-position products in
    ``dtype``). A tensor already in ``dtype`` is shared, not copied, and a weight tied to another (an LLM's output
    head and input embedding) stays one tensor. Returns the names swapped."""
    old = {n: m for n, m in root.named_modules() if type(m) in (nn.Linear, nn.Conv1d) and not skip(n)}
    swapped = hold_narrow(root, list(old))
    held: dict[int, nn.Parameter] = {}  # id of a loaded weight -> its narrow Parameter (tied weights: one)
    for name, mod in root.named_modules():
        if not isinstance(mod, (NarrowLinear, NarrowConv1d)) or skip(name):
            continue
        if isinstance(mod, NarrowLinear):
            mod.step_in_narrow = step_in_narrow
        src = old.get(name, mod)
        key = id(src.weight)
        if key not in held:
            held[key] = nn.Parameter(src.weight.detach().to(dtype), requires_grad=False)
        mod.weight = held[key]
        if src.bias is not None:
            mod.bias = nn.Parameter(src.bias.detach(), requires_grad=False)  # widened per call like the weight
    return swapped


def cast_floats(root: nn.Module, dtype: torch.dtype, skip: tuple[type, ...] = (NarrowLinear, NarrowConv1d)) -> None:
    """Cast the floating-point parameters and buffers under ``root`` to ``dtype``, except those of ``skip``
    modules (held narrow on purpose, or about to be quantized)."""
    for mod in root.modules():
        if isinstance(mod, skip):
            continue
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.is_floating_point() and p.dtype != dtype:
                setattr(mod, name, nn.Parameter(p.detach().to(dtype), requires_grad=p.requires_grad))
        for name, b in list(mod.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point() and b.dtype != dtype:
                setattr(mod, name, b.to(dtype))
