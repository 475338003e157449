"""GPUs our users run, as the roofline sees them, and the released 7B backbone's decode step in numbers:
what the paper projections of `bench` and `bench-batch` are computed from. Projections, not measurements:
real kernels reach a fraction of peak."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuSpec:
    name: str
    bandwidth_gbs: float  # memory bandwidth, GB/s
    fp16_tflops: float  # dense fp16 tensor-core peak (fp32 accumulate), TFLOP/s
    memory_gb: float  # what the weights, caches and activations share (on a Jetson: with the CPU)
    source: str


GPUS = (
    GpuSpec("Jetson AGX Orin 64GB", 204.8, 42.5, 64.0,
            "NVIDIA: 204.8 GB/s LPDDR5; 170 sparse INT8 TOPS on the GPU, so ~42.5 dense fp16"),
    GpuSpec("RTX 4090", 1008.0, 165.2, 24.0,
            "NVIDIA Ada whitepaper: 1008 GB/s GDDR6X; 165.2 dense fp16 TFLOPS with fp32 accumulate"),
    GpuSpec("L40S", 864.0, 181.0, 48.0, "NVIDIA L40S datasheet: 864 GB/s GDDR6; 362 sparse fp16 TFLOPS, 181 dense"),
    GpuSpec("H100 SXM 80GB", 3350.0, 989.0, 80.0, "NVIDIA H100 datasheet: 3.35 TB/s HBM3; 1979 sparse fp16 TFLOPS, "
            "989 dense"),
)
BYTES_PER_WEIGHT = {"fp16": 2.0, "int8": 1.0, "int4": 0.5 + 2 / 32}  # int4: a fp16 scale per block of 32

# The released backbone (../shared/reference/covo_audio_state_dict_manifest.json; tests check these): a decode
# step reads every LLM weight but the embedding table (the untied LM head included), and each token of a
# conversation holds 28 layers x (key, value) x 4 KV heads x 128 in the cache.
DECODE_WEIGHTS_7B = 7_127_930_880
KV_VALUES_PER_TOKEN_7B = 28 * 2 * 4 * 128
HIDDEN_7B, LAYERS_7B = 3584, 28
OTHER_GRAPHS_GB_7B = 3.5  # encoder, adapter, embedding table, token2wav and vocoder at fp16, resident beside the backbone
REAL_TIME_TOKENS_PER_S = 100 / 3  # 5 text ids and 15 audio codes per 0.6 s of speech
# A speaking stream's own token2wav cache (its reply frames; the voice's are shared): keys and values per DiT
# block (12 x 1024), guidance row (2) and ODE evaluation (18), fp16 on a GPU, for 512 history frames.
STREAM_CACHE_GB = 512 * 12 * 2 * 2 * 1024 * 18 * 2 / 1e9


def decode_step_ms(gpu: GpuSpec, precision: str, batch: int, context: int) -> float:
    """Roofline time of one batched decode step: the weights read once, each row's fp16 KV cache read, and
    every row's FLOPs (2 per weight, plus attention over its context)."""
    read = DECODE_WEIGHTS_7B * BYTES_PER_WEIGHT[precision] + batch * context * KV_VALUES_PER_TOKEN_7B * 2
    flops = batch * (2.0 * DECODE_WEIGHTS_7B + 4.0 * context * LAYERS_7B * HIDDEN_7B)
    return 1000 * max(read / (gpu.bandwidth_gbs * 1e9), flops / (gpu.fp16_tflops * 1e12))


def sessions_in_real_time(gpu: GpuSpec, precision: str, context: int, limit: int = 256) -> dict:
    """How many conversations one GPU decodes at once, each at the real-time rate, at `context` tokens each:
    the largest batch whose step fits 1 / 33.3 s, and the most whose KV caches and speech stream caches fit
    beside the weights. Decode only: each conversation's speech (token2wav, vocoder) costs GPU time besides."""
    budget_ms = 1000 / REAL_TIME_TOKENS_PER_S
    by_speed = max((b for b in range(1, limit + 1) if decode_step_ms(gpu, precision, b, context) <= budget_ms),
                   default=0)
    free_gb = gpu.memory_gb - DECODE_WEIGHTS_7B * BYTES_PER_WEIGHT[precision] / 1e9 - OTHER_GRAPHS_GB_7B
    by_memory = max(0, int(free_gb // (context * KV_VALUES_PER_TOKEN_7B * 2 / 1e9 + STREAM_CACHE_GB)))
    return {"by_speed": by_speed, "by_memory": by_memory, "sessions": min(by_speed, by_memory),
            "step_ms_at_1": round(decode_step_ms(gpu, precision, 1, context), 2)}
