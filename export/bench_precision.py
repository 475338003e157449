"""Decode speed of several artifacts directories side by side (`covo-edge bench --compare`), run in a process
of its own without torch: the same question and the same forced reply on each, rounds interleaved so that
drift in the machine's speed hits every precision alike; each beside its weight-read floor (the backbone's
bytes, all read once per token, over the measured read bandwidth). Prints one JSON object."""

from __future__ import annotations

import json
import sys

import numpy as np

from covo_edge.runtime import Assistant, Debug
from covo_edge.runtime.frontend import load_audio

from .bench_runtime import backbone_bytes, read_bandwidth_gbs


def precision_name(assistant: Assistant) -> str:
    p = assistant.manifest.precision
    return assistant.manifest.dtype if p is None else f"{p.recipe} ({assistant.manifest.dtype})"


def measure(artifacts: list[str], question: str, forced: list[int], rounds: int = 3) -> dict:
    wav, rate = load_audio(question)
    ids = np.asarray(forced, np.int64)
    assistants = [Assistant.load(a, mode="text") for a in artifacts]
    times: list[list[float]] = [[] for _ in artifacts]
    for r in range(rounds + 1):  # round 0 warms every shape up
        for i in np.roll(np.arange(len(artifacts)), r):
            assistants[i].reset()
            reply = assistants[i].reply(wav, rate, debug=Debug(force_tokens=ids))
            if r:
                times[i].append(reply.timings["decode_per_token"])
    bandwidth = read_bandwidth_gbs()
    rows = []
    for a, assistant, t in zip(artifacts, assistants, times):
        weights = backbone_bytes(a)
        ms = 1000 * float(np.median(t))
        rows.append({"artifacts": a, "precision": precision_name(assistant), "decode_ms_per_token": ms,
                     "weight_bytes_per_token": weights, "read_floor_ms_per_token": 1000 * weights / (bandwidth * 1e9)})
    for row in rows:
        row["vs_first"] = row["decode_ms_per_token"] / rows[0]["decode_ms_per_token"]
        row["floor_vs_first"] = row["read_floor_ms_per_token"] / rows[0]["read_floor_ms_per_token"]
    return {"read_bandwidth_gbs": bandwidth, "rounds": rounds, "new_tokens": len(forced), "rows": rows}


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3]))))
