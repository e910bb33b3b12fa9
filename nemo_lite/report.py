"""The audit page of ``nemo-lite eval --html report.html``: one self-contained HTML file (inline CSS and script, no
network) with the corpus figures and a row per utterance — reference, hypothesis, a coloured word diff, an audio
player, WER/CER and a disagreement flag — made from :func:`nemo_lite.evaluate.evaluate_rows`' rows only, so it is
the same for every model design.

Figures at the top: corpus WER and CER (:mod:`nemo_lite.scoring`: errors summed over utterances after Whisper's
English normaliser) and beside them the figure the Qwen2-VL audio adapter's authors reported, the mean of
per-utterance WERs on lower-cased raw text, with a line saying why the two differ.

The diff is drawn from jiwer's word alignment of the normalised texts (:func:`nemo_lite.scoring.word_alignment`):
a deleted reference word struck through in red, an inserted hypothesis word in green, a substitution as the
two side by side. Every text goes through :func:`html.escape` (references hold ``<``, ``&`` and quotes).

Disagreement flag (the authors used their report to find label noise): an utterance is flagged when its normalised
reference or hypothesis is empty, or its WER is at least ``flag_wer`` (:data:`FLAG_WER`, ``--flag-wer``): at
0.5 half the reference words are wrong, far more than a working model's few percent, which is where a wrong,
shifted or truncated label shows. The page counts the flagged rows at the top, and filters ("flagged only", a
text search) and sorts (by WER) in the browser.

Audio: embedded by default as ``data:`` URIs — each clip decoded to 16 kHz mono (:func:`nemo_lite.audio.load_audio`)
and encoded as Ogg Vorbis by soundfile (libsndfile; ~6 kB per second of speech + 3.5 kB of headers a clip, a third
of FLAC, and ~10x faster to encode than libsndfile's Opus), so the page can be mailed. Chromium and Firefox play Ogg
Vorbis; Safari may not (``--html-audio link`` there, or another browser). When the corpus would add more than
``embed_limit_mb`` (:data:`EMBED_LIMIT_MB`, ``--html-max-mb``; estimated by :func:`embedded_mb` from the durations,
before anything is encoded) the page links to the audio files instead (paths relative to the page) and
:class:`ReportInfo` carries a one-line note saying so.

Large pages: a row holds a play button with its clip's URL, and the page's script puts an ``<audio>`` player in its
place when it is clicked; the table has a fixed layout and its cells ``content-visibility: auto``, so sorting and
filtering lay out only the rows on screen. 2048 rows (58 min of audio, a 34 MB page) on a 2-core machine at load
average 6-8: with an ``<audio preload="none">`` per row the page took 20 s to open and ~2.5 s per re-sort; now
6-10 s to open (mostly parsing the 34 MB) and 0.2-0.7 s per re-sort in headless chromium.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

from .scoring import EvalResult, word_alignment

FLAG_WER = 0.5  # flag an utterance at this WER or more (module docstring)
EMBED_LIMIT_MB = 100.0  # the most embedded audio a page gets before it links instead (~3 h of speech)
# Ogg Vorbis size, libsndfile's default quality, 16 kHz mono; rounded up so that the estimate errs towards linking:
VORBIS_BYTES_PER_SECOND = 6_500  # speech: 5.0-6.2 kB/s measured (espeak-ng clips, tests/data/speech_long.wav)
VORBIS_BYTES_PER_CLIP = 3_600  # the setup headers (codebooks) every Ogg Vorbis file carries: 3.5 kB measured
BASE64_GROWTH = 4 / 3  # 3 bytes -> 4 characters
TEMPLATE = Path(__file__).parent / "assets" / "report.html"
LOWERCASED_TIP = "WER of the lower-cased raw texts, the adapter authors' per-utterance figure"


@dataclass(frozen=True)
class ReportOptions:
    flag_wer: float = FLAG_WER  # flag rows whose (normalised) WER is at least this
    audio: str = "embed"  # "embed": data: URIs in the page; "link": links to the files, relative to the page
    embed_limit_mb: float = EMBED_LIMIT_MB  # estimated embedded audio above this (MB): link instead
    title: str = "nemo-lite eval"  # the page's heading
    source: str = ""  # a line under it (the manifest and the model)

    def __post_init__(self) -> None:
        if self.audio not in ("embed", "link"):
            raise ValueError(f"audio must be 'embed' or 'link', not {self.audio!r}")


@dataclass
class ReportInfo:
    size: int  # bytes written
    audio: str  # "embed" or "link": what the page got
    flagged: int  # rows flagged
    note: str | None = None  # one line for the user when embedding was switched to links
    reasons: list[str] = field(default_factory=list)  # each row's flag reasons ("" when not flagged)


def flag_reason(row: dict, flag_wer: float = FLAG_WER) -> str:
    """Why ``row`` is flagged ("" when it is not): its normalised reference or hypothesis is empty, else its WER is
    at least ``flag_wer``."""
    reasons = []
    if not row["reference_normalized"].split():
        reasons.append("empty reference")
    if not row["hypothesis_normalized"].split():
        reasons.append("empty hypothesis")
    if not reasons and row["wer"] >= flag_wer:
        reasons.append(f"WER ≥ {percent(flag_wer, 0)}")
    return ", ".join(reasons)


def percent(rate: float | None, digits: int = 1) -> str:
    """``0.1234`` -> ``"12.3 %"``; None (no reference words to count against) -> ``"—"``."""
    return "—" if rate is None else f"{100 * rate:.{digits}f} %"


def diff_html(ref: str, hyp: str) -> str:
    """The coloured word diff of two normalised strings: ``<del>`` for a deleted reference word, ``<ins>`` for an
    inserted hypothesis word, both inside ``<span class="sub">`` for a substitution."""
    e = html.escape
    parts = []
    for op, a, b in word_alignment(ref, hyp):
        if op == "equal":
            parts.append(e(a))
        elif op == "delete":
            parts.append(f"<del>{e(a)}</del>")
        elif op == "insert":
            parts.append(f"<ins>{e(b)}</ins>")
        else:
            parts.append(f'<span class="sub"><del>{e(a)}</del><ins>{e(b)}</ins></span>')
    return " ".join(parts)


def embedded_audio(path: str | Path) -> str:
    """A ``data:`` URI of the clip as Ogg Vorbis, 16 kHz mono."""
    import soundfile as sf

    from .audio import SAMPLE_RATE, load_audio

    buf = io.BytesIO()
    sf.write(buf, load_audio(str(path)), SAMPLE_RATE, format="OGG", subtype="VORBIS")
    return "data:audio/ogg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def audio_link(path: str | Path, page_dir: Path) -> str:
    """The clip's URL from the page: relative when it can be (the page and the audio move together), else file://."""
    path = Path(path).resolve()
    try:
        return quote(Path(os.path.relpath(path, page_dir.resolve())).as_posix())
    except ValueError:  # another drive (Windows)
        return path.as_uri()


