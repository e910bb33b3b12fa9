"""Benchmark worker: one system (nemo_lite or NeMo) in one mode, alone in a fresh process, results as JSON.

Started by ``bench/bench.py`` with either interpreter (nemo_lite's venv, or NeMo's for the reference), as
``python bench/_worker.py JOB.json RESULT.json``. Only the standard library is imported before the package import
is timed, so the import figures are the package's own. Peak RSS is this process's ``ru_maxrss``: one system and
mode per process, so nothing else is counted in it.

Timings (each measured ``repeats`` times; the fastest run is kept, the usual defence against other load):
- ``perception``: mel + encoder + projection, one clip at a time (``model.perception`` in both systems); on the
  one ``encoder_clip`` of the audio file when it holds one (``bench.py --encoder-clip-seconds``).
- ``b1`` / ``batches[N]``: ``generate`` wall time from audio arrays to ids, one clip per call / N clips in one
  call, for each N of ``job['batches']``.
  Forward hooks on the ``*ForCausalLM`` module split it: the first LLM forward is the prefill over the prompt
  embeddings; decode time per token is the time from the end of the prefill to the end of the last forward,
  over the number of forwards after the prefill (so the per-step overhead of Hugging Face's loop is included).

On a GPU (``job['device']``), every timed region ends with ``torch.cuda.synchronize()`` (the hooks too), and
the peak GPU memory (``torch.cuda.max_memory_allocated``) is reported beside the RSS.

Fidelity (nemo_lite only): the LLM is stepped along a given token path with a KV cache, exactly as greedy
decoding steps it, and the log-softmax of every step is kept. The exact-mode worker writes its own greedy paths
and log-probabilities; a fast-mode worker reads them and reports mean KL(exact || mode) and top-1 agreement.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

ASR_TEXT = "Transcribe the following: <|audioplaceholder|>"  # Canary-Qwen's ASR prompt (NeMo's form)
WARMUP_TOKENS = 2  # a first generate() call pays one-off kernel and allocator set-up; not counted


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports ``ru_maxrss`` in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def load_avg() -> float:
    return os.getloadavg()[0]


def timed_import(system: str) -> tuple[dict, object]:
    """Import the package (timed) and return (timings, model class)."""
    t0 = time.perf_counter()
    if system == "nemo":
        from nemo.collections.speechlm2.models import SALM

        return {"import_s": time.perf_counter() - t0}, SALM
    import nemo_lite

    t1 = time.perf_counter()
    from nemo_lite import CanaryQwen  # noqa: F401  (the lazy attribute that pulls in torch + transformers)

    t2 = time.perf_counter()
    import peft  # noqa: F401  (what a first load imports: timed here so that load_s is the load itself)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401

    t3 = time.perf_counter()
    return {"import_pkg_s": t1 - t0, "import_s": t2 - t0, "import_deps_s": t3 - t2}, nemo_lite.CanaryQwen


def synchronize(device: str) -> None:
    """Wait for the GPU's queued work, so that a host clock read after it times the work itself."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class ForwardClock:
    """Start/end times of every forward of one module (pre/post hooks; synchronized on a GPU)."""

    def __init__(self, module, device: str = "cpu") -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.device = device
        import torch

        # Kept out of torch.compile (the compile mode traces the module they sit on): traced, their list-length
        # guards recompiled them at every step until dynamo's recompile limit.
        module.register_forward_pre_hook(torch._dynamo.disable(lambda *_: self._stamp(self.starts)))
        module.register_forward_hook(torch._dynamo.disable(lambda *_: self._stamp(self.ends)))

    def _stamp(self, times: list[float]) -> None:
        synchronize(self.device)
        times.append(time.perf_counter())

    def reset(self) -> None:
        self.starts.clear()
        self.ends.clear()

    def split(self, new_tokens: int) -> dict:
        """Prefill seconds, decode steps and decode seconds of the generate() call since the last reset, which
        produced ``new_tokens`` tokens per row at most (so its last ``new_tokens - 1`` forwards are decode steps).
        Everything before them is prefill: one forward, or nemo_lite's chunked-prefill forwards plus
        generate()'s forward of the last prompt position."""
        n = len(self.ends)
        first = max(0, n - new_tokens)  # the forward that yields the first new token
        return {"prefill_s": self.ends[first] - self.starts[0], "decode_steps": n - 1 - first,
                "decode_s": self.ends[-1] - self.ends[first]}


