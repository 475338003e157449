"""embed_tokens.onnx: token ids [B, S] -> embeddings [B, S, H] (a Gather over the table).

A graph rather than a weight file the runtime maps: on a GPU the table then lives on the device
next to the backbone, each decode step moves 8 bytes of id in instead of H values out of host
memory, and the table's precision (fp16, int8) is set in the graph like every other weight.
"""

from __future__ import annotations

import torch
from torch.export import Dim

from ..model import CovoAudio
from . import BATCH, MAX_PREFILL, GraphExport


def graph(model: CovoAudio) -> GraphExport:
    ids = torch.randint(0, model.config.llm.vocab_size, (2, 3))
    table = model.llm.get_input_embeddings()
    return GraphExport("embed_tokens", table, (ids,), ({0: BATCH, 1: Dim("sequence")},),
                       [{"batch": (1, 1, 2), "sequence": (1, 1, MAX_PREFILL)}])
