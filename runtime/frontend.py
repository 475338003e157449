"""Audio frontend in numpy only: any wav -> 24 kHz -> 30 s segments -> 16 kHz log-mel.

Mirrors `covo_edge.export.audio` (the PyTorch reference) number for number, so the exported encoder
sees the features upstream computes: torchaudio's sinc/Hann resampler, 240/480 framing, per-segment
24k->16k resampling, Whisper's 128-bin log-mel, rounded to bfloat16. No torch, no scipy.
"""

from __future__ import annotations

import math
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
import soundfile
from numpy.lib.stride_tricks import sliding_window_view

from .errors import AudioError, os_reason

SAMPLE_RATE = 24000  # model rate: input audio and output speech
FRAME = 240  # 100 Hz frames at 24 kHz
PAD_MULTIPLE = 480
SEGMENT = 30 * SAMPLE_RATE  # 720000 samples per encoder window
MEL_RATE = 16000
N_FFT = 400
HOP = 160
N_MELS = 128
MEL_SAMPLES = 30 * MEL_RATE  # 480000
MEL_FRAMES = MEL_SAMPLES // HOP  # 3000
MAX_CHANNELS = 8
BLOCKS_PER_MATMUL = 1 << 16  # bounds the resampler's window copy to a few tens of MB on long inputs


def sinc_resample_kernel(
    orig: int, new: int, width_zeros: int = 6, rolloff: float = 0.99, float32_grid: bool = True
) -> tuple[np.ndarray, int]:
    """torchaudio's sinc_interp_hann kernel [new, 2*width + orig] (rates reduced by their gcd) and width.

    `float32_grid` mirrors torchaudio.functional.resample (kernel computed in float32); False mirrors
    torchaudio.transforms.Resample (time grid in float64, kernel cast to float32 at the end). The two
    differ by ~1e-7, which flips a few bfloat16 mel values, so each caller uses upstream's variant.
    """
    g = math.gcd(orig, new)
    orig, new = orig // g, new // g
    base = min(orig, new) * rolloff
    width = math.ceil(width_zeros * orig / base)
    dtype = np.float32 if float32_grid else np.float64
    idx = np.arange(-width, width + orig, dtype=dtype)[None] / dtype(orig)
    phase = (np.arange(0, -new, -1, dtype=np.float32) / np.float32(new))[:, None]
    t = (phase.astype(dtype) + idx) * dtype(base)
    t = np.clip(t, -width_zeros, width_zeros)
    # sin/cos evaluated in float64 and rounded: torch's float32 ones are within 1 ulp of that
    window = np.cos((t * dtype(math.pi) / dtype(width_zeros) / dtype(2)).astype(np.float64)).astype(dtype) ** 2
    t = t * dtype(math.pi)
    sinc = np.sin(t.astype(np.float64)).astype(dtype) / np.where(t == 0, dtype(1), t)
    kernel = np.where(t == 0, dtype(1), sinc) * (window * dtype(base / orig))
    return kernel.astype(np.float32), width


def resample(wav: np.ndarray, orig: int, new: int, float32_grid: bool = True) -> np.ndarray:
    """Resample the last axis from `orig` to `new` Hz exactly as torchaudio does (default settings).

    torchaudio's strided conv1d as one float32 matmul: every `o`-th window of the padded signal times
    the kernel gives `n` output samples per window, interleaved in time order.
    """
    if orig == new:
        return wav
    kernel, width = sinc_resample_kernel(orig, new, float32_grid=float32_grid)
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    length = wav.shape[-1]
    x = np.pad(wav.astype(np.float32, copy=False), [(0, 0)] * (wav.ndim - 1) + [(width, width + o)])
    windows = sliding_window_view(x, kernel.shape[1], axis=-1)[..., ::o, :]
    y = np.concatenate(
        [
            np.ascontiguousarray(windows[..., i : i + BLOCKS_PER_MATMUL, :]) @ kernel.T
            for i in range(0, windows.shape[-2], BLOCKS_PER_MATMUL)
        ],
        axis=-2,
    )
    y = y.reshape(*wav.shape[:-1], -1)
    return y[..., : math.ceil(n * length / o)]


