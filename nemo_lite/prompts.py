"""Prompt formatting: NeMo's ``qwen`` prompt format (``nemo/collections/common/prompts/qwen.py``).

A dialog is a list of turns ``{"role": "user"|"assistant", "content": str}``. Each turn is rendered with its
template and tokenized on its own (as NeMo's ``PromptFormatter.encode_dialog`` does, so token boundaries never
cross turns); when the last turn is not the assistant's, the inference prefix ``<|im_start|>assistant\\n`` is
appended, tokenized on its own. No system turn, no BOS.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

BOT = "<|im_start|>"
EOT = "<|im_end|>"
TEMPLATES = {
    "user": f"{BOT}user\n{{message}}{EOT}\n",
    "assistant": f"{BOT}assistant\n{{message}}{EOT}\n",
}
INFERENCE_PREFIX = f"{BOT}assistant\n"
ASR_INSTRUCTION = "Transcribe the following: {audio}"  # Canary-Qwen's ASR prompt; {audio} = the audio tag
ADAPTER_INSTRUCTION = "Transcribe this audio."  # the Qwen2-VL audio adapter's, after its audio span

Turn = dict[str, str]


def text_to_ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Tokenize without special-token insertion (NeMo's ``AutoTokenizer.text_to_ids``)."""
    return tokenizer.convert_tokens_to_ids(tokenizer.tokenize(text))


def encode_dialog(tokenizer: PreTrainedTokenizerBase, turns: list[Turn]) -> list[int]:
    """Token ids for a dialog in the ``qwen`` format (inference prefix added after a user turn)."""
    if not turns:
        raise ValueError("a prompt must hold at least one turn")
    ids: list[int] = []
    for turn in turns:
        role = turn.get("role")
        if role not in TEMPLATES:
            raise ValueError(f"prompt turn has role {role!r}; the qwen format supports {sorted(TEMPLATES)}")
        if not isinstance(turn.get("content"), str):
            raise ValueError(f"prompt turn {turn!r} needs a 'content' string")
        ids += text_to_ids(tokenizer, TEMPLATES[role].format(message=turn["content"]))
    if turns[-1]["role"] != "assistant":
        ids += text_to_ids(tokenizer, INFERENCE_PREFIX)
    return ids


def asr_prompt(audio_tag: str, instruction: str = ASR_INSTRUCTION) -> list[Turn]:
    """The one-turn ASR prompt: ``Transcribe the following: <|audioplaceholder|>``."""
    return [{"role": "user", "content": instruction.format(audio=audio_tag)}]
