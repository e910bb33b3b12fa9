"""Tier 1: corpus jobs on the tiny model — output manifests, slices, resume after SIGKILL, torchrun and Ray runners
giving the same file as one process (issue 14)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_lite import corpus
from nemo_lite.audio import FileAudio, load_audio
from nemo_lite.cli import main
from nemo_lite.longform import LongAudio
from nemo_lite.transcription import TranscribeOptions, load_all, transcribe_arrays

FLAGS = ["--max-new-tokens", "4", "--max-chunk-seconds", "3", "--segmentation", "fixed", "--quiet"]
ROOT = Path(__file__).resolve().parent.parent
GOOD = 24  # whole clips in the manifest
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    """24 clips (16 kHz mono wav, some 44.1 kHz stereo flac), slices of a 9 s flac (one longer than a window),
    and bad inputs: a missing file, a text file named .wav, an empty file, a slice past the end."""
    d = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(GOOD):
        seconds = 0.3 + 2.4 * rng.random()
        if i % 5 == 4:
            x = (0.1 * rng.standard_normal((int(44100 * seconds), 2))).astype(np.float32)
            sf.write(d / f"c{i}.flac", x, 44100)
            lines.append({"audio_filepath": f"c{i}.flac", "text": f"ref {i}", "speaker": i % 3})
        else:
            sf.write(d / f"c{i}.wav", (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32), 16000)
            lines.append({"audio_filepath": f"c{i}.wav", "duration": round(seconds, 2), "text": f"ref {i}"})
    sf.write(d / "long.flac", (0.1 * rng.standard_normal((44100 * 9, 2))).astype(np.float32), 44100)
    (d / "notes.wav").write_text("a text file renamed to .wav\n")
    (d / "empty.wav").write_bytes(b"")
    lines[3:3] = [{"audio_filepath": "long.flac", "offset": 1.25, "duration": 2.0, "text": "slice"}]
    lines[9:9] = [{"audio_filepath": "missing.wav", "text": "gone"}, {"audio_filepath": "notes.wav"}]
    lines[15:15] = [{"audio_filepath": "long.flac", "offset": 3.0, "duration": 5.5},  # 2 windows: read per window
                    {"audio_filepath": "empty.wav", "duration": 1.0},
                    {"audio_filepath": "long.flac", "offset": 20.0, "duration": 1.0}]  # past the end
    path = d / "manifest.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def run_cli(args: list[str]) -> int:
    return main(["transcribe", *args, *FLAGS])


@pytest.fixture(scope="module")
def reference(manifest, tiny_ckpt, tmp_path_factory) -> Path:
    """The output manifest of one process (batch 4): what every other runner must reproduce byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "out.jsonl"
    assert run_cli([str(manifest), "--model", str(tiny_ckpt), "--output-manifest", str(out), "--batch-size", "4"]) == 1
    return out


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_output_manifest_lines(manifest, reference, tiny_model):
    """One line per input in input order: the input's fields, then input_index and pred_text (+ duration when
    the input has none), or error with the reason; texts equal transcribing each input alone."""
    inputs, lines = read(manifest), read(reference)
    assert len(lines) == len(inputs)
    for i, (given, line) in enumerate(zip(inputs, lines, strict=True)):
        assert list(line)[:len(given)] == list(given) and all(line[k] == v for k, v in given.items())
        assert line["input_index"] == i
        assert ("error" in line) != ("pred_text" in line)
    errors = {line["audio_filepath"]: line["error"] for line in lines if "error" in line}
    assert sorted(errors) == ["empty.wav", "long.flac", "missing.wav", "notes.wav"]
    assert "not found" in errors["missing.wav"] and "empty" in errors["empty.wav"]
    assert "past the end" in errors["long.flac"]
    for line in lines[:8]:
        if "offset" not in line and "error" not in line:
            path = str(manifest.parent / line["audio_filepath"])
            assert line["pred_text"] == tiny_model.transcribe(path, max_new_tokens=4, max_chunk_seconds=3,
                                                              segmentation="fixed")
            assert line["duration"] == pytest.approx(sf.info(path).duration, abs=0.01)


def test_slices_equal_the_cut_array(manifest, reference, tiny_model):
    """offset/duration: only that part is decoded, equal to transcribing the array cut at the file's rate; a slice
    longer than a window stays in its file (LongAudio, read window by window)."""
    native, rate = sf.read(str(manifest.parent / "long.flac"), dtype="float32")
    for line in read(reference):
        if "offset" in line and "error" not in line:
            a = round(line["offset"] * rate)
            cut = native[a:a + round(line["duration"] * rate)]
            assert line["pred_text"] == tiny_model.transcribe(cut, sample_rate=rate, max_new_tokens=4,
                                                              max_chunk_seconds=3, segmentation="fixed")
    long = FileAudio.slice(manifest.parent / "long.flac", 3.0, 5.5)
    opts = TranscribeOptions(chunk=corpus.transcribe_options(tiny_model, max_chunk_seconds=3).chunk)
    loaded, failures = load_all([long], opts.sample_rate, opts.chunk)
    assert not failures and isinstance(loaded[0], LongAudio) and len(loaded[0].windows) > 1
    assert np.array_equal(loaded[0].read(0, loaded[0].length), load_audio(native[132300:132300 + 242550], rate))


