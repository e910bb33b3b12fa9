"""Corpus jobs: files, folders and NeMo manifests -> one output manifest (JSON lines), written as inputs finish,
resumable after a crash, on one process or split over ``torchrun`` processes (Ray: :mod:`nemo_lite.ray_runner`).

Every runner does the same work with the same functions: :func:`transcribe_entries` (groups of bounded audio ->
:func:`~nemo_lite.transcription.load_all` -> :func:`~nemo_lite.transcription.transcribe_arrays`, whose ``on_done``
hook hands over the inputs each decoding batch finished), :func:`output_line` (one line per input, the error policy
included) and :class:`Journal` / :func:`finalize` (the writer). Only the scheduling differs.

Output line, NeMo's manifest style: the input's own fields (``audio_filepath`` as written, a reference ``text``,
``offset``, ``duration``, ...) in their order, then ``input_index`` (its position among all inputs of the job),
``pred_text``, ``duration`` (seconds decoded; only when the input has none) and ``segments`` (with
``--timestamps``: ``start``/``end`` in seconds from the start of the input or slice, and ``text``). An input that
cannot be transcribed (missing, empty or undecodable file, an offset past its end) gets ``error`` with the reason
instead of ``pred_text``. Fields of those names already in the input are replaced.

Slices: a manifest line with NeMo's ``offset`` is the part of its file from ``offset`` seconds, ``duration``
seconds long (to the end without it); only that part is decoded (:meth:`~nemo_lite.audio.FileAudio.slice`). Without
``offset``, ``duration`` is what the file is expected to last (it sizes groups, shards and the progress bar), as in
NeMo's lhotse reader, which reads the whole file then.

Crash safety and resume: finished lines are appended to a journal a decoding batch at a time, flushed and fsynced
(a crash loses at most the batch in flight; a line cut short by the crash is dropped when the journal is reopened).
Running the same command again with the same output reads what is there: inputs with a line are skipped (an input
is identified by ``input_index`` + ``audio_filepath`` + ``offset``, so lines of a different manifest never count),
failed ones are tried again. At the end the output is rewritten in input order, one line per input, through a
temporary file and a rename (atomic). ``--overwrite`` starts afresh.

torchrun: ``torchrun --nproc_per_node N -m nemo_lite.cli transcribe MANIFEST --output-manifest OUT.jsonl``. Each
rank takes a share of the remaining inputs balanced by expected seconds, loads the model on its own device
(``cuda:LOCAL_RANK`` on GPUs) and journals to ``OUT.jsonl.rank-K``; when all ranks are done, rank 0 merges the
journals (and any left by an earlier run, even one with another number of ranks) into ``OUT.jsonl``. The process
group is gloo whatever the device: the only collective is a barrier, which gloo does without touching the GPUs,
with a timeout long enough for ranks that finish hours apart. Several nodes need a shared filesystem for the
journals.

Memory: a runner holds one group of its own inputs (at most :data:`GROUP_SECONDS` of audio in memory; files longer
than one window are read window by window), never the whole manifest's audio.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from .audio import AUDIO_EXTENSIONS, AudioInput, FileAudio, audio_files, probe_duration

if TYPE_CHECKING:
    from .speechlm import SpeechLM
    from .transcription import Progress, TranscribeOptions, Transcript

GROUP_SECONDS = 1800.0  # audio per group of files checked together: at most 30 min = 115 MB of float32 at 16 kHz
# held (files longer than one window hold none)
GROUP_FILES = 256  # files per group at most
MANIFEST_SUFFIXES = (".json", ".jsonl")
INDEX = "input_index"  # output field: the input's position among all inputs of the job
OWN_FIELDS = (INDEX, "pred_text", "segments", "error")  # fields every output line sets (replaced if in the input)
FILE_COST = 1.0  # seconds added per input when balancing shards: loading and prompt cost of a clip, so inputs of
# unknown length (missing files, unreadable headers) still spread over the ranks
PART = ".rank-"  # journal of rank K under torchrun: OUT.jsonl.rank-K
BARRIER_TIMEOUT = timedelta(days=7)  # ranks wait at the end for the slowest one; gloo's default is 30 min
EXIT_OK, EXIT_BAD_INPUT, EXIT_SETUP = 0, 1, 2  # as the CLI's


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Entry:
    """One input of a corpus job."""

    index: int  # position among all inputs of the job (manifests' lines in order): with path + offset, its identity
    path: str  # the audio file (a relative manifest path resolved against the manifest's folder)
    fields: dict  # what its output line starts with: the input's own fields + input_index
    offset: float | None = None  # NeMo's offset: a slice from here (seconds); None: the whole file
    length: float | None = None  # a slice's duration (seconds; None: to the end); only with offset
    duration: float = 0.0  # expected seconds (slice, manifest or file header; 0 unknown): groups, shards, progress

    @property
    def audio(self) -> AudioInput:
        """What :func:`~nemo_lite.transcription.load_all` gets: the path, or the slice of the file."""
        return self.path if self.offset is None else FileAudio.slice(self.path, self.offset, self.length)

    def matches(self, line: dict) -> bool:
        """Whether an output line is this input's (same index, same file as written, same offset)."""
        return (line.get(INDEX) == self.index and line.get("audio_filepath") == self.fields.get("audio_filepath")
                and line.get("offset") == self.fields.get("offset"))


