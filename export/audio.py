"""Audio frontend of the reference: any wav -> 24 kHz -> 30 s segments -> 16 kHz log-mel.

Reproduces upstream numerics exactly (DESIGN.md, "Numerics the runtime reproduces"): torchaudio's
sinc/Hann resampler, 240/480 framing, per-segment 24k->16k resampling, Whisper's 128-bin log-mel, and the
bfloat16 rounding of the mel before the encoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Constants, the slot count and the filterbank are plain arithmetic, shared with the runtime; the
# signal processing below is the independent torch implementation the runtime is checked against.
from covo_edge.runtime.frontend import (  # noqa: F401
    FRAME, HOP, MEL_FRAMES, MEL_RATE, MEL_SAMPLES, N_FFT, N_MELS, PAD_MULTIPLE, SAMPLE_RATE, SEGMENT,
    mel_filters, num_audio_tokens,
)

ADAPTER_FRAMES = 188  # encoder 1500 frames after three stride-2 downsamplings


def sinc_resample_kernel(
    orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99, float32_grid: bool = True
) -> tuple[torch.Tensor, int]:
    """torchaudio's sinc_interp_hann kernel [new, 1, 2*width + orig] for rates reduced by their gcd.

    `float32_grid` mirrors torchaudio.functional.resample (kernel computed in float32); False mirrors
    torchaudio.transforms.Resample (time grid in float64, kernel cast to float32 at the end).
    """
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    grid_dtype = torch.float32 if float32_grid else torch.float64
    idx = torch.arange(-width, width + orig, dtype=grid_dtype)[None, None] / orig
    phase = torch.arange(0, -new, -1, dtype=torch.float32 if float32_grid else None)[:, None, None] / new
    t = (phase + idx) * base
    t = t.clamp(-width_zeros, width_zeros)
    window = torch.cos(t * math.pi / width_zeros / 2) ** 2
    t = t * math.pi
    kernel = torch.where(t == 0, torch.ones_like(t), t.sin() / t) * (window * (base / orig))
    return kernel.to(torch.float32), width


def resample(wav: torch.Tensor, orig: int, new: int, float32_grid: bool = True) -> torch.Tensor:
    """Resample the last axis from `orig` to `new` Hz exactly as torchaudio does (default settings)."""
    if orig == new:
        return wav
    kernel, width = sinc_resample_kernel(orig, new, float32_grid=float32_grid)
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    shape = wav.shape
    x = wav.reshape(-1, shape[-1])
    length = x.shape[-1]
    x = F.pad(x, (width, width + o))
    y = F.conv1d(x[:, None], kernel, stride=o).transpose(1, 2).reshape(x.shape[0], -1)
    y = y[..., : math.ceil(n * length / o)]
    return y.reshape(*shape[:-1], y.shape[-1])


def to_model_rate(wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Mono 24 kHz, truncated to whole 100 Hz frames and zero-padded to a multiple of 480 samples.

    `wav` is [samples] or [channels, samples] (upstream's torchaudio.load layout).
    """
    if wav.ndim == 2:
        wav = wav.mean(dim=0)
    wav = resample(wav.float(), sample_rate, SAMPLE_RATE)
    wav = wav[: wav.shape[0] // FRAME * FRAME]
    return F.pad(wav, (0, -wav.shape[0] % PAD_MULTIPLE))


def segments(wav: torch.Tensor) -> list[torch.Tensor]:
    """30 s windows of the 24 kHz wav; the last one is shorter."""
    return list(torch.split(wav, SEGMENT))


def log_mel(wav16k: torch.Tensor) -> torch.Tensor:
    """Whisper log-mel [128, 3000] of one segment, padded/trimmed to 30 s, rounded to bfloat16."""
    x = wav16k[:MEL_SAMPLES]
    x = F.pad(x, (0, MEL_SAMPLES - x.shape[0]))
    window = torch.hann_window(N_FFT)
    spec = torch.stft(x, N_FFT, HOP, window=window, return_complex=True)
    power = spec[..., :-1].abs() ** 2
    mel = torch.from_numpy(mel_filters()) @ power
    logm = mel.clamp(min=1e-10).log10()
    logm = torch.maximum(logm, logm.max() - 8.0)
    return ((logm + 4.0) / 4.0).to(torch.bfloat16).float()


def mel_segments(wav24k: torch.Tensor) -> torch.Tensor:
    """Log-mel of every 30 s segment [S, 128, 3000]; each segment is resampled to 16 kHz on its own."""
    mels = [log_mel(resample(seg, SAMPLE_RATE, MEL_RATE, float32_grid=False)) for seg in segments(wav24k)]
    return torch.stack(mels)
