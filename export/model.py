"""The speech-understanding LLM: Whisper encoder -> downsampling adapter -> Qwen2 backbone.

Parameter names equal the release's (`llm.*`, `encoder.*`, `audio_adapter.*`), so its
safetensors load without renaming.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from transformers import DynamicCache, Qwen2ForCausalLM
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .config import CovoConfig

ADAPTER_HIDDEN = 2048  # fixed upstream


class DownsampleLayer(nn.Module):
    """Halve the frame rate: Conv1d(k3, s2, p1) -> ReLU -> Linear -> ReLU -> Linear, on [B, T, C]."""

    def __init__(self, dim_in: int, dim_out: int, hidden: int = ADAPTER_HIDDEN):
        super().__init__()
        self.conv1d = nn.Conv1d(dim_in, dim_in, kernel_size=3, stride=2, padding=1)
        self.linear1 = nn.Linear(dim_in, hidden)
        self.linear2 = nn.Linear(hidden, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        return self.linear2(F.relu(self.linear1(F.relu(x))))


class AudioAdapter(nn.Module):
    """log2(downsample) DownsampleLayers; only the last one projects to the LLM width (50 -> 6.25 Hz)."""

    def __init__(self, dim_in: int, dim_out: int, downsample: int = 8):
        super().__init__()
        n = downsample.bit_length() - 1
        dims = [dim_in] * n + [dim_out]
        self.downsample_layers = nn.ModuleList(DownsampleLayer(dims[i], dims[i + 1]) for i in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.downsample_layers:
            x = layer(x)
        return x


# transformers 5.24 names the KV cache argument `cache`; older 5.x releases call it `past_key_values`.
_CACHE_KW = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"


class CovoAudio(nn.Module):
    def __init__(self, config: CovoConfig):
        super().__init__()
        self.config = config
        self.llm = Qwen2ForCausalLM(config.llm)
        self.encoder = WhisperEncoder(config.encoder)
        self.audio_adapter = AudioAdapter(config.encoder.d_model, config.llm.hidden_size, config.adapter_downsample)

    def embed(self, input_ids: torch.Tensor, audio_slot_id: int, features: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings [1, L, H] with the first n feature rows scattered into the n audio slots."""
        emb = self.llm.get_input_embeddings()(input_ids)
        slots = input_ids == audio_slot_id
        n = int(slots.sum())
        if n == 0:
            return emb
        if features is None or features.shape[0] < n:
            have = 0 if features is None else features.shape[0]
            raise ValueError(f"prompt has {n} audio slots but only {have} audio frames were given")
        return emb.masked_scatter(slots[..., None], features[:n].to(emb.dtype))

    def new_cache(self) -> DynamicCache:
        return DynamicCache(config=self.config.llm)

    def forward(
        self, inputs_embeds: torch.Tensor, cache: DynamicCache, last_only: bool = True
    ) -> torch.Tensor:
        """Run new positions through the backbone, appending to `cache`; returns float32 logits."""
        past = cache.get_seq_length()
        positions = torch.arange(past, past + inputs_embeds.shape[1])[None]
        out = self.llm(
            inputs_embeds=inputs_embeds,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1 if last_only else 0,
            **{_CACHE_KW: cache},
        )
        return out.logits.float()
