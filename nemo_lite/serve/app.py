"""The HTTP front: OpenAI-compatible routes, the web page, health and metrics (FastAPI).

Routes parse, check, queue and write; they never run the model. Uploads are spooled to disk as they arrive
(:mod:`.uploads`), checked and cut into windows in a small thread pool (:func:`.engine.plan`: decoding a long file
once takes seconds, so not on the event loop), then queued on the :class:`~.scheduler.Scheduler`, whose worker
thread posts results back to the event loop. Everything async lives in this module.

Policies: ``/v1/*`` needs ``Authorization: Bearer <key>`` when the server has a key (the page, ``/health`` and
``/metrics`` stay open); at most ``max_queue`` transcription/chat requests are admitted at once, more get 429 with
``Retry-After``; a request whose client goes away has its queued work dropped; every error is OpenAI's error object.
Sampling parameters (``temperature``, ``top_p``, ...) and the transcription ``prompt`` are accepted and ignored:
decoding is greedy, as in NeMo's ``SALM.generate``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import math
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..audio import SAMPLE_RATE, AudioError
from ..longform import ChunkOptions
from ..transcription import Segment, Transcript
from . import formats
from .engine import Answer, ChatRow, Engine, Planned, assemble, load_clip, plan
from .formats import ApiError
from .metrics import Metrics
from .scheduler import AsrJob, ChatJob, Scheduler
from .uploads import Form, read_form, read_json

POLL_SECONDS = 0.25  # how often a waiting request checks whether its client is still there
CLIENT_CLOSED = 499  # status recorded for a request whose client went away (nginx's convention)
DECODE_THREADS = 2  # uploads checked and scanned at once, beside the model worker
ENDPOINTS = ("/", "/health", "/metrics", "/v1/models", "/v1/audio/transcriptions", "/v1/chat/completions")


@dataclass
class ServeConfig:
    model_name: str = "canary-qwen-2.5b"  # the id /v1/models lists and responses carry
    api_key: str | None = None  # required as a Bearer token on /v1/* when set
    max_batch_size: int = 8  # rows per decoding batch, per kind
    batch_wait_ms: float = 10.0  # how long the oldest waiting request may wait for a batch to fill
    max_queue: int = 64  # transcription/chat requests admitted at once; more get 429
    max_upload_mb: float = 100.0  # largest upload / JSON body
    max_audio_seconds: float | None = None  # longest audio accepted (None: no limit)
    threads: int | None = None  # torch threads of the model worker (None: torch's default)
    default_chat_tokens: int = 512  # chat max_tokens when the request gives none
    max_chat_tokens: int = 4096  # largest max_tokens accepted
    chunk: ChunkOptions | None = ChunkOptions()  # the model's window (None until the model has loaded)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)


class Disconnected(Exception):
    """The client closed the connection while its request waited."""


class Inbox:
    """What the worker thread posts for one request, read on the event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.items: list[tuple] = []
        self.event = asyncio.Event()

    def post(self, *item: Any) -> None:  # worker thread
        try:
            self.loop.call_soon_threadsafe(self._put, item)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _put(self, item: tuple) -> None:
        self.items.append(item)
        self.event.set()

    async def take(self, request: Request | None) -> list[tuple]:
        """The items posted so far (waits for one); with ``request``, raises :class:`Disconnected` if its
        client has gone (streaming responses leave that to Starlette, which cancels them)."""
        while not self.items:
            try:
                await asyncio.wait_for(self.event.wait(), POLL_SECONDS)
            except TimeoutError:
                if request is not None and await request.is_disconnected():
                    raise Disconnected from None
        items, self.items = self.items, []
        self.event.clear()
        return items


