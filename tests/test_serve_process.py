"""Tier 1: ``nemo-lite serve`` as its own process — the CLI's flags, and SIGTERM under load: the server stops
accepting connections, answers every request already in flight (correctly), then exits 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn, ...) is not installed")
import httpx  # noqa: E402

from nemo_lite.audio import SAMPLE_RATE  # noqa: E402

from .serve_support import metric, speechlike, wait_healthy, write_clips  # noqa: E402
from .test_serve import assert_error  # noqa: E402

TOKENS = 24  # --max-new-tokens: every window costs 24 steps (the tiny random model never stops early)
CHUNK = 10.0  # --max-chunk-seconds


def test_sigterm_under_load_finishes_in_flight_requests_then_exits_0(tiny_ckpt, tiny_model, tmp_path, one_thread):
    from .serve_support import free_port

    long = tmp_path / "long_45s.wav"
    sf.write(str(long), speechlike(45.0, 11), SAMPLE_RATE)
    paths = [long] + write_clips(tmp_path, 3, seed=20)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "nemo_lite.cli", "serve", "--model", str(tiny_ckpt), "--port", str(port),
         "--threads", "1", "--max-new-tokens", str(TOKENS), "--max-chunk-seconds", str(CHUNK),
         "--max-batch-size", "2", "--batch-wait-ms", "20", "--max-upload-mb", "4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_healthy(url, 180, proc)
        assert_error(httpx.post(f"{url}/v1/audio/transcriptions",
                                files={"file": ("big.wav", b"\0" * (5 * 2**20))}), 413, "4 MB")  # --max-upload-mb
        results: dict = {}

        def send(path):
            results[path] = httpx.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                                       data={"response_format": "verbose_json"}, timeout=120)

        threads = [threading.Thread(target=send, args=(p,)) for p in paths]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while metric(httpx.get(f"{url}/metrics").text, "nemo_lite_queue_depth") < len(paths):
            assert time.monotonic() < deadline, "requests were not admitted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.ConnectError):  # no longer accepting, while the queued work is still running
            httpx.get(f"{url}/health", timeout=5)
        assert proc.poll() is None
        for t in threads:
            t.join(120)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        log = proc.communicate()[0]
    want = tiny_model.transcribe([str(p) for p in paths], max_new_tokens=TOKENS, max_chunk_seconds=CHUNK,
                                 timestamps=True)  # verbose_json: planned as transcribe(..., timestamps=True)
    for path, t in zip(paths, want, strict=True):
        assert results[path].status_code == 200, log
        assert results[path].json()["text"] == t.text
    segments = results[long].json()["segments"]
    assert len(segments) == len(want[0].segments) >= 3  # speech segments of at most 10 s
    assert "Finished server process" in log
