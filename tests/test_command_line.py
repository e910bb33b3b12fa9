"""Tier 1: the command line as people meet it (issue 11) — one-line errors and exit codes, inputs checked before the
model loads, damaged files named, progress bars that advance and end at their total, no leaked warnings or
tracebacks, fast ``--help``, ``--threads``, ``--debug``, a streamed ``chat`` answer. The acceptance scenarios run
``nemo-lite`` as a subprocess and read its stdout/stderr; the rest call :func:`nemo_lite.cli.main` in process."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import nemo_lite
from nemo_lite import cli, runtime, terminal
from nemo_lite.terminal import EXIT_BAD_INPUT, EXIT_INTERNAL, EXIT_OK, EXIT_SETUP

EXAMPLE = Path(nemo_lite.__file__).parent / "assets" / "example.wav"
TOKENS = ["--max-new-tokens", "2", "--threads", "1"]
BAR = re.compile(r"([0-9.]+)/([0-9.]+) s audio")
PYTHON_WARNING = re.compile(r"\w+Warning\b|^\s*warnings\.warn", re.MULTILINE)  # how Python prints a warning


def nemo_lite_cmd(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``nemo-lite ARGS`` in a fresh interpreter (this tree first on its path), stdout/stderr captured."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(nemo_lite.__file__).parents[1]),
                                                          os.environ.get("PYTHONPATH", "")])}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run([sys.executable, "-m", "nemo_lite.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def bar_positions(stderr: str) -> tuple[list[float], float]:
    """Every position a bar was drawn at, in order, and its total."""
    found = BAR.findall(stderr)
    assert found, stderr
    return [float(n) for n, _ in found], float(found[-1][1])


def assert_clean(stderr: str) -> None:
    """No traceback and no warning printed the Python way (or tqdm's)."""
    assert "Traceback" not in stderr, stderr
    assert not PYTHON_WARNING.search(stderr), stderr


def assert_bar_sane(stderr: str) -> list[float]:
    positions, total = bar_positions(stderr)
    assert positions == sorted(positions), positions  # monotone
    assert positions[-1] == total and max(positions) <= total  # ends exactly at the total, never past it
    assert "<-" not in stderr  # no negative ETA
    return positions


def truncated_wav(path: Path, seconds: float = 2.0) -> Path:
    """A 16-bit WAV cut in the middle of its data chunk (an interrupted copy): the header promises ``seconds``."""
    x = (0.1 * np.sin(np.arange(int(seconds * 16000)) / 7)).astype(np.float32)
    sf.write(str(path), x, 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# ---------------------------------------------------------------------- acceptance, as a subprocess
def test_folder_of_bad_inputs_each_named_in_one_line(tiny_ckpt, tmp_path):
    """Good files, a truncated WAV, an empty file, a text file named .wav and a manifest naming a missing file:
    each bad input named on one line (the truncated one as damaged), the good ones transcribed, exit code 1,
    no traceback or warning, and a bar that ends exactly at its total."""
    d = tmp_path / "clips"
    d.mkdir()
    shutil.copy(EXAMPLE, d / "good.wav")
    x, _ = sf.read(str(EXAMPLE), dtype="float32")
    sf.write(str(d / "good2.flac"), x[:20000], 16000)
    truncated_wav(d / "cut.wav")
    (d / "empty.wav").write_bytes(b"")
    (d / "notes.wav").write_text("a text file named .wav\n")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "clips/good.wav"}) + "\n"
                        + json.dumps({"audio_filepath": "gone.wav", "duration": 3.0}) + "\n")
    res = nemo_lite_cmd("transcribe", str(d), str(manifest), "--model", str(tiny_ckpt), "--format", "json", *TOKENS)
    assert res.returncode == EXIT_BAD_INPUT, res.stderr
    lines = res.stderr.replace("\r", "\n").splitlines()
    for name, problem in [("cut.wav", "damaged"), ("empty.wav", "empty"), ("notes.wav", "cannot decode"),
                          ("gone.wav", "not found")]:
        named = [line for line in lines if name in line]
        assert len(named) == 1 and problem in named[0], (name, named)
    done = [Path(json.loads(line)["audio_filepath"]).name for line in res.stdout.splitlines()]
    assert done == ["good.wav", "good2.flac", "good.wav"]
    assert_clean(res.stderr)
    assert_bar_sane(res.stderr)
    assert "4 input(s) failed" in res.stderr


