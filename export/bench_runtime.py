"""The runtime's side of `covo-edge bench`, run in a process of its own (so its peak memory is its own and
no torch is loaded): one turn streamed, the same turn spoken whole, the streaming deviation, the decode
time beside the machine's weight-read floor. Prints one JSON object."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from covo_edge.runtime import Assistant, Debug, Token2Wav
from covo_edge.runtime.frontend import load_audio
from covo_edge.runtime.streaming import deviation
from covo_edge.runtime.token2wav import NoiseTape

STAGES = ("frontend", "encoder", "adapter", "prefill", "decode", "token2wav", "vocoder")


def read_bandwidth_gbs(megabytes: int = 512, repeats: int = 10) -> float:
    """This machine's weight-read rate as decode sees it: ONNX Runtime multiplying one row by a
    `megabytes` fp32 matrix (every weight read once, as in a decode step); the best of `repeats`."""
    from onnx import TensorProto, helper, numpy_helper

    k = 4096
    w = np.random.default_rng(0).standard_normal((k, megabytes * 2**20 // (4 * k)), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "read", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, w.shape[1]])], [numpy_helper.from_array(w, "w")])
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.ones((1, k), np.float32)
    best = float("inf")
    for _ in range(repeats + 2):
        t0 = time.perf_counter()
        session.run(None, {"x": x})
        best = min(best, time.perf_counter() - t0)
    return w.nbytes / best / 1e9


def backbone_bytes(artifacts: str) -> int:
    """What a decode step reads: the backbone's weights (its graph and external data), the LM head included."""
    return sum(f.stat().st_size for f in Path(artifacts).glob("backbone.onnx*"))


def measure(artifacts: str, question: str, forced: list[int], seed: int = 0) -> dict:
    assistant = Assistant.load(artifacts)
    wav, rate = load_audio(question)
    forced_ids = np.asarray(forced, np.int64)
    offset = assistant.manifest.tokenizer.audio_code_offset
    codes = forced_ids[forced_ids >= offset] - offset
    t2w = Token2Wav(assistant.backend, assistant.manifest)
    voice = assistant.voice
    frames = t2w.noise_shape(len(codes), voice)[1]
    noise = NoiseTape(t2w.tables(voice).noise, np.random.default_rng(seed)).take(0, frames)[None]
    system_prompt_tokens = assistant.context_length  # cached once per process
    for _ in assistant.stream(wav, rate, debug=Debug(force_tokens=forced_ids)):  # warm-up, every shape once
        pass

    turns = {}
    for mode in ("exact", "streaming"):
        assistant.reset()
        dump: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        for chunk in assistant.stream(wav, rate, token2wav=mode, debug=Debug(force_tokens=forced_ids, noise=noise, dump=dump)):
            reply = chunk.reply
        turns[mode] = {"wall_s": time.perf_counter() - t0, "timings": reply.timings, "dump": dump,
                       "speech_s": len(reply.audio) / reply.sample_rate}
    s, e = turns["streaming"], turns["exact"]
    chunks = np.split(s["dump"]["latents"][0], np.cumsum(s["dump"]["chunk_frames"])[:-1])
    dev = deviation(e["dump"]["latents"], chunks, e["dump"]["wav"], s["dump"]["wav"], t2w.spec.hop)
    # For scale: the same codes spoken whole with another draw of the reply's noise.
    other = noise.copy()
    other[:, t2w.factor * len(voice.prompt_token) :] = np.random.default_rng(seed + 1).standard_normal(
        other[:, t2w.factor * len(voice.prompt_token) :].shape)
    other_latents = t2w.latents(codes, voice, other)
    scale = deviation(e["dump"]["latents"], [other_latents[0]], e["dump"]["wav"], t2w.vocode(other_latents), t2w.spec.hop)

    speech_s = e["speech_s"]
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # before the bandwidth probe's
    artifacts_gb = sum(f.stat().st_size for f in Path(artifacts).rglob("*") if f.is_file()) / 1e9
    weights = backbone_bytes(artifacts)
    bandwidth = read_bandwidth_gbs()
    int4_bytes = weights / 4 * (0.5 + 2 / 32)  # 4-bit weights and a fp16 scale per block of 32

    def rtf(t: dict) -> float:
        return (t["timings"].get("token2wav", 0.0) + t["timings"].get("vocoder", 0.0)) / speech_s

    decode_per_token = e["timings"]["decode_per_token"]
    return {
        "time_to_first_audio_s": s["timings"]["first_audio"],
        "time_to_first_audio_exact_s": e["timings"]["first_audio"],
        "time_to_first_text_s": s["timings"].get("first_text"),
        "decode_ms_per_token": 1000 * decode_per_token,
        "read_floor_ms_per_token": 1000 * weights / (bandwidth * 1e9),
        "read_bandwidth_gbs": bandwidth,
        "backbone_weight_bytes": weights,
        "token2wav_rtf": {"exact": rtf(e), "streaming": rtf(s)},
        "streaming_turn_rtf": s["wall_s"] / speech_s,
        "streaming_turn_rtf_with_decode_at_int4_floor": (s["wall_s"] - s["timings"]["decode"]
                                                          + len(forced) * int4_bytes / (bandwidth * 1e9)) / speech_s,
        "speech_s": speech_s,
        "audio_codes": int(len(codes)),
        "stages_ms": {mode: {k: 1000 * t["timings"].get(k, 0.0) for k in STAGES} for mode, t in turns.items()},
        "first_audio_breakdown_ms": {k: 1000 * s["timings"].get(f"first_audio.{k}", 0.0) for k in STAGES},
        "streaming_deviation": {"latent_rms_per_chunk": dev.latent_rms, "wav_rms_per_chunk": dev.wav_rms,
                                "log_mel_l1": dev.log_mel_l1, "chunk_frames": dev.chunk_frames,
                                "another_noise_draw": {"latent_rms": scale.latent_rms[0], "wav_rms": scale.wav_rms[0],
                                                       "log_mel_l1": scale.log_mel_l1}},
        "streaming": asdict(assistant.streaming),
        "prompt_tokens": int(len(e["dump"]["input_ids"])),
        "system_prompt_tokens": system_prompt_tokens,
        "peak_rss_gb": peak_rss_gb,
        "artifacts_gb": artifacts_gb,
        "peak_over_artifacts": peak_rss_gb / artifacts_gb,
    }


if __name__ == "__main__":
    artifacts, question, forced = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    print(json.dumps(measure(artifacts, question, forced)))
