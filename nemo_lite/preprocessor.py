"""Log-mel front end, reproducing NeMo's ``AudioToMelSpectrogramPreprocessor`` (``FilterbankFeatures``) in eval mode.

Decision (WORKLOG 2026-11-22): we do not wrap transformers' ``ParakeetFeatureExtractor``. It computes its own
window and filterbank in fp32 numpy, while NeMo uses the bf16-rounded ``window`` and ``fb`` stored in the
checkpoint; recomputing them moves normalised mel values by up to ~0.8. This module holds those two tensors as
buffers named like the checkpoint keys (``featurizer.window``, ``featurizer.fb``) and does the rest in torch,
batched, with per-row lengths.

Pipeline (all fp32): pre-emphasis (sample 0 kept, samples past the length zeroed) -> STFT (center, zero padding)
-> |X|^2 -> mel filterbank -> log(x + 2^-24) -> per-bin mean/std over valid frames (unbiased, +1e-5 on std)
-> frames at and past ``mel_len`` set to ``pad_value``.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import PreprocessorConfig

STD_GUARD = 1e-5  # NeMo's CONSTANT added to the per-feature std


class _Featurizer(nn.Module):
    """Holds the checkpoint's window and filterbank (``perception.preprocessor.featurizer.*``)."""

    def __init__(self, cfg: PreprocessorConfig) -> None:
        super().__init__()
        self.register_buffer("window", torch.zeros(cfg.win_length))  # (win_length,)
        self.register_buffer("fb", torch.zeros(1, cfg.features, cfg.n_fft // 2 + 1))  # (1, n_mels, n_freq)


class MelPreprocessor(nn.Module):
    """Audio (B, N) + lengths (B,) -> normalised log-mel (B, n_mels, T) + frame lengths (B,)."""

    def __init__(self, cfg: PreprocessorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.featurizer = _Featurizer(cfg)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid mel frames per row: ``(len + 2*(n_fft//2) - n_fft) // hop`` (= len // 160 for 16 kHz)."""
        pad = self.cfg.n_fft // 2 * 2
        return torch.div(lengths + pad - self.cfg.n_fft, self.cfg.hop_length, rounding_mode="floor").long()

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        audio = audio.float()
        mel_len = self.frame_lengths(lengths)
        # NeMo keeps length 0 at 0 (streaming fix); mirror it.
        mel_len = torch.where(lengths == 0, torch.zeros_like(mel_len), mel_len)

        x = audio
        if cfg.preemph is not None:
            valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, N)
            x = torch.cat((x[:, :1], x[:, 1:] - cfg.preemph * x[:, :-1]), dim=1)
            x = x.masked_fill(~valid, 0.0)

        spec = torch.stft(
            x, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
            window=self.featurizer.window.float(), center=True, pad_mode="constant", return_complex=True,
        )  # (B, n_freq, T)
        # sqrt(re^2 + im^2) then **power, exactly as NeMo (not |X|^2 directly) to keep rounding identical.
        mag = torch.view_as_real(spec).pow(2).sum(-1).sqrt()
        if cfg.mag_power != 1.0:
            mag = mag.pow(cfg.mag_power)
        mel = torch.matmul(self.featurizer.fb.float(), mag)  # (B, n_mels, T)
        mel = torch.log(mel + cfg.log_zero_guard_value)
        mel = normalize_per_feature(mel, mel_len)

        t = mel.shape[-1]
        pad_mask = torch.arange(t, device=mel.device)[None, :] >= mel_len[:, None]  # (B, T)
        mel = mel.masked_fill(pad_mask[:, None, :], cfg.pad_value)
        if cfg.pad_to > 0 and t % cfg.pad_to:
            mel = nn.functional.pad(mel, (0, cfg.pad_to - t % cfg.pad_to), value=cfg.pad_value)
        return mel, mel_len


def normalize_per_feature(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per mel bin mean/std over the valid frames of each row (unbiased std, ``+1e-5``); pads zeroed.

    x: (B, n_mels, T); lengths: (B,).
    """
    valid = torch.arange(x.shape[2], device=x.device)[None, :] < lengths[:, None]  # (B, T)
    count = valid.sum(dim=1)  # (B,)
    mean = torch.where(valid[:, None], x, 0.0).sum(dim=2) / count[:, None]  # (B, n_mels)
    var = torch.where(valid[:, None], x - mean[:, :, None], 0.0).pow(2).sum(dim=2) / (count[:, None] - 1.0)
    std = var.sqrt()
    std = std.masked_fill(std.isnan(), 0.0) + STD_GUARD  # one valid frame -> std 0, as NeMo
    out = (x - mean[:, :, None]) / std[:, :, None]
    return out.masked_fill(~valid[:, None, :], 0.0)
