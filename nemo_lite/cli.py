"""The ``nemo-lite`` command: ``transcribe`` files, folders and NeMo manifests; ``chat`` with the LLM (adapter off);
``train`` from a config (:mod:`nemo_lite.training`); ``eval`` (:mod:`nemo_lite.evaluate`); ``serve`` an
OpenAI-compatible HTTP API (:mod:`nemo_lite.serve`, the ``[serve]`` extra); ``manifest`` (:mod:`nemo_lite.manifest`:
JSONL manifests from the Qwen2-VL adapter's JSON or a Hugging Face ``datasets`` split); ``quantize`` a checkpoint
once into a directory that loads in about a second (:mod:`nemo_lite.quantize`). Every model command takes either
design's checkpoint (Canary-Qwen, or the adapter's, detected from its files: :mod:`nemo_lite.auto`).

``nemo-lite transcribe`` takes audio files, directories (scanned recursively for :data:`AUDIO_EXTENSIONS`) and
NeMo-style manifests (``.json``/``.jsonl``, one JSON object a line with ``audio_filepath``; relative paths resolve
against the manifest's folder; ``duration`` is not needed, the file header is read; ``offset`` is not supported).
Files are processed in groups of bounded total duration so a large folder never sits in memory at once; a file
longer than one window is never held whole (it is scanned, then decoded window by window, see
:mod:`nemo_lite.longform`).

Order of checks: every input is checked first (files exist, are not empty, have a readable audio header, and a
PCM WAV's data chunk fits in the file; manifests parse), each problem reported at once in one line, all without
importing torch; then the flags (threads, device); the model loads only when there is something to transcribe.
A file found damaged or undecodable while it is decoded is reported by name too; the rest are still transcribed.
Exit codes, one-line errors, ``--debug``, ``--threads`` and the progress bar: :mod:`nemo_lite.terminal` (0 ok,
1 some inputs failed, 2 set-up error such as a bad device or an unloadable model, 3 a bug).

Argument parsing imports nothing heavy (no torch, transformers or numpy), so ``nemo-lite --help`` is fast: the
commands import what they need when they run.

Output: with ``--output-dir``, one file per input named after its stem (``.txt``, ``.json`` with text, duration and
segments, ``.srt`` or ``.vtt``); otherwise to stdout (json: one JSON object a line, with ``audio_filepath``).
Progress: a bar in audio seconds on stderr (:class:`nemo_lite.terminal.Bar`), then one line with total audio, wall
time and RTFx. ``chat`` prints its answer token by token as it is decoded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .terminal import (
    EXIT_BAD_INPUT,
    EXIT_OK,
    EXIT_SETUP,
    Bar,
    SetupError,
    add_run_args,
    load_command_model,
    model_for_inputs,
    prepare,
    run,
    say,
)

if TYPE_CHECKING:
    from .speechlm import SpeechLM
    from .transcription import Transcript

DEFAULT_MODEL = "nvidia/canary-qwen-2.5b"
FORMATS = ("txt", "json", "srt", "vtt")
__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_SETUP", "build_parser", "main"]
load_model = load_command_model  # the name commands used before nemo_lite.terminal (raises SetupError, never None)


@dataclass
class Job:
    path: Path  # the audio file
    duration: float  # seconds, from the file header
    out_stem: str  # output file name without suffix
    offset: float | None = None  # a manifest slice: its start (seconds); None: the whole file
    length: float | None = None  # a manifest slice: its duration (seconds; None: to the end)

    @property
    def audio(self):
        """What is decoded: the file's path, or the slice of it (a FileAudio)."""
        if self.offset is None:
            return str(self.path)
        from .audio import FileAudio

        return FileAudio.slice(self.path, self.offset, self.length)


# ---------------------------------------------------------------------- inputs
def read_manifest(path: Path) -> list[tuple[Path, float | None, float | None]]:
    """NeMo manifest entries ``(audio path, duration, offset)`` (:func:`nemo_lite.corpus.read_manifest_lines`);
    ``ValueError`` (or ``OSError``) naming the problem when it cannot be read."""
    from .corpus import read_manifest_lines

    out = []
    for n, (fields, audio) in enumerate(read_manifest_lines(path), 1):
        try:
            duration, offset = [None if fields.get(k) is None else float(fields[k]) for k in ("duration", "offset")]
        except (TypeError, ValueError):
            raise ValueError(f"entry {n}: 'duration'/'offset' must be numbers of seconds") from None
        out.append((Path(audio), duration, offset))
    return out


