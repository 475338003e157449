"""`covo-edge bench`: a measurement command, not a timed assertion. It reports what the issue tracker and
the README promise, for both sides, and draws them."""

import json

import pytest

from conftest import needs

needs("torch", "export")
needs("matplotlib", "export")

RUNTIME_KEYS = {"time_to_first_audio_s", "time_to_first_audio_exact_s", "time_to_first_text_s", "decode_ms_per_token",
                "read_floor_ms_per_token", "token2wav_rtf", "peak_rss_gb", "artifacts_gb", "peak_over_artifacts", "streaming_turn_rtf",
                "streaming_deviation"}


@pytest.mark.slow
def test_bench_reports_both_sides_and_draws_them(bench_run, tiny_art, tiny_art16):
    """One run of `bench --compare` (one bench is long; it runs beside the other tests): both sides, the
    chart, and the decode of every artifacts directory beside its own weight-read floor."""
    saved, printed, chart = bench_run
    result = json.loads(saved.read_text())
    assert json.loads(printed.read_text()) == result  # what it prints is what it saves
    p = result["precision_decode"]
    assert p["new_tokens"] == 40 and p["read_bandwidth_gbs"] > 0
    rows = p["rows"]
    assert [r["artifacts"] for r in rows] == [str(tiny_art), str(tiny_art16)]
    assert [r["precision"] for r in rows] == ["float32", "float16"]
    for r in rows:
        assert r["decode_ms_per_token"] > 0 and r["read_floor_ms_per_token"] > 0, r
        assert r["read_floor_ms_per_token"] == pytest.approx(
            1000 * r["weight_bytes_per_token"] / (p["read_bandwidth_gbs"] * 1e9))
    assert rows[0]["vs_first"] == 1 and rows[1]["weight_bytes_per_token"] < 0.6 * rows[0]["weight_bytes_per_token"]
    rt, ref = result["runtime"], result["reference"]
    assert RUNTIME_KEYS <= set(rt)
    assert all(rt[k] > 0 for k in ("time_to_first_audio_s", "time_to_first_audio_exact_s", "decode_ms_per_token",
                                   "read_floor_ms_per_token", "peak_rss_gb"))
    disk = sum(f.stat().st_size for f in tiny_art.rglob("*") if f.is_file()) / 1e9
    assert rt["artifacts_gb"] == pytest.approx(disk) and rt["peak_over_artifacts"] == pytest.approx(rt["peak_rss_gb"] / disk)
    assert set(rt["token2wav_rtf"]) == {"exact", "streaming"} and ref["token2wav_rtf"]["exact"] > 0
    assert rt["audio_codes"] == 30 and rt["speech_s"] == pytest.approx((4 * 30 - 3) * 240 / 24000)  # 40 forced: 10 text
    dev = rt["streaming_deviation"]
    assert len(dev["latent_rms_per_chunk"]) == len(dev["chunk_frames"]) and sum(dev["chunk_frames"]) == 4 * 30 - 3
    assert {d["device"] for d in result["gpu_projection"]["devices"]} >= {"RTX 4090", "Jetson AGX Orin 64GB"}
    assert "not a measurement" in result["gpu_projection"]["note"]
    png = chart.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 600  # a figure of several panels, not an empty canvas
