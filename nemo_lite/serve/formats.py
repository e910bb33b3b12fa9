"""OpenAI's wire formats: error objects, transcription responses, chat completions and server-sent events.

Shapes follow OpenAI's API reference for ``/v1/audio/transcriptions`` and ``/v1/chat/completions`` (as the official
``openai`` Python client parses them). Transcripts are written by :class:`~nemo_lite.transcription.Transcript`
(``to_srt``/``to_vtt``), the same writer the CLI uses. ``verbose_json`` segments carry ``id``, ``start``, ``end``,
``text`` and ``temperature`` (0: greedy); the log-probability fields Whisper reports are left out rather than
invented, and there are no word timestamps.
"""

from __future__ import annotations

import json
import time
import uuid

from ..transcription import Transcript

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
LANGUAGE = "english"  # Canary-Qwen-2.5B transcribes English only (its model card)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of event streams


class ApiError(Exception):
    """A request that fails with an HTTP status and OpenAI's error object."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status  # HTTP status code
        self.message = message  # says what is wrong and, where it helps, what to do
        self.type = type_  # OpenAI's error type: invalid_request_error, server_error, ...
        self.param = param  # the request field at fault, if any
        self.code = code  # a machine-readable code, if any
        self.headers = headers or {}  # e.g. Retry-After

    def body(self) -> dict:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def transcription(t: Transcript, fmt: str) -> tuple[str | dict, str]:
    """A transcript in ``response_format`` ``fmt`` -> (body, media type); dict bodies are JSON."""
    if fmt == "json":
        return {"text": t.text, "usage": {"type": "duration", "seconds": t.duration}}, "application/json"
    if fmt == "verbose_json":
        segments = [{"id": i, "start": s.start, "end": s.end, "text": s.text, "temperature": 0.0}
                    for i, s in enumerate(t.segments)]
        return {"task": "transcribe", "language": LANGUAGE, "duration": t.duration, "text": t.text,
                "segments": segments, "usage": {"type": "duration", "seconds": t.duration}}, "application/json"
    if fmt == "srt":
        return t.to_srt(), "application/x-subrip"
    if fmt == "vtt":
        return t.to_vtt(), "text/vtt"
    return t.text, "text/plain"


def sse(data: dict | str) -> bytes:
    """One server-sent event carrying ``data`` (JSON unless it is a string such as ``[DONE]``)."""
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def text_delta(delta: str) -> dict:
    return {"type": "transcript.text.delta", "delta": delta}


def text_done(text: str) -> dict:
    return {"type": "transcript.text.done", "text": text}


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def chat_completion(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                     "logprobs": None}],
        "usage": usage(prompt_tokens, completion_tokens),
    }


def chat_chunks(cid: str, model: str, text: str, finish: str, prompt_tokens: int, completion_tokens: int,
                include_usage: bool) -> list[dict]:
    """A finished answer as ``chat.completion.chunk`` objects: the text in one delta, then the finish reason (and,
    when asked for with ``stream_options.include_usage``, a last chunk with usage and no choices)."""
    base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]},
    ]
    if include_usage:
        chunks.append({**base, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})
    return chunks


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
