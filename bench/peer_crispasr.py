"""The C++ peer, CrispASR (github.com/CrispStrobe/CrispASR), as an optional system of ``bench/bench.py``.

Built from its public source (a directory or a git URL; nothing of it is committed here), its Canary-Qwen converter
run on the same checkpoint as nemo_lite, its own quantizer for Q8_0 / Q4_K, and its Canary-Qwen library timed by
``bench/peer/peer_canary_qwen.cpp`` (ours: a ~100-line driver of the peer's public C API, ``src/canary_qwen.h``,
doing what its ``crispasr --backend canary-qwen`` CLI does). Only the pieces needed are compiled (the peer's CLI
links ~110 libraries: over an hour on 2 cores).

Steps, each reused when its output exists (``--peer-work DIR``, default ``bench/results/peer``):

1. source: ``--peer-src DIR`` is used as it is; ``--peer-src URL`` is cloned (``git clone --recursive``) into
   ``DIR/src``. If its ``ggml`` submodule is empty (a clone without submodules), ``--peer-ggml DIR|URL[@REF]`` fills
   it. CrispASR pins a fork of ggml (CrispStrobe/ggml, v0.10.2 + its own ops); with upstream ggml the four fork ops
   its Canary-Qwen path calls are supplied by :data:`GGML_SHIM` from upstream ops (see :func:`apply_ggml_shim`),
   and the run is labelled so.
2. build: CMake + the compiler, ``nice -n 19``, ``-j`` ``--peer-jobs``, CPU only, targets ``peer-canary-qwen`` and
   ``peer-quantize`` added to the peer's own CMake project by ``bench/peer/targets.cmake``.
3. convert: ``models/convert-canary-qwen-to-gguf.py`` (the peer's) with ``--peer-python`` (needs ``gguf``,
   ``safetensors``, ``torch``, ``numpy``), input = the checkpoint + the LLM dir's ``tokenizer.json``. F16 GGUF.
4. quantize: the peer's ``crispasr-quantize`` source, F16 -> ``q8_0``, ``q4_k``, ...
5. run: one process per quant, interleaved with nemo_lite's modes by bench.py; see :func:`run`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
GB = 1e9

# The fork-only ggml functions CrispASR's Canary-Qwen path (src/canary_qwen.cpp, src/core/*.h) calls, written with
# upstream ops. Same results up to float rounding; the fused fork kernels save a few elementwise passes (LayerNorm,
# GLU: well under 1 % of the FLOPs). ggml_col2im_1d is only declared (TTS decoders; unused here).
GGML_SHIM_H = """
// ---- nemo_lite bench shim: CrispStrobe/ggml ops missing from upstream ggml (bench/peer_crispasr.py) ----
#ifdef __cplusplus
extern "C" {
#endif
GGML_API struct ggml_tensor * ggml_norm_affine(struct ggml_context * ctx, struct ggml_tensor * a,
                                               struct ggml_tensor * w, struct ggml_tensor * b, float eps);
GGML_API struct ggml_tensor * ggml_siglu_swapped(struct ggml_context * ctx, struct ggml_tensor * a);
GGML_API struct ggml_tensor * ggml_col2im_1d(struct ggml_context * ctx, struct ggml_tensor * col, int s0, int oc,
                                             int p0);
#ifdef __cplusplus
}
#endif
"""
GGML_SHIM_C = """
// ---- nemo_lite bench shim: CrispStrobe/ggml ops missing from upstream ggml (bench/peer_crispasr.py) ----
struct ggml_tensor * ggml_norm_affine(struct ggml_context * ctx, struct ggml_tensor * a,
                                      struct ggml_tensor * w, struct ggml_tensor * b, float eps) {
    return ggml_add(ctx, ggml_mul(ctx, ggml_norm(ctx, a, eps), w), b);  // w * norm(a) + b
}

struct ggml_tensor * ggml_siglu_swapped(struct ggml_context * ctx, struct ggml_tensor * a) {
    // torch.nn.functional.glu along ne[0]: first half * sigmoid(second half)
    const int64_t n = a->ne[0] / 2;
    struct ggml_tensor * x = ggml_view_4d(ctx, a, n, a->ne[1], a->ne[2], a->ne[3], a->nb[1], a->nb[2], a->nb[3], 0);
    struct ggml_tensor * g = ggml_view_4d(ctx, a, n, a->ne[1], a->ne[2], a->ne[3], a->nb[1], a->nb[2], a->nb[3],
                                          n * ggml_element_size(a));
    return ggml_mul(ctx, ggml_cont(ctx, x), ggml_sigmoid(ctx, ggml_cont(ctx, g)));
}