def embedded_mb(seconds: float, clips: int) -> float:
    """Estimated MB that ``clips`` clips of ``seconds`` in all add to the page when embedded (base64 included)."""
    return (clips * VORBIS_BYTES_PER_CLIP + seconds * VORBIS_BYTES_PER_SECOND) * BASE64_GROWTH / 1e6


def audio_sources(rows: list[dict], options: ReportOptions, page_dir: Path) -> tuple[list[str], str, str | None]:
    """Each row's audio URL, the mode used and a note when the size guard switched embedding to links."""
    mode, note = options.audio, None
    if mode == "embed":
        seconds = sum(float(r.get("duration") or 0.0) for r in rows)
        estimate_mb = embedded_mb(seconds, len(rows))
        if estimate_mb > options.embed_limit_mb:
            mode = "link"
            note = (f"the audio ({seconds / 3600:.1f} h) would add about {estimate_mb:.0f} MB to the page, over the "
                    f"{options.embed_limit_mb:g} MB limit (--html-max-mb): the page links to the audio files instead")
    if mode == "link":
        return [audio_link(r["audio_filepath"], page_dir) for r in rows], mode, note
    from .audio import AudioError

    sources = []
    for r in rows:
        try:
            sources.append(embedded_audio(r["audio_filepath"]))
        except AudioError:  # read when transcribed, unreadable now: the page still links to it
            sources.append(audio_link(r["audio_filepath"], page_dir))
    return sources, mode, note


def summary_html(result: EvalResult, flagged: int, unscored: int, options: ReportOptions) -> str:
    """The figures at the top of the page; ``unscored``: rows whose raw reference has no words (not in the mean)."""
    e = html.escape

    def card(label: str, value: str, detail: str = "", element_id: str = "") -> str:
        attr = f' id="{element_id}"' if element_id else ""
        return (f'<div class="card"><div class="label">{e(label)}</div><div class="value"{attr}>{e(value)}</div>'
                f'<div class="detail">{e(detail)}</div></div>')

    cards = [
        card("Corpus WER", percent(result.wer, 2), f"{result.reference_words} reference words", "corpus-wer"),
        card("Corpus CER", percent(result.cer, 2), "character edits / reference characters", "corpus-cer"),
        card("Mean per-utterance WER", percent(result.mean_wer_lowercased, 2), "lower-cased text, as the "
             "Qwen2-VL audio adapter reported" + (f"; {unscored} empty reference(s) left out" if unscored else ""),
             "mean-wer"),
        card("Utterances", str(result.utterances), f"{result.audio_seconds:.1f} s of audio, RTFx {result.rtfx:.1f}"
             + (f", {result.failed} left out" if result.failed else ""), "utterances"),
        f'<button class="card flagcard" id="show-flagged" type="button"><div class="label">Flagged</div>'
        f'<div class="value" id="flagged-count">{flagged}</div><div class="detail">WER ≥ '
        f'{e(percent(options.flag_wer, 0))} or an empty side · click to show only these</div></button>',
    ]
    return "\n".join(cards)


