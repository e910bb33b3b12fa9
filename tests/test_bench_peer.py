"""bench/peer_crispasr.py and bench.py's CrispASR table, without the peer: the stage-log parser, the ggml shim on a
stand-in tree, the source checks, and the side-by-side table from recorded results."""

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))

import peer_crispasr  # noqa: E402

import bench  # noqa: E402


def test_stages_attributes_the_peer_lines_to_each_call():
    log = "\n".join([
        "canary_qwen: enc=32L",
        "PEER_CALL warmup",
        "  canary_qwen_bench: mel                    3.00 ms",
        "PEER_CALL b1 0 0",
        "  canary_qwen_bench: mel                    12.50 ms",
        "  canary_qwen_bench: encoder+proj           2000.00 ms",
        "  canary_qwen_bench: prefill                500.00 ms",
        "  canary_qwen_bench: decode                 6400.00 ms",
        "PEER_CALL b8 0 0",
    ])
    calls = peer_crispasr._stages(log)
    assert calls["warmup"] == {"mel": 0.003}
    assert calls["b1 0 0"] == {"mel": 0.0125, "encoder+proj": 2.0, "prefill": 0.5, "decode": 6.4}
    assert calls["b8 0 0"] == {}


def _fake_ggml(root: Path, fork: bool) -> Path:
    (root / "include").mkdir(parents=True)
    (root / "src").mkdir()
    (root / "include" / "ggml.h").write_text("#pragma once\n" + ("ggml_norm_affine(...);\n" if fork else ""))
    (root / "src" / "ggml.c").write_text("// ggml\n")
    return root


def test_ggml_shim_only_on_upstream_and_only_once(tmp_path):
    up = _fake_ggml(tmp_path / "up", fork=False)
    assert peer_crispasr.apply_ggml_shim(up)
    header, source = (up / "include" / "ggml.h").read_text(), (up / "src" / "ggml.c").read_text()
    for name in ("ggml_norm_affine", "ggml_siglu_swapped", "ggml_col2im_1d"):
        assert name in header and name in source
    assert peer_crispasr.apply_ggml_shim(up)  # idempotent
    assert (up / "include" / "ggml.h").read_text() == header
    fork = _fake_ggml(tmp_path / "fork", fork=True)
    assert not peer_crispasr.apply_ggml_shim(fork)
    assert "shim" not in (fork / "src" / "ggml.c").read_text()


def test_prepare_source_refuses_what_is_not_crispasr_or_lacks_ggml(tmp_path):
    with pytest.raises(SystemExit, match="not a CrispASR checkout"):
        peer_crispasr.prepare_source(str(tmp_path), tmp_path / "work", None)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "canary_qwen.cpp").write_text("")
    with pytest.raises(SystemExit, match="--peer-ggml"):
        peer_crispasr.prepare_source(str(tmp_path), tmp_path / "work", None)


def test_peer_table_rows_in_the_same_units():
    lengths = [5 * 16000, 20 * 16000]
    lite = {"system": "nemo_lite", "mode": "exact", "load_s": 9.0, "cpu_util": 1.9, "load_avg_start": 2.0,
            "load_avg_end": 2.5, "derived": {"peak_rss_gb": 10.5, "perception_s_per_audio_s": 0.2,
                                             "prefill_b1_s": 1.0, "decode_b1_tok_s": 5.0, "rtfx_b1": 0.8,
                                             "rtfx_b8": 2.0},
            "b1": {"ids": [[1] * 64, [2] * 64], "calls": [{"wall_s": 14.0}, {"wall_s": 17.25}]},
            "batches": {"8": {"wall_s": 50.0}}}
    clip = {"n_tokens": 64, "mel_s": 0.05, "enc_s": 2.0, "prefill_s": 1.0, "decode_s": 8.0}
    peer = {"system": "crispasr", "mode": "q8_0", "load_s": 0.4, "peak_rss": 4.1e9, "cpu_use": 1.8,
            "load_avg": [2.0, 2.2], "clips": [{**clip, "e2e_s": 11.0}, {**clip, "e2e_s": 14.0}],
            "batches": {"8": {"e2e_s": 100.0, "n_tokens": 512}}}
    lines = bench.peer_table([lite], [peer], lengths, ["clip_05s", "clip_20s"], [8])
    assert "e2e clip_05s (s)" in lines[0] and "RTFx b8" in lines[0]
    lite_cells = [c.strip() for c in lines[2].strip("|").split("|")]
    peer_cells = [c.strip() for c in lines[3].strip("|").split("|")]
    assert lite_cells[:2] == ["nemo_lite exact", "9.0"] and lite_cells[6:8] == ["14.00", "17.25"]
    assert peer_cells[0] == "CrispASR Q8_0" and peer_cells[2] == "4.10"
    assert peer_cells[3] == f"{4.1 / 25:.4f}"  # (mel + encoder) / audio seconds
    assert peer_cells[5] == f"{128 / 16:.2f}"  # tokens / decode seconds
    assert peer_cells[8] == f"{25 / 25:.2f}" and peer_cells[10] == f"{100 / 100:.2f}"  # RTFx b1, b8 (4x5 s + 4x20 s)
    assert peer_cells[11] == "64"
