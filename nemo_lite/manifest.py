"""``nemo-lite manifest``: training/evaluation manifests from the Qwen2-VL audio adapter's JSON and from Hugging Face
``datasets`` splits.

Output: NeMo's JSONL manifest, one ``{"audio_filepath", "text", "duration"}`` object a line, exactly what
:func:`nemo_lite.training.data.read_manifest` (``nemo-lite train``, ``nemo-lite eval``) and
:func:`nemo_lite.corpus.read_manifest_lines` (``nemo-lite transcribe``) read. ``audio_filepath`` is relative to
the manifest's folder when the audio lies under it (the folder can then be moved whole), absolute otherwise.
``duration`` is measured by decoding the audio as the model will (:meth:`nemo_lite.audio.FileAudio.pieces`:
16 kHz samples / 16000, streamed, so a long file is never held), not read from a header that mp3/m4a only
estimate; decoding every clip also finds the damaged ones before training does.

Inputs:
- the seed's JSON (kulsoom-abdullah/Qwen2-VL-Audio-Adapter, ``scripts/01_prepare_data.py``): a JSON list (or JSON
  lines) of records ``{"id", "audio", "ground_truth", "conversations"}``, ``audio`` relative to the JSON file's
  folder. ``text`` is ``ground_truth`` (the seed's stage-1 target), or, without it, the conversation's assistant
  turn (its stage-2 target). The conversation's user turn carries the instruction (``<|audio_bos|><|AUDIO|>
  <|audio_eos|>\\nTranscribe this audio.``); nemo_lite's training reads no per-sample instruction, it uses the
  model's (``instruction`` in the training config, default the seed's), so the manifest does not carry it: when
  records ask something else, or their assistant turn differs from ``ground_truth``, one line says how many.
- a ``datasets`` split (``--hf-dataset``: a ``save_to_disk`` directory, a local data folder, or a hub id, streamed
  so ``--limit`` reads only that many rows). The audio column is read undecoded (``Audio(decode=False)``: datasets
  4+ would decode through torchcodec) and its bytes (or its path) decoded by :mod:`nemo_lite.audio`; each clip is
  written at 16 kHz mono as FLAC (or WAV) under ``OUT_DIR/audio/`` and the manifest as ``OUT_DIR/SPLIT.jsonl``.
  ``datasets`` is the ``[datasets]`` extra.

Errors: a record whose audio is missing or cannot be decoded, or that has no transcript, is named in one line;
the others are written (the manifest through a temporary file and a rename), and the exit code is 1
(:mod:`nemo_lite.terminal`). A problem with the command itself (an unreadable JSON file, no ``datasets``, a
column that is not there) is one line and exit code 2. Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .terminal import EXIT_BAD_INPUT, EXIT_OK, SetupError, add_run_args, say

AUDIO_FORMATS = {"flac": ("FLAC", "PCM_16"), "wav": ("WAV", "PCM_16")}  # --audio-format: soundfile format, subtype
AUDIO_SUBDIR = "audio"  # --hf-dataset: clips go to OUT_DIR/audio/
AUDIO_END = "<|audio_eos|>"  # the seed's user turn: the audio span, then "\n" + the instruction


@dataclass
class Report:
    """What a conversion did, for the summary lines."""

    lines: list[dict] = field(default_factory=list)  # manifest lines written, in input order
    errors: list[str] = field(default_factory=list)  # one line per record left out
    notes: list[str] = field(default_factory=list)  # facts about the input the user should know (not errors)

    @property
    def seconds(self) -> float:
        return sum(line["duration"] for line in self.lines)


# ---------------------------------------------------------------------- shared
def measure(audio: Any) -> float:
    """Seconds of 16 kHz audio the model gets from ``audio`` (a path or bytes), decoded in passes of a few seconds
    (:class:`~nemo_lite.audio.FileAudio`); :class:`~nemo_lite.audio.AudioError` when it cannot be."""
    from .audio import SAMPLE_RATE, AudioError, FileAudio

    samples = sum(len(piece) for piece in FileAudio.of(audio).pieces())
    if not samples:
        raise AudioError(f"{FileAudio.of(audio).name}: audio is empty (0 samples)")
    return samples / SAMPLE_RATE


def manifest_path(audio: Path, out: Path) -> str:
    """``audio`` as a manifest line names it: relative to the manifest's folder when under it, else absolute."""
    audio, folder = audio.absolute(), out.absolute().parent
    return audio.relative_to(folder).as_posix() if audio.is_relative_to(folder) else str(audio)