def test_help_is_fast_and_imports_nothing_heavy():
    """``nemo-lite --help``, ``transcribe --help`` and ``manifest --help`` under a second: parsing imports no torch,
    transformers, numpy or soundfile (it took 3-4 s when the parser pulled in torch)."""
    probe = ("import sys; from nemo_lite.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'soundfile', 'tqdm') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(Path(nemo_lite.__file__).parents[1])})
    assert res.stdout.strip() == "[]", res.stdout + res.stderr
    for args in (["--help"], ["transcribe", "--help"], ["manifest", "--help"]):
        best = min(_timed(nemo_lite_cmd, *args) for _ in range(3))
        assert best < 1.0, (args, best)


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    res = fn(*args)
    assert res.returncode == 0 and "usage: nemo-lite" in res.stdout
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- errors and exit codes, in process
def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def loaded(monkeypatch, tiny_model, tiny_ckpt) -> str:
    """The commands get the session's tiny model instead of loading it again (loading is exercised by the
    subprocess tests); returns the --model value to pass."""
    from nemo_lite import terminal

    for module in (cli, terminal):  # terminal.model_for_inputs loads through its own name
        monkeypatch.setattr(module, "load_command_model", lambda args: tiny_model)
    return str(tiny_ckpt)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a CPU-only machine")
def test_cuda_on_a_cpu_only_machine_is_one_line_and_exit_2(capsys):
    code, out, err = run(["transcribe", "--device", "cuda", str(EXAMPLE), "--model", "unused"], capsys)
    assert code == EXIT_SETUP
    assert err.count("\n") == 1 and "cuda" in err and "--device cpu" in err
    assert_clean(err)


def test_bad_inputs_are_reported_before_the_model_loads(tmp_path, capsys, monkeypatch):
    """Nothing to transcribe: every problem named, exit 1, and no model load attempted (the --model is bogus)."""
    from nemo_lite import terminal

    for module in (cli, terminal):
        monkeypatch.setattr(module, "load_command_model", lambda args: pytest.fail("the model was loaded"))
    bad = tmp_path / "m.jsonl"
    bad.write_text("{not json\n")
    code, _, err = run(["transcribe", str(tmp_path / "missing.wav"), str(bad), "--model", "no/such-model"], capsys)
    assert code == EXIT_BAD_INPUT
    assert "missing.wav: file not found" in err and "m.jsonl: cannot read manifest" in err
    assert "nothing to transcribe" in err
    assert_clean(err)


def test_truncated_files_are_errors_unless_allowed(loaded, tmp_path, capsys):
    cut = truncated_wav(tmp_path / "cut.wav")
    code, out, err = run(["transcribe", str(cut), "--model", loaded, *TOKENS], capsys)
    assert code == EXIT_BAD_INPUT and out == ""
    assert "damaged (truncated): holds 1.00 s of the 2.00 s" in err and "--allow-truncated" in err
    code, out, err = run(["transcribe", str(cut), "--model", loaded, "--allow-truncated", *TOKENS], capsys)
    assert code == EXIT_OK and out.strip() != ""
    assert "RTFx" in err and "1.0 s of audio" in err
    assert_clean(err)


def test_damaged_flac_found_while_decoding(loaded, tmp_path, capsys):
    """A FLAC cut short decodes partway, then libsndfile fails: named as damaged (not a header problem), and with
    --allow-truncated the audio before the cut is transcribed with a one-line note."""
    x = (0.1 * np.sin(np.arange(3 * 16000) / 7)).astype(np.float32)
    sf.write(str(tmp_path / "full.flac"), x, 16000)
    data = (tmp_path / "full.flac").read_bytes()
    (tmp_path / "cut.flac").write_bytes(data[: len(data) // 2])
    code, _, err = run(["transcribe", str(tmp_path / "cut.flac"), "--model", loaded, *TOKENS], capsys)
    assert code == EXIT_BAD_INPUT and "cut.flac: damaged (truncated)" in err and "of the 3.00 s" in err
    code, out, err = run(["transcribe", str(tmp_path / "cut.flac"), "--model", loaded, "--allow-truncated",
                          *TOKENS], capsys)
    assert code == EXIT_OK and out.strip()
    notes = [line for line in err.replace("\r", "\n").splitlines() if "damaged" in line]
    assert len(notes) == 1 and notes[0].startswith("nemo-lite: ") and "using the" in notes[0]
    assert_clean(err)


def test_eval_names_a_missing_file_and_scores_the_rest(loaded, tmp_path, capsys):
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": str(EXAMPLE), "text": "hello"}) + "\n"
                        + json.dumps({"audio_filepath": "gone.wav", "text": "x", "duration": 1.0}) + "\n")
    code, out, err = run(["eval", str(manifest), "--model", loaded, *TOKENS], capsys)
    assert code == EXIT_BAD_INPUT
    assert "gone.wav: file not found (manifest line 2)" in err
    result = json.loads(out)
    assert result["utterances"] == 1 and result["failed"] == 1
    assert_clean(err)
    assert_bar_sane(err)


def test_hub_unreachable_names_model_and_llm_path(monkeypatch, capsys):
    import huggingface_hub

    def offline(*args, **kwargs):
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    t0 = time.perf_counter()
    code, _, err = run(["transcribe", str(EXAMPLE), "--threads", "1"], capsys)
    assert code == EXIT_SETUP and time.perf_counter() - t0 < 30  # no retry loop
    assert err.count("\n") == 1 and "--model" in err and "--llm-path" in err
    assert_clean(err)


def test_unexpected_error_is_one_line_unless_debug(loaded, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "transcribe_jobs", boom)
    code, _, err = run(["transcribe", str(EXAMPLE), "--model", loaded, "--threads", "1"], capsys)
    assert code == EXIT_INTERNAL and "unexpected error: RuntimeError: boom" in err and "--debug" in err
    assert "Traceback" not in err
    code, _, err = run(["transcribe", str(EXAMPLE), "--model", loaded, "--threads", "1", "--debug"], capsys)
    assert code == EXIT_INTERNAL and "Traceback" in err


def test_ten_minute_file_progress_advances(loaded, tmp_path, capfd):
    """A 10-minute recording's bar (default options: scanned with VAD, speech segments decoded) is drawn at >= 10
    positions before it finishes, moving forward only and ending at the total; guards the bar that sat at 0 %
    and jumped to 100 % once the file was done. In process (a subprocess costs ~10 s of imports); ``capfd``
    reads file descriptor 2 too, so C libraries' output would show."""
    x, _ = sf.read(str(EXAMPLE), dtype="float32")
    gap = np.zeros(int(35.5 * 16000), np.float32)  # speech every 40 s
    long = np.concatenate([np.concatenate([x, gap]) for _ in range(15)])[: 600 * 16000]  # (9.6 M,) = 10 min
    path = tmp_path / "ten_minutes.wav"
    sf.write(str(path), long, 16000)
    code = cli.main(["transcribe", str(path), "--model", loaded, *TOKENS])
    err = capfd.readouterr().err
    assert code == EXIT_OK, err
    positions = assert_bar_sane(err)
    before_end = sorted({p for p in positions if 0 < p < 600.0})
    assert len(before_end) >= 10, positions
    assert len({p for p in before_end if p > 60.0}) >= 3  # it keeps moving after the scan's 10 %
    assert_clean(err)


# ---------------------------------------------------------------------- threads
def test_threads_flag_and_default_rule(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert runtime.set_threads(1) == 1
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        monkeypatch.setattr(os, "getloadavg", lambda: (1.4, 0.0, 0.0))
        assert runtime.default_threads() == 3  # 4 cores, one busy
        monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
        assert runtime.default_threads() == 1  # never below one
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
        assert runtime.default_threads() == 4
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        assert runtime.set_threads(None) == 1  # the user's OMP_NUM_THREADS is kept
    finally:
        torch.set_num_threads(before)


def test_cli_asks_openmp_for_passive_waits(monkeypatch):
    """The command sets OMP_WAIT_POLICY=PASSIVE before torch loads in its process (spinning waits made a decoding
    step 7x slower beside another busy process), and keeps a value the user set."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    code = ("import os, sys; from nemo_lite import cli; sys.argv = ['nemo-lite', '--help']\n"
            "try:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported before the policy was set'\n"
            "print(os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "PASSIVE"


def test_bad_threads_value_is_a_setup_error(tmp_path, capsys):
    code, _, err = run(["transcribe", str(EXAMPLE), "--threads", "-2", "--model", "unused"], capsys)
    assert code == EXIT_SETUP and "--threads must be >= 0" in err


# ---------------------------------------------------------------------- progress bar edges
def test_bar_clamps_and_ends_at_its_total(capsys):
    """Credits past the total (header durations vs decoded samples), backwards moves (a skipped file) and float
    sums: the bar stays monotone, never passes its total, ends exactly at it, and tqdm never warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bar = terminal.Bar(4.46, "t")
        for step in [0.1] * 30 + [3.0, 5.0]:
            bar.add(step)
        bar.reach(1.0)
        bar.close()
        single = terminal.Bar(1.0, "t")
        single.close()
        empty = terminal.Bar(0.0, "t")
        empty.add(1.0)
        empty.close()
    err = capsys.readouterr().err
    positions = [float(n) for n, total in BAR.findall(err) if total == "4.5"]  # as drawn: one decimal
    assert positions == sorted(positions) and positions[-1] == 4.5
    assert bar.position == bar.bar.n == 4.46 and single.bar.n == 1.0 and empty.position == 0.0
    assert "<-" not in err


# ---------------------------------------------------------------------- chat streams its answer
def test_chat_streams_tokens_as_they_are_decoded(tiny_model, one_thread):
    class Spy:
        def __init__(self) -> None:
            self.puts, self.ended = [], 0

        def put(self, ids) -> None:
            self.puts.append(ids.tolist())

        def end(self) -> None:
            self.ended += 1

    spy = Spy()
    streamed = tiny_model.chat("Say something.", max_new_tokens=5, streamer=spy)
    assert streamed == tiny_model.chat("Say something.", max_new_tokens=5)
    assert spy.ended == 1 and len(spy.puts) >= 2  # the (empty) prompt, then one put per new token
    with pytest.raises(ValueError, match="one"):
        tiny_model.generate(prompts=[[{"role": "user", "content": "a"}]] * 2, max_new_tokens=2, streamer=spy)


def test_chat_command_prints_the_streamed_answer(loaded, tiny_model, capsys):
    code, out, err = run(["chat", "Say something.", "--model", loaded, *TOKENS], capsys)
    assert code == EXIT_OK
    assert out == tiny_model.chat("Say something.", max_new_tokens=2) + "\n"
    assert_clean(err)


# ---------------------------------------------------------------------- library warnings fixed at their cause
def test_chunked_prefill_and_generate_raise_no_future_warning(tiny_model, one_thread):
    """The KV cache goes to transformers as ``cache=`` (5.24 warned about ``past_key_values`` once per long file,
    from the prefill and from peft's generate)."""
    from nemo_lite import decoding

    x, _ = sf.read(str(EXAMPLE), dtype="float32")
    embeds = tiny_model.embed_audio([x, x[:30000]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        rows = [tiny_model.prompt_ids(tiny_model.asr_prompt()) for _ in embeds]
        from nemo_lite.injection import build_inputs_embeds
        from nemo_lite.llm import input_embeddings

        inputs, mask = build_inputs_embeds(rows, input_embeddings(tiny_model.llm), tiny_model.audio_tag_id, embeds)
        opts = decoding.GreedyOptions(max_new_tokens=3, eos_id=tiny_model.eos_id, pad_id=tiny_model.pad_id,
                                      prefill_tokens=16)  # forces the chunked prefill
        assert len(decoding.greedy(tiny_model.llm, inputs, mask, opts)) == 2


def test_train_with_a_missing_config_is_a_setup_error(tmp_path, capsys):
    code, _, err = run(["train", "--config", str(tmp_path / "none.json")], capsys)
    assert code == EXIT_SETUP and err.count("\n") == 1 and "none.json" in err
    assert_clean(err)
