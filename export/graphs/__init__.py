"""One file per exported ONNX graph; each says how to trace it: module, example inputs, names, dynamic dims."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.export import Dim

BATCH = Dim("batch")


@dataclass
class GraphExport:
    name: str
    module: nn.Module
    args: tuple[torch.Tensor | tuple[torch.Tensor, ...], ...]
    inputs: list[str]
    outputs: list[str]
    dynamic_shapes: tuple

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"