def write_manifest(lines: Iterable[dict], out: Path) -> None:
    """JSON lines to ``out`` through a temporary file and a rename (a reader never sees half a manifest)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, out)


def _progress(items: Iterable, total: int | None, quiet: bool) -> Iterator:
    from tqdm import tqdm

    yield from tqdm(items, total=total, unit="clip", desc="manifest", disable=quiet, dynamic_ncols=True)


# ---------------------------------------------------------------------- the seed's JSON
def read_seed_records(path: Path) -> list[dict]:
    """The records of a seed JSON file: a JSON list of objects, or one object a line; ``ValueError`` naming the
    problem otherwise."""
    from .corpus import read_json_records  # here, not at the top: `nemo-lite --help` builds this module's parser

    records = read_json_records(path)
    bad = next((n for n, r in enumerate(records, 1) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ValueError(f"record {bad} is not a JSON object")
    return records


def _turns(record: dict) -> tuple[str | None, str | None]:
    """The seed's conversation: (instruction after the audio span in the user turn, assistant turn); None if
    absent."""
    instruction = answer = None
    for turn in record.get("conversations") or []:
        if not isinstance(turn, dict):
            continue
        role, content = turn.get("role", turn.get("from")), turn.get("content", turn.get("value"))
        if not isinstance(content, str):
            continue
        if role in ("user", "human") and instruction is None:
            instruction = content.split(AUDIO_END, 1)[-1].strip()
        elif role in ("assistant", "gpt") and answer is None:
            answer = content
    return instruction, answer


def from_seed(path: Path, out: Path, report: Report, quiet: bool = False) -> None:
    """The records of one seed JSON file -> manifest lines in ``report`` (audio paths as ``out`` names them)."""
    from .audio import AudioError
    from .prompts import ADAPTER_INSTRUCTION

    try:
        records = read_seed_records(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise SetupError(f"{path}: cannot read the seed JSON ({err}); it needs a list of objects with 'audio' and "
                         "'ground_truth'") from None
    asks: dict[str, int] = {}
    differ = 0
    for n, record in enumerate(_progress(records, len(records), quiet), 1):
        where = f"{path} record {n}" + (f", id {record['id']}" if "id" in record else "")
        instruction, answer = _turns(record)
        text = record.get("ground_truth", answer)
        if not isinstance(record.get("audio"), str) or not isinstance(text, str):
            report.errors.append(f"{where}: needs 'audio' (a path) and 'ground_truth' (or an assistant turn)")
            continue
        if instruction is not None and instruction != ADAPTER_INSTRUCTION:
            asks[instruction] = asks.get(instruction, 0) + 1
        differ += answer is not None and answer.strip() != text.strip()
        audio = Path(record["audio"]).expanduser()
        audio = audio if audio.is_absolute() else path.parent / audio
        try:
            seconds = measure(str(audio))
        except AudioError as err:
            report.errors.append(f"{err} ({where})")
            continue
        report.lines.append({"audio_filepath": manifest_path(audio, out), "text": text, "duration": seconds})
    for instruction, count in asks.items():
        report.notes.append(f"{path}: {count} record(s) ask {instruction!r} in their user turn; a manifest has no "
                            f"instruction field: training uses the model's (config 'instruction', default "
                            f"{ADAPTER_INSTRUCTION!r})")
    if differ:
        report.notes.append(f"{path}: {differ} record(s) whose assistant turn differs from 'ground_truth': the "
                            "manifest's text is 'ground_truth' (the seed trained stage 2 on the assistant turn)")


# ---------------------------------------------------------------------- Hugging Face datasets
def load_split(source: str, split: str, config: str | None = None):
    """A ``datasets`` split: ``load_from_disk`` for a ``save_to_disk`` directory (a DatasetDict's ``split``, or
    the Dataset itself), else ``load_dataset(source, config, split=split, streaming=True)`` (hub ids, local data
    folders); :class:`SetupError` when ``datasets`` is missing or the split cannot be had."""
    try:
        import datasets
    except ImportError:
        raise SetupError("--hf-dataset needs the datasets package: pip install 'nemo-lite[datasets]'") from None
    datasets.disable_progress_bars()  # ours counts clips
    path = Path(source).expanduser()
    try:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise SetupError(f"{source}: no split {split!r} (it has {', '.join(data)})")
                data = data[split]
            return data
        return datasets.load_dataset(source, config, split=split, streaming=True)
    except SetupError:
        raise
    except Exception as err:  # datasets raises FileNotFoundError, ValueError, DatasetNotFoundError, ... by source
        raise SetupError(f"cannot load {source!r} split {split!r}: {type(err).__name__}: {err}") from None


def raw_audio(value: Any) -> Any:
    """An undecoded audio cell -> bytes or a path for :mod:`nemo_lite.audio` (None: nothing there)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    if isinstance(value, str):
        return value
    return None


