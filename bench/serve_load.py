"""Load benchmark of ``nemo-lite serve``: N concurrent clients over a set of files, batching on vs off, vs the CLI.

For each server setting (``--max-batch-size B``, then ``--max-batch-size 1``) a fresh server is started and every
client level (default 1, 4, 16) sends the whole file set through N concurrent clients (threads pulling from one
queue, one ``POST /v1/audio/transcriptions`` per file). Reported per run: throughput in audio seconds per wall
second, p50/p95 request latency, and mean rows per decoding batch (from the server's ``/metrics``). The same
files then go through the offline CLI (``nemo-lite transcribe --batch-size B``; its own RTFx line, model load
excluded), the reference for the acceptance target: at 16 clients the server reaches >= 80 % of it.

    python bench/serve_load.py --tiny --out docs/serving.md     # random tiny checkpoint, 128 generated files
    python bench/serve_load.py --model /ckpt --llm-path /qwen3 --files clips/ --threads 2
    python bench/serve_load.py --url http://127.0.0.1:8000 --files clips/   # a running server: client levels only

Generated files are the package's example clip repeated to 1-12 s with short gaps (a real model's budget then
matters; on the tiny random model, which never stops early, ``--max-new-tokens`` sets every row's cost).
With ``--out``, the table replaces the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` there.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

import nemo_lite
from nemo_lite.audio import AUDIO_EXTENSIONS, SAMPLE_RATE

EXAMPLE = Path(nemo_lite.__file__).parent / "assets" / "example.wav"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass
class Run:
    setting: str  # what ran: "serve, batch 8", "CLI, batch 8", ...
    clients: int | None  # concurrent clients (None: the CLI)
    audio_seconds: float  # audio transcribed
    wall: float  # seconds
    latencies: list[float]  # per request, seconds
    rows_per_batch: float | None  # mean rows per ASR decoding batch
    cpu: float | None = None  # CPU seconds the server (or CLI) process used, all threads
    failures: int = 0
    busy: float | None = None  # share of the wall time the model worker spent in batches

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall

    def row(self, reference: float | None) -> str:
        lat = sorted(self.latencies)
        p50 = f"{statistics.median(lat):.2f}" if lat else "–"
        p95 = f"{lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))]:.2f}" if lat else "–"
        rows = f"{self.rows_per_batch:.1f}" if self.rows_per_batch else "–"
        share = f"{100 * self.throughput / reference:.0f} %" if reference else "–"
        clients = str(self.clients) if self.clients else "–"
        cpu = f"{self.cpu / self.audio_seconds:.3f}" if self.cpu else "–"
        busy = f"{100 * self.busy:.0f} %" if self.busy is not None else "–"
        return (f"| {self.setting} | {clients} | {self.throughput:.2f} | {share} | {p50} | {p95} | {rows} | "
                f"{cpu} | {busy} | {self.wall:.1f} | {self.failures} |")


# ---------------------------------------------------------------------- inputs
def generate_files(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` wav files of 1-12 s: the example clip cut or repeated, with 0.2-0.6 s gaps and faint noise."""
    clip, _ = sf.read(str(EXAMPLE), dtype="float32")
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        seconds = float(rng.uniform(1.0, 12.0))
        parts, total = [], 0
        while total < seconds * SAMPLE_RATE:
            gap = np.zeros(int(rng.uniform(0.2, 0.6) * SAMPLE_RATE), np.float32)
            parts += [clip, gap]
            total += len(clip) + len(gap)
        x = np.concatenate(parts)[: int(seconds * SAMPLE_RATE)]
        x = x + 0.002 * rng.standard_normal(len(x)).astype(np.float32)
        path = folder / f"bench{i:03d}.wav"
        sf.write(str(path), x, SAMPLE_RATE)
        out.append(path)
    return out


def list_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def tiny_checkpoint(folder: Path) -> Path:
    from nemo_lite import testing

    llm = testing.write_llm_dir(folder / "llm", testing.TINY_QWEN3)
    return testing.write_checkpoint(folder / "ckpt", testing.tiny_salm_config(llm))


