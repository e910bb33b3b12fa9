"""The speech-LM interface both designs share: audio -> LLM-width frames spliced into a chat prompt -> greedy ids.

:class:`SpeechLM` owns everything that does not depend on how audio becomes frames: prompt rows, the audio
splice (:mod:`nemo_lite.injection`), greedy decoding (:mod:`nemo_lite.decoding`), batching and sorting,
``inference_mode``, device defaults (:mod:`nemo_lite.runtime`), ``transcribe`` (:mod:`nemo_lite.transcription`)
and ``chat``. A design (:class:`~nemo_lite.canary_qwen.CanaryQwen`, :class:`~nemo_lite.whisper_adapter.WhisperLLM`)
supplies only its own parts:

- ``audio_embeddings(audios)``: its perception (mel + encoder + projection), with autograd as the caller has it
  (training calls it directly; inference goes through :meth:`SpeechLM.embed_audio`, under ``inference_mode``);
- ``asr_prompt()``: its transcription prompt, turns holding the audio tag once;
- ``window_seconds``: the longest audio one prompt takes (what it was trained on);
- ``encoder_name`` / ``projector_name``: where its encoder and projector live (training freezes and unfreezes by
  these names);
- its checkpoint layout (``from_pretrained``).

Code above the models (transcription, training, evaluation, serving) talks to this interface only.

Explicit state (STYLE rule 10): the loaded :class:`~nemo_lite.options.LoadOptions` (``self.options``), whether
LoRA is folded into the weights (``self.merged_lora``), and the static KV caches of compiled decoding
(``self.caches``, a :class:`~nemo_lite.decoding.CachePool`; :meth:`release_caches` frees them). The LLM's output
head carries one documented forward pre-hook (:func:`nemo_lite.llm.contiguous_head_input`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from . import decoding, speed, vision
from .audio import SAMPLE_RATE, AudioInput, load_audio, pad_to_minimum
from .injection import build_inputs_embeds
from .llm import adapter_disabled, base_causal_lm, contiguous_head_input, input_embeddings
from .memory import NarrowConv1d, NarrowEmbedding, NarrowLinear, cast_floats, narrow_loaded, release_freed_memory
from .options import LoadOptions
from .prompts import Turn, encode_dialog
from .runtime import default_batch_size, encoder_batch_samples, encoder_groups

EOS_TOKEN = "<|im_end|>"  # both designs' chat format ends an answer with it

log = logging.getLogger(__name__)


class SpeechLM(nn.Module):
    """Audio frames + a chat prompt -> a causal LM with an optional, switchable LoRA adapter -> greedy ids."""

    encoder_name: str = "encoder"  # submodule of the (frozen) audio encoder
    projector_name: str = "projector"  # submodule of the projection into the LLM width (trained in stage 1)
    new_lora_targets: str | None = None  # peft target regex for a new LoRA (training stage 2); None: keep its own

    def __init__(self, llm: nn.Module, tokenizer, audio_tag: str, options: LoadOptions | None = None) -> None:
        super().__init__()
        self.llm = llm
        self.tokenizer = tokenizer
        self.audio_tag = audio_tag  # the prompt token each audio's frames replace
        self.audio_tag_id = tokenizer.convert_tokens_to_ids(audio_tag)
        self.eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)
        # Finished rows are filled with the pad id and trimmed after eos, so its value never reaches a result.
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.options = options or LoadOptions()
        self.merged_lora = False  # LoRA folded into the weights (see nemo_lite.speed); set by load
        self.caches = decoding.CachePool() if self.options.compile else None  # static KV caches (compile mode)

    # ------------------------------------------------------------------ what a design supplies
    def audio_embeddings(self, audios: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """16 kHz arrays (one encoder batch) -> per-audio LLM-width frames [(T_i, H)], autograd as the caller has it."""
        raise NotImplementedError

    def asr_prompt(self) -> list[Turn]:
        """The transcription prompt: turns holding :attr:`audio_tag` once."""
        raise NotImplementedError

    @property
    def window_seconds(self) -> float:
        """The longest audio one prompt takes (longer inputs are cut into windows by transcription)."""
        raise NotImplementedError

    def audio_frames(self, samples: int) -> int:
        """LLM positions the audio of ``samples`` 16 kHz samples takes in a prompt (its embedding's length)."""
        raise NotImplementedError

    def encoder_samples(self, samples: int) -> int:
        """Samples the encoder actually processes for a clip of ``samples`` (a design that pads says so)."""
        return samples

    @property
    def has_vision(self) -> bool:
        """Whether prompts may hold images (``vision.IMAGE_TAG``): the LLM has a vision tower (Qwen2-VL)."""
        return False

    # ------------------------------------------------------------------ shared
    @property
    def audio_encoder(self) -> nn.Module:
        """The design's audio encoder (the module at :attr:`encoder_name`)."""
        return self.get_submodule(self.encoder_name)

    @property
    def audio_projector(self) -> nn.Module:
        """The design's projection into the LLM width (the module at :attr:`projector_name`)."""
        return self.get_submodule(self.projector_name)

    @property
    def device(self) -> torch.device:
        return self.audio_projector.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.audio_projector.weight.dtype

    def add_lora(self, r: int = 64, lora_alpha: float = 16, lora_dropout: float = 0.05,
                 target_modules: str | list[str] | None = None) -> None:
        """Wrap the LLM with a new LoRA adapter (B = 0: outputs unchanged) on ``target_modules`` (default
        :attr:`new_lora_targets`)."""
        from peft import LoraConfig, get_peft_model

        from .llm import is_peft

        if is_peft(self.llm):
            raise ValueError("the LLM already has a LoRA adapter")
        targets = target_modules or self.new_lora_targets
        if targets is None:
            raise ValueError(f"{type(self).__name__} has no default LoRA targets; pass target_modules")
        cfg = LoraConfig(task_type="CAUSAL_LM", r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                         target_modules=targets)
        self.llm = get_peft_model(self.llm, cfg)
        self.llm.train(self.training)  # new LoRA dropout modules start in train mode

    def release_caches(self) -> None:
        """Free the static KV caches of compiled decoding (a no-op otherwise)."""
        if self.caches is not None:
            self.caches.clear()

    @torch.inference_mode()
    def embed_audio(self, audios: Sequence[np.ndarray], max_samples: int | None = None) -> list[torch.Tensor]:
        """16 kHz float arrays -> per-audio LLM-width embeddings [(T_i, H)], under ``inference_mode``.

        Consecutive audios share one zero-padded encoder batch while it holds at most ``max_samples`` padded
        samples (default :func:`~nemo_lite.runtime.encoder_batch_samples`: one 40 s clip's worth on CPU, 32 on a
        GPU; a longer clip runs alone). Encoder activations grow with the padded batch, so bounding it keeps the
        peak memory of a batch of long windows at that of one window, while the LLM still decodes the whole batch
        together. Departure from NeMo (one encoder call per batch): valid frames do not depend on the padding,
        so results are the same up to float rounding.
        """
        out: list[torch.Tensor] = []
        sizes = [self.encoder_samples(len(a)) for a in audios]
        for start, end in encoder_groups(sizes, max_samples or encoder_batch_samples(self.device)):
            out += self.audio_embeddings(audios[start:end])
            release_freed_memory()  # encoder temporaries vary in size per call: keep the heap from creeping
        return out

    def prompt_ids(self, prompt: list[Turn]) -> torch.Tensor:
        """A dialog's token ids in the chat format (:func:`nemo_lite.prompts.encode_dialog`), on the model's device."""
        return torch.tensor(encode_dialog(self.tokenizer, prompt), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[Turn]] | None = None,
        audios: Sequence[AudioInput] | None = None,
        max_new_tokens: int = 128,
        sample_rate: int = SAMPLE_RATE,
        batch_size: int | None = None,
        images: Sequence[vision.ImageInput] | None = None,
        streamer=None,
    ) -> list[list[int]]:
        """Greedy answers, one list of new token ids per prompt row (up to and including the first <|im_end|>).

        ``prompts``: one list of ``{"role", "content"}`` turns per row; the audio tag (:attr:`audio_tag`) may
        appear anywhere, several times; ``audios`` are consumed in tag order. Without ``prompts``, each audio gets
        :meth:`asr_prompt`. Rows without audio run the plain LLM (LoRA off). ``batch_size``: rows per decoding
        call (default :func:`~nemo_lite.runtime.default_batch_size`: 8 on CPU, 64 on a GPU); rows are sorted by
        audio length so similar rows share a batch, and results come back in input order. ``streamer``: a
        transformers streamer (``put``/``end``, e.g. ``TextStreamer``) fed each new token as it is decoded; one
        prompt row only.

        ``images`` (a model with :attr:`has_vision`): paths, PIL images or (H, W, 3) uint8 arrays, consumed in
        the order of the prompts' image tags (``<|vision_start|><|image_pad|><|vision_end|>``, one per image);
        audio and images may share a prompt. A model without a vision tower refuses images.
        """
        images = list(images or [])
        if images and not self.has_vision:
            raise ValueError(f"this {type(self).__name__} has no vision tower (its LLM is text-only): it cannot take "
                             "images; a Qwen2-VL backbone can")
        batch_size = default_batch_size(self.device) if batch_size is None else batch_size
        # Deliberate departure from NeMo: clips under 20 ms are zero-padded to 20 ms; NeMo would give them no
        # audio frame (< 160 samples) or a NaN std (1 mel frame) (nemo/collections/asr/parts/preprocessing/features.py).
        arrays = [pad_to_minimum(load_audio(a, sample_rate)) for a in (audios or [])]
        if prompts is None:
            if not arrays:
                raise ValueError("generate() needs prompts, audios, or both")
            prompts = [self.asr_prompt() for _ in arrays]
        if any(not isinstance(p, (list, tuple)) or not all(isinstance(t, dict) for t in p) for p in prompts):
            raise ValueError("prompts must be lists of {'role', 'content'} turns (one list per row); pass audio as "
                             "audios=[...]")
        rows = [self.prompt_ids(p) for p in prompts]
        if streamer is not None and len(rows) != 1:
            raise ValueError(f"a streamer follows one answer; {len(rows)} prompts were given")
        row_audios = _assign_audios(rows, arrays, self.audio_tag_id)
        image_id = self.tokenizer.convert_tokens_to_ids(vision.IMAGE_PAD) if self.has_vision else None
        row_images = _assign_audios(rows, images, image_id, "image") if image_id is not None else [[] for _ in rows]
        results: list[list[int] | None] = [None] * len(rows)
        for has_audio in (True, False):
            idx = [i for i in range(len(rows)) if bool(row_audios[i]) == has_audio]
            idx.sort(key=lambda i: -sum(len(a) for a in row_audios[i]))  # longest first: little padding
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                flat = [a for i in chunk for a in row_audios[i]]
                embeds = self.embed_audio(flat) if flat else []
                pictures = [im for i in chunk for im in row_images[i]]
                out = self.decode_rows([rows[i] for i in chunk], embeds, max_new_tokens, pictures, streamer)
                for i, ids in zip(chunk, out, strict=True):
                    results[i] = ids
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def generate_from_embeddings(self, audio_embeds: list[torch.Tensor], max_new_tokens: int = 128,
                                 prompts: list[list[Turn]] | None = None) -> list[list[int]]:
        """Greedy ids for audio already embedded by :meth:`embed_audio` ([(T_i, H)]), all rows in one batch.

        ``prompts``: one dialog per row, its audio tags consumed in order; default :meth:`asr_prompt` per
        embedding. For callers that embed audio piece by piece and drop the samples before decoding (long-form
        transcription holds one encoder batch of samples at a time; the server batches several requests).
        """
        if prompts is None:
            prompts = [self.asr_prompt() for _ in audio_embeds]
        return self.decode_rows([self.prompt_ids(p) for p in prompts], list(audio_embeds), max_new_tokens)

    @torch.inference_mode()
    def decode_rows(self, rows: list[torch.Tensor], audio_embeds: list[torch.Tensor], max_new_tokens: int,
                    images: list | None = None, streamer=None) -> list[list[int]]:
        """One decoding batch: prompt id rows + the embeddings of their audio tags (and the images of their image
        tags), in tag order -> new ids per row. Rows are all with audio (adapter on) or all without (LLM mode:
        adapter off). ``streamer``: see :meth:`generate`."""
        options = decoding.GreedyOptions(max_new_tokens=max_new_tokens, eos_id=self.eos_id, pad_id=self.pad_id)
        extra, caches = None, self.caches
        if self.has_vision:  # the model embeds images and computes its M-RoPE positions itself (nemo_lite.vision)
            embeds, mask, extra = vision.multimodal_inputs(self.llm, rows, self.audio_tag_id, audio_embeds,
                                                           images or [], self.image_processor, self.pad_id)
            caches = None
        else:
            embeds, mask = build_inputs_embeds(rows, input_embeddings(self.llm), self.audio_tag_id, audio_embeds)
        if audio_embeds:
            if self.merged_lora:
                speed.ensure_merged(self.llm)
            return decoding.greedy(self.llm, embeds, mask, options, caches, extra, streamer)
        with adapter_disabled(self.llm):  # LLM mode: plain LLM, as NeMo under llm.disable_adapter()
            return decoding.greedy(self.llm, embeds, mask, options, caches, extra, streamer)

    def decode(self, ids: list[int]) -> str:
        """New ids -> text (special tokens dropped, outer whitespace stripped)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def transcribe(
        self,
        audio: AudioInput | list[AudioInput],
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        sample_rate: int = SAMPLE_RATE,
        timestamps: bool = False,
        max_chunk_seconds: float | None = None,
        on_error: str = "raise",
        progress: Callable[[float], None] | None = None,
        segmentation: str | None = None,
        allow_truncated: bool = False,
    ):
        """Transcribe one input or a list of inputs (results in input order).

        Returns: one input -> ``str``; a list -> ``list[str]``. With ``timestamps=True``, a
        :class:`~nemo_lite.transcription.Transcript` (``.text``, ``.segments`` of ``start``/``end`` seconds and
        ``text``, ``.duration``; ``to_dict()``, ``to_srt()``, ``to_vtt()``) instead of each ``str``.

        Inputs: a path (anything libsndfile decodes: wav, flac, ogg/vorbis, opus, mp3, ...), bytes, a binary file
        object, or a numpy array / torch tensor at ``sample_rate`` Hz (1-D, or 2-D samples x channels or channels x
        samples; integer PCM is scaled like soundfile). Everything is resampled to 16 kHz (soxr HQ), mono.

        Batching: inputs (or their windows) are sorted by duration and decoded ``batch_size`` at a time (default
        8 on CPU, 64 on a GPU); each row gets its own token budget, so results equal one-by-one transcription.

        Segments (``segmentation``, see :mod:`nemo_lite.transcription`): ``"vad"`` transcribes only speech, cut
        into phrase-length segments (at most 20 s) by Silero VAD, so silence and noise cost nothing and get no
        invented text (no speech: ``""``, no segments); ``"fixed"`` cuts contiguous windows of up to
        ``max_chunk_seconds`` at quiet points. The default (None) uses ``"vad"`` for input longer than
        ``max_chunk_seconds`` (default :attr:`window_seconds`: 40 s for Canary-Qwen, 30 s for a Whisper encoder)
        and whenever ``timestamps=True``, and one pass (NeMo's exact ids) for a shorter clip without timestamps.
        A long file is never held whole. ``max_new_tokens``: per window; default 8 tokens/s + 32, at least 128.

        Edge cases: clips shorter than 20 ms are zero-padded to 20 ms; digital silence runs through the model.

        Bad inputs raise :class:`~nemo_lite.audio.AudioError`. ``on_error="raise"`` (default) checks every input
        before any model work and raises one error naming all bad inputs (``.failures``: ``(index, message)``);
        ``on_error="skip"`` returns ``None`` for them and transcribes the rest. A damaged file (cut short: fewer
        samples than its header promises) is a bad input (:class:`~nemo_lite.audio.DamagedAudioError`) unless
        ``allow_truncated=True``, which transcribes the audio that is there and warns once
        (:class:`~nemo_lite.audio.TruncatedAudioWarning`). ``progress``: called with audio seconds as work is
        done (while inputs are scanned, per encoder group and per decoded batch); they add up to the duration
        of the inputs transcribed.
        """
        from .longform import ChunkOptions
        from .transcription import TranscribeOptions, transcribe

        seconds = max_chunk_seconds or self.window_seconds
        chunk = ChunkOptions(max_chunk_seconds=seconds, search_seconds=min(5.0, seconds / 2))
        opts = TranscribeOptions(batch_size=batch_size, max_new_tokens=max_new_tokens, sample_rate=sample_rate,
                                 chunk=chunk, on_error=on_error, segmentation=segmentation,
                                 allow_truncated=allow_truncated)
        return transcribe(self, audio, opts, timestamps=timestamps, progress=progress)

    def chat(
        self,
        messages: str | list[Turn],
        audios: AudioInput | Sequence[AudioInput] | None = None,
        max_new_tokens: int = 256,
        sample_rate: int = SAMPLE_RATE,
        images: vision.ImageInput | Sequence[vision.ImageInput] | None = None,
        streamer=None,
    ) -> str:
        """One greedy answer to a dialog (a string is one user turn). Without audio it runs the plain LLM (LoRA
        off, NeMo's LLM mode), e.g. ``chat(f"Summarize this transcript:\\n{text}")``. With ``audios``, the
        messages must hold one audio tag (:attr:`audio_tag`) per audio; with ``images`` (a Qwen2-VL backbone), one
        ``vision.IMAGE_TAG`` per image. ``streamer``: gets the answer token by token as it is decoded (e.g.
        ``transformers.TextStreamer(model.tokenizer, skip_special_tokens=True)`` prints it); the full answer is
        still returned."""
        turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        if audios is not None and not isinstance(audios, (list, tuple)):
            audios = [audios]
        if images is not None and not isinstance(images, (list, tuple)):
            images = [images]
        ids = self.generate(prompts=[turns], audios=audios, max_new_tokens=max_new_tokens, sample_rate=sample_rate,
                            images=images, streamer=streamer)
        return self.decode(ids[0])

    def _apply_speed_options(self) -> None:
        """After loading: fold LoRA (``merge_lora``), quantize the LLM's (and with ``int8-all`` the encoder's)
        linear layers; the model is frozen and in eval mode (training unfreezes what it trains)."""
        self.requires_grad_(False)
        self.eval()
        if self.options.merge_lora:
            speed.merge_lora(self.llm)
            self.merged_lora = True
        if self.options.quantize:
            speed.quantize(self.llm, "int4" if self.options.quantize == "int4" else "int8")
        if self.options.quantize == "int8-all":
            speed.quantize(self.audio_encoder, "int8")
        plan = self.options.plan
        log.info("compute plan: %s", plan.describe())
        if plan.rest is not None:
            self._hold_at_rest(plan.rest, plan.compute)
        contiguous_head_input(self.llm)  # quantizing swapped the head module: give the new one the hook
        release_freed_memory()  # the load's temporaries

    def _hold_at_rest(self, rest: torch.dtype, compute: torch.dtype) -> None:
        """Loaded in ``rest`` (bf16): keep the large weights so (the encoder layers' and the LLM's linear layers,
        its embedding table) and widen each to ``compute`` (fp32) per call; the rest (norms, the subsampling and
        the projector, whose dtype the inputs are cast to; LoRA's small matrices, whose dtype peft casts its
        input to) becomes ``compute``. Products then run in ``compute`` on exactly the ``rest``-rounded weights.
        ``compact_encoder=False`` (training, whose encoder may learn) leaves the encoder wide."""
        lm = base_causal_lm(self.llm)
        emb, head = lm.get_input_embeddings(), lm.get_output_embeddings()
        tied = head is not None and head.weight is emb.weight
        # decoding steps multiply in bf16: NarrowLinear's docstring
        narrow_loaded(self.llm, rest, skip=lambda name: "lora_" in name, step_in_narrow=True)
        if hasattr(self.audio_encoder, "layers") and self.options.compact_encoder is not False:  # False: training
            narrow_loaded(self.audio_encoder.layers, rest)
        table = lm.get_output_embeddings().weight if tied else emb.weight.detach().to(rest)
        narrow = NarrowEmbedding.holding(table, compute)  # (V, H) held narrow, looked-up rows widened
        narrow.padding_idx = emb.padding_idx
        lm.set_input_embeddings(narrow)
        cast_floats(self, compute, skip=(NarrowLinear, NarrowConv1d, NarrowEmbedding))


def _assign_audios(rows: list[torch.Tensor], arrays: list, tag_id: int, what: str = "audio") -> list[list]:
    """Audios (or images) to prompt rows, in order of their tags; the counts must match exactly."""
    counts = [int((r == tag_id).sum()) for r in rows]
    if sum(counts) != len(arrays):
        raise ValueError(f"the prompts hold {sum(counts)} {what} tag(s) but {len(arrays)} {what}(s) were given")
    out, k = [], 0
    for n in counts:
        out.append(arrays[k:k + n])
        k += n
    return out
