"""The audit page of ``nemo-lite eval --html`` (nemo_lite.report): figures counted by hand (corpus WER next to the
adapter authors' mean per-utterance WER on lower-cased text, on a case where they differ), escaping, flags, embedded
audio that decodes, the size guard, the command end to end on the tiny model, and the page in Debian's headless
chromium (playwright): the figures and the diff's coloured spans read off the DOM, the flagged-only filter, sorting.
The page's screenshot goes to $NEMO_LITE_REPORT_SCREENSHOT if set, else to a temporary folder."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from nemo_lite import evaluate as ev
from nemo_lite import report
from nemo_lite.audio import load_audio
from nemo_lite.training.data import Utterance

from .test_command_line import TOKENS, loaded, run  # noqa: F401  (loaded: the fixture, imported to be used here)
from .test_evaluate import EchoModel

DATA = Path(__file__).resolve().parent / "data"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
SCREENSHOT_ENV = "NEMO_LITE_REPORT_SCREENSHOT"
DATA_URI = re.compile(r'data-src="data:audio/ogg;base64,([^"]+)"')

# (reference, hypothesis), with what each scores, counted by hand:
# 1. normalised "the cat sat on the mat" vs "the cat sit on mat": sat->sit, "the" deleted: 2 of 6 = 33.3 %.
#    Lower-cased only: "the cat sat on the mat." vs "the cat sit on mat": sat->sit, then "the mat." against "mat"
#    is a deletion and a substitution ("mat." is not "mat"): 3 of 6 = 50 %.
# 2. "hello world" twice: 0 %. Lower-cased only: "hello," and "world!" are both substitutions: 100 %.
# 3. "open the door" vs "open the red door": one insertion, 1 of 3 = 33.3 % both ways.
# Corpus WER: (2 + 0 + 1) / (6 + 2 + 3) = 27.27 %; the authors' mean: (1/2 + 1 + 1/3) / 3 = 11/18 = 61.11 %.
HAND = [("The cat sat on the mat.", "the cat sit on mat"), ("Hello, World!", "hello world"),
        ("open the door", "open the red door")]


def scored(tmp_path: Path, pairs: list[tuple[str, str]], clips: list[Path] | None = None):
    """``evaluate_rows`` over ``pairs`` with a stand-in model that answers each clip's hypothesis."""
    clips = clips or [DATA / "speech_short.wav", DATA / "speech_medium.wav", DATA / "speech_long.wav"]
    items, answers = [], {}
    for n, (ref, hyp) in enumerate(pairs):
        path = tmp_path / f"clip{n}{clips[n % len(clips)].suffix}"
        shutil.copy(clips[n % len(clips)], path)
        items.append(Utterance(path, ref, sf.info(str(path)).duration))
        answers[path.name] = hyp
    return ev.evaluate_rows(EchoModel(answers), items)


def value(page: str, element_id: str) -> str:
    return re.search(rf'id="{element_id}">([^<]*)<', page)[1]


def test_figures_counted_by_hand(tmp_path):
    result, rows = scored(tmp_path, HAND)
    assert [r["word_errors"] for r in rows] == [2, 0, 1] and result.reference_words == 11
    assert result.wer == pytest.approx(3 / 11)
    assert [r["wer_lowercased"] for r in rows] == pytest.approx([0.5, 1.0, 1 / 3])
    assert result.mean_wer_lowercased == pytest.approx(11 / 18)
    page, reasons = report.render_report(result, rows)
    assert value(page, "corpus-wer") == "27.27 %" and value(page, "mean-wer") == "61.11 %"
    assert reasons == ["", "", ""]  # 33 %, 0 %, 33 %: under the 50 % default
    assert "lc 50 %" in page and "lc 100 %" in page  # each row's lower-cased WER beside its own
    assert page.count("<tr data-n=") == 3


def test_an_empty_reference_stays_out_of_the_lowercased_mean(tmp_path):
    """Bug found on the first real page: a manifest line with ``"text": ""`` got a lower-cased WER of 400 % (jiwer 4
    divides its 4 inserted words by 1), which pulled the authors' mean up; such a row has no WER there now."""
    result, rows = scored(tmp_path, [HAND[0], ("", "the water is cold")])
    assert rows[1]["wer_lowercased"] is None and result.mean_wer_lowercased == pytest.approx(0.5)
    page, reasons = report.render_report(result, rows)
    assert reasons[1] == "empty reference" and "lc —" in page and "1 empty reference(s) left out" in page
    assert result.wer == pytest.approx((2 + 4) / 6)  # the corpus WER still counts its words as insertions


def test_diff_marks_come_from_the_alignment():
    assert report.diff_html("open the door", "open the red door") == "open the <ins>red</ins> door"
    assert report.diff_html("a b", "") == "<del>a</del> <del>b</del>"
    assert report.diff_html("the cat sat", "the dog sat") == \
        'the <span class="sub"><del>cat</del><ins>dog</ins></span> sat'