class Admission:
    """Counts admitted transcription/chat requests (event loop only) and refuses past ``max_queue``."""

    def __init__(self, config: ServeConfig, scheduler: Scheduler, metrics: Metrics) -> None:
        self.config, self.scheduler, self.metrics = config, scheduler, metrics
        self.count = 0

    def enter(self) -> None:
        if self.count >= self.config.max_queue:
            raise ApiError(429, f"the server is busy ({self.count} requests queued, --max-queue "
                           f"{self.config.max_queue}); retry later", code="rate_limit_exceeded",
                           headers={"Retry-After": str(self.retry_after())})
        self.count += 1
        self.metrics.queue_depth.set(self.count)

    def leave(self) -> None:
        self.count -= 1
        self.metrics.queue_depth.set(self.count)

    def retry_after(self) -> int:
        """Seconds until the queued rows are likely through: batches to go x mean batch time (1 to 60)."""
        batches = self.scheduler.waiting_rows() / self.config.max_batch_size
        return max(1, min(60, math.ceil(batches * self.scheduler.batch_seconds)))


def create_app(load: Callable[[], Engine], config: ServeConfig,
               on_fatal: Callable[[str], None] | None = None) -> FastAPI:
    """The app; ``load`` runs on the model worker at startup and returns the :class:`Engine` it owns."""
    metrics = Metrics()
    scheduler = Scheduler(load, config.max_batch_size, config.batch_wait_ms / 1000, metrics, config.threads,
                          on_fatal)
    admission = Admission(config, scheduler, metrics)
    pool = ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="nemo-lite-decode")
    spool = Path(tempfile.mkdtemp(prefix="nemo-lite-serve-"))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler.start()
        yield
        await asyncio.get_running_loop().run_in_executor(None, scheduler.stop)  # in-flight work finishes first
        pool.shutdown()
        shutil.rmtree(spool, ignore_errors=True)

    app = FastAPI(title="nemo-lite", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.config = scheduler, metrics, config
    app.add_middleware(Edge, metrics=metrics, api_key=config.api_key)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), err.status, headers=err.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(formats.error_body(str(err.detail), "invalid_request_error"), err.status_code)

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        return JSONResponse(formats.error_body(f"internal error: {type(err).__name__}: {err}", "server_error"), 500)

    def engine() -> Engine:
        if scheduler.engine is None:
            raise ApiError(503, "the model is still loading" if scheduler.error is None else
                           f"the model failed to load: {scheduler.error}", "server_error", code="model_not_ready")
        return scheduler.engine

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(files(__package__).joinpath("page.html").read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> JSONResponse:
        if scheduler.engine is not None:
            return JSONResponse({"status": "ok", "model": config.model_name})
        status = "loading" if scheduler.error is None else "error"
        return JSONResponse({"status": status, "error": scheduler.error}, 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/subtitles/{fmt}")
    async def subtitles(fmt: str, request: Request) -> Response:
        """The page's SRT/VTT download: the server's own writer (Transcript.to_srt/to_vtt) on the segments it got
        back from /v1/audio/transcriptions, so there is one subtitle writer, not a copy in JavaScript."""
        if fmt not in ("srt", "vtt"):
            raise ApiError(404, f"no subtitle format {fmt!r}; use srt or vtt", param="fmt")
        try:
            body = await request.json()
            segments = [Segment(float(s["start"]), float(s["end"]), str(s["text"])) for s in body["segments"]]
        except (ValueError, KeyError, TypeError) as err:
            raise ApiError(400, f"expected {{'segments': [{{start, end, text}}, ...]}}: {err}") from None
        t = Transcript(" ".join(s.text for s in segments), segments)
        media = "application/x-subrip" if fmt == "srt" else "text/vtt"
        return Response(t.to_srt() if fmt == "srt" else t.to_vtt(), media_type=f"{media}; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": config.model_name, "object": "model", "created": 0,
                                            "owned_by": "nemo-lite"}]}

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        engine()
        admission.enter()
        handed_over = False  # a streaming response leaves the queue when its stream ends
        try:
            with announced(scheduler):
                try:
                    form = await read_form(request, config.max_upload_bytes, spool)
                except ClientDisconnect:
                    return Response(status_code=CLIENT_CLOSED)
                try:
                    fmt, stream = _transcription_options(form)
                    # Timed formats and streams plan as transcribe(path, timestamps=True) (speech segments);
                    # json/text as transcribe(path): one pass for a clip within the window.
                    timestamps = stream or fmt in ("srt", "vtt", "verbose_json")
                    planned = await _plan(form, config, pool, timestamps)
                except BaseException:
                    form.discard()
                    raise
                inbox = Inbox()
                job = AsrJob(planned, on_window=lambda k, text: inbox.post("window", k, text),
                             on_error=lambda msg: inbox.post("error", msg), on_close=form.discard)
                _submit(scheduler, job)
            if stream:
                handed_over = True
                done = Release(scheduler, job, admission)
                return StreamingResponse(_stream_transcript(job, inbox, done, metrics), background=BackgroundTask(done),
                                         media_type="text/event-stream", headers=formats.SSE_HEADERS)
            try:
                texts = [t async for t in _window_texts(inbox, len(planned.windows), request)]
            except Disconnected:
                scheduler.cancel(job)
                return Response(status_code=CLIENT_CLOSED)
            metrics.audio_seconds.inc(planned.duration)
            body, media = formats.transcription(assemble(planned, texts), fmt)
            return JSONResponse(body) if isinstance(body, dict) else PlainTextResponse(body, media_type=media)
        finally:
            if not handed_over:
                admission.leave()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        tag = engine().audio_tag
        admission.enter()
        handed_over = False
        try:
            with announced(scheduler):
                try:
                    body = await read_json(request, config.max_upload_bytes)
                except ClientDisconnect:
                    return Response(status_code=CLIENT_CLOSED)
                turns, blobs = _parse_messages(body.get("messages"), tag)
                budget = _chat_budget(body, config)
                audios = [await _load_clip(data, where, config, pool) for where, data in blobs]
                inbox = Inbox()
                job = ChatJob(ChatRow(turns, audios, budget), on_done=lambda ans: inbox.post("done", ans),
                              on_error=lambda msg: inbox.post("error", msg))
                _submit(scheduler, job)
            seconds = sum(len(a) for a in audios) / SAMPLE_RATE
            cid, stream = formats.completion_id(), body.get("stream") is True
            if stream:
                handed_over = True
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                done = Release(scheduler, job, admission)
                return StreamingResponse(_stream_chat(inbox, done, cid, config.model_name, include_usage),
                                         background=BackgroundTask(done), media_type="text/event-stream",
                                         headers=formats.SSE_HEADERS)
            try:
                answer = await _answer(inbox, request)
            except Disconnected:
                scheduler.cancel(job)
                return Response(status_code=CLIENT_CLOSED)
            metrics.audio_seconds.inc(seconds)
            return JSONResponse(formats.chat_completion(cid, config.model_name, answer.text,
                                                        "stop" if answer.stopped else "length",
                                                        answer.prompt_tokens, answer.completion_tokens))
        finally:
            if not handed_over:
                admission.leave()

    return app


