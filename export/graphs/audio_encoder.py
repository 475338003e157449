"""audio_encoder.onnx: Whisper encoder, log-mel [B, 128, 3000] -> hidden [B, 1500, d]."""

from __future__ import annotations

import torch
from torch import nn

from ..model import CovoAudio
from . import BATCH, GraphExport


class AudioEncoder(nn.Module):
    def __init__(self, model: CovoAudio):
        super().__init__()
        self.encoder = model.encoder

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel).last_hidden_state


def graph(model: CovoAudio) -> GraphExport:
    mel = torch.randn(2, model.config.encoder.num_mel_bins, 3000)
    return GraphExport("audio_encoder", AudioEncoder(model), (mel,), ({0: BATCH},), [{"batch": (1, 1, 4)}])