def from_dataset(data, audio_column: str, text_column: str, out_dir: Path, out: Path, split: str, report: Report,
                 audio_format: str = "flac", limit: int | None = None, quiet: bool = False) -> None:
    """Rows of a ``datasets`` split -> 16 kHz clips under ``out_dir/audio`` and manifest lines in ``report``."""
    import datasets
    import soundfile as sf

    from .audio import SAMPLE_RATE, AudioError, describe, load_audio

    columns = list(data.features or {})
    for column in (audio_column, text_column):
        if columns and column not in columns:
            raise SetupError(f"the split has no column {column!r} (it has {', '.join(columns)}); "
                             "choose with --audio-column / --text-column")
    if isinstance(data.features.get(audio_column) if data.features else None, datasets.Audio):
        data = data.cast_column(audio_column, datasets.Audio(decode=False))  # bytes as stored, no torchcodec
    data = data.select_columns([audio_column, text_column])
    clips = out_dir / AUDIO_SUBDIR
    clips.mkdir(parents=True, exist_ok=True)
    kind, subtype = AUDIO_FORMATS[audio_format]
    total = getattr(data, "num_rows", None)  # None: a stream
    if limit is not None:
        total = limit if total is None else min(total, limit)
    for i, row in enumerate(_progress(itertools.islice(data, limit), total, quiet)):
        where = f"{split} row {i}"
        source, text = raw_audio(row[audio_column]), row[text_column]
        if source is None or text is None:
            report.errors.append(f"{where}: no {'audio' if source is None else 'text'}")
            continue
        try:
            audio = load_audio(source)  # (samples,) float32 at 16 kHz
        except AudioError as err:
            report.errors.append(f"{where}: {str(err).removeprefix(describe(source) + ': ')}")
            continue
        clip = clips / f"{split}-{i:06d}.{audio_format}"
        sf.write(str(clip), audio, SAMPLE_RATE, format=kind, subtype=subtype)
        report.lines.append({"audio_filepath": manifest_path(clip, out), "text": str(text),
                             "duration": len(audio) / SAMPLE_RATE})


# ---------------------------------------------------------------------- the command
def cmd_manifest(args: argparse.Namespace) -> int:
    report = Report()
    if args.hf_dataset:
        if args.seed_json:
            raise SetupError("give seed JSON files or --hf-dataset, not both")
        if not args.out_dir:
            raise SetupError("--hf-dataset needs --out-dir DIR (the clips and the manifest go there)")
        if args.limit is not None and args.limit < 1:
            raise SetupError(f"--limit must be >= 1, got {args.limit}")
        out_dir = Path(args.out_dir)
        out = Path(args.out) if args.out else out_dir / f"{args.split}.jsonl"
        data = load_split(args.hf_dataset, args.split, args.hf_config)
        from_dataset(data, args.audio_column, args.text_column, out_dir, out, args.split, report, args.audio_format,
                     args.limit, args.quiet)
    else:
        if not args.seed_json:
            raise SetupError("nothing to convert: give seed JSON files, or --hf-dataset PATH_OR_ID")
        if len(args.seed_json) > 1 and not args.out:
            raise SetupError("several seed JSON files make one manifest: name it with --out OUT.jsonl")
        out = Path(args.out) if args.out else Path(args.seed_json[0]).with_suffix(".jsonl")
        if any(Path(p).absolute() == out.absolute() for p in args.seed_json):
            raise SetupError(f"--out {out} would overwrite its input")
        for path in args.seed_json:
            from_seed(Path(path), out, report, args.quiet)
    for line in report.errors:
        say(line)
    for line in report.notes:
        say(line)
    if not report.lines:
        say("no usable records: nothing written")
        return EXIT_BAD_INPUT
    write_manifest(report.lines, out)
    say(f"{out}: {len(report.lines)} line(s), {report.seconds:.1f} s of audio"
        + (f"; {len(report.errors)} record(s) left out" if report.errors else ""))
    return EXIT_BAD_INPUT if report.errors else EXIT_OK


def add_manifest_parser(subparsers) -> argparse.ArgumentParser:
    """``nemo-lite manifest SEED.json ... [--out OUT.jsonl]`` or ``nemo-lite manifest --hf-dataset D --out-dir DIR``."""
    p = subparsers.add_parser("manifest", help="NeMo JSONL manifests (audio_filepath, text, duration) from the "
                              "Qwen2-VL adapter's JSON or a Hugging Face datasets split")
    p.add_argument("seed_json", nargs="*", metavar="SEED_JSON",
                   help="the seed's JSON (a list of {audio, ground_truth, conversations}; audio relative to the file)")
    p.add_argument("--out", help="the manifest to write (default: SEED_JSON with .jsonl; OUT_DIR/SPLIT.jsonl)")
    p.add_argument("--hf-dataset", metavar="PATH_OR_ID",
                   help="a datasets split: save_to_disk directory, local data folder or hub id (pip install "
                        "'nemo-lite[datasets]')")
    p.add_argument("--hf-config", help="--hf-dataset: the dataset's configuration name (e.g. 'small')")
    p.add_argument("--split", default="test", help="--hf-dataset: the split (default %(default)s)")
    p.add_argument("--audio-column", default="audio", help="--hf-dataset: audio column (default %(default)s)")
    p.add_argument("--text-column", default="text", help="--hf-dataset: transcript column (default %(default)s)")
    p.add_argument("--out-dir", help="--hf-dataset: where the clips (OUT_DIR/audio/) and the manifest go")
    p.add_argument("--audio-format", choices=sorted(AUDIO_FORMATS), default="flac",
                   help="--hf-dataset: clips as 16 kHz mono 16-bit FLAC or WAV (default %(default)s)")
    p.add_argument("--limit", type=int, help="--hf-dataset: the first N rows only")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_run_args(p, threads=False)
    p.set_defaults(func=cmd_manifest)
    return p
