"""`covo-edge bench-batch`: what batching concurrent conversations' decode steps buys, measured in one
process on one loaded model: for each number of conversations, all of them at once (their steps batched),
beside the same conversations one at a time. Prints (and writes) JSON; the 7B's sessions per GPU come as a
roofline projection from `covo_edge.runtime.gpus`.

Each conversation's reply is forced to the real model's interleave (5 text ids, then 15 audio codes), so
every run decodes the same number of steps. Decode is measured with speech off (a CPU's cores would
otherwise go to token2wav, not to the decode being measured); first audio is measured with streamed speech,
every conversation asking at once, each stopped at its first audio chunk.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

from .assistant import Debug, Model
from .batching import BatchStats
from .files import check_output_file, write_atomic
from .gpus import GPUS, sessions_in_real_time
from .manifest import dim_value
from .synthetic import interleaved_reply, synthetic_utterance

QUESTION_S = 3.0


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else 0.0


def _together(n: int, work) -> list:
    """Run work(i) for i < n on n threads released at once; their results in order."""
    results, errors = [None] * n, []
    gate = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            gate.wait()
            results[i] = work(i)
        except Exception as e:  # raised below, in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


class _Bench:
    def __init__(self, model: Model, new_tokens: int):
        self.model = model
        offset = model.manifest.tokenizer.audio_code_offset
        self.forced = [interleaved_reply(new_tokens, offset, model.manifest.num_audio_codes, seed) for seed in range(64)]
        self.questions = [synthetic_utterance(QUESTION_S, 16000, seed=seed) for seed in range(64)]

    def decode(self, i: int) -> tuple[float, float, int]:
        """One conversation's turn without speech: (decode start, decode end, steps fed)."""
        reply = self.model.conversation().reply(self.questions[i], 16000, speak=False,
                                                debug=Debug(force_tokens=self.forced[i]))
        end = time.perf_counter()
        return end - reply.timings["decode"], end, len(reply.tokens) - 1

    def first_audio(self, i: int) -> float:
        """Seconds from asking to the first streamed audio chunk (the turn is then cancelled)."""
        t0 = time.perf_counter()
        stream = self.model.conversation().stream(self.questions[i], 16000, debug=Debug(force_tokens=self.forced[i]))
        try:
            for chunk in stream:
                if chunk.audio is not None and chunk.audio.size:
                    return time.perf_counter() - t0
        finally:
            stream.close()
        return float("nan")

    def measure(self, n: int, together: bool) -> dict:
        """n conversations, at once or one after another: decode throughput and step latency, first audio."""
        self.model.batch.stats = BatchStats()
        if together:
            runs = _together(n, self.decode)
            wall = max(r[1] for r in runs) - min(r[0] for r in runs)
        else:
            runs = [self.decode(i) for i in range(n)]
            wall = sum(r[1] - r[0] for r in runs)
        stats, self.model.batch.stats = self.model.batch.stats, BatchStats()  # the decode's, not first audio's
        steps = list(stats.step_seconds)
        first = _together(n, self.first_audio) if together and self.model.mode == "speech" else (
            [self.first_audio(i) for i in range(n)] if self.model.mode == "speech" else [])
        return {
            "conversations": n,
            "aggregate_tokens_per_s": sum(r[2] for r in runs) / wall,
            "step_ms_p50": 1000 * _percentile(steps, 50),
            "step_ms_p95": 1000 * _percentile(steps, 95),
            "first_audio_s_p50": _percentile(first, 50) if first else None,
            "first_audio_s_max": max(first) if first else None,
            "backbone_calls": stats.calls,
            "steps_per_call": {str(k): v for k, v in sorted(stats.steps_per_call.items())},
        }


def chunk_batching(model: Model, frames: int = 24, past: int = 1024, rounds: int = 5) -> dict:
    """Would two streams' token2wav chunks pay as one call? The field at batch 2 (one stream: its guidance
    pair) and 4 (two streams) on the same shapes, best of `rounds`. The graph takes one rotary position and
    one past length for its whole batch, so only streams at the very same frame could share a call at all."""
    spec = model.manifest.graphs["token2latent_field"]
    rng = np.random.default_rng(0)

    def best(batch: int) -> float:
        dims = {"batch": batch, "frames": frames, "past_frames": past}
        feeds = {t.name: rng.standard_normal([dim_value(d, dims) for d in t.shape]).astype(t.dtype)
                 for t in spec.inputs if t.dtype != "int64"}
        feeds["position"] = np.array([past], np.int64)
        times = []
        for _ in range(rounds + 1):
            t0 = time.perf_counter()
            model.backend.run("token2latent_field", feeds)
            times.append(time.perf_counter() - t0)
        return 1000 * min(times[1:])

    one, two = best(2), best(4)
    return {"frames": frames, "past_frames": past, "one_stream_ms": one, "two_streams_ms": two,
            "two_over_one": two / one}


def bench_batch(artifacts: str | Path, sessions: list[int], new_tokens: int = 60, json_out: str | None = None,
                backend: str = "onnxruntime", device: str = "cpu", engines: str | None = None) -> dict:
    if json_out:
        check_output_file(json_out, "--json")
    sessions = sorted(set(sessions))
    model = Model.load(artifacts, backend=backend, device=device, engines=engines, max_batch=max(2, sessions[-1]))
    bench = _Bench(model, new_tokens)
    bench.decode(0)  # warm-up: every graph's first call
    result: dict = {"setup": {"artifacts": str(artifacts), "backend": backend, "device": device,
                              "dtype": model.manifest.dtype, "new_tokens": new_tokens, "question_s": QUESTION_S,
                              "mode": model.mode, "linger_ms": 1000 * model.batch.linger_s,
                              "decode": "speech off, every conversation released at once",
                              "first_audio": "streamed speech, every conversation asking at once"},
                    "sessions": {}}
    for n in sessions:
        result["sessions"][str(n)] = bench.measure(n, together=True)
    result["serial"] = bench.measure(sessions[-1], together=False)
    if model.mode == "speech":
        result["token2wav_chunk_batching"] = chunk_batching(model)
    one = result["sessions"].get("1", result["serial"])
    for row in result["sessions"].values():
        row["vs_one"] = {"aggregate_tokens_per_s": row["aggregate_tokens_per_s"] / one["aggregate_tokens_per_s"],
                         "step_ms_p50": row["step_ms_p50"] / one["step_ms_p50"]}
    result["gpu_projection_7b"] = {
        "note": "roofline of the released backbone's batched decode step (weights read once per step, each row's "
                "fp16 KV cache and FLOPs), at 2000 tokens of context per conversation; decode only: each "
                "conversation's speech (token2wav, vocoder) costs GPU time besides. A projection, not a measurement",
        "devices": [{"device": g.name, "source": g.source,
                     **{p: sessions_in_real_time(g, p, 2000) for p in ("fp16", "int4")}} for g in GPUS],
    }
    if json_out:
        write_atomic(Path(json_out), lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def summary(result: dict) -> str:
    lines = ["conversations  tokens/s  step p50 ms  step p95 ms  first audio p50 s"]
    rows = [*((k, v) for k, v in result["sessions"].items()), ("serial", result["serial"])]
    for name, r in rows:
        audio = "-" if r["first_audio_s_p50"] is None else f"{r['first_audio_s_p50']:.2f}"
        lines.append(f"{name:>13}  {r['aggregate_tokens_per_s']:8.1f}  {r['step_ms_p50']:11.1f}  "
                     f"{r['step_ms_p95']:11.1f}  {audio:>17}")
    return "\n".join(lines)