def _seconds(value: Any) -> float | None:
    """A manifest number of seconds, or None (absent, null, NaN)."""
    if value is None:
        return None
    x = float(value)
    return None if math.isnan(x) else x


def entry(index: int, fields: dict, path: str) -> Entry:
    """An :class:`Entry` from an input's fields (``offset``/``duration`` read NeMo's way, see module docstring);
    earlier results in them (``pred_text``, ``segments``, ``error``) are dropped."""
    offset, duration = _seconds(fields.get("offset")), _seconds(fields.get("duration"))
    length = duration if offset is not None else None
    if duration is None:
        whole = probe_duration(path) if os.path.isfile(path) else None
        duration = None if whole is None else max(0.0, whole - (offset or 0.0))
    return Entry(index, path, {k: v for k, v in fields.items() if k not in OWN_FIELDS[1:]}, offset, length,
                 duration or 0.0)


def read_json_records(path: Path) -> list:
    """The values of a JSON-lines file, or of one JSON document (a list: its items); ``ValueError`` naming the
    first line that is not JSON. NeMo manifests and the Qwen2-VL adapter's data files are both written either way."""
    text = path.read_text(encoding="utf-8")
    try:
        whole = json.loads(text)
        return whole if isinstance(whole, list) else [whole]
    except json.JSONDecodeError:
        pass
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        try:
            records += [json.loads(line)] if line.strip() else []
        except json.JSONDecodeError as err:
            raise ValueError(f"line {n} is not JSON ({err.msg})") from None
    return records


def read_manifest_lines(path: Path) -> list[tuple[dict, str]]:
    """A NeMo manifest's entries (JSON lines, or one JSON list of objects) with their resolved audio paths."""
    lines = read_json_records(path)
    out = []
    for n, fields in enumerate(lines, 1):
        if not isinstance(fields, dict) or "audio_filepath" not in fields:
            raise ValueError(f"entry {n} has no 'audio_filepath'")
        audio = Path(str(fields["audio_filepath"])).expanduser()
        out.append((fields, str(audio if audio.is_absolute() else path.parent / audio)))
    return out


def read_entries(inputs: Sequence[str]) -> tuple[list[Entry], list[str]]:
    """Files, folders (scanned for audio files) and manifests -> entries in order; problems go to the list."""
    found: list[tuple[dict, str]] = []
    errors: list[str] = []
    for arg in inputs:
        path = Path(arg).expanduser()
        if path.is_dir():
            files = audio_files(path)
            if not files:
                errors.append(f"{arg}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this directory")
            found += [({"audio_filepath": str(f)}, str(f)) for f in files]
        elif path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            try:
                found += read_manifest_lines(path)
            except (ValueError, OSError) as err:
                errors.append(f"{arg}: cannot read manifest ({err})")
        else:
            found.append(({"audio_filepath": arg}, str(path)))  # missing or bad files get error lines
    entries = []
    for i, (fields, path) in enumerate(found):
        try:  # absolute paths: the same error messages wherever the input is transcribed (Ray workers too)
            entries.append(entry(i, {k: v for k, v in fields.items() if k != INDEX} | {INDEX: i},
                                 str(Path(path).absolute())))
        except (TypeError, ValueError) as err:  # offset/duration that are not numbers
            errors.append(f"{fields['audio_filepath']}: bad offset/duration ({err})")
    return entries, errors


