"""One file per exported ONNX graph; each says how to trace it: module, example inputs, names, dynamic dims."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.export import Dim

from covo_edge.runtime.manifest import GRAPH_IO

BATCH = Dim("batch")
MAX_PREFILL = 2048  # new tokens in one backbone call
MAX_FRAMES = 8192  # 100 Hz latent frames in one token2wav call (82 s)


@dataclass
class GraphExport:
    name: str
    module: nn.Module
    args: tuple[torch.Tensor | tuple[torch.Tensor, ...], ...]
    dynamic_shapes: tuple
    profiles: list[dict[str, tuple[int, int, int]]]  # engine profiles: dynamic dim -> (min, opt, max)
    inputs: list[str] = field(default_factory=list)  # default: the manifest's GRAPH_IO names
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.inputs = self.inputs or list(GRAPH_IO[self.name][0])
        self.outputs = self.outputs or list(GRAPH_IO[self.name][1])

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"
