"""The ``nemo-lite`` command: ``transcribe`` files, folders and NeMo manifests; ``chat`` with the LLM (adapter off);
``train`` from a config (:mod:`nemo_lite.training`); ``eval`` (:mod:`nemo_lite.evaluate`); ``serve`` an
OpenAI-compatible HTTP API (:mod:`nemo_lite.serve`, the ``[serve]`` extra).

``nemo-lite transcribe`` takes audio files, directories (scanned recursively for :data:`AUDIO_EXTENSIONS`) and
NeMo-style manifests (``.json``/``.jsonl``, one JSON object a line with ``audio_filepath``; relative paths resolve
against the manifest's folder; ``duration`` only sizes the progress bar, ``offset`` is not supported). Files are
processed in groups of bounded total duration so a large folder never sits in memory at once; a file longer than
one window is never held whole (it is scanned, then decoded window by window, see :mod:`nemo_lite.longform`).
A bad file is reported by name on stderr and the rest are still transcribed; the exit code is then 1. A model that
cannot be loaded prints the loader's message (which says how to use a local checkpoint) and exits 2, without a
traceback.

Output: with ``--output-dir``, one file per input named after its stem (``.txt``, ``.json`` with text, duration and
segments, ``.srt`` or ``.vtt``); otherwise to stdout (json: one JSON object a line, with ``audio_filepath``).
Progress: a tqdm bar in audio seconds on stderr, then one line with total audio, wall time and RTFx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .audio import AUDIO_EXTENSIONS, probe_duration

if TYPE_CHECKING:
    from .speechlm import SpeechLM
    from .transcription import Transcript

DEFAULT_MODEL = "nvidia/canary-qwen-2.5b"
GROUP_SECONDS = 1800.0  # audio per group of files checked together: at most 30 min = 115 MB of float32 at 16 kHz
# held (files longer than one window hold none)
GROUP_FILES = 256  # files per group at most
MANIFEST_SUFFIXES = (".json", ".jsonl")
FORMATS = ("txt", "json", "srt", "vtt")
EXIT_OK, EXIT_BAD_INPUT, EXIT_SETUP = 0, 1, 2


@dataclass
class Job:
    path: Path  # the audio file
    duration: float  # seconds, from the manifest or the file header (0 when unknown)
    out_stem: str  # output file name without suffix


# ---------------------------------------------------------------------- inputs
def read_manifest(path: Path) -> list[tuple[Path, float | None]]:
    """NeMo manifest entries ``(audio path, duration)``: JSON lines, or one JSON list of objects."""
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
        entries = whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    out = []
    for n, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or "audio_filepath" not in entry:
            raise ValueError(f"{path}: entry {n} has no 'audio_filepath'")
        audio = Path(entry["audio_filepath"]).expanduser()
        out.append((audio if audio.is_absolute() else path.parent / audio, entry.get("duration")))
    return out


def scan_dir(root: Path) -> list[Path]:
    """Audio files under ``root`` (recursive, by extension, hidden files skipped), sorted by path."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def collect_jobs(inputs: list[str], errors: list[str]) -> list[Job]:
    """Expand files, directories and manifests into jobs with unique output stems; problems go to ``errors``."""
    found: list[tuple[Path, float | None]] = []
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_dir():
            files = scan_dir(path)
            if not files:
                errors.append(f"{arg}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this directory")
            found += [(f, None) for f in files]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            try:
                found += read_manifest(path)
            except (ValueError, OSError) as err:
                errors.append(f"{arg}: cannot read manifest ({err})")
        else:
            found.append((path, None))  # missing or bad files are reported when loaded
    jobs, used = [], set()
    for path, duration in found:
        stem, k = path.stem, 1
        while stem in used:  # a/x.wav and b/x.wav: x, x_2
            k += 1
            stem = f"{path.stem}_{k}"
        used.add(stem)
        seconds = float(duration) if duration is not None else (probe_duration(path) or 0.0)
        jobs.append(Job(path, seconds, stem))
    return jobs


