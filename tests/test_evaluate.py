"""WER/CER scoring, the word diff, and the evaluation run (per-utterance JSONL, RTFx) with a stand-in model.
Expected values are counted by hand in each test."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from nemo_lite import evaluate as ev

DATA = Path(__file__).resolve().parent / "data"


def test_word_and_char_counts_by_hand():
    # "the cat sat on the mat" -> "the cat sit on mat": sat->sit (S) and "the" dropped (D): 2 of 6 words.
    w = ev.word_counts("the cat sat on the mat", "the cat sit on mat")
    assert (w.errors, w.total) == (2, 6)
    # Characters (22 in the reference, spaces counted): a->i, then "the " deleted (4): 5 edits.
    c = ev.char_counts("the cat sat on the mat", "the cat sit on mat")
    assert (c.errors, c.total) == (5, 22)
    # An insertion: 3 reference words, one extra word.
    assert ev.word_counts("open the door", "open the red door").errors == 1
    # Empty reference: every hypothesis word is an insertion; empty hypothesis: every word deleted.
    assert (ev.word_counts("", "hello there").errors, ev.word_counts("", "hello there").total) == (2, 0)
    assert ev.word_counts("a b c", "").errors == 3


def test_corpus_rates_sum_errors_over_utterances():
    refs = ["The cat sat on the mat.", "Hello, World!", "open the door"]
    hyps = ["the cat sit on mat", "hello world", "open a door now"]
    words, chars, rows = ev.score(refs, hyps)
    # Errors: 2 + 0 + 2 (the->a, +now) = 4 over 6 + 2 + 3 = 11 reference words (not the mean of per-row WERs).
    assert (words.errors, words.total) == (4, 11)
    assert words.rate == pytest.approx(4 / 11)
    # Normalisation removed case and punctuation: the second row is perfect.
    assert rows[1]["reference_normalized"] == "hello world" and rows[1]["wer"] == 0.0
    # Characters: 5 (row 1) + 0 + ("the"->"a": 3 edits, " now": 4 insertions) 7 = 12 over 22 + 11 + 13.
    assert (chars.errors, chars.total) == (12, 46)


def test_normaliser_spelling_mapping():
    """Without the British->American table the spellings differ; with one passed they agree."""
    assert ev.normalizer()("colour") == "colour"
    assert ev.normalizer({"colour": "color"})("Colour!") == "color"


def test_word_diff_marks_edits():
    assert ev.word_diff("the cat sat on the mat", "the cat sit on mat") in (
        "the cat [-sat-]{+sit+} on [-the-] mat", "the cat [-sat-]{+sit+} on [-the-]{+mat+} [-mat-]")
    assert ev.word_diff("open the door", "open the red door") == "open the {+red+} door"
    assert ev.word_diff("", "hi") == "{+hi+}"
    assert ev.word_diff("a b", "") == "[-a-] [-b-]"


class EchoModel:
    """Stand-in ASR model: answers from a fixed table keyed by file name."""

    def __init__(self, answers: dict[str, str]) -> None:
        self.answers = answers

    def transcribe(self, paths, batch_size=8, **kwargs):  # on_error, progress, allow_truncated: unused here
        return [self.answers[Path(p).name] for p in paths]


def test_evaluate_writes_per_utterance_jsonl(tmp_path):
    for name in ("speech_short.wav", "speech_medium.wav"):
        shutil.copy(DATA / name, tmp_path / name)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "speech_short.wav", "text": "Hello world."}) + "\n"
                        + json.dumps({"audio_filepath": "speech_medium.wav", "text": "the quick brown fox",
                                      "duration": 4.0}) + "\n")
    model = EchoModel({"speech_short.wav": "hello world", "speech_medium.wav": "the quick fox jumps"})
    out = tmp_path / "pred.jsonl"
    result = ev.evaluate(model, manifest, out)
    # Row 2: "brown" deleted, "jumps" inserted (or brown->fox, fox->jumps): 2 errors; 6 reference words in all.
    assert result.utterances == 2 and result.reference_words == 6
    assert result.wer == pytest.approx(2 / 6)
    assert result.rtfx > 0 and result.audio_seconds > 4.0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["hypothesis"] for r in rows] == ["hello world", "the quick fox jumps"]
    assert rows[0]["diff"] == "hello world" and rows[1]["word_errors"] == 2
    assert Path(rows[0]["audio_filepath"]) == tmp_path / "speech_short.wav"  # relative path resolved


def test_eval_parser_registers_command():
    parser = argparse.ArgumentParser()
    ev.add_eval_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["eval", "m.jsonl", "--model", "ckpt", "--output", "p.jsonl"])
    assert args.func is ev.cmd_eval and args.manifest == "m.jsonl" and args.batch_size is None  # device default