def test_plain_transcribe_honours_slices(manifest, reference, tiny_ckpt, tmp_path, capsys):
    """Without --output-manifest too, a manifest line with offset/duration is that slice of its file."""
    slices = [line for line in read(manifest) if "offset" in line][:2]
    small = tmp_path / "slices.jsonl"
    small.write_text("".join(json.dumps(line | {"audio_filepath": str(manifest.parent / line["audio_filepath"])})
                             + "\n" for line in slices))
    assert run_cli([str(small), "--model", str(tiny_ckpt)]) == 0
    texts = [line.split("\t", 1)[1] for line in capsys.readouterr().out.splitlines()]
    assert texts == [line.get("pred_text") for line in read(reference) if "offset" in line][:2]


def test_finished_inputs_are_handed_over_per_decoding_batch(tiny_model):
    """transcribe_arrays' on_done: after each decoding batch, the inputs whose last window it decoded."""
    rng = np.random.default_rng(1)
    clips = [(0.1 * rng.standard_normal(int(16000 * s))).astype(np.float32) for s in (0.5, 5.0, 1.0, 0.7)]
    opts = corpus.transcribe_options(tiny_model, batch_size=2, max_new_tokens=2, max_chunk_seconds=3,
                                     segmentation="fixed")
    calls: list[list[int]] = []
    out = transcribe_arrays(tiny_model, clips, opts, on_done=lambda done: calls.append([i for i, _ in done]))
    assert calls == [[1], [2, 3], [0]]  # windows longest first: the 5 s clip's two, then 1.0 + 0.7 s, then 0.5 s
    assert [t.text for t in out] == tiny_model.transcribe(clips, max_new_tokens=2, max_chunk_seconds=3,
                                                          segmentation="fixed")


