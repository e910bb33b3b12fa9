"""Speed, memory and fidelity of nemo_lite's modes, side by side with NeMo, in one run (GitHub issue 5).

Each system/mode runs alone in a fresh subprocess (``bench/_worker.py``), one after another (a full-size model in
fp32 is ~10 GB, NeMo's ~16 GB: never two at once). Per run: import time, load time, peak RSS (``ru_maxrss``),
mel+encoder time, prefill time, decode tokens/s and end-to-end RTFx (audio seconds / generate wall seconds) at
batch 1 and batch N (N clips built by repeating the audio set), threads fixed with ``torch.set_num_threads``.
Random weights never emit EOS, so every row decodes exactly ``--max-new-tokens`` tokens.

Fidelity vs exact mode (fp32, nemo_lite's default): the exact run's greedy ids are the path; each fast mode is
stepped along that same path (teacher forcing, KV cache as in greedy decoding) and compared per step: mean
KL(exact || mode) of the log-softmax and top-1 agreement. With ``--trained-ckpt DIR --manifest M.jsonl`` (NeMo
manifest lines: ``audio_filepath``, ``text``), every mode also transcribes the manifest: WER and top-1 agreement.

    python bench/bench.py --ckpt /tmp/nemo_lite_full/ckpt --nemo-python /work/nemo-venv/bin/python
    python bench/bench.py --smoke        # tiny random checkpoint, all code paths, ~1 min
    # GPU: the full-size random checkpoint built without NeMo, batches 1/32/128, NeMo bf16 + fp32 beside it
    python bench/bench.py --device cuda --build-full /tmp/full --modes exact bf16 --batch 32 128 \
        --nemo-python python3

The C++ peer (issue 16), optional: ``--peer-src DIR|URL`` builds CrispASR's Canary-Qwen library and quantizer from
its source, converts ``--ckpt`` with its converter, quantizes (``--peer-quants f16 q8_0 q4_k``) and times each quant
in its own process, interleaved with nemo_lite's modes; a "Side by side with CrispASR" table joins the report
(``bench/peer_crispasr.py``; bench/README.md says how, and which figures are the peer's own)::

    python bench/bench.py --ckpt /work/full/ckpt --llm-path /work/full/llm --no-nemo --modes exact int8 int4 \
        --audio a_5s.wav a_20s.wav --max-new-tokens 64 --repeats 2 --peer-src https://github.com/CrispStrobe/CrispASR

Writes ``bench.json`` and ``bench.md`` into ``--out`` (default bench/results/, git-ignored); prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "_worker.py"
DEFAULT_AUDIO = sorted((ROOT / "tests" / "data").glob("speech_*.wav"))
SAMPLE_RATE = 16000
GB = 1e9  # RSS is reported in decimal GB, as the targets are written


def package_modes() -> dict[str, dict]:
    """name -> CanaryQwen.from_pretrained keyword arguments: exact, bf16, every quantization the package offers
    (``nemo_lite.options.QUANT_MODES``: a mode added there is benchmarked without a change here), and the
    combinations below. int8 with bf16 is refused by the package (its dynamic int8 kernels take fp32 activations)
    and int8 with merged LoRA too (int8 weights cannot be unmerged)."""
    from nemo_lite.options import QUANT_MODES

    return {"exact": {}, "bf16": {"dtype": "bf16"}, **{q: {"quantize": q} for q in QUANT_MODES if q},
            "int8+bf16enc": {"quantize": "int8", "encoder_dtype": "bf16"},
            # pre-quantized directories (`nemo-lite quantize`, written once into --quant-dir, then loaded as they
            # are); "emb8": embedding as int8 rows (the int8 head's own tensors), "enc8": FastConformer linears int8
            "int8 pre": {"prequant": {"mode": "int8"}},
            "int8 pre emb8": {"prequant": {"mode": "int8", "embedding": "int8"}},
            "int8 pre enc8": {"prequant": {"mode": "int8", "encoder": "int8"}},
            "int8 pre emb8 enc8": {"prequant": {"mode": "int8", "embedding": "int8", "encoder": "int8"}},
            "int4 pre": {"prequant": {"mode": "int4"}},
            "int4 pre emb8 enc8": {"prequant": {"mode": "int4", "embedding": "int8", "encoder": "int8"}},
            "merged": {"merge_lora": True},
            "bf16+merged": {"dtype": "bf16", "merge_lora": True},
            "bf16+merged+compile": {"dtype": "bf16", "merge_lora": True, "compile": True}}  # CUDA only


MODES = package_modes()


def preset_names(mode: str) -> list[str]:
    """The package's presets (``nemo_lite.options.PRESETS``) that are this mode on the CPU."""
    from nemo_lite.options import PRESETS, load_options

    try:
        opts = load_options(**MODES[mode])
    except (ValueError, TypeError):  # refused here, or not a load option (a pre-quantized directory)
        return []
    return [name for name, preset in PRESETS.items() if preset == opts]
SMOKE_TEXTS = {  # what tests/data's espeak-ng clips say (scripts/make_parity_fixtures.py)
    "speech_short": "Hello world.",
    "speech_medium": "The quick brown fox jumps over the lazy dog near the river bank.",
    "speech_long": "Speech recognition turns spoken words into text. This clip is a little longer, "
                   "so that the encoder sees many frames and the prompt grows accordingly.",
}


# ---------------------------------------------------------------------- inputs
def audio_files(items: list[str] | None) -> list[Path]:
    if not items:
        return DEFAULT_AUDIO
    from nemo_lite.audio import AUDIO_EXTENSIONS

    files: list[Path] = []
    for item in map(Path, items):
        files += sorted(p for p in item.iterdir() if p.suffix.lower() in AUDIO_EXTENSIONS) if item.is_dir() else [item]
    if not files:
        raise SystemExit(f"no audio files in {items}")
    return files


def write_npz(arrays: list[np.ndarray], path: Path, encoder_clip: np.ndarray | None = None) -> Path:
    extra = {} if encoder_clip is None else {"encoder_clip": encoder_clip.astype(np.float32)}
    np.savez(path, **{f"clip{i}": a.astype(np.float32) for i, a in enumerate(arrays)}, **extra)
    return path


