"""Make the NeMo parity fixtures that tests/test_parity.py compares nemo_lite against.

Runs inside a NeMo 3.0.0 venv (never a nemo_lite dependency; see ../shared/REFERENCE.md), with nemo_lite installed
there without dependencies (``pip install --no-deps -e .``) so both sides use one weight recipe:

    /path/to/nemo-venv/bin/python scripts/make_parity_fixtures.py [--full]

Steps: build a random SALM with NeMo from nemo_lite.testing's tiny config, save it with NeMo's save_pretrained
to learn its exact key list, overwrite every tensor with nemo_lite.testing's seeded recipe (the mel window and
filterbank stay NeMo's own, bf16-rounded), reload with ``SALM.from_pretrained`` and record, for each clip:
mel, encoder output, audio embeddings, prompt ids, LLM input embeddings and greedy ids, single and batched, plus
LLM-mode (adapter off) and multi-audio prompts. Weights are not committed: tests regenerate the identical
checkpoint from the key manifest + recipe (a per-tensor hash in meta.json proves it).

``--full`` instead builds the full 2.5B architecture into /tmp/nemo_lite_full (not committed; ~5 GB) and writes
its greedy ids to /tmp/nemo_lite_full/expected.json, for tests/test_parity.py::test_full_size (opt-in).
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nemo_lite import testing

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
FIXTURES = ROOT / "tests" / "fixtures" / "tiny"
SEED = 1234
MAX_NEW_TOKENS = 24
SENTENCES = {  # espeak-ng speech of several lengths
    "speech_short": "Hello world.",
    "speech_medium": "The quick brown fox jumps over the lazy dog near the river bank.",
    "speech_long": "Speech recognition turns spoken words into text. This clip is a little longer, "
                   "so that the encoder sees many frames and the prompt grows accordingly.",
}
ASR_TEXT = "Transcribe the following: <|audioplaceholder|>"


def make_clips() -> dict[str, np.ndarray]:
    DATA.mkdir(parents=True, exist_ok=True)
    for name, text in SENTENCES.items():
        wav = DATA / f"{name}.wav"
        if not wav.exists():
            raw = Path(tempfile.mkdtemp()) / "raw.wav"
            subprocess.run(["espeak-ng", "-s", "150", "-w", str(raw), text], check=True)
            subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(wav)], check=True)
    if not (DATA / "noise.wav").exists():
        noise = np.random.default_rng(7).normal(0, 0.05, 16000 * 3)
        sf.write(DATA / "noise.wav", noise, 16000, subtype="PCM_16")
    if not (DATA / "silence.wav").exists():
        sf.write(DATA / "silence.wav", np.zeros(16000 * 2), 16000, subtype="PCM_16")
    clips = {}
    for wav in sorted(DATA.glob("*.wav")):
        audio, sr = sf.read(wav, dtype="float32")
        assert sr == 16000 and audio.ndim == 1, wav
        clips[wav.stem] = audio
    return clips


def build_reference(work: Path, salm_cfg: dict, llm_config: dict):
    """NeMo SALM with recipe weights, saved + reloaded through NeMo's own save/load."""
    from nemo.collections.speechlm2.models import SALM

    torch.manual_seed(0)
    model = SALM(salm_cfg).eval()
    first = work / "nemo_saved"
    model.save_pretrained(str(first))
    del model  # the full-size model is 10 GB in fp32: free it before NeMo loads the reference
    with safe_open(str(first / "model.safetensors"), framework="pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        fixed = {n: f.get_tensor(f"perception.preprocessor.featurizer.{n}").float() for n in ("window", "fb")}
    state = testing.random_state(shapes, SEED, fixed)
    ckpt = work / "ckpt"
    ckpt.mkdir()
    save_file(state, str(ckpt / "model.safetensors"))
    shutil.copy(first / "config.json", ckpt / "config.json")
    gc.collect()
    ref = SALM.from_pretrained(str(ckpt)).eval()
    # NeMo loads non-strictly: prove every tensor arrived.
    sd = ref.state_dict()
    for k, v in state.items():
        assert torch.equal(sd[k].to(v.dtype), v), f"NeMo did not load {k}"
    return ref, shapes, fixed, state


def stage_outputs(ref, clips: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Per-clip stage tensors and ids from the NeMo reference."""
    from nemo.collections.common.prompts import PromptFormatter
    from nemo.collections.speechlm2.models.salm import replace_placeholders_and_build_targets

    tensors, expected = {}, {"single": {}, "prompt_ids": None}
    formatter = PromptFormatter.resolve(ref.cfg.prompt_format)(ref.tokenizer)
    prompt = [{"role": "user", "content": ASR_TEXT}]
    ids = formatter.encode_dialog(turns=prompt)["input_ids"]
    expected["prompt_ids"] = ids.tolist()
    with torch.inference_mode():
        for name, audio in clips.items():
            sig = torch.from_numpy(audio)[None]
            n = torch.tensor([len(audio)])
            mel, mel_len = ref.perception.preprocessor(input_signal=sig, length=n)
            enc, enc_len = ref.perception.encoder(audio_signal=mel, length=mel_len)
            emb, emb_len = ref.perception(input_signal=sig, input_signal_length=n)
            tokens = ids[None]
            tok_emb = ref.embed_tokens(tokens.where(tokens != ref.audio_locator_tag_id, 0))
            llm_in, _, mask = replace_placeholders_and_build_targets(
                input_ids=tokens, embeds=tok_emb, padding_id=ref.text_pad_id,
                placeholder_id=ref.audio_locator_tag_id, replacements=[emb[0, : emb_len[0]]], target_ids=None)
            tensors[f"{name}.mel"] = mel[0, :, : int(mel_len[0]) + 1].contiguous()
            tensors[f"{name}.encoder"] = enc[0, :, : int(enc_len[0])].T.contiguous()  # (T, D)
            tensors[f"{name}.audio_embeds"] = emb[0, : int(emb_len[0])].contiguous()
            tensors[f"{name}.llm_inputs"] = llm_in[0].contiguous()
            out = ref.generate(prompts=[prompt], audios=sig, audio_lens=n, max_new_tokens=MAX_NEW_TOKENS)
            expected["single"][name] = {"ids": trim(out[0].tolist(), ref), "mel_len": int(mel_len[0]),
                                        "encoder_len": int(enc_len[0])}
    return tensors, expected


def trim(row: list[int], ref) -> list[int]:
    eos = ref.text_eos_id
    return row[: row.index(eos) + 1] if eos in row else row


def batched_outputs(ref, clips: dict[str, np.ndarray]) -> dict:
    """One zero-padded batch of every clip, LLM mode (adapter off) and a two-audio prompt."""
    names = list(clips)
    lens = torch.tensor([len(clips[n]) for n in names])
    batch = torch.zeros(len(names), int(lens.max()))
    for i, n in enumerate(names):
        batch[i, : lens[i]] = torch.from_numpy(clips[n])
    prompt = [{"role": "user", "content": ASR_TEXT}]
    text_prompts = [
        [{"role": "user", "content": "Summarise: the cat sat on the mat and then it went to sleep."}],
        [{"role": "user", "content": "Hi"}],
        [{"role": "user", "content": "Fix the casing: hello world"}, {"role": "assistant", "content": "Hello world"},
         {"role": "user", "content": "Again, shorter."}],
    ]
    two = [{"role": "user", "content": "Compare <|audioplaceholder|> with <|audioplaceholder|> please."}]
    with torch.inference_mode():
        out = ref.generate(prompts=[prompt] * len(names), audios=batch, audio_lens=lens, max_new_tokens=MAX_NEW_TOKENS)
        batched = {n: trim(out[i].tolist(), ref) for i, n in enumerate(names)}
        with ref.llm.disable_adapter():
            res = ref.generate(prompts=text_prompts, max_new_tokens=MAX_NEW_TOKENS)
        width = res.shape[1] - MAX_NEW_TOKENS  # text-only generate returns prompt (left-padded) + new ids
        llm_mode = [trim(r[width:].tolist(), ref) for r in res]
        pair = ["speech_short", "noise"]
        pair_lens = torch.tensor([len(clips[n]) for n in pair])
        pair_batch = torch.zeros(2, int(pair_lens.max()))
        for i, n in enumerate(pair):
            pair_batch[i, : pair_lens[i]] = torch.from_numpy(clips[n])
        res2 = ref.generate(prompts=[two], audios=pair_batch, audio_lens=pair_lens, max_new_tokens=MAX_NEW_TOKENS)
    return {"batch_order": names, "batched": batched,
            "llm_mode": {"prompts": text_prompts, "ids": llm_mode},
            "two_audio": {"prompt": two, "audios": pair, "ids": trim(res2[0].tolist(), ref)}}


def main_tiny() -> None:
    clips = make_clips()
    work = Path(tempfile.mkdtemp())
    llm_dir = testing.write_llm_dir(work / "llm", testing.TINY_QWEN3)
    salm_cfg = testing.tiny_salm_config(llm_dir)
    ref, shapes, fixed, state = build_reference(work, salm_cfg, testing.TINY_QWEN3)
    tensors, expected = stage_outputs(ref, clips)
    expected.update(batched_outputs(ref, clips))
    FIXTURES.mkdir(parents=True, exist_ok=True)
    saved_cfg = json.loads((work / "ckpt" / "config.json").read_text())
    saved_cfg["pretrained_llm"] = "<LLM_DIR>"  # tests substitute their own offline LLM dir
    (FIXTURES / "config.json").write_text(json.dumps(saved_cfg, indent=1))
    (FIXTURES / "llm_config.json").write_text(json.dumps(testing.TINY_QWEN3, indent=1))
    (FIXTURES / "keys.json").write_text(json.dumps({k: list(v) for k, v in shapes.items()}, indent=0))
    save_file({k: v.contiguous() for k, v in fixed.items()}, str(FIXTURES / "mel_buffers.safetensors"))
    save_file({k: v.float() for k, v in tensors.items()}, str(FIXTURES / "stages.safetensors"))
    (FIXTURES / "expected.json").write_text(json.dumps(expected, indent=1))
    meta = {"nemo": __import__("nemo").__version__, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "seed": SEED, "max_new_tokens": MAX_NEW_TOKENS,
            "tensor_sha": {k: testing.tensor_digest(v) for k, v in state.items()}}
    (FIXTURES / "meta.json").write_text(json.dumps(meta, indent=1))
    print("fixtures written to", FIXTURES)
    print(json.dumps({k: v["ids"][:8] for k, v in expected["single"].items()}, indent=1))


def main_full() -> None:
    clips = make_clips()
    work = Path("/tmp/nemo_lite_full")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    llm_dir = testing.write_llm_dir(work / "llm", testing.QWEN3_1_7B)
    salm_cfg = testing.full_salm_config(llm_dir)
    ref, *_ = build_reference(work, salm_cfg, testing.QWEN3_1_7B)
    shutil.rmtree(work / "nemo_saved")  # NeMo's own fp32 save, 10 GB: only its key list was needed
    names = ["speech_short", "noise"]
    out = {}
    prompt = [{"role": "user", "content": ASR_TEXT}]
    with torch.inference_mode():
        for n in names:
            sig = torch.from_numpy(clips[n])[None]
            res = ref.generate(prompts=[prompt], audios=sig, audio_lens=torch.tensor([sig.shape[1]]), max_new_tokens=8)
            out[n] = trim(res[0].tolist(), ref)
    (work / "expected.json").write_text(json.dumps({"max_new_tokens": 8, "ids": out}, indent=1))
    print(out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="full 2.5B architecture into /tmp/nemo_lite_full")
    args = parser.parse_args()
    main_full() if args.full else main_tiny()
