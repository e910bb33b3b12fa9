"""Tier 1: a server with an API key, a queue of one request and an audio-length limit — 401, 429 with
Retry-After, 400 for too-long audio — and the web page at ``/`` in Debian's headless chromium (playwright):
the key prompt, a file upload, the microphone path (chromium's fake device, encoded to WAV in the page), the
SRT download and a question to the LLM. The page's screenshot goes to $NEMO_LITE_SERVE_SCREENSHOT if set
(docs/serve_page.png was made so), else to a temporary folder."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the [serve] extra (fastapi, uvicorn, ...) is not installed")
openai = pytest.importorskip("openai", reason="the openai client (test extra) is not installed")
import httpx  # noqa: E402

from .serve_support import DATA, ThreadServer, metric, small_budgets  # noqa: E402
from .test_serve import assert_error  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
CHAT_TOKENS = 16  # the server's default max_tokens here (the page sends none)
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT_ENV = "NEMO_LITE_SERVE_SCREENSHOT"  # where to save the page's screenshot (docs/serve_page.png was made
# with it); unset: a temporary folder, so a test run leaves the tree clean
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream"]  # a fake microphone


@pytest.fixture(scope="module")
def keyed(tiny_ckpt, one_thread):
    from nemo_lite import CanaryQwen
    from nemo_lite.serve.app import ServeConfig, create_app
    from nemo_lite.serve.engine import Engine

    config = ServeConfig(model_name="tiny", api_key=KEY, max_queue=1, max_audio_seconds=12.0, threads=1,
                         default_chat_tokens=CHAT_TOKENS)
    app = create_app(lambda: Engine(CanaryQwen.from_pretrained(tiny_ckpt)), config)
    with small_budgets(), ThreadServer(app) as s:
        yield s


def test_key_is_required_on_v1_only(keyed):
    url = keyed.url
    missing = httpx.get(f"{url}/v1/models")
    assert assert_error(missing, 401, "API key")["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert_error(httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
    assert_error(httpx.post(f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", b"x")}), 401)
    for open_path in ("/health", "/", "/metrics"):
        assert httpx.get(f"{url}{open_path}").status_code == 200
    assert httpx.get(f"{url}/v1/models", headers=AUTH).json()["data"][0]["id"] == "tiny"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0).models.list()


def test_full_queue_is_429_with_retry_after(keyed):
    url = keyed.url
    first: list[httpx.Response] = []
    slow = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 150}
    thread = threading.Thread(target=lambda: first.append(
        httpx.post(f"{url}/v1/chat/completions", json=slow, headers=AUTH, timeout=120)))
    thread.start()
    deadline = time.monotonic() + 30
    while metric(httpx.get(f"{url}/metrics").text, "nemo_lite_queue_depth") < 1:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    second = httpx.post(f"{url}/v1/audio/transcriptions", headers=AUTH,
                        files={"file": ("short.wav", (DATA / "speech_short.wav").read_bytes())})
    assert assert_error(second, 429, "busy")["code"] == "rate_limit_exceeded"
    assert int(second.headers["retry-after"]) >= 1
    thread.join(120)
    assert first[0].status_code == 200
    assert first[0].json()["usage"]["completion_tokens"] == 150


def test_audio_over_the_length_limit_is_400(keyed):
    long = DATA / "speech_long.wav"  # 10.3 s: under the limit; twice that is over
    import io

    import numpy as np
    import soundfile as sf

    x, rate = sf.read(str(long), dtype="float32")
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([x, x]), rate, format="WAV")
    response = httpx.post(f"{keyed.url}/v1/audio/transcriptions", headers=AUTH,
                          files={"file": ("twice.wav", buf.getvalue())})
    assert assert_error(response, 400, "20.5 s", "--max-audio-seconds")["code"] == "audio_too_long"


def test_page_in_headless_chromium(keyed, tiny_model, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    medium = DATA / "speech_medium.wav"
    want = tiny_model.transcribe(str(medium), timestamps=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 900})
            prompts: list[str] = []
            page.on("dialog", lambda d: (prompts.append(d.message), d.accept(KEY)))
            page.goto(keyed.url)
            assert page.inner_text("#model") == "tiny"
            # the microphone (a fake device in headless chromium): record, stop, WAV encoded in the page
            page.click("#record")
            page.wait_for_timeout(1200)
            page.click("#record")  # the fake microphone plays a tone: no speech, so no segment rows are expected
            page.wait_for_function("document.querySelector('#status').textContent.includes('s of audio')",
                                   timeout=60_000)
            status = page.inner_text("#status")
            assert "s of audio" in status, status
            assert 0.5 < float(status.split(" s of audio")[0]) < 5
            assert prompts == ["This server needs an API key:"]  # asked once, then kept in sessionStorage
            # a picked file: the transcript and its segments as transcribe gives them
            page.set_input_files("#file", str(medium))
            page.wait_for_function("document.querySelector('#status').textContent.includes('4.3 s of audio')",
                                   timeout=60_000)
            assert page.inner_text("#text") == want.text
            assert page.locator("#segments tr").count() == len(want.segments)
            with page.expect_download() as download:
                page.click("#srt")
            assert Path(download.value.path()).read_text(encoding="utf-8") == want.to_srt()
            page.click("#ask")
            page.wait_for_function("!['', 'Thinking…'].includes(document.querySelector('#answer').textContent)",
                                   timeout=60_000)
            answer = page.inner_text("#answer")
            question = f"Summarize this transcript.\n\nTranscript:\n{want.text}"
            assert answer == tiny_model.chat(question, max_new_tokens=CHAT_TOKENS)
            assert prompts == ["This server needs an API key:"]
            page.screenshot(path=os.environ.get(SCREENSHOT_ENV) or str(tmp_path / "serve_page.png"), full_page=True)
        finally:
            browser.close()
