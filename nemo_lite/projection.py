"""Audio perception: mel front end -> FastConformer -> modality adapter -> ``perception.proj`` into the LLM width.

NeMo's ``AudioPerceptionModule`` with an ``IdentityConnector`` adapter: the encoder output (B, T, d_model) goes
through ``proj`` (Linear d_model -> LLM hidden, with bias). Module names equal the checkpoint's
(``perception.preprocessor``, ``perception.encoder``, ``perception.proj``); the encoder's inner names are mapped in
:mod:`nemo_lite.weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import EncoderConfig, PreprocessorConfig
from .encoder import build_encoder, encode
from .preprocessor import MelPreprocessor

HOP_SECONDS = 0.01  # one mel frame = 10 ms at 16 kHz


class Perception(nn.Module):
    """Audio (B, N) + lengths (B,) -> LLM-width audio embeddings (B, T, H) + frame counts (B,)."""

    def __init__(self, pre: PreprocessorConfig, enc: EncoderConfig, output_dim: int) -> None:
        super().__init__()
        self.preprocessor = MelPreprocessor(pre)
        self.encoder = build_encoder(enc)
        self.proj = nn.Linear(enc.d_model, output_dim)  # IdentityConnector adapter, then proj

    @property
    def frame_seconds(self) -> float:
        """Audio duration of one output frame (80 ms for Canary: 10 ms hop x 8 subsampling)."""
        pre = self.preprocessor.cfg
        return pre.hop_length / pre.sample_rate * self.encoder.config.subsampling_factor

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mel, mel_len = self.preprocessor(audio, lengths)  # (B, n_mels, T)
        states, out_len = encode(self.encoder, mel, mel_len)  # (B, T', d_model)
        return self.proj(states.to(self.proj.weight.dtype)), out_len  # (B, T', H); the encoder may run narrower

    def embed_list(self, audio: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Per-row unpadded embeddings: list of (T_i, H), as NeMo hands them to the placeholder replacement."""
        emb, emb_len = self(audio, lengths)
        return [emb[i, : int(n)] for i, n in enumerate(emb_len)]
