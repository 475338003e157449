"""`covo-edge bench`: a measurement command, not a timed assertion. It reports what the issue tracker and
the README promise, for both sides, and draws them."""

import json

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

RUNTIME_KEYS = {"time_to_first_audio_s", "time_to_first_audio_exact_s", "time_to_first_text_s", "decode_ms_per_token",
                "read_floor_ms_per_token", "token2wav_rtf", "peak_rss_gb", "streaming_turn_rtf", "streaming_deviation"}


def test_bench_reports_both_sides_and_draws_them(tiny_dir, tiny_art, tmp_path):
    from covo_edge.runtime.cli import main

    out, chart = tmp_path / "b.json", tmp_path / "b.png"
    assert main(["bench", "--model-dir", str(tiny_dir), "--artifacts", str(tiny_art), "--new-tokens", "60",
                 "--json", str(out), "--chart", str(chart)]) == 0
    result = json.loads(out.read_text())
    rt, ref = result["runtime"], result["reference"]
    assert RUNTIME_KEYS <= set(rt)
    assert all(rt[k] > 0 for k in ("time_to_first_audio_s", "time_to_first_audio_exact_s", "decode_ms_per_token",
                                   "read_floor_ms_per_token", "peak_rss_gb"))
    assert set(rt["token2wav_rtf"]) == {"exact", "streaming"} and ref["token2wav_rtf"]["exact"] > 0
    assert rt["audio_codes"] == 45 and rt["speech_s"] == pytest.approx((4 * 45 - 3) * 240 / 24000)  # 60 forced: 15 text
    dev = rt["streaming_deviation"]
    assert len(dev["latent_rms_per_chunk"]) == len(dev["chunk_frames"]) and sum(dev["chunk_frames"]) == 4 * 45 - 3
    assert {d["device"] for d in result["gpu_projection"]["devices"]} >= {"RTX 4090", "Jetson AGX Orin 64GB"}
    assert "not a measurement" in result["gpu_projection"]["note"]
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 20000