def read_manifest(path: Path, limit: int | None) -> tuple[list[Path], list[str]]:
    """NeMo manifest (JSON lines with ``audio_filepath`` and ``text``); relative paths are the manifest's."""
    files, texts = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        if "audio_filepath" not in row or "text" not in row:
            raise SystemExit(f"{path}:{n}: a manifest line needs 'audio_filepath' and 'text', got {sorted(row)}")
        audio = Path(row["audio_filepath"])
        files.append(audio if audio.is_absolute() else path.parent / audio)
        texts.append(row["text"])
    return files[:limit], texts[:limit]


NEMO_DTYPES = ("fp32", "bf16")  # NeMo runs: fp32 (its default, exact mode's reference) and bf16 (its GPU recipe)


def nemo_dtype(mode: str) -> str:
    """The NeMo run a nemo_lite mode's ids are compared with: same compute dtype."""
    return "bf16" if MODES[mode].get("dtype") == "bf16" else "fp32"


def build_full_checkpoint(work: Path) -> Path:
    """The full-size Canary-Qwen-2.5B architecture with random weights (``nemo_lite.testing``'s seeded recipe,
    bf16 like the hub) in ``work/ckpt``, its LLM config + tokenizer in ``work/llm``; NeMo is not needed. The key
    list equals what NeMo saves for this config (checked against scripts/make_parity_fixtures.py --full), so NeMo
    loads it too. Reused when present."""
    from nemo_lite import testing

    ckpt = work / "ckpt"
    if (ckpt / "model.safetensors").exists():
        return ckpt
    t0 = time.perf_counter()
    llm_dir = testing.write_llm_dir(work / "llm", testing.QWEN3_1_7B)
    cfg = testing.full_salm_config(llm_dir)
    testing.write_checkpoint(ckpt, cfg, testing.QWEN3_1_7B)
    print(f"[bench] full-size checkpoint written to {ckpt} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return ckpt


def warm_page_cache(ckpt: Path) -> float:
    """Read the weights file once so every run loads from the page cache, not from disk, whatever its turn."""
    t0 = time.perf_counter()
    with open(ckpt / "model.safetensors", "rb", buffering=0) as f:
        while f.read(1 << 26):
            pass
    return time.perf_counter() - t0


# ---------------------------------------------------------------------- running workers
def package_state() -> dict:
    """Which nemo_lite code ran: git HEAD, dirty flag, and a digest of the package sources as they are now (the
    repo may change under a long run; runs with different digests are flagged in the report)."""
    import hashlib

    def git(*cmd: str) -> str:
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    digest = hashlib.sha256()
    for path in sorted((ROOT / "nemo_lite").rglob("*.py")):
        digest.update(path.read_bytes())
    return {"head": git("rev-parse", "--short", "HEAD"), "dirty": bool(git("status", "--porcelain", "nemo_lite")),
            "sources": digest.hexdigest()[:12]}


def run_worker(python: str, job: dict, work: Path, log_dir: Path) -> dict:
    """One system/mode in a fresh process; its output goes to a log file, its result comes back as JSON."""
    name = re.sub(r"[^\w.-]", "_", f"{job['task']}-{job['system']}-{job['mode']}-r{job.get('round', 0)}")
    job_path, out_path = work / f"{name}.job.json", work / f"{name}.result.json"
    job_path.write_text(json.dumps(job))
    threads = str(job["threads"])
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "NEMO_LITE_QUANT_CACHE": "off"}  # "quantized at load" modes quantize at load in every round
    if job["omp_wait_policy"] != "default":
        env["OMP_WAIT_POLICY"] = job["omp_wait_policy"]
    print(f"[bench] {name} ...", end=" ", flush=True, file=sys.stderr)
    state = package_state()
    t0 = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.run([python, str(WORKER), str(job_path), str(out_path)], stdout=log, stderr=log,
                              env=env, cwd=ROOT)
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        tail = (log_dir / f"{name}.log").read_text().splitlines()[-15:]
        raise SystemExit(f"worker {name} failed (exit {proc.returncode}); log {log_dir / f'{name}.log'}:\n"
                         + "\n".join(tail))
    result = {**json.loads(out_path.read_text()), "package": state, "run_s": time.perf_counter() - t0}
    with open(log_dir / "runs.jsonl", "a") as f:  # each run as it ends: kept if a later run fails or is killed
        f.write(json.dumps(_without_ids(result)) + "\n")
    return result


def _without_ids(x):
    """``x`` with every ``ids`` entry dropped (the token lists; the timings stay)."""
    if isinstance(x, dict):
        return {k: _without_ids(v) for k, v in x.items() if k != "ids"}
    return x


def quantized_dir(args, spec: dict, trained: bool = False) -> Path:
    """The pre-quantized directory for ``spec`` (``nemo-lite quantize`` options) in ``--quant-dir``: written once
    (its time kept in ``quantize.json`` beside it), reused while its source is the same file (path and size).
    ``trained``: of ``--trained-ckpt`` (the WER runs), in ``--quant-dir``/trained so the two never overwrite."""
    spec = {"embedding": "narrow", "encoder": "narrow", **spec}
    ckpt, llm_path = (args.trained_ckpt, args.trained_llm_path) if trained else (args.ckpt, args.llm_path)
    base = Path(args.quant_dir) / "trained" if trained else Path(args.quant_dir)
    out = base / f"{spec['mode']}-emb_{spec['embedding']}-enc_{spec['encoder']}"
    src = Path(ckpt).resolve() / "model.safetensors"
    cfg_file = out / "nemo_lite_quant.json"
    if cfg_file.is_file():
        source = json.loads(cfg_file.read_text())["source"]
        if source["path"] == str(src.parent) and source["bytes"] == src.stat().st_size:
            return out
    cmd = [sys.executable, "-m", "nemo_lite.cli", "quantize", str(ckpt), "--mode", spec["mode"], "--out", str(out),
           "--embedding", spec["embedding"], "--encoder", spec["encoder"], "--threads", str(args.threads)]
    if llm_path:
        cmd += ["--llm-path", llm_path]
    print(f"[bench] {' '.join(cmd[3:])} ...", end=" ", flush=True, file=sys.stderr)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - t0
    print(f"{seconds:.0f} s", file=sys.stderr, flush=True)
    (out / "quantize.json").write_text(json.dumps({"quantize_s": seconds, "load_avg": os.getloadavg()[0]}))
    return out