struct ggml_tensor * ggml_col2im_1d(struct ggml_context * ctx, struct ggml_tensor * col, int s0, int oc, int p0) {
    (void) ctx; (void) col; (void) s0; (void) oc; (void) p0;
    GGML_ABORT("ggml_col2im_1d: CrispStrobe/ggml op, not in this shim");
}
"""
SHIM_MARK = "nemo_lite bench shim"


def log(msg: str) -> None:
    print(f"[peer] {msg}", file=sys.stderr, flush=True)


def sh(cmd: list[str], **kw) -> None:
    log(" ".join(map(str, cmd)))
    subprocess.run(list(map(str, cmd)), check=True, **kw)


# ---------------------------------------------------------------------- source
def _is_url(s: str) -> bool:
    return "://" in s or s.startswith("git@")


def _copy_tree_from(spec: str, dest: Path, recursive: bool) -> None:
    """``spec``: a directory (copied), or a git repository/URL with an optional ``@REF`` (cloned)."""
    url, _, ref = spec.rpartition("@") if "@" in spec.split("/")[-1] else (spec, "", "")
    if Path(url).is_dir() and not (Path(url) / "HEAD").exists() and not (Path(url) / ".git").exists() and not ref:
        shutil.copytree(url, dest, dirs_exist_ok=True, symlinks=True)
        return
    cmd = ["git", "clone", "--quiet"] + (["--recursive"] if recursive else []) + [url, dest]
    proc = subprocess.run(list(map(str, cmd)), capture_output=True, text=True)
    if proc.returncode != 0 and not (dest / "CMakeLists.txt").exists():
        raise SystemExit(f"git clone {url} failed:\n{proc.stderr}")
    if proc.returncode != 0:  # a snapshot missing a few blobs: what checked out is kept
        log(f"git clone {url}: checkout incomplete, continuing ({proc.stderr.strip().splitlines()[0]})")
    if ref:
        sh(["git", "-C", dest, "checkout", "--quiet", ref])


def apply_ggml_shim(ggml: Path) -> bool:
    """Add :data:`GGML_SHIM_H` / :data:`GGML_SHIM_C` to an upstream ggml tree that lacks CrispStrobe/ggml's ops.
    Returns True if the tree is (now) shimmed, False if it already has the fork's ops (nothing done)."""
    header, source = ggml / "include" / "ggml.h", ggml / "src" / "ggml.c"
    text = header.read_text()
    if SHIM_MARK in text:
        return True
    if "ggml_norm_affine" in text:
        return False
    header.write_text(text + GGML_SHIM_H)
    source.write_text(source.read_text() + GGML_SHIM_C)
    log(f"{ggml}: upstream ggml, fork ops shimmed (ggml_norm_affine, ggml_siglu_swapped, ggml_col2im_1d)")
    return True


def prepare_source(src: str, work: Path, ggml: str | None) -> tuple[Path, dict]:
    """The CrispASR tree to build and what it is (commit, ggml origin)."""
    if _is_url(src) or (Path(src) / "HEAD").exists():  # a URL or a bare repository
        tree = work / "src"
        if not (tree / "src" / "canary_qwen.cpp").exists():
            _copy_tree_from(src, tree, recursive=True)
    else:
        tree = Path(src).resolve()
    if not (tree / "src" / "canary_qwen.cpp").exists():
        raise SystemExit(f"{tree}: not a CrispASR checkout (no src/canary_qwen.cpp)")
    ggml_dir = tree / "ggml"
    ggml_origin = "submodule (CrispStrobe/ggml)"
    if not (ggml_dir / "CMakeLists.txt").exists():
        if not ggml:
            raise SystemExit(f"{ggml_dir} is empty (a clone without submodules): run `git submodule update --init "
                             f"--recursive` in {tree}, or give --peer-ggml DIR|URL[@REF]")
        _copy_tree_from(ggml, ggml_dir, recursive=False)
        ggml_origin = ggml
    if apply_ggml_shim(ggml_dir):
        ggml_origin = f"{ggml_origin}, upstream ggml + bench shim for 3 fork ops"
    commit = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return tree, {"src": src, "tree": str(tree), "commit": commit or "?", "ggml": ggml_origin}


