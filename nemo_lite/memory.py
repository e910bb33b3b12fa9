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


def _widen(module, args) -> None:
    """Pre-hook: swap each narrow parameter's (and float buffer's, e.g. BatchNorm statistics) storage for a
    widened copy; the narrow one is kept aside."""
    tensors = [*module.parameters(), *module.buffers()]
    module._nemo_lite_narrow = [(p, p.data) for p in tensors
                                if p.is_floating_point() and p.dtype != module._nemo_lite_compute]
    for p, narrow in module._nemo_lite_narrow:
        p.data = narrow.to(module._nemo_lite_compute)


def _restore(module, args, output) -> None:
    """Post-hook: put the narrow storage back; the widened copies are freed."""
    for p, narrow in module._nemo_lite_narrow:
        p.data = narrow
    module._nemo_lite_narrow = []


def compute_on_call(modules, compute: torch.dtype) -> None:
    """Keep each module's floating-point weights in their present (narrower) dtype at rest and give the module
    widened ``compute`` copies only while it runs, one module at a time (the narrow tensors are put back after;
    nothing is narrowed again, so it costs one widening per call).

    Used for the FastConformer layers in exact mode: the checkpoint is bf16 and NeMo computes fp32 from bf16
    values, so the fp32 weights a layer sees are identical whichever way they are held, and the results are
    bit-identical; the encoder then holds 2 bytes a weight instead of 4 (1.6 GB less for Canary-Qwen-2.5B) and
    widens one layer (~25 M weights) at a time. Inference only: the widened weights are temporaries.
    """
    for module in modules:
        module._nemo_lite_compute = compute
        module._nemo_lite_narrow = []
        module.register_forward_pre_hook(_widen)
        module.register_forward_hook(_restore)
