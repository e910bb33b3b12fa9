"""Evaluation: a model's WER and CER over a manifest, RTFx, a per-utterance JSONL with a word diff, and
(``--html``) the audit page of :mod:`nemo_lite.report`.

Works for any model with :meth:`~nemo_lite.speechlm.SpeechLM.transcribe` (CanaryQwen, WhisperLLM; a list of paths ->
list[str], with ``on_error="skip"``, ``progress`` and ``allow_truncated``). The scores are
:mod:`nemo_lite.scoring`'s (Whisper's English normaliser, then jiwer; corpus WER/CER summed over utterances, and
beside them the Qwen2-VL audio adapter's authors' mean per-utterance WER on lower-cased text); its names are
re-exported here. RTFx = audio seconds / transcription wall seconds (model loading excluded).

Bad inputs: ``nemo-lite eval`` checks every manifest entry's audio before the model loads (as ``transcribe``
does) and names each bad one in one line; the rest are transcribed and scored, ``EvalResult.failed`` counts the
left-out utterances, and the exit code is 1. :func:`evaluate` itself leaves out utterances ``transcribe`` could
not read (``on_error="skip"``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from .report import EMBED_LIMIT_MB, FLAG_WER, ReportOptions, write_report
from .scoring import (  # noqa: F401  (re-exported: the scoring API was first published from this module)
    Counts,
    EvalResult,
    char_counts,
    lowercased_wer,
    mean_lowercased_wer,
    normalizer,
    require_jiwer,
    score,
    word_alignment,
    word_counts,
    word_diff,
)
from .terminal import EXIT_BAD_INPUT, EXIT_OK, Bar, SetupError, add_run_args, model_for_inputs, say

if TYPE_CHECKING:
    from .training.data import Utterance

AUDIO_WORDS = {"embed": "embedded", "link": "linked"}  # the --html line: how the page holds the audio


def evaluate(model, manifest: str | Path | list[Utterance], output: str | Path | None = None,
             batch_size: int | None = None, spelling_mapping: str | Path | dict | None = None,
             max_new_tokens: int | None = None, progress=None, allow_truncated: bool = False) -> EvalResult:
    """Transcribe every manifest entry with ``model.transcribe`` and score it; ``output``: per-utterance JSONL.
    ``manifest``: a JSONL path or its entries (:func:`nemo_lite.training.data.read_manifest`). ``max_new_tokens``:
    per clip/window (default: the model's own budget). ``progress``: called with audio seconds as they are done.
    Entries whose audio cannot be read are left out of the scores and counted in ``failed``."""
    result, rows = evaluate_rows(model, manifest, batch_size, spelling_mapping, max_new_tokens, progress,
                                 allow_truncated)
    if output is not None:
        write_rows(output, rows)
    return result


def evaluate_rows(model, manifest: str | Path | list[Utterance], batch_size: int | None = None,
                  spelling_mapping: str | Path | dict | None = None, max_new_tokens: int | None = None,
                  progress=None, allow_truncated: bool = False) -> tuple[EvalResult, list[dict]]:
    """:func:`evaluate`'s scores and its rows (``audio_filepath``, ``duration`` and :func:`score`'s fields), for
    the JSONL and the HTML report."""
    from .training.data import read_manifest

    items = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    t0 = time.perf_counter()
    kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    hyps = model.transcribe([str(u.audio_filepath) for u in items], batch_size=batch_size, on_error="skip",
                            progress=progress, allow_truncated=allow_truncated, **kwargs)
    wall = time.perf_counter() - t0
    kept = [(u, h) for u, h in zip(items, hyps, strict=True) if h is not None]
    words, chars, scored = score([u.text for u, _ in kept], [h for _, h in kept], normalizer(spelling_mapping))
    rows = [{"audio_filepath": str(u.audio_filepath), "duration": u.duration, **row}
            for (u, _), row in zip(kept, scored, strict=True)]
    audio = sum(u.duration for u, _ in kept)
    result = EvalResult(wer=words.rate, cer=chars.rate, mean_wer_lowercased=mean_lowercased_wer(rows),
                        utterances=len(kept), reference_words=words.total, audio_seconds=audio, wall_seconds=wall,
                        rtfx=audio / max(wall, 1e-9), failed=len(items) - len(kept))
    return result, rows


def write_rows(path: str | Path, rows: list[dict]) -> None:
    """The per-utterance JSONL (``--output``): one row a line, UTF-8 as it is."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def load_model(path: str, device: str | None = None, dtype: str | None = None, llm_path: str | None = None):
    """Either design's checkpoint (:func:`nemo_lite.auto.from_pretrained`): a Canary-Qwen checkpoint (hub layout),
    a WhisperLLM directory or the adapter's published merged checkpoint."""
    from .auto import from_pretrained
    from .runtime import default_device

    return from_pretrained(path, device=device or default_device(), dtype=dtype, llm_path=llm_path)


