"""Tier 1: the shared core — an acyclic import graph, one speech-LM interface (no ``isinstance`` on a design above the
models), load options and presets, no autograd in inference, and the end-to-end WhisperLLM paths (transcribe and
eval from the command line, training from the command line and as ``python -m nemo_lite.train``)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import nemo_lite
from nemo_lite import testing
from nemo_lite.options import PRESETS, LoadOptions, load_options

PACKAGE = Path(nemo_lite.__file__).parent
DATA = Path(__file__).parent / "data"
MODEL_MODULES = {"nemo_lite.canary_qwen", "nemo_lite.whisper_adapter", "nemo_lite.auto"}
MODEL_CLASSES = {"CanaryQwen", "WhisperLLM"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every nemo_lite module ``name`` imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for a in node.names:  # `from . import speed` imports the module speed; `from .x import f` imports x
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    return {m for m in found if m in modules and m != name}


def test_import_graph_is_acyclic():
    """No module of nemo_lite imports (directly or through others) a module that imports it back. Counted from the
    code's own import statements, lazy ones inside functions and TYPE_CHECKING blocks included."""
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["nemo_lite.canary_qwen"] >= {"nemo_lite.speechlm"}  # the checker sees real edges
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def test_no_isinstance_on_a_design_above_the_models():
    """Transcription, training, evaluation and the CLI talk to the SpeechLM interface, never to a concrete class."""
    offenders = []
    for name, path in _modules().items():
        if name in MODEL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "isinstance" and len(node.args) == 2:
                names = {n.id for n in ast.walk(node.args[1]) if isinstance(n, ast.Name)}
                names |= {n.attr for n in ast.walk(node.args[1]) if isinstance(n, ast.Attribute)}
                if names & MODEL_CLASSES:
                    offenders.append(f"{name}:{node.lineno}")
    assert offenders == []


def test_presets_and_option_rules():
    assert set(PRESETS) == {"exact", "fast-cpu", "gpu"}
    assert load_options("fast-cpu").quantize == "int8"
    assert load_options("gpu").torch_device.type == "cuda" and load_options("gpu").compute_dtype == torch.bfloat16
    assert load_options(None).compute_dtype == torch.float32  # exact: NeMo's fp32 on CPU
    assert load_options("fast-cpu", quantize=None).quantize == "int8"  # None means "not given"
    assert load_options(LoadOptions(), dtype=torch.bfloat16).dtype == "bfloat16"  # torch values become names
    for bad, match in [({"quantize": "int4x"}, "not supported"), ({"quantize": "int8", "merge_lora": True}, "merge"),
                       ({"quantize": "int8", "dtype": "bf16"}, "CPU mode"), ({"compile": True}, "CUDA mode"),
                       ({"quantize": "int8-all", "encoder_dtype": "bf16"}, "encoder_dtype"),
                       ({"dtype": "float8"}, "not supported")]:
        with pytest.raises(ValueError, match=match):
            LoadOptions(**bad)
    with pytest.raises(ValueError, match="preset"):
        load_options("fastest")
    with pytest.raises(TypeError, match="unknown load option"):
        load_options(None, quantise="int8")


def test_from_pretrained_keeps_keyword_compatibility(tiny_ckpt, monkeypatch):
    """Old keyword calls still load; a preset name and overrides compose; the loaded options are on the model."""
    from nemo_lite import CanaryQwen

    monkeypatch.setenv("NEMO_LITE_BF16", "native")  # bf16 compute on any CPU (compute_plan is tested in test_cpu)
    model = CanaryQwen.from_pretrained(tiny_ckpt, options="exact", dtype="bf16", compact_encoder=False)
    assert model.options.dtype == "bfloat16" and model.dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())  # inference models load frozen


def test_auto_from_pretrained_picks_the_design(tiny_ckpt, whisper_llm_dir):
    assert type(nemo_lite.from_pretrained(tiny_ckpt)).__name__ == "CanaryQwen"
    assert type(nemo_lite.from_pretrained(whisper_llm_dir)).__name__ == "WhisperLLM"


@pytest.fixture(scope="module")
def whisper_llm_dir(tmp_path_factory) -> Path:
    """A saved tiny WhisperLLM (Whisper encoder of 6 s windows, so decoding stays fast)."""
    from nemo_lite import WhisperLLM

    root = tmp_path_factory.mktemp("wllm")
    whisper = testing.write_random_whisper(root / "whisper", {**testing.TINY_WHISPER, "max_source_positions": 300})
    llm = testing.write_random_llm(root / "llm", testing.TINY_QWEN3)
    return WhisperLLM.from_components(whisper, llm, seed=0).save_pretrained(root / "model")


