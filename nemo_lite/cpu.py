"""The CPU's instruction set, detected at run time: which low-precision kernels it runs natively.

Read once from ``/proc/cpuinfo`` on Linux (x86 ``flags``, ARM ``Features``), from ``sysctl`` on macOS, and
otherwise from ``torch.backends.cpu.get_cpu_capability()`` (the vector ISA torch's kernels were dispatched to:
``AVX2``, ``AVX512``, ``SVE256``, ``DEFAULT`` ...). The result is cached: a frozen :class:`CpuInfo`.

Why it matters here (``nemo_lite.quant`` and the docs in ``docs/quant.md``): bf16 matrix products are only fast
with ``avx512_bf16``/``amx_bf16`` (x86) or ``bf16`` (ARM); without them torch converts to fp32 and a bf16
``Linear`` can be slower than fp32 at prefill sizes. int8 dot products (``avx512_vnni``/``avx_vnni``/AMX int8,
ARM ``asimddp``/``i8mm``) speed up int8 x int8 GEMMs (dynamic quantization), not weight-only int8, whose
kernels widen the weights to fp32.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache

# Flags of interest, as Linux names them in /proc/cpuinfo.
X86_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
ARM_FLAGS = ("asimd", "asimddp", "sve", "sve2", "bf16", "i8mm")
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})  # any of these: bf16 matrix products in hardware
# macOS sysctl keys (hw.optional.*) -> the Linux name of the same feature.
_MACOS_KEYS = {"arm.FEAT_DotProd": "asimddp", "arm.FEAT_BF16": "bf16", "arm.FEAT_I8MM": "i8mm",
               "AdvSIMD": "asimd", "avx2_0": "avx2", "fma": "fma", "avx512f": "avx512f"}


@dataclass(frozen=True)
class CpuInfo:
    model: str  # marketing name ("AMD EPYC", "Apple M2", ...); "" when unknown
    arch: str  # platform.machine(): "x86_64", "aarch64", "arm64"
    flags: frozenset[str]  # the flags of interest present (Linux names, see X86_FLAGS / ARM_FLAGS)
    cores: int  # logical CPUs usable by this process
    torch_capability: str  # torch's vector ISA ("AVX2", "AVX512", "DEFAULT"...); "" if torch was not imported
    source: str  # where the flags came from: "/proc/cpuinfo", "sysctl" or "torch"

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def native_bf16(self) -> bool:
        """bf16 matrix products run in hardware (not emulated through fp32)."""
        return bool(self.flags & BF16_FLAGS)

    def native_int8_dot(self) -> bool:
        """int8 x int8 dot-product instructions (VNNI, AMX int8, ARM dot product / i8mm)."""
        return bool(self.flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"})

    def describe(self) -> str:
        """One line for ``nemo-lite info``."""
        shown = sorted(self.flags, key=(X86_FLAGS + ARM_FLAGS).index)
        torch_cap = f", torch {self.torch_capability}" if self.torch_capability else ""
        return (f"{self.model or 'unknown CPU'} ({self.arch}, {self.cores} cores{torch_cap}): "
                f"{' '.join(shown) or 'no SIMD flags of interest'}; native bf16 {'yes' if self.native_bf16() else 'no'}"
                f", int8 dot {'yes' if self.native_int8_dot() else 'no'}")


def _proc_cpuinfo() -> tuple[str, set[str]] | None:
    """(model name, flags) from Linux's /proc/cpuinfo (first CPU), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 16)  # the first CPU's block is a few KB
    except OSError:
        return None
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def _sysctl(name: str) -> str:
    try:
        return subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _macos() -> tuple[str, set[str]]:
    flags = {linux for key, linux in _MACOS_KEYS.items() if _sysctl(f"hw.optional.{key}") == "1"}
    return _sysctl("machdep.cpu.brand_string"), flags


def _torch_capability(load: bool) -> str:
    """torch's dispatch capability; torch is imported only when ``load`` (importing it costs seconds)."""
    if not load and "torch" not in sys.modules:
        return ""
    try:
        import torch

        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError, RuntimeError):
        return ""


def _from_capability(cap: str) -> set[str]:
    """The flags a torch dispatch capability implies (a lower bound when nothing better is readable)."""
    cap = cap.upper()
    if cap.startswith("AVX512"):
        return {"avx2", "fma", "avx512f"}
    if cap.startswith("AVX2"):
        return {"avx2", "fma"}
    if cap.startswith("SVE"):
        return {"asimd", "sve"}
    return set()


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU (cached: read once per process)."""
    arch = platform.machine()
    found, source = _proc_cpuinfo(), "/proc/cpuinfo"
    if found is None or not found[1]:
        found, source = (_macos(), "sysctl") if platform.system() == "Darwin" else (None, "torch")
    model, flags = found if found is not None else ("", set())
    cap = _torch_capability(load=not flags)
    if not flags:
        flags, source = _from_capability(cap), "torch"
    if not model:
        model = platform.processor()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    wanted = set(X86_FLAGS + ARM_FLAGS)
    return CpuInfo(model=model, arch=arch, flags=frozenset(flags & wanted), cores=cores, torch_capability=cap,
                   source=source)


def native_bf16() -> bool:
    """This CPU multiplies bf16 matrices in hardware (avx512_bf16 / amx_bf16 / ARM bf16)."""
    return cpu_info().native_bf16()


def native_int8_dot() -> bool:
    """This CPU has int8 dot-product instructions (VNNI / AMX int8 / ARM asimddp, i8mm)."""
    return cpu_info().native_int8_dot()


def describe() -> str:
    """One line describing this CPU, for ``nemo-lite info``."""
    return cpu_info().describe()