def test_every_text_is_escaped(tmp_path):
    ref = '<script>alert("x")</script> Fish & \'chips\' @@ROWS@@'
    result, rows = scored(tmp_path, [(ref, "fish & chips </td>")])
    odd = tmp_path / "it's & <odd>.wav"
    Path(rows[0]["audio_filepath"]).rename(odd)
    rows[0]["audio_filepath"] = str(odd)
    out = tmp_path / "report.html"
    report.write_report(out, result, rows, report.ReportOptions(audio="link", title="<T&T>", source='"m" & <x>'))
    page = out.read_text(encoding="utf-8")
    assert page.count("<script") == 1  # the page's own script only
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; Fish &amp; &#x27;chips&#x27; @@ROWS@@" in page
    assert "fish &amp; chips &lt;/td&gt;" in page and "fish & chips </td>" not in page
    assert "<title>&lt;T&amp;T&gt;</title>" in page and "&quot;m&quot; &amp; &lt;x&gt;" in page
    assert 'data-src="it%27s%20%26%20%3Codd%3E.wav"' in page  # a URL, relative to the page
    assert 'title="' + str(odd).replace("&", "&amp;").replace("'", "&#x27;").replace("<", "&lt;").replace(
        ">", "&gt;") + '"' in page


def test_flags_empty_sides_and_high_wer(tmp_path):
    pairs = [("red green blue black", "red green pink gray"),  # 2 of 4 = 50 %: flagged at the 50 % default
             ("red green blue black", "red green blue gray"),  # 25 %: not, unless --flag-wer 0.2
             ("hello there", ""),  # nothing recognised
             ("Um.", "okay")]  # the normaliser drops the filler: nothing left to score against
    result, rows = scored(tmp_path, pairs)
    assert [r["wer"] for r in rows] == [0.5, 0.25, 1.0, 1.0]
    page, reasons = report.render_report(result, rows)
    assert reasons == ["WER ≥ 50 %", "", "empty hypothesis", "empty reference"]
    assert page.count('data-flagged="1"') == 3 and value(page, "flagged-count") == "3"
    _, reasons = report.render_report(result, rows, report.ReportOptions(flag_wer=0.2))
    assert reasons[1] == "WER ≥ 20 %"


def test_embedded_audio_decodes_to_the_clip_at_16k_mono(tmp_path):
    rate = 44100
    t = np.arange(int(1.5 * rate)) / rate
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 660 * t)], axis=1)
    clip = tmp_path / "src" / "stereo.flac"
    clip.parent.mkdir()
    sf.write(str(clip), stereo, rate)
    result, rows = scored(tmp_path, HAND[:2], [clip, DATA / "speech_short.wav"])
    out = tmp_path / "report.html"
    info = report.write_report(out, result, rows)
    assert info.audio == "embed" and info.note is None and info.size == out.stat().st_size
    uris = DATA_URI.findall(out.read_text(encoding="utf-8"))
    assert len(uris) == 2
    # the size guard's estimate errs high: the base64 written is at most what it expected
    assert sum(map(len, uris)) <= report.embedded_mb(sum(r["duration"] for r in rows), 2) * 1e6
    for uri, row in zip(uris, rows, strict=True):
        audio, sr = sf.read(io.BytesIO(base64.b64decode(uri)), dtype="float32")
        want = load_audio(row["audio_filepath"])  # 16 kHz mono
        assert sr == 16000 and audio.ndim == 1 and len(audio) == len(want)
        assert np.corrcoef(audio, want)[0, 1] > 0.95  # lossy (Vorbis), but the same sound


def test_size_guard_links_instead_of_embedding(tmp_path):
    result, rows = scored(tmp_path, HAND)
    out = tmp_path / "pages" / "report.html"  # a folder that is not there yet: made
    seconds = sum(r["duration"] for r in rows)  # 1.25 + 4.3 + 10.3 s and 3 headers: about 0.15 MB estimated
    assert report.embedded_mb(seconds, 3) == pytest.approx((3 * 3600 + seconds * 6500) * 4 / 3 / 1e6)
    info = report.write_report(out, result, rows, report.ReportOptions(embed_limit_mb=0.1))
    assert info.audio == "link" and "\n" not in info.note and "--html-max-mb" in info.note
    page = out.read_text(encoding="utf-8")
    assert "data:audio" not in page and page.count('data-src="../clip') == 3
    info = report.write_report(out, result, rows, report.ReportOptions(audio="link"))
    assert info.audio == "link" and info.note is None  # asked for: nothing to say


