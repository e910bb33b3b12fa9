"""Tier 1: ``nemo-lite manifest`` — the Qwen2-VL adapter's JSON and Hugging Face ``datasets`` splits -> NeMo JSONL
manifests that the training, eval and transcribe readers read back; bad records named one a line, the rest written.
Run as a user runs it (``python -m nemo_lite.cli``); expected durations come from the source files' own frame
counts (soundfile), not from the code under test."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_lite import testing
from nemo_lite.audio import SAMPLE_RATE, load_audio
from nemo_lite.cli import main as cli_main
from nemo_lite.corpus import read_manifest_lines
from nemo_lite.training.data import read_manifest

DATA = Path(__file__).resolve().parent / "data"
FIELDS = ["audio_filepath", "text", "duration"]  # what training.data.read_manifest and the CLI read
PCM16 = 1 / 32768  # one 16-bit step: the written clips' quantisation


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nemo_lite.cli", "manifest", *args, "--quiet"], capture_output=True,
                          text=True, timeout=120, env=env)


def main(capsys, *args: str) -> tuple[int, str]:
    """The command in this process (datasets is already imported here: each subprocess pays seconds for it)."""
    code = cli_main(["manifest", *args, "--quiet"])
    return code, capsys.readouterr().err


def seconds(path: Path) -> float:
    info = sf.info(str(path))
    return info.frames / info.samplerate


def turn(instruction: str, answer: str) -> list[dict]:
    """The seed's conversation (scripts/01_prepare_data.py)."""
    return [{"role": "user", "content": f"<|audio_bos|><|AUDIO|><|audio_eos|>\n{instruction}"},
            {"role": "assistant", "content": answer}]


@pytest.fixture
def seed(tmp_path) -> Path:
    """A seed data folder: train.json + audio/ (two good clips, an m4a when PyAV is there, a bad and a missing one)."""
    (tmp_path / "audio").mkdir()
    for name in ("speech_short", "speech_medium"):
        (tmp_path / "audio" / f"{name}.wav").write_bytes((DATA / f"{name}.wav").read_bytes())
    (tmp_path / "audio" / "notes.wav").write_text("not audio")
    records = [
        {"id": "train_0", "audio": "audio/speech_short.wav", "ground_truth": "one",
         "conversations": turn("Transcribe this audio.", "one")},
        {"id": "train_1", "audio": "audio/notes.wav", "ground_truth": "bad"},
        {"id": "train_2", "audio": "audio/speech_medium.wav", "conversations": turn("What is said?", "two words")},
        {"id": "train_3", "audio": "audio/gone.wav", "ground_truth": "missing"},
        {"id": "train_4", "ground_truth": "no audio"},
    ]
    (tmp_path / "train.json").write_text(json.dumps(records, indent=2))
    return tmp_path / "train.json"


def test_seed_json_to_a_manifest_the_readers_read(seed):
    """Good records become {audio_filepath (relative to the manifest), text, duration}; each bad one is one line
    naming it; the instruction the manifest cannot carry is said; exit code 1; training, eval and transcribe read the
    file back."""
    res = cli(str(seed))
    assert res.returncode == 1, res.stderr
    out = seed.with_suffix(".jsonl")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [list(line) for line in lines] == [FIELDS, FIELDS]
    assert [(line["audio_filepath"], line["text"]) for line in lines] == [
        ("audio/speech_short.wav", "one"), ("audio/speech_medium.wav", "two words")]  # text: the assistant turn
    for line in lines:
        assert line["duration"] == pytest.approx(seconds(seed.parent / line["audio_filepath"]), abs=1e-9)
    err = res.stderr.splitlines()
    assert err[0].startswith(f"nemo-lite: {seed.parent / 'audio/notes.wav'}: cannot decode audio")
    assert err[0].endswith(f"({seed} record 2, id train_1)")
    assert err[1] == f"nemo-lite: {seed.parent / 'audio/gone.wav'}: file not found ({seed} record 4, id train_3)"
    assert err[2] == (f"nemo-lite: {seed} record 5, id train_4: needs 'audio' (a path) and 'ground_truth' (or an "
                      "assistant turn)")
    assert "1 record(s) ask 'What is said?'" in err[3] and "training uses the model's" in err[3]
    assert err[-1] == f"nemo-lite: {out}: 2 line(s), 5.6 s of audio; 3 record(s) left out"
    utterances = read_manifest(out)
    assert [(u.audio_filepath, u.text, u.duration) for u in utterances] == [
        (seed.parent / line["audio_filepath"], line["text"], line["duration"]) for line in lines]
    assert [Path(p) for _, p in read_manifest_lines(out)] == [seed.parent / line["audio_filepath"] for line in lines]


def test_seed_jsonl_elsewhere_gets_absolute_paths_and_m4a(seed, tmp_path):
    """JSON lines in, the manifest in a folder that does not hold the audio: absolute paths. An m4a record's
    duration is what decoding gives (its source's, to the AAC encoder's last-frame padding)."""
    pytest.importorskip("av")
    x, rate = sf.read(DATA / "speech_medium.wav", dtype="float32")
    testing.write_m4a(seed.parent / "audio" / "speech.m4a", x, rate)
    jsonl = seed.parent / "more.jsonl"
    jsonl.write_text(json.dumps({"audio": "audio/speech.m4a", "ground_truth": "m4a"}) + "\n"
                     + json.dumps({"audio": str(seed.parent / "audio/speech_short.wav"), "ground_truth": "abs"}) + "\n")
    out = tmp_path / "elsewhere" / "all.jsonl"
    res = cli(str(jsonl), "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["audio_filepath"] for line in lines] == [str(seed.parent / "audio/speech.m4a"),
                                                          str(seed.parent / "audio/speech_short.wav")]
    assert 0 <= lines[0]["duration"] - len(x) / rate < testing.AAC_FRAME / rate
    assert lines[1]["duration"] == pytest.approx(seconds(DATA / "speech_short.wav"), abs=1e-9)


