"""Step 4 - the mel front end: 16 kHz audio -> normalised 128-bin log-mel, 10 ms per frame.

Runs ``nemo_lite.preprocessor.MelPreprocessor`` (NeMo's AudioToMelSpectrogramPreprocessor in eval mode) with the
default ``PreprocessorConfig`` and the bf16-rounded Hann window + slaney filterbank that the checkpoint stores
(``nemo_lite.testing.mel_buffers``). On a zero-padded batch of two synthetic clips it shows:

- valid frames = samples // 160 (the STFT yields one more, centre-padded frame, which is masked);
- per mel bin, values over a row's valid frames have mean ~0 and (unbiased) std ~1;
- frames past a row's length are exactly 0, and a row's features do not depend on the batch padding;
- recomputing window/filterbank in fp32 (instead of the checkpoint's bf16-rounded ones) moves the mel noticeably,
  which is why nemo_lite reads them from the checkpoint rather than recomputing them.

Run: python exploration/canary_qwen/04_mel_frontend.py
"""

from __future__ import annotations

import math

import torch
from transformers.audio_utils import mel_filter_bank

from nemo_lite.config import PreprocessorConfig
from nemo_lite.preprocessor import MelPreprocessor
from nemo_lite.testing import mel_buffers

SR = 16000


def synthetic(n: int, f0: float, seed: int) -> torch.Tensor:
    """A chirp plus a little noise, so every mel bin has some energy."""
    t = torch.arange(n) / SR
    gen = torch.Generator().manual_seed(seed)
    return 0.3 * torch.sin(2 * math.pi * (f0 + 1500 * t) * t) + 0.01 * torch.randn(n, generator=gen)


def main() -> None:
    cfg = PreprocessorConfig()
    print(f"PreprocessorConfig: sr={cfg.sample_rate} n_fft={cfg.n_fft} "
          f"win={cfg.win_length} ({cfg.win_length / SR * 1e3:.0f} ms) "
          f"hop={cfg.hop_length} ({cfg.hop_length / SR * 1e3:.0f} ms) mels={cfg.features} preemph={cfg.preemph} "
          f"guard=2^{math.log2(cfg.log_zero_guard_value):.0f} pad_to={cfg.pad_to}")
    pre = MelPreprocessor(cfg).eval()
    bufs = mel_buffers()
    pre.featurizer.window = bufs["window"]  # (400,) symmetric Hann, bf16-rounded like the checkpoint
    pre.featurizer.fb = bufs["fb"]  # (1, 128, 257) slaney mel filterbank, bf16-rounded
    print(f"buffers: window {tuple(pre.featurizer.window.shape)}, fb {tuple(pre.featurizer.fb.shape)} "
          f"(names = checkpoint keys perception.preprocessor.featurizer.window / .fb)")

    lengths = torch.tensor([16000, 9650])  # 1.0 s and ~0.6 s
    audio = torch.zeros(2, int(lengths.max()))
    audio[0] = synthetic(16000, 200.0, 0)
    audio[1, :9650] = synthetic(9650, 500.0, 1)
    mel, mel_len = pre(audio, lengths)
    print(f"\naudio {tuple(audio.shape)} lengths {lengths.tolist()} -> mel {tuple(mel.shape)}, mel_len "
          f"{mel_len.tolist()}")
    print(f"  samples // 160 = {(lengths // 160).tolist()}; STFT frames (center=True) = N // 160 + 1 = "
          f"{audio.shape[1] // 160 + 1}")
    assert mel_len.tolist() == (lengths // cfg.hop_length).tolist()
    assert mel.shape == (2, cfg.features, audio.shape[1] // cfg.hop_length + 1)

    print("\nper-bin normalisation over the valid frames of each row:")
    for i, n in enumerate(mel_len.tolist()):
        valid = mel[i, :, :n]
        mean, std = valid.mean(dim=1), valid.std(dim=1)  # unbiased, as NeMo
        pad = mel[i, :, n:]
        print(f"  row {i}: |mean|max = {mean.abs().max():.2e}, std in [{std.min():.4f}, {std.max():.4f}], "
              f"{pad.shape[1]} padded frames, |pad|max = {pad.abs().max():.1f}")
        assert mean.abs().max() < 1e-4 and (std - 1).abs().max() < 1e-3 and torch.all(pad == 0)

    alone, alone_len = pre(audio[1:, :9650], lengths[1:])
    d = (alone[0, :, : alone_len[0]] - mel[1, :, : mel_len[1]]).abs().max()
    print(f"  row 1 alone vs in the padded batch: |diff|max over valid frames = {d:.2e}")
    assert d < 1e-4

    # The same features with window/filterbank recomputed in fp32 instead of the checkpoint's bf16-rounded ones.
    fb32 = mel_filter_bank(num_frequency_bins=cfg.n_fft // 2 + 1, num_mel_filters=cfg.features, min_frequency=0.0,
                           max_frequency=SR / 2, sampling_rate=SR, norm="slaney", mel_scale="slaney")
    pre32 = MelPreprocessor(cfg).eval()
    pre32.featurizer.window = torch.hann_window(cfg.win_length, periodic=False)
    pre32.featurizer.fb = torch.from_numpy(fb32.T.copy()).float()[None]
    mel32, _ = pre32(audio, lengths)
    dw = (pre32.featurizer.window - pre.featurizer.window).abs().max()
    dfb = (pre32.featurizer.fb - pre.featurizer.fb).abs().max() / pre32.featurizer.fb.abs().max()
    dm = (mel32 - mel).abs()
    print("\nfp32 window/filterbank vs the checkpoint's bf16-rounded ones:")
    print(f"  |window diff|max = {dw:.2e}, |fb diff|max = {dfb:.2%} of max(fb)")
    worst = int(dm.amax(dim=(0, 2)).argmax())
    print(f"  normalised mel: |diff|max = {dm.max():.3f} (worst mel bin {worst}), mean |diff| = {dm.mean():.4f}  "
          f"(on unit-std features)")
    assert dm.max() > 1e-3  # not negligible: hence the buffers come from the checkpoint


if __name__ == "__main__":
    main()
