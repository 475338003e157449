"""Backends run one named graph of the artifacts on named arrays; everything else is backend-free.

The interface is deliberately small so TensorRT can sit behind it too:
    prepare(graphs)                     open these graphs now (each checked against the manifest)
    run(graph, feeds, host=names)       -> {output name: value}
Outputs named in `host` come back as numpy arrays; the others stay as backend-native device values
(the KV cache, decode-step embeddings) that can be fed straight back in without a host round trip.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from ..errors import OptionError
from ..manifest import Manifest

BackendName = Literal["onnxruntime"]
Device = Literal["cpu", "cuda"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
DEVICES: tuple[str, ...] = get_args(Device)


class Backend(Protocol):
    device: str

    def prepare(self, graphs: Iterable[str]) -> None:
        """Load these graphs now, so the first turn does not pay for it; refuse files that break the manifest."""

    def run(self, graph: str, feeds: Mapping[str, Any], host: Iterable[str] = ()) -> dict[str, Any]: ...


def load_backend(name: BackendName, artifacts: Path, manifest: Manifest, device: Device) -> Backend:
    if device not in DEVICES:
        raise OptionError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifacts, manifest, device)
    raise OptionError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