# ---------------------------------------------------------------------- build, convert, quantize
def build(tree: Path, work: Path, jobs: int) -> dict[str, Path]:
    """``peer-canary-qwen`` and ``peer-quantize``, Release, CPU only, native ISA."""
    bdir = work / "build"
    bins = {"run": bdir / "bin" / "peer-canary-qwen", "quantize": bdir / "bin" / "peer-quantize"}
    if all(p.exists() for p in bins.values()):
        return bins
    nice = ["nice", "-n", "19"]
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    # the peer's own top-level CMakeLists.txt (it resolves paths from CMAKE_SOURCE_DIR); bench/peer/targets.cmake
    # adds our two targets once it has defined its own
    sh([*nice, "cmake", "-S", tree, "-B", bdir, *gen, "-DCMAKE_BUILD_TYPE=Release",
        f"-DCMAKE_PROJECT_INCLUDE={HERE / 'peer' / 'targets.cmake'}", "-DBUILD_SHARED_LIBS=OFF",
        "-DCRISPASR_BUILD_EXAMPLES=OFF", "-DCRISPASR_BUILD_TESTS=OFF", "-DCRISPASR_BUILD_SERVER=OFF",
        "-DGGML_CUDA=OFF", "-DGGML_METAL=OFF", "-DGGML_VULKAN=OFF", "-DCRISPASR_OPUS=OFF", "-DCRISPASR_AMR=OFF"])
    t0 = time.perf_counter()
    sh([*nice, "cmake", "--build", bdir, "--target", "peer-canary-qwen", "peer-quantize", "-j", str(jobs)])
    log(f"built in {time.perf_counter() - t0:.0f} s")
    return bins


def convert(tree: Path, ckpt: Path, llm: Path | None, work: Path, python: str) -> Path:
    """F16 GGUF by the peer's converter. Its input is a hub-layout directory with ``tokenizer.json`` beside the
    weights (it looks nowhere else but a hard-coded cache path), so the checkpoint's files and the LLM dir's
    tokenizer are linked into ``work/hf``."""
    out = work / "canary-qwen-f16.gguf"
    if out.exists():
        return out
    hf = work / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    links = {p.name: p for p in Path(ckpt).iterdir() if p.suffix in (".json", ".safetensors")}
    if "tokenizer.json" not in links:
        tok = next((p for p in [Path(llm) / "tokenizer.json"] if llm and p.exists()), None) if llm else None
        if tok is None:
            raise SystemExit(f"no tokenizer.json in {ckpt} or the --llm-path dir: the peer's converter needs one")
        links["tokenizer.json"] = tok
    for name, target in links.items():
        if not (hf / name).exists():
            (hf / name).symlink_to(Path(target).resolve())
    tmp = out.with_suffix(".partial")
    t0 = time.perf_counter()
    sh(["nice", "-n", "10", python, tree / "models" / "convert-canary-qwen-to-gguf.py", "--input", hf,
        "--output", tmp])
    tmp.rename(out)
    log(f"converted in {time.perf_counter() - t0:.0f} s: {out} ({out.stat().st_size / GB:.2f} GB)")
    return out


def quantize(binary: Path, f16: Path, quant: str) -> Path:
    """``quant`` (q8_0, q4_k, ...) GGUF by the peer's quantizer; f16 is the converter's output itself."""
    if quant == "f16":
        return f16
    out = f16.with_name(f16.name.replace("-f16", f"-{quant}"))
    if not out.exists():
        tmp = out.with_suffix(".partial")
        t0 = time.perf_counter()
        sh(["nice", "-n", "10", binary, f16, tmp, quant])
        tmp.rename(out)
        log(f"{quant} in {time.perf_counter() - t0:.0f} s: {out} ({out.stat().st_size / GB:.2f} GB)")
    return out


# ---------------------------------------------------------------------- run
STAGE = re.compile(r"canary_qwen_bench:\s+(\S+)\s+([0-9.]+) ms")