def groups(jobs: list[Job]) -> Iterator[list[Job]]:
    """Consecutive jobs up to ``GROUP_SECONDS`` of audio or ``GROUP_FILES`` files (a longer file goes alone)."""
    group: list[Job] = []
    total = 0.0
    for job in jobs:
        if group and (total + job.duration > GROUP_SECONDS or len(group) >= GROUP_FILES):
            yield group
            group, total = [], 0.0
        group.append(job)
        total += job.duration
    if group:
        yield group


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
def load_model(args: argparse.Namespace) -> SpeechLM | None:
    """The model (either design, detected from the checkpoint), or None after printing why it cannot be loaded
    (CheckpointError/ConfigError carry the fix)."""
    from .auto import from_pretrained
    from .config import ConfigError
    from .runtime import default_device
    from .weights import CheckpointError

    try:
        return from_pretrained(args.model, device=args.device or default_device(), dtype=args.dtype,
                               llm_path=args.llm_path, quantize=args.quantize, merge_lora=args.merge_lora or None,
                               encoder_dtype=args.encoder_dtype, compile=args.compile or None)
    except (CheckpointError, ConfigError) as err:  # their messages say what to do
        print(f"nemo-lite: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return None
    except (RuntimeError, ValueError, OSError) as err:  # bad --device/--dtype, unreadable files
        print(f"nemo-lite: cannot load model {args.model!r}: {err}", file=sys.stderr)
        return None


def cmd_transcribe(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .longform import ChunkOptions
    from .transcription import TranscribeOptions, load_all, transcribe_arrays

    errors: list[str] = []
    jobs = collect_jobs(args.inputs, errors)
    for msg in errors:
        print(f"nemo-lite: {msg}", file=sys.stderr)
    if not jobs:
        print("nemo-lite: nothing to transcribe", file=sys.stderr)
        return EXIT_BAD_INPUT
    model = load_model(args)
    if model is None:
        return EXIT_SETUP
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    opts = TranscribeOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, on_error="skip",
                             chunk=ChunkOptions(max_chunk_seconds=args.max_chunk_seconds or model.window_seconds),
                             segmentation=args.segmentation)
    timestamps = args.timestamps or args.format != "txt"  # json/srt/vtt carry segment times: speech segments
    vad = None if opts.segmentation == "fixed" else opts.vad
    bad, done, audio_seconds, t0 = len(errors), 0, 0.0, time.perf_counter()
    bar = tqdm(total=round(sum(j.duration for j in jobs), 2), unit="s", desc="transcribing", file=sys.stderr,
               disable=args.quiet, bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]")
    for group in groups(jobs):
        loaded, failures = load_all([str(j.path) for j in group], opts.sample_rate, opts.chunk, vad)
        for i, msg in failures:
            bar.write(f"nemo-lite: skipped {msg}", file=sys.stderr)
            bar.update(group[i].duration)
        bad += len(failures)
        results = transcribe_arrays(model, loaded, opts, progress=lambda s: bar.update(round(s, 3)),
                                    timestamps=timestamps)
        for job, transcript in zip(group, results, strict=True):
            if transcript is not None:
                audio_seconds += transcript.duration
                done += 1
                emit(job, transcript, args, several=len(jobs) > 1)
    bar.update(max(0.0, bar.total - bar.n))  # header durations can differ from decoded ones by a few samples
    bar.close()
    wall = time.perf_counter() - t0
    print(f"nemo-lite: {done} file(s), {audio_seconds:.1f} s of audio in {wall:.1f} s "
          f"wall time, RTFx {audio_seconds / max(wall, 1e-9):.1f}"
          + (f"; {bad} input(s) failed" if bad else ""), file=sys.stderr)
    return EXIT_BAD_INPUT if bad else EXIT_OK


def cmd_chat(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if args.transcript:
        path = Path(args.transcript)
        try:
            text = sys.stdin.read() if args.transcript == "-" else path.read_text(encoding="utf-8")
        except OSError as err:
            print(f"nemo-lite: cannot read transcript {args.transcript}: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
        if path.suffix.lower() == ".json":  # our own --format json output
            try:
                text = json.loads(text)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                pass  # not ours: use the file as plain text
        prompt = f"{prompt}\n\n{text.strip()}"
    model = load_model(args)
    if model is None:
        return EXIT_SETUP
    print(model.chat(prompt, max_new_tokens=args.max_new_tokens or 512))
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .serve.server import run
    except ImportError as err:
        print(f"nemo-lite: serve needs the [serve] extra ({err}); pip install 'nemo-lite[serve]'", file=sys.stderr)
        return EXIT_SETUP
    return run(args)


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


def cmd_info(args: argparse.Namespace) -> int:
    """What this machine offers: the CPU's instruction set (what the quantized and bf16 kernels can use), torch and
    the accelerators it sees."""
    import torch

    from .cpu import cpu_info, describe

    info = cpu_info()
    print(describe())
    print(f"torch {torch.__version__}; CUDA: {torch.cuda.is_available()}; threads: {torch.get_num_threads()}")
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
    p.add_argument("--threads", type=int, help="torch threads of the model worker (default: torch's)")
    p.add_argument("--max-chunk-seconds", type=float,
                   help="longest audio decoded as one window (default: the model's, 40 s for Canary-Qwen); longer "
                        "uploads are cut into speech segments")
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
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_transcribe)
    c = sub.add_parser("chat", help="ask the LLM (LoRA adapter off) a question, e.g. about a transcript")
    c.add_argument("prompt")
    c.add_argument("--transcript", help="text file (or our .json output, or - for stdin) appended to the prompt")
    _model_args(c)
    c.set_defaults(func=cmd_chat)
    i = sub.add_parser("info", help="what this machine offers: CPU instruction set, torch, accelerators")
    i.set_defaults(func=cmd_info)
    from .evaluate import add_eval_parser
    from .training.command import add_train_parser
    from .training.publish import add_export_parser

    add_train_parser(sub)  # nemo-lite train --config CONFIG (stage 1/2, both architectures; torchrun-ready)
    add_export_parser(sub)  # nemo-lite export MODEL OUT --merge-lora (the Qwen2-VL adapter's published layout)
    add_eval_parser(sub)  # nemo-lite eval MANIFEST --model M (WER/CER after Whisper normalisation, RTFx)
    add_serve_parser(sub)  # nemo-lite serve --model M (FastAPI/uvicorn, imported only when it runs)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", None) is not None and args.batch_size < 1:
        print("nemo-lite: --batch-size must be >= 1", file=sys.stderr)
        return EXIT_SETUP
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("nemo-lite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
