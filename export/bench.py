"""`covo-edge bench`: per-stage latency of one spoken turn, the runtime and the PyTorch reference side by
side in one run (same input, same forced tokens), printed as JSON and drawn as an SVG bar chart."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from covo_edge.runtime.assistant import Assistant, Debug
from covo_edge.runtime.files import check_output_file, write_atomic
from covo_edge.runtime.synthetic import synthetic_utterance
from covo_edge.runtime.token2wav import Token2Wav

from .pipeline import ReferenceChat

STAGES = ("frontend", "encoder", "adapter", "prefill", "decode", "token2wav", "vocoder")


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) * 1000 for k in (*STAGES, "decode_per_token")}


def bench(model_dir: str, artifacts: str, seconds: float = 3.0, tokens: int = 40, repeats: int = 3,
          svg: str | None = None) -> dict:
    """Median milliseconds per stage over `repeats` first turns of `tokens` forced tokens, after one warm-up."""
    wav = synthetic_utterance(seconds)
    runtime = Assistant.load(artifacts)
    token2wav = Token2Wav(runtime.backend, runtime.manifest)
    reference = ReferenceChat(model_dir)
    forced = [151671 + (7 * i) % 16384 if i % 4 else 100 + i for i in range(tokens)]  # 3 codes : 1 text id
    runs = {"runtime": [], "reference": []}
    for i in range(repeats + 1):  # the first turn warms both up and is not counted
        runtime.reset()
        r = runtime.reply(wav, 16000, seed=0, debug=Debug(force_tokens=np.array(forced)))
        if i:
            runs["runtime"].append(r.timings)
        reference.reset()
        noise = torch.from_numpy(np.random.default_rng(0).standard_normal(
            token2wav.noise_shape(len(r.audio_codes), runtime.voice)).astype(np.float32))
        ref_timings = reference.reply(wav, 16000, force_tokens=forced, noise=noise).timings
        if i:
            runs["reference"].append(ref_timings)
    result = {name: _median(v) for name, v in runs.items()}
    result["speedup"] = {k: result["reference"][k] / max(result["runtime"][k], 1e-9) for k in (*STAGES, "decode_per_token")}
    result["setup"] = {"input_seconds": seconds, "new_tokens": tokens, "repeats": repeats,
                       "torch_threads": torch.get_num_threads(), "artifacts": str(artifacts)}
    if svg:
        write_svg(Path(svg), result)
    return result


def write_svg(path: Path, result: dict) -> None:
    """Two stacked horizontal bars (runtime, reference), one colour per stage, with a legend."""
    colours = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1"]
    total = max(sum(result[n][s] for s in STAGES) for n in ("runtime", "reference"))
    width, left, bar = 720, 90, 28
    scale = (width - left - 80) / total  # room for the total on the right
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="190" font-family="sans-serif" font-size="12">',
             '<text x="10" y="18" font-size="14">One spoken turn, median ms per stage (lower is better)</text>']
    for row, name in enumerate(("runtime", "reference")):
        y, x = 35 + row * 45, left
        parts.append(f'<text x="10" y="{y + 18}">{name}</text>')
        for stage, colour in zip(STAGES, colours):
            w = result[name][stage] * scale
            parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{colour}">'
                         f'<title>{stage}: {result[name][stage]:.1f} ms</title></rect>')
            x += w
        parts.append(f'<text x="{x + 4:.1f}" y="{y + 18}">{sum(result[name][s] for s in STAGES):.0f} ms</text>')
    for i, (stage, colour) in enumerate(zip(STAGES, colours)):
        x = 10 + i * 100
        parts.append(f'<rect x="{x}" y="150" width="12" height="12" fill="{colour}"/><text x="{x + 16}" y="160">{stage}</text>')
    parts.append("</svg>")
    svg = "\n".join(parts).encode()
    write_atomic(path, lambda f: f.write(svg))


def run_bench(model_dir: str, artifacts: str, seconds: float, tokens: int, repeats: int, svg: str | None) -> None:
    if svg:
        check_output_file(svg, "--svg")
    print(json.dumps(bench(model_dir, artifacts, seconds, tokens, repeats, svg), indent=2))
