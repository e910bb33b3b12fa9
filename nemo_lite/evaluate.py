"""Evaluation: WER and CER over a manifest, RTFx, and a per-utterance JSONL with a word diff.

Works for any model with :meth:`~nemo_lite.speechlm.SpeechLM.transcribe` (CanaryQwen, WhisperLLM; a list of paths ->
list[str], with ``on_error="skip"``, ``progress`` and ``allow_truncated``). Scoring follows the
Open ASR Leaderboard: references and hypotheses both go through Whisper's ``EnglishTextNormalizer``
(``transformers.models.whisper.english_normalizer``: lower case, punctuation and filler words removed, numbers
and contractions standardised), then jiwer aligns them. Its ``english_spelling_mapping`` argument (British ->
American spellings) is ``{}`` by default: that table (Whisper's ``english.json``, the hub's ``normalizer.json``)
is not shipped with transformers, so without it "colour" and "color" count as different words. Pass its path
(``--spelling-mapping``) to score exactly as the leaderboard does.

Corpus figures: WER = (S + D + I) / reference words and CER = character edits / reference characters (spaces
included, as jiwer counts them), both summed over utterances, not averaged per utterance. An utterance whose
normalised reference is empty counts its hypothesis words/characters as insertions. RTFx = audio seconds /
transcription wall seconds (model loading excluded).

Bad inputs: ``nemo-lite eval`` checks every manifest entry's audio before the model loads (as ``transcribe``
does) and names each bad one in one line; the rest are transcribed and scored, ``EvalResult.failed`` counts the
left-out utterances, and the exit code is 1. :func:`evaluate` itself leaves out utterances ``transcribe`` could
not read (``on_error="skip"``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .terminal import EXIT_BAD_INPUT, EXIT_OK, Bar, SetupError, add_run_args, model_for_inputs, say

if TYPE_CHECKING:
    from .training.data import Utterance


@dataclass
class Counts:
    errors: int  # substitutions + deletions + insertions
    total: int  # reference units (words or characters)

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.errors + other.errors, self.total + other.total)

    @property
    def rate(self) -> float:
        return self.errors / self.total if self.total else float(self.errors > 0)


@dataclass
class EvalResult:
    wer: float  # corpus word error rate (0.1 = 10 %)
    cer: float  # corpus character error rate
    utterances: int  # scored utterances
    reference_words: int  # normalised reference words in total
    audio_seconds: float  # audio transcribed
    wall_seconds: float  # transcription time
    rtfx: float  # audio_seconds / wall_seconds
    failed: int = 0  # utterances left out: their audio could not be read (named on stderr by the command)


def normalizer(spelling_mapping: str | Path | dict | None = None):
    """Whisper's English normaliser; ``spelling_mapping``: a dict, or the path of Whisper's ``english.json``."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    if isinstance(spelling_mapping, (str, Path)):
        spelling_mapping = json.loads(Path(spelling_mapping).read_text())
    return EnglishTextNormalizer(spelling_mapping or {})


def require_jiwer():
    """jiwer (the WER/CER alignment), or an ImportError saying how to install it: it is the ``eval`` extra."""
    try:
        import jiwer
    except ImportError as err:
        raise ImportError("nemo-lite eval needs jiwer for WER/CER: pip install 'nemo-lite[eval]'") from err
    return jiwer


def word_counts(ref: str, hyp: str) -> Counts:
    """Word edits between two (normalised) strings."""
    jiwer = require_jiwer()

    if not ref.split():
        return Counts(len(hyp.split()), 0)
    out = jiwer.process_words(ref, hyp if hyp.split() else "")
    return Counts(out.substitutions + out.deletions + out.insertions, len(ref.split()))


def char_counts(ref: str, hyp: str) -> Counts:
    """Character edits (spaces included) between two (normalised) strings."""
    jiwer = require_jiwer()

    if not ref:
        return Counts(len(hyp), 0)
    out = jiwer.process_characters(ref, hyp)
    return Counts(out.substitutions + out.deletions + out.insertions, len(ref))


