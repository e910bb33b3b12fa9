"""The Qwen2-VL audio adapter's published checkpoint through the command line, as a user runs it: ``nemo-lite
transcribe`` / ``chat`` / ``eval`` give the Python API's texts, transcription's peak memory stays within 10 % of
the loaded model's, and the seed fork's flat transformers-4.45 ``config.json`` loads (the same model as the 5.x
layout) while a key nemo_lite does not know fails loudly. Tiny random models (testing.write_random_adapter)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import nemo_lite
from nemo_lite import testing
from nemo_lite.weights import CheckpointError

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parent / "data"
WINDOW = 6 * 16000  # samples in one window of the conftest adapter's Whisper (max_source_positions 300)
TOKENS = 4  # new tokens per window/answer: enough to compare texts, few enough to stay fast


@pytest.fixture(scope="module")
def adapter(qwen2_vl_adapter) -> Path:
    return qwen2_vl_adapter


@pytest.fixture(scope="module")
def model(adapter):
    return nemo_lite.from_pretrained(adapter)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_lite.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_transcribe_from_the_command_line(adapter, model, tmp_path):
    """`nemo-lite transcribe` detects the adapter from its files and prints the Python API's texts, for WAV and
    (with PyAV) m4a inputs."""
    inputs = [str(DATA / "speech_short.wav"), str(DATA / "speech_medium.wav")]
    if importlib.util.find_spec("av"):
        x, rate = sf.read(DATA / "speech_medium.wav", dtype="float32")
        inputs.append(str(testing.write_m4a(tmp_path / "speech.m4a", x, rate)))
    want = model.transcribe(inputs, max_new_tokens=TOKENS)
    assert want[0] != want[1]  # different clips, different texts: the comparison below means something
    res = run_cli("transcribe", *inputs, "--model", str(adapter), "--device", "cpu", "--threads", "1", "--format",
                  "json", "--max-new-tokens", str(TOKENS), "--quiet")
    assert res.returncode == 0, res.stderr
    rows = [json.loads(line) for line in res.stdout.splitlines()]
    assert [r["audio_filepath"] for r in rows] == inputs and [r["text"] for r in rows] == want


def test_chat_and_eval_commands(adapter, model, tmp_path, capsys):
    """`nemo-lite chat` streams the API's answer (the LLM without audio); `nemo-lite eval` scores the API's
    transcripts. In this process: the entry point is the one the transcribe test runs in a subprocess."""
    from nemo_lite.cli import main

    prompt = "Name three colours."
    want = model.chat(prompt, max_new_tokens=TOKENS)
    assert main(["chat", prompt, "--model", str(adapter), "--device", "cpu", "--threads", "1", "--max-new-tokens",
                 str(TOKENS)]) == 0
    assert capsys.readouterr().out == want + "\n"
    wavs = [DATA / "speech_short.wav", DATA / "speech_medium.wav"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(w), "text": "hello world"}) + "\n" for w in wavs))
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", str(manifest), "--model", str(adapter), "--device", "cpu", "--threads", "1",
                 "--max-new-tokens", str(TOKENS), "--output", str(preds), "--quiet"]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert [r["hypothesis"] for r in rows] == model.transcribe([str(w) for w in wavs], max_new_tokens=TOKENS)
    assert "WER" in capsys.readouterr().err


PEAK_SCRIPT = textwrap.dedent("""
    import json, sys
    from nemo_lite.cli import build_parser, collect_jobs, transcribe_jobs
    from nemo_lite.terminal import load_command_model, prepare

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    args = build_parser().parse_args(["transcribe", sys.argv[1], "--model", sys.argv[2], "--device", "cpu",
                                      "--threads", "1", "--max-new-tokens", "2", "--segmentation", "fixed",
                                      "--quiet"])
    prepare(args)
    model = load_command_model(args)
    jobs = collect_jobs(args.inputs, [])
    transcribe_jobs(model, jobs, args)  # warm-up: allocator pools and lazy imports
    loaded = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
    transcribe_jobs(model, jobs, args)
    print(json.dumps({"loaded": loaded, "peak": rss("VmHWM")}))
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS")
def test_transcribe_command_memory_stays_near_the_loaded_model(adapter, tmp_path):
    """The transcribe command's own path (parse, check inputs, load, transcribe_jobs) on a file of 8 windows: the
    peak resident memory while transcribing is at most 10 % above the loaded model's (the method of
    test_core's WhisperLLM memory test, on the published adapter checkpoint and the command's path)."""
    audio = np.random.default_rng(0).standard_normal(8 * WINDOW).astype(np.float32) * 0.1
    sf.write(tmp_path / "long.wav", audio, 16000)
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "long.wav"), str(adapter)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["peak"] <= 1.10 * figures["loaded"], figures


