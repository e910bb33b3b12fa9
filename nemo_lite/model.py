"""CanaryQwen: NeMo's SALM (Canary-Qwen-2.5B) in plain PyTorch + transformers + peft.

Wiring: audio -> :class:`~nemo_lite.projection.Perception` (mel, FastConformer, proj) -> frames spliced into the
prompt embeddings at the audio tag (:mod:`nemo_lite.injection`) -> the LLM (Qwen3 + LoRA, :mod:`nemo_lite.llm`)
-> greedy decoding through ``generate(inputs_embeds=...)`` (:mod:`nemo_lite.decoding`).

Reference: NeMo 3.0.0 ``nemo/collections/speechlm2/models/salm.py`` (``SALM.generate``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from . import decoding, speed
from .audio import SAMPLE_RATE, AudioInput, load_audio, pad_to_minimum
from .config import SALMConfig
from .injection import build_inputs_embeds
from .llm import adapter_disabled, base_causal_lm, build_llm, finish_after_load, input_embeddings
from .memory import compute_on_call, release_freed_memory
from .prompts import Turn, asr_prompt, encode_dialog
from .weights import (
    WEIGHTS_FILE,
    CheckpointError,
    check_no_meta,
    local_artifacts,
    read_config,
    read_header,
    read_state_dict,
    resolve_checkpoint,
)

ENCODER_BATCH_SAMPLES = 40 * SAMPLE_RATE  # padded samples per encoder call on CPU: one 40 s window
# On a GPU: 32 such windows (e.g. 128 clips of 10 s) per call; the first subsampling conv's output is then
# ~2 GB in bf16, small next to a card's memory, and fewer, larger calls keep the GPU busy.
ACCELERATOR_ENCODER_BATCH_SAMPLES = 32 * ENCODER_BATCH_SAMPLES
CPU_BATCH_SIZE = 8  # rows decoded together by default on CPU: decode throughput ~4x batch 1 (README, Performance)
ACCELERATOR_BATCH_SIZE = 64  # on a GPU: H100 RTFx 10 at batch 1, 322 at 32, 695 at 128 (WORKLOG, session 3)
PREPROCESSOR_PREFIX = "perception.preprocessor."  # window + filterbank: always fp32, as NeMo uses them
ENCODER_PREFIX = "perception.encoder."
ENCODER_LAYERS_PREFIX = "perception.encoder.layers."  # the FastConformer blocks: 97 % of the encoder's weights


class CanaryQwen(nn.Module):
    """Speech-augmented LLM: FastConformer perception + Qwen3 with a switchable LoRA adapter."""

    def __init__(self, cfg: SALMConfig, llm_config, tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        from .projection import Perception  # pulls in transformers' Parakeet: imported when a model is built

        with torch.device("meta"):
            self.perception = Perception(cfg.preprocessor, cfg.encoder, cfg.output_dim)
        self.llm = build_llm(llm_config, cfg.lora)
        self.audio_tag_id = tokenizer.convert_tokens_to_ids(cfg.audio_locator_tag)
        self.eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
        if self.pad_id is None:
            self.pad_id = 0  # NeMo falls back to id 0 too (SALM.text_pad_id)
        self.merged_lora = False  # speed mode: LoRA folded into the weights (see nemo_lite.speed)
        self.compile_decoding = False  # speed mode (CUDA): static KV cache + compiled decoding steps

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike = "nvidia/canary-qwen-2.5b",
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
        llm_path: str | os.PathLike | None = None,
        quantize: str | None = None,
        merge_lora: bool = False,
        compact_encoder: bool | None = None,
        encoder_dtype: torch.dtype | str | None = None,
        compile: bool = False,
    ) -> CanaryQwen:
        """Load a checkpoint in the hub layout (``config.json`` + ``model.safetensors``), from a dir or the hub.

        ``device``: "cpu" (default), "cuda", "mps", ... ``dtype``: compute dtype; default fp32 on CPU (NeMo's
        compute, exact parity), bf16 elsewhere. ``llm_path``: where the LLM config + tokenizer live when the
        checkpoint's ``pretrained_llm`` (e.g. ``Qwen/Qwen3-1.7B``) cannot be reached.

        Speed modes (see :mod:`nemo_lite.speed`; exact = the defaults): ``dtype="bf16"`` halves weight memory;
        ``quantize="int8"`` (CPU) quantizes the LLM's linear layers dynamically, ``"int8-all"`` the
        FastConformer's too (3.3x faster encoder at full size); ``merge_lora=True`` folds the
        LoRA adapter into the weights for ASR and unfolds it for LLM mode.

        ``compact_encoder`` (default: on when computing fp32 from a bf16/fp16 checkpoint, as on CPU): the
        FastConformer layers keep the file's dtype at rest and are widened one layer at a time while they run
        (bit-identical results, 1.6 GB less for the 2.5B model; see :func:`nemo_lite.memory.compute_on_call`).
        Inference only; training passes ``False``.

        ``encoder_dtype``: compute dtype of the FastConformer alone (default: ``dtype``). ``"bf16"`` with
        ``quantize="int8"`` is the fast CPU mode whose WER stays at exact mode's: bf16 GEMMs make the encoder
        ~3.5x faster than fp32 on CPUs with AVX512-BF16/AMX, at bf16's accuracy rather than int8's.

        ``compile=True`` (CUDA only): static KV cache and ``torch.compile``'d decoding steps (CUDA graphs; see
        :mod:`nemo_lite.decoding`). Small batches decode several times faster once compiled; each new batch
        size and cache length compiles first (tens of seconds), so it is for many files, not one.
        """
        if quantize not in speed.QUANT_MODES:
            raise ValueError(f"quantize={quantize!r} not supported; use one of {speed.QUANT_MODES}")
        if quantize and merge_lora:
            raise ValueError("merge_lora cannot be combined with quantize: int8 weights cannot be unmerged for "
                             "LLM mode (int8 keeps LoRA as a cheap float side path instead)")
        device = torch.device(device or "cpu")
        dtype = _resolve_dtype(dtype, device)
        encoder_dtype = dtype if encoder_dtype is None else _resolve_dtype(encoder_dtype, device)
        if quantize and (device.type != "cpu" or dtype != torch.float32):
            raise ValueError("quantize='int8' is a CPU mode on an fp32 model (int8 weights, fp32 activations); "
                             "on GPU use dtype='bf16'")
        if compile and device.type != "cuda":
            raise ValueError("compile=True is a CUDA mode (CUDA graphs for the decoding steps); on CPU a step is "
                             "bound by reading the weights and compiling did not pay off")
        ckpt = resolve_checkpoint(name_or_path)
        cfg = SALMConfig.from_nemo(local_artifacts(ckpt, read_config(ckpt)))
        llm_config, tokenizer = _load_llm_config_and_tokenizer(cfg, llm_path)
        model = cls(cfg, llm_config, tokenizer)
        # int8: the linear weights to quantize stay in the file's dtype until quantized, one layer at a time.
        int8_encoder = quantize == "int8-all"
        to_quantize = frozenset(f"llm.{n}.weight" for n in speed.quantizable_linears(model.llm)) if quantize else \
            frozenset()
        if int8_encoder:
            encoder = model.perception.encoder
            to_quantize |= {f"perception.encoder.{n}.weight" for n in speed.quantizable_linears(encoder)}
        keys = list(model.state_dict(keep_vars=True))
        layer_keys = frozenset(k for k in keys if k.startswith(ENCODER_LAYERS_PREFIX))
        if int8_encoder and encoder_dtype != dtype:
            raise ValueError("encoder_dtype cannot be combined with quantize='int8-all' (its encoder is int8)")
        if compact_encoder is None:
            compact_encoder = not int8_encoder and _narrower_in_file(ckpt / WEIGHTS_FILE, layer_keys, encoder_dtype)
        if compact_encoder and int8_encoder:
            raise ValueError("compact_encoder and quantize='int8-all' exclude each other (the encoder's linear "
                             "layers are int8 already)")
        narrow_encoder = frozenset(k for k in keys if k.startswith(ENCODER_PREFIX)) \
            if encoder_dtype != dtype else frozenset()  # read as stored, then cast to encoder_dtype below
        model._load_weights(ckpt / WEIGHTS_FILE, dtype, device,
                            keep_file_dtype=to_quantize | narrow_encoder | (layer_keys if compact_encoder else
                                                                            frozenset()))
        if narrow_encoder:
            model.perception.encoder.to(encoder_dtype)
            _rebuild_encoder_positions(model.perception.encoder, device)  # its sin/cos table stays fp32
        model.eval()
        if compact_encoder:
            compute_on_call(model.perception.encoder.layers, dtype)
        if merge_lora:
            speed.merge_lora(model.llm)
            model.merged_lora = True
        model.compile_decoding = compile
        if quantize:
            speed.quantize_int8(model.llm)
        if int8_encoder:
            speed.quantize_int8(model.perception.encoder)
        release_freed_memory()  # the load's temporaries: ~150 MB of freed heap at full size
        return model

    def _load_weights(self, path, dtype: torch.dtype, device: torch.device,
                      keep_file_dtype: frozenset[str] = frozenset()) -> None:
        lm = base_causal_lm(self.llm)
        embed_key = _embed_key(self)
        expected = {k: t.shape for k, t in self.state_dict(keep_vars=True).items()}
        head_key = next((k for k in expected if k.endswith("lm_head.weight")), None)
        tied = bool(getattr(lm.config, "tie_word_embeddings", False)) and head_key is not None
        if tied:
            expected.pop(head_key)  # tied to the embedding; NeMo does not store it
        state = read_state_dict(path, expected, embed_key[: -len("embed_tokens.weight")], dtype, device,
                                keep_fp32=(PREPROCESSOR_PREFIX,), keep_file_dtype=keep_file_dtype)
        if tied:
            state[head_key] = state[embed_key]
        self.load_state_dict(state, strict=True, assign=True)
        finish_after_load(self.llm, device)
        _rebuild_encoder_positions(self.perception.encoder, device)
        check_no_meta(self)

    @property
    def device(self) -> torch.device:
        return self.perception.proj.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.perception.proj.weight.dtype

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def embed_audio(self, audios: Sequence[np.ndarray], max_samples: int | None = None) -> list[torch.Tensor]:
        """16 kHz float arrays -> per-audio LLM-width embeddings [(T_i, H)].

        Consecutive audios share one zero-padded encoder batch while it holds at most ``max_samples`` padded
        samples (default :func:`encoder_batch_samples`: one 40 s clip's worth on CPU, 32 on a GPU; a longer clip
        runs alone). The encoder's activations grow with
        the padded batch (the first subsampling conv alone is 256 x T/2 x 64 floats per clip), so bounding the
        batch keeps the peak memory of a batch of long windows at that of a single 40 s clip, while the LLM
        still decodes the whole batch together. Departure from NeMo (one encoder call per batch): valid frames do
        not depend on the padding, so results are the same up to float rounding.
        """
        out: list[torch.Tensor] = []
        for start, end in encoder_groups([len(a) for a in audios], max_samples or encoder_batch_samples(self.device)):
            group = audios[start:end]
            lengths = torch.tensor([len(a) for a in group], device=self.device)
            batch = torch.zeros(len(group), int(lengths.max()), device=self.device)  # (B, N)
            for i, a in enumerate(group):
                batch[i, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
            out += self.perception.embed_list(batch, lengths)
            del batch
            release_freed_memory()  # encoder temporaries vary in size per call: keep the heap from creeping
        return out

    def prompt_ids(self, prompt: list[Turn]) -> torch.Tensor:
        return torch.tensor(encode_dialog(self.tokenizer, prompt), dtype=torch.long, device=self.device)

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[list[Turn]] | None = None,
        audios: Sequence[AudioInput] | None = None,
        max_new_tokens: int = 128,
        sample_rate: int = SAMPLE_RATE,
        batch_size: int | None = None,
    ) -> list[list[int]]:
        """Greedy answers, one list of new token ids per prompt row (up to and including the first <|im_end|>).

        ``prompts``: NeMo's shape, one list of ``{"role", "content"}`` turns per row; the audio tag
        (``<|audioplaceholder|>``) may appear anywhere, several times; ``audios`` are consumed in tag order.
        Without ``prompts``, each audio gets the ASR prompt. Rows without audio run the plain LLM (LoRA off).
        ``batch_size``: rows per ``generate`` call (default :func:`default_batch_size`: 8 on CPU, 64 on a GPU).
        """
        batch_size = default_batch_size(self.device) if batch_size is None else batch_size
        # Deliberate departure from NeMo: clips under 20 ms are zero-padded to 20 ms; NeMo would give them no
        # audio frame (< 160 samples) or a NaN std (1 mel frame) (nemo/collections/asr/parts/preprocessing/features.py).
        arrays = [pad_to_minimum(load_audio(a, sample_rate)) for a in (audios or [])]
        if prompts is None:
            if not arrays:
                raise ValueError("generate() needs prompts, audios, or both")
            prompts = [asr_prompt(self.cfg.audio_locator_tag) for _ in arrays]
        rows = [self.prompt_ids(p) for p in prompts]
        row_audios = _assign_audios(rows, arrays, self.audio_tag_id)
        results: list[list[int] | None] = [None] * len(rows)
        for has_audio in (True, False):
            idx = [i for i in range(len(rows)) if bool(row_audios[i]) == has_audio]
            # Longest first keeps padding low; results go back to input order.
            idx.sort(key=lambda i: -sum(len(a) for a in row_audios[i]))
            for start in range(0, len(idx), batch_size):
                chunk = idx[start:start + batch_size]
                out = self._generate_batch([rows[i] for i in chunk], [row_audios[i] for i in chunk], max_new_tokens)
                for i, ids in zip(chunk, out, strict=True):
                    results[i] = ids
        return results  # type: ignore[return-value]

    def _generate_batch(
        self, rows: list[torch.Tensor], row_audios: list[list[np.ndarray]], max_new_tokens: int
    ) -> list[list[int]]:
        flat = [a for audios in row_audios for a in audios]
        return self._decode_rows(rows, self.embed_audio(flat) if flat else [], max_new_tokens)

    @torch.inference_mode()
    def generate_from_embeddings(self, audio_embeds: list[torch.Tensor], max_new_tokens: int = 128) -> list[list[int]]:
        """ASR greedy ids for audio already embedded by :meth:`embed_audio` ([(T_i, H)]), all in one batch.

        For callers that embed audio piece by piece and drop the samples before decoding (long-form
        transcription holds one encoder batch of samples at a time, not a whole decoding batch).
        """
        rows = [self.prompt_ids(asr_prompt(self.cfg.audio_locator_tag)) for _ in audio_embeds]
        return self._decode_rows(rows, list(audio_embeds), max_new_tokens)

    def _decode_rows(self, rows: list[torch.Tensor], audio_embeds: list[torch.Tensor], max_new_tokens: int
                     ) -> list[list[int]]:
        """One batch: prompt rows + the audio embeddings of their tags, in tag order -> new ids per row."""
        embeds, mask = build_inputs_embeds(rows, input_embeddings(self.llm), self.audio_tag_id, audio_embeds)
        options = decoding.GreedyOptions(max_new_tokens=max_new_tokens, eos_id=self.eos_id, pad_id=self.pad_id,
                                         compile=self.compile_decoding)
        if audio_embeds:
            if self.merged_lora:
                speed.ensure_merged(self.llm)
            return decoding.greedy(self.llm, embeds, mask, options)
        with adapter_disabled(self.llm):  # LLM mode: plain Qwen3, as NeMo under llm.disable_adapter()
            return decoding.greedy(self.llm, embeds, mask, options)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def transcribe(
        self,
        audio: AudioInput | list[AudioInput],
        batch_size: int | None = None,
        max_new_tokens: int | None = None,
        sample_rate: int = SAMPLE_RATE,
        timestamps: bool = False,
        max_chunk_seconds: float = 40.0,
        on_error: str = "raise",
        progress=None,
    ):
        """Transcribe one input or a list of inputs (results in input order).

        Returns: one input -> ``str``; a list -> ``list[str]``. With ``timestamps=True``, a
        :class:`~nemo_lite.transcription.Transcript` (``.text``, ``.segments`` of ``start``/``end`` seconds and
        ``text``, ``.duration``; ``to_dict()``, ``to_srt()``, ``to_vtt()``) instead of each ``str``.

        Inputs: a path (anything libsndfile decodes: wav, flac, ogg/vorbis, opus, mp3, ...), bytes, a binary file
        object, or a numpy array / torch tensor at ``sample_rate`` Hz (1-D, or 2-D samples x channels or channels x
        samples; integer PCM is scaled like soundfile). Everything is resampled to 16 kHz (soxr HQ), mono.

        Batching: inputs (or their windows) are sorted by duration and decoded ``batch_size`` at a time (default
        8 on CPU, 64 on a GPU, where larger batches keep raising throughput); each row gets its own token budget,
        so results equal one-by-one transcription.

        Long audio: over ``max_chunk_seconds`` (default 40 s; Canary was trained on <= 40 s) it is split into
        contiguous windows, each cut at the quietest 100 ms within the last 5 s (at most half a window) before the
        limit; no sample is dropped or repeated. Texts are joined with spaces; each window is one segment (times in
        seconds of the input). Memory: a long file (path, bytes or seekable file object) is never held whole; it is
        decoded once up front to check it and find the cuts, then again window by window as batches are decoded,
        giving exactly the samples of the loaded array (any format and rate). Arrays and tensors are held as given.
        Either way the model holds one batch of windows, whatever the length.

        ``max_new_tokens``: per window; default 8 tokens/s + 32, at least 128, far above speech rates.

        Edge cases: clips shorter than 20 ms (2 mel frames, the fewest the per-feature normalisation accepts) are
        zero-padded to 20 ms; anything longer, including clips under 0.5 s, runs as is. Digital silence is not
        special-cased: it runs through the model (its normalised features are all zero) and yields whatever text
        the model produces for it; it never errors.

        Bad inputs (missing, empty or undecodable file, wrong type, empty array, NaN/inf samples, 3-D array)
        raise :class:`~nemo_lite.audio.AudioError`. ``on_error="raise"`` (default) checks every input before any
        model work and raises one error naming all bad inputs (``.failures``: ``(index, message)`` pairs);
        ``on_error="skip"`` returns ``None`` for bad inputs and transcribes the rest. ``progress``: called with
        the audio seconds finished after each batch.
        """
        from .longform import ChunkOptions
        from .transcription import TranscribeOptions, transcribe

        opts = TranscribeOptions(batch_size=batch_size, max_new_tokens=max_new_tokens, sample_rate=sample_rate,
                                 chunk=ChunkOptions(max_chunk_seconds=max_chunk_seconds), on_error=on_error)
        return transcribe(self, audio, opts, timestamps=timestamps, progress=progress)

    def chat(
        self,
        messages: str | list[Turn],
        audios: AudioInput | Sequence[AudioInput] | None = None,
        max_new_tokens: int = 256,
        sample_rate: int = SAMPLE_RATE,
    ) -> str:
        """One greedy answer to a dialog (a string is one user turn). Without audio it runs the plain LLM (LoRA
        off, NeMo's LLM mode), e.g. ``chat(f"Summarize this transcript:\n{text}")``. With ``audios``, the
        messages must hold one audio tag (``<|audioplaceholder|>``) per audio."""
        turns = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
        if audios is not None and not isinstance(audios, (list, tuple)):
            audios = [audios]
        ids = self.generate(prompts=[turns], audios=audios, max_new_tokens=max_new_tokens, sample_rate=sample_rate)
        return self.decode(ids[0])


# ---------------------------------------------------------------------- helpers
def _resolve_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                 "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if dtype not in names:
            raise ValueError(f"dtype {dtype!r} not supported; use one of {sorted(names)}")
        return names[dtype]
    return dtype


def _load_llm_config_and_tokenizer(cfg: SALMConfig, llm_path):
    from transformers import AutoConfig, AutoTokenizer

    llm_src = str(llm_path) if llm_path else cfg.pretrained_llm
    tok_src = str(llm_path) if llm_path else cfg.tokenizer_path
    try:
        llm_config = AutoConfig.from_pretrained(llm_src)
        tokenizer = AutoTokenizer.from_pretrained(tok_src, use_fast=True)
    except Exception as err:
        raise CheckpointError(
            f"cannot load the LLM config/tokenizer {llm_src!r} named by the checkpoint's pretrained_llm "
            f"({type(err).__name__}: {err}).\nWithout hub access, pass llm_path= (or --llm-path) pointing at a "
            f"directory with the LLM's config.json and tokenizer files (e.g. a local copy of Qwen/Qwen3-1.7B)."
        ) from err
    # NeMo appends the audio tag as a special token (id 151669 for Qwen3); the embedding keeps its rows.
    tokenizer.add_special_tokens({"additional_special_tokens": [cfg.audio_locator_tag]})
    return llm_config, tokenizer


def default_batch_size(device: torch.device) -> int:
    """Rows decoded together when the caller does not say: :data:`CPU_BATCH_SIZE` or :data:`ACCELERATOR_BATCH_SIZE`."""
    return CPU_BATCH_SIZE if device.type == "cpu" else ACCELERATOR_BATCH_SIZE


def encoder_batch_samples(device: torch.device) -> int:
    """Padded samples per encoder call on ``device`` (see :data:`ENCODER_BATCH_SAMPLES`)."""
    return ENCODER_BATCH_SAMPLES if device.type == "cpu" else ACCELERATOR_ENCODER_BATCH_SAMPLES


def encoder_groups(lengths: list[int], max_samples: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) runs of audios that share one zero-padded encoder call: a run grows while
    (its size) x (its longest audio) stays within ``max_samples``; an audio longer than that runs alone."""
    groups, start = [], 0
    while start < len(lengths):
        end, longest = start + 1, lengths[start]
        while end < len(lengths) and (end - start + 1) * max(longest, lengths[end]) <= max_samples:
            longest = max(longest, lengths[end])
            end += 1
        groups.append((start, end))
        start = end
    return groups


def _narrower_in_file(path, keys: frozenset[str], dtype: torch.dtype) -> bool:
    """Whether the file stores the FastConformer layers in a narrower float dtype than ``dtype``."""
    from .weights import SAFETENSORS_DTYPES, to_ours

    header, _ = read_header(path)
    stored = {SAFETENSORS_DTYPES[v["dtype"]] for k, v in header.items() if to_ours(k, "llm.") in keys}
    stored = {d for d in stored if d.is_floating_point}
    return bool(stored) and dtype.is_floating_point and all(d.itemsize < dtype.itemsize for d in stored)


def _embed_key(model: CanaryQwen) -> str:
    embed = input_embeddings(model.llm)
    for name, module in model.named_modules():
        if module is embed:
            return name + ".weight"
    raise CheckpointError("the LLM has no input embedding")


def _rebuild_encoder_positions(encoder, device: torch.device) -> None:
    """The relative positional table's ``inv_freq`` is not in checkpoints; compute it on the real device."""
    pos = encoder.encode_positions
    encoder.encode_positions = type(pos)(encoder.config).to(device)


def _assign_audios(rows: list[torch.Tensor], arrays: list[np.ndarray], tag_id: int) -> list[list[np.ndarray]]:
    """Audios to prompt rows, in order of their tags; the counts must match exactly."""
    counts = [int((r == tag_id).sum()) for r in rows]
    if sum(counts) != len(arrays):
        raise ValueError(f"the prompts hold {sum(counts)} audio tag(s) but {len(arrays)} audio(s) were given")
    out, k = [], 0
    for n in counts:
        out.append(arrays[k:k + n])
        k += n
    return out