class _Sized(Protocol):
    duration: float


S = TypeVar("S", bound=_Sized)


def groups(items: Iterable[S]) -> Iterator[list[S]]:
    """Consecutive items up to :data:`GROUP_SECONDS` of audio or :data:`GROUP_FILES` files (a longer one alone)."""
    group: list[S] = []
    total = 0.0
    for item in items:
        if group and (total + item.duration > GROUP_SECONDS or len(group) >= GROUP_FILES):
            yield group
            group, total = [], 0.0
        group.append(item)
        total += item.duration
    if group:
        yield group


def shard(entries: list[Entry], world: int, rank: int) -> list[Entry]:
    """Rank ``rank``'s share: longest first to the least loaded rank (expected seconds + :data:`FILE_COST`), so
    every rank gets about the same audio; the share keeps input order."""
    loads = [0.0] * world
    owner: dict[int, int] = {}
    for e in sorted(entries, key=lambda e: (-e.duration, e.index)):
        r = min(range(world), key=lambda k: (loads[k], k))
        loads[r] += e.duration + FILE_COST
        owner[e.index] = r
    return [e for e in entries if owner[e.index] == rank]


# ---------------------------------------------------------------------- the work (every runner)
def transcribe_options(model: SpeechLM, batch_size: int | None = None, max_new_tokens: int | None = None,
                       max_chunk_seconds: float | None = None, segmentation: str | None = None) -> TranscribeOptions:
    """The options of a corpus job: bad inputs skipped (they get error lines), the model's window by default."""
    from .longform import ChunkOptions
    from .transcription import TranscribeOptions

    return TranscribeOptions(batch_size=batch_size, max_new_tokens=max_new_tokens, on_error="skip",
                             chunk=ChunkOptions(max_chunk_seconds=max_chunk_seconds or model.window_seconds),
                             segmentation=segmentation)  # type: ignore[arg-type]


def output_line(fields: dict, transcript: Transcript | None = None, error: str | None = None,
                timestamps: bool = False) -> dict:
    """An input's output line: its fields, then ``pred_text`` (+ ``duration``, ``segments``) or ``error``."""
    line = {k: v for k, v in fields.items() if k not in OWN_FIELDS[1:]}
    if transcript is None:
        line["error"] = error or "not transcribed"
        return line
    line["pred_text"] = transcript.text
    if line.get("duration") is None:
        line["duration"] = transcript.duration
    if timestamps:
        line["segments"] = [s.to_dict() for s in transcript.segments]
    return line


def transcribe_entries(model: SpeechLM, entries: Sequence[Entry], opts: TranscribeOptions, timestamps: bool,
                       write: Callable[[list[tuple[Entry, dict]]], None], progress: Progress | None = None) -> None:
    """Transcribe ``entries`` a group at a time; ``write`` gets ``(entry, output line)`` for the inputs each
    decoding batch finished (bad inputs' error lines first, when their group is checked)."""
    from .transcription import load_all, transcribe_arrays

    vad = None if opts.segmentation == "fixed" else opts.vad
    for group in groups(entries):
        loaded, failures = load_all([e.audio for e in group], opts.sample_rate, opts.chunk, vad)
        if failures:
            write([(group[i], output_line(group[i].fields, error=msg)) for i, msg in failures])
            if progress is not None:
                progress(sum(group[i].duration for i, _ in failures))
        transcribe_arrays(model, loaded, opts, progress, timestamps, on_done=lambda done, group=group: write(
            [(group[i], output_line(group[i].fields, t, timestamps=timestamps)) for i, t in done]))


