"""FastConformer encoder: NeMo's ``ConformerEncoder`` (dw_striding x8, rel-pos attention) via transformers' Parakeet.

We wrap ``transformers.ParakeetEncoder`` rather than re-writing it: its blocks reproduce NeMo's ConformerLayer
(macaron half-step feed-forwards, untied ``pos_bias_u/v``, BatchNorm conv module, padding masks) and it ships a
NeMo key mapping in its conversion script; ours lives in :mod:`nemo_lite.weights`. Parity with NeMo is tested
stage by stage (tests/test_parity.py). Notes on equivalence we rely on:

- NeMo masks padded time steps before every pre-encoder layer; Parakeet masks after each conv. Both zero the same
  positions before the next conv reads them, and the mel input is already zero past its length.
- NeMo's xscaling maps to ``scale_input`` (off for Canary); the relative positional table has the same interleaved
  sin/cos layout, computed on the fly instead of from a stored buffer (no checkpoint key).
- Output lengths follow NeMo's ``calc_length``: ``(len - 1) // 2 + 1`` once per stride-2 conv.
"""

from __future__ import annotations

import math

import torch
from transformers import ParakeetEncoder, ParakeetEncoderConfig

from .config import EncoderConfig

KERNEL = 3  # pre-encoder conv kernel (NeMo dw_striding)
STRIDE = 2  # pre-encoder conv stride
PADDING = 1  # (KERNEL - 1) // 2


def parakeet_config(cfg: EncoderConfig) -> ParakeetEncoderConfig:
    """Map our EncoderConfig to transformers' ParakeetEncoderConfig (inference: all dropouts 0)."""
    return ParakeetEncoderConfig(
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_model * cfg.ff_expansion_factor,
        hidden_act="silu",
        attention_bias=cfg.use_bias,
        convolution_bias=cfg.use_bias,
        conv_kernel_size=cfg.conv_kernel_size,
        subsampling_factor=cfg.subsampling_factor,
        subsampling_conv_channels=cfg.subsampling_conv_channels,
        num_mel_bins=cfg.feat_in,
        subsampling_conv_kernel_size=KERNEL,
        subsampling_conv_stride=STRIDE,
        dropout=0.0,
        dropout_positions=0.0,
        layerdrop=0.0,
        activation_dropout=0.0,
        attention_dropout=0.0,
        max_position_embeddings=cfg.pos_emb_max_len,
        scale_input=cfg.xscaling,
    )


def build_encoder(cfg: EncoderConfig) -> ParakeetEncoder:
    """A Parakeet encoder (SDPA attention); weights are loaded by :mod:`nemo_lite.weights`."""
    pcfg = parakeet_config(cfg)
    pcfg._attn_implementation = "sdpa"
    return ParakeetEncoder(pcfg)


def encoder_lengths(mel_len: torch.Tensor, subsampling_factor: int) -> torch.Tensor:
    """Encoder frames for ``mel_len`` mel frames: ``(len + 2*PADDING - KERNEL) // STRIDE + 1`` per conv (floor)."""
    lengths = mel_len.long()
    for _ in range(int(math.log2(subsampling_factor))):
        lengths = torch.div(lengths + 2 * PADDING - KERNEL, STRIDE, rounding_mode="floor") + 1
    return lengths


def encode(encoder: ParakeetEncoder, mel: torch.Tensor, mel_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mel (B, n_mels, T) + lengths (B,) -> encoder states (B, T', d_model) + lengths (B,)."""
    features = mel.transpose(1, 2)  # (B, T, n_mels)
    mask = torch.arange(features.shape[1], device=mel.device)[None, :] < mel_len[:, None]  # (B, T)
    dtype = next(encoder.parameters()).dtype
    out = encoder(input_features=features.to(dtype), attention_mask=mask)
    return out.last_hidden_state, encoder_lengths(mel_len, encoder.config.subsampling_factor)
