"""Step 6 - embedding injection: how audio frames enter the LLM in place of the ``<|audioplaceholder|>`` token.

``nemo_lite.injection.build_inputs_embeds`` (NeMo's ``replace_placeholders_and_build_targets`` for inference) on toy
tensors whose values are readable: token id ``i`` embeds to ``[i, i, i, i]`` and audio frames to 100, 101, ...
It shows that one placeholder becomes all T frames of its audio (the row grows by T - 1), that several tags in one
prompt take audios in order (across rows too), that rows are left-padded with zero vectors and a False mask so the
last real position lines up in every row (where generation appends), and that a tag/audio count mismatch raises.

Run: python exploration/canary_qwen/06_embedding_injection.py
"""

from __future__ import annotations

import torch

from nemo_lite.injection import build_inputs_embeds, embed_prompt

TAG = 9  # the placeholder id in this toy vocabulary (151669 in the real tokenizer)
H = 4


def show(embeds: torch.Tensor, mask: torch.Tensor) -> None:
    """Print column 0 of each row (token id for text, 100+ for audio frames, '.' for padding)."""
    for i in range(embeds.shape[0]):
        pairs = zip(embeds[i, :, 0].tolist(), mask[i].tolist(), strict=True)
        cells = [f"{int(v):>3}" if m else "  ." for v, m in pairs]
        print(f"    row {i}: {' '.join(cells)}   mask {''.join('1' if m else '0' for m in mask[i].tolist())}")


def main() -> None:
    embed = torch.nn.Embedding(10, H)
    with torch.no_grad():
        embed.weight.copy_(torch.arange(10.0)[:, None].expand(10, H))  # id i -> [i, i, i, i]

    def audio(start: int, t: int) -> torch.Tensor:  # (T, H) frames valued start, start+1, ...
        return (start + torch.arange(float(t)))[:, None].expand(t, H).clone()

    print("placeholders are looked up as id 0 before being replaced (their vector never survives):")
    ids = torch.tensor([1, TAG, 2])
    print(f"  embed_prompt({ids.tolist()})[:, 0] = {embed_prompt(ids, embed, TAG)[:, 0].tolist()}")

    print("\n== one tag, T = 3 frames ==")
    row = torch.tensor([1, 2, TAG, 3])
    embeds, mask = build_inputs_embeds([row], embed, TAG, [audio(100, 3)])
    print(f"  ids {row.tolist()} (L=4) -> embeds {tuple(embeds.shape)}: L + T - 1 = 4 + 3 - 1 = 6")
    show(embeds, mask)
    assert embeds.shape == (1, 6, H) and embeds[0, :, 0].tolist() == [1, 2, 100, 101, 102, 3]

    print("\n== a batch: two tags in one prompt, a text-only row, audios consumed in tag order across rows ==")
    rows = [torch.tensor([1, TAG, 2]),  # takes audio a (T=3)
            torch.tensor([3, TAG, 4, TAG, 5]),  # takes b (T=2), then c (T=1)
            torch.tensor([6, 7])]  # no audio
    audios = [audio(100, 3), audio(110, 2), audio(120, 1)]
    embeds, mask = build_inputs_embeds(rows, embed, TAG, audios)
    lengths = [len(r) + sum(a.shape[0] - 1 for a in auds) for r, auds in zip(rows, [audios[:1], audios[1:], []],
                                                                              strict=True)]
    print(f"  row lengths after splicing {lengths} -> left-padded to {tuple(embeds.shape)}")
    show(embeds, mask)
    assert lengths == mask.sum(1).tolist() == [5, 6, 2]
    assert embeds[1, :, 0].tolist() == [3, 110, 111, 4, 120, 5]
    assert torch.all(embeds[~mask] == 0) and bool(mask[:, -1].all())
    print("  padding is on the left and zero; the last column is a real token in every row, so greedy decoding "
          "appends each row's next token at the same position")

    print("\n== mismatches raise ==")
    for what, auds in (("one audio short", audios[:2]), ("one audio extra", [*audios, audio(130, 1)])):
        try:
            build_inputs_embeds(rows, embed, TAG, auds)
        except ValueError as err:
            print(f"  {what}: ValueError: {err}")
        else:
            raise AssertionError(what)


if __name__ == "__main__":
    main()
