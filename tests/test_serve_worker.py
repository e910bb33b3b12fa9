"""Tier 1: the model in its own process (``nemo_lite.serve.worker.ModelProcess``) — the same texts and answers as
the in-process :class:`~nemo_lite.serve.engine.Engine` on the same rows, a failing batch that leaves the process
working, and a dead process that fails the queued requests and stops the scheduler instead of hanging them."""

from __future__ import annotations

import argparse
import threading

import numpy as np
import pytest
import soundfile as sf

from nemo_lite.audio import SAMPLE_RATE

from .serve_support import speechlike, write_clips

CHUNK = 10.0  # seconds: the 14 s file is a long input of two windows, read from disk
TOKENS = 6


@pytest.fixture(scope="module")
def proxy(tiny_ckpt):
    from nemo_lite.longform import ChunkOptions
    from nemo_lite.serve.worker import ModelProcess

    args = argparse.Namespace(model=str(tiny_ckpt), threads=1, device="cpu")  # the other model flags: defaults
    p = ModelProcess(args, ChunkOptions(max_chunk_seconds=CHUNK), max_new_tokens=TOKENS)
    yield p
    p.close()


def _rows(paths, timestamps: bool = True):
    from nemo_lite.longform import ChunkOptions
    from nemo_lite.serve.engine import plan

    planned = [plan(str(p), ChunkOptions(max_chunk_seconds=CHUNK), timestamps) for p in paths]
    return planned, [(p, k) for p in planned for k in range(len(p.windows))]


def test_model_process_answers_as_the_in_process_engine(proxy, tiny_model, tmp_path, one_thread):
    from nemo_lite.serve.engine import ChatRow, Engine

    long = tmp_path / "long.flac"
    sf.write(str(long), speechlike(14.0, 5), SAMPLE_RATE)
    paths = write_clips(tmp_path, 3, seed=30) + [long]
    local = Engine(tiny_model, proxy.chunk, max_new_tokens=TOKENS)
    assert proxy.audio_tag == local.audio_tag and proxy.chunk == local.chunk
    planned, rows = _rows(paths)
    assert len(planned[-1].windows) >= 2  # the long input's windows cross the pipe as samples read here
    got = proxy.transcribe_windows(rows)
    want = local.transcribe_windows(_rows(paths)[1])  # fresh plans: a long file is read front to back once
    assert got == want and all(isinstance(t, str) for t in got)
    for p in planned:
        p.close()

    audio = speechlike(2.0, 9)
    chat = [ChatRow([{"role": "user", "content": f"Transcribe: {proxy.audio_tag}"}], [audio], 5),
            ChatRow([{"role": "user", "content": "Say something."}], [], 3)]
    for row in chat:  # one kind per batch, as the scheduler sends them
        assert proxy.generate([row]) == local.generate([row])


def test_a_failing_batch_raises_and_the_process_keeps_working(proxy, tiny_model):
    from nemo_lite.serve.engine import ChatRow, Engine

    bad = ChatRow([{"role": "user", "content": "two tags, no audio"}], [np.zeros(1600, np.float32)], 3)
    with pytest.raises(RuntimeError) as err:
        proxy.generate([bad])
    assert err.type is RuntimeError  # a batch error, not EngineLost: the scheduler retries rows one by one
    good = ChatRow([{"role": "user", "content": "Hello"}], [], 2)
    assert proxy.generate([good]) == Engine(tiny_model, proxy.chunk).generate([good])


def test_a_dead_model_process_fails_queued_work_and_stops(proxy):
    """Runs after the tests above (file order), since it kills the module's model process."""
    from nemo_lite.serve.engine import ChatRow
    from nemo_lite.serve.scheduler import ChatJob, EngineLost, Scheduler

    p = proxy
    p._proc.kill()
    p._proc.join()
    with pytest.raises(EngineLost, match="exited"):
        p.generate([ChatRow([{"role": "user", "content": "Hello"}], [], 2)])

    fatal, errors, done = [], [], threading.Event()
    scheduler = Scheduler(lambda: p, max_batch_size=4, batch_wait=0.01, on_fatal=fatal.append)
    jobs = [ChatJob(ChatRow([{"role": "user", "content": f"q{i}"}], [], 2), on_done=lambda ids: done.set(),
                    on_error=errors.append) for i in range(3)]
    for job in jobs:
        scheduler.submit(job)
    scheduler.start()
    scheduler.stop(30)
    assert not done.is_set()
    assert len(errors) == 3 and all("model process exited" in e for e in errors)
    assert len(fatal) == 1 and scheduler.engine is None and "exited" in (scheduler.error or "")
    with pytest.raises(RuntimeError, match="shutting down"):
        scheduler.submit(jobs[0])


def test_a_model_that_cannot_load_is_reported(tmp_path):
    from nemo_lite.serve.worker import ModelProcess

    args = argparse.Namespace(model=str(tmp_path / "missing"), threads=1, device="cpu")
    with pytest.raises(RuntimeError, match="cannot load model"):
        ModelProcess(args, None, None)
