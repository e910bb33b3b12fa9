"""The model in its own process: the scheduler's worker thread drives it over a pipe.

Why (a departure from the issue's "the model runs in one worker thread"; the worker thread is still the only
caller): in one process the model shares the GIL with the HTTP side. A decoding step gives the GIL up in every torch
op and must win it back from the threads receiving, checking and answering uploads; with the tiny model at 16
clients the worker was busy 97 % of the time yet its batches cost 0.020 CPU s per audio second against the CLI's
0.012 (WORKLOG, issue 13). In a process of its own it has a GIL of its own, and the server process only parses,
checks and routes.

What crosses the pipe (pickled, one request and one reply at a time): a batch's window samples, read on the server's
side from the checked upload (an array slice, or a long file read front to back), and the texts back; chat rows
(dialog + 16 kHz samples) and their :class:`~.engine.Answer`. The model process runs the same
:class:`~.engine.Engine` as the in-process mode, so results are identical.

The model process ignores SIGINT/SIGTERM (the server drains its requests first, then closes the pipe) and exits on
end-of-file, so it never outlives the server. If it dies, the proxy raises :class:`EngineLost` and the scheduler
fails the queued work and stops the server (a supervisor restarts it; a half-alive server would only answer 500s).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ..longform import ChunkOptions
from .engine import Answer, ChatRow, Engine, Planned, window_samples
from .scheduler import EngineLost

# The model-loading options the child needs (argparse names of ``_model_args``); nothing else crosses.
MODEL_FIELDS = ("model", "llm_path", "device", "dtype", "quantize", "merge_lora", "encoder_dtype", "compile",
                "threads")


@dataclass(frozen=True)
class _Ready:
    audio_tag: str
    chunk: ChunkOptions


class ModelProcess:
    """An :class:`~.engine.Engine` that runs in a child process (same methods the scheduler calls)."""

    def __init__(self, args: argparse.Namespace, chunk: ChunkOptions | None, max_new_tokens: int | None) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that holds torch's thread pools and uvicorn's loop
        self._conn, child = ctx.Pipe()
        fields = argparse.Namespace(**{k: getattr(args, k, None) for k in MODEL_FIELDS})
        self._proc = ctx.Process(target=_child_main, args=(child, fields, chunk, max_new_tokens),
                                 name="nemo-lite-model", daemon=True)
        self._proc.start()
        child.close()
        self._lock = threading.Lock()  # one call at a time (the scheduler's worker is the only caller)
        ready = self._receive()
        if isinstance(ready, str):  # the child's one-line reason it could not load
            self.close()
            raise RuntimeError(ready)
        self.audio_tag, self.chunk = ready.audio_tag, ready.chunk

    def transcribe_windows(self, rows: list[tuple[Planned, int]]) -> list[str]:
        """Read each window's samples here, decode them there (text per row, as :meth:`Engine.transcribe_windows`)."""
        return self._call("transcribe_clips", [window_samples(planned, k) for planned, k in rows])

    def generate(self, rows: list[ChatRow]) -> list[Answer]:
        return self._call("generate", rows)

    def close(self) -> None:
        """Let the child finish and exit (it ends on end-of-file); idempotent."""
        try:
            self._conn.close()
        except OSError:
            pass
        self._proc.join(30)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()

    def _call(self, method: str, payload: object):
        with self._lock:
            try:
                self._conn.send((method, payload))
            except (OSError, ValueError) as err:  # broken pipe / closed
                raise EngineLost(self._why()) from err
            status, value = self._receive()
        if status == "raise":
            raise RuntimeError(value)  # the batch failed there; the scheduler retries its rows one by one
        return value

    def _receive(self):
        try:
            return self._conn.recv()
        except (EOFError, OSError) as err:
            raise EngineLost(self._why()) from err

    def _why(self) -> str:
        self._proc.join(1)
        code = self._proc.exitcode
        return f"the model process exited (code {code})" if code is not None else "the model process stopped answering"


def _child_main(conn, args: argparse.Namespace, chunk: ChunkOptions | None, max_new_tokens: int | None) -> None:
    """The model process: load, say ready (or why not), then answer calls until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C / SIGTERM go to the server, which drains, then closes us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    from ..terminal import SetupError, load_command_model, prepare

    try:
        prepare(args)  # threads, device, dtype
        model = load_command_model(args)
    except SetupError as err:
        conn.send(str(err))
        return
    except Exception as err:  # noqa: BLE001  (reported to the server, which exits)
        conn.send(f"{type(err).__name__}: {err}")
        return
    engine = Engine(model, chunk or ChunkOptions(max_chunk_seconds=model.window_seconds), max_new_tokens)
    conn.send(_Ready(engine.audio_tag, engine.chunk))
    calls: dict[str, Callable] = {"transcribe_clips": engine.transcribe_clips, "generate": engine.generate}
    while True:
        try:
            method, payload = conn.recv()
        except (EOFError, OSError):
            return
        try:
            reply = ("ok", calls[method](payload))
        except Exception as err:  # noqa: BLE001  (one batch's failure; the server decides what fails)
            reply = ("raise", f"{type(err).__name__}: {err}")
        try:
            conn.send(reply)
        except (OSError, ValueError):
            return