def causal_lm(llm):
    """The transformers ``*ForCausalLM`` module inside a (peft-wrapped) LLM: the one generate() calls per step
    (peft's ``PeftModelForCausalLM`` wrapper is skipped: its generate() goes straight to the inner model)."""
    for module in llm.modules():
        cls = type(module)
        if cls.__name__.endswith("ForCausalLM") and cls.__module__.startswith("transformers."):
            return module
    raise RuntimeError("no *ForCausalLM module in the LLM")


class LiteRunner:
    """nemo_lite's CanaryQwen behind the worker's small interface."""

    def __init__(self, cls, job: dict) -> None:
        self.model = cls.from_pretrained(job["ckpt"], llm_path=job.get("llm_path"), device=job["device"],
                                         **job["kwargs"])
        self.llm = self.model.llm

    def perceive(self, audio) -> None:
        self.model.embed_audio([audio])

    def generate(self, audios: list, max_new_tokens: int) -> list[list[int]]:
        return self.model.generate(audios=audios, max_new_tokens=max_new_tokens, batch_size=len(audios))

    def decode(self, ids: list[int]) -> str:
        return self.model.decode(ids)

    def prompt_embeds(self, audio):
        """The ASR prompt with ``audio`` spliced in: embeddings (1, L, H) + mask (1, L)."""
        from nemo_lite.injection import build_inputs_embeds
        from nemo_lite.llm import input_embeddings
        from nemo_lite.prompts import asr_prompt

        model = self.model
        ids = model.prompt_ids(asr_prompt(model.cfg.audio_locator_tag))
        return build_inputs_embeds([ids], input_embeddings(model.llm), model.audio_tag_id, model.embed_audio([audio]))

    def step_logprobs(self, audio, path: list[int]):
        """Teacher-forced log-softmax (steps, vocab) of every step of greedy decoding along ``path``."""
        import torch

        from nemo_lite import speed
        from nemo_lite.llm import input_embeddings

        llm = self.model.llm
        embed = input_embeddings(llm)
        embeds, mask = self.prompt_embeds(audio)  # (1, L, H)
        mask = mask.long()
        if self.merged:
            speed.ensure_merged(llm)
        out = llm(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)
        rows = [out.logits[0, -1].float().log_softmax(-1)]
        for tok in path[:-1]:
            mask = torch.cat([mask, mask.new_ones(1, 1)], dim=1)  # (1, L + step)
            step = embed(torch.tensor([[tok]], device=embeds.device))  # (1, 1, H)
            out = llm(inputs_embeds=step, attention_mask=mask, past_key_values=out.past_key_values, use_cache=True)
            rows.append(out.logits[0, -1].float().log_softmax(-1))
        return torch.stack(rows).cpu()  # (steps, vocab)

    @property
    def merged(self) -> bool:
        return self.model.merged_lora


class WhisperRunner(LiteRunner):
    """A trained WhisperLLM (the training issue's small model; its dir holds whisper_llm.json) in the same modes:
    CanaryQwen's mode arguments mapped onto the Whisper design (dtype at load; int8 / merged LoRA on its LLM)."""

    def __init__(self, cls, job: dict) -> None:
        import torch

        from nemo_lite import speed
        from nemo_lite.whisper_adapter import WhisperLLM

        kwargs = dict(job["kwargs"])
        self.model = WhisperLLM.from_pretrained(job["ckpt"], dtype=_torch_dtype(kwargs.pop("dtype", "float32")))
        self.llm = self.model.llm
        self._merged = bool(kwargs.pop("merge_lora", False))
        if self._merged:
            speed.merge_lora(self.llm)
        if kwargs.pop("encoder_dtype", None) == "bf16":  # as CanaryQwen's encoder_dtype: the encoder alone in bf16
            self.model.encoder.to(torch.bfloat16)
        quantize = kwargs.pop("quantize", None)
        if quantize in ("int8", "int8-all"):
            speed.quantize(self.llm, "int8")
        if quantize == "int8-all":  # the Whisper encoder's linear layers, as int8-all does for the FastConformer
            speed.quantize(self.model.encoder, "int8")
        if kwargs:
            raise ValueError(f"mode arguments not supported for WhisperLLM: {sorted(kwargs)}")

    @property
    def merged(self) -> bool:
        return self._merged

    def generate(self, audios: list, max_new_tokens: int) -> list[list[int]]:
        return self.model.generate(audios=audios, max_new_tokens=max_new_tokens, batch_size=len(audios))

    def prompt_embeds(self, audio):

        from nemo_lite.injection import build_inputs_embeds
        from nemo_lite.llm import input_embeddings

        model = self.model
        ids = model.prompt_ids(model.asr_prompt())
        return build_inputs_embeds([ids], input_embeddings(model.llm), model.audio_tag_id, model.embed_audio([audio]))