class Release:
    """End of a streamed request, run once: drop its remaining work (a no-op once finished) and leave the queue.

    Called from the stream's ``finally`` and from the response's background task: a client that goes away before
    the stream starts never runs the generator, so its ``finally`` alone would leak the queue slot.
    """

    def __init__(self, scheduler: Scheduler, job: AsrJob | ChatJob, admission: Admission) -> None:
        self.scheduler, self.job, self.admission = scheduler, job, admission
        self.done = False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self.scheduler.cancel(self.job)
            self.admission.leave()


@contextmanager
def announced(scheduler: Scheduler) -> Iterator[None]:
    """Tell the worker a job is on its way while the request is received and checked (see the scheduler)."""
    scheduler.incoming(1)
    try:
        yield
    finally:
        scheduler.incoming(-1)


def _submit(scheduler: Scheduler, job: AsrJob | ChatJob) -> None:
    try:
        scheduler.submit(job)
    except RuntimeError as err:  # shutting down
        if isinstance(job, AsrJob):
            job.planned.close()
            job.on_close()
        raise ApiError(503, str(err), "server_error", code="shutting_down") from None


# ---------------------------------------------------------------------- transcription helpers
def _transcription_options(form: Form) -> tuple[str, bool]:
    if form.path is None:
        raise ApiError(400, "missing the 'file' field (the audio to transcribe)", param="file")
    fmt = form.get("response_format", "json")
    if fmt not in formats.RESPONSE_FORMATS:
        raise ApiError(400, f"response_format {fmt!r} is not supported; use one of {list(formats.RESPONSE_FORMATS)}",
                       param="response_format")
    granularities = form.fields.get("timestamp_granularities[]", []) + form.fields.get("timestamp_granularities", [])
    if "word" in granularities:
        raise ApiError(400, "word timestamps are not supported: Canary-Qwen gives segment timestamps only "
                       "(use timestamp_granularities[]=segment with response_format=verbose_json)",
                       param="timestamp_granularities[]")
    unknown = set(granularities) - {"segment"}
    if unknown:
        raise ApiError(400, f"unknown timestamp granularity {sorted(unknown)}", param="timestamp_granularities[]")
    stream = (form.get("stream") or "false").lower() == "true"
    if stream and fmt not in ("json", "text"):
        raise ApiError(400, f"stream=true gives transcript.text events; response_format {fmt!r} cannot be streamed",
                       param="stream")
    return fmt, stream