def cmd_eval(args: argparse.Namespace) -> int:
    """``nemo-lite eval``: inputs checked, then flags, then the model (as ``transcribe``); exit 1 when some
    utterances could not be read."""
    from .training.data import read_manifest

    try:
        require_jiwer()  # before the model loads: say it at once
    except ImportError as err:
        raise SetupError(str(err)) from None
    errors: list[str] = []
    try:
        items = read_manifest(args.manifest, errors, allow_truncated=args.allow_truncated)
    except (ValueError, OSError) as err:
        say(f"cannot read manifest {args.manifest}: {err}")
        return EXIT_BAD_INPUT
    model = model_for_inputs(args, errors, len(items), "evaluate")
    if model is None:
        return EXIT_BAD_INPUT
    bar = Bar(sum(u.duration for u in items), "evaluating", disable=args.quiet)
    result, rows = evaluate_rows(model, items, args.batch_size, args.spelling_mapping, args.max_new_tokens,
                                 progress=bar.add, allow_truncated=args.allow_truncated)
    bar.close()
    result.failed += len(errors)
    if args.output:
        write_rows(args.output, rows)
    print(json.dumps(asdict(result), indent=1))
    where = f"; per-utterance results in {args.output}" if args.output else ""
    failed = f"; {result.failed} utterance(s) left out (unreadable audio)" if result.failed else ""
    say(f"WER {100 * result.wer:.2f} %, CER {100 * result.cer:.2f} % over {result.utterances} utterance(s), "
        f"RTFx {result.rtfx:.1f}{where}{failed}")
    if args.html:
        write_html(args, result, rows, errors)
    return EXIT_BAD_INPUT if result.failed else EXIT_OK


def write_html(args: argparse.Namespace, result: EvalResult, rows: list[dict], errors: list[str]) -> None:
    """``--html``: the audit page (:func:`nemo_lite.report.write_report`), and a line saying where it is."""
    options = ReportOptions(flag_wer=args.flag_wer, audio=args.html_audio, embed_limit_mb=args.html_max_mb,
                            source=f"{args.manifest} · {args.model}")
    info = write_report(args.html, result, rows, options, left_out=errors)
    if info.note:
        say(info.note)
    say(f"audit page {args.html} ({info.size / 1e6:.1f} MB, audio {AUDIO_WORDS[info.audio]}, {info.flagged} of "
        f"{result.utterances} utterance(s) flagged)")


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite eval MANIFEST --model M [--output preds.jsonl] [--html report.html]``."""
    p = subparsers.add_parser("eval", help="WER/CER and RTFx of a model on a JSONL manifest (audio_filepath, text)")
    p.add_argument("manifest", help="JSONL manifest: audio_filepath (relative to the manifest), text, duration")
    p.add_argument("--model", required=True, help="Canary-Qwen checkpoint (hub id or dir) or a WhisperLLM directory")
    p.add_argument("--output", help="per-utterance JSONL: reference, hypothesis, normalised texts, WER (also on the "
                                    "lower-cased raw texts), word diff")
    p.add_argument("--html", help="write a self-contained audit page: corpus WER/CER and a row per utterance with "
                                  "reference, hypothesis, coloured word diff, audio player and a disagreement flag")
    p.add_argument("--flag-wer", type=float, default=FLAG_WER, metavar="RATE",
                   help=f"--html: flag utterances whose WER is at least RATE (default {FLAG_WER}; empty "
                        "references and hypotheses are always flagged)")
    p.add_argument("--html-audio", choices=("embed", "link"), default="embed",
                   help="--html: embed each clip in the page (Ogg Vorbis, 16 kHz mono; default) or link to the "
                        "audio files (relative to the page)")
    p.add_argument("--html-max-mb", type=float, default=EMBED_LIMIT_MB, metavar="MB",
                   help=f"--html: link instead of embedding when the audio would add more than MB to the page "
                        f"(default {EMBED_LIMIT_MB:g})")
    p.add_argument("--batch-size", type=int, help="clips decoded together (default 8 on CPU, 64 on a GPU)")
    p.add_argument("--max-new-tokens", type=int, help="tokens per clip/window (default: from the duration)")
    p.add_argument("--spelling-mapping", help="Whisper's english.json (British -> American) for the normaliser")
    p.add_argument("--llm-path", help="local LLM config + tokenizer dir, when a Canary checkpoint's LLM is offline")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda if available, else cpu)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: float32 on cpu)")
    p.add_argument("--allow-truncated", action="store_true",
                   help="score what is there of a damaged (cut short) file instead of leaving it out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_args(p)
    p.set_defaults(func=cmd_eval)
    return p
