"""token2wav: audio codes + a voice prompt -> 24 kHz speech (flow-matching latents, then BigVGAN)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from covo_edge.runtime.token2wav import Voice

from .config import ReleaseError, Token2WavConfig
from .token2latent import Token2Latent
from .vocoder import BigVGAN


class ReferenceToken2Wav(nn.Module):
    """The PyTorch token2wav (the runtime's `Token2Wav` is its ONNX twin); keys as the release's model.pt."""

    def __init__(self, config: Token2WavConfig):
        super().__init__()
        self.config = config
        self.wavegan = BigVGAN(config.vocoder)
        self.token2latent = Token2Latent(config.dit)
        z = config.dit.z_dim
        # From global_mean_var.npy, not from model.pt: kept out of the state dict as upstream does.
        self.register_buffer("global_mean", torch.zeros(z), persistent=False)
        self.register_buffer("global_var", torch.ones(z), persistent=False)

    def set_latent_stats(self, mean_var: np.ndarray) -> None:
        """global_mean_var.npy holds the mean then the *variance* of the latents (any shape of 2*z values)."""
        flat = np.asarray(mean_var, dtype=np.float32).reshape(-1)
        z = self.config.dit.z_dim
        if flat.size != 2 * z:
            raise ReleaseError(f"global_mean_var.npy has {flat.size} values, expected {2 * z} (mean and variance)")
        self.global_mean.copy_(torch.from_numpy(flat[:z]))
        self.global_var.copy_(torch.from_numpy(flat[z:]))

    def noise(self, num_codes: int, voice: Voice, generator: torch.Generator | None = None) -> torch.Tensor:
        """x0 ~ N(0, 1) over the prompt and the reply: [1, factor * (P + N), z]."""
        frames = self.config.dit.upsample_factor * (len(voice.prompt_token) + num_codes)
        return torch.randn((1, frames, self.config.dit.z_dim), generator=generator)

    def latents(self, codes: torch.Tensor, voice: Voice, noise: torch.Tensor) -> torch.Tensor:
        """Codes [N] -> de-normalised 100 Hz latents of the reply only [1, T, z], T = 4N - (L - 4P)."""
        tokens = torch.cat([torch.from_numpy(voice.prompt_token), codes.long()])[None]
        feats = self.token2latent.token_features(tokens)
        if tuple(noise.shape) != (1, feats.shape[1], self.config.dit.z_dim):
            raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(1, feats.shape[1], self.config.dit.z_dim)}")
        prefix = torch.from_numpy(voice.prompt_latent)[None]
        cond = torch.zeros(1, feats.shape[1], self.config.dit.z_dim)
        cond[:, : prefix.shape[1]] = prefix[:, : feats.shape[1]]
        speaker = torch.from_numpy(voice.speaker_embed)[None]
        z = self.token2latent.sample(feats, cond, speaker, noise, self.config.s_steps, self.config.cfg_alpha)
        # Upstream writes the prompt latents back into the prefix and then drops the prefix: a no-op here.
        return self.global_mean + z[:, prefix.shape[1] :] * self.global_var.sqrt()

    def vocode(self, latents: torch.Tensor) -> torch.Tensor:
        """[1, T, z] -> wav [hop * T]."""
        if latents.shape[1] == 0:
            return torch.zeros(0)
        return self.wavegan(latents.transpose(1, 2)).reshape(-1)

    def forward(self, codes: torch.Tensor, voice: Voice, noise: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes [N] -> (wav [hop * T], latents [1, T, z])."""
        if noise is None:
            noise = self.noise(len(codes), voice, generator)
        z = self.latents(codes, voice, noise)
        return self.vocode(z), z