async def _plan(form: Form, config: ServeConfig, pool: ThreadPoolExecutor, timestamps: bool) -> Planned:
    """Check the spooled upload and cut its windows, off the event loop; bad audio -> 400 naming the problem."""
    if form.size == 0:
        raise ApiError(400, f"{form.filename or 'file'}: the uploaded file is empty", param="file",
                       code="invalid_audio")
    try:
        chunk = config.chunk or ChunkOptions()  # None only while the model loads
        planned = await asyncio.get_running_loop().run_in_executor(pool, plan, str(form.path), chunk, timestamps)
    except AudioError as err:
        name = form.filename or "file"
        message = _strip_name(str(err)).replace(str(form.path), name)  # no spool paths in messages
        raise ApiError(400, f"{name}: {message}", param="file", code="invalid_audio") from None
    try:
        _check_duration(planned.duration, config, "file")
    except ApiError:
        planned.close()
        raise
    return planned


def _strip_name(message: str) -> str:
    """An AudioError message without its leading input name (a spool path or ``<N bytes>``)."""
    head, sep, rest = message.partition(": ")
    return rest if sep else message


def _check_duration(seconds: float, config: ServeConfig, param: str) -> None:
    if config.max_audio_seconds is not None and seconds > config.max_audio_seconds:
        raise ApiError(400, f"audio is {seconds:.1f} s long, over the server's limit of {config.max_audio_seconds:g} s "
                       "(--max-audio-seconds)", param=param, code="audio_too_long")


async def _window_texts(inbox: Inbox, n: int, request: Request | None) -> AsyncIterator[str]:
    """A job's window texts in window order, as they arrive."""
    texts: dict[int, str] = {}
    k = 0
    while k < n:
        for item in await inbox.take(request):
            if item[0] == "error":
                raise ApiError(500, f"transcription failed: {item[1]}", "server_error")
            texts[item[1]] = item[2]
        while k in texts:
            yield texts.pop(k)
            k += 1


async def _stream_transcript(job: AsrJob, inbox: Inbox, done: Release, metrics: Metrics) -> AsyncIterator[bytes]:
    """``transcript.text.delta`` per finished window (non-empty text), then ``transcript.text.done``."""
    texts: list[str] = []
    try:
        async for text in _window_texts(inbox, len(job.planned.windows), None):
            texts.append(text)
            if text.strip():  # deltas concatenate to the final text: windows joined by single spaces
                sep = " " if any(t.strip() for t in texts[:-1]) else ""
                yield formats.sse(formats.text_delta(sep + text.strip()))
        metrics.audio_seconds.inc(job.planned.duration)
        yield formats.sse(formats.text_done(assemble(job.planned, texts).text))
    except ApiError as err:
        yield formats.sse(err.body())
    finally:
        done()


# ---------------------------------------------------------------------- chat helpers
async def _load_clip(data: bytes, where: str, config: ServeConfig, pool: ThreadPoolExecutor):
    """An input_audio part's bytes -> 16 kHz samples, off the event loop; bad audio -> 400 naming the part."""
    try:
        audio = await asyncio.get_running_loop().run_in_executor(pool, load_clip, data)
    except AudioError as err:
        raise ApiError(400, f"{where}: {_strip_name(str(err))}", param=where, code="invalid_audio") from None
    _check_duration(len(audio) / SAMPLE_RATE, config, where)
    return audio