def test_whisper_llm_inference_builds_no_autograd_graph(whisper_llm_dir):
    """Regression: WhisperLLM.transcribe and `nemo-lite eval` ran the Whisper encoder with autograd on (~4.5x peak
    memory on a small model), since only CanaryQwen's embed_audio was under inference_mode. Embeddings made for
    inference now carry no graph, even when the caller has grad enabled and the projector requires grad."""
    from nemo_lite import WhisperLLM

    model = WhisperLLM.from_pretrained(whisper_llm_dir)
    model.audio_projector.requires_grad_(True)  # as after training: inference must still record nothing
    audio = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    with torch.enable_grad():
        (emb,) = model.embed_audio([audio])
    assert emb.grad_fn is None and not emb.requires_grad


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, torch
    from nemo_lite import WhisperLLM

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    torch.set_num_threads(1)
    model = WhisperLLM.from_pretrained(sys.argv[1])
    audio = np.random.default_rng(0).standard_normal(8 * 6 * 16000).astype(np.float32) * 0.1  # 8 windows of 6 s
    model.transcribe(audio, max_new_tokens=2)  # warm-up: allocator pools and lazy imports
    loaded = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    model.transcribe(audio, max_new_tokens=2)
    print(json.dumps({"loaded": loaded, "peak": rss("VmHWM")}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_whisper_llm_transcription_memory_stays_near_the_loaded_model(whisper_llm_dir):
    """Transcribing 8 windows adds at most 10 % to the loaded model's resident memory (with autograd on, the
    encoder's saved activations alone were several times the model here)."""
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(whisper_llm_dir)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["peak"] <= 1.10 * figures["loaded"], figures


def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_lite.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def wav_manifest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wav")
    lines = []
    for name, text in [("speech_short", "one"), ("speech_medium", "two words")]:
        audio, sr = sf.read(DATA / f"{name}.wav", dtype="float32")
        sf.write(root / f"{name}.wav", audio[: 5 * sr], sr)
        lines.append(json.dumps({"audio_filepath": f"{name}.wav", "text": text}))
    (root / "m.jsonl").write_text("\n".join(lines) + "\n")
    return root / "m.jsonl"


def test_whisper_llm_transcribe_and_eval_from_the_command_line(whisper_llm_dir, wav_manifest):
    """`nemo-lite transcribe` and `nemo-lite eval` take a WhisperLLM checkpoint (the design is detected), and give
    the Python API's texts; `eval --html` writes its audit page from the same rows."""
    from nemo_lite import WhisperLLM

    model = WhisperLLM.from_pretrained(whisper_llm_dir)
    wavs = [wav_manifest.parent / json.loads(line)["audio_filepath"] for line in wav_manifest.read_text().splitlines()]
    want = model.transcribe([str(w) for w in wavs], max_new_tokens=4)
    res = _cli("transcribe", *map(str, wavs), "--model", str(whisper_llm_dir), "--device", "cpu", "--format", "json",
               "--max-new-tokens", "4", "--quiet")
    assert res.returncode == 0, res.stderr
    got = [json.loads(line)["text"] for line in res.stdout.splitlines()]
    assert got == want
    preds, page = wav_manifest.parent / "preds.jsonl", wav_manifest.parent / "report.html"
    res = _cli("eval", str(wav_manifest), "--model", str(whisper_llm_dir), "--device", "cpu", "--threads", "1",
               "--max-new-tokens", "4", "--output", str(preds), "--html", str(page))
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["hypothesis"] for r in rows] == want and "WER" in res.stderr
    assert page.read_text(encoding="utf-8").count("<tr data-n=") == len(rows) and "audit page" in res.stderr


def _stage1_config(tmp: Path, wav_manifest: Path) -> Path:
    whisper = testing.write_random_whisper(tmp / "whisper", {**testing.TINY_WHISPER, "max_source_positions": 300})
    llm = testing.write_random_llm(tmp / "llm", testing.TINY_QWEN3)
    cfg = {"architecture": "whisper_llm", "train_manifest": str(wav_manifest), "output_dir": str(tmp / "run"),
           "whisper": str(whisper), "llm": str(llm), "stage": 1, "max_steps": 5, "batch_size": 2, "threads": 1,
           "progress": False}
    path = tmp / "stage1.json"
    path.write_text(json.dumps(cfg))
    return path


def test_train_command_with_set_overrides(tmp_path, wav_manifest):
    """`nemo-lite train --config C --set KEY=VALUE` runs the configured stage with the override applied."""
    cfg = _stage1_config(tmp_path, wav_manifest)
    res = _cli("train", "--config", str(cfg), "--set", "max_steps=2", "--set", "lr=0.01")
    assert res.returncode == 0, res.stderr
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2] and log[0]["lr"] == pytest.approx(0.01)
    assert "2 step(s)" in res.stderr and (tmp_path / "run" / "model" / "whisper_llm.json").is_file()


def test_python_m_nemo_lite_train_runs_once(tmp_path, wav_manifest):
    """Regression: `python -m nemo_lite.train` executed train.py twice (train imported cli, which imported train
    back), which runpy reports as a RuntimeWarning. It now runs the command once, with no such warning."""
    cfg = _stage1_config(tmp_path, wav_manifest)
    res = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "nemo_lite.train", "--config",
                          str(cfg), "--set", "max_steps=1"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stderr.count("model saved to") == 1 and "RuntimeWarning" not in res.stderr
