"""Paper projections for GPUs: each stage's FLOPs and weight bytes, counted on the full-size model built
on the meta device, turned into roofline times (the larger of FLOPs / peak compute and bytes / memory
bandwidth) on named devices. A projection, not a measurement: real kernels reach a fraction of peak."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from covo_edge.runtime.gpus import BYTES_PER_WEIGHT, GPUS, GpuSpec

from .config import Token2WavConfig
from .model import CovoAudio
from .tiny import RELEASE, covo_config
from .token2wav import ReferenceToken2Wav


def _count(module_call) -> float:
    with FlopCounterMode(display=False) as counter:
        module_call()
    return float(counter.get_total_flops())


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def full_size_counts(prompt_tokens: int, history: int, codes: int, voice_codes: int, first_chunk_frames: int,
                     prompt_frames: int) -> dict[str, dict[str, float]]:
    """FLOPs and weights (parameter counts) per call of each stage of the released model: the encoder
    window, the adapter, a prefill of `prompt_tokens`, one decode step on `history`, token2wav of `codes`
    whole (18 evaluations over voice + reply frames) and streamed (its first chunk over a prompt window),
    and the vocoder per second of speech."""
    with torch.device("meta"):
        model = CovoAudio(covo_config(RELEASE))
        t2w = ReferenceToken2Wav(Token2WavConfig())
        llm, t2l = model.llm, t2w.token2latent
        h, z = t2l.cfg.hidden_size, t2l.cfg.z_dim
        evaluations = 2 * (t2w.config.s_steps - 1)
        frames = 4 * (voice_codes + codes)
        spk = torch.zeros(2, t2l.cfg.spkr_embed_dim)

        def field(n: int, cached: int) -> float:
            past = tuple(torch.zeros(2, t2l.cfg.num_heads, cached, h // t2l.cfg.num_heads) for _ in range(2 * len(t2l.blocks)))
            return _count(lambda: t2l.field(torch.zeros(2, n, z), torch.zeros(2, n, h), t2l.modulation(torch.zeros(2), spk),
                                            torch.zeros(2, 15, h), torch.zeros(1), past))

        body = _params(llm) - _params(llm.get_input_embeddings())  # a decode step reads all but the embedding table
        return {
            "encoder": {"flops": _count(lambda: model.encoder(torch.zeros(1, 128, 3000))), "weights": _params(model.encoder)},
            "adapter": {"flops": _count(lambda: model.audio_adapter(torch.zeros(1, 1500, model.config.encoder.d_model))),
                        "weights": _params(model.audio_adapter)},
            "prefill": {"flops": _count(lambda: llm(inputs_embeds=torch.zeros(1, prompt_tokens, llm.config.hidden_size),
                                                    logits_to_keep=1)), "weights": body},
            "decode_step": {"flops": 2.0 * body + 4.0 * history * llm.config.num_hidden_layers * llm.config.hidden_size,
                            "weights": body},
            "token2wav_exact": {"flops": evaluations * field(frames, 0), "weights": evaluations * _params(t2l)},
            "token2wav_first_chunk": {"flops": evaluations * field(first_chunk_frames, prompt_frames),
                                      "weights": evaluations * _params(t2l)},
            "vocoder_per_second": {"flops": _count(lambda: t2w.wavegan(torch.zeros(1, z, 100))),
                                   "weights": _params(t2w.wavegan)},
        }


def roofline_ms(flops: float, weights: float, device: GpuSpec, bytes_per_weight: float = 2.0) -> float:
    return 1000 * max(flops / (device.fp16_tflops * 1e12), weights * bytes_per_weight / (device.bandwidth_gbs * 1e9))


def project(counts: dict[str, dict[str, float]], decode_steps_to_first_audio: int, first_vocoder_frames: int,
            speech_seconds: float, new_tokens: int) -> list[dict]:
    """Per device: each stage's roofline time, time to first audio (streamed, fp16 weights), decode time per
    token for each weight precision, and the whole turn's real-time factor (decode + token2wav + vocoder
    per second of speech) for each."""
    out = []
    for d in GPUS:
        ms = {k: roofline_ms(v["flops"], v["weights"], d) for k, v in counts.items()}
        decode = {p: roofline_ms(counts["decode_step"]["flops"], counts["decode_step"]["weights"], d, b)
                  for p, b in BYTES_PER_WEIGHT.items()}
        first_audio = (ms["encoder"] + ms["adapter"] + ms["prefill"] + decode_steps_to_first_audio * decode["fp16"]
                       + ms["token2wav_first_chunk"] + ms["vocoder_per_second"] * first_vocoder_frames / 100)
        speech = ms["token2wav_exact"] + ms["vocoder_per_second"] * speech_seconds
        out.append({
            "device": d.name, "source": d.source, "stage_ms": {k: round(v, 2) for k, v in ms.items()},
            "decode_ms_per_token": {p: round(v, 2) for p, v in decode.items()},
            "decode_tokens_per_s": {p: round(1000 / v, 1) for p, v in decode.items()},
            "time_to_first_audio_s": round(first_audio / 1000, 3),
            "turn_rtf": {p: round((new_tokens * v + speech) / 1000 / speech_seconds, 3) for p, v in decode.items()},
        })
    return out
