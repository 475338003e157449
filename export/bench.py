"""`covo-edge bench`: one spoken turn measured on the runtime and the PyTorch reference in one run, each in
a process of its own (peak memory per side, no torch in the runtime's), printed as JSON and drawn as a
chart; plus a paper projection of the full-size model on named GPUs.

The turn is driven by forcing the real model's interleave (5 text ids, then 15 audio codes, repeated): a
random model rarely emits audio codes on its own.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from covo_edge.runtime.errors import CovoEdgeError
from covo_edge.runtime.files import check_output_file, write_atomic, write_wav
from covo_edge.runtime.manifest import Manifest
from covo_edge.runtime.synthetic import interleaved_reply, synthetic_utterance

from .bench_runtime import STAGES
from .projection import full_size_counts, project

QUESTION_SECONDS = 8.2
COLOURS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]


def _side(module: str, *args: str) -> dict:
    run = subprocess.run([sys.executable, "-m", f"covo_edge.export.{module}", *args], capture_output=True, text=True)
    if run.returncode != 0:
        tail = (run.stderr.strip().splitlines() or ["no message"])[-1]
        raise CovoEdgeError(f"the {module} measurement failed: {tail}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def bench(model_dir: str, artifacts: str, question: str | None = None, new_tokens: int = 100,
          compare: list[str] = ()) -> dict:
    manifest = Manifest.load(artifacts)
    forced = interleaved_reply(new_tokens, manifest.tokenizer.audio_code_offset, manifest.num_audio_codes).tolist()
    with tempfile.TemporaryDirectory() as tmp:
        if question is None:
            question = str(Path(tmp) / "question.wav")
            write_wav(question, synthetic_utterance(QUESTION_SECONDS, 16000), 16000)
        runtime = _side("bench_runtime", artifacts, question, json.dumps(forced))
        reference = _side("bench_reference", model_dir, question, json.dumps(forced))
        precision = _side("bench_precision", json.dumps([artifacts, *compare]), question,
                          json.dumps(forced)) if compare else None
    s = runtime["streaming"]
    codes_seen = np.cumsum(np.asarray(forced) >= manifest.tokenizer.audio_code_offset)
    steps_to_first_audio = int(np.searchsorted(codes_seen, s["first_chunk"] + s["lookahead"]) + 1)
    voice_codes = 291  # the released voice prompt
    counts = full_size_counts(runtime["prompt_tokens"] - runtime["system_prompt_tokens"],
                              runtime["prompt_tokens"] + new_tokens, runtime["audio_codes"], voice_codes,
                              4 * (s["first_chunk"] + s["lookahead"]), s["prompt_frames"] or 4 * voice_codes)
    first_vocoder_frames = 4 * s["first_chunk"] - 3 + manifest.token2wav.vocoder_lookahead
    return {
        "setup": {"artifacts": str(artifacts), "model_dir": str(model_dir), "question": question or "synthetic",
                  "new_tokens": new_tokens, "dtype": manifest.dtype,
                  "interleave": "5 text ids, then 15 audio codes, repeated (forced on both sides)"},
        "runtime": runtime,
        "reference": reference,
        **({"precision_decode": precision} if precision else {}),
        "gpu_projection": {
            "note": "paper projection of the full-size model (FLOPs and weight bytes counted on the meta device, "
                    "roofline on each device's peak), not a measurement",
            "devices": project(counts, steps_to_first_audio, first_vocoder_frames, runtime["speech_s"], new_tokens),
            "counts": {k: {"gflops": v["flops"] / 1e9, "weights_m": v["weights"] / 1e6} for k, v in counts.items()},
        },
    }


def draw(result: dict, path: Path) -> None:
    """Stage bars of time to first audio, decode beside its floor, speech real-time factors, peak memory
    and the GPU projection; every bar carries its number. PNG or SVG by the file's extension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rt, ref = result["runtime"], result["reference"]
    rows_of_panels = 4 if "precision_decode" in result else 3
    fig = plt.figure(figsize=(13, 3.4 * rows_of_panels), constrained_layout=True)
    grid = fig.add_gridspec(rows_of_panels, 2)
    ax = fig.add_subplot(grid[0, :])
    rows = [("reference (whole reply)", ref["stages_ms"]["exact"]), ("runtime, exact", rt["stages_ms"]["exact"]),
            ("runtime, streaming", rt["first_audio_breakdown_ms"])]
    for y, (name, stages) in enumerate(rows):
        left = 0.0
        for stage, colour in zip(STAGES, COLOURS):
            w = stages[stage] / 1000
            ax.barh(y, w, left=left, color=colour, label=stage if y == 0 else None)
            if w > 0.04 * max(sum(r[1][k] for k in STAGES) / 1000 for r in rows):
                ax.text(left + w / 2, y, f"{w:.2f}", ha="center", va="center", fontsize=8, color="white")
            left += w
        ax.text(left, y, f"  {left:.2f} s", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlabel("seconds from the end of the question to the first playable audio")
    ax.set_title(f"Time to first audio (decode is {result['setup']['new_tokens']} tokens for the whole-reply rows)")
    ax.legend(ncol=4, fontsize=8, loc="upper right")

    def bars(ax, labels, values, unit, title, line=None):
        ax.bar(labels, values, color=COLOURS[: len(values)])
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:.3g} {unit}", ha="center", va="bottom", fontsize=9)
        if line is not None:
            ax.axhline(line, color="grey", lw=1, ls="--")
        ax.set_title(title)
        ax.set_ylabel(unit)

    bars(fig.add_subplot(grid[1, 0]), ["reference", "runtime", "read floor"],
         [ref["decode_ms_per_token"], rt["decode_ms_per_token"], rt["read_floor_ms_per_token"]], "ms/token",
         f"Decode, beside the weight-read floor ({rt['read_bandwidth_gbs']:.0f} GB/s measured)")
    dev = rt["streaming_deviation"]
    bars(fig.add_subplot(grid[1, 1]), ["reference", "runtime exact", "runtime streaming"],
         [ref["token2wav_rtf"]["exact"], rt["token2wav_rtf"]["exact"], rt["token2wav_rtf"]["streaming"]], "x",
         f"token2wav + vocoder real-time factor (below 1 keeps up)\nstreaming vs exact: log-mel L1 "
         f"{dev['log_mel_l1']:.3f} (another noise draw: {dev['another_noise_draw']['log_mel_l1']:.3f})", line=1.0)
    bars(fig.add_subplot(grid[2, 0]), ["reference", "runtime"], [ref["peak_rss_gb"], rt["peak_rss_gb"]], "GB",
         "Peak resident memory")
    ax = fig.add_subplot(grid[2, 1])
    ax.axis("off")
    devices = result["gpu_projection"]["devices"]
    table = ax.table(
        cellText=[[d["device"], f"{d['time_to_first_audio_s']:.2f}", f"{d['decode_ms_per_token']['fp16']:.1f}",
                   f"{d['decode_ms_per_token']['int4']:.1f}", f"{d['turn_rtf']['fp16']:.2f}", f"{d['turn_rtf']['int4']:.2f}"]
                  for d in devices],
        colLabels=["device", "first audio", "ms/token\nfp16", "ms/token\nint4", "turn RTF\nfp16", "turn RTF\nint4"],
        loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(6)))
    table.scale(1, 2.2)
    ax.set_title("Projection (paper, full-size model, roofline): not measured")
    if "precision_decode" in result:
        rows = result["precision_decode"]["rows"]
        ax = fig.add_subplot(grid[3, :])
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["decode_ms_per_token"] for r in rows], 0.4, color=COLOURS[0], label="measured")
        ax.bar(x + 0.2, [r["read_floor_ms_per_token"] for r in rows], 0.4, color=COLOURS[3], label="weight-read floor")
        for i, r in enumerate(rows):
            ax.text(i - 0.2, r["decode_ms_per_token"], f"{r['decode_ms_per_token']:.1f}\n{r['vs_first']:.2f}x",
                    ha="center", va="bottom", fontsize=8)
        ax.set_ylim(0, 1.25 * max(r["decode_ms_per_token"] for r in rows))
        ax.set_xticks(x, [r["precision"] for r in rows], fontsize=8)
        ax.set_ylabel("ms/token")
        ax.legend(fontsize=8)
        ax.set_title("Decode on ONNX Runtime CPU by precision, side by side in one run (ratio to the first)")
    fig.suptitle(f"covo-edge bench: {result['setup']['artifacts']} ({result['setup']['dtype']})")
    suffix = path.suffix.lower().lstrip(".") or "png"
    buf = io.BytesIO()
    fig.savefig(buf, format=suffix, dpi=110)
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buf.getvalue()))


def run_bench(model_dir: str, artifacts: str, question: str | None, new_tokens: int, json_out: str | None,
              chart: str | None, compare: list[str] = ()) -> None:
    for path, option in ((json_out, "--json"), (chart, "--chart")):
        if path:
            check_output_file(path, option)
    for other in compare:
        Manifest.load(other)  # a bad directory fails now, not after the long measurements
    result = bench(model_dir, artifacts, question, new_tokens, compare)
    text = json.dumps(result, indent=2)
    print(text)
    if json_out:
        write_atomic(json_out, lambda f: f.write(text.encode()))
    if chart:
        draw(result, Path(chart))
