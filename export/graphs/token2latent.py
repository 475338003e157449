"""token2latent graphs: the code embedding with 4x upsampling, and one evaluation of the vector field.

The ODE loop and the CFG mix stay in the runtime; it runs the CFG pair as a batch of two.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from ..token2wav import ReferenceToken2Wav
from . import BATCH, MAX_FRAMES, GraphExport


class CodeFeatures(nn.Module):
    """codes [B, N] -> upsampled token features [B, 4N, H]."""

    def __init__(self, t2w: ReferenceToken2Wav):
        super().__init__()
        self.t2l = t2w.token2latent

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return self.t2l.token_features(codes)


class VectorField(nn.Module):
    """(x_t [B,T,z], t [B], token features [B,T,H], latent condition [B,T,z], speaker [B,S]) -> v [B,T,z]."""

    def __init__(self, t2w: ReferenceToken2Wav):
        super().__init__()
        self.t2l = t2w.token2latent

    def forward(self, x, t, tokens, latent_cond, speaker):
        return self.t2l.velocity(x, t, tokens, latent_cond, speaker)


def graphs(t2w: ReferenceToken2Wav) -> list[GraphExport]:
    cfg = t2w.config.dit
    codes = torch.randint(0, cfg.token_vocab_size, (2, 5))
    frames = Dim("frames")
    embed = GraphExport(
        "token2latent_codes", CodeFeatures(t2w), (codes,), ({0: BATCH, 1: Dim("codes")},),
        [{"batch": (1, 1, 1), "codes": (1, 300, MAX_FRAMES // cfg.upsample_factor)}],
    )
    t = 20
    args = (
        torch.randn(2, t, cfg.z_dim), torch.rand(2), torch.randn(2, t, cfg.hidden_size),
        torch.randn(2, t, cfg.z_dim), torch.randn(2, cfg.spkr_embed_dim),
    )
    field = GraphExport(
        "token2latent_field", VectorField(t2w), args,
        ({0: BATCH, 1: frames}, {0: BATCH}, {0: BATCH, 1: frames}, {0: BATCH, 1: frames}, {0: BATCH}),
        [{"batch": (1, 2, 2), "frames": (4, 1200, MAX_FRAMES)}],  # batch 2 = the CFG pair
    )
    return [embed, field]
