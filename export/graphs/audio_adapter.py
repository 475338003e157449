"""audio_adapter.onnx: the three downsampling modules, [B, 1500, d] -> [B, 188, H]."""

from __future__ import annotations

import torch

from ..model import CovoAudio
from . import BATCH, GraphExport


def graph(model: CovoAudio) -> GraphExport:
    hidden = torch.randn(2, 1500, model.config.encoder.d_model)
    return GraphExport("audio_adapter", model.audio_adapter, (hidden,), ({0: BATCH},), [{"batch": (1, 1, 4)}])
