"""What a person at a terminal meets, shared by the ``nemo-lite`` commands: exit codes, one-line errors, the
progress bar, library noise kept off the screen, and the ``--threads`` / ``--debug`` flags.

Exit codes (every command): :data:`EXIT_OK` 0 all done; :data:`EXIT_BAD_INPUT` 1 some inputs failed (each named
in one line on stderr; the others were processed); :data:`EXIT_SETUP` 2 set-up error, nothing done (bad flag,
device, model or checkpoint, unreachable hub, missing extra); :data:`EXIT_INTERNAL` 3 an unexpected error (a bug:
one line, ``--debug`` shows the traceback); 130 interrupted (Ctrl-C); 141 stdout closed early (``| head``), silently.
A command reports a set-up problem by
raising :class:`SetupError`; :func:`run` turns it, and anything unexpected, into one line and the code.

Library noise (:func:`library_noise`, skipped with ``--debug``): deprecation warnings are fixed at their cause
where we can (the KV cache is passed as ``cache=``, :mod:`nemo_lite.decoding`; decoder chatter on fd 2,
:mod:`nemo_lite.audio`). What remains comes from optional packages at import time, and is filtered narrowly
while a command runs: torchao (which peft imports when it is installed) logs "Failed to load ..." for compiled
kernels built for another Python/CUDA, and torch logs a deprecation when torchao registers its enums with pytree.
Their two loggers are raised to ERROR, nothing else. A damaged file read with ``--allow-truncated`` warns
(:class:`~nemo_lite.audio.TruncatedAudioWarning`); warnings are shown as one ``nemo-lite:`` line, above the bar.

Progress (:class:`Bar`): tqdm in audio seconds on stderr that only moves forward, never passes its total (no
"clamping frac" warning, no negative ETA) and ends exactly at it, whatever inputs were skipped or how durations
rounded. It is redrawn at every credit (an encoder group, a decoded batch, 4 s of scanned audio), not throttled
to tqdm's 0.1 s, so a long file's bar visibly advances as each piece of work finishes.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .speechlm import SpeechLM

EXIT_OK = 0  # everything processed
EXIT_BAD_INPUT = 1  # some inputs failed (each named on stderr); the others were processed
EXIT_SETUP = 2  # set-up error (flags, device, model, hub, extras): nothing was processed
EXIT_INTERNAL = 3  # an unexpected error: a bug (--debug shows the traceback)
EXIT_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, the shell's convention
EXIT_PIPE_CLOSED = 141  # the reader of stdout went away (`nemo-lite transcribe ... | head`): 128 + SIGPIPE
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")  # import-time chatter of optional packages (module docstring)


class SetupError(Exception):
    """A problem with the command's set-up (not with one input): one line saying what to do; exit code 2."""


def say(message: str) -> None:
    """One ``nemo-lite:`` line on stderr (above a progress bar, if one is drawn)."""
    from tqdm import tqdm

    tqdm.write(f"nemo-lite: {one_line(message)}", file=sys.stderr)


def one_line(message: str) -> str:
    """A message on one line (libraries' multi-line errors joined with '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def add_run_args(p: argparse.ArgumentParser, threads: bool = True) -> None:
    """``--threads`` (commands that run a model) and ``--debug`` (every command)."""
    if threads:
        p.add_argument("--threads", type=int, metavar="N",
                       help="CPU threads for torch (default: the cores this process may use minus the machine's "
                            "load average, at least 1; 0: torch's own default, one per core; OMP_NUM_THREADS, "
                            "when set, is kept). Busy machines punish extra threads: see the README")
    p.add_argument("--debug", action="store_true", help="show tracebacks and library warnings instead of one line")


def apply_threads(args: argparse.Namespace) -> None:
    """Set torch's CPU threads from ``--threads`` (:func:`nemo_lite.runtime.set_threads`); a bad value is a
    :class:`SetupError`."""
    from .runtime import set_threads

    n = getattr(args, "threads", None)
    if n is not None and n < 0:
        raise SetupError(f"--threads must be >= 0, got {n}")
    set_threads(n)


@contextmanager
def library_noise(debug: bool) -> Iterator[None]:
    """While a command runs: third-party import chatter silenced and warnings shown as one line (module
    docstring); with ``debug``, everything as the libraries print it."""
    if debug:
        yield
        return
    from .audio import TruncatedAudioWarning

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        warnings.simplefilter("always", TruncatedAudioWarning)  # one per damaged file, even a repeated name
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    from .audio import TruncatedAudioWarning

    if issubclass(category, TruncatedAudioWarning):
        say(str(message))
    else:  # unforeseen: still one line, naming where it came from (--debug shows it as Python does)
        say(f"note from {filename.rsplit('site-packages/', 1)[-1]}: {message}")


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command: its exit code, or one line on stderr and :data:`EXIT_SETUP` / :data:`EXIT_INTERNAL` /
    :data:`EXIT_INTERRUPTED` (with ``--debug``, the traceback too)."""
    debug = bool(getattr(args, "debug", False))
    with library_noise(debug):
        try:
            return command(args)
        except KeyboardInterrupt:
            say("interrupted")
            return EXIT_INTERRUPTED
        except BrokenPipeError:  # nothing left to write to; keep Python's exit-time flush from failing too
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, sys.stdout.fileno())
            os.close(null)
            return EXIT_PIPE_CLOSED
        except SetupError as err:
            if debug:
                traceback.print_exc()
            say(str(err))
            return EXIT_SETUP
        except Exception as err:  # a bug: one line unless --debug
            if debug:
                traceback.print_exc()
            say(f"unexpected error: {type(err).__name__}: {err} (rerun with --debug for the traceback, and "
                "please report it)")
            return EXIT_INTERNAL