def row_html(n: int, row: dict, source: str, reason: str) -> str:
    """One utterance's table row; ``data-*`` attributes carry what the page's script sorts and filters by (an
    empty reference sorts as WER 100 %, its hypothesis words being insertions; it shows as "—")."""
    e = html.escape
    empty = '<span class="empty">(empty)</span>'
    ref = e(row["reference"]) if row["reference"] else empty
    hyp = e(row["hypothesis"]) if row["hypothesis"] else empty
    diff = diff_html(row["reference_normalized"], row["hypothesis_normalized"]) or empty
    player = f'<button class="play" type="button" data-src="{e(source)}">▶ play</button>' if source else ""
    path = str(row["audio_filepath"])
    wer = percent(row["wer"] if row["reference_words"] else None)
    lowercased = percent(row["wer_lowercased"], 0)
    flag = f'<span class="flag">⚑ {e(reason)}</span>' if reason else ""
    cls = ' class="flagged"' if reason else ""
    return (f'<tr data-n="{n}" data-wer="{row["wer"]:.6f}" data-flagged="{int(bool(reason))}"'
            f'{cls}>'
            f'<td class="n">{n}</td>'
            f'<td class="clip">{player}<div class="file" title="{e(path)}">{e(Path(path).name)} · '
            f'{float(row["duration"]):.1f} s</div></td>'
            f'<td class="texts"><div class="ref"><span class="tag">REF</span>{ref}</div>'
            f'<div class="hyp"><span class="tag">HYP</span>{hyp}</div>'
            f'<div class="diff"><span class="tag">DIFF</span>{diff}</div></td>'
            f'<td class="num wer">{wer}<div class="sub-figure" title="{e(LOWERCASED_TIP)}">lc {lowercased}</div></td>'
            f'<td class="num cer">{percent(row["cer"])}</td>'
            f'<td class="flagcell">{flag}</td></tr>')


def render_report(result: EvalResult, rows: list[dict], options: ReportOptions = ReportOptions(),
                  sources: list[str] | None = None, left_out: Sequence[str] = ()) -> tuple[str, list[str]]:
    """The page's HTML and each row's flag reason. ``rows``: :func:`nemo_lite.evaluate.evaluate_rows`' rows;
    ``sources``: each row's audio URL (none: no players); ``left_out``: one line per utterance not scored."""
    e = html.escape
    reasons = [flag_reason(r, options.flag_wer) for r in rows]
    flagged = sum(bool(r) for r in reasons)
    body = "\n".join(row_html(n, r, (sources or [""] * len(rows))[n - 1], why)
                     for n, (r, why) in enumerate(zip(rows, reasons, strict=True), 1))
    missing = "".join(f"<li>{e(line)}</li>" for line in left_out)
    fields = {
        "TITLE": e(options.title),
        "SOURCE": e(options.source),
        "WRITTEN": e(datetime.now().strftime("%Y-%m-%d %H:%M")),
        "SUMMARY": summary_html(result, flagged, sum(r["wer_lowercased"] is None for r in rows), options),
        "EXPLAIN": e(f"Corpus WER is all word errors over all {result.reference_words} reference words after "
                     "Whisper's English normaliser, so long utterances weigh more. The adapter's authors averaged "
                     "each utterance's WER on text that is only lower-cased: short utterances weigh as much as long "
                     "ones, and punctuation (\"world!\" vs \"world\") counts as an error."),
        "LEFT_OUT": f'<section class="left-out"><h2>Left out (not scored)</h2><ul>{missing}</ul></section>'
                    if missing else "",
        "ROWS": body,
        "TOTAL": str(len(rows)),
    }
    # one pass, so a text that happens to contain "@@ROWS@@" is never filled in itself
    page = re.sub(r"@@([A-Z_]+)@@", lambda m: fields.get(m[1], m[0]), TEMPLATE.read_text(encoding="utf-8"))
    return page, reasons


def write_report(path: str | Path, result: EvalResult, rows: list[dict], options: ReportOptions = ReportOptions(),
                 left_out: Sequence[str] = ()) -> ReportInfo:
    """Write the audit page to ``path`` (audio embedded or linked as ``options`` say, within the size guard)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sources, mode, note = audio_sources(rows, options, path.parent)
    page, reasons = render_report(result, rows, options, sources, left_out)
    data = page.encode("utf-8")
    path.write_bytes(data)
    return ReportInfo(size=len(data), audio=mode, flagged=sum(bool(r) for r in reasons), note=note, reasons=reasons)