def speed_runs(args, work: Path, log_dir: Path, npz: Path, arrays: list | None = None) -> tuple[list[dict], list[dict]]:
    """Every mode in a fresh worker, ``--rounds`` times over, interleaved (mode A, B, ..., then A, B, ... again);
    each mode's figures are the best of its rounds (:func:`best_of_rounds`). With ``--peer-src``, the peer's quants
    run in between (peer quant, nemo_lite mode, peer quant, ...), the best e2e of its rounds kept; NeMo's
    modes after. Returns (nemo_lite + NeMo runs, peer runs)."""
    base = {"task": "speed", "ckpt": str(args.ckpt), "llm_path": args.llm_path, "audio_npz": str(npz),
            "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "batches": args.batch,
            "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "device": args.device}
    fid_dir = work / "fidelity-speed"
    fid_dir.mkdir()
    dirs = {m: quantized_dir(args, MODES[m]["prequant"]) for m in args.modes if "prequant" in MODES[m]}
    rounds: dict[str, list[dict]] = {}
    peer_rounds: dict[str, list[dict]] = {}
    peer_quants = list(getattr(args, "peer_models", {}))
    for r in range(args.rounds):
        for i in range(max(len(args.modes), len(peer_quants))):
            if i < len(peer_quants):
                peer_rounds.setdefault(peer_quants[i], []).append(run_peer(args, peer_quants[i], arrays, work,
                                                                           log_dir))
            if i >= len(args.modes):
                continue
            mode = args.modes[i]
            role = None if "exact" not in args.modes else ("reference" if mode == "exact" else "compare")
            # from_pretrained's default dtype is bf16 off the CPU: name fp32 for the fp32 modes
            kwargs = {"dtype": "fp32", **MODES[mode]} if args.device != "cpu" else dict(MODES[mode])
            job = {**base, "system": "nemo_lite", "mode": mode, "kwargs": kwargs, "fidelity_role": role,
                   "fidelity_dir": str(fid_dir)}
            if mode in dirs:  # the directory carries its LLM config and tokenizer: loaded as a user would
                job.update(ckpt=str(dirs[mode]), llm_path=None, kwargs={})
            if r:  # fidelity is deterministic: measured in the first round
                job["fidelity_role"] = None
            rounds.setdefault(mode, []).append(run_worker(sys.executable, {**job, "round": r}, work, log_dir))
    runs = [best_of_rounds(rounds[m]) for m in args.modes]
    for run in runs:
        if run["mode"] in dirs:
            d = dirs[run["mode"]]
            run["quant_dir_gb"] = sum(f.stat().st_size for f in d.glob("model*.safetensors")) / GB
            if (d / "quantize.json").is_file():
                run["quantize_s"] = json.loads((d / "quantize.json").read_text())["quantize_s"]
    peer_runs = [min(peer_rounds[q], key=lambda run: sum(c["e2e_s"] for c in run["clips"])) for q in peer_quants]
    if args.nemo_python and not args.no_nemo:
        for dtype in args.nemo_dtypes:
            kwargs = {"dtype": "bf16"} if dtype == "bf16" else {}
            job = {**base, "system": "nemo", "mode": dtype, "kwargs": kwargs}
            try:
                runs.append(run_worker(args.nemo_python, job, work, log_dir))
            except SystemExit as err:  # the reference is optional: keep nemo_lite's figures, say what failed
                print(f"[bench] NeMo {dtype} failed, left out of the report: {err}", file=sys.stderr)
    return runs, peer_runs


# ---------------------------------------------------------------------- the C++ peer (CrispASR)
def prepare_peer(args) -> dict:
    """Build CrispASR, convert the checkpoint with its converter, quantize with its quantizer (each step reused
    when its output is in ``--peer-work``); sets ``args.peer_models`` (quant -> GGUF) and ``args.peer_bin``."""
    import peer_crispasr as peer

    work = args.peer_work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    tree, info = peer.prepare_source(args.peer_src, work, args.peer_ggml)
    bins = peer.build(tree, work, args.peer_jobs)
    f16 = peer.convert(tree, args.ckpt, Path(args.llm_path) if args.llm_path else None, work, args.peer_python)
    args.peer_models = {q: peer.quantize(bins["quantize"], f16, q) for q in args.peer_quants}
    args.peer_bin = bins["run"]
    return info


def run_peer(args, quant: str, arrays: list, work: Path, log_dir: Path) -> dict:
    import peer_crispasr as peer

    print(f"[bench] speed-crispasr-{quant} ...", end=" ", flush=True, file=sys.stderr)
    result = peer.run(args.peer_bin, args.peer_models[quant], arrays, args.threads, args.max_new_tokens, args.batch,
                      args.repeats, work, log_dir / f"speed-crispasr-{quant}.log", args.peer_measure_batch)
    result["mode"] = quant
    print(f"{result['run_s']:.0f} s", file=sys.stderr, flush=True)
    with open(log_dir / "runs.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    return result


def best_of_rounds(runs: list[dict]) -> dict:
    """One mode's runs (one per round) -> one: the fastest load, the lowest peak RSS and the fastest of each timed
    stage, fidelity from the round that measured it; every round's load time and load average kept."""
    best = dict(runs[0])
    best["load_s"] = min(r["load_s"] for r in runs)
    best["import_deps_s"] = min(r.get("import_deps_s", 0.0) for r in runs)
    for key in ("peak_rss_load", "peak_rss"):
        best[key] = min(r[key] for r in runs)
    best["perception"] = min((r["perception"] for r in runs), key=lambda t: t["wall_s"])
    best["b1"] = min((r["b1"] for r in runs), key=lambda t: t["wall_s"])
    best["batches"] = {n: min((r["batches"][n] for r in runs), key=lambda t: t["wall_s"]) for n in best["batches"]}
    best["fidelity"] = next((r["fidelity"] for r in runs if r.get("fidelity")), None)
    best["rounds"] = [{"load_s": r["load_s"], "peak_rss": r["peak_rss"], "load_avg": [r["load_avg_start"],
                                                                                     r["load_avg_end"]]}
                      for r in runs]
    best["load_avg_start"] = min(r["load_avg_start"] for r in runs)
    best["load_avg_end"] = max(r["load_avg_end"] for r in runs)
    return best


def quality_runs(args, work: Path, log_dir: Path) -> tuple[list[dict], list[str], float]:
    from nemo_lite.audio import load_audio

    files, refs = read_manifest(Path(args.manifest), args.max_utts)
    arrays = [load_audio(f) for f in files]
    npz = write_npz(arrays, work / "manifest_audio.npz")
    fid_dir = work / "fidelity-quality"
    fid_dir.mkdir()
    base = {"task": "quality", "ckpt": str(args.trained_ckpt), "llm_path": args.trained_llm_path,
            "audio_npz": str(npz), "max_new_tokens": args.quality_max_new_tokens, "batch": args.batch[0],
            "threads": args.threads, "omp_wait_policy": args.omp_wait_policy, "fidelity_dir": str(fid_dir)}
    runs = []
    for mode in args.modes:
        role = None if "exact" not in args.modes else ("reference" if mode == "exact" else "compare")
        job = {**base, "system": "nemo_lite", "mode": mode, "kwargs": MODES[mode], "fidelity_role": role}
        if "prequant" in MODES[mode]:  # a directory quantized from the trained checkpoint, loaded as a user would
            job.update(ckpt=str(quantized_dir(args, MODES[mode]["prequant"], trained=True)), llm_path=None,
                       kwargs={})
        runs.append(run_worker(sys.executable, job, work, log_dir))
    return runs, refs, sum(len(a) for a in arrays) / SAMPLE_RATE


# ---------------------------------------------------------------------- metrics
def normalize(text: str) -> list[str]:
    """Lower case, punctuation dropped (apostrophes kept), split on whitespace."""
    return re.sub(r"[^\w' ]+", " ", text.lower()).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions + deletions + insertions)."""
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def wer(refs: list[str], hyps: list[str]) -> float:
    """Corpus WER: all word errors over all reference words."""
    errors = sum(edit_distance(normalize(r), normalize(h)) for r, h in zip(refs, hyps, strict=True))
    return errors / max(1, sum(len(normalize(r)) for r in refs))


def derive(run: dict, audio_s: float, batch_audio_s: dict[int, float], encoder_clip_s: float | None = None) -> dict:
    """Per-run figures for the table from a worker's raw timings (``bN`` keys: one per large batch size N)."""
    b1 = run["b1"]
    out = {
        "perception_s_per_audio_s": run["perception"]["wall_s"] / (encoder_clip_s or audio_s),
        "prefill_b1_s": b1["prefill_s"] / len(b1["ids"]),
        "decode_b1_tok_s": b1["decode_steps"] / b1["decode_s"],
        "rtfx_b1": audio_s / b1["wall_s"],
        "peak_rss_gb": run["peak_rss"] / GB,
        "load_rss_gb": run["peak_rss_load"] / GB,
        "gpu_peak_gb": run["gpu_peak"] / GB if "gpu_peak" in run else None,
        "gpu_load_gb": run["gpu_peak_load"] / GB if "gpu_peak_load" in run else None,
    }
    for n, seconds in batch_audio_s.items():
        bn = run["batches"][str(n)]
        out[f"prefill_b{n}_s"] = bn["prefill_s"]
        out[f"decode_b{n}_tok_s"] = n * bn["decode_steps"] / bn["decode_s"]
        out[f"rtfx_b{n}"] = seconds / bn["wall_s"]
    return out


def same_rows(a: list[list[int]], b: list[list[int]]) -> float:
    """Fraction of rows whose ids are equal."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / max(1, len(a))


def summarize(runs: list[dict], lengths: list[int], batches: list[int], encoder_clip_s: float | None = None) -> None:
    """Add derived figures and id comparisons (vs exact, vs NeMo in the same dtype) to each run, in place.
    ``same_ids_as_*``: fraction of rows with equal ids, at batch 1 (``b1``) and per large batch (``bN``)."""
    audio_s = sum(lengths) / SAMPLE_RATE
    batch_audio_s = {n: sum(lengths[i % len(lengths)] for i in range(n)) / SAMPLE_RATE for n in batches}
    by_name = {(r["system"], r["mode"]): r for r in runs}
    exact = by_name.get(("nemo_lite", "exact"))
    for run in runs:
        run["derived"] = derive(run, audio_s, batch_audio_s, encoder_clip_s)
        nemo = by_name.get(("nemo", nemo_dtype(run["mode"]))) if run["system"] == "nemo_lite" else None
        for other, key in ((exact, "same_ids_as_exact"), (nemo, "same_ids_as_nemo")):
            if other is not None:
                run[key] = {"b1": same_rows(run["b1"]["ids"], other["b1"]["ids"]),
                            "bN": {str(n): same_rows(run["batches"][str(n)]["ids"], other["batches"][str(n)]["ids"])
                                   for n in batches}}


def all_same(same: dict | None) -> bool:
    return same is not None and same["b1"] == 1 and all(v == 1 for v in same["bN"].values())


def cpu_target_batch(batches: list[int]) -> int:
    """The large batch the CPU throughput target names (8), or the largest measured."""
    return 8 if 8 in batches else max(batches)


def eligible_modes(quality: dict | None) -> set[str] | None:
    """Modes whose WER on the trained checkpoint is within 0.5 points of exact mode's (None: no WER measured)."""
    if not quality or "exact" not in quality["wer"]:
        return None
    return {m for m, w in quality["wer"].items() if w <= quality["wer"]["exact"] + 0.005}


def targets(runs: list[dict], batches: list[int], device: str = "cpu",
            eligible: set[str] | None = None) -> list[tuple[str, str, str, bool | None]]:
    """The issue's targets: (target, measured, goal, met). CPU: the issue's list; GPU: ids vs NeMo fp32 and
    throughput vs NeMo bf16 at every batch size ("on a GPU it should at least match NeMo's throughput").
    ``eligible``: the modes within 0.5 WER points of exact (:func:`eligible_modes`); the "fastest mode" rows pick
    among them, or among all modes (said in the row) when no WER was measured in the run."""
    lite = {r["mode"]: r for r in runs if r["system"] == "nemo_lite"}
    nemo = {r["mode"]: r for r in runs if r["system"] == "nemo"}
    rows: list[tuple[str, str, str, bool | None]] = []
    if device != "cpu":
        if "exact" in lite and "fp32" in nemo:
            same = all_same(lite["exact"].get("same_ids_as_nemo"))
            rows.append(("exact (fp32) ids == NeMo fp32 ids, every batch", str(same), "True", same))
        bf16 = [r for m, r in lite.items() if nemo_dtype(m) == "bf16"]
        if bf16 and "bf16" in nemo:
            n = nemo["bf16"]["derived"]
            for b in [1, *batches]:
                fast = max(bf16, key=lambda r: r["derived"][f"rtfx_b{b}"])
                f = fast["derived"][f"rtfx_b{b}"]
                rows.append((f"RTFx batch {b}: nemo_lite {fast['mode']} vs NeMo bf16",
                             f"{f:.1f} vs {n[f'rtfx_b{b}']:.1f} ({f / n[f'rtfx_b{b}']:.2f}x)", ">= NeMo",
                             f >= n[f"rtfx_b{b}"]))
            g, gn = lite.get("bf16", bf16[0])["derived"]["gpu_peak_gb"], n["gpu_peak_gb"]
            if g is not None and gn is not None:
                rows.append(("peak GPU memory, bf16 vs NeMo bf16", f"{g:.1f} vs {gn:.1f} GB", "<= NeMo", g <= gn))
        return rows
    batch = cpu_target_batch(batches)
    if "exact" in lite:
        e = lite["exact"]
        rows += [("import (from nemo_lite import CanaryQwen)", f"{e['import_s']:.2f} s", "<= 2 s", e["import_s"] <= 2),
                 ("load, exact", f"{e['load_s']:.1f} s", "<= 15 s", e["load_s"] <= 15),
                 ("peak RSS, exact", f"{e['derived']['peak_rss_gb']:.2f} GB", "<= 11 GB",
                  e["derived"]["peak_rss_gb"] <= 11)]
    if "bf16" in lite:
        gb = lite["bf16"]["derived"]["peak_rss_gb"]
        rows.append(("peak RSS, bf16", f"{gb:.2f} GB", "<= 6 GB", gb <= 6))
    ref = nemo.get("fp32")
    if "exact" in lite and ref is not None:
        e = lite["exact"]
        same = all_same(e.get("same_ids_as_nemo"))
        rows.append(("exact ids == NeMo ids (batch 1 and every batch N)", str(same), "True", same))
        le, ln = e["derived"]["decode_b1_tok_s"], ref["derived"]["decode_b1_tok_s"]
        rows.append(("decode tok/s exact vs NeMo (batch 1)", f"{le:.2f} vs {ln:.2f}", ">= NeMo", le >= ln))
    pool = [r for m, r in lite.items() if eligible is None or m in eligible]
    if pool:
        fast = max(pool, key=lambda r: r["derived"]["rtfx_b1"])
        which = "fastest mode" if eligible is None else "fastest mode within 0.5 WER points of exact"
        f1, fn = fast["derived"]["rtfx_b1"], fast["derived"][f"rtfx_b{batch}"]
        if ref is not None:
            n1 = ref["derived"]["rtfx_b1"]
            rows.append((f"{which} ({fast['mode']}) RTFx b1 vs NeMo", f"{f1:.2f} vs {n1:.2f} ({f1 / n1:.2f}x)",
                         ">= 2x", f1 >= 2 * n1))
        b1 = fast["b1"]
        ceiling = b1["wall_s"] / max(b1["wall_s"] - b1["decode_s"], 1e-9)
        rows.append((f"{which} ({fast['mode']}) batch-{batch} / batch-1 throughput", f"{fn / f1:.2f}x "
                     f"(ceiling if batching made decoding free: {ceiling:.2f}x)", ">= 4x", fn >= 4 * f1))
    return rows


# ---------------------------------------------------------------------- report
def fmt(value, spec: str = ".2f") -> str:
    return "–" if value is None else format(value, spec)


def _same_cell(same: dict | None) -> str:
    if same is None:
        return "–"
    if all_same(same):
        return "yes"
    parts = [f"b1 {same['b1']:.0%}"] + [f"b{n} {v:.0%}" for n, v in same["bN"].items()]
    return "rows equal: " + ", ".join(parts)


def speed_table(runs: list[dict], batches: list[int]) -> list[str]:
    gpu = any(r.get("gpu_peak") is not None for r in runs)
    head = ["system / mode", "import (s)", "load (s)", "peak RSS: load / end (GB)"]
    head += ["peak GPU mem: load / end (GB)"] if gpu else []
    head += ["mel+enc (s / audio s)", "prefill b1 (s)", *[f"prefill b{n} (s)" for n in batches], "decode b1 (tok/s)",
             *[f"decode b{n} (tok/s)" for n in batches], "RTFx b1", *[f"RTFx b{n}" for n in batches],
             *[f"b{n}/b1" for n in batches], "KL vs exact", "top-1 vs exact", "ids = exact", "ids = NeMo", "CPU use",
             "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        d, fid = r["derived"], r.get("fidelity") or {}
        imp = (f"{r['import_pkg_s']:.2f} / {r['import_s']:.2f}" if "import_pkg_s" in r else f"{r['import_s']:.2f}")
        name = f"NeMo 3.0.0 ({r['mode']})" if r["system"] == "nemo" else f"nemo_lite {r['mode']}"
        cells = [name, imp, f"{r['load_s']:.1f}", f"{d['load_rss_gb']:.2f} / {d['peak_rss_gb']:.2f}"]
        if gpu:
            cells.append(f"{fmt(d['gpu_load_gb'])} / {fmt(d['gpu_peak_gb'])}")
        cells += [f"{d['perception_s_per_audio_s']:.4f}", f"{d['prefill_b1_s']:.3f}",
                  *[f"{d[f'prefill_b{n}_s']:.3f}" for n in batches], f"{d['decode_b1_tok_s']:.2f}",
                  *[f"{d[f'decode_b{n}_tok_s']:.1f}" for n in batches], f"{d['rtfx_b1']:.2f}",
                  *[f"{d[f'rtfx_b{n}']:.2f}" for n in batches],
                  *[f"{d[f'rtfx_b{n}'] / d['rtfx_b1']:.2f}" for n in batches],
                  fmt(fid.get("kl_mean"), ".2e"), fmt(fid.get("top1"), ".3f"),
                  _same_cell(r.get("same_ids_as_exact")),
                  _same_cell(r.get("same_ids_as_nemo")), f"{r['cpu_util']:.2f}",
                  f"{r['load_avg_start']:.1f}→{r['load_avg_end']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def load_table(runs: list[dict], batches: list[int], clip_s: float | None) -> list[str]:
    """Issue 16's view: load, memory, encoder, decode and fidelity per mode, quantized at load vs pre-quantized."""
    head = ["mode", "import transformers+peft (s)", "load (s), each round", "peak RSS after load / end (GB)",
            "weights on disk (GB)",
            f"encoder {clip_s or 0:.0f} s clip (s)", "decode b1 (tok/s)", *[f"decode b{n} (tok/s)" for n in batches],
            "KL vs exact", "top-1 vs exact", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        d, fid = r["derived"], r.get("fidelity") or {}
        loads = " / ".join(f"{x['load_s']:.1f}" for x in r.get("rounds", [r]))
        disk = f"{r['quant_dir_gb']:.2f}" if "quant_dir_gb" in r else "–"
        cells = [r["mode"], fmt(r.get("import_deps_s")), f"{r['load_s']:.1f} ({loads})",
                 f"{d['load_rss_gb']:.2f} / {d['peak_rss_gb']:.2f}", disk,
                 f"{r['perception']['wall_s']:.2f}", f"{d['decode_b1_tok_s']:.2f}",
                 *[f"{d[f'decode_b{n}_tok_s']:.1f}" for n in batches], fmt(fid.get("kl_mean"), ".2e"),
                 fmt(fid.get("top1"), ".3f"), f"{r['load_avg_start']:.1f}→{r['load_avg_end']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _stage_total(clips: list[dict], key: str) -> float | None:
    """Sum of a per-clip stage time, or None where the peer did not print it."""
    vals = [c[key] for c in clips]
    return None if any(v is None for v in vals) else sum(vals)


def peer_table(runs: list[dict], peer_runs: list[dict], lengths: list[int], clip_names: list[str],
               batches: list[int]) -> list[str]:
    """nemo_lite's modes and the peer's quants side by side, in the same units (one row per run, in run order)."""
    audio_s = sum(lengths) / SAMPLE_RATE
    batch_audio_s = {n: sum(lengths[i % len(lengths)] for i in range(n)) / SAMPLE_RATE for n in batches}
    head = ["system", "load (s)", "peak RSS (GB)", "mel+enc (s / audio s)", "prefill b1 (s)", "decode b1 (tok/s)",
            *[f"e2e {c} (s)" for c in clip_names], "RTFx b1", *[f"e2e b{n} (s)" for n in batches],
            *[f"RTFx b{n}" for n in batches], "new tokens / row", "CPU use", "load avg"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        if r["system"] != "nemo_lite":
            continue
        d, calls = r["derived"], r["b1"].get("calls", [])
        walls = [f"{c['wall_s']:.2f}" for c in calls] or ["–"] * len(clip_names)
        toks = sorted({len(row) for row in r["b1"]["ids"]})
        lines.append("| " + " | ".join([
            f"nemo_lite {r['mode']}", f"{r['load_s']:.1f}", f"{d['peak_rss_gb']:.2f}",
            f"{d['perception_s_per_audio_s']:.4f}", f"{d['prefill_b1_s']:.3f}", f"{d['decode_b1_tok_s']:.2f}", *walls,
            f"{d['rtfx_b1']:.2f}", *[f"{r['batches'][str(n)]['wall_s']:.2f}" for n in batches],
            *[f"{d[f'rtfx_b{n}']:.2f}" for n in batches], "/".join(map(str, toks)), f"{r['cpu_util']:.2f}",
            f"{r['load_avg_start']:.1f}→{r['load_avg_end']:.1f}"]) + " |")
    for r in peer_runs:
        clips = r["clips"]
        mel, enc, pre, dec = (_stage_total(clips, k) for k in ("mel_s", "enc_s", "prefill_s", "decode_s"))
        e2e = sum(c["e2e_s"] for c in clips)
        toks = sorted({c["n_tokens"] for c in clips})
        lines.append("| " + " | ".join([
            f"CrispASR {r['mode'].upper()}", f"{r['load_s']:.1f}", f"{r['peak_rss'] / GB:.2f}",
            fmt(None if mel is None or enc is None else (mel + enc) / audio_s, ".4f"),
            fmt(None if pre is None else pre / len(clips), ".3f"),
            fmt(None if not dec else sum(c["n_tokens"] for c in clips) / dec, ".2f"),
            *[f"{c['e2e_s']:.2f}" for c in clips], f"{audio_s / e2e:.2f}",
            *[f"{r['batches'][str(n)]['e2e_s']:.2f}" for n in batches],
            *[f"{batch_audio_s[n] / r['batches'][str(n)]['e2e_s']:.2f}" for n in batches],
            "/".join(map(str, toks)), f"{r['cpu_use']:.2f}",
            f"{r['load_avg'][0]:.1f}→{r['load_avg'][1]:.1f}"]) + " |")
    return lines


PEER_NOTE = (
    "CrispASR rows: its Canary-Qwen library (`src/canary_qwen.cpp`, commit {commit}; ggml: {ggml}) driven by "
    "`bench/peer/peer_canary_qwen.cpp` through its public C API, as its `crispasr --backend canary-qwen` CLI does "
    "(flash attention on, greedy, `--max-new-tokens`); GGUFs by its own converter (LoRA merged into q/v) and "
    "quantizer. Its own figures (`CRISPASR_CANARY_QWEN_BENCH=1` stage timings): mel+enc (mel + encoder + "
    "projection), prefill, decode (forwards per second over its decode loop: one forward per new token). Ours: load "
    "(`canary_qwen_init_from_file`), e2e (`canary_qwen_transcribe_ex` wall), peak RSS (`wait4` ru_maxrss of the "
    "process: load + all runs). The library has no batch API: its batch-N figures are N transcriptions one after "
    "another ({batch_how}). CPU use: whole process, load included.")


def quality_table(runs: list[dict], refs: list[str]) -> list[str]:
    exact = next((r for r in runs if r["mode"] == "exact"), None)
    lines = ["| mode | WER | top-1 vs exact | KL vs exact | same text as exact |", "|---|---|---|---|---|"]
    for r in runs:
        fid = r.get("fidelity") or {}
        same = None if exact is None else sum(a == b for a, b in zip(r["texts"], exact["texts"], strict=True))
        presets = preset_names(r["mode"]) if r["mode"] in MODES else []
        name = r["mode"] + (f" (preset {', '.join(presets)})" if presets else "")
        lines.append(f"| {name} | {wer(refs, r['texts']):.3f} | {fmt(fid.get('top1'), '.3f')} | "
                     f"{fmt(fid.get('kl_mean'), '.2e')} | {'–' if same is None else f'{same}/{len(refs)}'} |")
    return lines


def report(meta: dict, runs: list[dict], quality: dict | None, batches: list[int],
           peer_runs: list[dict] | None = None) -> str:
    clips = ", ".join(f"{n} ({s:.1f} s)" for n, s in zip(meta["clips"], meta["clip_seconds"], strict=True))
    gpu = next((f" ({r['gpu_name']})" for r in runs if r.get("gpu_name")), "")
    out = [f"# nemo_lite benchmark — {meta['date']}", "",
           f"Checkpoint `{meta['ckpt']}`; device {meta['device']}{gpu}; clips: {clips}; batches "
           f"{', '.join(map(str, batches))} = the clips repeated; "
           f"max_new_tokens {meta['max_new_tokens']}; {meta['threads']} threads, OMP_WAIT_POLICY "
           f"{meta['omp_wait_policy']}; best of {meta['repeats']}; "
           f"CPU: {meta['cpu']} ({meta['cores']} cores); torch {meta['torch']}; page-cache warm-up "
           f"{meta['cache_warm_s']:.1f} s.", "",
           "Import: nemo_lite `import nemo_lite` / `from nemo_lite import CanaryQwen`; NeMo `from "
           "nemo.collections.speechlm2.models import SALM`. RTFx: audio seconds / generate() wall seconds (mel, "
           "encoder, prefill and decode). Decode tok/s: new tokens (all rows) per second after the prefill. "
           "CPU use: CPU seconds / wall seconds of the timed part (about the thread count when the run had the cores "
           "to itself). Load avg: 1-min load average at the run's start → end (above the core count: other work "
           "competed).", ""]
    out += speed_table(runs, batches)
    if any("rounds" in r for r in runs):
        out += ["", f"Load and memory (best of {meta['rounds']} interleaved processes; encoder on one "
                    f"{meta.get('encoder_clip_s') or 0:.0f} s clip):", ""]
        out += load_table(runs, batches, meta.get("encoder_clip_s"))
    if peer_runs:
        how = ("run in one process" if all(b.get("measured") for r in peer_runs for b in r["batches"].values())
               else "the sum of the best batch-1 times of those clips")
        out += ["", "## Side by side with CrispASR", "", PEER_NOTE.format(**meta["peer"], batch_how=how), "",
                f"CPU: {meta.get('cpu_isa', meta['cpu'])}.", ""]
        out += peer_table(runs, peer_runs, meta["clip_samples"], meta["clips"], batches)
    states = {json.dumps(r["package"], sort_keys=True) for r in runs if r["system"] == "nemo_lite"}
    if states:
        pkg = runs[0]["package"]
        out += ["", f"nemo_lite code: HEAD {pkg['head']}{' + uncommitted changes' if pkg['dirty'] else ''}, "
                    f"sources digest {pkg['sources']}."]
        if len(states) > 1:
            out.append("**Warning: the nemo_lite sources changed during this run; its rows measured different "
                       "code** (see `package` per run in bench.json).")
    rows = targets(runs, batches, meta["device"], eligible_modes(quality))
    if rows:
        out += ["", "| target | measured | goal | met |", "|---|---|---|---|"]
        out += [f"| {t} | {m} | {g} | {'yes' if ok else 'NO'} |" for t, m, g, ok in rows]
    if quality:
        out += ["", f"Trained checkpoint `{quality['ckpt']}`, manifest `{quality['manifest']}` "
                    f"({len(quality['refs'])} utterances, {quality['audio_s']:.0f} s):", ""]
        out += quality_table(quality["runs"], quality["refs"])
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- main
def smoke_setup(args, tmp: Path) -> None:
    """A tiny random checkpoint used as both the speed and the 'trained' model, with a manifest of the clips."""
    from nemo_lite.testing import tiny_salm_config, write_checkpoint, write_llm_dir

    ckpt = write_checkpoint(tmp / "tiny", tiny_salm_config(write_llm_dir(tmp / "tiny" / "llm")))
    manifest = tmp / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(p), "text": SMOKE_TEXTS.get(p.stem, "")}) + "\n"
                                for p in DEFAULT_AUDIO))
    args.ckpt = args.ckpt or ckpt
    args.trained_ckpt = args.trained_ckpt or ckpt
    args.manifest = args.manifest or manifest


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt", type=Path, help="checkpoint dir (config.json + model.safetensors)")
    p.add_argument("--llm-path", help="LLM config + tokenizer dir, if the checkpoint's pretrained_llm is unreachable")
    p.add_argument("--audio", nargs="+", help="audio files or dirs (default: tests/data/speech_*.wav)")
    p.add_argument("--nemo-python", default=os.environ.get("NEMO_PYTHON"),
                   help="NeMo's python, to run the reference side by side (default: $NEMO_PYTHON)")
    p.add_argument("--no-nemo", action="store_true", help="skip NeMo even if --nemo-python / $NEMO_PYTHON is set")
    p.add_argument("--modes", nargs="+", choices=list(MODES),
                   help="nemo_lite modes; 'exact' is the fidelity reference (default: all for the device)")
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens decoded per row (default 16)")
    p.add_argument("--batch", type=int, nargs="+", default=[8],
                   help="the large batch sizes, each one generate() call (default 8; e.g. 32 128 on a GPU)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--nemo-dtypes", nargs="+", choices=NEMO_DTYPES,
                   help="NeMo runs (default: fp32 on CPU; bf16 and fp32 on a GPU)")
    p.add_argument("--build-full", type=Path, metavar="DIR",
                   help="write the full-size random checkpoint into DIR (no NeMo needed; reused if present) and "
                        "benchmark it")
    p.add_argument("--repeats", type=int, default=1, help="timed repetitions, the fastest kept (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every mode this many times, interleaved, each in a fresh process; the best of each "
                        "figure is kept (load time and peak RSS are one per process; default 1)")
    p.add_argument("--encoder-clip-seconds", type=float,
                   help="time mel+encoder on one clip of this length (the audio set tiled) instead of the clips")
    p.add_argument("--quant-dir", type=Path,
                   help="where the pre-quantized modes' directories are written once and reused (default "
                        "OUT/quantized)")
    p.add_argument("--quant", action="store_true",
                   help="issue 16's table: exact, int8 and int4 quantized at load and every pre-quantized variant, "
                        "2 rounds, encoder on a 20 s clip, no NeMo (flags given explicitly still win)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every run (default 2)")
    p.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                   help="OMP_WAIT_POLICY of every run (default PASSIVE: on a shared CPU, spinning OpenMP threads "
                        "take the core from the thread they wait for and timings swing ~10x; 'default': unset)")
    p.add_argument("--trained-ckpt", type=Path, help="a trained checkpoint for WER per mode (with --manifest)")
    p.add_argument("--trained-llm-path", help="--llm-path for the trained checkpoint")
    p.add_argument("--manifest", type=Path, help="JSON lines: audio_filepath, text")
    p.add_argument("--max-utts", type=int, default=200, help="manifest lines used at most (default 200)")
    p.add_argument("--quality-max-new-tokens", type=int, default=128, help="token budget per utterance (WER runs)")
    p.add_argument("--no-speed", action="store_true", help="only the trained-checkpoint WER runs")
    p.add_argument("--smoke", action="store_true", help="tiny random checkpoint for --ckpt and --trained-ckpt")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output dir (default bench/results)")
    g = p.add_argument_group("the C++ peer, CrispASR (optional; see bench/peer_crispasr.py)")
    g.add_argument("--peer-src", metavar="DIR|URL",
                   help="CrispASR source: a checkout, or a git URL cloned with --recursive into --peer-work")
    g.add_argument("--peer-ggml", metavar="DIR|URL[@REF]",
                   help="fills the checkout's ggml submodule when it is empty (upstream ggml gets a shim for the "
                        "fork's ops)")
    g.add_argument("--peer-quants", nargs="+", default=["f16", "q8_0", "q4_k"],
                   help="GGUF types timed: f16 (the converter's) and crispasr-quantize types (default f16 q8_0 q4_k)")
    g.add_argument("--peer-work", type=Path, default=ROOT / "bench" / "results" / "peer",
                   help="build dir, GGUFs and a clone (reused between runs; default bench/results/peer)")
    g.add_argument("--peer-python", default=sys.executable,
                   help="python for the peer's converter (needs gguf, safetensors, torch; default this one)")
    g.add_argument("--peer-jobs", type=int, default=2, help="parallel compile jobs (nice 19; default 2)")
    g.add_argument("--peer-measure-batch", action="store_true",
                   help="run the peer's batch N as N transcriptions in a row (default: the sum of its batch-1 times "
                        "of those clips; the library has no batch API, so the work is the same)")
    args = p.parse_args()
    if args.peer_src and args.device != "cpu":
        p.error("the CrispASR column is a CPU comparison")
    if args.trained_ckpt and not args.manifest:
        p.error("--trained-ckpt needs --manifest")
    if not args.smoke and not args.ckpt and not args.no_speed and not args.build_full:
        p.error("--ckpt is required (or --build-full, --smoke, or --no-speed with --trained-ckpt)")
    if args.quant:
        args.modes = args.modes or ["exact", "int8", "int4", *[m for m in MODES if "prequant" in MODES[m]]]
        args.rounds = max(args.rounds, 2)
        args.encoder_clip_seconds = args.encoder_clip_seconds or 20.0
        args.no_nemo = True
    if args.modes is None:  # the pre-quantized modes only when named (they write directories)
        args.modes = [m for m in MODES if not MODES[m].get("compile" if args.device == "cpu" else "quantize")
                      and "prequant" not in MODES[m]]
    args.quant_dir = args.quant_dir or args.out / "quantized"
    if args.device != "cpu" and any(MODES[m].get("quantize") or "prequant" in MODES[m] for m in args.modes):
        p.error("the int8 modes are CPU modes; on a GPU use exact, bf16, merged, bf16+merged(+compile)")
    if args.device == "cpu" and any(MODES[m].get("compile") for m in args.modes):
        p.error("the compile mode is a CUDA mode")
    if args.nemo_dtypes is None:
        args.nemo_dtypes = ["fp32"] if args.device == "cpu" else ["bf16", "fp32"]
    args.modes = sorted(set(args.modes), key=list(MODES).index)  # exact first: the others compare against it
    return args


def main() -> None:
    args = parse_args()
    import torch  # only for the version string; the models run in the workers

    from nemo_lite.audio import load_audio

    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs"
    log_dir.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nemo_lite_bench_") as tmp:
        work = Path(tmp)
        if args.smoke:
            smoke_setup(args, work)
        if args.build_full:
            args.ckpt = build_full_checkpoint(args.build_full)
        files = audio_files(args.audio)
        arrays = [load_audio(f) for f in files]
        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "ckpt": str(args.ckpt),
                "clips": [f.stem for f in files], "clip_seconds": [len(a) / SAMPLE_RATE for a in arrays],
                "max_new_tokens": args.max_new_tokens, "batch": args.batch, "threads": args.threads,
                "device": args.device,
                "omp_wait_policy": args.omp_wait_policy,
                "repeats": args.repeats, "rounds": args.rounds, "cpu": cpu, "cores": os.cpu_count(),
                "torch": torch.__version__,
                "python": sys.version.split()[0], "nemo_python": args.nemo_python, "modes": args.modes,
                "cache_warm_s": 0.0, "clip_samples": [len(a) for a in arrays]}
        try:
            from nemo_lite.cpu import describe

            meta["cpu_isa"] = describe()
        except ImportError:
            pass
        runs: list[dict] = []
        peer_runs: list[dict] = []
        if not args.no_speed:
            if args.peer_src:
                meta["peer"] = prepare_peer(args)
            meta["cache_warm_s"] = warm_page_cache(args.ckpt)
            encoder_clip = None
            if args.encoder_clip_seconds:
                encoder_clip = np.resize(np.concatenate(arrays), int(args.encoder_clip_seconds * SAMPLE_RATE))
                meta["encoder_clip_s"] = args.encoder_clip_seconds
            runs, peer_runs = speed_runs(args, work, log_dir, write_npz(arrays, work / "audio.npz", encoder_clip),
                                         arrays)
            summarize(runs, [len(a) for a in arrays], args.batch, args.encoder_clip_seconds)
        quality = None
        if args.trained_ckpt:
            q_runs, refs, audio_s = quality_runs(args, work, log_dir)
            quality = {"ckpt": str(args.trained_ckpt), "manifest": str(args.manifest), "refs": refs,
                       "audio_s": audio_s, "runs": q_runs, "wer": {r["mode"]: wer(refs, r["texts"]) for r in q_runs}}
    text = report(meta, runs, quality, args.batch, peer_runs) if runs else report_quality_only(meta, quality)
    rows = targets(runs, args.batch, args.device, eligible_modes(quality)) if runs else []
    (args.out / "bench.json").write_text(json.dumps({"meta": meta, "runs": runs, "peer_runs": peer_runs,
                                                     "quality": quality, "targets": rows}, indent=1))
    (args.out / "bench.md").write_text(text)
    print(text)


def report_quality_only(meta: dict, quality: dict | None) -> str:
    if quality is None:
        return "nothing measured\n"
    return "\n".join([f"# nemo_lite WER per mode — {meta['date']}", "", *quality_table(quality["runs"],
                                                                                       quality["refs"])]) + "\n"


if __name__ == "__main__":
    main()
