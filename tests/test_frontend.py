"""The numpy frontend (runtime) against the PyTorch reference (export) and its own error handling."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import needs

from covo_edge.runtime import frontend
from covo_edge.runtime.errors import AudioError

BF16_ULP_AT_1 = 2.0**-7  # spacing of bfloat16 values in [1, 2)


@pytest.fixture(scope="module")
def torch():
    return needs("torch", "export")


@pytest.fixture(scope="module")
def audio(torch):
    from covo_edge.export import audio

    return audio


def signals(length: int, rate: int) -> dict[str, np.ndarray]:
    """Noise in [-1, 1] and a loud 440 Hz sine, float32."""
    rng = np.random.default_rng(length)
    t = np.arange(length) / rate
    return {
        "noise": rng.uniform(-1, 1, length).astype(np.float32),
        "sine": (0.9 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
    }


def speech_like(seconds: float, rate: int, voiced: float) -> np.ndarray:
    """A 150 Hz buzz with harmonics, syllable-rate amplitude modulation and breath noise, then silence."""
    rng = np.random.default_rng(3)
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 12))
    envelope = np.sin(2 * np.pi * 2.5 * t) ** 2
    x = 0.2 * buzz * envelope + 0.01 * rng.standard_normal(t.shape)
    return (x * (t < voiced)).astype(np.float32)


RATES = [(16000, 24000, True), (44100, 24000, True), (48000, 24000, True), (22050, 24000, True),
         (8000, 24000, True), (24000, 16000, True), (24000, 16000, False)]


@pytest.mark.parametrize("orig,new,grid", RATES)
@pytest.mark.parametrize("length", [1, 7, 4801])
def test_resample_matches_torch(audio, torch, orig, new, grid, length):
    for name, x in signals(length, orig).items():
        ref = audio.resample(torch.from_numpy(x), orig, new, float32_grid=grid).numpy()
        ours = frontend.resample(x, orig, new, float32_grid=grid)
        assert ours.dtype == np.float32 and ours.shape == ref.shape, name
        assert np.abs(ours - ref).max(initial=0) <= 1e-6, name


@pytest.mark.parametrize("orig,new,grid", RATES)
def test_resample_kernel_matches_torch(audio, orig, new, grid):
    ref, ref_width = audio.sinc_resample_kernel(orig, new, float32_grid=grid)
    ours, width = frontend.sinc_resample_kernel(orig, new, float32_grid=grid)
    assert width == ref_width and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref[:, 0].numpy(), rtol=0, atol=1.2e-7)  # float32 sin/cos: <= 1 ulp


def test_resample_keeps_leading_axes(audio, torch):
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 1000)).astype(np.float32)
    ref = audio.resample(torch.from_numpy(x), 44100, 24000).numpy()
    ours = frontend.resample(x, 44100, 24000)
    assert ours.shape == ref.shape == (2, 3, 545)
    assert np.abs(ours - ref).max() <= 1e-6


@pytest.mark.parametrize(
    "shape,rate", [((24000 + 250,), 24000), ((2, 48000 + 37), 48000), ((44100,), 44100), ((1, 8000), 8000),
                   ((3, 22050 // 2), 22050)]
)
def test_to_model_rate_matches_torch(audio, torch, shape, rate):
    x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
    ref = audio.to_model_rate(torch.from_numpy(x), rate).numpy()
    ours = frontend.to_model_rate(x, rate)
    assert ours.dtype == np.float32 and ours.shape == ref.shape and ours.shape[0] % frontend.PAD_MULTIPLE == 0
    assert np.abs(ours - ref).max() <= 1e-6


def assert_mel_parity(ours: np.ndarray, ref: np.ndarray) -> None:
    """At most one bfloat16 ulp apart anywhere, and bit-identical almost everywhere."""
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    diff = np.abs(ours - ref)
    differing = int((diff > 0).sum())
    report = f"max diff {diff.max()}, {differing} of {diff.size} elements differ"
    assert np.all(diff <= BF16_ULP_AT_1 * np.maximum(1.0, np.abs(ref))), report
    assert differing <= 0.001 * diff.size, report


@pytest.mark.parametrize("name", ["noise", "sine", "speech", "short"])
def test_log_mel_matches_torch(audio, torch, name):
    x = {
        "noise": signals(frontend.MEL_SAMPLES, frontend.MEL_RATE)["noise"] * 0.1,
        "sine": signals(frontend.MEL_SAMPLES, frontend.MEL_RATE)["sine"],
        "speech": speech_like(30, frontend.MEL_RATE, voiced=11.3),
        "short": speech_like(1.7, frontend.MEL_RATE, voiced=1.7),
    }[name]
    assert_mel_parity(frontend.log_mel(x), audio.log_mel(torch.from_numpy(x)).numpy())


def test_mel_segments_match_torch_on_35_seconds(audio, torch):
    wav = frontend.to_model_rate(speech_like(35, 48000, voiced=33), 48000)
    ours = frontend.mel_segments(wav)
    assert ours.shape == (2, frontend.N_MELS, frontend.MEL_FRAMES)
    assert_mel_parity(ours, audio.mel_segments(torch.from_numpy(wav)).numpy())


def test_round_bf16_matches_torch(torch):
    rng = np.random.default_rng(4)
    bits = rng.integers(0, 2**32, 100000, dtype=np.uint64).astype(np.uint32)  # every exponent, subnormals
    ties = (rng.integers(0, 2**16, 2000, dtype=np.uint64).astype(np.uint32) << 16) | 0x8000
    x = np.concatenate([bits, ties]).view(np.float32)
    x = np.concatenate([x[~np.isnan(x)], rng.standard_normal(10000).astype(np.float32),
                        np.array([0, -0.0, np.inf, -np.inf, 3.4028235e38, -3.4028235e38, 1e-45, 1.0], np.float32)])
    ref = torch.from_numpy(x).to(torch.bfloat16).float().numpy()
    assert np.array_equal(frontend.round_bf16(x).view(np.uint32), ref.view(np.uint32))


def test_round_bf16_ties_to_even():
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), np.nan], np.float32)  # halfway cases
    y = frontend.round_bf16(x)
    assert y[:3].tolist() == [1.0, 1 + 2**-6, -1.0] and np.isnan(y[3])


def test_mel_filters_equal_librosa_slaney():
    """Known values of librosa.filters.mel(sr=16000, n_fft=400, n_mels=128) (librosa 0.11),
    the matrix Whisper ships as mel_filters.npz."""
    m = frontend.mel_filters()
    assert m.shape == (128, 201) and m.dtype == np.float32
    np.testing.assert_allclose(m[0, :4], [0.0, 0.012373987, 0.0, 0.0], atol=1e-9)
    assert m[64].nonzero()[0].tolist() == [42, 43]
    np.testing.assert_allclose(m[64, 42:44], [0.0067496826, 0.018091518], rtol=1e-6)
    assert m[127].nonzero()[0].tolist() == list(range(191, 200))
    np.testing.assert_allclose(
        m[127, 191:200],
        [0.0004756951, 0.0016171717, 0.0027586485, 0.0039001252, 0.0050416016,
         0.004457121, 0.0033428406, 0.0022285604, 0.0011142802],
        rtol=1e-6,
    )
    np.testing.assert_allclose(m.sum(1)[[0, 10, 64, 127]], [0.012373987, 0.012373986, 0.0248412, 0.024936043], rtol=1e-6)


def test_log_mel_of_silence_is_the_floor():
    assert np.all(frontend.log_mel(np.zeros(16000, np.float32)) == -1.5)  # (log10(1e-10) + 4) / 4


@pytest.mark.parametrize("seconds,tokens", [(3.0, 19), (35.0, 219), (30.0, 188), (1.0, 7), (0.01, 1)])
def test_num_audio_tokens(seconds, tokens):
    assert frontend.num_audio_tokens(int(seconds * frontend.SAMPLE_RATE)) == tokens


def test_segments_split_at_30_seconds():
    parts = frontend.segments(np.zeros(35 * frontend.SAMPLE_RATE, np.float32))
    assert [len(p) for p in parts] == [frontend.SEGMENT, 5 * frontend.SAMPLE_RATE]


def test_prepare_returns_wav_tokens_and_mels():
    wav24k, tokens, mels = frontend.prepare(speech_like(3, 16000, voiced=3), 16000)
    assert wav24k.shape == (72000,) and tokens == 19 and mels.shape == (1, 128, 3000)


@pytest.mark.parametrize(
    "wav,rate,message",
    [
        (np.zeros(0), 16000, "empty"),
        (np.zeros((2, 0)), 16000, "empty"),
        (np.ones((1, 2, 100)), 16000, "[samples] or [channels, samples]"),
        (np.float32(1.0), 16000, "[samples] or [channels, samples]"),
        (np.ones((16000, 2)), 16000, "pass [channels, samples]"),
        (np.r_[np.ones(999), np.nan], 16000, "NaN"),
        (np.r_[np.ones(999), np.inf], 16000, "infinite"),
        (np.ones(1000), 0, "sample rate"),
        (np.ones(1000), -16000, "sample rate"),
        (np.ones(1000), 16000.0, "sample rate"),
        (np.ones(159), 16000, "too short"),
        (np.ones((2, 478)), 48000, "too short"),  # 479 would resample to 240 samples
        (np.zeros(16000), 16000, "silent (all samples are zero)"),
        ([["a", "b"]], 16000, "real numbers"),
    ],
)
def test_check_audio_rejects_bad_input(wav, rate, message):
    with pytest.raises(AudioError) as e:
        frontend.check_audio(wav, rate)
    assert message in str(e.value)


def test_check_audio_scales_integer_pcm():
    pcm = np.array([-32768, 0, 16384, 32767], np.int16)
    np.testing.assert_array_equal(frontend.check_audio(np.tile(pcm, 100), 16000)[:4], [-1.0, 0.0, 0.5, 32767 / 32768])
    assert frontend.check_audio(np.full(400, 2**30, np.int32), 16000).max() == 0.5


def test_check_audio_accepts_one_frame_and_returns_float32():
    assert frontend.check_audio(np.ones(160), 16000).dtype == np.float32  # exactly 10 ms
    assert frontend.check_audio(np.ones((2, 441), np.float64), 44100).shape == (2, 441)


def test_load_audio_reads_channels_first(tmp_path):
    import soundfile

    stereo = np.stack([np.linspace(-0.5, 0.5, 800), np.full(800, 0.25)], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 8000, subtype="FLOAT")
    wav, rate = frontend.load_audio(tmp_path / "a.wav")
    assert rate == 8000 and wav.dtype == np.float32 and wav.shape == (2, 800)
    np.testing.assert_allclose(wav, stereo.T, atol=1e-7)


def test_load_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.wav"
    with pytest.raises(AudioError, match="missing.wav") as e:
        frontend.load_audio(missing)
    assert "\n" not in str(e.value) and "no such file" in str(e.value)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 10)
    with pytest.raises(AudioError, match="notes.wav") as e:
        frontend.load_audio(text)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    with pytest.raises(AudioError, match="directory"):
        frontend.load_audio(tmp_path)
    import soundfile

    soundfile.write(tmp_path / "quiet.wav", np.zeros(800, np.float32), 8000)
    with pytest.raises(AudioError, match=r"quiet\.wav: audio is silent"):  # decoded files are checked too
        frontend.load_audio(tmp_path / "quiet.wav")


def test_frontend_imports_no_torch():
    code = "import sys, covo_edge.runtime.frontend; print(sorted({'torch', 'scipy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600).stdout
    assert out.strip() == "[]"