def word_diff(ref: str, hyp: str) -> str:
    """A readable alignment: equal words plain, ``[-deleted-]``, ``{+inserted+}``, ``[-ref-]{+hyp+}`` for a
    substitution (git's --word-diff style)."""
    jiwer = require_jiwer()

    r, h = ref.split(), hyp.split()
    if not r:
        return " ".join(f"{{+{w}+}}" for w in h)
    if not h:
        return " ".join(f"[-{w}-]" for w in r)
    parts = []
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        old, new = r[chunk.ref_start_idx:chunk.ref_end_idx], h[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if chunk.type == "equal":
            parts += old
        elif chunk.type == "delete":
            parts += [f"[-{w}-]" for w in old]
        elif chunk.type == "insert":
            parts += [f"{{+{w}+}}" for w in new]
        else:
            parts += [f"[-{a}-]{{+{b}+}}" for a, b in zip(old, new, strict=True)]
    return " ".join(parts)


def score(references: list[str], hypotheses: list[str], normalize=None) -> tuple[Counts, Counts, list[dict]]:
    """Corpus word and character counts + one row per utterance (normalised texts, its WER and diff)."""
    norm = normalize or normalizer()
    words, chars, rows = Counts(0, 0), Counts(0, 0), []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = norm(ref), norm(hyp or "")
        w, c = word_counts(r, h), char_counts(r, h)
        words, chars = words + w, chars + c
        rows.append({"reference": ref, "hypothesis": hyp, "reference_normalized": r, "hypothesis_normalized": h,
                     "word_errors": w.errors, "reference_words": w.total, "wer": w.rate, "cer": c.rate,
                     "diff": word_diff(r, h)})
    return words, chars, rows


def evaluate(model, manifest: str | Path | list[Utterance], output: str | Path | None = None,
             batch_size: int | None = None, spelling_mapping: str | Path | dict | None = None,
             max_new_tokens: int | None = None, progress=None, allow_truncated: bool = False) -> EvalResult:
    """Transcribe every manifest entry with ``model.transcribe`` and score it; ``output``: per-utterance JSONL.
    ``manifest``: a JSONL path or its entries (:func:`nemo_lite.training.data.read_manifest`). ``max_new_tokens``:
    per clip/window (default: the model's own budget). ``progress``: called with audio seconds as they are done.
    Entries whose audio cannot be read are left out of the scores and counted in ``failed``."""
    from .training.data import read_manifest

    items = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
    t0 = time.perf_counter()
    kwargs = {"max_new_tokens": max_new_tokens} if max_new_tokens else {}
    hyps = model.transcribe([str(u.audio_filepath) for u in items], batch_size=batch_size, on_error="skip",
                            progress=progress, allow_truncated=allow_truncated, **kwargs)
    wall = time.perf_counter() - t0
    kept = [(u, h) for u, h in zip(items, hyps, strict=True) if h is not None]
    words, chars, rows = score([u.text for u, _ in kept], [h for _, h in kept], normalizer(spelling_mapping))
    audio = sum(u.duration for u, _ in kept)
    if output is not None:
        with open(output, "w", encoding="utf-8") as f:
            for (u, _), row in zip(kept, rows, strict=True):
                line = {"audio_filepath": str(u.audio_filepath), "duration": u.duration, **row}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    return EvalResult(words.rate, chars.rate, len(kept), words.total, audio, wall, audio / max(wall, 1e-9),
                      len(items) - len(kept))


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
    result = evaluate(model, items, args.output, args.batch_size, args.spelling_mapping, args.max_new_tokens,
                      progress=bar.add, allow_truncated=args.allow_truncated)
    bar.close()
    result.failed += len(errors)
    print(json.dumps(asdict(result), indent=1))
    where = f"; per-utterance results in {args.output}" if args.output else ""
    failed = f"; {result.failed} utterance(s) left out (unreadable audio)" if result.failed else ""
    say(f"WER {100 * result.wer:.2f} %, CER {100 * result.cer:.2f} % over {result.utterances} utterance(s), "
        f"RTFx {result.rtfx:.1f}{where}{failed}")
    return EXIT_BAD_INPUT if result.failed else EXIT_OK


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite eval MANIFEST --model M [--output preds.jsonl]``."""
    p = subparsers.add_parser("eval", help="WER/CER and RTFx of a model on a JSONL manifest (audio_filepath, text)")
    p.add_argument("manifest", help="JSONL manifest: audio_filepath (relative to the manifest), text, duration")
    p.add_argument("--model", required=True, help="Canary-Qwen checkpoint (hub id or dir) or a WhisperLLM directory")
    p.add_argument("--output", help="per-utterance JSONL: reference, hypothesis, normalised texts, WER, word diff")
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