def _stages(stderr: str) -> dict[str, dict[str, float]]:
    """``PEER_CALL <tag>`` (ours) -> the peer's own stage timings that follow it, in seconds."""
    calls: dict[str, dict[str, float]] = {}
    tag = None
    for line in stderr.splitlines():
        if line.startswith("PEER_CALL "):
            tag = line[len("PEER_CALL "):].strip()
            calls[tag] = {}
        elif tag is not None and (m := STAGE.search(line)):
            calls[tag][m.group(1)] = float(m.group(2)) / 1e3
    return calls


def run(binary: Path, gguf: Path, clips: list[np.ndarray], threads: int, max_new_tokens: int, batches: list[int],
        repeats: int, work: Path, log_path: Path, measure_batches: bool = False) -> dict:
    """One quant in a fresh process: load, then per repeat every clip alone. Best repeat per clip (smallest e2e).
    Batch N: the library has no batch API, so a batch is N transcriptions one after another; by default its time is
    the sum of the best batch-1 times of the N clips (the clip set repeated), ``measure_batches`` runs them (N times
    the work for the same figure). Figures:

    * ``load_s``, ``e2e_s``: our driver's clock around ``canary_qwen_init_from_file`` / ``canary_qwen_transcribe_ex``.
    * ``mel_s``, ``enc_s`` (encoder + projection), ``prefill_s``, ``decode_s``: the peer's own per-stage timings
      (``CRISPASR_CANARY_QWEN_BENCH=1``).
    * ``peak_rss``: the process's ``ru_maxrss`` from ``wait4`` (bytes); ``load_rss``: after the load.
    """
    files = []
    for i, clip in enumerate(clips):
        f = work / f"clip{i}.f32"
        np.ascontiguousarray(clip, dtype="<f4").tofile(f)
        files.append(f)
    env = {**os.environ, "CRISPASR_CANARY_QWEN_BENCH": "1", "OMP_NUM_THREADS": str(threads)}
    cmd = [str(binary), str(gguf), str(threads), str(max_new_tokens),
           ",".join(map(str, batches)) if measure_batches and batches else "1",
           str(repeats), *map(str, files)]
    load0 = os.getloadavg()[0]
    c0 = os.times()
    t0 = time.perf_counter()
    with open(log_path, "w") as err, open(log_path.with_suffix(".out"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    c1 = os.times()
    stdout, stderr = log_path.with_suffix(".out").read_text(), log_path.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"peer run {gguf.name} failed (exit {proc.returncode}); log {log_path}:\n"
                         + "\n".join(stderr.splitlines()[-15:]))
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    stages = _stages(stderr)
    load = next(e for e in events if e["event"] == "load")
    per_clip = []
    for i in range(len(clips)):
        best = min((e for e in events if e["event"] == "b1" and e["clip"] == i), key=lambda e: e["e2e_s"])
        st = stages.get(f"b1 {i} {best['rep']}", {})
        per_clip.append({"e2e_s": best["e2e_s"], "n_tokens": best["n_tokens"], "mel_s": st.get("mel"),
                         "enc_s": st.get("encoder+proj"), "prefill_s": st.get("prefill"),
                         "decode_s": st.get("decode")})
    per_batch = {}
    for n in batches:
        if measure_batches and n > 1:
            best = min((e for e in events if e["event"] == "bN" and e["batch"] == n), key=lambda e: e["e2e_s"])
            per_batch[str(n)] = {"e2e_s": best["e2e_s"], "n_tokens": best["n_tokens"], "measured": True}
        else:
            rows = [per_clip[i % len(clips)] for i in range(n)]
            per_batch[str(n)] = {"e2e_s": sum(c["e2e_s"] for c in rows), "n_tokens": sum(c["n_tokens"] for c in rows),
                                 "measured": False}
    return {"system": "crispasr", "mode": gguf.stem.rsplit("-", 1)[-1], "gguf": str(gguf),
            "gguf_gb": gguf.stat().st_size / GB, "load_s": load["load_s"], "load_rss": load["rss_gb"] * GB,
            "peak_rss": usage.ru_maxrss * 1024, "clips": per_clip, "batches": per_batch, "run_s": wall,
            "cpu_use": (c1.children_user + c1.children_system - c0.children_user - c0.children_system) / wall,
            "load_avg": [load0, os.getloadavg()[0]]}