# ---------------------------------------------------------------------- the writer
class Journal:
    """An append-only JSON-lines file of finished inputs, written a batch at a time, flushed and fsynced."""

    def __init__(self, path: Path) -> None:
        _drop_torn_tail(path)
        self.path = path
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self.count = 0  # lines written

    def write(self, lines: list[dict]) -> None:
        if not lines:
            return
        self.file.write("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
        self.file.flush()
        os.fsync(self.file.fileno())
        self.count += len(lines)

    def close(self) -> None:
        self.file.close()


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a write cut short by a crash) so appended lines start cleanly."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def parts(out: Path) -> list[Path]:
    """Journals of torchrun ranks next to ``out`` (this run's or an earlier one's)."""
    return sorted(out.parent.glob(out.name + PART + "*"))


def read_lines(paths: Iterable[Path]) -> Iterator[dict]:
    """Every JSON object line of the files that exist (torn or foreign lines skipped)."""
    for path in paths:
        if not path.is_file():
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            for text in f:
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(line, dict):
                    yield line


def collect(entries: Sequence[Entry], lines: Iterable[dict]) -> dict[int, dict]:
    """One line per input from journal lines: a transcript wins over an error; lines of no input are dropped."""
    best: dict[int, dict] = {}
    for line in lines:
        i = line.get(INDEX)
        if not isinstance(i, int) or not 0 <= i < len(entries) or not entries[i].matches(line):
            continue
        if i not in best or ("error" in best[i] and "error" not in line):
            best[i] = line
    return best


def finalize(out: Path, entries: Sequence[Entry], lines: dict[int, dict]) -> None:
    """Write one line per input in input order to ``out`` atomically (temporary file, fsync, rename), then remove
    the rank journals."""
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for e in entries:
            f.write(json.dumps(lines[e.index], ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, out)
    dir_fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)
    for part in parts(out):
        part.unlink(missing_ok=True)


def previous_results(out: Path, entries: Sequence[Entry]) -> dict[int, dict]:
    """What earlier runs left for these inputs: ``out`` and any rank journals beside it."""
    return collect(entries, read_lines([out, *parts(out)]))


def clear(out: Path) -> None:
    """Start afresh (``--overwrite``): delete ``out`` and the rank journals beside it."""
    for path in [out, *parts(out)]:
        path.unlink(missing_ok=True)


def resume_note(out: Path, entries: Sequence[Entry], previous: dict[int, dict]) -> str | None:
    """The line saying what a resumed run skips, or None for a fresh one."""
    if not previous:
        return None
    failed = sum("error" in line for line in previous.values())
    return (f"nemo-lite: {out}: {len(previous) - failed} of {len(entries)} input(s) already done, skipped"
            + (f"; {failed} failed before, tried again" if failed else ""))


def summary(out: Path, lines: dict[int, dict], entries: Sequence[Entry], ran: int, seconds: float,
            wall: float) -> tuple[str, int]:
    """The closing line and exit code: 1 when an input failed (its line has ``error``)."""
    bad = sum("error" in line for line in lines.values())
    missing = len(entries) - len(lines)
    text = (f"nemo-lite: {out}: {len(entries) - bad - missing} of {len(entries)} input(s) transcribed ({ran} in this "
            f"run, {seconds:.1f} s of audio in {wall:.1f} s wall time, RTFx {seconds / max(wall, 1e-9):.1f})"
            + (f"; {bad} failed (lines with 'error')" if bad else "")
            + (f"; {missing} not done: run the command again to finish" if missing else ""))
    return text, EXIT_BAD_INPUT if bad or missing else EXIT_OK


# ---------------------------------------------------------------------- one process or torchrun ranks
def torchrun_env() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun's environment; ``(0, 1, 0)`` outside it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK",
                                                                                                           "0"))


