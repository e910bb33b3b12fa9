"""Tier 1: ``nemo-lite serve`` in process on the tiny model — OpenAI formats through the official client, chat, error
cases, batching across concurrent requests (results equal to ``transcribe``/``generate``), dropped work of clients
that went away. The server runs its own copy of the tiny checkpoint on its model worker; references come from the
session's ``tiny_model`` while the server is idle."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import soundfile as sf

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn, ...) is not installed")
openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")
import httpx  # noqa: E402

from nemo_lite.audio import SAMPLE_RATE  # noqa: E402

from .serve_support import (  # noqa: E402
    CHUNK_SECONDS,
    DATA,
    ThreadServer,
    metric,
    small_budgets,
    speechlike,
    write_bad_uploads,
    write_clips,
)

MEDIUM = DATA / "speech_medium.wav"
CHAT_TOKENS = 8
SHORT_CLIPS = 12  # with the 150 s file (15 windows) and 4 bad uploads: 17 concurrent requests
UPLOAD_MB = 8.0


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("serve_audio")
    long = d / "long_150s.wav"
    sf.write(str(long), speechlike(150.0, 7), SAMPLE_RATE)
    two = d / "two_windows.flac"
    sf.write(str(two), speechlike(14.0, 3), SAMPLE_RATE)
    return {"clips": write_clips(d, SHORT_CLIPS), "long": long, "two": two, "bad": write_bad_uploads(d)}


@pytest.fixture(scope="module")
def server(tiny_ckpt, one_thread):
    from nemo_lite import CanaryQwen
    from nemo_lite.longform import ChunkOptions
    from nemo_lite.serve.app import ServeConfig, create_app
    from nemo_lite.serve.engine import Engine

    chunk = ChunkOptions(max_chunk_seconds=CHUNK_SECONDS)
    config = ServeConfig(model_name="tiny", max_batch_size=8, batch_wait_ms=50, max_upload_mb=UPLOAD_MB, threads=1,
                         chunk=chunk)
    app = create_app(lambda: Engine(CanaryQwen.from_pretrained(tiny_ckpt), chunk), config)
    with small_budgets(), ThreadServer(app) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def transcript(model, path: Path):
    return model.transcribe(str(path), timestamps=True, max_chunk_seconds=CHUNK_SECONDS)


def test_openai_client_every_response_format(client, tiny_model, files):
    """json/text/srt/vtt/verbose_json through the official client (sent together, so they share batches) equal
    ``CanaryQwen.transcribe`` of the same file (two windows: segments and joining are exercised)."""
    path = files["two"]

    def ask(fmt: str):
        with open(path, "rb") as f:
            return client.audio.transcriptions.create(file=f, model="tiny", response_format=fmt)

    with ThreadPoolExecutor(5) as pool:
        got = dict(zip(("json", "text", "srt", "vtt", "verbose_json"),
                       pool.map(ask, ("json", "text", "srt", "vtt", "verbose_json")), strict=True))
    want = transcript(tiny_model, path)
    assert len(want.segments) >= 2  # long for the window: speech segments (VAD), as transcribe plans them
    assert got["json"].text == want.text
    assert got["text"] == want.text
    assert got["srt"] == want.to_srt()
    assert got["vtt"] == want.to_vtt()
    verbose = got["verbose_json"]
    assert verbose.text == want.text and verbose.language == "english"
    assert verbose.duration == pytest.approx(want.duration)
    assert [(s.id, s.start, s.end, s.text) for s in verbose.segments] == \
        [(i, s.start, s.end, s.text) for i, s in enumerate(want.segments)]


def test_streaming_transcription_events(client, tiny_model, files):
    with open(files["two"], "rb") as f:
        events = list(client.audio.transcriptions.create(file=f, model="tiny", stream=True))
    want = transcript(tiny_model, files["two"])
    assert [e.type for e in events] == ["transcript.text.delta"] * len(want.segments) + ["transcript.text.done"]
    assert "".join(e.delta for e in events[:-1]) == events[-1].text == want.text


def audio_part(path: Path) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(),
                                                   "format": path.suffix[1:]}}


def test_chat_with_one_audio_part_equals_generate(client, tiny_model):
    tag = tiny_model.cfg.audio_locator_tag
    out = client.chat.completions.create(model="tiny", max_tokens=CHAT_TOKENS, messages=[
        {"role": "user", "content": [{"type": "text", "text": "Transcribe the following:"}, audio_part(MEDIUM)]}])
    ids = tiny_model.generate(prompts=[[{"role": "user", "content": f"Transcribe the following: {tag}"}]],
                              audios=[str(MEDIUM)], max_new_tokens=CHAT_TOKENS)[0]
    assert out.object == "chat.completion" and out.choices[0].message.role == "assistant"
    assert out.choices[0].message.content == tiny_model.decode(ids)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == CHAT_TOKENS
    frames = tiny_model.embed_audio([sf.read(str(MEDIUM), dtype="float32")[0]])[0].shape[0]
    prompt = tiny_model.prompt_ids([{"role": "user", "content": f"Transcribe the following: {tag}"}])
    assert out.usage.prompt_tokens == len(prompt) - 1 + frames
    assert out.usage.total_tokens == out.usage.prompt_tokens + CHAT_TOKENS


def test_chat_with_several_audio_parts_and_turns_equals_generate(client, tiny_model):
    tag = tiny_model.cfg.audio_locator_tag
    short, noise = DATA / "speech_short.wav", DATA / "noise.wav"
    messages = [
        {"role": "user", "content": "Hello."},
        {"role": "assistant", "content": "Hi, send me audio."},
        {"role": "user", "content": [{"type": "text", "text": "Compare"}, audio_part(short),
                                     {"type": "text", "text": "with"}, audio_part(noise)]},
    ]
    out = client.chat.completions.create(model="tiny", max_completion_tokens=CHAT_TOKENS, messages=messages)
    turns = [messages[0], messages[1], {"role": "user", "content": f"Compare {tag} with {tag}"}]
    ids = tiny_model.generate(prompts=[turns], audios=[str(short), str(noise)], max_new_tokens=CHAT_TOKENS)[0]
    assert out.choices[0].message.content == tiny_model.decode(ids)


def test_text_only_chat_is_llm_mode_and_streams(client, tiny_model):
    question = "Summarize: the cat sat on the mat."
    out = client.chat.completions.create(model="tiny", max_tokens=CHAT_TOKENS, temperature=0.7,
                                         messages=[{"role": "user", "content": question}])
    assert out.choices[0].message.content == tiny_model.chat(question, max_new_tokens=CHAT_TOKENS)
    chunks = list(client.chat.completions.create(model="tiny", max_tokens=CHAT_TOKENS, stream=True,
                                                 stream_options={"include_usage": True},
                                                 messages=[{"role": "user", "content": question}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == out.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == CHAT_TOKENS


def test_models_and_health(server):
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["tiny"]


def post_file(url: str, path: Path | None, **fields) -> httpx.Response:
    files = {"file": (path.name, path.read_bytes())} if path is not None else None
    return httpx.post(f"{url}/v1/audio/transcriptions", files=files, data={"model": "tiny", **fields}, timeout=120)


def assert_error(response: httpx.Response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"]
    return error


def test_bad_uploads_are_400_naming_the_problem(server, files):
    notes, empty, truncated, random = files["bad"]
    assert_error(post_file(server.url, notes), 400, "notes.wav", "cannot decode audio")
    assert_error(post_file(server.url, empty), 400, "empty.wav", "empty")
    assert_error(post_file(server.url, truncated), 400, "truncated.wav")
    assert_error(post_file(server.url, random), 400, "random.flac")
    assert "nemo-lite-serve" not in post_file(server.url, notes).text  # spool paths stay private
    no_file = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"model": (None, "tiny")})
    assert assert_error(no_file, 400, "'file'")["param"] == "file"
    word = post_file(server.url, MEDIUM, **{"timestamp_granularities[]": "word"})
    assert assert_error(word, 400, "word timestamps are not supported")["param"] == "timestamp_granularities[]"
    assert_error(post_file(server.url, MEDIUM, response_format="mp3"), 400, "response_format")
    assert_error(httpx.post(f"{server.url}/v1/audio/transcriptions", json={"file": "x"}), 400, "multipart")


def test_bad_chat_requests_are_400(server):
    url = f"{server.url}/v1/chat/completions"
    system = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]}
    assert assert_error(httpx.post(url, json=system), 400, "'system'")["param"] == "messages[0].role"
    notes = {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"not audio").decode()}}
    bad = httpx.post(url, json={"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, notes]}]})
    assert assert_error(bad, 400, "cannot decode audio")["param"] == "messages[0].content[1]"
    garbled = {"type": "input_audio", "input_audio": {"data": "%%%"}}
    assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": [garbled]}]}), 400, "base64")
    assert_error(httpx.post(url, json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}), 400,
                 "max_tokens")
    assert_error(httpx.post(url, content=b"{not json"), 400, "JSON")
    assert_error(httpx.post(url, json={"messages": []}), 400, "messages")
    tag = {"messages": [{"role": "user", "content": "<|audioplaceholder|>"}]}
    assert_error(httpx.post(url, json=tag), 400, "audio tag")


def test_upload_over_the_limit_is_413(server):
    big = b"\0" * int((UPLOAD_MB + 0.5) * 2**20)
    response = httpx.post(f"{server.url}/v1/audio/transcriptions", files={"file": ("big.wav", big)}, timeout=60)
    assert_error(response, 413, "limit")


def raw_request(url: str, head: bytes, chunks, read_timeout: float = 10) -> tuple[bytes, int]:
    """Send ``head`` then body ``chunks`` on a raw socket until the server answers; (response, body bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=read_timeout) as s:
        s.sendall(head)
        s.setblocking(False)
        reply = b""
        for chunk in chunks:
            try:
                reply += s.recv(65536)
            except BlockingIOError:
                pass
            if reply:
                break
            try:
                s.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
            time.sleep(0.005)
        s.setblocking(True)
        s.settimeout(read_timeout)
        try:
            while b"\r\n\r\n" not in reply:
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except (TimeoutError, ConnectionResetError):
            pass
    return reply, sent


