"""How many CPU threads ``nemo-lite transcribe`` should use: wall time at 1 thread vs all cores, with the machine
as it is and with one more process spinning on a core (what another job does). Figures in the README ("Threads").

    python bench/threads.py [--ckpt DIR] [--repeats 3] [--files F ...]

Without ``--ckpt`` it writes the tiny random checkpoint of the tests (:mod:`nemo_lite.testing`). Each run is a fresh
``nemo-lite transcribe`` process (the whole command as a user meets it: import, load, transcription); the
transcription alone is the wall time of its RTFx line. Runs are interleaved (1, all, 1, all, ...) and the best
and worst of ``--repeats`` are printed with the load average beside them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nemo_lite
from nemo_lite import testing

EXAMPLE = Path(nemo_lite.__file__).parent / "assets" / "example.wav"


def one_run(ckpt: Path, files: list[str], threads: int) -> tuple[float, float]:
    """(command wall seconds, transcription wall seconds) of one ``nemo-lite transcribe`` process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    cmd = [sys.executable, "-m", "nemo_lite.cli", "transcribe", *files, "--model", str(ckpt), "--quiet",
           "--max-new-tokens", "8", "--threads", str(threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    wall = time.perf_counter() - t0
    inner = float(re.search(r"in ([0-9.]+) s wall time", res.stderr).group(1))
    return wall, inner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", help="checkpoint directory (default: a tiny random one)")
    ap.add_argument("--files", nargs="+", default=[str(EXAMPLE)] * 4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(args.ckpt) if args.ckpt else testing.write_checkpoint(
            Path(tmp) / "ckpt", testing.tiny_salm_config(testing.write_llm_dir(Path(tmp) / "llm", testing.TINY_QWEN3)))
        for busy in (False, True):
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                times: dict[int, list[tuple[float, float]]] = {1: [], cores: []}
                loads = []
                for _ in range(args.repeats):
                    for n in times:
                        loads.append(os.getloadavg()[0])
                        times[n].append(one_run(ckpt, args.files, n))
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            for n, runs in times.items():
                walls, inner = sorted(w for w, _ in runs), sorted(i for _, i in runs)
                print(f"{'busy (+1 spinning process)' if busy else 'as is'}: {n} thread(s): command "
                      f"{walls[0]:.1f}-{walls[-1]:.1f} s, transcription {inner[0]:.2f}-{inner[-1]:.2f} s "
                      f"(load average {min(loads):.1f}-{max(loads):.1f}, {cores} cores)", flush=True)


if __name__ == "__main__":
    main()
