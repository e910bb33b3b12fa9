"""Step 5 - encoder lengths: how many audio frames reach the LLM, 80 ms each, and padding-invariance.

The FastConformer's dw_striding pre-encoder halves the time axis three times (stride-2 convs, kernel 3, padding 1):
``len -> (len - 1) // 2 + 1`` per conv, so 8x overall, and one output frame covers 10 ms x 8 = 80 ms of audio.
On a tiny random encoder (weights from ``nemo_lite.testing.random_tensor``,
``build_encoder(EncoderConfig(..., n_layers=1, d_model=32, ...))``) this script compares
``nemo_lite.encoder.encoder_lengths`` with the real output length for several input lengths, then checks that a
short row padded into a batch with a longer one gives the same valid output frames as when run alone.

Run: python exploration/canary_qwen/05_encoder_lengths.py
"""

from __future__ import annotations

import torch

from nemo_lite.config import EncoderConfig, PreprocessorConfig
from nemo_lite.encoder import build_encoder, encode, encoder_lengths
from nemo_lite.projection import Perception
from nemo_lite.testing import random_tensor


def main() -> None:
    torch.manual_seed(0)
    cfg = EncoderConfig(feat_in=128, n_layers=1, d_model=32, n_heads=4, subsampling_conv_channels=8)
    enc = build_encoder(cfg).eval()
    # Checkpoint-like random weights (HF's init leaves the output near 0, which would hide any padding leak).
    enc.load_state_dict({k: random_tensor(k, tuple(v.shape)) for k, v in enc.state_dict().items()})
    print(f"tiny encoder: {type(enc).__name__}, {sum(p.numel() for p in enc.parameters()):,} params, subsampling "
          f"x{cfg.subsampling_factor} (3 stride-2 convs)")

    print("\n  samples   seconds  mel frames  formula  actual  ceil(mel/8)  audio covered (80 ms/frame)")
    for samples in (160, 1120, 1280, 1440, 2560, 16000, 16160, 48000, 160000):
        mel_len = samples // 160
        want = int(encoder_lengths(torch.tensor([mel_len]), cfg.subsampling_factor))
        with torch.no_grad():
            out, out_len = encode(enc, torch.randn(1, 128, mel_len), torch.tensor([mel_len]))
        actual = out.shape[1]
        print(f"  {samples:>7}  {samples / 16000:>7.3f}  {mel_len:>10}  {want:>7}  {actual:>6}  "
              f"{-(-mel_len // 8):>11}  {actual * 0.08:.2f} s")
        assert actual == want == int(out_len) == -(-mel_len // 8)
    print("  (1 mel frame -> 1 output frame: (1-1)//2+1 = 1 three times; in general ceil(mel_len / 8))")

    per = Perception(PreprocessorConfig(), cfg, output_dim=64)
    print(f"\nPerception.frame_seconds = hop {per.preprocessor.cfg.hop_length} / {per.preprocessor.cfg.sample_rate} "
          f"x {cfg.subsampling_factor} = {per.frame_seconds * 1000:.0f} ms per LLM audio frame "
          f"(10 s of audio -> {int(encoder_lengths(torch.tensor([1000]), 8))} frames)")
    assert abs(per.frame_seconds - 0.08) < 1e-12

    # Padding invariance: row 1 (60 mel frames) zero-padded to 100 inside a batch vs the same row alone.
    mel_len = torch.tensor([100, 60])
    mel = torch.randn(2, 128, 100)
    mel[1, :, 60:] = 0.0  # the mel front end zeroes frames past the length
    with torch.no_grad():
        batch, batch_len = encode(enc, mel, mel_len)
        alone, alone_len = encode(enc, mel[1:, :, :60], mel_len[1:])
        mel_junk = mel.clone()
        mel_junk[1, :, 60:] = 5.0  # garbage past the length: the mask must hide it as well
        junk, _ = encode(enc, mel_junk, mel_len)
    n = int(alone_len[0])
    print(f"\nbatch mel lengths {mel_len.tolist()} -> encoder out {tuple(batch.shape)}, lengths {batch_len.tolist()}")
    d = (batch[1, :n] - alone[0, :n]).abs().max()
    dj = (junk[1, :n] - alone[0, :n]).abs().max()
    print(f"  row 1 valid frames, padded batch vs alone: |diff|max = {d:.2e} (output scale "
          f"{alone.abs().max():.2f})")
    print(f"  ... with non-zero garbage in its padding instead: |diff|max = {dj:.2e}")
    assert batch_len.tolist() == [13, 8] and d < 1e-4 and dj < 1e-4


if __name__ == "__main__":
    main()