def prepare(args: argparse.Namespace) -> None:
    """Flags that need torch, checked before the model loads: threads, device and dtype (:class:`SetupError`)."""
    from .runtime import check_device, default_device, resolve_dtype

    apply_threads(args)
    try:
        args.device = str(check_device(args.device or default_device()))
        resolve_dtype(args.dtype, args.device)
    except (ValueError, RuntimeError) as err:
        raise SetupError(str(err)) from None


def model_for_inputs(args: argparse.Namespace, errors: list[str], inputs: int, verb: str) -> SpeechLM | None:
    """The order every model command keeps: each input problem said on its own line, then, when ``inputs`` are
    left, the flags checked (:func:`prepare`) and the model loaded; None (after "nothing to ``verb``") otherwise."""
    for msg in errors:
        say(msg)
    if not inputs:
        say(f"nothing to {verb}")
        return None
    prepare(args)
    return load_command_model(args)


def load_command_model(args: argparse.Namespace) -> SpeechLM:
    """The model a command's ``--model`` etc. name (either design, detected from the checkpoint), after
    :func:`prepare`; :class:`SetupError` with the loader's message (CheckpointError/ConfigError say how to use a
    local checkpoint and --llm-path) when it cannot be loaded."""
    from .auto import from_pretrained
    from .config import ConfigError
    from .weights import CheckpointError

    status = sys.stderr.isatty()  # a person watching: say what the wait is (erased once loaded)
    if status:
        print(f"nemo-lite: loading {args.model} ...", end="", file=sys.stderr, flush=True)
    try:
        return from_pretrained(args.model, device=args.device, dtype=args.dtype, llm_path=args.llm_path,
                               quantize=getattr(args, "quantize", None),
                               merge_lora=getattr(args, "merge_lora", False) or None,
                               encoder_dtype=getattr(args, "encoder_dtype", None),
                               compile=getattr(args, "compile", False) or None)
    except (CheckpointError, ConfigError, RuntimeError, ValueError, OSError) as err:  # bad files, options
        raise SetupError(f"cannot load model {args.model!r}: {err}") from err
    finally:
        if status:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)  # erase the status line


class Bar:
    """A tqdm bar in audio seconds that only moves forward, never passes ``total`` and ends exactly at it."""

    def __init__(self, total: float, desc: str, disable: bool = False) -> None:
        from tqdm import tqdm

        self.total = max(float(total), 0.0)  # seconds of audio to do
        self.position = 0.0  # seconds credited so far (<= total)
        fmt = ("{l_bar}{bar}| {n:.1f}/{total:.1f} s audio [{elapsed}<{remaining}]" if self.total > 0
               else "{desc}: {n:.1f} s audio [{elapsed}]")  # no total to show (every header said 0 s)
        self.bar = tqdm(total=self.total or None, unit="s", desc=desc, file=sys.stderr, disable=disable,
                        mininterval=0, miniters=0, dynamic_ncols=True, bar_format=fmt)

    def add(self, seconds: float) -> None:
        """Credit ``seconds`` of audio done (clamped at the total)."""
        self.reach(self.position + max(seconds, 0.0))

    def reach(self, position: float) -> None:
        """Move to ``position`` seconds, if that is ahead (clamped at the total)."""
        position = min(position, self.total)
        if position <= self.position:
            return
        self.position = position
        if not self.bar.disable:
            self.bar.n = position  # set, not added: float sums must not overshoot the total
            self.bar.refresh()

    def close(self) -> None:
        """End exactly at the total and close."""
        self.reach(self.total)
        self.bar.close()
