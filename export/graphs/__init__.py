"""One file per exported ONNX graph; each says how to trace it: module, example inputs, names, dynamic dims."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

BATCH = Dim("batch")
MAX_PREFILL = 2048  # new tokens in one backbone call
MAX_FRAMES = 8192  # 100 Hz latent frames in one token2wav call (82 s)


@dataclass
class GraphExport:
    name: str
    module: nn.Module
    args: tuple[torch.Tensor | tuple[torch.Tensor, ...], ...]
    inputs: list[str]
    outputs: list[str]
    dynamic_shapes: tuple
    profiles: list[dict[str, tuple[int, int, int]]]  # engine profiles: dynamic dim -> (min, opt, max)

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"
