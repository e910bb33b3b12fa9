"""Tier 1: nemo_lite.quant (weight-only int8/int4 linears) and nemo_lite.cpu, on tiny random layers (1 thread).

Tolerances (relative Frobenius error of the output):
- against the layer's own dequantized weight in fp32: 1 % (the kernels round activations and outputs to bf16,
  ~0.2-0.4 %);
- against the float layer: int8 2 % (per-channel rounding, ~0.5 %), int4 10 % (16 levels a group: ~6 % on
  uniform random weights, whose spread is the worst case for min/max scaling).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from nemo_lite import cpu, quant

TOL_DEQ = 0.01
TOL_FLOAT = {"int8": 0.02, "int4": 0.10}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _quantize(lin: nn.Linear, mode: str, group: int = 32) -> nn.Module:
    return quant.Int8Linear.from_linear(lin) if mode == "int8" else quant.Int4Linear.from_linear(lin, group)


class Tiny(nn.Module):
    """A block with attention-like and MLP-like linears and a peft-style LoRA pair."""

    def __init__(self, d: int = 64, hidden: int = 128, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.q_proj = nn.Linear(d, d, bias=True, dtype=dtype)
        self.up_proj = nn.Linear(d, hidden, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(hidden, d, bias=False, dtype=dtype)
        self.lora_A = nn.ModuleDict({"default": nn.Linear(d, 8, bias=False, dtype=dtype)})
        self.v = nn.Module()
        self.v.lora_B = nn.ModuleDict({"default": nn.Linear(8, d, bias=False, dtype=dtype)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(torch.relu(self.up_proj(self.q_proj(x)))) + self.v.lora_B["default"](
            self.lora_A["default"](x))


@pytest.mark.parametrize("mode", quant.MODES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 8, 40])  # 40 > PACKED_MAX_ROWS: int8's dense path
def test_matches_reference(mode, x_dtype, rows):
    torch.manual_seed(0)
    lin = nn.Linear(128, 96)
    q = _quantize(lin, mode)
    x = torch.randn(2, rows, 128).to(x_dtype)  # (B, T, K)
    y = q(x)
    assert y.shape == (2, rows, 96) and y.dtype == x_dtype
    deq = x.float() @ q.dequantize().t() + lin.bias
    assert _rel(y, deq) < TOL_DEQ
    assert _rel(y, lin(x.float()).detach()) < TOL_FLOAT[mode]


@pytest.mark.parametrize("mode", quant.MODES)
def test_bf16_weights(mode):
    """Linears held in bf16 quantize like their fp32 values (widened one chunk at a time)."""
    torch.manual_seed(0)
    lin = nn.Linear(64, 32, dtype=torch.bfloat16)
    ref = nn.Linear(64, 32)
    ref.load_state_dict({k: v.float() for k, v in lin.state_dict().items()})
    a, b = _quantize(lin, mode), _quantize(ref, mode)
    assert torch.equal(a.weight, b.weight)
    x = torch.randn(3, 64)
    assert _rel(a(x), ref(x).detach()) < TOL_FLOAT[mode]


def test_int4_shapes_rejected():
    """int4 needs in_features % group == 0 and out_features % 16 == 0: a clear error, no silent padding."""
    with pytest.raises(ValueError, match="in_features % group_size"):
        quant.Int4Linear.from_linear(nn.Linear(100, 32), 32)
    with pytest.raises(ValueError, match="out_features % 16"):
        quant.Int4Linear.from_linear(nn.Linear(64, 40), 32)
    with pytest.raises(ValueError, match="group size"):
        quant.Int4Linear(64, 32, group_size=16)
    model = nn.Sequential(nn.Linear(64, 32), nn.Linear(32, 20))
    with pytest.raises(ValueError, match=r"^1: .*skip=\['1'\]"):
        quant.quantize_linears(model, "int4", group_size=32)
    quant.quantize_linears(model, "int4", group_size=32, skip=["1"])
    assert isinstance(model[0], quant.Int4Linear) and isinstance(model[1], nn.Linear)


def test_int8_odd_in_features_and_misaligned_input():
    """_weight_int8pack_mm segfaults on in_features % 8 != 0 or on a misaligned activation: both must be avoided
    (dense path for the first, an aligned copy for the second)."""
    torch.manual_seed(0)
    lin = nn.Linear(100, 24)
    q = quant.Int8Linear.from_linear(lin)
    x = torch.randn(3, 100)
    assert _rel(q(x), x @ q.dequantize().t() + lin.bias) < 1e-5  # dense fp32 path: only summation order differs
    q64 = quant.Int8Linear.from_linear(nn.Linear(64, 24))
    buf = torch.randn(3 * 64 + 4).bfloat16()
    xo = buf[4:].view(3, 64)  # storage offset 8 bytes: misaligned for the kernel's loads
    assert xo.data_ptr() % quant.INT8_ALIGN
    assert _rel(q64(xo), q64(xo.clone())) == 0


@pytest.mark.parametrize("mode", quant.MODES)
def test_safetensors_round_trip_on_meta(mode, tmp_path):
    torch.manual_seed(0)
    model = quant.quantize_linears(Tiny(), mode, group_size=32)
    x = torch.randn(2, 5, 64)
    want = model(x)
    path = tmp_path / "q.safetensors"
    save_file(model.state_dict(), str(path))
    with torch.device("meta"):
        skeleton = Tiny()
    quant.quantize_linears(skeleton, mode, group_size=32)  # instant on meta: empty quantized modules
    skeleton.load_state_dict(load_file(str(path)), strict=True, assign=True)
    assert torch.equal(skeleton(x), want)
    if mode == "int4":  # the checkpoint holds the portable layout, the live module the kernel's
        saved = load_file(str(path))["q_proj.weight"]
        assert torch.equal(saved, skeleton.q_proj.portable_weight())


def test_int4_layout_round_trip():
    """The fast repacking equals torch's packer (found by probe) and inverts exactly, tail blocks included."""
    layout = quant.int4_kernel_layout()
    if layout is None:
        pytest.skip("this CPU's int4 layout is not one of ours: torch's packer is used")
    codes = torch.randint(0, 16, (80, 64), dtype=torch.int32)  # 80 rows: full blocks + a 16-row tail
    portable = quant._nibbles(codes.to(torch.uint8))
    packed = quant._to_kernel(portable, *layout)
    assert torch.equal(packed, torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1))
    assert torch.equal(quant._from_kernel(packed, *layout), portable)