def _parse_messages(messages: Any, tag: str) -> tuple[list[dict[str, str]], list[tuple[str, bytes]]]:
    """OpenAI messages -> qwen-format turns (audio parts become ``tag`` in place) and the audio bytes in order.

    Parts of one message are joined with single spaces, so ``[{"type": "text", "text": "Transcribe the
    following:"}, <audio>]`` is exactly Canary-Qwen's ASR prompt.
    """
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    turns, blobs = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role not in ("user", "assistant"):
            raise ApiError(400, f"{where}: role {role!r} is not supported; Canary-Qwen's prompt format (NeMo's "
                           "'qwen') has user and assistant turns only", param=f"{where}.role")
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list) or not parts:
            raise ApiError(400, f"{where}: content must be a string or a non-empty list of parts",
                           param=f"{where}.content")
        pieces = []
        for j, part in enumerate(parts):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                if tag in part["text"]:
                    raise ApiError(400, f"{at}: text may not contain the audio tag {tag}; send audio as an "
                                   "input_audio part", param=at)
                pieces.append(part["text"])
            elif kind == "input_audio" and role == "user":
                blobs.append((at, _audio_bytes(part.get("input_audio"), at)))
                pieces.append(tag)
            else:
                raise ApiError(400, f"{at}: unsupported content part (use {{'type': 'text'}}, or "
                               "{'type': 'input_audio'} in a user message)", param=at)
        turns.append({"role": role, "content": " ".join(pieces)})
    if turns[-1]["role"] != "user":
        raise ApiError(400, "the last message must be the user's", param="messages")
    return turns, blobs


def _audio_bytes(spec: Any, where: str) -> bytes:
    data = spec.get("data") if isinstance(spec, dict) else None
    if not isinstance(data, str) or not data:
        raise ApiError(400, f"{where}: input_audio needs base64 'data'", param=where)
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where}: input_audio data is not valid base64", param=where) from None


def _chat_budget(body: dict, config: ServeConfig) -> int:
    if body.get("n") not in (None, 1):
        raise ApiError(400, "only n=1 is supported (greedy decoding gives one answer)", param="n")
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= config.max_chat_tokens:
            raise ApiError(400, f"{key} must be an integer from 1 to {config.max_chat_tokens}", param=key)
        return value
    return config.default_chat_tokens


async def _answer(inbox: Inbox, request: Request | None) -> Answer:
    kind, value = (await inbox.take(request))[0]
    if kind == "error":
        raise ApiError(500, f"generation failed: {value}", "server_error")
    return value


async def _stream_chat(inbox: Inbox, done: Release, cid: str, model: str, include_usage: bool
                       ) -> AsyncIterator[bytes]:
    """The answer as ``chat.completion.chunk`` events once decoded (batched greedy decoding finishes a row at
    once), then ``[DONE]``."""
    try:
        answer = await _answer(inbox, None)
        for chunk in formats.chat_chunks(cid, model, answer.text, "stop" if answer.stopped else "length",
                                         answer.prompt_tokens, answer.completion_tokens, include_usage):
            yield formats.sse(chunk)
        yield formats.sse("[DONE]")
    except ApiError as err:
        yield formats.sse(err.body())
    finally:
        done()


# ---------------------------------------------------------------------- the edge: auth + metrics
class Edge:
    """Pure ASGI middleware: counts and times every request; refuses ``/v1/*`` without the key (401)."""

    def __init__(self, app, metrics: Metrics, api_key: str | None) -> None:
        self.app, self.metrics = app, metrics
        self.key = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        status = 500
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.key is not None and path.startswith("/v1/") and not self._authorized(scope):
                await JSONResponse(formats.error_body(
                    "missing or wrong API key: send 'Authorization: Bearer <key>' (the server's --api-key)",
                    "invalid_request_error", code="invalid_api_key"), 401,
                    headers={"WWW-Authenticate": "Bearer"})(scope, receive, send_status)
                return
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_seconds.labels(endpoint).observe(loop.time() - t0)

    def _authorized(self, scope) -> bool:
        sent = dict(scope["headers"]).get(b"authorization", b"")
        return self.key is not None and hmac.compare_digest(sent, self.key)
