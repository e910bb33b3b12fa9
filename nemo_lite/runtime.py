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
- bf16 on CPU (:func:`compute_plan`): without avx512_bf16/amx_bf16 (x86) or ARM bf16, torch emulates bf16 matrix
  products through fp32 conversions; on an AVX2-only EPYC the whole model in bf16 transcribed a 5 s clip in 44.6 s
  against 32.0 s in fp32 (WORKLOG, issue 16). There a requested bf16 holds the weights bf16 and computes fp32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .audio import SAMPLE_RATE

if TYPE_CHECKING:
    import torch

    from .cpu import CpuInfo

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
BF16_ENV = "NEMO_LITE_BF16"  # "native": bf16 matrix products even where the CPU emulates them (compute_plan)


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


@dataclass(frozen=True)
class ComputePlan:
    requested: torch.dtype  # the dtype the user asked for (or the device's default)
    compute: torch.dtype  # the dtype activations and matrix products run in
    rest: torch.dtype | None  # weights held in this dtype and widened per layer to `compute`; None: held in `compute`
    reason: str  # why, for `nemo-lite info` and the load log

    def describe(self) -> str:
        """One line: ``bf16 requested -> weights bf16 at rest, fp32 compute because ...``."""
        req, comp = _short(self.requested), _short(self.compute)
        held = f"weights {_short(self.rest)} at rest, {comp} compute" if self.rest is not None else f"{comp} compute"
        return f"{req} requested -> {held} ({self.reason})"


def _short(dtype: torch.dtype) -> str:
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(str(dtype).removeprefix("torch."),
                                                                          str(dtype))


def compute_plan(dtype: torch.dtype | str | None, device: torch.device | str | None = None,
                 cpu: CpuInfo | None = None, force: str | None = None) -> ComputePlan:
    """The one policy for which dtype a model computes in and which its weights are held in.

    On a CPU without native bf16 (:meth:`nemo_lite.cpu.CpuInfo.native_bf16`), bf16 is a memory saving only: the
    weights stay bf16 at rest and each layer widens its weight to fp32 for the product (exact mode does this for
    the encoder), since emulated bf16 matrix products were slower than fp32 at many rows; the LLM's one-position
    decoding steps still multiply in bf16 (``NarrowLinear.step_in_narrow``), where widening cost more than it saved.
    With native bf16, and on any other device or dtype, the requested dtype is the compute dtype. ``cpu``: the CPU
    to decide for (default: this one); ``force``: ``"native"`` keeps bf16 compute anyway (default: the
    ``NEMO_LITE_BF16`` environment variable).
    """
    import torch

    from .cpu import BF16_FLAGS, cpu_info

    want = resolve_dtype(dtype, device)
    if torch.device(device or "cpu").type != "cpu" or want != torch.bfloat16:
        return ComputePlan(want, want, None, "as requested")
    cpu = cpu or cpu_info()
    force = os.environ.get(BF16_ENV, "") if force is None else force
    if cpu.native_bf16():
        return ComputePlan(want, want, None, "native bf16: " + " ".join(sorted(cpu.flags & BF16_FLAGS)))
    if force == "native":
        return ComputePlan(want, want, None, f"{BF16_ENV}=native, although bf16 is emulated on this CPU")
    return ComputePlan(want, torch.float32, want, f"no {'/'.join(sorted(BF16_FLAGS))}: bf16 products are emulated; "
                       f"{BF16_ENV}=native forces them")


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


def prefer_passive_waits() -> None:
    """Ask OpenMP to put idle threads to sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``) unless the
    environment says otherwise. Only takes effect before torch is imported (the OpenMP runtime reads it when it
    loads), so the command line calls it first thing. Why: a spinning thread that waits for a partner sharing its
    core with another busy process takes the core from it. Int4 full-size decoding, 2 threads, this 2-core machine
    (session 7): quiet, 183-201 ms a token either way; with ``yes`` busy on one core, 578-605 ms spinning against
    314 ms passive (README, "Threads")."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


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