@pytest.mark.parametrize("layout", [None, ("halves", 32), ("halves", 64), ("pairs", 16)])
def test_int4_dequantize_by_blocks(layout):
    """The dense path dequantizes a block of output rows at a time: from a weight held in a kernel layout it
    converts only that block (it once converted the whole matrix per block), and every block, the tail included,
    equals the same rows dequantized from the portable weight by the formula w = (q - 8) * scale + zero."""
    torch.manual_seed(0)
    q = quant.Int4Linear.from_linear(nn.Linear(64, 144, bias=False), 32)  # 144 rows: a tail after 32/64 blocks
    codes = quant._codes(q.weight).float()  # (144, 64), portable
    sz = q.scales_and_zeros.float()  # (G, 144, 2)
    want = (codes - 8) * sz[..., 0].t().repeat_interleave(32, 1) + sz[..., 1].t().repeat_interleave(32, 1)
    if layout is not None:
        q.weight = quant._to_kernel(q.weight, *layout)
        q.hold_layout(layout)
    for rows in (slice(0, 64), slice(64, 128), slice(128, 144), slice(16, 40), slice(None)):
        assert torch.equal(q.dequantize(torch.float32, rows), want[rows]), rows
    x = torch.randn(5, 64)
    assert _rel(quant._dense_matmul(q, x), x @ want.t()) < 1e-6

@pytest.mark.parametrize("mode", quant.MODES)
def test_no_warnings_and_lora_skipped(mode):
    torch.manual_seed(0)
    model = Tiny(dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quant.quantize_linears(model, mode, group_size=32, workers=2)
        model(torch.randn(2, 64, dtype=torch.bfloat16))
    qcls = quant.Int8Linear if mode == "int8" else quant.Int4Linear
    assert all(isinstance(m, qcls) for m in (model.q_proj, model.up_proj, model.down_proj))
    assert type(model.lora_A["default"]) is nn.Linear and type(model.v.lora_B["default"]) is nn.Linear


def test_bad_mode():
    with pytest.raises(ValueError, match="quantize mode"):
        quant.quantize_linears(Tiny(), "int3")


def test_cpu_info():
    info = cpu.cpu_info()
    assert info is cpu.cpu_info()  # cached
    assert info.cores >= 1 and info.arch
    assert isinstance(cpu.native_bf16(), bool) and isinstance(cpu.native_int8_dot(), bool)
    line = cpu.describe()
    assert "\n" not in line and "native bf16" in line


@pytest.mark.parametrize("mode", quant.MODES)
def test_float_layer_untouched(mode):
    """Regression: quantizing works on the widened chunk in place, which for an fp32 layer must be a copy
    (``Tensor.float()`` returns the weight itself), else the float model is overwritten."""
    lin = nn.Linear(64, 32)
    before = lin.weight.detach().clone()
    _quantize(lin, mode)
    assert torch.equal(lin.weight, before)
