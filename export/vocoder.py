"""Causal BigVGAN vocoder: latents [B, 64, T] -> wav [B, 1, hop*T] at 24 kHz.

Weight norm is folded: every conv holds a plain `weight` (the release's weight_g/weight_v are
combined by `fold_weight_norm` on load). The anti-alias filters keep their upstream buffer names.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import VocoderConfig


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """w = g * v / ||v||, the norm over every axis but 0 (for ConvTranspose1d: per input channel)."""
    norm = v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.ndim - 1)))
    return v * (g / norm)


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass [1, 1, taps], normalised to unit DC gain (BigVGAN's filter)."""
    half = taps // 2
    delta_f = 4 * half_width
    a = 2.285 * (half - 1) * math.pi * delta_f + 7.95
    if a > 50.0:
        beta = 0.1102 * (a - 8.7)
    elif a >= 21.0:
        beta = 0.5842 * (a - 21) ** 0.4 + 0.07886 * (a - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, beta=beta, periodic=False)
    time = torch.arange(-half, half) + 0.5 if taps % 2 == 0 else torch.arange(taps) - half
    filt = 2 * cutoff * window * torch.sinc(2 * cutoff * time)
    return (filt / filt.sum()).view(1, 1, taps)


class UpSample1d(nn.Module):
    """x2 zero-stuffing through the low-pass, replicate-padded at the edges."""

    def __init__(self, ratio: int = 2, taps: int = 12):
        super().__init__()
        self.ratio = ratio
        self.pad = taps // ratio - 1
        self.crop_left = self.pad * ratio + (taps - ratio) // 2
        self.crop_right = self.pad * ratio + (taps - ratio + 1) // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad, self.pad), mode="replicate")
        x = self.ratio * F.conv_transpose1d(x, self.filter.expand(c, -1, -1), stride=self.ratio, groups=c)
        return x[..., self.crop_left : -self.crop_right]


class PolyphaseUpSample1d(nn.Module):
    """UpSample1d without the zeros: output sample r*n + p is the p-th polyphase filter (taps p, p + r, ..)
    over the input, so each phase is a short convolution and the phases are interleaved. Same samples,
    a quarter of the multiplications of the zero-stuffed transposed convolution (ONNX Runtime runs the
    vocoder graph a quarter faster)."""

    def __init__(self, up: UpSample1d):
        super().__init__()
        self.ratio, self.pad, self.crop_left, self.crop_right = up.ratio, up.pad, up.crop_left, up.crop_right
        taps = up.filter.shape[-1] // up.ratio
        self.register_buffer("phases", torch.stack([up.filter[0, 0, p :: up.ratio].flip(0) for p in range(up.ratio)]))
        self.zeros = taps - 1  # a full convolution: every output a phase tap reaches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(F.pad(x, (self.pad, self.pad), mode="replicate"), (self.zeros, self.zeros))
        y = torch.stack([F.conv1d(x, w.view(1, 1, -1).expand(c, -1, -1), groups=c) for w in self.phases], -1)
        y = self.ratio * y.flatten(2)
        return y[..., self.crop_left : y.shape[-1] - self.crop_right]


class LowPassFilter1d(nn.Module):
    def __init__(self, ratio: int = 2, taps: int = 12):
        super().__init__()
        self.stride = ratio
        self.pad_left = taps // 2 - int(taps % 2 == 0)
        self.pad_right = taps // 2
        self.register_buffer("filter", kaiser_sinc_filter(0.5 / ratio, 0.6 / ratio, taps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        x = F.pad(x, (self.pad_left, self.pad_right), mode="replicate")
        return F.conv1d(x, self.filter.expand(c, -1, -1), stride=self.stride, groups=c)


class DownSample1d(nn.Module):
    def __init__(self, ratio: int = 2, taps: int = 12):
        super().__init__()
        self.lowpass = LowPassFilter1d(ratio, taps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(alpha x) / beta, per channel, alpha and beta stored as logs."""

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))
        self.logscale = logscale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha, beta = self.alpha[None, :, None], self.beta[None, :, None]
        if self.logscale:
            alpha, beta = alpha.exp(), beta.exp()
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class Activation1d(nn.Module):
    """Anti-aliased activation: upsample x2, SnakeBeta, downsample x2."""

    def __init__(self, channels: int, logscale: bool):
        super().__init__()
        self.act = SnakeBeta(channels, logscale)
        self.upsample = UpSample1d()
        self.downsample = DownSample1d()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.downsample(self.act(self.upsample(x)))


class CausalConv1d(nn.Conv1d):
    """Conv1d padded on the left only, so no output sample sees the future."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.dilation[0] * (self.kernel_size[0] - 1), 0)))


class CausalConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d(k = 2*stride) with the trailing `stride` samples dropped: T -> stride*T."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)[..., : -self.stride[0]]


class AMPBlock(nn.Module):
    """Three dilated (conv, conv) residual pairs, each conv preceded by an anti-aliased SnakeBeta."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...], logscale: bool):
        super().__init__()
        self.convs1 = nn.ModuleList(CausalConv1d(channels, channels, kernel, dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(CausalConv1d(channels, channels, kernel) for _ in dilations)
        self.activations = nn.ModuleList(Activation1d(channels, logscale) for _ in range(2 * len(dilations)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for c1, c2, a1, a2 in zip(self.convs1, self.convs2, self.activations[::2], self.activations[1::2]):
            x = x + c2(a2(c1(a1(x))))
        return x


class BigVGAN(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        ch = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(cfg.latent_dim, ch, 7, padding=3)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for i, (rate, kernel) in enumerate(zip(cfg.upsample_rates, cfg.upsample_kernel_sizes)):
            c_in, c_out = ch // 2**i, ch // 2 ** (i + 1)
            self.ups.append(nn.ModuleList([CausalConvTranspose1d(c_in, c_out, kernel, stride=rate)]))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes):
                self.resblocks.append(AMPBlock(c_out, k, d, cfg.snake_logscale))
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.activation_post = Activation1d(c_out, cfg.snake_logscale)
        self.conv_post = CausalConv1d(c_out, 1, 7)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(latents)
        for i, (up,) in enumerate(self.ups):
            x = up(x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            x = sum(block(x) for block in blocks) / self.num_kernels
        return torch.tanh(self.conv_post(self.activation_post(x)))


def receptive_field(vocoder: BigVGAN, hop: int, frames: int = 200) -> tuple[int, int]:
    """(context, lookahead) in latent frames: output frame f depends on latent frames f - context ..
    f + lookahead (the causal convs reach back, conv_pre and the anti-aliasing filters ahead). Measured by
    moving one latent frame in float64: every output sample it does not reach stays bit-identical."""
    probe = copy.deepcopy(vocoder).double().eval()
    x = torch.randn(1, probe.conv_pre.in_channels, frames, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    moved = x.clone()
    i = frames // 2
    moved[..., i] += 1.0
    with torch.no_grad():
        reached = torch.nonzero((probe(moved) - probe(x))[0, 0]).flatten() // hop
    return int(reached.max()) - i, i - int(reached.min())


def for_export(vocoder: BigVGAN) -> BigVGAN:
    """A copy of the vocoder with polyphase upsamplers: the graph the exporter writes (the reference keeps
    upstream's form; the parity tests hold the two together)."""
    fast = copy.deepcopy(vocoder)
    for m in fast.modules():
        if isinstance(m, Activation1d):
            m.upsample = PolyphaseUpSample1d(m.upsample)
    return fast

