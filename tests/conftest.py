"""Shared fixtures: offline random-weight checkpoints (tiny) and the NeMo-parity checkpoint regenerated from
tests/fixtures/tiny (made by scripts/make_parity_fixtures.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from nemo_lite import testing

# Quantized loads would otherwise write the quantization cache under ~/.cache (nemo_lite.quantize); the tests that
# exercise it point it at a temporary directory. Set here, at import, so CLI subprocesses inherit it too.
os.environ["NEMO_LITE_QUANT_CACHE"] = "off"

ROOT = Path(__file__).resolve().parent
DATA = ROOT / "data"
FIXTURES = ROOT / "fixtures" / "tiny"


@pytest.fixture(scope="session")
def llm_dir(tmp_path_factory) -> Path:
    return testing.write_llm_dir(tmp_path_factory.mktemp("llm"), testing.TINY_QWEN3)


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, llm_dir) -> Path:
    """A tiny random checkpoint in the hub layout written by nemo_lite.testing."""
    return testing.write_checkpoint(tmp_path_factory.mktemp("ckpt"), testing.tiny_salm_config(llm_dir))


@pytest.fixture(scope="session")
def tiny_model(tiny_ckpt):
    from nemo_lite import CanaryQwen

    return CanaryQwen.from_pretrained(tiny_ckpt)


@pytest.fixture(scope="session")
def qwen2_vl_adapter(tmp_path_factory) -> Path:
    """The Qwen2-VL audio adapter in the seed's published layout (testing.write_random_adapter), its Whisper with
    6 s windows (max_source_positions 300) so decoding stays fast; shared by the adapter's test files."""
    root = tmp_path_factory.mktemp("adapter")
    whisper = testing.write_random_whisper(root / "whisper", {**testing.TINY_WHISPER, "max_source_positions": 300})
    return testing.write_random_adapter(root / "published", whisper)


@pytest.fixture(scope="session")
def parity_meta() -> dict:
    return json.loads((FIXTURES / "meta.json").read_text())


@pytest.fixture(scope="session")
def parity_ckpt(tmp_path_factory, llm_dir, parity_meta) -> Path:
    """The checkpoint NeMo ran, rebuilt from its key manifest, NeMo's mel buffers and the seeded recipe."""
    path = tmp_path_factory.mktemp("parity_ckpt")
    cfg = json.loads((FIXTURES / "config.json").read_text())
    cfg["pretrained_llm"] = str(llm_dir)
    shapes = {k: tuple(v) for k, v in json.loads((FIXTURES / "keys.json").read_text()).items()}
    fixed = load_file(str(FIXTURES / "mel_buffers.safetensors"))
    save_file(testing.random_state(shapes, parity_meta["seed"], fixed), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="session")
def parity_model(parity_ckpt):
    from nemo_lite import CanaryQwen

    return CanaryQwen.from_pretrained(parity_ckpt)


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture(scope="session")
def clips() -> dict[str, np.ndarray]:
    """The shipped test clips, as float32 arrays read exactly as the fixture script read them."""
    return {p.stem: sf.read(p, dtype="float32")[0] for p in sorted(DATA.glob("*.wav"))}


@pytest.fixture(scope="module")
def one_thread():
    """These models are tiny: one thread is faster, and far faster when other processes load the cores (OpenMP
    threads spin-waiting for each other made a 4-step run take 17 s instead of 0.2 s on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
