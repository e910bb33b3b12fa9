"""Device, dtype and batching policy shared by every inference path (both designs, transcription, serving).

One place answers "how big a batch on this device" and "which dtype does this name mean", so model classes and
the transcription/serving code above them read the same numbers and never import each other for them.

Figures behind the defaults (README, Performance; WORKLOG sessions 2-3):
- CPU: decoding 8 rows at once gives ~4x the tokens/s of one row; the encoder and prefill are compute-bound, so
  their batches are bounded by memory (one 40 s clip's worth), not speed.
- GPU (H100): RTFx 10 at batch 1, 322 at 32, 695 at 128; larger encoder and prefill batches keep the card busy.
- CPU threads (:func:`default_threads`, README "Threads"): torch's OpenMP threads spin-wait for each other, so
  one that shares its core with another process stalls every kernel: on 2 cores loaded by other jobs (load
  average 6-12), 2 threads transcribed with the tiny model 3.4-11x slower than 1 (``bench/threads.py``), and
  the full-size model's two-thread runs swung 10x; on an idle machine more cores pay off for the compute-bound
  full-size encoder. So the default takes the cores that are free now: the cores this process may use minus the
  load average.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

CPU_BATCH_SIZE = 8  # rows decoded together by default on CPU
ACCELERATOR_BATCH_SIZE = 64  # on a GPU
ENCODER_BATCH_SAMPLES = 40 * SAMPLE_RATE  # padded samples per encoder call on CPU: one 40 s window
# On a GPU: 32 such windows (e.g. 128 clips of 10 s) per call; the first subsampling conv's output is then
# ~2 GB in bf16, small next to a card's memory, and fewer, larger calls keep the GPU busy.
ACCELERATOR_ENCODER_BATCH_SAMPLES = 32 * ENCODER_BATCH_SAMPLES
CPU_PREFILL_TOKENS = 1024  # rows x positions per prefill forward on CPU: one 40 s clip's prompt
ACCELERATOR_PREFILL_TOKENS = 1 << 16  # 128 rows x 512 positions: ~0.8 GB of bf16 MLP activations at full size

DTYPE_NAMES = {  # every spelling a user may write -> torch dtype name; the one table for configs, CLI and API
    "float32": "float32", "fp32": "float32", "f32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
}


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str | None = None) -> torch.dtype:
    """A dtype or its name -> ``torch.dtype``; None -> the device's default (fp32 on CPU, NeMo's compute; bf16 on
    accelerators). An unknown name raises ``ValueError`` listing the accepted ones."""
    import torch

    if dtype is None:
        kind = torch.device(device or "cpu").type
        return torch.float32 if kind == "cpu" else torch.bfloat16
    if isinstance(dtype, torch.dtype):
        return dtype
    name = DTYPE_NAMES.get(str(dtype).lower().removeprefix("torch."))
    if name is None:
        raise ValueError(f"dtype {dtype!r} not supported; use one of {sorted(DTYPE_NAMES)}")
    return getattr(torch, name)


def default_device() -> str:
    """``cuda`` when a CUDA device is usable, else ``cpu`` (what the command line picks without ``--device``)."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: torch.device | str) -> torch.device:
    """A device this torch build can use, or ``ValueError`` saying why not (e.g. CUDA on a CPU-only build)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "this torch build has no CUDA" if not torch.backends.cuda.is_built() else "no CUDA device is visible"
        raise ValueError(f"device {str(device)!r} cannot be used: {why}; use --device cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} cannot be used: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r} cannot be used: MPS is not available on this machine")
    return dev


def default_threads() -> int:
    """CPU threads for torch when the caller does not say: the cores this process may use (its affinity mask) minus
    the machine's 1-minute load average, rounded, at least 1 (all of them where no load average exists)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return cores
    return max(1, min(cores, cores - round(load)))


def set_threads(threads: int | None = None) -> int:
    """Set torch's CPU threads: ``threads`` (0: torch's own default, one per core), else ``OMP_NUM_THREADS`` when
    the environment sets it, else :func:`default_threads`. Returns the number in use."""
    import torch

    if threads is None and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()  # torch already read it at import
    if threads == 0:
        threads = os.cpu_count() or 1
    torch.set_num_threads(threads or default_threads())
    return torch.get_num_threads()


def default_batch_size(device: torch.device) -> int:
    """Rows decoded together when the caller does not say: :data:`CPU_BATCH_SIZE` or :data:`ACCELERATOR_BATCH_SIZE`."""
    return CPU_BATCH_SIZE if device.type == "cpu" else ACCELERATOR_BATCH_SIZE


def encoder_batch_samples(device: torch.device) -> int:
    """Padded samples per encoder call on ``device`` (see :data:`ENCODER_BATCH_SAMPLES`)."""
    return ENCODER_BATCH_SAMPLES if device.type == "cpu" else ACCELERATOR_ENCODER_BATCH_SAMPLES


def prefill_budget(device: torch.device) -> int:
    """Rows x positions per prefill forward on ``device`` (see :mod:`nemo_lite.decoding`)."""
    return CPU_PREFILL_TOKENS if device.type == "cpu" else ACCELERATOR_PREFILL_TOKENS


def encoder_groups(lengths: list[int], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of audios that share one zero-padded encoder call: a run grows while
    (its size) x (its longest audio) stays within ``max_samples``; an audio longer than that runs alone."""
    groups, start = [], 0
    while start < len(lengths):
        end, longest = start + 1, lengths[start]
        while end < len(lengths) and (end - start + 1) * max(longest, lengths[end]) <= max_samples:
            longest = max(longest, lengths[end])
            end += 1
        groups.append((start, end))
        start = end
    return groups
