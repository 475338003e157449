"""The reference frontend (torch, export/audio.py) against independent computations and hand-checked values.
(Its mel filterbank and slot count are the runtime's, imported: tests/test_frontend.py checks them, against
librosa and known counts, and is not repeated here.)"""

import math

import numpy as np
import pytest

from conftest import needs

torch = needs("torch", "export")

from covo_edge.export import audio  # noqa: E402


def direct_resample(x: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """The band-limited interpolation torchaudio's kernel implements, evaluated sample by sample in float64:
    y[j] = sum_i x[i] * (b/o) * sinc(pi*b*(i/o - j/n)) * cos^2(pi*t/(2*zeros)), t clamped to +-zeros."""
    g = math.gcd(orig, new)
    o, n = orig // g, new // g
    b = min(o, n) * rolloff
    out = np.zeros(math.ceil(n * len(x) / o))
    i = np.arange(len(x))
    for j in range(len(out)):
        t = np.clip((i / o - j / n) * b, -zeros, zeros)
        w = np.cos(t * np.pi / zeros / 2) ** 2
        s = np.where(t == 0, 1.0, np.sin(np.pi * t) / np.where(t == 0, 1.0, np.pi * t))
        out[j] = np.sum(x * s * w) * b / o
    return out


@pytest.mark.parametrize("orig,new", [(16000, 24000), (44100, 24000), (24000, 16000), (8000, 24000)])
def test_resampler_matches_direct_sinc_interpolation(orig, new):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(2000).astype(np.float32)
    ours = audio.resample(torch.from_numpy(x), orig, new).numpy()
    ref = direct_resample(x.astype(np.float64), orig, new)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-5 * np.abs(ref).max())


def test_resampler_keeps_a_low_tone_and_both_kernel_variants_agree():
    t = np.arange(24000) / 24000
    x = torch.from_numpy(np.sin(2 * np.pi * 440 * t).astype(np.float32))
    y = audio.resample(x, 24000, 16000, float32_grid=False).numpy()
    expect = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    np.testing.assert_allclose(y[200:-200], expect[200:-200], atol=2e-3)
    y32 = audio.resample(x, 24000, 16000, float32_grid=True).numpy()
    assert np.abs(y - y32).max() < 1e-5


def test_log_mel_of_silence_is_the_floor():
    mel = audio.log_mel(torch.zeros(16000))
    assert mel.shape == (128, 3000)
    assert torch.all(mel == (math.log10(1e-10) + 4) / 4)  # -1.5


def test_log_mel_of_a_bin_centred_tone_matches_its_dft():
    """A 1 kHz cosine (bin 25 of a 400-point frame at 16 kHz) through a periodic Hann window has
    |X[25]| = 100A and |X[24]| = |X[26]| = 50A and nothing else, in every frame away from the edges."""
    a = 0.5
    t = np.arange(audio.MEL_SAMPLES) / audio.MEL_RATE
    mel = audio.log_mel(torch.from_numpy((a * np.cos(2 * np.pi * 1000 * t)).astype(np.float32))).numpy()
    w = audio.mel_filters().astype(np.float64)
    power = (100 * a) ** 2 * w[:, 25] + (50 * a) ** 2 * (w[:, 24] + w[:, 26])
    logm = np.log10(np.maximum(power, 1e-10))
    expect = (np.maximum(logm, logm.max() - 8) + 4) / 4
    np.testing.assert_allclose(mel[:, 10:-10], np.repeat(expect[:, None], 2980, 1), atol=0.02)  # bf16 rounding
    peak = int(np.argmax(expect))
    assert mel[peak, 1500] == mel[:, 1500].max()


def test_mel_is_rounded_to_bfloat16():
    rng = np.random.default_rng(1)
    mel = audio.log_mel(torch.from_numpy(rng.standard_normal(16000).astype(np.float32)))
    assert torch.equal(mel, mel.to(torch.bfloat16).float())


def test_framing_and_mono():
    stereo = torch.ones(2, 48000 + 37) * torch.tensor([[1.0], [-1.0]])
    wav = audio.to_model_rate(stereo, 48000)
    assert torch.allclose(wav, torch.zeros_like(wav))  # channels averaged before resampling
    assert wav.shape[0] % 480 == 0
    # 24 kHz input: truncated to whole 240-sample frames, then zero-padded to 480
    x = torch.ones(24000 + 250)
    y = audio.to_model_rate(x, 24000)
    assert y.shape[0] == 24480 and torch.all(y[:24240] == 1) and torch.all(y[24240:] == 0)


def test_segments_are_resampled_each_on_their_own():
    """35 s -> two mel windows; the second comes from resampling only the last 5 s."""
    rng = np.random.default_rng(2)
    wav = torch.from_numpy(rng.standard_normal(35 * 24000).astype(np.float32)) * 0.1
    mels = audio.mel_segments(wav)
    assert mels.shape == (2, 128, 3000)
    tail = audio.log_mel(audio.resample(wav[720000:], 24000, 16000, float32_grid=False))
    assert torch.equal(mels[1], tail)
    whole = audio.resample(wav, 24000, 16000, float32_grid=False)
    assert not torch.equal(mels[1], audio.log_mel(whole[480000:]))