# ---------------------------------------------------------------------- the seed fork's config.json
def flat_config() -> dict:
    """The tiny adapter's config.json as the seed's transformers-4.45 fork saved it: Qwen2-VL's text fields at the
    top level (``rope_scaling`` as 4.45 rewrote "mrope"), the vision tower's 4.45 extras, and the two fields its
    graft script added (``audio_hidden_size`` = the Whisper width, ``use_audio_encoder``)."""
    text, vis = testing.TINY_QWEN2_VL_TEXT, testing.TINY_QWEN2_VL_VISION
    rope = text["rope_parameters"]
    return {
        "_name_or_path": "model_base_grafted", "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
        **{k: text[k] for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                "num_attention_heads", "num_key_value_heads", "tie_word_embeddings")},
        "initializer_range": 0.02, "max_position_embeddings": 32768, "max_window_layers": 80, "model_type": "qwen2_vl",
        "rms_norm_eps": 1e-05, "rope_theta": rope["rope_theta"], "sliding_window": 32768, "use_sliding_window": False,
        "rope_scaling": {"mrope_section": rope["mrope_section"], "rope_type": "default", "type": "default"},
        "torch_dtype": "bfloat16", "transformers_version": "4.45.2", "use_cache": True,
        "vision_config": {**vis, "in_chans": 3, "spatial_patch_size": vis["patch_size"], "model_type": "qwen2_vl"},
        "image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
        "vision_end_token_id": 151653, "vision_token_id": 151654,
        "audio_hidden_size": testing.TINY_WHISPER["d_model"], "use_audio_encoder": True,
    }


TEXT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "rms_norm_eps", "hidden_act")
VISION_FIELDS = ("depth", "embed_dim", "hidden_size", "num_heads", "mlp_ratio", "patch_size", "spatial_merge_size",
                 "temporal_patch_size", "hidden_act", "in_channels")


def with_config(adapter: Path, dest: Path, config: dict) -> Path:
    shutil.copytree(adapter, dest)
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    return dest


def test_flat_445_config_loads_the_same_model(adapter, model, tmp_path):
    """The flat 4.45 config gives the model the 5.x layout gives: same text/vision settings, same greedy ids."""
    flat = nemo_lite.from_pretrained(with_config(adapter, tmp_path / "flat", flat_config()))
    cfg, ref = flat.llm.config, model.llm.config
    for name in TEXT_FIELDS:
        assert getattr(cfg.text_config, name) == getattr(ref.text_config, name), name
    for key in ("mrope_section", "rope_theta"):
        assert cfg.text_config.rope_parameters[key] == ref.text_config.rope_parameters[key], key
    for name in VISION_FIELDS:
        assert getattr(cfg.vision_config, name) == getattr(ref.vision_config, name), name
    assert cfg.tie_word_embeddings is ref.tie_word_embeddings is False
    assert flat.dtype == model.dtype  # the file's torch_dtype (bfloat16) is not the compute dtype: fp32 on CPU
    clip = sf.read(DATA / "speech_short.wav", dtype="float32")[0]
    assert flat.generate(audios=[clip], max_new_tokens=6) == model.generate(audios=[clip], max_new_tokens=6)


@pytest.mark.parametrize("change, named", [
    ({"audio_pooling": 2}, "'audio_pooling'"),  # a field the fork never had
    ({"quantization_config": {"load_in_4bit": True}}, "'quantization_config'"),  # 4-bit weights are not read
    ({"vision_config": {**flat_config()["vision_config"], "window_size": 112}}, "'vision_config.window_size'"),
])
def test_flat_config_with_an_unknown_key_fails_loudly(adapter, tmp_path, change, named):
    path = with_config(adapter, tmp_path / "bad", {**flat_config(), **change})
    with pytest.raises(CheckpointError, match=rf"config\.json: unknown key\(s\) \[{named}\]"):
        nemo_lite.from_pretrained(path)


def test_flat_config_audio_fields_must_match_the_tensors(adapter, tmp_path):
    path = with_config(adapter, tmp_path / "wide", {**flat_config(), "audio_hidden_size": 1280})
    with pytest.raises(CheckpointError, match="audio_hidden_size 1280 but the audio_encoder tensors are 64 wide"):
        nemo_lite.from_pretrained(path)


def test_served_by_nemo_lite_serve(adapter, model):
    """`nemo-lite serve` on the adapter's checkpoint (loaded as the command loads it: nemo_lite.from_pretrained):
    the official client's transcription and an input_audio chat equal the Python API's, batched together."""
    pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
    openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")
    import base64
    from concurrent.futures import ThreadPoolExecutor

    from nemo_lite.serve.app import ServeConfig, create_app
    from nemo_lite.serve.engine import Engine

    from .serve_support import ThreadServer

    short, medium = DATA / "speech_short.wav", DATA / "speech_medium.wav"
    config = ServeConfig(model_name="adapter", max_batch_size=4, batch_wait_ms=50, threads=1)
    app = create_app(lambda: Engine(nemo_lite.from_pretrained(adapter), max_new_tokens=TOKENS), config)
    audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(short.read_bytes()).decode(),
                                                    "format": "wav"}}
    with ThreadServer(app) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)

        def transcribe(path: Path) -> str:
            with open(path, "rb") as f:
                return client.audio.transcriptions.create(file=f, model="adapter", response_format="text")

        with ThreadPoolExecutor(3) as pool:
            texts = list(pool.map(transcribe, [short, medium, short]))
        answer = client.chat.completions.create(model="adapter", max_tokens=TOKENS, messages=[
            {"role": "user", "content": [{"type": "text", "text": "What is said?"}, audio]}])
    want = model.transcribe([str(short), str(medium)], max_new_tokens=TOKENS)
    assert want[0] != want[1] and texts == [want[0], want[1], want[0]]
    ids = model.generate(prompts=[[{"role": "user", "content": f"What is said? {model.audio_tag}"}]],
                         audios=[str(short)], max_new_tokens=TOKENS)[0]
    assert answer.choices[0].message.content == model.decode(ids)
