"""Check that a Canary-Qwen fine-tune exported by nemo_lite loads in NeMo and gives nemo_lite's greedy ids.

Runs inside a NeMo 3.0.0 venv with nemo_lite installed there without dependencies (see scripts/make_parity_fixtures.py
and ../shared/REFERENCE.md):

    HF_HUB_OFFLINE=1 /path/to/nemo-venv/bin/python scripts/check_nemo_loads_export.py [--export DIR]

Without ``--export`` it makes its own: a tiny random checkpoint (nemo_lite.testing), fine-tuned for two stage-2
steps by ``nemo_lite.train`` (so the LoRA and ``perception.proj`` differ from the start), written by
``nemo_lite.export``. Then NeMo's ``SALM.from_pretrained`` loads the export (and, since NeMo loads non-strictly,
every tensor is compared with the file), both sides decode the shipped test clips greedily, one by one and as one
batch, and the ids are compared. Exit status 0 only when every tensor arrived, all ids are equal, and the ids differ
between clips (identical rows, e.g. a lone <|im_end|>, would make the comparison meaningless).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import soundfile as sf
import torch
from safetensors.torch import load_file

from nemo_lite import testing

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ("speech_short", "speech_medium", "speech_long", "noise")
PROMPT = [{"role": "user", "content": "Transcribe the following: <|audioplaceholder|>"}]
MAX_NEW_TOKENS = 16


def make_export(work: Path) -> Path:
    """Tiny checkpoint -> 2 stage-2 steps on the test clips -> hub-layout export (small lr: the ids stay varied)."""
    from nemo_lite.training.config import TrainConfig
    from nemo_lite.training.loop import train

    llm = testing.write_llm_dir(work / "llm", testing.TINY_QWEN3)
    ckpt = testing.write_checkpoint(work / "ckpt", testing.tiny_salm_config(llm), seed=3)
    data = ROOT / "tests" / "data"
    manifest = work / "train.jsonl"
    texts = {"speech_short": "hello world", "speech_medium": "the quick brown fox", "speech_long": "speech",
             "noise": "noise"}
    manifest.write_text("".join(json.dumps({"audio_filepath": str(data / f"{n}.wav"), "text": t}) + "\n"
                                for n, t in texts.items()))
    cfg = TrainConfig(architecture="canary_qwen", train_manifest=str(manifest), output_dir=str(work / "run"),
                      model=str(ckpt), stage=2, lr=2e-3, max_steps=2, batch_size=2, progress=False)
    return train(cfg).model_dir


def trim(row: list[int], eos: int) -> list[int]:
    return row[: row.index(eos) + 1] if eos in row else row


def nemo_ids(export: Path, clips: dict) -> tuple[dict, list[str]]:
    """Greedy ids from NeMo (single clips and one batch) + the names of tensors NeMo did not load as stored."""
    from nemo.collections.speechlm2.models import SALM

    model = SALM.from_pretrained(str(export)).eval()
    stored = load_file(str(export / "model.safetensors"))
    ours = model.state_dict()
    bad = [k for k, v in stored.items() if k not in ours or not torch.equal(ours[k].to(v.dtype), v)]
    out = {"single": {}, "batch": []}
    with torch.inference_mode():
        for name, audio in clips.items():
            sig, n = torch.from_numpy(audio)[None], torch.tensor([len(audio)])
            row = model.generate(prompts=[PROMPT], audios=sig, audio_lens=n, max_new_tokens=MAX_NEW_TOKENS)[0]
            out["single"][name] = trim(row.tolist(), model.text_eos_id)
        lens = torch.tensor([len(a) for a in clips.values()])
        batch = torch.zeros(len(clips), int(lens.max()))
        for i, a in enumerate(clips.values()):
            batch[i, : len(a)] = torch.from_numpy(a)
        rows = model.generate(prompts=[PROMPT] * len(clips), audios=batch, audio_lens=lens,
                              max_new_tokens=MAX_NEW_TOKENS)
        out["batch"] = [trim(r.tolist(), model.text_eos_id) for r in rows]
    return out, bad


def lite_ids(export: Path, clips: dict) -> dict:
    from nemo_lite import CanaryQwen

    model = CanaryQwen.from_pretrained(export)
    single = {n: model.generate(audios=[a], max_new_tokens=MAX_NEW_TOKENS)[0] for n, a in clips.items()}
    batch = model.generate(audios=list(clips.values()), max_new_tokens=MAX_NEW_TOKENS, batch_size=len(clips))
    return {"single": single, "batch": batch}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="an exported checkpoint directory (default: make one)")
    args = parser.parse_args()
    export = Path(args.export) if args.export else make_export(Path(tempfile.mkdtemp()))
    clips = {n: sf.read(ROOT / "tests" / "data" / f"{n}.wav", dtype="float32")[0] for n in CLIPS}
    theirs, bad = nemo_ids(export, clips)
    ours = lite_ids(export, clips)
    print(f"export: {export}")
    for name in CLIPS:
        print(f"{name:14s} NeMo {json.dumps(theirs['single'][name])}\n{'':14s} lite {json.dumps(ours['single'][name])}")
    print(f"batched rows equal: {theirs['batch'] == ours['batch']}; batched == single: "
          f"{theirs['batch'] == [theirs['single'][n] for n in CLIPS]}")
    distinct = len({tuple(ids) for ids in theirs["single"].values()}) > 1  # a trivial check proves nothing
    ok = not bad and theirs == ours and distinct
    print(f"ids differ between clips: {distinct}")
    print(f"tensors NeMo did not load as stored: {len(bad)} {bad[:5]}")
    print("greedy ids identical (single + batched):", theirs == ours)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