def scan_dir(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, by extension, hidden files skipped), sorted by path."""
    from .audio import AUDIO_EXTENSIONS

    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def collect_jobs(inputs: list[str], errors: list[str], allow_truncated: bool = False) -> list[Job]:
    """Expand files, directories and manifests into jobs with unique output stems, each file checked from its
    header (:func:`nemo_lite.audio.probe`); every problem goes to ``errors`` as one line naming the input."""
    from .audio import AUDIO_EXTENSIONS, AudioError, probe
    from .corpus import MANIFEST_SUFFIXES

    found: list[tuple[Path, float | None, float | None]] = []  # (file, duration, offset of a manifest slice)
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_dir():
            files = scan_dir(path)
            if not files:
                errors.append(f"{arg}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this directory")
            found += [(f, None, None) for f in files]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            try:
                found += read_manifest(path)
            except (ValueError, OSError) as err:
                errors.append(f"{arg}: cannot read manifest ({err}); it needs one JSON object a line with "
                              "'audio_filepath'")
        else:
            found.append((path, None, None))
    jobs, used = [], set()
    for path, duration, offset in found:
        try:
            seconds = probe(path, allow_truncated)
        except AudioError as err:
            errors.append(str(err))
            continue
        stem, k = path.stem, 1
        while stem in used:  # a/x.wav and b/x.wav: x, x_2
            k += 1
            stem = f"{path.stem}_{k}"
        used.add(stem)
        if offset is not None:  # a slice: its own length (the file's rest without a duration)
            seconds = duration if duration is not None else max(0.0, (seconds or 0.0) - offset)
        jobs.append(Job(path, seconds, stem, offset, duration if offset is not None else None))
    return jobs


# ---------------------------------------------------------------------- outputs
def render(transcript: Transcript, fmt: str, timestamps: bool) -> str:
    """A transcript in one of :data:`FORMATS` (txt with ``--timestamps``: one ``[start - end] text`` a segment)."""
    if fmt == "json":
        return json.dumps(transcript.to_dict(), ensure_ascii=False, indent=1) + "\n"
    if fmt == "srt":
        return transcript.to_srt()
    if fmt == "vtt":
        return transcript.to_vtt()
    if timestamps:
        return "".join(f"[{s.start:.2f} - {s.end:.2f}] {s.text}\n" for s in transcript.segments)
    return transcript.text + "\n"


def emit(job: Job, transcript: Transcript, args: argparse.Namespace, several: bool) -> None:
    if args.output_dir:
        out = Path(args.output_dir) / f"{job.out_stem}.{args.format}"
        out.write_text(render(transcript, args.format, args.timestamps), encoding="utf-8")
    elif args.format == "json":
        print(json.dumps({"audio_filepath": str(job.path), **transcript.to_dict()}, ensure_ascii=False))
    elif args.format == "txt" and several and not args.timestamps:
        print(f"{job.path}\t{transcript.text}")
    else:
        if several:
            print(f"==> {job.path} <==")
        print(render(transcript, args.format, args.timestamps), end="")
    sys.stdout.flush()


# ---------------------------------------------------------------------- commands
def cmd_transcribe(args: argparse.Namespace) -> int:
    from .corpus import torchrun_env

    if args.output_manifest or args.ray or torchrun_env()[1] > 1:
        return corpus_job(args)
    errors: list[str] = []
    jobs = collect_jobs(args.inputs, errors, args.allow_truncated)
    model = model_for_inputs(args, errors, len(jobs), "transcribe")
    if model is None:
        return EXIT_BAD_INPUT
    if args.output_dir:
        try:
            Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SetupError(f"cannot create --output-dir {args.output_dir}: {err}") from None
    return transcribe_jobs(model, jobs, args, bad=len(errors))


def transcribe_jobs(model: SpeechLM, jobs: list[Job], args: argparse.Namespace, bad: int = 0) -> int:
    """Transcribe checked jobs group by group, writing each result as it is done; the exit code."""
    from .corpus import groups
    from .longform import ChunkOptions
    from .transcription import TranscribeOptions, load_all, transcribe_arrays

    opts = TranscribeOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, on_error="skip",
                             chunk=ChunkOptions(max_chunk_seconds=args.max_chunk_seconds or model.window_seconds),
                             segmentation=args.segmentation, allow_truncated=args.allow_truncated)
    timestamps = args.timestamps or args.format != "txt"  # json/srt/vtt carry segment times: speech segments
    vad = None if opts.segmentation == "fixed" else opts.vad
    done, audio_seconds, t0, position = 0, 0.0, time.perf_counter(), 0.0
    bar = Bar(sum(j.duration for j in jobs), "transcribing", disable=args.quiet)
    for group in groups(jobs):
        loaded, failures = load_all([j.audio for j in group], opts.sample_rate, opts.chunk, vad,
                                    opts.allow_truncated, progress=bar.add)
        for _, msg in failures:
            say(f"skipped {msg}")
        bad += len(failures)
        results = transcribe_arrays(model, loaded, opts, progress=bar.add, timestamps=timestamps)
        for job, transcript in zip(group, results, strict=True):
            if transcript is not None:
                audio_seconds += transcript.duration
                done += 1
                emit(job, transcript, args, several=len(jobs) > 1)
        position += sum(j.duration for j in group)
        bar.reach(position)  # a skipped file's rest; header durations can differ from decoded ones by a sample
    bar.close()
    wall = time.perf_counter() - t0
    say(f"{done} file(s), {audio_seconds:.1f} s of audio in {wall:.1f} s wall time, RTFx "
        f"{audio_seconds / max(wall, 1e-9):.1f}" + (f"; {bad} input(s) failed" if bad else ""))
    return EXIT_BAD_INPUT if bad else EXIT_OK


def model_kwargs(args: argparse.Namespace) -> dict:
    """``from_pretrained`` keyword arguments from the model flags (``device`` None: the machine's default)."""
    return dict(device=args.device, dtype=args.dtype, llm_path=args.llm_path, quantize=args.quantize,
                merge_lora=args.merge_lora or None, encoder_dtype=args.encoder_dtype, compile=args.compile or None)


def corpus_job(args: argparse.Namespace) -> int:
    """``--output-manifest`` (one process, or a torchrun rank) and ``--ray``: the runners of :mod:`nemo_lite.corpus`
    and :mod:`nemo_lite.ray_runner`."""
    from .corpus import run_corpus, torchrun_env

    problem = None
    if not args.output_manifest:
        problem = "torchrun and --ray write an output manifest: add --output-manifest OUT.jsonl"
    elif args.output_dir:
        problem = "--output-manifest and --output-dir: choose one"
    elif args.ray and torchrun_env()[1] > 1:
        problem = "--ray and torchrun: choose one"
    elif args.workers < 1:
        problem = "--workers must be >= 1"
    if problem:
        raise SetupError(problem)
    if args.ray:
        from .ray_runner import run_ray

        return run_ray(args, model_kwargs(args))
    if torchrun_env()[1] == 1:  # one process: threads/device checked here (torchrun ranks pick theirs)
        prepare(args)
    return run_corpus(args, load_model)


def cmd_chat(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if args.transcript:
        path = Path(args.transcript)
        try:
            text = sys.stdin.read() if args.transcript == "-" else path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            say(f"cannot read transcript {args.transcript}: {err}")
            return EXIT_BAD_INPUT
        if path.suffix.lower() == ".json":  # our own --format json output
            try:
                text = json.loads(text)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # not ours: use the file as plain text
        prompt = f"{prompt}\n\n{text.strip()}"
    prepare(args)
    model = load_command_model(args)
    model.chat(prompt, max_new_tokens=args.max_new_tokens or 512, streamer=answer_streamer(model.tokenizer))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.server import run
    except ImportError as err:
        print(f"nemo-lite: serve needs the [serve] extra ({err}); pip install 'nemo-lite[serve]'", file=sys.stderr)
        return EXIT_SETUP
    prepare(args)  # threads, device and dtype checked before anything starts (one line and exit 2 if wrong)
    return run(args)


def answer_streamer(tokenizer):
    """A transformers ``TextStreamer`` that prints the answer to stdout as it is decoded, words at a time, with
    the outer whitespace :meth:`~nemo_lite.speechlm.SpeechLM.decode` strips left out, and a final newline."""
    from transformers import TextStreamer

    class AnswerStreamer(TextStreamer):
        started = False  # something printed yet

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if not self.started:
                text = text.lstrip()
                self.started = bool(text)
            print(text.rstrip() if stream_end else text, end="\n" if stream_end else "", flush=True)

    return AnswerStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


# ---------------------------------------------------------------------- arguments
def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="hub repo id or local checkpoint directory "
                   "(config.json + model.safetensors); default %(default)s")
    p.add_argument("--llm-path", help="local directory with the LLM config + tokenizer (e.g. Qwen3-1.7B), "
                   "when the checkpoint's pretrained_llm cannot be fetched")
    p.add_argument("--device", help="cpu, cuda, cuda:1, mps, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on cpu, bfloat16 elsewhere)")
    p.add_argument("--encoder-dtype", help="the FastConformer's own compute dtype (default: --dtype); "
                   "'--quantize int8 --encoder-dtype bfloat16' is the fastest CPU mode that keeps exact mode's WER")
    p.add_argument("--max-new-tokens", type=int, help="tokens per window/answer (default: from the duration)")
    p.add_argument("--quantize", choices=["int8", "int4", "int8-all"],
                   help="speed mode (CPU): weight-only int8 (or int4) linear layers in the LLM; int8-all: the "
                        "encoder's too")
    p.add_argument("--compile", action="store_true",
                   help="speed mode (CUDA): static KV cache + torch.compile'd decoding steps (CUDA graphs); each new "
                        "batch shape compiles first, so it pays off over many files")
    p.add_argument("--merge-lora", action="store_true",
                   help="speed mode: fold the LoRA adapter into the weights for ASR (unfolded again for LLM mode)")
    add_run_args(p)


def cmd_info(args: argparse.Namespace) -> int:
    """What this machine offers: the CPU's instruction set (what the quantized and bf16 kernels can use), torch and
    the accelerators it sees."""
    import torch

    from .cpu import cpu_info, describe
    from .quant import PACKED_MAX_ROWS
    from .runtime import compute_plan

    info = cpu_info()
    print(describe())
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.is_available()}; threads: {torch.get_num_threads()}; "
          f"OpenMP waits: {os.environ.get('OMP_WAIT_POLICY', 'unset (spinning)')}")
    print(f"chosen for --dtype bf16 on cpu: {compute_plan('bf16', 'cpu', info).describe()}")
    print(f"chosen for --quantize int8/int4: int4, and int8 up to {PACKED_MAX_ROWS} rows, in torch's packed kernels "
          "(activations rounded to bf16, weights widened in registers, fp32 sums); int8 above that: weights "
          "widened a block at a time, fp32 GEMM")
    advice = "bf16 compute is native here" if info.native_bf16() else \
        "no native bf16: keep compute in fp32 (exact) or use --quantize int8 (weight-only, bf16 kernels in registers)"
    print(f"advice: {advice}")
    return EXIT_OK


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite serve``: the model flags of ``transcribe`` plus the server's."""
    p = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server: /v1/audio/transcriptions, "
                              "/v1/chat/completions, a web page at /")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' on /v1/* (default: env NEMO_LITE_API_KEY)")
    p.add_argument("--max-batch-size", type=int, default=8,
                   help="rows decoded together across requests (default %(default)s; 64 or more on a GPU)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a request may wait for a batch to fill (default %(default)s)")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests admitted at once; more get HTTP 429 (default %(default)s)")
    p.add_argument("--max-upload-mb", type=float, default=100.0, help="largest upload (default %(default)s)")
    p.add_argument("--max-audio-seconds", type=float, help="longest audio accepted (default: no limit)")
    p.add_argument("--max-chunk-seconds", type=float,
                   help="longest audio decoded as one window (default: the model's, 40 s for Canary-Qwen); longer "
                        "uploads are cut into speech segments")
    p.add_argument("--model-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the model in a process of its own, so it does not share the GIL with the HTTP side "
                        "(default; --no-model-process: a thread of the server's process)")
    p.set_defaults(func=cmd_serve)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemo-lite", description="Canary-Qwen-2.5B speech recognition without NeMo")
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("transcribe", help="transcribe audio files, directories or NeMo manifests")
    t.add_argument("inputs", nargs="+", metavar="FILE_DIR_OR_MANIFEST")
    _model_args(t)
    t.add_argument("--batch-size", type=int, help="windows decoded together (default 8 on CPU, 64 on a GPU)")
    t.add_argument("--format", choices=FORMATS, default="txt", help="output format (default %(default)s)")
    t.add_argument("--output-dir", help="write one file per input (named after its stem) here, not to stdout")
    t.add_argument("--timestamps", action="store_true", help="txt: one line per segment with start/end seconds")
    t.add_argument("--max-chunk-seconds", type=float,
                   help="longest audio decoded as one window (default: the model's, 40 s for Canary-Qwen); longer "
                        "input is segmented")
    t.add_argument("--segmentation", choices=["vad", "fixed"],
                   help="vad: transcribe only speech, in phrase-length segments (at most 20 s) found by Silero VAD; "
                        "fixed: contiguous windows cut at quiet points. Default: vad for long input and for "
                        "json/srt/vtt or --timestamps, else one pass for clips within the window")
    t.add_argument("--allow-truncated", action="store_true",
                   help="transcribe what is there of a damaged file (cut short: less audio than its header "
                        "promises), with a one-line warning, instead of reporting it as a failed input")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--output-manifest", metavar="OUT.jsonl",
                   help="write one JSON line per input (its manifest fields + pred_text, or error) as inputs finish; "
                        "run again to resume (finished inputs are skipped, failed ones retried); manifests' "
                        "offset/duration slices are honoured; needed under torchrun and with --ray")
    t.add_argument("--overwrite", action="store_true", help="--output-manifest: start afresh instead of resuming")
    t.add_argument("--ray", action="store_true", help="transcribe on a Ray cluster (pip install 'nemo-lite[ray]')")
    t.add_argument("--ray-address", help="Ray cluster to join (HOST:6379, or auto: the one 'ray start' began on "
                   "this machine); default: RAY_ADDRESS, else a new local cluster for this command")
    t.add_argument("--workers", type=int, default=1, help="--ray: model replicas (actors), each with one GPU "
                   "when --device is cuda or the cluster has GPUs (default %(default)s)")
    t.set_defaults(func=cmd_transcribe)
    c = sub.add_parser("chat", help="ask the LLM (LoRA adapter off) a question, e.g. about a transcript")
    c.add_argument("prompt")
    c.add_argument("--transcript", help="text file (or our .json output, or - for stdin) appended to the prompt")
    _model_args(c)
    c.set_defaults(func=cmd_chat)
    i = sub.add_parser("info", help="what this machine offers: CPU instruction set, torch, accelerators")
    i.set_defaults(func=cmd_info)
    from .evaluate import add_eval_parser
    from .manifest import add_manifest_parser
    from .quantize import add_quantize_parser
    from .training.command import add_train_parser
    from .training.publish import add_export_parser

    add_train_parser(sub)  # nemo-lite train --config CONFIG (stage 1/2, both architectures; torchrun-ready)
    add_export_parser(sub)  # nemo-lite export MODEL OUT --merge-lora (the Qwen2-VL adapter's published layout)
    add_eval_parser(sub)  # nemo-lite eval MANIFEST --model M (WER/CER after Whisper normalisation, RTFx)
    add_serve_parser(sub)  # nemo-lite serve --model M (FastAPI/uvicorn, imported only when it runs)
    add_manifest_parser(sub)  # nemo-lite manifest SEED.json | --hf-dataset D --out-dir DIR (JSONL manifests)
    add_quantize_parser(sub)  # nemo-lite quantize MODEL --mode int8|int4 --out DIR (a checkpoint that loads in ~1 s)
    return parser


def main(argv: list[str] | None = None) -> int:
    """``nemo-lite COMMAND ...``: the command's exit code (:mod:`nemo_lite.terminal`)."""
    from .runtime import prefer_passive_waits

    prefer_passive_waits()  # before anything imports torch (its OpenMP reads the policy once, when it loads)
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        say("--batch-size must be >= 1")
        return EXIT_SETUP
    return run(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
