"""token2wav pieces on the tiny release: vector field, CFG, midpoint ODE, vocoder length."""

import pytest

from conftest import needs

torch = needs("torch", "export")

from covo_edge.export.release import Release, load_token2wav  # noqa: E402


@pytest.fixture(scope="module")
def t2w(tiny_dir):
    return load_token2wav(Release.open(tiny_dir))


def _inputs(t2w, frames=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    cfg = t2w.config.dit
    return (
        torch.randn(1, frames, cfg.z_dim, generator=g),
        torch.randn(1, frames, cfg.hidden_size, generator=g),
        torch.randn(1, frames, cfg.z_dim, generator=g),
        torch.randn(1, cfg.spkr_embed_dim, generator=g),
    )


def test_cfg_pair_equals_two_single_evaluations(t2w):
    x, tokens, cond, spk = _inputs(t2w)
    t = torch.tensor(0.3)
    vf = t2w.token2latent
    uncond = vf.velocity(x, t.reshape(1), torch.zeros_like(tokens), cond, spk)
    cond_v = vf.velocity(x, t.reshape(1), tokens, cond, spk)
    guided = vf.guided_velocity(x, t, tokens, cond, spk, cfg_alpha=1.0)
    torch.testing.assert_close(guided, 2 * cond_v - uncond, rtol=1e-5, atol=1e-5)


def test_midpoint_ode_makes_18_evaluations_at_the_right_times(t2w, monkeypatch):
    x, tokens, cond, spk = _inputs(t2w)
    seen = []
    real = t2w.token2latent.guided_velocity

    def spy(z, t, *args):
        seen.append(float(t))
        return real(z, t, *args)

    monkeypatch.setattr(t2w.token2latent, "guided_velocity", spy)
    t2w.token2latent.sample(tokens, cond, spk, x, steps=10, cfg_alpha=1.0)
    assert len(seen) == 18
    expect = [v for k in range(9) for v in (k / 9, (k + 0.5) / 9)]
    assert seen == pytest.approx(expect, abs=1e-6)


def test_midpoint_step_by_hand(t2w):
    """One interval [0, 1] equals z + f(1/2, z + f(0, z)/2)."""
    x, tokens, cond, spk = _inputs(t2w)
    vf = t2w.token2latent
    out = vf.sample(tokens, cond, spk, x, steps=2, cfg_alpha=1.0)
    f0 = vf.guided_velocity(x, torch.tensor(0.0), tokens, cond, spk, 1.0)
    expect = x + vf.guided_velocity(x + 0.5 * f0, torch.tensor(0.5), tokens, cond, spk, 1.0)
    torch.testing.assert_close(out, expect)


def test_token_features_upsample_by_four(t2w):
    codes = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    assert t2w.token2latent.token_features(codes).shape == (1, 28, t2w.config.dit.hidden_size)


@pytest.mark.parametrize("frames", [1, 7, 40])
def test_vocoder_gives_240_samples_per_frame(t2w, frames):
    wav = t2w.vocode(torch.randn(1, frames, 64))
    assert wav.shape == (240 * frames,)
    assert wav.abs().max() <= 1.0