def rank_device(device: str | None, local_rank: int, world: int) -> str | None:
    """This rank's device: ``cuda:LOCAL_RANK`` for ``cuda`` (or no choice on a machine with GPUs) under torchrun."""
    import torch

    if world > 1 and (device == "cuda" or (device is None and torch.cuda.is_available())):
        return f"cuda:{local_rank}"
    return device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def run_corpus(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], SpeechLM | None]) -> int:
    """``nemo-lite transcribe ... --output-manifest OUT`` on one process or as one torchrun rank; the exit code."""
    rank, world, local = torchrun_env()
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        return _run(args, load_model, rank, world, local)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run(args: argparse.Namespace, load_model: Callable[[argparse.Namespace], SpeechLM | None], rank: int,
         world: int, local: int) -> int:
    out = Path(args.output_manifest)
    say = (lambda msg: print(msg, file=sys.stderr)) if rank == 0 else (lambda msg: None)
    entries, errors = read_entries(args.inputs)
    for msg in errors:
        say(f"nemo-lite: {msg}")
    if not entries:
        say("nemo-lite: nothing to transcribe")
        return EXIT_BAD_INPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.overwrite and rank == 0:
        clear(out)
    _barrier(world)  # the overwrite is done before anyone reads
    previous = previous_results(out, entries)
    _barrier(world)  # everyone read the same state before anyone writes
    if (note := resume_note(out, entries, previous)) is not None:
        say(note)
    finished = {i for i, line in previous.items() if "error" not in line}
    todo = shard([e for e in entries if e.index not in finished], world, rank)
    ran, seconds, wall = 0, 0.0, 0.0
    if todo:
        model = load_model(argparse.Namespace(**{**vars(args), "device": rank_device(args.device, local, world)}))
        if model is None:
            return EXIT_SETUP
        journal = out if world == 1 else out.with_name(out.name + PART + str(rank))
        ran, seconds, wall = _transcribe_share(model, todo, args, journal, rank, world)
    ran, seconds, wall = _totals(world, ran, seconds, wall)  # also a barrier: every journal is complete
    if rank != 0:
        return EXIT_OK
    lines = collect(entries, read_lines([out, *parts(out)]))
    if len(lines) == len(entries):
        finalize(out, entries, lines)
    text, code = summary(out, lines, entries, ran, seconds, wall)
    say(text)
    return EXIT_BAD_INPUT if errors else code


def _totals(world: int, ran: int, seconds: float, wall: float) -> tuple[int, float, float]:
    """Inputs and audio seconds summed over the ranks, the longest wall time."""
    if world == 1:
        return ran, seconds, wall
    import torch
    import torch.distributed as dist

    sums = torch.tensor([ran, seconds], dtype=torch.float64)
    longest = torch.tensor([wall], dtype=torch.float64)
    dist.all_reduce(sums)
    dist.all_reduce(longest, op=dist.ReduceOp.MAX)
    return int(sums[0]), float(sums[1]), float(longest[0])


def _transcribe_share(model: SpeechLM, todo: list[Entry], args: argparse.Namespace, journal_path: Path, rank: int,
                      world: int) -> tuple[int, float, float]:
    """This process's inputs into its journal, with a progress bar; ``(inputs done, audio seconds, wall time)``."""
    from tqdm import tqdm

    opts = transcribe_options(model, args.batch_size, args.max_new_tokens, args.max_chunk_seconds, args.segmentation)
    journal = Journal(journal_path)
    done = [0, 0.0]

    def write(pairs: list[tuple[Entry, dict]]) -> None:
        journal.write([line for _, line in pairs])
        done[0] += len(pairs)
        done[1] += sum(line.get("duration") or 0.0 for _, line in pairs if "error" not in line)

    desc = "transcribing" if world == 1 else f"rank {rank}"
    bar = tqdm(total=round(sum(e.duration for e in todo), 2), unit="s", desc=desc, file=sys.stderr,
               disable=args.quiet, position=rank if world > 1 else None,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]")
    t0 = time.perf_counter()
    try:
        transcribe_entries(model, todo, opts, args.timestamps, write, progress=lambda s: bar.update(round(s, 3)))
    finally:
        bar.close()
        journal.close()
    return int(done[0]), float(done[1]), time.perf_counter() - t0


__all__ = ["Entry", "Journal", "collect", "finalize", "groups", "output_line", "read_entries", "run_corpus", "shard",
           "transcribe_entries", "transcribe_options"]