def _torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}[name]


class NemoRunner:
    """NeMo's SALM, driven as scripts/make_parity_fixtures.py drives it; in bf16 on a GPU as NeMo's own
    ``examples/speechlm2/salm_generate.py`` does (``.eval().to(torch.bfloat16).to("cuda")``)."""

    def __init__(self, cls, job: dict) -> None:
        import torch

        model = cls.from_pretrained(job["ckpt"]).eval()
        if job["kwargs"].get("dtype") == "bf16":
            model = model.to(torch.bfloat16)
        self.model = model.to(job["device"])
        self.device = job["device"]
        self.llm = self.model.llm
        self.prompt = [{"role": "user", "content": ASR_TEXT}]

    def perceive(self, audio) -> None:
        import torch

        sig = torch.from_numpy(audio)[None].to(self.device)  # (1, N)
        self.model.perception(input_signal=sig, input_signal_length=torch.tensor([sig.shape[1]], device=self.device))

    def generate(self, audios: list, max_new_tokens: int) -> list[list[int]]:
        import torch

        lens = torch.tensor([len(a) for a in audios])
        batch = torch.zeros(len(audios), int(lens.max()))  # (B, N) zero-padded
        for i, a in enumerate(audios):
            batch[i, : len(a)] = torch.from_numpy(a)
        batch, lens = batch.to(self.device), lens.to(self.device)
        out = self.model.generate(prompts=[self.prompt] * len(audios), audios=batch, audio_lens=lens,
                                  max_new_tokens=max_new_tokens)
        eos = self.model.text_eos_id
        return [row[: row.index(eos) + 1] if eos in row else row for row in out.tolist()]


def best_of(repeats: int, fn):
    """Run ``fn`` ``repeats`` times; keep the result with the smallest ``wall_s``."""
    return min((fn() for _ in range(repeats)), key=lambda r: r["wall_s"])


def time_perception(runner, clips: list, repeats: int, device: str) -> dict:
    def once() -> dict:
        synchronize(device)
        t0, c0 = time.perf_counter(), cpu_seconds()
        for audio in clips:
            runner.perceive(audio)
        synchronize(device)
        return {"wall_s": time.perf_counter() - t0, "cpu_s": cpu_seconds() - c0}

    return best_of(repeats, once)


def time_generate(runner, clock: ForwardClock, batches: list[list], max_new_tokens: int, repeats: int) -> dict:
    """Sum over ``batches`` (each one generate() call) of wall, prefill and decode times; ids of every row;
    ``calls``: the same figures per generate() call (per clip at batch 1)."""
    def once() -> dict:
        total = {"wall_s": 0.0, "cpu_s": 0.0, "prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "ids": [],
                 "calls": []}
        for batch in batches:
            clock.reset()
            t0, c0 = time.perf_counter(), cpu_seconds()
            ids = runner.generate(batch, max_new_tokens)
            call = {"wall_s": time.perf_counter() - t0, **clock.split(max(len(row) for row in ids))}
            total["wall_s"] += call["wall_s"]
            total["cpu_s"] += cpu_seconds() - c0
            for key in ("prefill_s", "decode_s", "decode_steps"):
                total[key] += call[key]
            total["ids"] += ids
            total["calls"].append(call)
        return total

    return best_of(repeats, once)


def fidelity(runner, clips: list, job: dict) -> dict:
    """Exact mode: write paths + log-probs to ``job['fidelity_dir']``; other modes: compare against them."""
    import torch

    folder = job["fidelity_dir"]
    if job["fidelity_role"] == "reference":
        paths = job["paths"]
        agree = total = 0
        for i, (audio, path) in enumerate(zip(clips, paths, strict=True)):
            logp = runner.step_logprobs(audio, path)  # (steps, vocab)
            torch.save(logp, os.path.join(folder, f"{i}.pt"))
            agree += int((logp.argmax(-1) == torch.tensor(path)).sum())  # logp is on the CPU
            total += len(path)
        with open(os.path.join(folder, "paths.json"), "w") as f:
            json.dump(paths, f)
        return {"self_top1": agree / max(total, 1)}  # teacher-forced argmax vs its own greedy ids: should be 1
    with open(os.path.join(folder, "paths.json")) as f:
        paths = json.load(f)
    kl_sum, agree, total = 0.0, 0, 0
    for i, (audio, path) in enumerate(zip(clips, paths, strict=True)):
        ref = torch.load(os.path.join(folder, f"{i}.pt")).double()  # (steps, vocab)
        logp = runner.step_logprobs(audio, path).double()
        kl_sum += float((ref.exp() * (ref - logp)).sum())
        agree += int((logp.argmax(-1) == ref.argmax(-1)).sum())
        total += len(path)
    return {"kl_mean": kl_sum / max(total, 1), "top1": agree / max(total, 1), "steps": total}


