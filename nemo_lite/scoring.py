"""Scoring: WER and CER of transcripts against references, the word alignment behind the diffs, and the result
of an evaluation run (:class:`EvalResult`). Pure text functions: :mod:`nemo_lite.evaluate` runs a model over a
manifest and scores it with them; :mod:`nemo_lite.report` draws the HTML audit page from the same rows.

Scoring follows the Open ASR Leaderboard: references and hypotheses both go through Whisper's
``EnglishTextNormalizer`` (``transformers.models.whisper.english_normalizer``: lower case, punctuation and filler
words removed, numbers and contractions standardised), then jiwer aligns them. Its ``english_spelling_mapping``
argument (British -> American spellings) is ``{}`` by default: that table (Whisper's ``english.json``, the hub's
``normalizer.json``) is not shipped with transformers, so without it "colour" and "color" count as different
words. Pass its path (``--spelling-mapping``) to score exactly as the leaderboard does.

Corpus figures: WER = (S + D + I) / reference words and CER = character edits / reference characters (spaces
included, as jiwer counts them), both summed over utterances, not averaged per utterance. An utterance whose
normalised reference is empty counts its hypothesis words/characters as insertions.

The Qwen2-VL audio adapter's authors reported a different figure: the mean of per-utterance WERs on text that is
only lower-cased (jiwer splits at spaces, so punctuation stays part of the words). Each row keeps that WER as
``wer_lowercased`` and :class:`EvalResult` its mean, so their numbers and ours can be put side by side; the mean
weighs a two-word utterance like a fifty-word one and counts "world!" against "world" as an error. A reference
without words has no such WER (None) and is left out of that mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


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
    mean_wer_lowercased: float | None  # the adapter authors' figure: mean per-utterance WER on lower-cased
    # raw text (:func:`mean_lowercased_wer`); None when no reference has words
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
    return _edits(word_alignment(ref, hyp), ref)


def _edits(ops: list[tuple[str, str | None, str | None]], ref: str) -> Counts:
    """Word edits of an alignment: one per substituted, deleted or inserted word, over the reference's words."""
    return Counts(sum(op != "equal" for op, _, _ in ops), len(ref.split()))


def char_counts(ref: str, hyp: str) -> Counts:
    """Character edits (spaces included) between two (normalised) strings."""
    jiwer = require_jiwer()

    if not ref:
        return Counts(len(hyp), 0)
    out = jiwer.process_characters(ref, hyp)
    return Counts(out.substitutions + out.deletions + out.insertions, len(ref))


def word_alignment(ref: str, hyp: str) -> list[tuple[str, str | None, str | None]]:
    """jiwer's word alignment of two (normalised) strings, one ``(op, ref_word, hyp_word)`` per position: op is
    ``"equal"``, ``"substitute"``, ``"delete"`` (no hyp word) or ``"insert"`` (no ref word)."""
    jiwer = require_jiwer()

    r, h = ref.split(), hyp.split()
    if not r or not h:
        return [("delete", w, None) for w in r] + [("insert", None, w) for w in h]
    ops: list[tuple[str, str | None, str | None]] = []
    for chunk in jiwer.process_words(ref, hyp).alignments[0]:
        old, new = r[chunk.ref_start_idx:chunk.ref_end_idx], h[chunk.hyp_start_idx:chunk.hyp_end_idx]
        if chunk.type == "delete":
            ops += [("delete", w, None) for w in old]
        elif chunk.type == "insert":
            ops += [("insert", None, w) for w in new]
        else:  # "equal" or "substitute": the same number of words on both sides
            ops += [(chunk.type, a, b) for a, b in zip(old, new, strict=True)]
    return ops


def word_diff(ref: str, hyp: str) -> str:
    """A readable alignment: equal words plain, ``[-deleted-]``, ``{+inserted+}``, ``[-ref-]{+hyp+}`` for a
    substitution (git's --word-diff style)."""
    return _diff_text(word_alignment(ref, hyp))


def _diff_text(ops: list[tuple[str, str | None, str | None]]) -> str:
    marks = {"equal": "{a}", "delete": "[-{a}-]", "insert": "{{+{b}+}}", "substitute": "[-{a}-]{{+{b}+}}"}
    return " ".join(marks[op].format(a=a, b=b) for op, a, b in ops)


def lowercased_wer(ref: str, hyp: str) -> float | None:
    """One utterance's WER as the adapter's authors computed it: jiwer on the raw texts lower-cased, no other
    normalisation. None for a reference without words: jiwer before 4.0 refused one, and jiwer 4 counts its
    hypothesis words over a denominator of 1 (400 % for four words), which would swamp the mean."""
    if not ref.split():
        return None
    return float(require_jiwer().wer(ref.lower(), hyp.lower()))


def mean_lowercased_wer(rows: list[dict]) -> float | None:
    """The authors' reported figure: the mean of the rows' ``wer_lowercased`` (rows without one left out); None
    when no row has one."""
    rates = [r["wer_lowercased"] for r in rows if r["wer_lowercased"] is not None]
    return sum(rates) / len(rates) if rates else None


def score(references: list[str], hypotheses: list[str], normalize=None) -> tuple[Counts, Counts, list[dict]]:
    """Corpus word and character counts + one row per utterance (normalised texts, its WER and diff, and its WER
    on the lower-cased raw texts)."""
    norm = normalize or normalizer()
    words, chars, rows = Counts(0, 0), Counts(0, 0), []
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = norm(ref), norm(hyp or "")
        ops = word_alignment(r, h)  # one alignment for the counts and the diff
        w, c = _edits(ops, r), char_counts(r, h)
        words, chars = words + w, chars + c
        rows.append({"reference": ref, "hypothesis": hyp, "reference_normalized": r, "hypothesis_normalized": h,
                     "word_errors": w.errors, "reference_words": w.total, "wer": w.rate, "cer": c.rate,
                     "wer_lowercased": lowercased_wer(ref, hyp or ""), "diff": _diff_text(ops)})
    return words, chars, rows
