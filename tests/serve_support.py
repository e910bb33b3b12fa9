"""Helpers for the serve tests: an in-process server on a free 127.0.0.1 port, test audio, metric parsing."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from nemo_lite.audio import SAMPLE_RATE

DATA = Path(__file__).resolve().parent / "data"
CHUNK_SECONDS = 10.0  # the test servers cut long audio into 10 s windows: more windows to interleave, 128-token
# budgets (the tiny random model never stops early, so a row's cost is its budget)


class ThreadServer:
    """uvicorn serving ``app`` from a thread, on a socket bound here (no port race); waits for /health 200."""

    def __init__(self, app) -> None:
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        wait_healthy(self.url, 120)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(60)
        self.sock.close()


def wait_healthy(url: str, timeout: float, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not healthy after {timeout} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name and ",".join(sorted((m.group(2) or "").split(","))) == want:
            return float(m.group(3))
    return 0.0


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """The shipped speech clips end to end with short quiet gaps and a little noise, ``seconds`` long."""
    clips = [sf.read(str(DATA / f"speech_{n}.wav"), dtype="float32")[0] for n in ("long", "medium", "short")]
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < seconds * SAMPLE_RATE:
        x = clips[int(rng.integers(len(clips)))]
        gap = np.zeros(int(rng.uniform(0.2, 0.8) * SAMPLE_RATE), np.float32)
        parts += [x, gap]
        total += len(x) + len(gap)
    y = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
    return y + 0.003 * rng.standard_normal(len(y)).astype(np.float32)


def write_clips(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` short clips (0.3-9 s) in wav, flac and ogg, at 16, 22.05 and 44.1 kHz."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        x = speechlike(float(rng.uniform(0.3, 9.0)), seed + i)
        fmt, rate = [("wav", 16000), ("flac", 22050), ("ogg", 44100)][i % 3]
        if rate != SAMPLE_RATE:
            import soxr

            x = soxr.resample(x, SAMPLE_RATE, rate)
        path = folder / f"clip{i:02d}.{fmt}"
        sf.write(str(path), x, rate)
        out.append(path)
    return out


def write_bad_uploads(folder: Path) -> list[Path]:
    """Uploads that must be refused with 400: text, empty, a truncated header, random bytes."""
    good = (DATA / "speech_short.wav").read_bytes()
    files = {"notes.wav": b"this is a text file, not audio\n", "empty.wav": b"", "truncated.wav": good[:30],
             "random.flac": bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in files]


@contextmanager
def small_budgets() -> Iterator[None]:
    """Window token budgets of 1 token/s + 4 (at least 4) instead of 8/s + 32 (at least 128), for an in-process
    server and the references alike: the tiny random model never stops early, so a row costs its whole budget,
    and the budgets still differ from row to row (each row is cut to its own)."""
    from nemo_lite import transcription

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(transcription, "TOKENS_PER_SECOND", 1)
        mp.setattr(transcription, "TOKEN_MARGIN", 4)
        mp.setattr(transcription, "MIN_TOKENS", 4)
        yield