def to_model_rate(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono 24 kHz, truncated to whole 100 Hz frames and zero-padded to a multiple of 480 samples.

    `wav` is [samples] or [channels, samples] (upstream's torchaudio.load layout).
    """
    wav = np.asarray(wav)
    if wav.ndim == 2:
        wav = wav.mean(axis=0)
    wav = resample(wav.astype(np.float32, copy=False), sample_rate, SAMPLE_RATE)
    wav = wav[: wav.shape[0] // FRAME * FRAME]
    return np.pad(wav, (0, -wav.shape[0] % PAD_MULTIPLE))


def num_audio_tokens(num_samples: int) -> int:
    """Number of <|cAUDIO|> slots for a 24 kHz wav: 100 Hz frames halved (rounding up) four times."""
    n = num_samples * 100 // SAMPLE_RATE
    for _ in range(4):
        n = (n + 1) // 2
    return n


def segments(wav24k: np.ndarray) -> list[np.ndarray]:
    """30 s windows of the 24 kHz wav; the last one is shorter."""
    return [wav24k[i : i + SEGMENT] for i in range(0, wav24k.shape[0], SEGMENT)]


@lru_cache(maxsize=None)
def mel_filters(n_mels: int = N_MELS, sample_rate: int = MEL_RATE, n_fft: int = N_FFT) -> np.ndarray:
    """Slaney-scale, Slaney-normalised triangular filters [n_mels, n_fft//2 + 1] (librosa's defaults)."""
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0

    def hz_to_mel(f: float) -> float:
        return f / f_sp if f < min_log_hz else min_log_mel + math.log(f / min_log_hz) / logstep

    def mel_to_hz(m: np.ndarray) -> np.ndarray:
        return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)

    fft_hz = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    mel_hz = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2))
    widths = np.diff(mel_hz)
    ramps = mel_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_hz[2:] - mel_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def round_bf16(x: np.ndarray) -> np.ndarray:
    """float32 rounded to the nearest bfloat16 (ties to even), as float32: upstream feeds the encoder
    a bfloat16 mel, so fp32 graphs get the same values."""
    x = np.asarray(x, dtype=np.float32)
    bits = x.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return np.where(np.isnan(x), x, rounded.view(np.float32))


def hann_window(n: int = N_FFT) -> np.ndarray:
    """Periodic Hann window computed as torch.hann_window does (float32 steps, cos rounded from float64)."""
    angle = np.arange(n, dtype=np.float32) * np.float32(2 * math.pi / n)
    return np.cos(angle.astype(np.float64)).astype(np.float32) * np.float32(-0.5) + np.float32(0.5)


