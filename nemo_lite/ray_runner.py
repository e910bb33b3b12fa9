"""Ray Data: a manifest transcribed by a pool of actors, each holding one model (optional extra ``[ray]``).

:class:`Transcriber` is a Ray Data callable class: Ray builds it once per actor (the model loads once) and calls
it with batches of manifest rows; it returns the rows with ``pred_text``, ``duration`` (when a row has none),
``segments`` (with ``timestamps=True``) and ``error`` (the reason an input failed; None otherwise). The work is
:func:`nemo_lite.corpus.transcribe_entries`, as on one process or under torchrun. On your own dataset::

    import ray
    from nemo_lite.ray_runner import Transcriber

    ds = ray.data.read_json("manifest.jsonl")  # audio_filepath (absolute, or relative to the workers' folder)
    ds = ds.map_batches(Transcriber, fn_constructor_kwargs={"model": "nvidia/canary-qwen-2.5b"}, batch_size=64,
                        compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1)
    ds.write_json("transcripts/")

``nemo-lite transcribe MANIFEST --ray [--ray-address ADDR] --workers N --output-manifest OUT.jsonl`` is the driver
(:func:`run_ray`): it reads the manifest and what an earlier run left in OUT.jsonl (:mod:`nemo_lite.corpus`),
sends the remaining inputs, longest first so that each batch holds similar lengths, as rows of ``input_index``,
the absolute audio path, ``offset`` and the slice ``duration``; it writes each result to OUT.jsonl (the same journal
and line format as the other runners, rebuilt from its own copy of the input's fields) as ``iter_batches`` hands
it over, and finally rewrites OUT.jsonl in input order. Ray Data restarts an actor that dies and retries its
batch (its defaults for actor pools: ``max_restarts=-1``, ``max_task_retries=-1``); a result that arrives twice is
written once (the driver keeps the ``input_index`` values it wrote). The dataset holds paths, not audio: each
actor reads only the audio of its own batches.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .corpus import (
    EXIT_BAD_INPUT,
    EXIT_SETUP,
    INDEX,
    Entry,
    Journal,
    clear,
    entry,
    finalize,
    output_line,
    previous_results,
    read_entries,
    resume_note,
    summary,
    transcribe_entries,
    transcribe_options,
)

CPU_ROWS, GPU_ROWS = 8, 64  # rows per Ray batch without --batch-size: one decoding batch (nemo_lite.runtime's)


def _plain(value: Any) -> Any:
    """A value from a Ray batch as plain Python: numpy scalars and arrays unwrapped, NaN (Arrow's null) -> None."""
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype == object else _plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _rows(batch: dict[str, Any]) -> list[dict]:
    """A columnar batch (dict of arrays or lists) -> one dict per row, plain values."""
    names = list(batch)
    n = len(batch[names[0]]) if names else 0
    return [{name: _plain(batch[name][k]) for name in names} for k in range(n)]


class Transcriber:
    """Ray Data callable class: a batch of manifest rows -> the rows with the transcription fields (module
    docstring). ``model``: hub id or checkpoint directory; ``model_kwargs``: ``from_pretrained`` arguments
    (``device`` None: the actor's default, its GPU when Ray gave it one); the rest as ``nemo-lite transcribe``'s
    flags; ``threads``: torch threads in the actor (None: torch's default)."""

    def __init__(self, model: str, model_kwargs: dict | None = None, batch_size: int | None = None,
                 max_new_tokens: int | None = None, max_chunk_seconds: float | None = None,
                 segmentation: str | None = None, timestamps: bool = False, threads: int | None = None) -> None:
        import torch

        from .auto import from_pretrained
        from .runtime import default_device

        if threads:
            torch.set_num_threads(threads)
        kwargs = dict(model_kwargs or {})
        kwargs["device"] = kwargs.get("device") or default_device()
        self.model = from_pretrained(model, **kwargs)
        self.opts = transcribe_options(self.model, batch_size, max_new_tokens, max_chunk_seconds, segmentation)
        self.timestamps = timestamps

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = _rows(batch)
        entries = [entry(k, row, str(row["audio_filepath"])) for k, row in enumerate(rows)]  # index: the position
        out: list[dict] = [{} for _ in rows]

        def write(done: list[tuple[Entry, dict]]) -> None:
            for e, line in done:
                out[e.index] = line

        transcribe_entries(self.model, entries, self.opts, self.timestamps, write)
        names = dict.fromkeys([name for line in out for name in line] + ["error"])  # every row has every column
        return {name: [line.get(name) for line in out] for name in names}


def _driver_row(e: Entry) -> dict:
    """What a Ray row carries for an input of the command line's job: identity, absolute path and slice."""
    return {INDEX: e.index, "audio_filepath": e.path, "offset": e.offset, "duration": e.length}


def _line(e: Entry, row: dict, timestamps: bool) -> dict:
    """The output line of ``e`` from its Ray result row (the same :func:`~nemo_lite.corpus.output_line`)."""
    from .transcription import Segment, Transcript

    if row.get("error") is not None:
        return output_line(e.fields, error=row["error"])
    segments = [Segment(**s) for s in row.get("segments") or []]
    return output_line(e.fields, Transcript(row["pred_text"], segments, row["duration"]), timestamps=timestamps)


def cluster_address(given: str | None) -> str:
    """Where the driver runs: ``--ray-address`` (``auto``: the cluster ``ray start`` began on this machine), else
    ``RAY_ADDRESS``, else a new local cluster. Ray's own default (None) would join whatever cluster ``ray start``
    last recorded in its temp folder, and wait for one that has since been stopped without ``ray stop``."""
    return given or os.environ.get("RAY_ADDRESS") or "local"


def run_ray(args: argparse.Namespace, model_kwargs: dict) -> int:
    """``nemo-lite transcribe ... --ray --output-manifest OUT``: the driver (module docstring); the exit code."""
    try:
        import ray
        import ray.data
    except ImportError:
        print("nemo-lite: --ray needs Ray Data: pip install 'nemo-lite[ray]'", file=sys.stderr)
        return EXIT_SETUP
    out = Path(args.output_manifest)
    entries, errors = read_entries(args.inputs)
    for msg in errors:
        print(f"nemo-lite: {msg}", file=sys.stderr)
    if not entries:
        print("nemo-lite: nothing to transcribe", file=sys.stderr)
        return EXIT_BAD_INPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.overwrite:
        clear(out)
    previous = previous_results(out, entries)
    if (note := resume_note(out, entries, previous)) is not None:
        print(note, file=sys.stderr)
    finished = {i for i, line in previous.items() if "error" not in line}
    todo = sorted((e for e in entries if e.index not in finished), key=lambda e: (-e.duration, e.index))
    ran, seconds, t0 = 0, 0.0, time.perf_counter()  # wall time: cluster start and model loads included
    if todo:
        ray.init(address=cluster_address(args.ray_address), include_dashboard=False)
        try:
            ran, seconds = _stream(ray, todo, entries, args, model_kwargs, Journal(out))
        except Exception as err:  # Ray wraps a worker's error (e.g. a model it cannot load) in its own types
            last = [line for line in str(err).splitlines() if line.strip()][-1:] or [type(err).__name__]
            print(f"nemo-lite: the Ray job stopped: {last[0].strip()}\nnemo-lite: {out} keeps the finished inputs; "
                  "run the command again to resume", file=sys.stderr)
            return EXIT_SETUP
        finally:
            ray.shutdown()
    lines = previous_results(out, entries)
    if len(lines) == len(entries):
        finalize(out, entries, lines)
    text, code = summary(out, lines, entries, ran, seconds, time.perf_counter() - t0)
    print(text, file=sys.stderr)
    return EXIT_BAD_INPUT if errors else code


def _stream(ray: Any, todo: list[Entry], entries: list[Entry], args: argparse.Namespace, model_kwargs: dict,
            journal: Journal) -> tuple[int, float]:
    """Run the dataset and journal each result batch as it arrives, each input once; ``(inputs, seconds)``."""
    device = model_kwargs.get("device")
    gpus = str(device).startswith("cuda") if device else ray.cluster_resources().get("GPU", 0) >= 1
    threads = getattr(args, "threads", None)  # the CLI's --threads, where it has one
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = not args.quiet
    ds = ray.data.from_items([_driver_row(e) for e in todo]).map_batches(
        Transcriber, batch_size=args.batch_size or (GPU_ROWS if gpus else CPU_ROWS),
        compute=ray.data.ActorPoolStrategy(size=args.workers), num_gpus=1 if gpus else 0,
        num_cpus=threads or 1, fn_constructor_kwargs=dict(
            model=args.model, model_kwargs=model_kwargs, batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens, max_chunk_seconds=args.max_chunk_seconds,
            segmentation=args.segmentation, timestamps=args.timestamps, threads=threads or 1))
    written: set[int] = set()
    seconds, twice = 0.0, 0
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            lines = []
            for row in _rows(batch):
                i = int(row[INDEX])
                if i in written:  # a retried batch delivered it again
                    twice += 1
                    continue
                written.add(i)
                lines.append(_line(entries[i], row, args.timestamps))
                seconds += (row.get("duration") or 0.0) if row.get("error") is None else 0.0
            journal.write(lines)
    finally:
        journal.close()
    if twice:
        print(f"nemo-lite: {twice} result(s) delivered again by retried batches, written once", file=sys.stderr)
    return len(written), seconds


__all__ = ["Transcriber", "run_ray"]
