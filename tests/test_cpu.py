"""Tier 1: the CPU compute policy (nemo_lite.runtime.compute_plan) on fake CPUs, the narrow linear layer's
per-block widening, and what ``nemo-lite info`` prints about them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nemo_lite import cpu, memory
from nemo_lite.cli import main
from nemo_lite.options import LoadOptions
from nemo_lite.runtime import BF16_ENV, compute_plan


def fake_cpu(*flags: str, arch: str = "x86_64") -> cpu.CpuInfo:
    return cpu.CpuInfo(model="Fake CPU", arch=arch, flags=frozenset(flags), cores=2, torch_capability="AVX2",
                       source="test")


AVX2 = fake_cpu("avx2", "fma")  # this project's EPYC
AVX512_VNNI = fake_cpu("avx2", "fma", "avx512f", "avx512_vnni")  # Ice Lake: int8 dot products, no bf16
SAPPHIRE_RAPIDS = fake_cpu("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
ARM_BF16 = fake_cpu("asimd", "asimddp", "bf16", "i8mm", arch="aarch64")  # Graviton 3 / Apple M2


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(BF16_ENV, raising=False)


@pytest.mark.parametrize("info", [AVX2, AVX512_VNNI])
def test_bf16_without_native_bf16_is_held_bf16_and_computed_fp32(info):
    plan = compute_plan("bf16", "cpu", info)
    assert (plan.requested, plan.compute, plan.rest) == (torch.bfloat16, torch.float32, torch.bfloat16)
    assert plan.describe().startswith("bf16 requested -> weights bf16 at rest, fp32 compute (no ")


@pytest.mark.parametrize("info", [SAPPHIRE_RAPIDS, ARM_BF16])
def test_bf16_with_native_bf16_computes_bf16(info):
    plan = compute_plan("bfloat16", "cpu", info)
    assert (plan.compute, plan.rest) == (torch.bfloat16, None)
    assert plan.describe().startswith("bf16 requested -> bf16 compute (native bf16: ")


def test_other_devices_and_dtypes_unchanged():
    assert compute_plan("bf16", "cuda", AVX2).compute == torch.bfloat16  # the host CPU does not matter
    assert compute_plan(None, "cuda", AVX2).rest is None
    assert (compute_plan(None, "cpu", AVX2).compute, compute_plan(None, "cpu", AVX2).rest) == (torch.float32, None)
    assert compute_plan("fp16", "cpu", AVX2).compute == torch.float16  # only bf16 is re-planned


def test_native_bf16_can_be_forced(monkeypatch):
    assert compute_plan("bf16", "cpu", AVX2, force="native").compute == torch.bfloat16
    monkeypatch.setenv(BF16_ENV, "native")
    plan = compute_plan("bf16", "cpu", AVX2)
    assert (plan.compute, plan.rest) == (torch.bfloat16, None) and BF16_ENV in plan.reason


def test_load_options_follow_the_plan(monkeypatch):
    monkeypatch.setattr(cpu, "cpu_info", lambda: AVX2)
    opts = LoadOptions(dtype="bf16")
    assert (opts.compute_dtype, opts.load_dtype) == (torch.float32, torch.bfloat16)
    with pytest.raises(ValueError, match="encoder_dtype"):
        LoadOptions(dtype="bf16", encoder_dtype="fp32")
    with pytest.raises(ValueError, match="int8"):  # quantize still wants fp32 asked for, whatever is computed
        LoadOptions(dtype="bf16", quantize="int8")
    monkeypatch.setattr(cpu, "cpu_info", lambda: SAPPHIRE_RAPIDS)
    assert LoadOptions(dtype="bf16").load_dtype == torch.bfloat16 == LoadOptions(dtype="bf16").compute_dtype


@pytest.mark.parametrize(("n_out", "n_in"), [(1000, 1024), (2048, 640), (320, 4096)])
@pytest.mark.parametrize("rows", [1, 8, 77])
def test_narrow_linear_blocks_equal_one_fp32_product(n_out, n_in, rows):
    """The widened-per-block product equals an fp32 ``F.linear`` on the bf16-rounded weight bit for bit (blocks of
    whole 64-row multiples; ragged last block); measured so on torch 2.13/AVX2, where 85-row blocks differed."""
    torch.manual_seed(0)
    assert n_out * n_in > memory.WIDEN_CHUNK  # the blocked path
    weight = torch.randn(n_out, n_in).to(torch.bfloat16)
    layer = memory.NarrowLinear(n_in, n_out, device="meta")
    layer.weight = torch.nn.Parameter(weight, requires_grad=False)
    layer.bias = torch.nn.Parameter(torch.randn(n_out).to(torch.bfloat16), requires_grad=False)
    x = torch.randn(2, rows, n_in)
    want = F.linear(x, weight.float(), layer.bias.float())
    got = layer(x)
    assert got.dtype == torch.float32 and got.shape == (2, rows, n_out)
    assert torch.equal(got, want)
    assert layer.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(("info", "chosen"), [
    (AVX2, "chosen for --dtype bf16 on cpu: bf16 requested -> weights bf16 at rest, fp32 compute (no "),
    (SAPPHIRE_RAPIDS, "chosen for --dtype bf16 on cpu: bf16 requested -> bf16 compute (native bf16: amx_bf16 "),
])
def test_info_prints_detected_and_chosen(monkeypatch, capsys, info, chosen):
    monkeypatch.setattr(cpu, "cpu_info", lambda: info)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("Fake CPU (x86_64, 2 cores, torch AVX2): avx2 fma")
    assert "; OpenMP waits: PASSIVE" in lines[1]  # the command asks for sleeping waits unless the user set a policy
    assert any(line.startswith(chosen) for line in lines)
    assert any(line.startswith("chosen for --quantize int8/int4:") for line in lines)
    assert lines[-1].startswith("advice: ")