def log_mel(wav16k: np.ndarray) -> np.ndarray:
    """Whisper log-mel [128, 3000] of one segment, padded/trimmed to 30 s, rounded to bfloat16."""
    x = wav16k[:MEL_SAMPLES].astype(np.float32, copy=False)
    x = np.pad(x, (0, MEL_SAMPLES - x.shape[0]))
    x = np.pad(x, N_FFT // 2, mode="reflect")
    frames = sliding_window_view(x, N_FFT)[::HOP][:MEL_FRAMES] * hann_window()  # 3001 frames, last dropped
    # float32 frames, FFT in float64 rounded to complex64: matches torch's float32 stft as closely as a
    # float32 FFT does, on numpy 1.x (float64 only) and 2.x alike
    spec = np.fft.rfft(frames.astype(np.float64), axis=-1).astype(np.complex64)
    power = np.abs(spec) ** 2
    mel = mel_filters() @ power.T
    # log10 in float64, rounded: fewer bfloat16 flips against torch's float32 log10 than numpy's own
    logm = np.log10(np.maximum(mel, np.float32(1e-10)).astype(np.float64)).astype(np.float32)
    logm = np.maximum(logm, logm.max() - np.float32(8.0))
    return round_bf16((logm + np.float32(4.0)) / np.float32(4.0))


def mel_segments(wav24k: np.ndarray) -> np.ndarray:
    """Log-mel of every 30 s segment [S, 128, 3000]; each segment is resampled to 16 kHz on its own."""
    return np.stack([log_mel(resample(seg, SAMPLE_RATE, MEL_RATE, float32_grid=False)) for seg in segments(wav24k)])


def load_audio(path: str | PathLike) -> tuple[np.ndarray, int]:
    """Decode and check an audio file: ([channels, samples] float32 in [-1, 1], sample rate), or AudioError
    naming the file and what is wrong (unreadable, empty, silent, NaN, too short)."""
    path = Path(path)
    if not path.is_file():  # libsndfile would only say "System error."
        raise AudioError(f"cannot read audio {path}: {'it is a directory' if path.is_dir() else 'no such file'}")
    try:
        open(path, "rb").close()  # permission and I/O errors in the OS's words
        data, sample_rate = soundfile.read(path, dtype="float32", always_2d=True)
    except OSError as e:
        raise AudioError(f"cannot read audio {path}: {os_reason(e)}") from None
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        reason = getattr(e, "error_string", None) or str(e) or type(e).__name__
        raise AudioError(f"cannot read audio {path}: {reason.strip()}") from None
    wav = np.ascontiguousarray(data.T)
    try:
        check_audio(wav, int(sample_rate))
    except AudioError as e:
        raise AudioError(f"{path}: {e}") from None
    return wav, int(sample_rate)


def check_audio(wav: np.ndarray, sample_rate: int) -> np.ndarray:
    """The wav as float32 [samples] or [channels, samples], or AudioError naming what is wrong with it.

    Catches what would otherwise fail deep inside the model or silently give garbage features.
    """
    try:
        a = np.asarray(wav)
        # Integer PCM (a microphone's int16, say) is scaled to [-1, 1) like a decoded file.
        scale = 1.0 / -np.iinfo(a.dtype).min if a.dtype.kind == "i" else 1.0
        a = a.astype(np.float32) * np.float32(scale) if scale != 1.0 else a.astype(np.float32, copy=False)
    except (TypeError, ValueError) as e:
        raise AudioError(f"audio must be an array of real numbers ({e})") from None
    if a.size == 0:
        raise AudioError(f"audio is empty (shape {a.shape})")
    if a.ndim not in (1, 2):
        raise AudioError(f"audio must be [samples] or [channels, samples], got {a.ndim}-D shape {a.shape}")
    if a.ndim == 2 and a.shape[0] > MAX_CHANNELS:
        raise AudioError(
            f"audio has shape {a.shape}: pass [channels, samples] with at most {MAX_CHANNELS} channels "
            "(transpose a [samples, channels] array)"
        )
    if not np.isfinite(a).all():
        raise AudioError("audio contains NaN or infinite samples")
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise AudioError(f"sample rate must be a positive integer in Hz, got {sample_rate!r}")
    if -(-a.shape[-1] * SAMPLE_RATE // sample_rate) < FRAME:  # to_model_rate would keep no frame
        ms = 1000 * a.shape[-1] / sample_rate
        raise AudioError(
            f"audio is too short ({a.shape[-1]} samples = {ms:.2f} ms at {sample_rate} Hz); need at least 10 ms"
        )
    if not a.any():
        raise AudioError("audio is silent (all samples are zero); check the recording or the input device")
    return a


def prepare(wav: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int, np.ndarray]:
    """Checked audio -> (24 kHz wav, number of <|cAUDIO|> slots, mel segments [S, 128, 3000])."""
    wav24k = to_model_rate(check_audio(wav, sample_rate), sample_rate)
    return wav24k, num_audio_tokens(wav24k.shape[0]), mel_segments(wav24k)
