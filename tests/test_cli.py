"""Tier 1: the ``nemo-lite`` command on the tiny model — folders, manifests, bad files, formats, exit codes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import nemo_lite
from nemo_lite.cli import main

EXAMPLE = Path(nemo_lite.__file__).parent / "assets" / "example.wav"
TOKENS = ["--max-new-tokens", "4"]


@pytest.fixture
def folder(tmp_path) -> Path:
    """Two good files (one 44.1 kHz stereo flac, in a subfolder) and three bad ones."""
    d = tmp_path / "audio"
    (d / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLE, d / "good.wav")
    x, rate = sf.read(str(EXAMPLE), dtype="float32")
    sf.write(str(d / "sub" / "stereo.flac"), np.stack([x, 0.5 * x], axis=1), 44100)  # labelled 44.1 kHz
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("a text file renamed to .wav\n")
    (d / "corrupt.flac").write_bytes(b"fLaC" + bytes(range(256)) * 20)
    (d / "readme.txt").write_text("not picked up: not an audio extension")
    return d


BAD = ("empty.wav", "notes.wav", "corrupt.flac")


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_folder_with_bad_files(tiny_ckpt, tiny_model, folder, tmp_path, capsys):
    out_dir = tmp_path / "out"
    code, _, err = run(["transcribe", str(folder), "--model", str(tiny_ckpt), "--output-dir", str(out_dir),
                        "--format", "json", *TOKENS], capsys)
    assert code != 0
    for name in BAD:
        assert name in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out_dir.iterdir()) == ["good.json", "stereo.json"]
    for stem, src in [("good", folder / "good.wav"), ("stereo", folder / "sub" / "stereo.flac")]:
        data = json.loads((out_dir / f"{stem}.json").read_text())
        expected = tiny_model.transcribe(src, timestamps=True, max_new_tokens=4)
        assert data["text"] == expected.text
        assert data["duration"] == pytest.approx(sf.info(str(src)).duration, abs=1e-3)
        segs = data["segments"]  # json output: speech segments (VAD), inside the recording, in time order
        assert segs and 0 <= segs[0]["start"] and segs[-1]["end"] <= data["duration"] + 1e-6
        assert [s["start"] for s in segs] == sorted(s["start"] for s in segs)
    assert re.search(r"RTFx [0-9.]+", err)  # the final summary line


def test_all_good_exits_zero_and_prints_to_stdout(tiny_ckpt, tiny_model, capsys):
    code, out, _ = run(["transcribe", str(EXAMPLE), "--model", str(tiny_ckpt), *TOKENS], capsys)
    assert code == 0
    assert out == tiny_model.transcribe(EXAMPLE, max_new_tokens=4) + "\n"


@pytest.mark.parametrize("fmt", ["txt", "json", "srt", "vtt"])
def test_formats(tiny_ckpt, tiny_model, tmp_path, fmt, capsys):
    long = tmp_path / "long.wav"
    x, _ = sf.read(str(EXAMPLE), dtype="float32")
    sf.write(str(long), np.concatenate([x, np.zeros(8000, np.float32), x]), 16000)  # ~9.4 s
    out_dir = tmp_path / "out"
    code, _, _ = run(["transcribe", str(long), "--model", str(tiny_ckpt), "--format", fmt, "--output-dir",
                      str(out_dir), "--max-chunk-seconds", "5", *TOKENS], capsys)
    assert code == 0
    text = (out_dir / f"long.{fmt}").read_text()
    ref = tiny_model.transcribe(long, timestamps=True, max_chunk_seconds=5, max_new_tokens=4)
    assert len(ref.segments) == 2
    if fmt == "txt":
        assert text == ref.text + "\n"
    elif fmt == "json":
        assert json.loads(text) == json.loads(json.dumps(ref.to_dict()))
    elif fmt == "srt":
        blocks = [b.split("\n") for b in text.strip("\n").split("\n\n")]
        assert [b[0] for b in blocks] == [str(i) for i in range(1, len(blocks) + 1)]
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}", b[1]) for b in blocks)
        assert blocks[0][1].startswith("00:00:00,000 --> ")
    else:
        assert text.startswith("WEBVTT\n\n")
        cues = text[len("WEBVTT\n\n"):].strip("\n").split("\n\n")
        assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}", c.split("\n")[0]) for c in cues)


def test_timestamps_txt_to_stdout(tiny_ckpt, capsys):
    code, out, _ = run(["transcribe", str(EXAMPLE), "--model", str(tiny_ckpt), "--timestamps", *TOKENS], capsys)
    assert code == 0
    assert re.fullmatch(r"\[0\.\d\d - 4\.\d\d\] .*\n", out)  # the example's one speech segment, 4.46 s file


def test_manifest_relative_paths(tiny_ckpt, folder, tmp_path, monkeypatch, capsys):
    manifest = folder / "manifest.jsonl"
    lines = [{"audio_filepath": "good.wav", "duration": 4.46, "text": "ref"},
             {"audio_filepath": "sub/stereo.flac"},
             {"audio_filepath": "gone.wav", "duration": 1.0}]
    manifest.write_text("".join(json.dumps(e) + "\n" for e in lines))
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    code, out, err = run(["transcribe", str(manifest), "--model", str(tiny_ckpt), "--format", "json", *TOKENS], capsys)
    assert code != 0 and "gone.wav" in err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["audio_filepath"]).name for r in rows] == ["good.wav", "stereo.flac"]
    assert all({"text", "duration", "segments"} <= set(r) for r in rows)


def test_same_stems_do_not_overwrite(tiny_ckpt, folder, tmp_path, capsys):
    shutil.copy(EXAMPLE, folder / "sub" / "good.wav")
    out_dir = tmp_path / "out"
    run(["transcribe", str(folder / "good.wav"), str(folder / "sub" / "good.wav"), "--model", str(tiny_ckpt),
         "--output-dir", str(out_dir), *TOKENS], capsys)
    assert len(list(out_dir.glob("good*.txt"))) == 2


def test_nothing_to_transcribe(tmp_path, capsys):
    code, _, err = run(["transcribe", str(tmp_path), "--model", "unused"], capsys)
    assert code != 0 and str(tmp_path) in err and "no audio files" in err


def test_model_not_found_exits_2_without_traceback(tmp_path, capsys):
    code, _, err = run(["transcribe", str(EXAMPLE), "--model", str(tmp_path / "no-such-model")], capsys)
    assert code == 2
    assert "no-such-model" in err and "Traceback" not in err


def test_hub_unreachable_says_how_to_use_a_local_copy(monkeypatch, capsys):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    code, _, err = run(["transcribe", str(EXAMPLE)], capsys)
    assert code == 2
    assert "nvidia/canary-qwen-2.5b" in err and "--model" in err and "Traceback" not in err


def test_chat_over_a_transcript(tiny_ckpt, tiny_model, tmp_path, capsys):
    transcript = tmp_path / "t.json"
    transcript.write_text(json.dumps({"text": "the quick brown fox", "duration": 1.0, "segments": []}))
    code, out, _ = run(["chat", "Summarize:", "--transcript", str(transcript), "--model", str(tiny_ckpt),
                        *TOKENS], capsys)
    assert code == 0
    assert out == tiny_model.chat("Summarize:\n\nthe quick brown fox", max_new_tokens=4) + "\n"


def test_console_script_help():
    exe = shutil.which("nemo-lite")
    cmd = [exe] if exe else [sys.executable, "-m", "nemo_lite.cli"]
    res = subprocess.run([*cmd, "transcribe", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0
    for flag in ("--model", "--llm-path", "--batch-size", "--format", "--output-dir", "--timestamps", "--device",
                 "--dtype", "--max-new-tokens"):
        assert flag in res.stdout
