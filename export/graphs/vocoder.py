"""vocoder.onnx: BigVGAN with weight norm folded and polyphase anti-alias upsampling, latents [B, 64, T]
-> wav [B, 1, 240*T]."""

from __future__ import annotations

import torch
from torch.export import Dim

from ..token2wav import ReferenceToken2Wav
from ..vocoder import for_export
from . import BATCH, MAX_FRAMES, GraphExport


def graph(t2w: ReferenceToken2Wav) -> GraphExport:
    latents = torch.randn(2, t2w.config.vocoder.latent_dim, 12)
    return GraphExport("vocoder", for_export(t2w.wavegan), (latents,), ({0: BATCH, 2: Dim("frames")},),
                       [{"batch": (1, 1, 1), "frames": (1, 100, MAX_FRAMES)}])
