"""Tier 2/3: stage-by-stage and end-to-end parity with NeMo 3.0.0 (fixtures from scripts/make_parity_fixtures.py).

Tolerances: all stages run fp32 on both sides with the same torch build; differences come only from operation
order (e.g. (ac+bd)/sqrt(d) in NeMo vs ac*s + bd*s in Parakeet's attention), so stage outputs must agree to
1e-4 absolute (values are O(1)), and greedy ids exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from nemo_lite import testing
from nemo_lite.injection import build_inputs_embeds
from nemo_lite.llm import input_embeddings
from nemo_lite.prompts import asr_prompt

from .conftest import FIXTURES

ATOL = 1e-4


@pytest.fixture(scope="module")
def stages() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "stages.safetensors"))


def _batch(audio: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(audio)[None], torch.tensor([len(audio)])


def test_regenerated_checkpoint_is_the_one_nemo_ran(parity_ckpt, parity_meta):
    """The recipe rebuilds NeMo's checkpoint byte for byte, tensor by tensor."""
    with safe_open(str(parity_ckpt / "model.safetensors"), framework="pt") as f:
        digests = {k: testing.tensor_digest(f.get_tensor(k)) for k in f.keys()}
    assert digests == parity_meta["tensor_sha"]


def test_prompt_ids(parity_model, expected):
    ids = parity_model.prompt_ids(asr_prompt(parity_model.cfg.audio_locator_tag)).tolist()
    assert ids == expected["prompt_ids"]


def test_mel(parity_model, clips, stages, expected):
    for name, audio in clips.items():
        mel, mel_len = parity_model.perception.preprocessor(*_batch(audio))
        assert int(mel_len[0]) == expected["single"][name]["mel_len"], name
        ref = stages[f"{name}.mel"]
        ours = mel[0, :, : ref.shape[1]]
        assert mel.shape[2] == ref.shape[1], name  # mel_len + 1 frames, like NeMo
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0, msg=name)


def test_encoder(parity_model, clips, stages, expected):
    from nemo_lite.encoder import encode

    for name, audio in clips.items():
        mel, mel_len = parity_model.perception.preprocessor(*_batch(audio))
        with torch.inference_mode():
            states, lengths = encode(parity_model.perception.encoder, mel, mel_len)
        assert int(lengths[0]) == expected["single"][name]["encoder_len"], name
        torch.testing.assert_close(states[0, : int(lengths[0])], stages[f"{name}.encoder"], atol=ATOL, rtol=0,
                                   msg=name)


def test_audio_embeddings_and_llm_inputs(parity_model, clips, stages, expected):
    m = parity_model
    prompt = torch.tensor(expected["prompt_ids"])
    for name, audio in clips.items():
        emb = m.embed_audio([audio])
        torch.testing.assert_close(emb[0], stages[f"{name}.audio_embeds"], atol=ATOL, rtol=0, msg=name)
        with torch.inference_mode():
            llm_in, mask = build_inputs_embeds([prompt], input_embeddings(m.llm), m.audio_tag_id, emb)
        assert bool(mask.all())
        torch.testing.assert_close(llm_in[0], stages[f"{name}.llm_inputs"], atol=ATOL, rtol=0, msg=name)


def test_greedy_ids_single(parity_model, clips, expected, parity_meta):
    for name, audio in clips.items():
        ids = parity_model.generate(audios=[audio], max_new_tokens=parity_meta["max_new_tokens"])
        assert ids == [expected["single"][name]["ids"]], name


def test_greedy_ids_batched(parity_model, clips, expected, parity_meta):
    names = expected["batch_order"]
    ids = parity_model.generate(audios=[clips[n] for n in names], max_new_tokens=parity_meta["max_new_tokens"],
                                batch_size=len(names))
    assert ids == [expected["batched"][n] for n in names]
    assert ids == [expected["single"][n]["ids"] for n in names]  # batching changes nothing


def test_greedy_ids_from_paths(parity_model, expected, parity_meta):
    from .conftest import DATA

    ids = parity_model.generate(audios=[DATA / "speech_medium.wav"], max_new_tokens=parity_meta["max_new_tokens"])
    assert ids == [expected["single"]["speech_medium"]["ids"]]


def test_llm_mode_matches_nemo_with_adapter_disabled(parity_model, expected, parity_meta):
    case = expected["llm_mode"]
    ids = parity_model.generate(prompts=case["prompts"], max_new_tokens=parity_meta["max_new_tokens"])
    assert ids == case["ids"]


def test_two_audios_in_one_prompt(parity_model, clips, expected, parity_meta):
    case = expected["two_audio"]
    ids = parity_model.generate(prompts=[case["prompt"]], audios=[clips[n] for n in case["audios"]],
                                max_new_tokens=parity_meta["max_new_tokens"])
    assert ids == [case["ids"]]


FULL = Path(os.environ.get("NEMO_LITE_FULL_CKPT", "/tmp/nemo_lite_full"))


@pytest.mark.slow
@pytest.mark.skipif(not (FULL / "expected.json").exists(), reason="full-size NeMo checkpoint not built "
                    "(scripts/make_parity_fixtures.py --full)")
def test_full_size(clips):
    """Full 2.5B architecture (random weights made by NeMo): same greedy ids as NeMo."""
    from nemo_lite import CanaryQwen

    exp = json.loads((FULL / "expected.json").read_text())
    model = CanaryQwen.from_pretrained(FULL / "ckpt")
    for name, ids in exp["ids"].items():
        assert model.generate(audios=[clips[name]], max_new_tokens=exp["max_new_tokens"]) == [ids], name
