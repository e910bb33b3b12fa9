"""Embedding injection: splice audio frames into the prompt embeddings at the audio-tag positions, left-padded.

Reproduces NeMo's ``replace_placeholders_and_build_targets`` (speechlm2/models/salm.py) for inference: placeholder
ids are embedded as id 0, then each placeholder position is replaced by all frames of the next audio (the sequence
grows by T-1 per tag), audios consumed in order. Rows are then left-padded with zero vectors to the longest row,
with an attention mask of 0 on the padding, so generation appends new tokens at the same position in every row.
Prompt ids arrive unpadded (a list of rows), so NeMo's un-padding step is unnecessary here.
"""

from __future__ import annotations

import torch


def embed_prompt(ids: torch.Tensor, embed: torch.nn.Embedding, placeholder_id: int) -> torch.Tensor:
    """ids (L,) -> embeddings (L, H), with placeholders looked up as id 0 (their vectors are replaced anyway)."""
    return embed(ids.masked_fill(ids == placeholder_id, 0))


def splice_row(
    ids: torch.Tensor, embeds: torch.Tensor, placeholder_id: int, audios: list[torch.Tensor]
) -> torch.Tensor:
    """One row: ids (L,), embeds (L, H), audios [(T_k, H)] (one per placeholder) -> (L - K + sum T_k, H)."""
    positions = (ids == placeholder_id).nonzero(as_tuple=True)[0].tolist()
    if len(positions) != len(audios):
        raise ValueError(f"prompt has {len(positions)} audio tag(s) but {len(audios)} audio(s) were given for it")
    pieces, start = [], 0
    for pos, audio in zip(positions, audios, strict=True):
        pieces += [embeds[start:pos], audio.to(embeds.dtype)]
        start = pos + 1
    pieces.append(embeds[start:])
    return torch.cat(pieces, dim=0)


def left_pad(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(L_i, H)] -> embeddings (B, L_max, H) left-padded with zeros + bool attention mask (B, L_max)."""
    longest = max(r.shape[0] for r in rows)
    out = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])  # (B, L, H)
    mask = torch.zeros(len(rows), longest, dtype=torch.bool, device=rows[0].device)  # (B, L)
    for i, r in enumerate(rows):
        out[i, longest - r.shape[0]:] = r
        mask[i, longest - r.shape[0]:] = True
    return out, mask


def build_inputs_embeds(
    prompt_ids: list[torch.Tensor], embed: torch.nn.Embedding, placeholder_id: int, audio_embeds: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of prompt ids + per-audio embeddings (consumed in tag order across rows) -> (B, L, H), mask (B, L)."""
    rows, k = [], 0
    for ids in prompt_ids:
        n = int((ids == placeholder_id).sum())
        rows.append(splice_row(ids, embed_prompt(ids, embed, placeholder_id), placeholder_id, audio_embeds[k:k + n]))
        k += n
    if k != len(audio_embeds):
        raise ValueError(f"{len(audio_embeds)} audio(s) given but the prompts hold {k} audio tag(s)")
    return left_pad(rows)