def test_413_stops_reading_early(server):
    """A declared length over the limit is refused before the body is sent; a chunked body once past the limit."""
    limit = int(UPLOAD_MB * 2**20)
    head = (f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nContent-Length: {100 * limit}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n\r\n").encode()
    reply, sent = raw_request(server.url, head, [])
    assert reply.startswith(b"HTTP/1.1 413") and sent == 0
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Type: multipart/form-data; boundary=b\r\n\r\n")
    part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n\r\n'
    piece = 256 * 1024
    chunks = [b"%x\r\n%s\r\n" % (len(part), part)] + [b"%x\r\n" % piece + b"\0" * piece + b"\r\n"] * 200
    reply, sent = raw_request(server.url, head, chunks)
    assert reply.startswith(b"HTTP/1.1 413")
    assert sent < 2 * limit  # refused at the limit, not after the whole 50 MB


def test_concurrent_requests_batch_and_equal_sequential(server, tiny_model, files):
    """12 short clips, a 150 s file (15 windows) and 4 bad uploads at once: every good answer equals
    ``transcribe`` of its file, every bad one is a 400 JSON error, each short request finishes before the long
    file (its windows share batches round-robin: even if it fills the first batch alone, the shorts are done by
    the third of four), and batches held more than one row."""
    url = server.url
    before = httpx.get(f"{url}/metrics").text
    jobs = [files["long"]] + files["clips"] + files["bad"]
    done: dict[Path, tuple[float, httpx.Response]] = {}
    t0 = time.monotonic()

    def send(path: Path) -> None:
        response = post_file(url, path, response_format="verbose_json")
        done[path] = (time.monotonic() - t0, response)

    threads = [threading.Thread(target=send, args=(p,)) for p in jobs]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(180)
    good = [files["long"]] + files["clips"]
    want = tiny_model.transcribe([str(p) for p in good], timestamps=True, max_chunk_seconds=CHUNK_SECONDS)
    for path, t in zip(good, want, strict=True):
        response = done[path][1]
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["text"] == t.text, path.name
        assert [(s["start"], s["end"], s["text"]) for s in body["segments"]] == \
            [(s.start, s.end, s.text) for s in t.segments]
    for path in files["bad"]:
        assert_error(done[path][1], 400, path.name)
    long_done = done[files["long"]][0]
    assert all(done[p][0] < long_done for p in files["clips"])
    after = httpx.get(f"{url}/metrics").text
    rows = metric(after, "nemo_lite_batch_rows_sum", kind="asr") - \
        metric(before, "nemo_lite_batch_rows_sum", kind="asr")
    batches = metric(after, "nemo_lite_batch_rows_count", kind="asr") - \
        metric(before, "nemo_lite_batch_rows_count", kind="asr")
    assert rows == sum(len(t.segments) for t in want)  # every speech segment of every good upload, once
    assert rows / batches > 4  # dozens of rows in a handful of batches of up to 8
    assert metric(after, "nemo_lite_requests_total", endpoint="/v1/audio/transcriptions", status="400") >= 4
    assert metric(after, "nemo_lite_queue_depth") == 0
    assert metric(after, "nemo_lite_audio_seconds_total") > 150


def test_disconnected_client_has_its_work_dropped(server, files):
    """A client that gives up on the 150 s file (15 windows) is noticed; windows not yet in a batch are not
    decoded, and the request is recorded with status 499."""
    from nemo_lite import transcription

    before = httpx.get(f"{server.url}/metrics").text
    with pytest.MonkeyPatch.context() as mp:  # the real budgets (128 tokens a window): a batch outlasts the client
        mp.setattr(transcription, "TOKENS_PER_SECOND", 8)
        mp.setattr(transcription, "MIN_TOKENS", 128)
        with pytest.raises(httpx.TimeoutException):
            httpx.post(f"{server.url}/v1/audio/transcriptions",
                       files={"file": ("long.wav", files["long"].read_bytes())}, timeout=httpx.Timeout(30, read=1.0))
        _wait_for_499(server, before)
        _wait_idle(server)
    rows = metric(httpx.get(f"{server.url}/metrics").text, "nemo_lite_batch_rows_sum", kind="asr") - \
        metric(before, "nemo_lite_batch_rows_sum", kind="asr")
    assert rows <= 8 < 15  # at most the one batch already running


def _wait_for_499(server, before: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = httpx.get(f"{server.url}/metrics").text
        if metric(after, "nemo_lite_requests_total", endpoint="/v1/audio/transcriptions", status="499") > \
                metric(before, "nemo_lite_requests_total", endpoint="/v1/audio/transcriptions", status="499"):
            return
        time.sleep(0.2)
    pytest.fail("the disconnect was not noticed")


def _wait_idle(server) -> None:
    """Until no rows wait and the batch that was running has finished (the scheduler released every job)."""
    scheduler = server.app.state.scheduler
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scheduler.waiting_rows() == 0 and not scheduler._asr:
            return
        time.sleep(0.1)
    pytest.fail("the scheduler did not become idle")


def test_streaming_client_that_leaves_frees_its_slot(server, files):
    """A streaming client that closes after the first event gets its queue slot back (the release runs once, from
    the stream's ``finally`` or the response's background task: a stream cancelled before it starts never runs
    its ``finally``)."""
    before = httpx.get(f"{server.url}/metrics").text
    with httpx.stream("POST", f"{server.url}/v1/audio/transcriptions", timeout=60,
                      files={"file": ("long.wav", files["long"].read_bytes())}, data={"stream": "true"}) as r:
        first = next(r.iter_lines())
    assert first.startswith("data: ") and json.loads(first[6:])["type"] == "transcript.text.delta"
    _wait_idle(server)
    deadline = time.monotonic() + 10
    while metric(httpx.get(f"{server.url}/metrics").text, "nemo_lite_queue_depth") != 0:
        assert time.monotonic() < deadline, "the queue slot was not given back"
        time.sleep(0.05)
    after = httpx.get(f"{server.url}/metrics").text
    assert metric(after, "nemo_lite_requests_total", endpoint="/v1/audio/transcriptions", status="200") > \
        metric(before, "nemo_lite_requests_total", endpoint="/v1/audio/transcriptions", status="200")


def test_metrics_text(server):
    text = httpx.get(f"{server.url}/metrics").text
    for name in ("nemo_lite_requests_total", "nemo_lite_request_seconds_bucket", "nemo_lite_batch_rows_bucket",
                 "nemo_lite_queue_depth", "nemo_lite_audio_seconds_total"):
        assert name in text
    assert json.loads(httpx.get(f"{server.url}/nowhere").text)["error"]["type"] == "invalid_request_error"


def test_scheduler_fair_share_and_failure_isolation():
    """Without a model: windows are taken round-robin across jobs (a long job gets one slot per turn), and a row
    whose batch fails is retried alone, so only that row's request fails."""
    from nemo_lite.serve.engine import ChatRow, Planned
    from nemo_lite.serve.scheduler import AsrJob, ChatJob, Scheduler

    batches: list[list[str]] = []

    class FakeEngine:
        def transcribe_windows(self, rows):
            names = [f"{p.loaded}{k}" for p, k in rows]
            batches.append(names)
            if "bad0" in names:
                raise RuntimeError("this window cannot be decoded")
            return names

        def generate(self, rows):
            return [r.max_new_tokens for r in rows]

    results: dict[str, list] = {}

    def job(name: str, n: int) -> AsrJob:
        results[name] = []
        return AsrJob(Planned(name, [(0, 1)] * n, n), on_window=lambda k, t: results[name].append(t),
                      on_error=lambda msg: results[name].append(f"error: {msg}"))

    scheduler = Scheduler(FakeEngine, max_batch_size=4, batch_wait=0.05)
    for j in (job("long", 6), job("a", 1), job("bad", 1), job("b", 2)):
        scheduler.submit(j)
    answers = []
    scheduler.submit(ChatJob(ChatRow([], [], 3), on_done=answers.append, on_error=answers.append))
    scheduler.start()
    deadline = time.monotonic() + 10
    while (len(results["long"]) < 6 or not answers) and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop(5)
    assert batches[0] == ["long0", "a0", "bad0", "b0"]  # one window per job per turn
    assert batches[1:5] == [["long0"], ["a0"], ["bad0"], ["b0"]]  # the failed batch again, row by row
    assert batches[5:] == [["b1", "long1", "long2", "long3"], ["long4", "long5"]]  # b's turn first, then long
    assert results["a"] == ["a0"] and results["b"] == ["b0", "b1"] and len(results["long"]) == 6
    assert results["bad"][0].startswith("error: RuntimeError")
    assert answers == [3]


def test_cli_imports_the_server_lazily():
    """``nemo-lite --help`` must not pay for FastAPI/uvicorn: cli.py imports nemo_lite.serve only inside cmd_serve."""
    import ast

    import nemo_lite.cli

    tree = ast.parse(Path(nemo_lite.cli.__file__).read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if "serve" in n or n in ("fastapi", "uvicorn", "prometheus_client")]
    serve = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "cmd_serve")
    assert any(isinstance(n, ast.ImportFrom) and n.module == "serve.server" for n in ast.walk(serve))


def test_batch_waits_for_requests_in_flight_that_fill_it():
    """Batches of 6.9 rows of 8 at 16 clients (bench/serve_load.py): a batch left after ``batch_wait`` while uploads
    it could hold were still being received. It now waits for requests in flight when they would fill it (up to a
    tenth of a batch's mean time), and only ``batch_wait`` when they would not."""
    from nemo_lite.serve.engine import Planned
    from nemo_lite.serve.scheduler import AsrJob, Scheduler

    def run(waiting: int, in_flight: int) -> list[int]:
        sizes: list[int] = []

        class FakeEngine:
            def transcribe_windows(self, rows):
                sizes.append(len(rows))
                return ["x"] * len(rows)

        def job() -> AsrJob:
            return AsrJob(Planned("clip", [(0, 1)], 1), on_window=lambda k, t: None, on_error=lambda m: None)

        scheduler = Scheduler(FakeEngine, max_batch_size=8, batch_wait=0.01)
        scheduler.batch_seconds = 2.0  # running mean batch time: up to 0.2 s of waiting to fill a batch
        for _ in range(waiting):
            scheduler.submit(job())
        scheduler.incoming(in_flight)
        scheduler.start()
        time.sleep(0.1)  # the requests in flight arrive 10x batch_wait later
        for _ in range(in_flight):
            scheduler.submit(job())
        scheduler.incoming(-in_flight)
        scheduler.stop(5)
        return sizes

    assert run(5, 3) == [8]  # the three in flight fill the batch: it waited for them
    assert run(5, 1) == [5, 1]  # they would not fill it: it left after batch_wait
