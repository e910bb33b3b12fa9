"""Step 7 - generation end to end: ASR prompt, batched greedy decoding, and LLM mode with the adapter off.

Loads a tiny random checkpoint (as in step 3) with ``CanaryQwen.from_pretrained`` and:

- prints the ASR prompt ``Transcribe the following: <|audioplaceholder|>`` in NeMo's qwen format, as token ids;
- follows two synthetic clips through perception (frames = ceil(samples / 160 / 8)) into the spliced sequence;
- runs ``model.generate(audios=[a1, a2], max_new_tokens=8)`` and checks batched == one clip at a time;
- runs LLM mode (a text-only prompt -> plain Qwen3, LoRA disabled) and checks it against Hugging Face
  ``generate`` on the base model under ``disable_adapter()``, and that the adapter would change the logits.

The weights are random, so the generated ids are meaningless; the point is the plumbing, which is deterministic.

Run: python exploration/canary_qwen/07_generation.py
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

import nemo_lite
from nemo_lite.decoding import GreedyOptions, generation_config
from nemo_lite.injection import build_inputs_embeds
from nemo_lite.llm import input_embeddings
from nemo_lite.prompts import asr_prompt
from nemo_lite.testing import tiny_salm_config, write_checkpoint, write_llm_dir


def clip(seconds: float, seed: int) -> np.ndarray:
    """Synthetic 16 kHz audio: a tone with a little noise."""
    t = np.arange(int(seconds * 16000)) / 16000
    rng = np.random.default_rng(seed)
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)


def main() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers deprecation noise from peft
    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp(prefix="canary_step7_"))
    try:
        ckpt = write_checkpoint(tmp / "ckpt", tiny_salm_config(write_llm_dir(tmp / "llm")))
        model = nemo_lite.CanaryQwen.from_pretrained(ckpt)
        tok = model.tokenizer
        tag = model.cfg.audio_locator_tag

        prompt = asr_prompt(tag)
        ids = model.prompt_ids(prompt)
        print(f"ASR prompt turns: {prompt}")
        print(f"  ids ({len(ids)}): {ids.tolist()}")
        print(f"  tokens: {tok.convert_ids_to_tokens(ids.tolist())}")
        print(f"  audio tag {tag!r} = id {model.audio_tag_id}; eos <|im_end|> = {model.eos_id}; pad = {model.pad_id}")
        assert int((ids == model.audio_tag_id).sum()) == 1 and model.audio_tag_id == 151669

        a1, a2 = clip(1.0, 0), clip(0.61, 1)
        frames = model.embed_audio([a1, a2])
        print(f"\nclips of {len(a1)} and {len(a2)} samples -> audio embeddings {[tuple(f.shape) for f in frames]} "
              f"(ceil(samples/160/8) = {[-(-(len(a) // 160) // 8) for a in (a1, a2)]}, "
              f"{model.perception.frame_seconds * 1000:.0f} ms each)")
        embeds, mask = build_inputs_embeds([ids, ids], input_embeddings(model.llm), model.audio_tag_id, frames)
        print(f"  spliced into the prompt: inputs_embeds {tuple(embeds.shape)}, valid per row {mask.sum(1).tolist()} "
              f"(= {len(ids)} - 1 + frames), left padding {(~mask).sum(1).tolist()}")

        batched = model.generate(audios=[a1, a2], max_new_tokens=8)
        single = [model.generate(audios=[a], max_new_tokens=8)[0] for a in (a1, a2)]
        print("\ngenerate(audios=[a1, a2], max_new_tokens=8) (greedy, ASR prompt, LoRA on):")
        for i, (b, s) in enumerate(zip(batched, single, strict=True)):
            print(f"  clip {i}: batched {b}\n          alone   {s}   text {model.decode(b)!r}")
        assert batched == single
        print("  batched == one-by-one: True")

        chat = [[{"role": "user", "content": "Hello"}]]
        llm_out = model.generate(prompts=chat, max_new_tokens=5)
        chat_ids = model.prompt_ids(chat[0])
        print(f"\nLLM mode: prompt {chat[0]} -> ids {chat_ids.tolist()}")
        print(f"  model.generate(prompts=..., max_new_tokens=5) -> {llm_out[0]}  text {model.decode(llm_out[0])!r}")
        gen_cfg = generation_config(GreedyOptions(max_new_tokens=5, eos_id=model.eos_id, pad_id=model.pad_id))
        with torch.inference_mode():
            with model.llm.disable_adapter():
                ref = model.llm.generate(input_ids=chat_ids[None], attention_mask=torch.ones_like(chat_ids)[None],
                                         generation_config=gen_cfg)[0, len(chat_ids):].tolist()
                logits_off = model.llm(input_ids=chat_ids[None]).logits
            logits_on = model.llm(input_ids=chat_ids[None]).logits
        print(f"  HF generate on input_ids under disable_adapter()  -> {ref}")
        print(f"  prompt logits, adapter on vs off: |diff|max = {(logits_on - logits_off).abs().max():.3f} "
              f"(so text-only rows really run without LoRA)")
        assert llm_out[0] == ref[: len(llm_out[0])] and (logits_on - logits_off).abs().max() > 1e-3
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