def test_journal_collect_shard_and_finalize(tmp_path):
    """Torn last lines are dropped, a transcript beats an error, lines of other inputs never count, shards balance
    expected seconds, and the final file is in input order."""
    entries = [corpus.Entry(i, f"/a/{i}.wav", {"audio_filepath": f"{i}.wav", "input_index": i}, duration=d)
               for i, d in enumerate([10.0, 1.0, 1.0, 8.0, 2.0, 0.0])]
    path = tmp_path / "out.jsonl"
    path.write_text('{"audio_filepath": "0.wav", "input_index": 0, "error": "x"}\n{"audio_filepath": "1.w')
    journal = corpus.Journal(path)
    journal.write([{"audio_filepath": "0.wav", "input_index": 0, "pred_text": "a"},
                   {"audio_filepath": "other.wav", "input_index": 1, "pred_text": "stale"}])
    journal.close()
    assert path.read_text().count("\n") == 3 and "1.w\n" not in path.read_text()
    got = corpus.collect(entries, corpus.read_lines([path]))
    assert got == {0: {"audio_filepath": "0.wav", "input_index": 0, "pred_text": "a"}}
    shares = [corpus.shard(entries, 2, r) for r in (0, 1)]
    assert sorted(e.index for s in shares for e in s) == list(range(6))
    loads = [sum(e.duration + corpus.FILE_COST for e in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= 2 + corpus.FILE_COST
    assert all([e.index for e in s] == sorted(e.index for e in s) for s in shares)
    lines = {e.index: {"input_index": e.index} for e in entries}
    corpus.finalize(path, entries, dict(reversed(lines.items())))
    assert [line["input_index"] for line in read(path)] == list(range(6))


def test_ray_transcriber_class_on_a_batch(manifest, reference, tiny_ckpt):
    """The Ray Data class, called as Ray calls it (a columnar batch), gives each row the reference's results."""
    from nemo_lite.ray_runner import Transcriber

    lines = read(reference)
    rows = [{"audio_filepath": str(manifest.parent / line["audio_filepath"]), "offset": line.get("offset", np.nan),
             "duration": line["duration"] if "offset" in line else np.nan} for line in lines]
    batch = {k: np.array([r[k] for r in rows], dtype=object if k == "audio_filepath" else float) for k in rows[0]}
    t = Transcriber(str(tiny_ckpt), batch_size=3, max_new_tokens=4, max_chunk_seconds=3, segmentation="fixed",
                    threads=1)
    out = t(batch)
    assert len(out["pred_text"]) == len(lines)
    for k, line in enumerate(lines):
        assert out["pred_text"][k] == line.get("pred_text")
        assert (out["error"][k] is None) == ("error" not in line)
        if "error" not in line:
            assert out["duration"][k] == pytest.approx(line["duration"], abs=0.01)


def test_torchrun_needs_an_output_manifest(manifest, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["transcribe", str(manifest)]) == 2
    assert "--output-manifest" in capsys.readouterr().err


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _command(manifest: Path, ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "nemo_lite.cli", "transcribe", str(manifest), "--model", str(ckpt), "--output-manifest",
            str(out), *FLAGS, *extra]


def _wait_for_lines(proc: subprocess.Popen, path: Path, n: int, limit: float = 120.0) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and proc.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} did not reach {n} lines (exit code {proc.poll()})")


def test_sigkill_then_rerun_completes_without_redoing_work(manifest, reference, tiny_ckpt, tmp_path, monkeypatch,
                                                           capsys):
    """The driver killed with SIGKILL at a random point (and a line torn by the kill), then the same command
    again: a complete file equal to the reference, each input once, finished inputs not transcribed again."""
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([sys.executable, *_command(manifest, tiny_ckpt, out, "--batch-size", "1")],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_lines(proc, out, random.Random().randint(4 + 2, 4 + GOOD - 4))  # 4 error lines come first
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(out, "a") as f:
        f.write('{"audio_filepath": "c2.wav", "text": "re')  # a write cut short
    partial = [json.loads(line) for line in out.read_text().splitlines()[:-1]]
    finished = {line["input_index"] for line in partial if "error" not in line}
    assert 0 < len(finished) < GOOD
    loaded: list[str] = []
    original = load_all

    def spy(items, *args, **kwargs):
        loaded.extend(str(getattr(x, "name", x)) for x in items)
        return original(items, *args, **kwargs)

    monkeypatch.setattr("nemo_lite.transcription.load_all", spy)
    capsys.readouterr()
    assert run_cli([str(manifest), "--model", str(tiny_ckpt), "--output-manifest", str(out)]) == 1
    assert f"{len(finished)} of {len(read(reference))} input(s) already done" in capsys.readouterr().err
    assert len(loaded) == len(read(reference)) - len(finished)  # the finished ones were not even loaded
    assert out.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_torchrun_two_processes_write_the_same_file(manifest, reference, tiny_ckpt, tmp_path):
    out = tmp_path / "out.jsonl"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run([*torchrun, *_command(manifest, tiny_ckpt, out, "--batch-size", "3")], env=_env(),
                          capture_output=True, text=True, timeout=240)
    assert f"{_good(reference)} of 30 input(s) transcribed (30 in this run" in done.stderr, done.stderr[-3000:]
    assert out.read_bytes() == reference.read_bytes()
    assert corpus.parts(out) == []


def _good(reference: Path) -> int:
    return sum("error" not in line for line in read(reference))


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text("latin-1")
    except OSError:
        return ""


@pytest.fixture
def ray_cluster():
    """A 2-CPU Ray head on this machine, started as a user starts one for ``--ray-address`` (``ray start --head``,
    here with ``--block`` in its own process group, stopped with the group; its workers exit with its raylet).
    Drivers reach it at 127.0.0.1 (Ray resolves that to the node's address) with its token (``RAY_AUTH_MODE``)."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is not installed (pip install 'nemo-lite[ray]')")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # its own (short: socket paths) temp folder: /tmp/ray untouched
    head = subprocess.Popen([ray, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2", "--num-gpus",
                             "0", "--include-dashboard", "false", "--temp-dir", temp],
                            env=_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None, "ray start failed"
            time.sleep(0.2)
        yield head, f"127.0.0.1:{port}"  # resolved by Ray to this node's address
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(head.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=5)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_two_workers_one_killed_write_the_same_file(manifest, reference, tiny_ckpt, tmp_path, ray_cluster):
    """Two actors on a cluster started with ``ray start --head`` (``--ray-address``); one actor is killed with
    SIGKILL after the first results: Ray restarts it and retries its batch, the driver writes each input once."""
    head, address = ray_cluster
    out, log = tmp_path / "out.jsonl", tmp_path / "driver.log"
    with open(log, "w") as stderr:
        proc = subprocess.Popen([sys.executable, *_command(manifest, tiny_ckpt, out, "--ray", "--ray-address", address,
                                                           "--workers", "2", "--batch-size", "1")],
                                env=_env() | {"RAY_AUTH_MODE": "token"}, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_for_lines(proc, out, 1, limit=200)
        workers = [p for p in _descendants(head.pid) if "MapWorker" in _cmdline(p)]
        assert workers, "no Ray actor found"
        os.kill(workers[0], signal.SIGKILL)
        proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert f"{_good(reference)} of 30 input(s) transcribed" in err, err[-3000:]
    assert out.read_bytes() == reference.read_bytes()
