"""Memory: returning freed heap memory to the OS (glibc ``malloc_trim``); weights held narrower than computed.

Long recordings run as many windows of slightly different lengths; the encoder's large temporaries then have
different sizes each call, glibc serves them from its heap and keeps the freed pages, and resident memory creeps
up over an hour of windows although nothing is kept. Trimming after each encoder call and each batch (about a
millisecond) keeps the peak flat. Pinning glibc's mmap threshold instead also works but made decoding 3.5x slower.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

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


def _to_compute(module, args) -> None:
    module.to(module._nemo_lite_compute_dtype)


def _to_storage(module, args, output) -> None:
    module.to(module._nemo_lite_storage_dtype)


def compute_on_call(modules, compute: torch.dtype) -> None:
    """Keep each module's floating-point weights in their present (narrower) dtype at rest and widen them to
    ``compute`` only while that module runs, one module at a time; narrowing back afterwards is lossless, since
    every value came from the narrower dtype.

    Used for the FastConformer layers in exact mode: the checkpoint is bf16 and NeMo computes fp32 from bf16
    values, so the fp32 weights a layer sees are identical whichever way they are held, and the results are
    bit-identical; the encoder then holds 2 bytes a weight instead of 4 (1.6 GB less for Canary-Qwen-2.5B) and
    converts one layer (~25 M weights) per call. Inference only: the widened weights are temporaries.
    """
    for module in modules:
        dtypes = {p.dtype for p in module.parameters() if p.is_floating_point()}
        if len(dtypes) != 1:
            raise ValueError(f"compute_on_call needs one floating dtype per module, found {sorted(map(str, dtypes))}")
        module._nemo_lite_storage_dtype = dtypes.pop()
        module._nemo_lite_compute_dtype = compute
        module.register_forward_pre_hook(_to_compute)
        module.register_forward_hook(_to_storage)
