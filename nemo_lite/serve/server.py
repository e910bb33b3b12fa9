"""Run the server: the model loads on its worker thread while uvicorn already answers ``/health`` (503 until
loaded); SIGTERM stops accepting connections, lets in-flight requests finish, then exits 0."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

import uvicorn

from ..longform import ChunkOptions
from ..terminal import EXIT_OK, EXIT_SETUP
from .app import ServeConfig, create_app
from .engine import Engine
from .worker import ModelProcess

API_KEY_ENV = "NEMO_LITE_API_KEY"
# The model worker gives up the GIL in every torch op and waits to take it back while the HTTP threads run Python;
# CPython hands it over only every switch interval (5 ms by default). Measured with a thread running Python 5 % of
# the time beside two 8-row batches of the tiny model (load 6, best of 3): batches 11 % slower at 5 ms, 1.5 % at 0.5 ms
# (20 % of the time: 27 % and 21 %).
SWITCH_INTERVAL = 0.0005  # seconds


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    model = Path(args.model).expanduser()
    return ServeConfig(
        model_name=model.name if model.is_dir() else args.model,  # a local path is not shown to clients
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        max_queue=args.max_queue,
        max_upload_mb=args.max_upload_mb,
        max_audio_seconds=args.max_audio_seconds,
        threads=args.threads,
        # None: the model's own window, set once it has loaded (40 s Canary-Qwen, 30 s a Whisper encoder)
        chunk=ChunkOptions(max_chunk_seconds=args.max_chunk_seconds) if args.max_chunk_seconds else None,
    )


def run(args: argparse.Namespace) -> int:
    from ..terminal import load_command_model as load_model

    config = config_from_args(args)
    for name, value in (("--max-batch-size", config.max_batch_size), ("--max-queue", config.max_queue),
                        ("--max-upload-mb", config.max_upload_mb)):
        if value <= 0:
            print(f"nemo-lite: {name} must be > 0", file=sys.stderr)
            return EXIT_SETUP
    failed = threading.Event()

    def load() -> Engine | ModelProcess:
        from ..terminal import SetupError

        if args.model_process:
            engine = ModelProcess(args, config.chunk, max_new_tokens=args.max_new_tokens)
            config.chunk = engine.chunk
            return engine
        try:
            model = load_model(args)
        except SetupError as err:  # the loader's one-line reason, then the worker reports the failure
            print(f"nemo-lite: {err}", file=sys.stderr)
            raise RuntimeError(str(err)) from None
        if config.chunk is None:
            config.chunk = ChunkOptions(max_chunk_seconds=model.window_seconds)
        return Engine(model, config.chunk, max_new_tokens=args.max_new_tokens)

    def fatal(message: str) -> None:
        failed.set()
        server.should_exit = True

    sys.setswitchinterval(SWITCH_INTERVAL)  # this process is the server's: the model worker and the HTTP side
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(name)s: %(message)s")
    app = create_app(load, config, on_fatal=fatal)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_keep_alive=5))
    # uvicorn re-raises the signal it shut down on, once the server has stopped, with the handler it found; with
    # Python's default SIGTERM handler that kills the process (exit 143) after a clean shutdown. Ours ignores it.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    if config.api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"nemo-lite: warning: listening on {args.host} without an API key (--api-key or {API_KEY_ENV})",
              file=sys.stderr)
    server.run()
    return EXIT_SETUP if failed.is_set() else EXIT_OK