def test_seed_json_refusals(seed, tmp_path):
    """A file that is not the seed's JSON, several inputs without --out: one line, exit code 2, nothing written."""
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    res = cli(str(bad))
    assert res.returncode == 2 and res.stderr.strip() == (
        f"nemo-lite: {bad}: cannot read the seed JSON (record 1 is not a JSON object); it needs a list of objects "
        "with 'audio' and 'ground_truth'")
    res = cli(str(seed), str(bad))
    assert res.returncode == 2 and "--out OUT.jsonl" in res.stderr
    assert not bad.with_suffix(".jsonl").exists() and not seed.with_suffix(".jsonl").exists()


def flac_bytes(x: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="FLAC")
    return buf.getvalue()


@pytest.fixture
def hf_rows() -> dict:
    """Rows as a datasets Audio column stores them: encoded bytes (a 16 kHz FLAC, a 44.1 kHz stereo WAV, junk)."""
    speech, rate = sf.read(DATA / "speech_short.wav", dtype="float32")
    t = np.arange(44100) / 44100
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t)] * 2, axis=1).astype(np.float32)  # 1 s, (44100, 2)
    wav = io.BytesIO()
    sf.write(wav, stereo, 44100, format="WAV", subtype="PCM_16")
    return {"audio": [{"bytes": flac_bytes(speech, rate), "path": "a.flac"},
                      {"bytes": wav.getvalue(), "path": "b.wav"}, {"bytes": b"junk", "path": "c.wav"}],
            "sentence": ["one", "a tone", "junk"]}


def test_hf_dataset_from_disk_writes_16k_clips_and_a_manifest(hf_rows, tmp_path):
    """A save_to_disk DatasetDict with audio bytes: each good row becomes a 16 kHz mono FLAC under OUT_DIR/audio
    holding what the bytes decode to (to one 16-bit step), the manifest OUT_DIR/test.jsonl names them relative to
    itself; the junk row is one line; exit code 1."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(hf_rows).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "ds"))
    out_dir = tmp_path / "out"
    res = cli("--hf-dataset", str(tmp_path / "ds"), "--split", "test", "--text-column", "sentence",
              "--out-dir", str(out_dir))
    assert res.returncode == 1, res.stderr
    lines = [json.loads(line) for line in (out_dir / "test.jsonl").read_text().splitlines()]
    assert [(line["audio_filepath"], line["text"]) for line in lines] == [
        ("audio/test-000000.flac", "one"), ("audio/test-000001.flac", "a tone")]
    assert lines[0]["duration"] == pytest.approx(seconds(DATA / "speech_short.wav"), abs=1e-9)
    assert lines[1]["duration"] == pytest.approx(1.0, abs=1e-9)
    for line, row in zip(lines, hf_rows["audio"], strict=False):
        clip = out_dir / line["audio_filepath"]
        info = sf.info(str(clip))
        assert (info.format, info.samplerate, info.channels) == ("FLAC", SAMPLE_RATE, 1)
        assert np.abs(sf.read(str(clip), dtype="float32")[0] - load_audio(row["bytes"])).max() <= PCM16
    assert res.stderr.splitlines()[0].startswith("nemo-lite: test row 2: cannot decode audio")
    assert [u.text for u in read_manifest(out_dir / "test.jsonl")] == ["one", "a tone"]


def test_hf_dataset_from_a_data_folder_with_limit(hf_rows, tmp_path, capsys):
    """A local parquet folder goes through load_dataset (streamed, as a hub id): --limit reads the first rows."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(hf_rows).cast_column("audio", datasets.Audio())
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "test-00000.parquet"))
    out = tmp_path / "m.jsonl"
    code, err = main(capsys, "--hf-dataset", str(tmp_path / "pq"), "--text-column", "sentence", "--out-dir",
                     str(tmp_path / "o"), "--out", str(out), "--audio-format", "wav", "--limit", "2")
    assert code == 0, err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["audio_filepath"] for line in lines] == ["o/audio/test-000000.wav", "o/audio/test-000001.wav"]
    assert sf.info(str(tmp_path / lines[1]["audio_filepath"])).format == "WAV"


def test_hf_dataset_refusals(hf_rows, tmp_path, capsys):
    """No such split or column: one line naming what is there, exit code 2; without datasets installed (its
    import blocked by a sitecustomize), one line naming the extra."""
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict(hf_rows)
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "ds"))
    code, err = main(capsys, "--hf-dataset", str(tmp_path / "ds"), "--split", "train", "--out-dir", str(tmp_path))
    assert code == 2 and err.strip() == f"nemo-lite: {tmp_path / 'ds'}: no split 'train' (it has test)"
    code, err = main(capsys, "--hf-dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "o"))
    assert code == 2 and err.strip() == (
        "nemo-lite: the split has no column 'text' (it has audio, sentence); choose with --audio-column / "
        "--text-column")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import sys\nsys.modules['datasets'] = None  # not installed\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    res = cli("--hf-dataset", str(tmp_path / "ds"), "--out-dir", str(tmp_path / "o"), env=env)
    assert res.returncode == 2 and res.stderr.strip() == (
        "nemo-lite: --hf-dataset needs the datasets package: pip install 'nemo-lite[datasets]'")
