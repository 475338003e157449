"""The PyTorch reference's side of `covo-edge bench`, in a process of its own: the same forced turn,
spoken whole (upstream has no streaming, so its first audio is its last). Prints one JSON object."""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

from covo_edge.runtime.frontend import load_audio

from .bench_runtime import STAGES
from .pipeline import ReferenceChat


def measure(model_dir: str, question: str, forced: list[int]) -> dict:
    chat = ReferenceChat(model_dir)
    wav, rate = load_audio(question)
    chat.reply(wav, rate, force_tokens=forced[:20])  # warm-up, not counted
    chat.reset()
    t0 = time.perf_counter()
    turn = chat.reply(wav, rate, force_tokens=forced, seed=0)
    wall = time.perf_counter() - t0
    speech_s = len(turn.wav) / chat.release.token2wav_config.sample_rate
    return {
        "time_to_first_audio_s": wall,
        "decode_ms_per_token": 1000 * turn.timings["decode_per_token"],
        "token2wav_rtf": {"exact": (turn.timings["token2wav"] + turn.timings["vocoder"]) / speech_s},
        "stages_ms": {"exact": {k: 1000 * turn.timings[k] for k in STAGES}},
        "speech_s": speech_s,
        "torch_threads": torch.get_num_threads(),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9,
    }


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))))