def test_eval_command_writes_the_page_with_the_jsonl(loaded, tmp_path, capsys):  # noqa: F811
    """``nemo-lite eval --html`` on the tiny model, with ``--output`` and alone; one line says where the page is."""
    for name in ("speech_short.wav", "speech_medium.wav"):
        shutil.copy(DATA / name, tmp_path / name)
    manifest = tmp_path / "test.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "speech_short.wav", "text": "Fish & <chips>"}) + "\n"
                        + json.dumps({"audio_filepath": "speech_medium.wav", "text": "hello world"}) + "\n")
    page_path, preds = tmp_path / "report.html", tmp_path / "preds.jsonl"
    code, out, err = run(["eval", str(manifest), "--model", loaded, *TOKENS, "--quiet", "--html", str(page_path),
                          "--output", str(preds)], capsys)
    assert code == 0, err
    result = json.loads(out)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    page = page_path.read_text(encoding="utf-8")
    assert page.count("<tr data-n=") == result["utterances"] == 2 and len(DATA_URI.findall(page)) == 2
    assert "Fish &amp; &lt;chips&gt;" in page
    for row in rows:
        assert f'<span class="tag">HYP</span>{report.html.escape(row["hypothesis"])}<' in page or not row["hypothesis"]
    assert value(page, "mean-wer") == f"{100 * result['mean_wer_lowercased']:.2f} %"
    assert [line for line in err.splitlines() if "audit page" in line] == \
        [f"nemo-lite: audit page {page_path} ({page_path.stat().st_size / 1e6:.1f} MB, audio embedded, "
         f"{sum(r['wer'] >= 0.5 or not r['hypothesis_normalized'] for r in rows)} of 2 utterance(s) flagged)"]
    code, _, err = run(["eval", str(manifest), "--model", loaded, *TOKENS, "--quiet", "--html", str(page_path),
                        "--html-max-mb", "0"], capsys)
    assert code == 0 and "links to the audio files instead" in err
    assert 'data-src="speech_short.wav"' in page_path.read_text(encoding="utf-8")


def test_page_in_headless_chromium(tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (test extra) is not installed")
    pairs = [*HAND, ("hello there", ""), ("red green blue black", "red green pink gray")]  # + two flagged
    result, rows = scored(tmp_path, pairs)
    out = tmp_path / "report.html"
    report.write_report(out, result, rows, report.ReportOptions(source="hand-written rows"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: errors.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
            page.goto(out.as_uri())
            assert page.inner_text("#corpus-wer") == "41.18 %"  # (3 + 2 + 2) / (11 + 2 + 4) words, by hand
            assert page.inner_text("#flagged-count") == "2"
            first = page.locator('tr[data-n="1"] .diff')
            assert first.locator("del").all_inner_texts() == ["sat", "the"]
            assert first.locator("ins").all_inner_texts() == ["sit"]
            style = "(e) => getComputedStyle(e).backgroundColor"
            deleted, inserted = first.locator("del").first.evaluate(style), first.locator("ins").first.evaluate(style)
            assert "rgba(0, 0, 0, 0)" not in (deleted, inserted) and deleted != inserted  # coloured, differently
            assert first.locator("del").first.evaluate("(e) => getComputedStyle(e).textDecorationLine") == \
                "line-through"
            # the flagged-only filter, from the checkbox and from the count at the top
            page.check("#flagged-only")
            assert page.locator("#utterances tbody tr:visible").count() == 2
            assert page.inner_text("#shown") == "2 of 5 shown"
            page.uncheck("#flagged-only")
            assert page.locator("#utterances tbody tr:visible").count() == 5
            page.click("#show-flagged")
            assert page.is_checked("#flagged-only") and page.locator("#utterances tbody tr:visible").count() == 2
            page.uncheck("#flagged-only")
            page.select_option("#sort", "wer-desc")  # 100 %, 50 %, 33 %, 33 %, 0 %: ties keep manifest order
            order = page.locator("#utterances tbody tr").evaluate_all("(rs) => rs.map((r) => r.dataset.n)")
            assert order == ["4", "5", "1", "3", "2"]
            page.fill("#search", "red door")
            assert page.locator("#utterances tbody tr:visible").count() == 1
            page.fill("#search", "")
            # the first clip's button becomes a player of its data: URI (speech_short.wav, 1.25 s)
            assert page.locator("audio").count() == 0
            page.click('tr[data-n="1"] button.play')
            duration = page.evaluate("""async () => {
                const a = document.querySelector('tr[data-n="1"] audio');
                if (a.readyState < 1) await new Promise((ok, fail) => {
                    a.onloadedmetadata = ok; a.onerror = () => fail(a.error.message); });
                return a.duration; }""")
            assert duration == pytest.approx(rows[0]["duration"], abs=0.05)
            assert errors == []  # no script error, no request leaving the file
            page.select_option("#sort", "order")
            page.screenshot(path=os.environ.get(SCREENSHOT_ENV) or str(tmp_path / "eval_report.png"), full_page=True)
        finally:
            browser.close()
