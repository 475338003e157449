"""Backends run one named graph of the artifacts on named arrays; everything else is backend-free.

The interface is deliberately small so TensorRT can sit behind it too:
    run(graph, feeds, host=names) -> {output name: array}
Outputs named in `host` come back as numpy arrays; the others stay as backend-native device values
(the KV cache, decode-step embeddings) that can be fed straight back in without a host round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ..manifest import Manifest

BACKENDS = ("onnxruntime",)


class Backend(Protocol):
    device: str

    def prepare(self, graphs: Iterable[str]) -> None:
        """Load these graphs now, so the first turn does not pay for it."""

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]: ...


def load_backend(name: str, artifacts: Path, manifest: Manifest, device: str) -> Backend:
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, manifest, device)
    raise ValueError(f"unknown backend {name!r}; available: {', '.join(BACKENDS)}")