# ---------------------------------------------------------------------- server runs
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, batch: int, model_process: bool = True) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "nemo_lite.cli", "serve", "--model", args.model, "--port", str(port),
           "--max-batch-size", str(batch), "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", "1024",
           "--model-process" if model_process else "--no-model-process"]
    cmd += _model_flags(args) + (["--threads", str(args.threads)] if args.threads else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(args))
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {' '.join(cmd)}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError("server did not become healthy")


def batch_metrics(url: str) -> tuple[float, float, float]:
    """(rows, batches, seconds in batches) of ASR decoding so far, from /metrics."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    values = []
    for name in ("rows_sum", "rows_count", "seconds_sum"):
        m = re.search(rf'^nemo_lite_batch_{name}{{kind="asr"}} (\S+)$', text, re.M)
        values.append(float(m.group(1)) if m else 0.0)
    return values[0], values[1], values[2]


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a local process and its live descendants (the server's model process) (Linux
    /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(cpu_seconds(child) or 0.0 for child in _children(pid))


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def client_run(url: str, files: list[Path], durations: dict[Path, float], clients: int, setting: str,
               key: str | None, pid: int | None = None) -> Run:
    work: queue.Queue[Path] = queue.Queue()
    for f in files:
        work.put(f)
    latencies: list[float] = []
    failures = [0]
    headers = {"Authorization": f"Bearer {key}"} if key else {}

    def client() -> None:
        with httpx.Client(timeout=600, headers=headers) as http:
            while True:
                try:
                    path = work.get_nowait()
                except queue.Empty:
                    return
                t0 = time.perf_counter()
                r = http.post(f"{url}/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                              data={"model": "bench"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    failures[0] += 1

    rows0, batches0, busy0 = batch_metrics(url)
    cpu0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu1 = cpu_seconds(pid)
    rows1, batches1, busy1 = batch_metrics(url)
    rows = (rows1 - rows0) / (batches1 - batches0) if batches1 > batches0 else None
    cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None
    return Run(setting, clients, sum(durations[f] for f in files), wall, latencies, rows, cpu, failures[0],
               busy=(busy1 - busy0) / wall)


# ---------------------------------------------------------------------- the offline CLI
def cli_run(args: argparse.Namespace, files: list[Path], batch: int, baseline: float | None = None) -> Run:
    """The CLI on ``files``; its RTFx line gives audio and wall time (model load excluded). CPU: the process's
    minus ``baseline`` (the CPU of the same command on one short file: imports, model load, one row)."""
    cmd = [sys.executable, "-m", "nemo_lite.cli", "transcribe", *map(str, files), "--model", args.model,
           "--batch-size", str(batch), "--quiet"] + _model_flags(args)
    before = _children_cpu()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(args))
    cpu = _children_cpu() - before
    m = re.search(r"([\d.]+) s of audio in ([\d.]+) s wall time", out.stderr)
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"CLI failed ({out.returncode}): {out.stderr[-2000:]}")
    return Run(f"offline CLI, batch {batch}", None, float(m.group(1)), float(m.group(2)), [], None,
               cpu - baseline if baseline is not None else cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best(run, repeat: int) -> Run:
    """The fastest of ``repeat`` runs: other jobs on a shared machine only ever slow a run down."""
    return max((run() for _ in range(repeat)), key=lambda r: r.throughput)


def _model_flags(args: argparse.Namespace) -> list[str]:
    flags = []
    for name in ("llm_path", "device", "dtype", "max_new_tokens", "quantize"):
        value = getattr(args, name)
        if value is not None:
            flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def _env(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # the CLI has no --threads: torch reads this at start
    return env


# ---------------------------------------------------------------------- report
def table(runs: list[Run], reference: float | None, header: str) -> str:
    lines = [header, "",
             "| setting | clients | throughput (audio s / s) | of offline CLI | p50 latency (s) | p95 latency (s) | "
             "rows / batch | CPU s / audio s | worker busy | wall (s) | failed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [r.row(reference) for r in runs]) + "\n"


def write_out(path: Path, text: str) -> None:
    block = f"{START}\n{text}{END}"
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if START in old and END in old:
        new = old[: old.index(START)] + block + old[old.index(END) + len(END):]
    else:
        new = old + ("\n" if old else "") + block + "\n"
    path.write_text(new, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tiny", action="store_true", help="write and serve a random tiny checkpoint")
    src.add_argument("--model", help="checkpoint to serve (started here)")
    src.add_argument("--url", help="a running server (client levels only)")
    p.add_argument("--files", help="folder of audio files (default: --n-files generated files of 1-12 s)")
    p.add_argument("--n-files", type=int, default=128,
                   help="generated files (default %(default)s: 8 requests per client at 16 clients, so the figure is "
                        "sustained load rather than the first burst, whose arrival fills the first batch partly)")
    p.add_argument("--clients", default="1,4,16", help="client levels (default %(default)s)")
    p.add_argument("--off-clients", default="1,16", help="client levels with --max-batch-size 1 (default %(default)s)")
    p.add_argument("--thread-clients", default="",
                   help="client levels with the model in the server's own process (--no-model-process), batching on "
                        "(default: none)")
    p.add_argument("--repeat", type=int, default=2, help="runs per measurement, the best kept (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="server --max-batch-size and CLI --batch-size")
    p.add_argument("--batch-wait-ms", type=float, default=10.0)
    p.add_argument("--threads", type=int, help="torch threads of the server worker and the CLI")
    p.add_argument("--max-new-tokens", type=int, help="per window, server and CLI alike")
    p.add_argument("--llm-path")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--quantize")
    p.add_argument("--api-key", help="for --url")
    p.add_argument("--out", help="markdown file to write the table into (between bench markers)")
    args = p.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        tmp_path = Path(tmp)
        if args.tiny:
            args.model = str(tiny_checkpoint(tmp_path))
        files = list_files(Path(args.files)) if args.files else generate_files(tmp_path, args.n_files)
        durations = {f: sf.info(str(f)).duration for f in files}
        print(f"{len(files)} files, {sum(durations.values()):.1f} s of audio", file=sys.stderr)
        runs: list[Run] = []
        reference = None
        if args.url:
            runs += [best(partial(client_run, args.url, files, durations, n, "server", args.api_key), args.repeat)
                     for n in levels]
        else:
            shortest = min(files, key=lambda f: durations[f])
            baseline = cli_run(args, [shortest], args.batch).cpu  # imports + model load + one short row
            clis = [cli_run(args, files, args.batch, baseline)]  # before and after the servers: the best counts
            off_levels = [int(c) for c in args.off_clients.split(",") if c.strip()]
            thread_levels = [int(c) for c in args.thread_clients.split(",") if c.strip()]
            for batch, batch_levels, own in ((args.batch, levels, True), (args.batch, thread_levels, False),
                                             (1, off_levels, True)):
                if not batch_levels:
                    continue
                proc, url = start_server(args, batch, own)
                try:
                    client_run(url, files[:2], durations, 1, "warm-up", None)
                    for n in batch_levels:
                        setting = f"serve, --max-batch-size {batch}" + ("" if own else ", --no-model-process")
                        runs.append(best(partial(client_run, url, files, durations, n, setting, None, proc.pid),
                                         args.repeat))
                        print(runs[-1].row(None), file=sys.stderr)
                finally:
                    proc.terminate()
                    proc.wait(120)
            clis += [cli_run(args, files, args.batch, baseline) for _ in range(max(1, args.repeat - 1))]
            runs.append(max(clis, key=lambda r: r.throughput))
            reference = runs[-1].throughput
        cores = os.cpu_count()
        header = (f"{len(files)} files, {sum(durations.values()):.1f} s of audio; best of {args.repeat}; model "
                  f"{'tiny random' if args.tiny else args.model or args.url}; max_new_tokens "
                  f"{args.max_new_tokens or 'default'}; threads {args.threads or 'default'}; {cores} CPUs; "
                  f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other jobs share the CPUs)")
        text = table(runs, reference, header)
        print(text)
        if args.out:
            write_out(Path(args.out), text)


if __name__ == "__main__":
    main()
