"""token2latent graphs: the vector field split by what each part depends on.

    token2latent_codes  codes [1, N], latent_cond [1, 4N, z] -> conditioning [2, 4N, H]   once per turn or chunk
    token2latent_time   t [K], speaker [K, S]               -> modulation [K, M]          once per voice (18 times)
    token2latent_field  x, conditioning, modulation, conv_context, position, past keys/values
                                                            -> velocity, frames, present keys/values

The ODE loop and the guidance mix stay in the runtime, which runs the guidance pair as a batch of two.
The field's KV cache and conv context are empty for the exact whole-reply computation, and hold the
voice prompt and earlier chunks when speech is streamed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.export import Dim

from covo_edge.runtime.manifest import GRAPH_IO, kv_names

from ..token2wav import ReferenceToken2Wav
from . import BATCH, MAX_FRAMES, GraphExport


class CodeConditioning(nn.Module):
    def __init__(self, t2w: ReferenceToken2Wav):
        super().__init__()
        self.t2l = t2w.token2latent

    def forward(self, codes: torch.Tensor, latent_cond: torch.Tensor) -> torch.Tensor:
        return self.t2l.conditioning(self.t2l.token_features(codes), latent_cond)


class TimeModulation(nn.Module):
    def __init__(self, t2w: ReferenceToken2Wav):
        super().__init__()
        self.t2l = t2w.token2latent

    def forward(self, t: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        return self.t2l.modulation(t, speaker)


class CachedField(nn.Module):
    def __init__(self, t2w: ReferenceToken2Wav):
        super().__init__()
        self.t2l = t2w.token2latent

    def forward(self, x, conditioning, modulation, conv_context, position, past):
        return self.t2l.field(x, conditioning, modulation, conv_context, position, past)


def graphs(t2w: ReferenceToken2Wav) -> list[GraphExport]:
    cfg = t2w.config.dit
    h, z, layers = cfg.hidden_size, cfg.z_dim, cfg.num_layers
    n = 5
    codes = GraphExport(
        "token2latent_codes", CodeConditioning(t2w),
        (torch.randint(0, cfg.token_vocab_size, (1, n)), torch.randn(1, cfg.upsample_factor * n, z)),
        ({1: Dim("codes")}, {1: Dim("frames")}),
        [{"codes": (1, 300, MAX_FRAMES // cfg.upsample_factor), "frames": (4, 1200, MAX_FRAMES)}],
    )
    time = GraphExport(
        "token2latent_time", TimeModulation(t2w), (torch.rand(3), torch.randn(3, cfg.spkr_embed_dim)),
        ({0: Dim("times")}, {0: Dim("times")}), [{"times": (1, 18, 64)}],
    )
    # Traced with 7 new frames on 6 cached ones, so neither the cache nor the new frames are baked in.
    b, t, p, heads = 2, 7, 6, cfg.num_heads
    past = tuple(torch.randn(b, heads, p, h // heads) for _ in range(2 * layers))
    modulation = (6 * layers + 2) * h  # every block's adaLN vectors, then the output layer's
    args = (torch.randn(b, t, z), torch.randn(b, t, h), torch.randn(b, modulation), torch.randn(b, cfg.conv_kernel // 2, h),
            torch.tensor([p]), past)
    frames, cached = Dim("frames"), Dim("past_frames")
    inputs, outputs = GRAPH_IO["token2latent_field"]
    field = GraphExport(
        "token2latent_field", CachedField(t2w), args,
        ({0: BATCH, 1: frames}, {0: BATCH, 1: frames}, {0: BATCH}, {0: BATCH}, None,
         tuple({0: BATCH, 2: cached} for _ in past)),
        # batch 2 = the guidance pair; the whole reply has no cache, a streamed chunk a cache of earlier frames
        [{"batch": (1, 2, 2), "frames": (1, 1200, MAX_FRAMES), "past_frames": (0, 0, MAX_FRAMES)}],
        [*inputs, *kv_names("past_key_values", layers)], [*outputs, *kv_names("present", layers)],
    )
    return [codes, time, field]