def speed_task(runner, clips: list, job: dict) -> dict:
    import torch

    device = job["device"]
    clock = ForwardClock(causal_lm(runner.llm), device)
    mnt, repeats = job["max_new_tokens"], job["repeats"]
    res: dict = {"batches": {}}
    with torch.inference_mode():
        t0 = time.perf_counter()
        runner.generate([min(clips, key=len)], WARMUP_TOKENS)
        if device != "cpu":  # first use of each batch shape picks kernels (cuBLAS, SDPA): keep it out of timings
            for n in job["batches"]:
                runner.generate([clips[i % len(clips)] for i in range(n)], WARMUP_TOKENS)
        res["warmup_s"] = time.perf_counter() - t0
        rss = {"load": peak_rss_bytes()}  # peak RSS after each stage: where memory grows
        cpu0, w0 = cpu_seconds(), time.perf_counter()
        res["perception"] = time_perception(runner, job.get("encoder_clip") or clips, repeats, device)
        rss["perception"] = peak_rss_bytes()
        res["b1"] = time_generate(runner, clock, [[c] for c in clips], mnt, repeats)
        rss["b1"] = peak_rss_bytes()
        for n in job["batches"]:
            big = [clips[i % len(clips)] for i in range(n)]  # a batch of n built by repeating the clips
            res["batches"][str(n)] = time_generate(runner, clock, [big], mnt, repeats)
            rss[f"b{n}"] = peak_rss_bytes()
        res["cpu_util"] = (cpu_seconds() - cpu0) / (time.perf_counter() - w0)  # ~threads when not starved
        res["peak_rss_after"] = rss
        if job.get("fidelity_role"):
            paths = job.get("paths") or res["b1"]["ids"]
            res["fidelity"] = fidelity(runner, clips, {**job, "paths": paths})
    return res


def quality_task(runner, clips: list, job: dict) -> dict:
    """Greedy transcripts of a manifest's clips (batch ``job['batch']``) + fidelity along exact's paths."""
    import torch

    res: dict = {"ids": [], "texts": []}
    with torch.inference_mode():
        for s in range(0, len(clips), job["batch"]):
            ids = runner.generate(clips[s:s + job["batch"]], job["max_new_tokens"])
            res["ids"] += ids
            res["texts"] += [runner.decode(row) for row in ids]
        if job.get("fidelity_role"):
            paths = job.get("paths") or res["ids"]
            res["fidelity"] = fidelity(runner, clips, {**job, "paths": paths})
    return res


def main() -> None:
    with open(sys.argv[1]) as f:
        job = json.load(f)
    job.setdefault("device", "cpu")
    result: dict = {"system": job["system"], "mode": job["mode"], "load_avg_start": load_avg()}
    timings, cls = timed_import(job["system"])
    result.update(timings)

    import numpy as np
    import torch

    torch.set_num_threads(job["threads"])
    result["threads"] = torch.get_num_threads()
    with np.load(job["audio_npz"]) as data:
        clips = [data[f"clip{i}"] for i in range(len(data.files)) if f"clip{i}" in data.files]
        if "encoder_clip" in data.files:  # perception timed on this one clip (bench.py --encoder-clip-seconds)
            job["encoder_clip"] = [data["encoder_clip"]]
    t0 = time.perf_counter()
    if job["system"] == "nemo":
        runner_cls = NemoRunner
    else:
        runner_cls = WhisperRunner if os.path.exists(os.path.join(job["ckpt"], "whisper_llm.json")) else LiteRunner
    runner = runner_cls(cls, job)
    synchronize(job["device"])
    result["load_s"] = time.perf_counter() - t0
    result["peak_rss_load"] = peak_rss_bytes()
    gpu = job["device"].startswith("cuda")
    if gpu:
        result["gpu_name"] = torch.cuda.get_device_name()
        result["gpu_peak_load"] = torch.cuda.max_memory_allocated()
    task = speed_task if job["task"] == "speed" else quality_task
    result.update(task(runner, clips, job))
    result["peak_rss"] = peak_rss_bytes()
    if gpu:
        result["gpu_peak"] = torch.cuda.max_memory_allocated()
    result["load_avg_end"] = load_avg()
    with open(sys.argv[2], "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
