"""Flow-matching token2latent: audio codes -> 100 Hz latents through a DiT vector field and a midpoint ODE.

Builds and runs on CPU (upstream queries CUDA in its attention constructor). Parameter and buffer
names equal the release's `token2latent.*` keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import DiTConfig


def timestep_sinusoid(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """[B] times in [0, 1] -> [B, dim] as cat(cos, sin) (cos first, as upstream)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.freq_dim = freq_dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_sinusoid(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (theta ** (torch.arange(0, head_dim, 2).float() / head_dim)))

    def forward(self, length: int, offset: torch.Tensor | int = 0) -> torch.Tensor:
        """Angles [length, head_dim] of positions offset.., always in float32 (fp16 positions go wrong past 2048)."""
        positions = torch.arange(length, dtype=torch.float32) + offset
        freqs = torch.outer(positions, self.inv_freq.float())
        return torch.cat((freqs, freqs), dim=-1)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with rotary positions (no mask at inference)."""

    def __init__(self, hidden: int, heads: int, theta: float):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden)
        self.rotary = Rotary(hidden // heads, theta)

    def forward(self, x: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                position: torch.Tensor | int = 0) -> tuple[torch.Tensor, ...]:
        """New frames x [B, T, C] at positions position.. attend to themselves and to the cached (rotated)
        keys and values of earlier frames [B, heads, P, d]; returns (output, new keys, new values). With an
        empty cache at position 0 this is upstream's attention over the whole sequence."""
        b, n, c = x.shape
        q, k, v = (p(x).view(b, n, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        angle = self.rotary(n, position)
        cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, torch.cat([past_k, k], 2), torch.cat([past_v, v], 2))
        return self.o_proj(out.transpose(1, 2).reshape(b, n, c)), k, v

    def empty_cache(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0], self.heads, 0, x.shape[2] // self.heads)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden, ffn)
        self.fc2 = nn.Linear(ffn, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """adaLN-zero block: the condition gives shift/scale/gate for attention and for the MLP."""

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        h = cfg.hidden_size
        self.norm1 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(h, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(h, cfg.num_heads, cfg.rotary_theta)
        self.ffn = FeedForward(h, cfg.ffn_hidden_size)
        self.modulation_layer = nn.Sequential(nn.SiLU(), nn.Linear(h, 6 * h))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        empty = self.attn.empty_cache(x)
        return self.modulated(x, self.modulation_layer(c), empty, empty)[0]

    def modulated(self, x: torch.Tensor, modulation: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
                  position: torch.Tensor | int = 0) -> tuple[torch.Tensor, ...]:
        """The block given its 6 modulation vectors [B, 6H] and a KV cache: (output, new keys, new values)."""
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = modulation.chunk(6, dim=1)
        a, k, v = self.attn(modulate(self.norm1(x), shift_a, scale_a), past_k, past_v, position)
        x = x + gate_a[:, None] * a
        return x + gate_f[:, None] * self.ffn(modulate(self.norm2(x), shift_f, scale_f)), k, v


class FinalLayer(nn.Module):
    def __init__(self, hidden: int, out: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.linear = nn.Linear(hidden, out)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.modulated(x, self.adaLN_modulation(c))

    def modulated(self, x: torch.Tensor, modulation: torch.Tensor) -> torch.Tensor:
        shift, scale = modulation.chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class ConvPositionEmbed(nn.Module):
    """GELU(grouped Conv1d) over time on [B, T, C]; the caller adds the residual."""

    def __init__(self, hidden: int, kernel: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)

    def with_context(self, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The same over x [B, T, C] given the frames before it [B, K//2, C] (zeros at the sequence start,
        where the conv pads with zeros): no left padding, zeros on the right."""
        pad = self.conv.padding[0]
        y = F.pad(torch.cat([context, x], 1).transpose(1, 2), (0, pad))
        return F.gelu(F.conv1d(y, self.conv.weight, self.conv.bias, groups=self.conv.groups)).transpose(1, 2)


class Token2Latent(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.token_embedding = nn.Embedding(cfg.token_vocab_size, cfg.token_input_dim)
        self.token_proj = nn.Sequential(
            nn.Linear(cfg.token_input_dim, h),
            nn.ConvTranspose1d(h, h, 2 * cfg.upsample_factor, stride=cfg.upsample_factor, padding=cfg.upsample_factor // 2),
        )
        self.cond_proj = nn.Linear(h + cfg.spkr_embed_dim, h)
        self.transformer_input_proj = nn.Linear(h + 2 * cfg.z_dim, h)
        self.time_embedder = TimestepEmbedder(h)
        self.conv_embed = ConvPositionEmbed(h, cfg.conv_kernel, cfg.conv_groups)
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.output_layer = FinalLayer(h, cfg.z_dim)

    def token_features(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, N] -> upsampled features [B, factor*N, H]."""
        x = self.token_proj[0](self.token_embedding(codes))
        return self.token_proj[1](x.transpose(1, 2)).transpose(1, 2)

    def velocity(
        self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, latent_cond: torch.Tensor, speaker: torch.Tensor
    ) -> torch.Tensor:
        """Vector field v(x_t, t | tokens, latent prefix, speaker): [B, T, z] for t of shape [B]."""
        c = self.cond_proj(torch.cat([self.time_embedder(t), speaker], dim=-1))
        h = self.transformer_input_proj(torch.cat([tokens, latent_cond, x], dim=-1))
        h = self.conv_embed(h) + h
        for block in self.blocks:
            h = block(h, c)
        return self.output_layer(h, c)

    # The vector field in three parts, so that what does not change between evaluations is computed once
    # (DESIGN.md, "Streaming speech"): `modulation` depends on the time and the voice only (a table of the 18
    # evaluation times per voice), `conditioning` on the codes and the latent prefix only (once per turn
    # or chunk), `field` on the noisy state, optionally with a KV cache of earlier frames (streaming).

    def modulation(self, t: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """Every block's adaLN vectors and the output layer's, concatenated: [B, 6H * layers + 2H]."""
        c = self.cond_proj(torch.cat([self.time_embedder(t), speaker], dim=-1))
        return torch.cat([*(b.modulation_layer(c) for b in self.blocks), self.output_layer.adaLN_modulation(c)], -1)

    def conditioning(self, tokens: torch.Tensor, latent_cond: torch.Tensor) -> torch.Tensor:
        """The code and latent-prefix parts of the input projection (and its bias) for the guidance pair:
        [2B, T, H], unconditional rows (code features zeroed) first."""
        w, h = self.transformer_input_proj.weight, self.cfg.hidden_size
        latent = F.linear(latent_cond, w[:, h : h + self.cfg.z_dim], self.transformer_input_proj.bias)
        return torch.cat([latent, latent + F.linear(tokens, w[:, :h])])

    def field(self, x: torch.Tensor, conditioning: torch.Tensor, modulation: torch.Tensor, conv_context: torch.Tensor,
              position: torch.Tensor, past: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """v(x_t) of new frames given their conditioning, the time's modulation row, the position conv's left
        context, the rotary position of the first new frame [1] and each block's cached keys and values of
        earlier frames (empty, position 0: the whole sequence). Returns (velocity, projected input frames (the
        next chunk's conv context), new keys and values)."""
        h_dim = self.cfg.hidden_size
        frames = conditioning + F.linear(x, self.transformer_input_proj.weight[:, h_dim + self.cfg.z_dim :])
        h = self.conv_embed.with_context(conv_context, frames) + frames
        mods = modulation.split([6 * h_dim] * len(self.blocks) + [2 * h_dim], dim=1)
        present = []
        for i, block in enumerate(self.blocks):
            h, k, v = block.modulated(h, mods[i], past[2 * i], past[2 * i + 1], position)
            present += [k, v]
        return (self.output_layer.modulated(h, mods[-1]), frames, *present)

    def guided_velocity(
        self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor, latent_cond: torch.Tensor,
        speaker: torch.Tensor, cfg_alpha: float,
    ) -> torch.Tensor:
        """Classifier-free guidance on a batch of two: token features zeroed in the first half only."""
        pair = self.velocity(
            torch.cat([x, x]),
            t.reshape(1).expand(2),
            torch.cat([torch.zeros_like(tokens), tokens]),
            torch.cat([latent_cond, latent_cond]),
            torch.cat([speaker, speaker]),
        )
        uncond, cond = pair[:1], pair[1:]
        return cond + (cond - uncond) * cfg_alpha

    def sample(
        self, tokens: torch.Tensor, latent_cond: torch.Tensor, speaker: torch.Tensor, noise: torch.Tensor,
        steps: int, cfg_alpha: float,
    ) -> torch.Tensor:
        """Fixed-grid midpoint ODE from noise at t=0 to latents at t=1 (2*(steps-1) evaluations)."""
        times = torch.linspace(0, 1, steps)
        z = noise
        for t0, t1 in zip(times[:-1], times[1:]):
            dt = t1 - t0
            half = 0.5 * dt
            f0 = self.guided_velocity(z, t0, tokens, latent_cond, speaker, cfg_alpha)
            z_mid = z + f0 * half
            z = z + dt * self.guided_velocity(z_mid, t0 + half, tokens, latent_cond, speaker, cfg_alpha)
        return z
